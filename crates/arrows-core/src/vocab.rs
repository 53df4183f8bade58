//! A GPT-2 style byte-level BPE vocabulary (`ByteBpe`) and its `tokenizer.json` form, the standard
//! file of the `tokenizers` library (so `Tokenizer.from_file` in Python loads what we write).
//!
//! Layout of the vocabularies arrows trains: id 0 = `<|endoftext|>` (the BOS of every window),
//! ids 1..=256 = the bytes 0..=255, then one id per merge in rank order.

use crate::bytelevel;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

pub const END_OF_TEXT: &str = "<|endoftext|>";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteBpe {
    /// Token id -> the bytes it stands for (a special token: its text).
    pub tokens: Vec<Vec<u8>>,
    /// Merges in rank order (rank 0 is applied first): the ids of the left and right parts.
    /// The merged token is the one whose bytes are the concatenation.
    pub merges: Vec<(u32, u32)>,
    /// Special tokens (`added_tokens` in tokenizer.json), matched in the raw text before
    /// pre-tokenization, exactly as the `tokenizers` library does.
    pub specials: Vec<(String, u32)>,
}

impl ByteBpe {
    /// Plain bytes, no merges: id 0 = `<|endoftext|>`, byte b = id b + 1 (vocabulary 257).
    pub fn bytes_only() -> Self {
        let mut tokens = vec![END_OF_TEXT.as_bytes().to_vec()];
        tokens.extend((0..=255u8).map(|b| vec![b]));
        ByteBpe { tokens, merges: Vec::new(), specials: vec![(END_OF_TEXT.to_string(), 0)] }
    }

