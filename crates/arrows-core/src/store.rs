//! Opening a token store (a folder written by `arrows tokenize`) for reading, and verifying it.

use crate::error::{Error, Result};
use crate::manifest::{hex, Manifest};
use crate::shard::{self, Dtype, ShardHeader};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

pub struct StoreShard {
    pub path: PathBuf,
    pub header: ShardHeader,
}

pub struct Store {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub dtype: Dtype,
    pub shards: Vec<StoreShard>,
}

impl Store {
    /// Read the manifest and check every shard's header against it (cheap: no checksums).
    /// An unfinished store is refused unless `allow_incomplete`.
    pub fn open(dir: &Path, allow_incomplete: bool) -> Result<Store> {
        let (manifest, dtype) = read_manifest(dir, allow_incomplete)?;
        let shards = manifest.shards.iter().map(|s| open_shard(dir, &manifest, dtype, s)).collect::<Result<Vec<_>>>()?;
        Ok(Store { dir: dir.to_path_buf(), manifest, dtype, shards })
    }

    /// Check a store folder file by file, each shard on its own (in parallel): its header against
    /// its manifest entry, then its checksum; and the tokenizer's hash. One error per damaged
    /// file: a damaged or missing shard does not hide the others (`open` stops at the first).
    pub fn verify_folder(dir: &Path) -> Result<Vec<Error>> {
        let (manifest, dtype) = read_manifest(dir, true)?;
        let mut problems: Vec<Error> =
            manifest.shards.par_iter().filter_map(|s| open_shard(dir, &manifest, dtype, s).and_then(|shard| shard::verify(&shard.path)).err()).collect();
        problems.extend(check_tokenizer(dir, &manifest));
        Ok(problems)
    }

    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.header.count).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Recompute every shard's checksum (in parallel) and the tokenizer's hash; one error per
    /// damaged file.
    pub fn verify(&self) -> Vec<Error> {
        let mut problems: Vec<Error> = self.shards.par_iter().filter_map(|s| shard::verify(&s.path).err()).collect();
        problems.extend(check_tokenizer(&self.dir, &self.manifest));
        problems
    }
}

fn read_manifest(dir: &Path, allow_incomplete: bool) -> Result<(Manifest, Dtype)> {
    let manifest_path = dir.join(crate::manifest::FILE_NAME);
    if !manifest_path.exists() {
        let what = if dir.is_dir() {
            "has no manifest.json"
        } else if dir.exists() {
            "a file, not a folder"
        } else {
            "does not exist"
        };
        return Err(Error::Input(format!("{}: not a token store ({what}); make one with `arrows tokenize`", dir.display())));
    }
    let manifest = Manifest::read(dir)?;
    if !manifest.complete && !allow_incomplete {
        return Err(Error::Input(format!(
            "{}: the tokenization is unfinished ({} of {} input bytes); finish it with `arrows tokenize ... --out {} --resume`",
            dir.display(),
            manifest.next_input_offset(),
            manifest.total_input_bytes,
            dir.display()
        )));
    }
    let dtype = Dtype::from_name(&manifest.dtype).ok_or_else(|| Error::corrupt(&manifest_path, format!("unknown dtype {:?}", manifest.dtype)))?;
    Ok((manifest, dtype))
}

/// A shard's header, checked against its manifest entry.
fn open_shard(dir: &Path, manifest: &Manifest, dtype: Dtype, s: &crate::manifest::ShardEntry) -> Result<StoreShard> {
    let path = dir.join(&s.file);
    let header = shard::read_header(&path)?;
    let mismatch = if hex(header.tokenizer_hash) != manifest.tokenizer.hash {
        Some("was encoded with another tokenizer than the manifest's (a shard from another run?)".into())
    } else if header.count != s.tokens || header.input_start != s.input_start || header.input_end != s.input_end {
        Some(format!(
            "holds {} tokens of input bytes {}..{}, its manifest entry {} tokens of {}..{} (a shard or manifest from another run?)",
            header.count, header.input_start, header.input_end, s.tokens, s.input_start, s.input_end
        ))
    } else if hex(header.checksum) != s.checksum {
        Some("has another token checksum than its manifest entry (a shard or manifest from another run?)".into())
    } else if header.dtype != dtype {
        Some(format!("stores {} ids, the manifest says {}", header.dtype.name(), dtype.name()))
    } else {
        None
    };
    match mismatch {
        Some(m) => Err(Error::corrupt(&path, m)),
        None => Ok(StoreShard { path, header }),
    }
}

/// The tokenizer file the manifest names, checked against its hash.
fn check_tokenizer(dir: &Path, manifest: &Manifest) -> Option<Error> {
    let path = dir.join(&manifest.tokenizer.file);
    match std::fs::read(&path) {
        Err(e) => Some(Error::io(&path, e)),
        Ok(bytes) if hex(xxh3_64(&bytes)) != manifest.tokenizer.hash => Some(Error::corrupt(
            &path,
            "is not the tokenizer the shards were encoded with (its hash differs from the manifest's): a file from another run?",
        )),
        Ok(_) => None,
    }
}

impl Store {
    /// The whole token stream, read into memory (tests and small stores; Python maps the shards).
    pub fn read_all(&self) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(self.len() as usize);
        for s in &self.shards {
            let bytes = std::fs::read(&s.path).map_err(|e| Error::io(&s.path, e))?;
            let payload = &bytes[shard::HEADER_LEN..];
            match s.header.dtype {
                Dtype::U16 => ids.extend(payload.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)),
                Dtype::U32 => ids.extend(payload.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            }
        }
        Ok(ids)
    }
}
