//! The tokenizer a token store is encoded with: a `tokenizer.json` file, encoded by our fast
//! byte-level BPE encoder when it is GPT-2 style, else by the general encoder of the `tokenizers`
//! crate (any other model, normalizer or pre-tokenizer).

use crate::bpe::{Encoder, WordCache};
use crate::error::{Error, IoContext, Result};
use crate::vocab::ByteBpe;
use std::path::Path;

pub struct Tokenizer {
    /// The exact text of `tokenizer.json`; its hash identifies the tokenizer.
    pub json: String,
    pub hash: u64,
    pub vocab_size: usize,
    /// Id of `<|endoftext|>` (the BOS of every window), if the vocabulary has it.
    pub bos_id: Option<u32>,
    engine: Engine,
}

enum Engine {
    Fast(Encoder),
    General(Box<tokenizers::Tokenizer>),
}

/// Identity of a tokenizer: the hash of its file's bytes.
pub fn hash_json(json: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(json.as_bytes())
}

impl Tokenizer {
    pub fn from_bpe(bpe: &ByteBpe) -> Self {
        Self::fast(bpe, bpe.to_json())
    }

    fn fast(bpe: &ByteBpe, json: String) -> Self {
        Tokenizer {
            hash: hash_json(&json),
            vocab_size: bpe.vocab_size(),
            bos_id: bpe.bos_id(),
            engine: Engine::Fast(Encoder::new(bpe)),
            json,
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).at(path)?;
        Self::from_json(json, path)
    }

    /// `path` is only used in error messages.
    pub fn from_json(json: String, path: &Path) -> Result<Self> {
        if let Some(bpe) = ByteBpe::from_json(&json, path)? {
            return Ok(Self::fast(&bpe, json));
        }
        let general: tokenizers::Tokenizer =
            json.parse().map_err(|e| Error::tokenizer(path, format!("cannot be loaded by the tokenizers library: {e}")))?;
        let bos_id = general.token_to_id(crate::vocab::END_OF_TEXT);
        Ok(Tokenizer {
            hash: hash_json(&json),
            vocab_size: general.get_vocab_size(true),
            bos_id,
            engine: Engine::General(Box::new(general)),
            json,
        })
    }

    /// Whether ids are produced by the fast byte-level encoder.
    pub fn is_fast(&self) -> bool {
        matches!(self.engine, Engine::Fast(_))
    }

    /// Append the ids of `text`, exactly as the `tokenizers` library encodes it (no added BOS/EOS).
    pub fn encode(&self, text: &str, cache: &mut WordCache, out: &mut Vec<u32>) -> Result<()> {
        match &self.engine {
            Engine::Fast(enc) => enc.encode(text, cache, out),
            Engine::General(tok) => {
                let enc = tok
                    .encode(text, false)
                    .map_err(|e| Error::Input(format!("the tokenizer failed on a piece of text: {e}")))?;
                out.extend_from_slice(enc.get_ids());
            }
        }
        Ok(())
    }

    /// First position at or after `from` where the text can be cut without changing the ids.
    pub fn next_safe_split(&self, bytes: &[u8], from: usize) -> Option<usize> {
        match &self.engine {
            Engine::Fast(enc) => enc.next_safe_split(bytes, from),
            // Other pre-tokenizers are not analysed: cut only between lines that start with a
            // non-space, which regex pre-tokenizers of the GPT family never join.
            Engine::General(_) => {
                let mut p = from.max(1);
                while p + 1 < bytes.len() {
                    if bytes[p] == b'\n' && bytes[p - 1] != b'\n' && !bytes[p - 1].is_ascii_whitespace() && !bytes[p + 1].is_ascii_whitespace() {
                        return Some(p);
                    }
                    p += 1;
                }
                None
            }
        }
    }
}
