//! arrows-core: the data layer of arrows, in plain Rust (no Python here).
//!
//! - `bytelevel`, `vocab`: the GPT-2 byte-level alphabet and the `tokenizer.json` vocabulary
//! - `pretokenize`, `bpe`: the exact GPT-2 pre-tokenizer and the fast BPE encoder
//! - `tokenizer`: a loaded tokenizer.json (fast encoder, or the `tokenizers` crate for others)
//! - `sample`, `train`: byte-level BPE training on a bounded sample of the corpus
//! - `corpus`: the input files, memory-mapped, as one concatenated byte range
//! - `shard`, `manifest`: the on-disk token store format
//! - `tokenize`: the resumable, parallel `arrows tokenize` job
//! - `store`: opening and verifying a token store
//! - `source`, `windows`, `prefetch`: the window loader (mapped stream, sampler, background batches)
//! - `memory`: the memory this process may still take
//! - `error`: the one error type

pub mod bpe;
pub mod bytelevel;
pub mod corpus;
pub mod error;
pub mod manifest;
pub mod memory;
pub mod prefetch;
pub mod pretokenize;
pub mod sample;
pub mod shard;
pub mod source;
pub mod store;
pub mod tokenize;
pub mod tokenizer;
pub mod train;
pub mod vocab;
pub mod windows;

pub use error::{Error, Result};
