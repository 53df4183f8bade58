//! `manifest.json`: what a token store was made from and what it holds. Rewritten atomically after
//! every completed shard, so that it always lists exactly the shards that are complete.

use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

pub const FILE_NAME: &str = "manifest.json";
pub const FORMAT: &str = "arrows-token-store";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub tokenizer: TokenizerEntry,
    /// "u16" or "u32": how ids are stored in the shards.
    pub dtype: String,
    /// Everything that decides the output bytes; `--resume` requires the same.
    pub settings: Settings,
    pub inputs: Vec<InputEntry>,
    pub total_input_bytes: u64,
    pub shards: Vec<ShardEntry>,
    /// True once every input byte is covered by a shard.
    pub complete: bool,
    pub tokens: u64,
    /// Bytes of invalid UTF-8 replaced by U+FFFD.
    pub replaced_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenizerEntry {
    pub file: String,
    /// xxh3-64 of tokenizer.json, as 16 hex digits (also in every shard header).
    pub hash: String,
    pub vocab_size: usize,
    pub bos_id: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// "train", "bytes", or the path of the tokenizer.json given with --tokenizer.
    pub tokenizer: String,
    pub vocab_size: Option<usize>,
    pub sample_bytes: Option<u64>,
    pub seed: Option<u64>,
    pub min_frequency: Option<u64>,
    pub shard_bytes: u64,
    pub chunk_bytes: u64,
    pub strict_utf8: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputEntry {
    pub path: String,
    pub size: u64,
    pub fingerprint: String,
    /// Modification time (ns since the Unix epoch): the fingerprint samples a big file, so an
    /// edit of the same size elsewhere in it is seen only by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_ns: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardEntry {
    pub file: String,
    /// Byte range of the concatenated input this shard encodes.
    pub input_start: u64,
    pub input_end: u64,
    pub tokens: u64,
    /// xxh3-64 of the token bytes, 16 hex digits.
    pub checksum: String,
    pub replaced_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainingEntry {
    pub sample_bytes: u64,
    pub distinct_words: u64,
    pub merges: usize,
}

pub fn hex(v: u64) -> String {
    format!("{v:016x}")
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE_NAME);
        let bytes = std::fs::read(&path).at(&path)?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&path, format!("unreadable manifest: {e}; re-create the folder with `arrows tokenize ... --force`")))?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(Error::corrupt(&path, format!("format {:?} version {}, expected {FORMAT:?} version {VERSION}", m.format, m.version)));
        }
        m.check().map_err(|problem| Error::corrupt(&path, format!("{problem}: the manifest was altered; re-create the folder with `arrows tokenize ... --force`")))?;
        Ok(m)
    }

    /// What every manifest written by arrows satisfies: files named inside the folder, shards
    /// covering the input from byte 0 without gaps, totals that are the shards' sums.
    fn check(&self) -> std::result::Result<(), String> {
        let plain = |name: &str| !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\']);
        if !plain(&self.tokenizer.file) {
            return Err(format!("tokenizer file {:?} is not a file name in the folder", self.tokenizer.file));
        }
        let mut end = 0u64;
        let (mut tokens, mut replaced) = (0u64, 0u64);
        for (i, s) in self.shards.iter().enumerate() {
            if !plain(&s.file) {
                return Err(format!("shard {i} is {:?}, not a file name in the folder", s.file));
            }
            if s.input_start != end || s.input_end < s.input_start || s.input_end > self.total_input_bytes {
                return Err(format!("{} covers input bytes {}..{}, not a continuation of {end} within {}", s.file, s.input_start, s.input_end, self.total_input_bytes));
            }
            end = s.input_end;
            tokens = tokens.checked_add(s.tokens).ok_or("the token counts overflow")?;
            replaced = replaced.checked_add(s.replaced_bytes).ok_or("the replaced-byte counts overflow")?;
        }
        if tokens != self.tokens || replaced != self.replaced_bytes {
            return Err(format!("totals of {} tokens and {} replaced bytes, but the shards hold {tokens} and {replaced}", self.tokens, self.replaced_bytes));
        }
        if self.complete && end != self.total_input_bytes {
            return Err(format!("marked complete, but its shards end at input byte {end} of {}", self.total_input_bytes));
        }
        Ok(())
    }

    /// Write to a temporary file, sync, rename: a reader sees the old or the new manifest, whole.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).expect("manifest serializes");
        text.push('\n');
        write_atomic(&dir.join(FILE_NAME), text.as_bytes())
    }

    /// Where encoding continues: the end of the last complete shard.
    pub fn next_input_offset(&self) -> u64 {
        self.shards.last().map_or(0, |s| s.input_end)
    }
}

/// Write `path` whole or not at all: a temporary file, synced, then renamed. On failure (a full
/// disk) the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = crate::shard::tmp_name(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        drop(f);
        std::fs::rename(&tmp, path).at(path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Make renames in `dir` durable (best effort: not every platform can sync a folder).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
