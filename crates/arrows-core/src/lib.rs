//! arrows-core: the data layer of arrows, in plain Rust (no Python here).
//!
//! - `bytelevel`, `vocab`: the GPT-2 byte-level alphabet and the `tokenizer.json` vocabulary
//! - `pretokenize`, `bpe`: the exact GPT-2 pre-tokenizer and the fast BPE encoder
//! - `train`: byte-level BPE training on a bounded sample of the corpus
//! - `error`: the one error type

pub mod bpe;
pub mod bytelevel;
pub mod error;
pub mod pretokenize;
pub mod train;
pub mod vocab;

pub use error::{Error, Result};
