//! Fuzzing the tokenizer.json reader: a small byte-level BPE's file with one to three leaves
//! replaced by hostile values (ids at the edges of u32, wrong types, other tokens' texts). Loading
//! gives a typed error or a tokenizer; a tokenizer encodes within its vocabulary, and the fast
//! encoder gives the ids of the `tokenizers` library for the same file. Never a panic. Seeded:
//! every run draws the same cases (found: added tokens whose ids the library replaces).

mod common;
use common::{at_path, leaves, seeded};

use arrows_core::bpe::WordCache;
use arrows_core::tokenizer::Tokenizer;
use arrows_core::vocab::ByteBpe;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

/// Merges "ab", "abc", " abc", and a special `<s>` after `<|endoftext|>`.
fn base() -> Value {
    let bpe = ByteBpe::from_merges(vec![(b'a' as u32 + 1, b'b' as u32 + 1), (257, b'c' as u32 + 1), (b' ' as u32 + 1, 258)]);
    let mut v: Value = serde_json::from_str(&bpe.to_json()).unwrap();
    let s = json!({"id": 260, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    v["added_tokens"].as_array_mut().unwrap().push(s);
    v
}

fn forged_value() -> impl Strategy<Value = Value> {
    let values = vec![
        Value::Null, json!(-1), json!(0), json!(1), json!(256), json!(259), json!(260), json!(261), json!(65536), json!(4294967295u64),
        json!(4294967296u64), json!(u64::MAX), json!(1.5), json!(true), json!(false), json!(""), json!(" "), json!("a"), json!("ab"),
        json!("Ġ"), json!("a b"), json!("ab c"), json!("<s>"), json!("<|endoftext|>"), json!("\u{fffd}"), json!(["a", "b"]), json!([]),
        json!({}), json!("BPE"), json!("WordLevel"), json!("ByteLevel"), json!("##"),
    ];
    prop::sample::select(values)
}

proptest! {
    #![proptest_config(seeded(10000, 7))]

    #[test]
    fn forged_tokenizer_files_load_as_the_library_reads_them(
        edits in prop::collection::vec((any::<prop::sample::Index>(), forged_value()), 1..4),
        text in "[ab c<s>>\\n\u{a0}é]{0,30}",
    ) {
        let mut v = base();
        for (i, value) in edits {
            let mut paths = Vec::new();
            leaves(&v, &mut Vec::new(), &mut paths);
            *at_path(&mut v, &paths[i.index(paths.len())]) = value;
        }
        let json = v.to_string();
        let Ok(tok) = Tokenizer::from_json(json.clone(), Path::new("t.json")) else { return Ok(()) };
        let mut ids = Vec::new();
        if tok.encode(&text, &mut WordCache::new(), &mut ids).is_ok() {
            prop_assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size), "ids {:?}, vocabulary {}", ids, tok.vocab_size);
            // The library panics on some files (the general path turns that into an error).
            let reference = std::panic::catch_unwind(|| json.parse::<tokenizers::Tokenizer>());
            if let (true, Ok(Ok(mut reference))) = (tok.is_fast(), reference) {
                reference.with_truncation(None).unwrap();
                reference.with_padding(None);
                prop_assert_eq!(ids, reference.encode(text.as_str(), false).unwrap().get_ids().to_vec(), "{}", json);
            }
        }
        let _ = tok.next_safe_split(text.as_bytes(), 0);
        let _ = tok.token_id_for_bos("<s>");
    }
}
