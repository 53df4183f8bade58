//! The tokenizer a token store is encoded with: a `tokenizer.json` file, encoded by our fast
//! byte-level BPE encoder when it is GPT-2 style, else by the general encoder of the `tokenizers`
//! crate (any other model, normalizer or pre-tokenizer).

use crate::bpe::{Encoder, WordCache};
use crate::error::{Error, IoContext, Result};
use crate::vocab::{ByteBpe, END_OF_TEXT};
use serde_json::Value;
use std::cell::Cell;
use std::path::Path;
use std::sync::Once;

pub struct Tokenizer {
    /// The exact text of `tokenizer.json`; its hash identifies the tokenizer.
    pub json: String,
    pub hash: u64,
    pub vocab_size: usize,
    /// The BOS every training window begins with: `<|endoftext|>`, else the tokenizer's own
    /// (`own_bos`); None when it has neither, and windows begin with id 0.
    pub bos_id: Option<u32>,
    /// Id of `<|endoftext|>`, if the tokenizer has it as a special token.
    end_of_text: Option<u32>,
    engine: Engine,
}

enum Engine {
    Fast(Box<Encoder>), // boxed: the encoder's tables make it far larger than the other variant
    /// `cut`: where the text may be cut, as checked at load (`general_cut`).
    General { tokenizer: Box<tokenizers::Tokenizer>, cut: Cut },
}

/// Where a general tokenizer's text may be cut into chunks: at a separator byte (`\n` or a space)
/// between two characters that are not whitespace, just before it or just after it. Each rule
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
            if bytes[q] == sep && q + after >= from && !last_char_is_space(&bytes[..q]) && !first_char_is_space(&bytes[q + 1..]) {
                return Some(q + after);
            }
            q += 1;
        }
        None
    }
}

/// Whitespace to a pre-tokenizer: Unicode's White_Space (a regex's `\s`, `char::is_whitespace`),
/// and U+001C..U+001F, which Python's `isspace` adds. Not only ASCII: a whitespace run such as
/// `\n\u{a0}\n` is one piece to Llama 3's `\s*[\r\n]+`, and a cut inside it changed the ids.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Whether the last character of `bytes`, decoded lossily (U+FFFD for invalid bytes), is whitespace.
fn last_char_is_space(bytes: &[u8]) -> bool {
    // A character takes at most 4 bytes.
    let tail = &bytes[bytes.len().saturating_sub(4)..];
    tail.utf8_chunks().last().is_some_and(|c| c.invalid().is_empty() && c.valid().chars().last().is_some_and(is_space))
}

/// Whether the first character of `bytes`, decoded lossily, is whitespace.
fn first_char_is_space(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(4)];
    head.utf8_chunks().next().and_then(|c| c.valid().chars().next()).is_some_and(is_space)
}

thread_local! {
    /// Set while `without_panic` runs on this thread: the panic it catches becomes an error
    /// message, so the panic hook must not also print it.
    static PANIC_IS_CAUGHT: Cell<bool> = const { Cell::new(false) };
}

