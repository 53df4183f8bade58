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
    /// `cut`: where the text may be cut, as checked at load (`general_cut`).
    General { tokenizer: Box<tokenizers::Tokenizer>, cut: Cut },
}

/// Where a general tokenizer's text may be cut into chunks: at a separator byte (`\n` or a space)
/// between two bytes that are not ASCII whitespace, just before it or just after it. Each rule
/// suits other pre-tokenizers: GPT-2's regex and BERT's split before a `\n`; Llama 3's regex
/// keeps `.\n` together but ends a piece after the `\n`; SentencePiece's Metaspace and
/// ByteLevel with `add_prefix_space` keep lines together but split before a space, where the
/// second part starts with the space they would otherwise prepend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    Nowhere,
    BeforeNewline,
    AfterNewline,
    BeforeSpace,
}

impl Cut {
    /// The rules tried at load, in this order: the first that keeps the ids is used. Cutting
    /// before `\n` comes first, as it always did, so stores made before keep their chunks.
    const RULES: [Cut; 3] = [Cut::BeforeNewline, Cut::AfterNewline, Cut::BeforeSpace];

    /// The separator byte, and how far after it the cut is.
    fn separator(self) -> Option<(u8, usize)> {
        match self {
            Cut::Nowhere => None,
            Cut::BeforeNewline => Some((b'\n', 0)),
            Cut::AfterNewline => Some((b'\n', 1)),
            Cut::BeforeSpace => Some((b' ', 0)),
        }
    }

    /// First cut at or after `from`, never at 0 or at the end.
    fn next(self, bytes: &[u8], from: usize) -> Option<usize> {
        let (sep, after) = self.separator()?;
        let mut q = from.saturating_sub(after).max(1);
        while q + 1 < bytes.len() {
            if bytes[q] == sep && !bytes[q - 1].is_ascii_whitespace() && !bytes[q + 1].is_ascii_whitespace() && q + after >= from {
                return Some(q + after);
            }
            q += 1;
        }
        None
    }
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
        let cut = general_cut(&general);
        Ok(Tokenizer {
            hash: hash_json(&json),
            vocab_size: general.get_vocab_size(true),
            bos_id,
            engine: Engine::General { tokenizer: Box::new(general), cut },
            json,
        })
    }

    /// Whether a text can be cut anywhere at all (else each file is encoded whole, in one piece).
    pub fn can_cut(&self) -> bool {
        !matches!(self.engine, Engine::General { cut: Cut::Nowhere, .. })
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
            // Other tokenizers: only where the rule checked at load allows (none: each file whole).
            Engine::General { cut, .. } => cut.next(bytes, from),
        }
    }
}

/// The first rule of `Cut::RULES` under which a general tokenizer gives the same ids for a text
/// cut in two as for the whole text, or `Cut::Nowhere`. Checked on a few probes, each two parts
/// joined by the rule's separator (`added_token_probes` adds those its added tokens need):
/// - its pre-tokenizer ends a piece at the cut: merges never cross a piece's end, so no merge can
///   join the bytes of the two parts (a tokenizer without pre-tokenizer fails this);
/// - the two parts encode to the whole's ids: nothing is added at the start of the second part
///   (ByteLevel's `add_prefix_space`, Metaspace's `prepend_scheme`, a `Prepend` normalizer, unless
///   the part starts with what they add) and the normalizer does not depend on the context.
fn general_cut(tok: &tokenizers::Tokenizer) -> Cut {
    use tokenizers::{Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    const PROBES: [(&str, &str); 6] = [("hello", "world"), ("The end.", "Next line"), ("a", "b"), ("x = 1;", "y = 2;"), ("café", "naïve"), ("42", "43")];
    let Some(pre_tokenizer) = tok.get_pre_tokenizer() else {
        return Cut::Nowhere;
    };
    let keeps_ids = |rule: Cut| {
        let (sep, after) = rule.separator().expect("a rule with a separator");
        let mut probes: Vec<(String, String)> = PROBES.iter().map(|&(l, r)| (l.to_owned(), r.to_owned())).collect();
        probes.extend(added_token_probes(tok, sep));
        probes.iter().all(|(left, right)| {
            let text = format!("{left}{}{right}", sep as char);
            let cut = left.len() + after;
            let mut normalized = tokenizers::NormalizedString::from(text.as_str());
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
            ends_at_cut && parts.is_some() && parts == ids(&text)
        })
    };
    Cut::RULES.into_iter().find(|&rule| keeps_ids(rule)).unwrap_or(Cut::Nowhere)
}

/// Probes for the added tokens, which the `tokenizers` library matches in the raw text before
/// anything else: a cut inside one (`a\nb` cut at its `\n`) splits it, and one that strips the
/// whitespace beside it (`rstrip`, `lstrip`: `<mask>\nb` reads `<mask>` `b`) loses that
/// whitespace to the other part. Only probes where a cut can fall (non-whitespace on both sides).
fn added_token_probes(tok: &tokenizers::Tokenizer, sep: u8) -> Vec<(String, String)> {
    let mut probes = Vec::new();
    for t in tok.get_added_tokens_decoder().values() {
        let c = t.content.as_bytes();
        for (i, &b) in c.iter().enumerate().take(c.len().saturating_sub(1)).skip(1) {
            if b == sep {
                probes.push((t.content[..i].to_owned(), t.content[i + 1..].to_owned()));
            }
        }
        if t.lstrip || t.rstrip {
            probes.push((t.content.clone(), "b".to_owned()));
            probes.push(("a".to_owned(), t.content.clone()));
        }
    }
    probes.retain(|(l, r)| l.bytes().last().is_some_and(|b| !b.is_ascii_whitespace()) && r.bytes().next().is_some_and(|b| !b.is_ascii_whitespace()));
    probes
}
