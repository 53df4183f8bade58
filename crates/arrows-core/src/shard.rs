//! The shard file: a 64-byte header followed by token ids, little-endian u16 (vocabularies up to
//! 65,536 ids) or u32. Memory-mappable as it is: the payload starts 64 bytes in.
//!
//! Header layout (all little-endian):
//!
//! | bytes  | field                                              |
//! |--------|----------------------------------------------------|
//! | 0..8   | magic `ARWTOKS\0`                                  |
//! | 8..12  | format version (1)                                 |
//! | 12..16 | bytes per token (2 or 4)                           |
//! | 16..24 | token count                                        |
//! | 24..32 | tokenizer hash (xxh3-64 of tokenizer.json)         |
//! | 32..40 | payload checksum (xxh3-64 of the token bytes)      |
//! | 40..48 | first input byte covered (offset in the corpus)    |
//! | 48..56 | end of the input bytes covered (exclusive)         |
//! | 56..64 | header checksum (xxh3-64 of bytes 0..56)           |
//!
//! A shard is written under a temporary name, synced, then renamed: a file with the final name is
//! always complete.

use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const MAGIC: [u8; 8] = *b"ARWTOKS\0";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// The narrowest type that holds every id of a vocabulary of `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Dtype {
        if vocab_size <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
        }
    }
    pub fn from_name(name: &str) -> Option<Dtype> {
        match name {
            "u16" => Some(Dtype::U16),
            "u32" => Some(Dtype::U32),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub dtype: Dtype,
    pub count: u64,
    pub tokenizer_hash: u64,
    pub checksum: u64,
    pub input_start: u64,
    pub input_end: u64,
}

impl ShardHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.dtype.size() as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.count.to_le_bytes());
        b[24..32].copy_from_slice(&self.tokenizer_hash.to_le_bytes());
        b[32..40].copy_from_slice(&self.checksum.to_le_bytes());
        b[40..48].copy_from_slice(&self.input_start.to_le_bytes());
        b[48..56].copy_from_slice(&self.input_end.to_le_bytes());
        let check = xxh3_64(&b[0..56]);
        b[56..64].copy_from_slice(&check.to_le_bytes());
        b
    }

    /// Parse and check a header; `path` names the file in errors.
    pub fn from_bytes(b: &[u8], path: &Path) -> Result<ShardHeader> {
        let bad = |m: String| Error::corrupt(path, m);
        if b.len() < HEADER_LEN {
            return Err(bad(format!("{} bytes, shorter than the {HEADER_LEN}-byte shard header (truncated?)", b.len())));
        }
        if b[0..8] != MAGIC {
            return Err(bad("not an arrows shard (bad magic bytes)".into()));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if u64_at(56) != xxh3_64(&b[0..56]) {
            return Err(bad("shard header checksum mismatch (the header is damaged)".into()));
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!("shard format version {version}, this arrows reads version {VERSION}")));
        }
        let dtype = match u32_at(12) {
            2 => Dtype::U16,
            4 => Dtype::U32,
            other => return Err(bad(format!("{other} bytes per token; only 2 and 4 exist"))),
        };
        let header = ShardHeader {
            dtype,
            count: u64_at(16),
            tokenizer_hash: u64_at(24),
            checksum: u64_at(32),
            input_start: u64_at(40),
            input_end: u64_at(48),
        };
        if header.input_end < header.input_start {
            return Err(bad("input range ends before it starts".into()));
        }
        Ok(header)
    }

    /// Bytes the whole file must have (None: more than a file can hold, a forged count).
    pub fn file_len(&self) -> Option<u64> {
        self.count.checked_mul(self.dtype.size() as u64)?.checked_add(HEADER_LEN as u64)
    }
}

/// Read a shard's header and check that the file has exactly the length it announces.
pub fn read_header(path: &Path) -> Result<ShardHeader> {
    let mut f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    let mut buf = [0u8; HEADER_LEN];
    let n = read_up_to(&mut f, &mut buf).at(path)?;
    let header = ShardHeader::from_bytes(&buf[..n], path)?;
    let expected = header.file_len();
    if expected != Some(len) {
        let announced = expected.map_or("more than a file can hold".to_string(), |n| format!("{n} bytes"));
        return Err(Error::corrupt(
            path,
            format!("file is {len} bytes but its header announces {} tokens ({announced}): truncated or damaged", header.count),
        ));
    }
    Ok(header)
}