/// Installs, once per process, a panic hook that stays silent for the panics `without_panic`
/// catches and hands every other panic to the hook that was there before (Rust's default: the
/// message on stderr). Without it a user saw "thread panicked at ..." above the clean error.
fn quiet_hook_for_caught_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PANIC_IS_CAUGHT.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// `f()`, or the message of a panic inside it: the `tokenizers` library panics on some files it
/// should refuse (a BPE whose `continuing_subword_prefix` is longer than the right part of a
/// merge: "start byte index 2 is out of bounds"), which reached Python as a PanicException.
fn without_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    quiet_hook_for_caught_panics();
    let was_caught = PANIC_IS_CAUGHT.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    PANIC_IS_CAUGHT.with(|c| c.set(was_caught));
    result.map_err(|panic| {
        let text = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        format!("it failed inside ({})", text.unwrap_or_else(|| "a panic".into()))
    })
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
            bos_id: bpe.bos_id().or_else(|| own_bos_id(&json, bpe.vocab_size())),
            end_of_text: bpe.bos_id(),
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
        let mut general: tokenizers::Tokenizer = without_panic(|| json.parse::<tokenizers::Tokenizer>())
            .and_then(|parsed| parsed.map_err(|e| e.to_string()))
            .map_err(|e| Error::tokenizer(path, format!("cannot be loaded by the tokenizers library: {e}")))?;
        // A file saved with truncation or padding on (as many are, for a model's input length)
        // made `encode` cut each chunk of the corpus to max_length ids, or pad it with pad ids:
        // a corpus is encoded whole, never truncated nor padded.
        general.with_truncation(None).expect("turning truncation off cannot fail");
        general.with_padding(None);
        // Only as a special token: a model may also have learned the text `<|endoftext|>` as an
        // ordinary piece, which would then begin windows and stand in the text as well.
        let end_of_text = general.get_added_tokens_decoder().into_iter().find(|(_, t)| t.special && t.content == END_OF_TEXT).map(|(id, _)| id);
        // One more than the largest id, not the number of tokens (`get_vocab_size`): ids may leave
        // gaps, and a vocabulary of 4 tokens up to id 70000 was stored in u16, 65537 becoming 1.
        let vocab_size = general.get_vocab(true).into_values().max().map_or(0, |id| id as usize + 1);
        let bos_id = end_of_text.or_else(|| own_bos_id(&json, vocab_size));
        let cut = without_panic(|| general_cut(&general)).unwrap_or(Cut::Nowhere);
        Ok(Tokenizer {
            hash: hash_json(&json),
            vocab_size,
            bos_id,
            end_of_text,
            engine: Engine::General { tokenizer: Box::new(general), cut },
            json,
        })
    }

    /// What the user should know of the BOS that a store made with this tokenizer records
    /// (`recorded`, the manifest's `bos_id`) when it is not `<|endoftext|>`: which token it is and
    /// why it was chosen, or that windows begin with id 0, whatever that is.
    /// `chosen`: the BOS was given with `--bos`.
    pub fn bos_note(&self, recorded: Option<u32>, chosen: bool) -> Option<String> {
        if recorded.is_some() && recorded == self.end_of_text {
            return None;
        }
        let doc: Value = serde_json::from_str(&self.json).ok()?;
        let Some(id) = recorded else {
            let (name, special) = token_name(&doc, 0);
            let head = format!("the tokenizer has no <|endoftext|> nor a BOS of its own, so training windows will begin with id 0 ({name:?}) as their BOS");
            return Some(if special {
                format!("{head}, one of its special tokens")
            } else {
                format!(
                    "{head}, a token of the text itself; to choose another, tokenize again with --bos TOKEN and --force, \
                     or add <|endoftext|> to the tokenizer (Tokenizer.add_special_tokens([\"<|endoftext|>\"]) keeps every other id)"
                )
            });
        };
        let (name, _) = token_name(&doc, id);
        let why = match own_bos(&doc).filter(|b| b.id == id) {
            _ if chosen => "chosen with --bos",
            Some(b) => b.why,
            None => "recorded when the store was started",
        };
        // A BOS other than the tokenizer's <|endoftext|> was chosen with --bos (now, or when the store
        // was started): the note must not say the tokenizer lacks it.
        Some(match self.end_of_text {
            Some(eot) => format!("training windows will begin with {name:?} (id {id}) as their BOS, not the tokenizer's <|endoftext|> (id {eot}): {why}"),
            None => format!("the tokenizer has no <|endoftext|>, so training windows will begin with {name:?} (id {id}) as their BOS: {why}"),
        })
    }

    /// The id of the token whose text is `name` (a special token's content, or a vocabulary
    /// entry as tokenizer.json writes it: `Ġthe` in a byte-level BPE), for `--bos`; an error
    /// that lists the special tokens when there is none.
    pub fn token_id_for_bos(&self, name: &str) -> Result<u32> {
        let doc: Value = serde_json::from_str(&self.json).map_err(|e| Error::Input(format!("tokenizer.json: {e}")))?;
        let added = doc.get("added_tokens").and_then(Value::as_array).cloned().unwrap_or_default();
        let of_added = added.iter().find(|t| t.get("content").and_then(Value::as_str) == Some(name)).and_then(|t| t.get("id")?.as_u64());
        let vocab = doc.get("model").and_then(|m| m.get("vocab"));
        let of_vocab = match vocab {
            Some(Value::Object(map)) => map.get(name).and_then(Value::as_u64),
            Some(Value::Array(pieces)) => pieces.iter().position(|p| p.get(0).and_then(Value::as_str) == Some(name)).map(|i| i as u64),
            _ => None,
        };
        if let Some(id) = of_added.or(of_vocab).and_then(|id| u32::try_from(id).ok()).filter(|&id| (id as usize) < self.vocab_size) {
            return Ok(id);
        }
        let specials: Vec<String> = added.iter().filter_map(|t| t.get("content")?.as_str()).take(12).map(|c| format!("{c:?}")).collect();
        let listed = if specials.is_empty() { "it has no special tokens".to_owned() } else { format!("its special tokens: {}", specials.join(", ")) };
        Err(Error::Input(format!("--bos {name:?}: not a token of the tokenizer ({listed}); give a token's text as tokenizer.json writes it")))
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
                let enc = without_panic(|| tok.encode(text, false).map_err(|e| e.to_string()))
                    .and_then(|encoded| encoded)
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
/// anything else: a cut at one's separator (`a\nb` at its `\n`; `x\n` in `ax\nb`, cut before
/// the `\n`) splits it, and one that strips the whitespace beside it (`rstrip`, `lstrip`:
/// `<mask>\nb` reads `<mask>` `b`) loses that whitespace to the other part. Only probes where a
/// cut can fall (non-whitespace on both sides).
fn added_token_probes(tok: &tokenizers::Tokenizer, sep: u8) -> Vec<(String, String)> {
    let mut probes = Vec::new();
    for t in tok.get_added_tokens_decoder().values() {
        for (i, _) in t.content.match_indices(sep as char) {
            // The whole token in a text, with a letter beside a separator at either end of it.
            let left = if i == 0 { "a".to_owned() } else { t.content[..i].to_owned() };
            let right = if i + 1 == t.content.len() { "b".to_owned() } else { t.content[i + 1..].to_owned() };
            probes.push((left, right));
        }
        if t.lstrip || t.rstrip {
            probes.push((t.content.clone(), "b".to_owned()));
            probes.push(("a".to_owned(), t.content.clone()));
        }
    }
    probes.retain(|(l, r)| l.bytes().last().is_some_and(|b| !b.is_ascii_whitespace()) && r.bytes().next().is_some_and(|b| !b.is_ascii_whitespace()));
    probes
}

/// A tokenizer's own beginning-of-text token, for one without `<|endoftext|>`.
struct OwnBos {
    id: u32,
    why: &'static str,
}

/// Names that tokenizers give their beginning-of-text token (Llama 3, SentencePiece, Gemma, ...).
const BOS_NAMES: [&str; 6] = ["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<BOS>", "[BOS]"];

/// The token a tokenizer itself puts at the beginning of a text: the special token its
/// post-processor adds before a single sequence (SentencePiece's `<s>`, Llama 3's
/// `<|begin_of_text|>`, BERT's `[CLS]`), else a special token named as a BOS (`BOS_NAMES`). Windows
/// then begin as the tokenizer's own model would have seen a text begin.
fn own_bos(doc: &Value) -> Option<OwnBos> {
    if let Some(id) = doc.get("post_processor").and_then(post_processor_bos) {
        return Some(OwnBos { id, why: "its post-processor puts it before every text" });
    }
    let specials: Vec<(&str, u64)> = doc
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("special").and_then(Value::as_bool) == Some(true))
        .filter_map(|t| Some((t.get("content")?.as_str()?, t.get("id")?.as_u64()?)))
        .collect();
    let id = BOS_NAMES.iter().find_map(|name| specials.iter().find(|(c, _)| c == name).map(|&(_, id)| id))?;
    Some(OwnBos { id: u32::try_from(id).ok()?, why: "its special token for the beginning of a text" })
}

