//! Background batch assembly: worker threads fill a ring of reusable buffers with the next batches
//! while the consumer trains on earlier ones.
//!
//! Ownership is explicit: a buffer is Free, being filled by one worker, Ready for the consumer, or
//! Leased to it. A lease returns its buffer only when dropped, so a buffer can never be overwritten
//! while anything (e.g. a tensor viewing it from Python) still holds its lease. If the consumer
//! keeps every buffer leased and asks for more, the ring grows rather than deadlocking.
//!
//! A process forked while a prefetcher runs (a DataLoader worker, a fork Pool) inherits its
//! memory but not its threads: there the prefetcher refuses to serve, and dropping it or its
//! leases leaves the inherited state alone (the workers cannot be joined, and the lock may have
//! been held by one of them at the fork).

use crate::error::{Error, Result};
use crate::windows::Sampler;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// One buffer: inputs then targets, `2 × rows × L` i64 (rows: the largest batch), allocated once.
struct Buffer(Box<[i64]>);

struct State {
    /// Buffers not in use; a worker takes one to fill.
    free: Vec<Buffer>,
    /// Filled batches by sequence number, waiting for the consumer.
    ready: HashMap<u64, (Buffer, Result<()>)>,
    /// Next sequence number a worker will fill, and the next the consumer will take.
    next_claim: u64,
    next_take: u64,
    /// Sequence numbers to produce: 0..end.
    end: u64,
    /// Buffers allocated so far (free + being filled + ready + leased).
    allocated: usize,
    lookahead: u64,
    stop: bool,
}

struct Shared {
    sampler: Arc<Sampler>,
    epoch: u64,
    first_batch: u64,
    buffer_len: usize,
    state: Mutex<State>,
    changed: Condvar,
    /// The process whose threads the workers are.
    owner_pid: u32,
}

impl Shared {
    /// In a process forked from the owner, which has none of the workers.
    fn in_forked_child(&self) -> bool {
        std::process::id() != self.owner_pid
    }
}

pub struct Prefetcher {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// A filled batch. Its buffer goes back to the ring when this is dropped.
pub struct Lease {
    shared: Arc<Shared>,
    buffer: Option<Buffer>,
    /// Windows in this batch.
    pub rows: usize,
    pub attn_length: usize,
}

impl Lease {
    /// `[inputs (rows × L) | targets (rows × L)]`, contiguous.
    pub fn data(&self) -> &[i64] {
        &self.buffer.as_ref().unwrap().0[..2 * self.rows * self.attn_length]
    }
    pub fn data_mut(&mut self) -> &mut [i64] {
        let n = 2 * self.rows * self.attn_length;
        &mut self.buffer.as_mut().unwrap().0[..n]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.shared.in_forked_child() {
            std::mem::forget(self.buffer.take()); // the inherited ring is never used again here
            return;
        }
        if let Some(buffer) = self.buffer.take() {
            let mut st = self.shared.state.lock().unwrap();
            st.free.push(buffer);
            self.shared.changed.notify_all();
        }
    }
}

impl Prefetcher {
    /// Serve batches `first_batch ..` of `epoch` (to the end of the epoch) using `threads`
    /// workers and `buffers` buffers (so up to `buffers` batches are prepared ahead).
    pub fn start(sampler: Arc<Sampler>, epoch: u64, first_batch: u64, threads: usize, buffers: usize) -> Prefetcher {
        let end = sampler.batches_per_epoch().saturating_sub(first_batch);
        // Sized for the largest batch served, not the batch size asked for: a batch size beyond
        // the split's windows allocated (and zeroed) memory no batch would use, terabytes for 2^33.
        let buffer_len = 2 * sampler.max_batch_len() * sampler.opts.attn_length;
        let buffers = buffers.max(1);
        let state = State {
            free: (0..buffers).map(|_| Buffer(vec![0i64; buffer_len].into_boxed_slice())).collect(),
            ready: HashMap::new(),
            next_claim: 0,
            next_take: 0,
            end,
            allocated: buffers,
            lookahead: buffers as u64,
            stop: false,
        };
        let shared = Arc::new(Shared {
            sampler,
            epoch,
            first_batch,
            buffer_len,
            state: Mutex::new(state),
            changed: Condvar::new(),
            owner_pid: std::process::id(),
        });
        let workers = (0..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new().name(format!("arrows-loader-{i}")).spawn(move || work(&shared)).expect("spawn a loader thread")
            })
            .collect();
        Prefetcher { shared, workers }
    }

    /// Batches left to serve.
    pub fn remaining(&self) -> u64 {
        let st = self.shared.state.lock().unwrap();
        st.end - st.next_take
    }

    /// The next batch, waiting for it if needed; `None` at the end of the epoch.
    pub fn next(&self) -> Option<Result<Lease>> {
        let sh = &self.shared;
        if sh.in_forked_child() {
            // No worker would ever fill the batch: waiting would hang for good.
            return Some(Err(Error::Input(format!(
                "this batch stream was started in process {} and this process was forked from it, without its loader threads; start a new iteration here",
                sh.owner_pid
            ))));
        }
        let mut st = sh.state.lock().unwrap();
        let seq = st.next_take;
        if seq >= st.end {
            return None;
        }
        loop {
            if let Some((buffer, result)) = st.ready.remove(&seq) {
                st.next_take += 1;
                sh.changed.notify_all();
                drop(st);
                let lease = Lease {
                    shared: sh.clone(),
                    buffer: Some(buffer),
                    rows: sh.sampler.batch_len(sh.first_batch + seq),
                    attn_length: sh.sampler.opts.attn_length,
                };
                return Some(result.map(|_| lease));
            }
            // Nobody is filling `seq` and no buffer is free: the consumer holds them all.
            if st.next_claim <= seq && st.free.is_empty() {
                st.free.push(Buffer(vec![0i64; sh.buffer_len].into_boxed_slice()));
                st.allocated += 1;
                sh.changed.notify_all();
            }
            st = sh.changed.wait(st).unwrap();
        }
    }