/// Read the header, then recompute the payload checksum.
pub fn verify(path: &Path) -> Result<ShardHeader> {
    let header = read_header(path)?;
    let mut f = File::open(path).at(path)?;
    f.seek(SeekFrom::Start(HEADER_LEN as u64)).at(path)?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hasher.digest() != header.checksum {
        return Err(Error::corrupt(path, "token checksum mismatch: the shard's contents are damaged; re-run `arrows tokenize` into a new folder"));
    }
    Ok(header)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Streams token ids into `NAME.tmp`; `finish` writes the header, syncs and renames to `NAME`.
pub struct ShardWriter {
    final_path: PathBuf,
    tmp_path: PathBuf,
    out: BufWriter<File>,
    hasher: Xxh3,
    header: ShardHeader,
    scratch: Vec<u8>,
}

impl ShardWriter {
    pub fn create(final_path: PathBuf, dtype: Dtype, tokenizer_hash: u64, input_start: u64) -> Result<Self> {
        let tmp_path = tmp_name(&final_path);
        let file = File::create(&tmp_path).at(&tmp_path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN]).at(&tmp_path)?;
        let header = ShardHeader { dtype, count: 0, tokenizer_hash, checksum: 0, input_start, input_end: input_start };
        Ok(ShardWriter { final_path, tmp_path, out, hasher: Xxh3::new(), header, scratch: Vec::new() })
    }

    /// Append ids covering the input up to `input_end`.
    pub fn append(&mut self, ids: &[u32], input_end: u64) -> Result<()> {
        self.scratch.clear();
        match self.header.dtype {
            Dtype::U16 => {
                // An id past u16 would be stored as another id, silently: refuse it.
                if let Some(&id) = ids.iter().find(|&&id| id > u16::MAX as u32) {
                    return Err(Error::corrupt(&self.tmp_path, format!("id {id} does not fit the shard's u16 ids: the tokenizer gave an id beyond its vocabulary size")));
                }
                self.scratch.extend(ids.iter().flat_map(|&id| (id as u16).to_le_bytes()))
            }
            Dtype::U32 => self.scratch.extend(ids.iter().flat_map(|&id| id.to_le_bytes())),
        }
        self.out.write_all(&self.scratch).at(&self.tmp_path)?;
        self.hasher.update(&self.scratch);
        self.header.count += ids.len() as u64;
        self.header.input_end = input_end;
        Ok(())
    }

    pub fn input_start(&self) -> u64 {
        self.header.input_start
    }

    /// Write the header, sync, and give the file its final name. Returns the header.
    /// On failure (a full disk) the unfinished file is removed.
    pub fn finish(mut self) -> Result<ShardHeader> {
        self.header.checksum = self.hasher.digest();
        let (tmp, header) = (&self.tmp_path, &self.header);
        let finished = self.out.into_inner().map_err(|e| Error::io(tmp, e.into_error())).and_then(|mut file| {
            file.seek(SeekFrom::Start(0)).at(tmp)?;
            file.write_all(&header.to_bytes()).at(tmp)?;
            file.sync_all().at(tmp)?;
            drop(file);
            std::fs::rename(tmp, &self.final_path).at(&self.final_path)
        });
        if finished.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        finished.map(|()| self.header)
    }

    /// Remove the unfinished file (on cancellation or error).
    pub fn abandon(self) {
        drop(self.out);
        let _ = std::fs::remove_file(&self.tmp_path);
    }
}

pub fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(dir: &Path, ids: &[u32], dtype: Dtype) -> PathBuf {
        let path = dir.join("shard_000000.bin");
        let mut w = ShardWriter::create(path.clone(), dtype, 42, 100).unwrap();
        w.append(&ids[..ids.len() / 2], 150).unwrap();
        w.append(&ids[ids.len() / 2..], 200).unwrap();
        w.finish().unwrap();
        path
    }

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u32> = (0..1000).map(|i| i * 61 % 65536).collect();
        let path = write(dir.path(), &ids, Dtype::U16);
        assert!(!tmp_name(&path).exists());
        let h = verify(&path).unwrap();
        assert_eq!((h.count, h.tokenizer_hash, h.input_start, h.input_end), (1000, 42, 100, 200));
        let bytes = std::fs::read(&path).unwrap();
        let back: Vec<u32> = bytes[HEADER_LEN..].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect();
        assert_eq!(back, ids);
    }

    #[test]
    fn ids_beyond_u16_are_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard_000000.bin");
        let mut w = ShardWriter::create(path, Dtype::U16, 42, 0).unwrap();
        w.append(&[1, 65535], 10).unwrap();
        let message = w.append(&[1, 65537], 20).unwrap_err().to_string();
        assert!(message.contains("shard_000000.bin.tmp") && message.contains("id 65537"), "{message}");
        w.abandon();
    }

    #[test]
    fn truncated_and_flipped_shards_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u32> = (0..1000).map(|i| i * 70_001).collect();
        let path = write(dir.path(), &ids, Dtype::U32);
        let good = std::fs::read(&path).unwrap();

        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(read_header(&path).unwrap_err().to_string().contains("truncated"));

        let mut flipped = good.clone();
        flipped[HEADER_LEN + 17] ^= 0x10;
        std::fs::write(&path, &flipped).unwrap();
        read_header(&path).unwrap(); // the header is intact ...
        assert!(verify(&path).unwrap_err().to_string().contains("checksum")); // ... the payload is not
    }

    proptest! {
        // Any single flipped bit in the header is caught, and no input makes the parser panic.
        #[test]
        fn damaged_headers_are_rejected(bit in 0usize..HEADER_LEN * 8) {
            let h = ShardHeader { dtype: Dtype::U16, count: 7, tokenizer_hash: 1, checksum: 2, input_start: 3, input_end: 9 };
            let mut b = h.to_bytes();
            prop_assert_eq!(ShardHeader::from_bytes(&b, Path::new("s")).unwrap(), h);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(ShardHeader::from_bytes(&b, Path::new("s")).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = ShardHeader::from_bytes(&bytes, Path::new("s"));
        }
    }
}
