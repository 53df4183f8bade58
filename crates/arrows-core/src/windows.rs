//! The window sampler: which spans of the token stream make an epoch, in which order, for which
//! data-parallel rank, and how a span becomes a training example.
//!
//! A span is `s = t[i : i+L]` (L = attention length). Its example, for an order `perm` of the L
//! positions, is `input = [BOS] + s[perm[:-1]]`, `target = s[perm]`: forward (identity) gives the
//! reference's `[BOS] + t[i:i+L-1]` -> `t[i:i+L]`, backward (reversed) gives
//! `[BOS] + flip(t[i+1:i+L])` -> `flip(t[i:i+L])`. Both directions predict the same tokens.
//!
//! Spans start every `stride` tokens (reference default `(L-1)//2`) inside one split. The
//! validation split is the contiguous end of the stream, so no training span touches it (the
//! reference drew validation windows from a shuffled list of overlapping windows: leakage).

use crate::error::{Error, Result};
use crate::source::TokenSource;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    Forward,
    Backward,
    /// Any fixed permutation of `0..L`.
    Permuted(Vec<usize>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Valid,
}

#[derive(Clone, Debug)]
pub struct SamplerOptions {
    pub attn_length: usize,
    pub batch_size: usize,
    pub order: Order,
    pub split: Split,
    /// Tokens at the end of the stream reserved for validation.
    pub valid_tokens: u64,
    pub stride: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub rank: usize,
    pub world_size: usize,
    /// Drop the last incomplete batch (training) or serve it (validation).
    pub drop_last: bool,
    pub bos_id: i64,
}

pub struct Sampler {
    pub source: Arc<TokenSource>,
    pub opts: SamplerOptions,
    /// First token of the split, and the number of spans in it.
    first: u64,
    windows: u64,
}

impl Sampler {
    pub fn new(source: Arc<TokenSource>, opts: SamplerOptions) -> Result<Sampler> {
        let o = &opts;
        let origin = source.origin.display().to_string();
        let input = |m: String| Err(Error::Input(format!("{origin}: {m}")));
        let batch_size = |m: String| Err(Error::BatchSize(format!("{origin}: {m}")));
        if o.attn_length < 2 {
            return input(format!("attention length {} is too short: a window needs at least 2 tokens", o.attn_length));
        }
        if o.batch_size == 0 || o.stride == 0 {
            return input("batch size and stride must be positive".into());
        }
        if o.world_size == 0 || o.rank >= o.world_size {
            return input(format!("rank {} does not exist in a world of {} processes", o.rank, o.world_size));
        }
        if let Order::Permuted(p) = &o.order {
            let mut seen = vec![false; o.attn_length];
            if p.len() != o.attn_length || !p.iter().all(|&i| i < o.attn_length && !std::mem::replace(&mut seen[i], true)) {
                return input(format!("the permutation must list each of 0..={} exactly once (got {} entries)", o.attn_length - 1, p.len()));
            }
        }
        let total = source.len();
        if o.valid_tokens >= total {
            return input(format!("the validation split ({} tokens) leaves no training tokens in a stream of {total}", o.valid_tokens));
        }
        let (first, len, name) = match o.split {
            Split::Train => (0, total - o.valid_tokens, "training"),
            Split::Valid => (total - o.valid_tokens, o.valid_tokens, "validation"),
        };
        let l = o.attn_length as u64;
        if len < l {
            let larger = if o.split == Split::Valid { ", a larger validation split (valid_fraction, valid_tokens)" } else { "" };
            return input(format!("a window of {l} tokens is longer than the {name} split ({len} tokens of {total}); use a shorter attention length{larger} or more data"));
        }
        let windows = (len - l) / o.stride as u64 + 1;
        // All ranks' batches together; a product beyond u64 exceeds any split's windows.
        let per_step = (o.batch_size as u64).checked_mul(o.world_size as u64);
        if o.drop_last && per_step.is_none_or(|n| windows < n) {
            return batch_size(format!(
                "the {name} split has {windows} windows, fewer than one batch of {} × {} process(es); lower the batch size",
                o.batch_size, o.world_size
            ));
        }
        // A batch's buffer holds inputs and targets for its windows (no more than the split has).
        let rows = (o.batch_size as u64).min(windows);
        if usize::try_from(rows).ok().and_then(|r| r.checked_mul(2 * o.attn_length)).is_none_or(|n| n > isize::MAX as usize / 8) {
            return batch_size(format!("a batch of {rows} windows of {l} tokens is more than this machine can address; lower the batch size"));
        }
        Ok(Sampler { source, opts, first, windows })
    }