/// `own_bos`'s id, for the tokenizer.json text `json` of a vocabulary of `vocab_size` ids.
fn own_bos_id(json: &str, vocab_size: usize) -> Option<u32> {
    let doc: Value = serde_json::from_str(json).ok()?;
    own_bos(&doc).map(|b| b.id).filter(|&id| (id as usize) < vocab_size)
}

/// The id of the special token a post-processor (its tokenizer.json section) adds first, before
/// a single sequence.
fn post_processor_bos(p: &Value) -> Option<u32> {
    let id = match p.get("type")?.as_str()? {
        "TemplateProcessing" => {
            let first = p.get("single")?.as_array()?.first()?;
            let name = first.get("SpecialToken")?.get("id")?.as_str()?;
            match p.get("special_tokens")?.get(name)?.get("ids")?.as_array()?.as_slice() {
                [id] => id.as_u64()?,
                _ => return None, // several ids: not one token to begin with
            }
        }
        "BertProcessing" | "RobertaProcessing" => p.get("cls")?.get(1)?.as_u64()?,
        "Sequence" => return p.get("processors")?.as_array()?.iter().find_map(post_processor_bos),
        _ => return None,
    };
    u32::try_from(id).ok()
}

/// The text of token `id` in a tokenizer.json (as its vocabulary writes it), and whether it is a
/// special token.
fn token_name(doc: &Value, id: u32) -> (String, bool) {
    let id = u64::from(id);
    let added = doc.get("added_tokens").and_then(Value::as_array).into_iter().flatten();
    for t in added {
        if t.get("id").and_then(Value::as_u64) == Some(id) {
            let name = t.get("content").and_then(Value::as_str).unwrap_or_default().to_owned();
            return (name, t.get("special").and_then(Value::as_bool) == Some(true));
        }
    }
    let vocab = doc.get("model").and_then(|m| m.get("vocab"));
    let name = match vocab {
        Some(Value::Object(map)) => map.iter().find(|(_, v)| v.as_u64() == Some(id)).map(|(k, _)| k.clone()),
        // Unigram: a list of [piece, score], the id being the position.
        Some(Value::Array(pieces)) => pieces.get(id as usize).and_then(|p| p.get(0)).and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    (name.unwrap_or_else(|| format!("id {id}")), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bos_of(doc: Value) -> Option<(u32, &'static str)> {
        own_bos(&doc).map(|b| (b.id, b.why))
    }

    /// Each text cut in two at every place `next_safe_split` allows encodes to the whole's ids.
    fn assert_every_cut_keeps_the_ids(tok: &Tokenizer, texts: &[&str], label: &str) {
        let ids = |t: &str| {
            let mut out = Vec::new();
            tok.encode(t, &mut WordCache::new(), &mut out).unwrap();
            out
        };
        for text in texts {
            let mut p = 0;
            while let Some(q) = tok.next_safe_split(text.as_bytes(), p) {
                assert_eq!([ids(&text[..q]), ids(&text[q..])].concat(), ids(text), "{label}: {text:?} cut at {q}");
                p = q + 1;
            }
        }
    }

    #[test]
    fn general_cuts_are_not_beside_unicode_whitespace() {
        // Merges "\n" + 0xC2 and 0xA0 + "\n": ids that change when a piece of whitespace is cut.
        let bpe = ByteBpe::from_merges(vec![(b'\n' as u32 + 1, 0xC2 + 1), (0xA0 + 1, b'\n' as u32 + 1)]);
        let mut gpt2: Value = serde_json::from_str(&bpe.to_json()).unwrap();
        gpt2["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [gpt2["pre_tokenizer"].clone()]});
        let mut llama3 = gpt2.clone();
        let regex = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        llama3["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]});
        // Pieces of the whole that a cut at the "\n" split: "\n\u{a0}\n" (Llama 3), "\u{a0}\n" (GPT-2).
        let texts = ["word\n\u{a0}\nmore", "x\u{a0}\n\u{a0}b", "x\u{3000}\n\u{3000}b", "x\x0b\n\x0bb", "x\u{85}\n\u{85}b", "a\nb \u{a0}\n\u{a0}c\nd"];
        for (name, json, cut) in [("gpt2", gpt2, 1), ("llama3", llama3, 2)] {
            let tok = Tokenizer::from_json(json.to_string(), Path::new("t.json")).unwrap();
            assert!(!tok.is_fast(), "{name}");
            assert_eq!(tok.next_safe_split(b"a\nb", 0), Some(cut), "{name}: the rule");
            assert_every_cut_keeps_the_ids(&tok, &texts, name);
        }
        // Invalid UTF-8 beside the separator reads as U+FFFD, not whitespace.
        assert!(!last_char_is_space(b"x\xc2") && !first_char_is_space(b"\xa0x") && !first_char_is_space(b""));
        assert!(last_char_is_space("é\u{a0}".as_bytes()) && first_char_is_space("\u{3000}x".as_bytes()));
    }

    #[test]
    fn general_cuts_keep_added_tokens_that_begin_or_end_with_the_separator() {
        // An added token is matched in the raw text before anything else: "x\n" in "ax\nb" was
        // split by a cut before the "\n" (its separator was probed only strictly inside a token).
        let bpe = ByteBpe::from_merges(vec![(b'a' as u32 + 1, b'b' as u32 + 1)]);
        let mut base: Value = serde_json::from_str(&bpe.to_json()).unwrap();
        base["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [base["pre_tokenizer"].clone()]});
        let next_id = base["model"]["vocab"].as_object().unwrap().len() + base["added_tokens"].as_array().unwrap().len();
        let texts = ["ax\nb", "x\ny\nx\nz", "ab\nxq r\nx", "a\nx x\nx q\nq rq\nr"];
        for added in [vec!["x\n"], vec!["\nx"], vec!["q "], vec!["x\n", "\nx", "q "]] {
            let mut doc = base.clone();
            for (i, content) in added.iter().enumerate() {
                let token = json!({"id": next_id + i, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false});
                doc["added_tokens"].as_array_mut().unwrap().push(token);
            }
            let tok = Tokenizer::from_json(doc.to_string(), Path::new("t.json")).unwrap();
            assert!(!tok.is_fast());
            assert_every_cut_keeps_the_ids(&tok, &texts, &format!("{added:?}"));
        }
    }

    #[test]
    fn a_file_the_library_panics_on_is_an_error() {
        let json = r###"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null, "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "##", "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}"###;
        let message = Tokenizer::from_json(json.to_owned(), Path::new("t.json")).err().expect("an error").to_string();
        assert!(message.starts_with("t.json: cannot be loaded") && message.contains("out of bounds"), "{message}");
    }

    #[test]
    fn truncation_and_padding_in_the_file_are_ignored() {
        let json = r#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "truncation": {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": 9}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[UNK]"},
            "post_processor": null, "decoder": null, "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2}, "unk_token": "[UNK]"}}"#;
        let tok = Tokenizer::from_json(json.to_owned(), Path::new("t.json")).unwrap();
        for (text, expected) in [("a b a b a", vec![1, 2, 1, 2, 1]), ("b", vec![2])] {
            let mut ids = Vec::new();
            tok.encode(text, &mut WordCache::new(), &mut ids).unwrap();
            assert_eq!(ids, expected, "{text:?}");
        }
        assert_eq!(tok.next_safe_split(b"a\nb", 0), Some(1)); // the probes were not truncated either
    }

    #[test]
    fn the_vocabulary_size_covers_ids_beyond_the_token_count() {
        // 5 tokens (the library gives the added one the id after the model's 4), ids up to 70000.
        let json = r#"{"version": "1.0", "added_tokens": [{"id": 4, "content": "<s>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "c": 65537, "b": 70000}, "unk_token": "[UNK]"}}"#;
        let tok = Tokenizer::from_json(json.to_owned(), Path::new("gaps.json")).unwrap();
        assert_eq!(tok.vocab_size, 70001);
        assert_eq!(crate::shard::Dtype::for_vocab(tok.vocab_size), crate::shard::Dtype::U32);
        let mut ids = Vec::new();
        tok.encode("a b c <s>", &mut WordCache::new(), &mut ids).unwrap();
        assert_eq!(ids, [1, 70000, 65537, 4]);
    }

    #[test]
    fn the_post_processors_first_special_token_is_the_bos() {
        let template = |single: Value, ids: Value| {
            json!({"post_processor": {"type": "TemplateProcessing", "single": single,
                   "special_tokens": {"<s>": {"id": "<s>", "ids": ids, "tokens": ["<s>"]}}}})
        };
        let first = json!([{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]);
        assert_eq!(bos_of(template(first.clone(), json!([7]))).map(|b| b.0), Some(7));
        // A special token of several ids, or one only after the text: no BOS from the template.
        assert_eq!(bos_of(template(first, json!([7, 8]))), None);
        let after = json!([{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<s>", "type_id": 0}}]);
        assert_eq!(bos_of(template(after, json!([7]))), None);
        let bert = json!({"post_processor": {"type": "BertProcessing", "cls": ["[CLS]", 101], "sep": ["[SEP]", 102]}});
        assert_eq!(bos_of(bert.clone()).map(|b| b.0), Some(101));
        let sequence = json!({"post_processor": {"type": "Sequence", "processors": [{"type": "ByteLevel"}, bert["post_processor"]]}});
        assert_eq!(bos_of(sequence), Some((101, "its post-processor puts it before every text")));
    }

    #[test]
    fn else_a_special_token_named_as_a_bos() {
        let added = |tokens: &[(&str, u32, bool)]| {
            let list: Vec<Value> = tokens.iter().map(|&(c, id, special)| json!({"content": c, "id": id, "special": special})).collect();
            json!({"added_tokens": list, "post_processor": null})
        };
        assert_eq!(bos_of(added(&[("<pad>", 0, true), ("<s>", 1, true), ("<|begin_of_text|>", 5, true)])).map(|b| b.0), Some(5));
        assert_eq!(bos_of(added(&[("<pad>", 0, true), ("<s>", 3, false)])), None); // not special: a piece of text
        assert_eq!(bos_of(added(&[("<pad>", 0, true), ("<eos>", 1, true)])), None);
    }

    #[test]
    fn token_names_from_added_tokens_and_each_kind_of_vocabulary() {
        let doc = json!({"added_tokens": [{"content": "[PAD]", "id": 0, "special": true}], "model": {"vocab": {"a": 1, "[PAD]": 0}}});
        assert_eq!(token_name(&doc, 0), ("[PAD]".to_owned(), true));
        assert_eq!(token_name(&doc, 1), ("a".to_owned(), false));
        let unigram = json!({"model": {"vocab": [["<unk>", 0.0], ["▁the", -2.5]]}});
        assert_eq!(token_name(&unigram, 1), ("▁the".to_owned(), false));
        assert_eq!(token_name(&unigram, 9), ("id 9".to_owned(), false));
    }
}
