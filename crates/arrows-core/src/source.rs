//! A token stream read through memory maps: the shards of a token store, or the `tokens` dataset
//! of a reference `.h5` file (contiguous, so its bytes can be mapped at their offset). Windows are
//! cut from the concatenation, across shard boundaries.

use crate::error::{Error, IoContext, Result};
use crate::shard::{Dtype, HEADER_LEN};
use crate::store::Store;
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// How ids are stored in a mapped segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdType {
    U16,
    U32,
    I32,
    I64,
}

impl IdType {
    pub fn size(self) -> usize {
        match self {
            IdType::U16 => 2,
            IdType::U32 | IdType::I32 => 4,
            IdType::I64 => 8,
        }
    }
    pub fn from_name(name: &str) -> Option<IdType> {
        match name {
            "u16" | "uint16" => Some(IdType::U16),
            "u32" | "uint32" => Some(IdType::U32),
            "i32" | "int32" => Some(IdType::I32),
            "i64" | "int64" => Some(IdType::I64),
            _ => None,
        }
    }
}

struct Segment {
    path: PathBuf,
    map: Option<Mmap>,
    /// Byte offset of the first id in the file.
    offset: usize,
    len: u64,
    ids: IdType,
}

pub struct TokenSource {
    segments: Vec<Segment>,
    /// starts[i] = stream index of segment i's first token; the last entry is the total.
    starts: Vec<u64>,
    /// Ids must be below this (when known); checked while copying.
    pub vocab_size: Option<u64>,
    /// What the source was opened from, for messages.
    pub origin: PathBuf,
}

impl TokenSource {
    /// The shards of a complete token store.
    pub fn from_store(dir: &Path) -> Result<TokenSource> {
        let store = Store::open(dir, false)?;
        let ids = match store.dtype {
            Dtype::U16 => IdType::U16,
            Dtype::U32 => IdType::U32,
        };
        let segments = store
            .shards
            .iter()
            .map(|s| map_segment(&s.path, HEADER_LEN, s.header.count, ids))
            .collect::<Result<Vec<_>>>()?;
        let vocab = store.manifest.tokenizer.vocab_size as u64;
        Ok(Self::new(segments, Some(vocab), dir))
    }

    /// `count` ids of type `ids` stored contiguously at byte `offset` of `path` (an h5 dataset).
    pub fn from_raw(path: &Path, offset: u64, count: u64, ids: IdType, vocab_size: Option<u64>) -> Result<TokenSource> {
        let len = std::fs::metadata(path).at(path)?.len();
        let end = count.checked_mul(ids.size() as u64).and_then(|b| b.checked_add(offset));
        if end.is_none_or(|e| e > len) {
            return Err(Error::corrupt(path, format!("{count} ids of {} bytes at offset {offset} run past the end of the file ({len} bytes)", ids.size())));
        }
        let seg = map_segment(path, offset as usize, count, ids)?;
        Ok(Self::new(vec![seg], vocab_size, path))
    }

    fn new(mut segments: Vec<Segment>, vocab_size: Option<u64>, origin: &Path) -> TokenSource {
        // A shard of no tokens (a general tokenizer gives none for a file of only whitespace) has
        // nothing to read and no map: `read` would step into it when a window crosses it.
        segments.retain(|s| s.len > 0);
        let mut starts = vec![0u64];
        for s in &segments {
            starts.push(starts.last().unwrap() + s.len);
        }
        TokenSource { segments, starts, vocab_size, origin: origin.to_path_buf() }
    }

    pub fn len(&self) -> u64 {
        *self.starts.last().unwrap()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy ids `start .. start + out.len()` into `out` (across segments) and check them against
    /// the vocabulary.
    pub fn read(&self, start: u64, out: &mut [i64]) -> Result<()> {
        let mut pos = start;
        let mut filled = 0;
        let mut seg = self.starts.partition_point(|&s| s <= pos) - 1;
        while filled < out.len() {
            let s = &self.segments[seg];
            let local = (pos - self.starts[seg]) as usize;
            let n = (s.len as usize - local).min(out.len() - filled);
            let dst = &mut out[filled..filled + n];
            let bytes = &s.map.as_deref().unwrap_or(&[])[s.offset + local * s.ids.size()..][..n * s.ids.size()];
            let (mut lo, mut hi) = (0i64, 0i64);
            match s.ids {
                IdType::U16 => dst.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(d, b)| *d = u16::from_le_bytes([b[0], b[1]]) as i64),
                IdType::U32 => dst.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(d, b)| *d = u32::from_le_bytes(b.try_into().unwrap()) as i64),
                IdType::I32 => dst.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(d, b)| *d = i32::from_le_bytes(b.try_into().unwrap()) as i64),
                IdType::I64 => dst.iter_mut().zip(bytes.chunks_exact(8)).for_each(|(d, b)| *d = i64::from_le_bytes(b.try_into().unwrap())),
            }
            if s.ids != IdType::U16 || self.vocab_size.is_some_and(|v| v < 1 << 16) {
                for &v in dst.iter() {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
                let limit = self.vocab_size.map_or(i64::MAX, |v| v as i64);
                if lo < 0 || hi >= limit {
                    let (k, bad) = dst.iter().enumerate().find(|(_, &v)| v < 0 || v >= limit).map(|(k, &v)| (k, v)).unwrap();
                    return Err(Error::corrupt(
                        &s.path,
                        format!(
                            "token {} of the stream (id {bad}) is outside the vocabulary of {} ids",
                            pos + k as u64,
                            self.vocab_size.map_or("non-negative".to_string(), |v| v.to_string())
                        ),
                    ));
                }
            }
            filled += n;
            pos += n as u64;
            seg += 1;
        }
        Ok(())
    }
}

fn map_segment(path: &Path, offset: usize, len: u64, ids: IdType) -> Result<Segment> {
    let map = if len == 0 {
        None
    } else {
        let f = File::open(path).at(path)?;
        // SAFETY: read-only mapping; token files are written once (temporary name, then rename).
        Some(unsafe { Mmap::map(&f) }.at(path)?)
    };
    Ok(Segment { path: path.to_path_buf(), map, offset, len, ids })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `n` u16 ids 0..n after a 64-byte header, mapped as a segment.
    fn segment(dir: &Path, name: &str, ids: std::ops::Range<u16>) -> Segment {
        let path = dir.join(name);
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend(ids.clone().flat_map(|i| i.to_le_bytes()));
        std::fs::write(&path, bytes).unwrap();
        map_segment(&path, HEADER_LEN, ids.len() as u64, IdType::U16).unwrap()
    }

    #[test]
    fn a_read_crosses_empty_segments() {
        let dir = tempfile::tempdir().unwrap();
        let segments = vec![
            segment(dir.path(), "a", 0..0),
            segment(dir.path(), "b", 0..5),
            segment(dir.path(), "c", 0..0),
            segment(dir.path(), "d", 0..0),
            segment(dir.path(), "e", 5..9),
            segment(dir.path(), "f", 0..0),
        ];
        let source = TokenSource::new(segments, Some(10), dir.path());
        assert_eq!(source.len(), 9);
        let mut out = vec![-1i64; 9];
        source.read(0, &mut out).unwrap();
        assert_eq!(out, (0..9).collect::<Vec<i64>>());
        let mut out = vec![-1i64; 3];
        source.read(3, &mut out).unwrap();
        assert_eq!(out, [3, 4, 5]);
    }
}