    /// The most windows a batch holds: the batch size, or all the split's windows if fewer.
    pub fn max_batch_len(&self) -> usize {
        (self.opts.batch_size as u64).min(self.windows) as usize
    }

    /// Spans in the split (all ranks together).
    pub fn windows(&self) -> u64 {
        self.windows
    }

    /// Batches per epoch for this rank. Batch b of rank r holds the epoch positions
    /// `[(b·W + r)·B, (b·W + r + 1)·B)`: W ranks with batch B together serve exactly what one
    /// process with batch W·B would.
    pub fn batches_per_epoch(&self) -> u64 {
        let (b, w, r) = (self.opts.batch_size as u64, self.opts.world_size as u64, self.opts.rank as u64);
        // Saturating: a product past u64 (a batch size near 2^63) exceeds the windows all the
        // same, and a wrapped one divided by zero.
        if self.opts.drop_last {
            self.windows / b.saturating_mul(w)
        } else {
            // Batches whose first position exists.
            let first_positions = self.windows.saturating_sub(r.saturating_mul(b));
            first_positions.div_ceil(b.saturating_mul(w))
        }
    }

    /// Windows in batch `b` (B, or fewer for the last batch when not dropping it).
    pub fn batch_len(&self, b: u64) -> usize {
        let (bs, w, r) = (self.opts.batch_size as u64, self.opts.world_size as u64, self.opts.rank as u64);
        let start = b.saturating_mul(w).saturating_add(r).saturating_mul(bs);
        self.windows.saturating_sub(start).min(bs) as usize
    }

    /// Stream offset of the span at position `j` of batch `b` in `epoch`.
    pub fn span_start(&self, epoch: u64, b: u64, j: usize) -> u64 {
        let (bs, w, r) = (self.opts.batch_size as u64, self.opts.world_size as u64, self.opts.rank as u64);
        let position = (b * w + r) * bs + j as u64;
        let k = if self.opts.shuffle { permute(position, self.windows, self.opts.seed, epoch) } else { position };
        self.first + k * self.opts.stride as u64
    }

    /// Write batch `b` of `epoch`: `inputs` and `targets` are `batch_len(b) × L` each, row-major.
    pub fn fill(&self, epoch: u64, b: u64, inputs: &mut [i64], targets: &mut [i64], span: &mut Vec<i64>) -> Result<()> {
        let l = self.opts.attn_length;
        let n = self.batch_len(b);
        assert!(inputs.len() >= n * l && targets.len() >= n * l);
        span.resize(l, 0);
        for j in 0..n {
            let start = self.span_start(epoch, b, j);
            let (inp, tgt) = (&mut inputs[j * l..(j + 1) * l], &mut targets[j * l..(j + 1) * l]);
            inp[0] = self.opts.bos_id;
            match &self.opts.order {
                // Straight into place: target = s.
                Order::Forward => self.source.read(start, tgt)?,
                // Read into place, then reverse in place (cheaper than a reversing copy).
                Order::Backward => {
                    self.source.read(start, tgt)?;
                    tgt.reverse();
                }
                Order::Permuted(p) => {
                    self.source.read(start, span)?;
                    tgt.iter_mut().zip(p).for_each(|(t, &k)| *t = span[k]);
                }
            }
            // In every order the input is BOS followed by the target shifted by one.
            inp[1..].copy_from_slice(&tgt[..l - 1]);
        }
        Ok(())
    }
}

