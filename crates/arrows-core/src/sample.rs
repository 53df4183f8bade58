//! The tokenizer's training sample: at most `sample_bytes` of the corpus, drawn from across all of
//! it (not just its beginning), so that the vocabulary reflects the whole corpus while memory
//! stays bounded whatever its size.

use crate::corpus::Corpus;
use crate::error::Result;
use crate::pretokenize::next_safe_split;

/// Size of each sampled block: up to 1 MiB, but at least 256 blocks per sample (spread) and at
/// least 4 KiB each (whole paragraphs).
const BLOCK_BYTES: u64 = 1 << 20;
const MIN_BLOCK_BYTES: u64 = 4 << 10;

/// Bytes `start..end` of input file `file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub file: usize,
    pub start: usize,
    pub end: usize,
}

impl Piece {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Pieces of the corpus to train on. The whole corpus when it fits in `sample_bytes`; otherwise
/// one block at a seeded random place in each of `sample_bytes / block` equal strata of the
/// concatenated corpus, its ends moved to pre-token boundaries. Deterministic for a given seed.
pub fn plan_sample(corpus: &Corpus, sample_bytes: u64, seed: u64) -> Result<Vec<Piece>> {
    if corpus.total <= sample_bytes {
        // Whole files, cut into blocks so that counting runs in parallel.
        let mut pieces = Vec::new();
        for (file, f) in corpus.files.iter().enumerate() {
            if f.size == 0 {
                continue;
            }
            let map = corpus.map(file)?;
            let bytes = map.bytes();
            let mut start = 0;
            while start < bytes.len() {
                let end = block_end(bytes, start + BLOCK_BYTES as usize, BLOCK_BYTES as usize);
                map.release(start, end); // as below
                pieces.push(Piece { file, start, end });
                start = end;
            }
        }
        return Ok(pieces);
    }
    let block = (sample_bytes / 256).clamp(MIN_BLOCK_BYTES, BLOCK_BYTES).min(sample_bytes);
    let strata = (sample_bytes / block).max(1);
    let stratum = corpus.total / strata;
    let mut rng = SplitMix64(seed);
    let mut pieces = Vec::with_capacity(strata as usize);
    for k in 0..strata {
        let lo = k * stratum;
        let span = stratum.saturating_sub(block).max(1);
        let pos = lo + rng.next() % span;
        let (file, local) = corpus.locate(pos.min(corpus.total - 1));
        let map = corpus.map(file)?;
        let bytes = map.bytes();
        let local = local as usize;
        // Start after a pre-token boundary (we may have landed mid-word), end at one.
        let start = if local == 0 { 0 } else { boundary(bytes, local, block as usize) };
        let end = block_end(bytes, start + block as usize, block as usize);
        // Finding the ends mapped pages around them (the kernel maps up to megabytes per touch):
        // let them go now, or a sample of 1,000 blocks holds gigabytes until it is counted
        // (`MappedFile::release`).
        map.release(local.min(start), end);
        if end > start {
            pieces.push(Piece { file, start, end });
        }
    }
    Ok(pieces)
}

fn block_end(bytes: &[u8], target: usize, limit: usize) -> usize {
    if target >= bytes.len() {
        bytes.len()
    } else {
        boundary(bytes, target, limit)
    }
}

/// The first pre-token boundary at or after `from` within `limit` bytes, else the first character
/// boundary at or after `from`. Text without whitespace (a long line of Chinese, minified data)
/// has no pre-token boundary for megabytes: looking to the end of the file, a block started at
/// the file's end (the sample of a 300 KB line was empty: a vocabulary of 0 merges) or ended there
/// (a block as large as the file, past the sample's budget).
fn boundary(bytes: &[u8], from: usize, limit: usize) -> usize {
    let window = &bytes[..bytes.len().min(from.saturating_add(limit))];
    // A cut inside a character would count two U+FFFD in its place.
    let char_start = || (from..bytes.len()).find(|&i| bytes[i] & 0xC0 != 0x80).unwrap_or(bytes.len());
    next_safe_split(window, from).unwrap_or_else(char_start)
}

/// A tiny, well-known PRNG (Steele et al.), so that samples do not depend on a crate's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corpus_of(dir: &std::path::Path, texts: &[String]) -> Corpus {
        let paths: Vec<PathBuf> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = dir.join(format!("{i}.txt"));
                std::fs::write(&p, t).unwrap();
                p
            })
            .collect();
        Corpus::open(&paths).unwrap()
    }

    fn bytes_of(corpus: &Corpus, pieces: &[Piece]) -> Vec<Vec<u8>> {
        pieces.iter().map(|p| corpus.map(p.file).unwrap().bytes()[p.start..p.end].to_vec()).collect()
    }

    #[test]
    fn small_corpus_is_used_whole() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = corpus_of(dir.path(), &["one two".into(), "".into(), "three".into()]);
        let pieces = plan_sample(&corpus, 1 << 30, 0).unwrap();
        assert_eq!(bytes_of(&corpus, &pieces).concat(), b"one twothree");
    }

    #[test]
    fn text_without_whitespace_is_sampled_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        // 600 KB in one line of Chinese and 8 MB of letters: no pre-token boundary anywhere.
        let texts = ["的一是不了人我在有他这为之大来以个中上们".repeat(10_000), "abcdefgh".repeat(1 << 20)];
        let corpus = corpus_of(dir.path(), &texts);
        for budget in [20_000, 1 << 20] {
            let pieces = plan_sample(&corpus, budget, 3).unwrap();
            let total: usize = pieces.iter().map(|p| p.len()).sum();
            assert!(total as u64 > budget / 2 && total as u64 <= budget + 256 * 4, "a sample of {total} bytes for {budget}");
            for text in bytes_of(&corpus, &pieces) {
                assert!(std::str::from_utf8(&text).is_ok(), "a piece cut inside a character");
            }
        }
    }

    #[test]
    fn large_corpus_is_sampled_across_its_whole_length_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        // 4 files, each word naming its file, ~8 MB in all; a 1 MB budget.
        let texts: Vec<String> = (0..4).map(|i| format!("file{i} words here ").repeat(100_000)).collect();
        let corpus = corpus_of(dir.path(), &texts);
        let pieces = plan_sample(&corpus, 1 << 20, 7).unwrap();
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        assert!(total <= (1 << 20) + 256 * 64, "sample of {total} bytes");
        let joined = String::from_utf8(bytes_of(&corpus, &pieces).concat()).unwrap();
        for i in 0..4 {
            assert!(joined.contains(&format!("file{i}")), "file {i} not sampled");
        }
        // Deterministic for a seed, different for another.
        assert_eq!(pieces, plan_sample(&corpus, 1 << 20, 7).unwrap());
        assert_ne!(pieces, plan_sample(&corpus, 1 << 20, 8).unwrap());
    }
}