    /// Append merges to `bytes_only()`: each merge creates the next id.
    pub fn from_merges(merges: Vec<(u32, u32)>) -> Self {
        let mut bpe = Self::bytes_only();
        for &(a, b) in &merges {
            let mut t = bpe.tokens[a as usize].clone();
            t.extend_from_slice(&bpe.tokens[b as usize]);
            bpe.tokens.push(t);
        }
        bpe.merges = merges;
        bpe
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id used as BOS: `<|endoftext|>`.
    pub fn bos_id(&self) -> Option<u32> {
        self.specials.iter().find(|(s, _)| s == END_OF_TEXT).map(|&(_, id)| id)
    }

    /// The `tokenizer.json` text: byte-level pre-tokenizer (GPT-2 pattern, no prefix space),
    /// BPE model, byte-level decoder, the special tokens as added tokens.
    pub fn to_json(&self) -> String {
        let is_special = |id: usize| self.specials.iter().any(|&(_, s)| s as usize == id);
        let mut vocab = Map::new();
        for (id, t) in self.tokens.iter().enumerate() {
            let key = if is_special(id) { String::from_utf8_lossy(t).into_owned() } else { bytelevel::encode(t) };
            vocab.insert(key, json!(id));
        }
        let merges: Vec<Value> = self
            .merges
            .iter()
            .map(|&(a, b)| json!(format!("{} {}", bytelevel::encode(&self.tokens[a as usize]), bytelevel::encode(&self.tokens[b as usize]))))
            .collect();
        let added: Vec<Value> = self
            .specials
            .iter()
            .map(|(s, id)| json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
            .collect();
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": Value::Object(vocab), "merges": merges,
            },
        });
        let mut s = serde_json::to_string_pretty(&doc).expect("JSON of plain values");
        s.push('\n');
        s
    }

    /// Read a `tokenizer.json`. `Ok(None)` when it is valid but not a plain GPT-2 style byte-level
    /// BPE (a normalizer, another pre-tokenizer, dropout, ...): such files go to the general
    /// encoder of the `tokenizers` crate instead of the fast one.
    pub fn from_json(text: &str, path: &Path) -> Result<Option<Self>> {
        let bad = |m: String| Error::tokenizer(path, m);
        let doc: Value = serde_json::from_str(text).map_err(|e| bad(format!("not a tokenizer.json: {e}")))?;
        let model = doc.get("model").ok_or_else(|| bad(format!("no \"model\" section: not a tokenizer.json{}", not_a_tokenizer_hint(&doc, path))))?;
        let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let is_null_or = |v: Option<&Value>, ok: &dyn Fn(&Value) -> bool| v.is_none_or(|x| x.is_null() || ok(x));

        if str_of(model, "type").as_deref() != Some("BPE") {
            return Ok(None);
        }
        let pre = doc.get("pre_tokenizer");
        let plain_byte_level = pre.is_some_and(|p| {
            str_of(p, "type").as_deref() == Some("ByteLevel")
                && p.get("add_prefix_space").and_then(Value::as_bool) != Some(true)
                && p.get("use_regex").and_then(Value::as_bool) != Some(false)
        });
        let plain_model = is_null_or(model.get("dropout"), &|_| false)
            && is_null_or(model.get("continuing_subword_prefix"), &|v| v.as_str() == Some(""))
            && is_null_or(model.get("end_of_word_suffix"), &|v| v.as_str() == Some(""))
            && model.get("byte_fallback").and_then(Value::as_bool) != Some(true)
            && model.get("ignore_merges").and_then(Value::as_bool) != Some(true);
        if !plain_byte_level || !plain_model || !is_null_or(doc.get("normalizer"), &|_| false) {
            return Ok(None);
        }

        let vocab = model.get("vocab").and_then(Value::as_object).ok_or_else(|| bad("model.vocab is missing".into()))?;
        let mut specials = Vec::new();
        // The id the library gives the next added token that is not a vocabulary entry.
        let mut next_id = vocab.len() as u64;
        for t in doc.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
            let content = str_of(t, "content").ok_or_else(|| bad("an added token has no content".into()))?;
            let id = t.get("id").and_then(Value::as_u64).ok_or_else(|| bad(format!("added token {content:?} has no id")))?;
            let flag = |k: &str| t.get(k).and_then(Value::as_bool) == Some(true);
            if !flag("special") || flag("lstrip") || flag("rstrip") || flag("single_word") {
                // Non-special added tokens are normalized and matched differently, and these flags
                // change how the text around a token is split: leave such files to `tokenizers`.
                return Ok(None);
            }
            // The library does not take an added token's id from the file: it gives a vocabulary
            // entry's id, else the next id after the vocabulary and the added tokens before. A file
            // whose ids say otherwise is encoded as the library reads it, by the library: taken
            // as written, `a` added as 260 was 260 here and 98 there, and an id of 4e9 allocated
            // a 96 GB table of ids (the process aborted), 2^32 + 5 was read as 5.
            let expected = match vocab.get(&content).and_then(Value::as_u64) {
                Some(entry) => entry,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            if id != expected {
                return Ok(None);
            }
            specials.push((content, id as u32));
        }
        let n = vocab.len().max(specials.iter().map(|&(_, id)| id as usize + 1).max().unwrap_or(0));
        if n > vocab.len() + specials.len() {
            // Some id below n has no token; said before a table of n ids is allocated (4e9: 96 GB).
            return Err(bad(format!("ids run to {}, but the vocabulary and added tokens hold {} tokens", n - 1, vocab.len() + specials.len())));
        }
        let mut tokens: Vec<Option<Vec<u8>>> = vec![None; n];
        for (key, id) in vocab {
            let id = id.as_u64().ok_or_else(|| bad(format!("vocab entry {key:?} has no integer id")))? as usize;
            if id >= n {
                return Err(bad(format!("vocab id {id} of {key:?} is beyond the vocabulary size {n}")));
            }
            let bytes = match bytelevel::decode(key) {
                Some(b) => b,
                None if specials.iter().any(|(s, _)| s == key) => key.as_bytes().to_vec(),
                None => return Ok(None),
            };
            tokens[id] = Some(bytes);
        }
        for (s, id) in &specials {
            let slot = tokens.get_mut(*id as usize).ok_or_else(|| bad(format!("special token id {id} is beyond the vocabulary")))?;
            slot.get_or_insert_with(|| s.as_bytes().to_vec());
        }
        let tokens: Vec<Vec<u8>> = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| t.ok_or_else(|| bad(format!("vocabulary has no token with id {id}"))))
            .collect::<Result<_>>()?;

        let mut index: HashMap<&[u8], u32> = HashMap::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            if !specials.iter().any(|&(_, s)| s as usize == id) {
                index.entry(t.as_slice()).or_insert(id as u32);
            }
        }
        for b in 0..=255u8 {
            if !index.contains_key(&[b][..]) {
                return Ok(None); // not every byte is encodable: leave it to the general encoder
            }
        }
        let mut merges = Vec::new();
        for (i, m) in model.get("merges").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let (l, r) = match m {
                Value::String(s) => s.split_once(' ').map(|(l, r)| (l.to_owned(), r.to_owned())),
                Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()).map(|(l, r)| (l.to_owned(), r.to_owned())),
                _ => None,
            }
            .ok_or_else(|| bad(format!("merge {i} is not a pair of tokens: {m}")))?;
            let id_of = |s: &str| bytelevel::decode(s).and_then(|b| index.get(b.as_slice()).copied());
            let (a, b) = id_of(&l).zip(id_of(&r)).ok_or_else(|| bad(format!("merge {i} ({l} {r}) names a token not in the vocabulary")))?;
            let mut joined = tokens[a as usize].clone();
            joined.extend_from_slice(&tokens[b as usize]);
            if !index.contains_key(joined.as_slice()) {
                return Err(bad(format!("merge {i} ({l} {r}) makes a token not in the vocabulary")));
            }
            merges.push((a, b));
        }
        Ok(Some(ByteBpe { tokens, merges, specials }))
    }
}

