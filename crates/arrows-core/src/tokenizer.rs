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
    Fast(Box<Encoder>), // boxed: the encoder's tables make it far larger than the other variant
    /// `cuts_between_lines`: whether the text may be cut between two lines (`general_cuts_between_lines`).
    General { tokenizer: Box<tokenizers::Tokenizer>, cuts_between_lines: bool },
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
            engine: Engine::Fast(Box::new(Encoder::new(bpe))),
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
        let cuts_between_lines = general_cuts_between_lines(&general);
        Ok(Tokenizer {
            hash: hash_json(&json),
            vocab_size: general.get_vocab_size(true),
            bos_id,
            engine: Engine::General { tokenizer: Box::new(general), cuts_between_lines },
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
            Engine::General { tokenizer: tok, .. } => {
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
            // Other tokenizers: cut only between lines that start with a non-space, which regex
            // pre-tokenizers of the GPT family never join, and only where the tokenizer was
            // checked to keep them apart (else each file is encoded whole).
            Engine::General { cuts_between_lines: false, .. } => None,
            Engine::General { cuts_between_lines: true, .. } => {
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

/// Whether a general tokenizer gives the same ids for a text cut between two lines (before a `\n`
/// between two non-spaces, as `next_safe_split` cuts) as for the whole text. Two conditions, each
/// checked on a few probes:
/// - its pre-tokenizer ends a piece at the cut: merges never cross a piece's end, so no merge can
///   join the bytes of two lines (a tokenizer without pre-tokenizer, or SentencePiece's Metaspace,
///   which splits at spaces only, fails this);
/// - the two parts encode to the whole's ids: no prefix is added at the start of each part
///   (ByteLevel's `add_prefix_space`, Metaspace's `prepend_scheme`, a `Prepend` normalizer) and the
///   normalizer does not depend on the context.
fn general_cuts_between_lines(tok: &tokenizers::Tokenizer) -> bool {
    use tokenizers::{Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    const PROBES: [&str; 6] = ["hello\nworld", "The end.\nNext line", "a\nb", "x = 1;\ny = 2;", "café\nnaïve", "42\n43"];
    let Some(pre_tokenizer) = tok.get_pre_tokenizer() else {
        return false;
    };
    PROBES.iter().all(|text| {
        let cut = text.find('\n').expect("every probe has a line break");
        let mut normalized = tokenizers::NormalizedString::from(*text);
        if let Some(normalizer) = tok.get_normalizer() {
            if normalizer.normalize(&mut normalized).is_err() {
                return false;
            }
        }
        let mut pieces = PreTokenizedString::from(normalized);
        if pre_tokenizer.pre_tokenize(&mut pieces).is_err() {
            return false;
        }
        let ends_at_cut = pieces.get_splits(OffsetReferential::Original, OffsetType::Byte).iter().any(|(_, (_, end), _)| *end == cut);
        let ids = |t: &str| tok.encode(t, false).map(|e| e.get_ids().to_vec()).ok();
        let parts = ids(&text[..cut]).zip(ids(&text[cut..])).map(|(mut a, b)| {
            a.extend(b);
            a
        });
        ends_at_cut && parts.is_some() && parts == ids(text)
    })
}
