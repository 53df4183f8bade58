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
        let text = std::fs::read_to_string(&path).at(&path)?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::corrupt(&path, format!("unreadable manifest: {e}; re-create the folder with `arrows tokenize ... --force`")))?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(Error::corrupt(&path, format!("format {:?} version {}, expected {FORMAT:?} version {VERSION}", m.format, m.version)));
        }
        Ok(m)
    }

    /// Write to a temporary file, sync, rename: a reader sees the old or the new manifest, whole.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE_NAME);
        let tmp = crate::shard::tmp_name(&path);
        let mut text = serde_json::to_string_pretty(self).expect("manifest serializes");
        text.push('\n');
        let mut f = std::fs::File::create(&tmp).at(&tmp)?;
        f.write_all(text.as_bytes()).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        drop(f);
        std::fs::rename(&tmp, &path).at(&path)?;
        sync_dir(dir);
        Ok(())
    }

    /// Where encoding continues: the end of the last complete shard.
    pub fn next_input_offset(&self) -> u64 {
        self.shards.last().map_or(0, |s| s.input_end)
    }
}

/// Make renames in `dir` durable (best effort: not every platform can sync a folder).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