/// What a JSON file without a model probably is, when it is one of the other files a Hugging Face
/// tokenizer folder holds (given by mistake for the tokenizer.json beside them).
fn not_a_tokenizer_hint(doc: &Value, path: &Path) -> String {
    let settings = ["tokenizer_class", "model_max_length", "bos_token", "eos_token", "added_tokens_decoder"];
    if !settings.iter().any(|k| doc.get(k).is_some()) {
        return String::new();
    }
    let beside = path.with_file_name("tokenizer.json");
    let instead = if beside.is_file() { format!("give {}", beside.display()) } else { "give the tokenizer.json saved with it".to_owned() };
    format!(" (it holds a tokenizer's settings, as Hugging Face's tokenizer_config.json and special_tokens_map.json do; {instead})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        // merges: "a"+"b" -> 257, "ab"+"c" -> 258
        let bpe = ByteBpe::from_merges(vec![(b'a' as u32 + 1, b'b' as u32 + 1), (257, b'c' as u32 + 1)]);
        assert_eq!(bpe.vocab_size(), 259);
        assert_eq!(bpe.tokens[258], b"abc");
        let back = ByteBpe::from_json(&bpe.to_json(), Path::new("t.json")).unwrap().unwrap();
        assert_eq!(back, bpe);
        assert_eq!(back.bos_id(), Some(0));
    }

    #[test]
    fn added_token_ids_are_the_ones_the_library_gives() {
        let with = |content: &str, id: u64| {
            let mut doc: Value = serde_json::from_str(&ByteBpe::bytes_only().to_json()).unwrap();
            let special = json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
            doc["added_tokens"].as_array_mut().unwrap().push(special);
            doc.to_string()
        };
        let encode = |json: String, text: &str| {
            let tok = crate::tokenizer::Tokenizer::from_json(json, Path::new("t.json"))?;
            let mut ids = Vec::new();
            tok.encode(text, &mut crate::bpe::WordCache::new(), &mut ids)?;
            Ok::<_, crate::Error>((tok.is_fast(), ids))
        };
        // The next id after the vocabulary: as written.
        assert_eq!(ByteBpe::from_json(&with("<s>", 257), Path::new("t.json")).unwrap().unwrap().specials[1], ("<s>".to_string(), 257));
        assert_eq!(encode(with("<s>", 257), "b<s>").unwrap(), (true, vec![b'b' as u32 + 1, 257]));
        // Any other id is replaced by the library (257), and a vocabulary entry keeps its own id
        // (98 for `a`): the general encoder reads the file as the library does. 4e9 allocated
        // 96 GB here, 2^32 + 5 was read as id 5.
        for id in [4_000_000_000, 259, 5] {
            assert_eq!(ByteBpe::from_json(&with("<s>", id), Path::new("t.json")).unwrap(), None, "id {id}");
            assert_eq!(encode(with("<s>", id), "b<s>").unwrap(), (false, vec![b'b' as u32 + 1, 257]), "id {id}");
        }
        assert_eq!(encode(with("a", 257), "ba").unwrap(), (false, vec![b'b' as u32 + 1, b'a' as u32 + 1]));
        let message = encode(with("<s>", (1 << 32) + 5), "b").unwrap_err().to_string();
        assert!(message.starts_with("t.json: cannot be loaded"), "{message}");
        // A vocabulary entry of id 4e9 that is also added: a gap, said without a 96 GB table.
        let gap = with("<s>", 4_000_000_000).replacen("\"<|endoftext|>\":0", "\"<|endoftext|>\":0,\"<s>\":4000000000", 1);
        assert_ne!(gap, with("<s>", 4_000_000_000));
        let message = ByteBpe::from_json(&gap, Path::new("t.json")).unwrap_err().to_string();
        assert!(message.contains("ids run to 4000000000"), "{message}");
    }

    #[test]
    fn other_models_go_to_the_general_encoder() {
        let wordpiece = r#"{"model": {"type": "WordPiece", "vocab": {}}}"#;
        assert_eq!(ByteBpe::from_json(wordpiece, Path::new("t.json")).unwrap(), None);
        let err = ByteBpe::from_json("{", Path::new("t.json")).unwrap_err();
        assert!(err.to_string().contains("t.json"));
    }

    #[test]
    fn a_tokenizer_config_given_by_mistake_is_named_as_such() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("tokenizer_config.json");
        let text = r#"{"add_bos_token": true, "bos_token": "<s>", "model_max_length": 2048, "tokenizer_class": "LlamaTokenizer"}"#;
        let message = ByteBpe::from_json(text, &config).unwrap_err().to_string();
        assert!(message.contains("tokenizer_config.json") && message.contains("give the tokenizer.json saved with it"), "{message}");
        std::fs::write(tmp.path().join("tokenizer.json"), "{}").unwrap();
        let message = ByteBpe::from_json(text, &config).unwrap_err().to_string();
        assert!(message.contains(&format!("give {}", tmp.path().join("tokenizer.json").display())), "{message}");
        // Any other JSON without a model: no guess.
        let message = ByteBpe::from_json(r#"{"a": 1}"#, &config).unwrap_err().to_string();
        assert!(!message.contains("settings"), "{message}");
    }
}