    /// Buffers allocated (grows only when leases are held).
    pub fn buffers(&self) -> usize {
        self.shared.state.lock().unwrap().allocated
    }
}

fn work(sh: &Shared) {
    let mut span = Vec::new();
    loop {
        let (seq, mut buffer) = {
            let mut st = sh.state.lock().unwrap();
            loop {
                if st.stop || st.next_claim >= st.end {
                    return;
                }
                if st.next_claim < st.next_take + st.lookahead && !st.free.is_empty() {
                    break;
                }
                st = sh.changed.wait(st).unwrap();
            }
            let seq = st.next_claim;
            st.next_claim += 1;
            (seq, st.free.pop().unwrap())
        };
        let b = sh.first_batch + seq;
        let rows = sh.sampler.batch_len(b);
        let l = sh.sampler.opts.attn_length;
        let (inputs, targets) = buffer.0[..2 * rows * l].split_at_mut(rows * l);
        // A panic here would leave the consumer waiting forever: turn it into an error.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sh.sampler.fill(sh.epoch, b, inputs, targets, &mut span)))
            .unwrap_or_else(|_| Err(Error::Input(format!("internal error while assembling batch {b}"))));
        let mut st = sh.state.lock().unwrap();
        st.ready.insert(seq, (buffer, result));
        sh.changed.notify_all();
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        if self.shared.in_forked_child() {
            std::mem::forget(std::mem::take(&mut self.workers)); // joining them would panic
            return;
        }
        self.shared.state.lock().unwrap().stop = true;
        self.shared.changed.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{IdType, TokenSource};
    use crate::windows::{Order, SamplerOptions, Split};

    fn sampler(dir: &std::path::Path, order: Order) -> Arc<Sampler> {
        let ids: Vec<u8> = (0..4000i32).flat_map(|i| (i % 1000).to_le_bytes()).collect();
        let path = dir.join("ids.bin");
        std::fs::write(&path, ids).unwrap();
        let source = TokenSource::from_raw(&path, 0, 4000, IdType::I32, Some(1000)).unwrap();
        let opts = SamplerOptions {
            attn_length: 9,
            batch_size: 5,
            order,
            split: Split::Train,
            valid_tokens: 0,
            stride: 4,
            seed: 1,
            shuffle: true,
            rank: 0,
            world_size: 1,
            drop_last: true,
            bos_id: 0,
        };
        Arc::new(Sampler::new(Arc::new(source), opts).unwrap())
    }

    #[test]
    fn batches_arrive_in_order_with_the_sampler_contents() {
        let dir = tempfile::tempdir().unwrap();
        let s = sampler(dir.path(), Order::Backward);
        let p = Prefetcher::start(s.clone(), 3, 2, 3, 2);
        let mut b = 2;
        while let Some(lease) = p.next() {
            let lease = lease.unwrap();
            let (mut x, mut y, mut span) = (vec![0; 45], vec![0; 45], Vec::new());
            s.fill(3, b, &mut x, &mut y, &mut span).unwrap();
            assert_eq!(lease.data(), [x, y].concat().as_slice(), "batch {b}");
            b += 1;
        }
        assert_eq!(b, s.batches_per_epoch());
    }

    #[test]
    fn held_leases_are_never_refilled_and_the_ring_grows() {
        let dir = tempfile::tempdir().unwrap();
        let s = sampler(dir.path(), Order::Forward);
        let p = Prefetcher::start(s, 0, 0, 2, 2);
        let mut held = Vec::new();
        while let Some(lease) = p.next() {
            let lease = lease.unwrap();
            let copy = lease.data().to_vec();
            held.push((lease, copy));
        }
        assert!(p.buffers() >= held.len());
        for (lease, copy) in &held {
            assert_eq!(lease.data(), copy.as_slice()); // nothing wrote into a held buffer
        }
        let n = held.len();
        drop(held);
        assert!(n > 50);
    }

    #[test]
    fn a_batch_size_beyond_the_windows_allocates_for_the_windows() {
        // 2^40 windows × 9 tokens × 2 × 8 bytes: the process aborted ("memory allocation of ...
        // bytes failed") before the one batch of 998 windows was served.
        let dir = tempfile::tempdir().unwrap();
        let s = sampler(dir.path(), Order::Forward);
        let opts = SamplerOptions { batch_size: 1 << 40, drop_last: false, ..s.opts.clone() };
        let s = Arc::new(Sampler::new(s.source.clone(), opts).unwrap());
        let p = Prefetcher::start(s.clone(), 0, 0, 1, 2);
        let lease = p.next().unwrap().unwrap();
        assert_eq!((lease.rows as u64, lease.data().len()), (s.windows(), 2 * 998 * 9));
        drop(lease);
        assert!(p.next().is_none());
    }

    #[test]
    fn released_leases_keep_the_ring_small() {
        let dir = tempfile::tempdir().unwrap();
        let s = sampler(dir.path(), Order::Forward);
        let p = Prefetcher::start(s, 0, 0, 2, 3);
        while let Some(lease) = p.next() {
            drop(lease.unwrap());
        }
        assert_eq!(p.buffers(), 3);
    }
}