/// A pseudo-random permutation of `0..n`, different for each (seed, epoch), computed per index
/// in O(1) memory: a 4-round Feistel network on the smallest even number of bits covering n,
/// with cycle walking back into range. An epoch of billions of windows needs no shuffled array,
/// and any position can be computed directly (exact resume, disjoint ranks).
pub fn permute(index: u64, n: u64, seed: u64, epoch: u64) -> u64 {
    debug_assert!(index < n);
    if n <= 1 {
        return index;
    }
    let bits = 64 - (n - 1).leading_zeros();
    let half = bits.div_ceil(2).max(1);
    let mask = (1u64 << half) - 1;
    let key = mix(seed ^ mix(epoch.wrapping_add(0x5851_F42D_4C95_7F2D)));
    let mut x = index;
    loop {
        let (mut left, mut right) = (x >> half, x & mask);
        for round in 0..4u64 {
            let f = mix(right ^ key ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15)) & mask;
            (left, right) = (right, left ^ f);
        }
        x = (left << half) | right;
        if x < n {
            return x;
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn permute_is_a_bijection(n in 1u64..3000, seed in any::<u64>(), epoch in 0u64..5) {
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let k = permute(i, n, seed, epoch);
                prop_assert!(k < n && !seen[k as usize]);
                seen[k as usize] = true;
            }
        }
    }

    /// A sampler over `tokens` ids (all 0) with batch size `batch` in a world of `world`.
    fn sampler(dir: &std::path::Path, tokens: u64, batch: usize, world: usize, rank: usize, drop_last: bool) -> Result<Sampler> {
        let path = dir.join("ids.bin");
        std::fs::write(&path, vec![0u8; 2 * tokens as usize]).unwrap();
        let source = TokenSource::from_raw(&path, 0, tokens, crate::source::IdType::U16, Some(10)).unwrap();
        let opts = SamplerOptions {
            attn_length: 4,
            batch_size: batch,
            order: Order::Forward,
            split: Split::Train,
            valid_tokens: 0,
            stride: 1,
            seed: 0,
            shuffle: true,
            rank,
            world_size: world,
            drop_last,
            bos_id: 0,
        };
        Sampler::new(Arc::new(source), opts)
    }

    #[test]
    fn batch_sizes_near_overflow_serve_every_window_once() {
        // batch × world = 2^64 wrapped to 0: a division by zero (a panic) on every path.
        let dir = tempfile::tempdir().unwrap();
        let huge = 1usize << 62;
        let err = sampler(dir.path(), 100, huge, 4, 0, true).err().expect("fewer windows than one batch");
        assert!(matches!(&err, Error::BatchSize(m) if m.contains("lower the batch size")), "{err}");
        let first = sampler(dir.path(), 100, huge, 4, 0, false).unwrap();
        assert_eq!((first.windows(), first.batches_per_epoch(), first.batch_len(0), first.max_batch_len()), (97, 1, 97, 97));
        let last = sampler(dir.path(), 100, huge, 4, 3, false).unwrap();
        assert_eq!((last.batches_per_epoch(), last.batch_len(0)), (0, 0));
        // The largest batch size Python passes, alone.
        let one = sampler(dir.path(), 100, (1 << 63) - 1, 1, 0, false).unwrap();
        assert_eq!((one.batches_per_epoch(), one.batch_len(0)), (1, 97));
        let starts: Vec<u64> = (0..97).map(|j| one.span_start(0, 0, j)).collect();
        let mut sorted = starts.clone();
        sorted.sort();
        assert_eq!(sorted, (0..97).collect::<Vec<u64>>());
    }

    #[test]
    fn permute_depends_on_seed_and_epoch() {
        let order = |seed, epoch| (0..1000).map(|i| permute(i, 1000, seed, epoch)).collect::<Vec<_>>();
        assert_ne!(order(0, 0), order(1, 0));
        assert_ne!(order(0, 0), order(0, 1));
        assert_eq!(order(3, 2), order(3, 2));
        assert_ne!(order(0, 0), (0..1000).collect::<Vec<_>>());
    }
}
