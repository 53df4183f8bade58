//! The `arrows tokenize` job end to end: identical streams whatever the threads and shard size,
//! byte-identical results after a crash at any point, and the refusals.

use arrows_core::bpe::WordCache;
use arrows_core::manifest::Manifest;
use arrows_core::store::Store;
use arrows_core::tokenize::{tokenize, Progress, TokenizeOptions, TokenizerSpec};
use arrows_core::tokenizer::Tokenizer;
use arrows_core::Error;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// Text with words, numbers, punctuation, several kinds of whitespace and some non-ASCII.
fn random_text(seed: u64, len: usize) -> String {
    let words = ["the", "arrow", "of", "time", "café", "naïve", "日本", "x", "42", "3.14", "don't", "it's", "—", "!!", "\t", "  ", "\n", "\n\n", "Ωμέγα"];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut s = String::new();
    while s.len() < len {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s.push_str(words[(state >> 33) as usize % words.len()]);
        if !(state >> 20).is_multiple_of(3) {
            s.push(' ');
        }
    }
    s
}

fn options(inputs: Vec<PathBuf>, out: &Path) -> TokenizeOptions {
    TokenizeOptions {
        inputs,
        out: out.to_path_buf(),
        tokenizer: TokenizerSpec::Train { vocab_size: 400, sample_bytes: 1 << 30, seed: 0, min_frequency: 2 },
        threads: 2,
        shard_bytes: 2000,
        chunk_bytes: 300,
        strict_utf8: false,
        resume: false,
        force: false,
        bos: None,
    }
}

fn write_corpus(dir: &Path, texts: &[Vec<u8>]) -> Vec<PathBuf> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = dir.join(format!("in{i}.txt"));
            std::fs::write(&p, t).unwrap();
            p
        })
        .collect()
}

fn run(opts: &TokenizeOptions) -> arrows_core::Result<arrows_core::tokenize::Summary> {
    tokenize(opts, &Progress::default())
}

fn stream(dir: &Path) -> Vec<u32> {
    Store::open(dir, false).unwrap().read_all().unwrap()
}

/// Every file of a folder, by name, with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != ".arrows.lock")
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn stream_is_independent_of_threads_and_shards_and_equals_whole_file_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let texts = vec![random_text(1, 20_000).into_bytes(), Vec::new(), random_text(2, 7_000).into_bytes()];
    let inputs = write_corpus(tmp.path(), &texts);

    let base = tmp.path().join("base");
    run(&options(inputs.clone(), &base)).unwrap();
    let expected = stream(&base);
    let tok = Tokenizer::from_file(&base.join("tokenizer.json")).unwrap();
    let mut whole = Vec::new();
    for t in &texts {
        tok.encode(std::str::from_utf8(t).unwrap(), &mut WordCache::new(), &mut whole).unwrap();
    }
    assert_eq!(expected, whole, "chunked encoding differs from encoding each file whole");
    assert!(Store::open(&base, false).unwrap().shards.len() > 3);

    for (threads, shard_bytes, chunk_bytes) in [(1, 2000, 300), (3, 2000, 300), (2, 1 << 30, 300), (2, 2, 50), (1, 5000, 1 << 20)] {
        let out = tmp.path().join(format!("t{threads}_{shard_bytes}_{chunk_bytes}"));
        let mut o = options(inputs.clone(), &out);
        (o.threads, o.shard_bytes, o.chunk_bytes) = (threads, shard_bytes, chunk_bytes);
        run(&o).unwrap();
        assert_eq!(stream(&out), expected, "threads {threads}, shard {shard_bytes}, chunk {chunk_bytes}");
        assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), std::fs::read(base.join("tokenizer.json")).unwrap());
    }
}

#[test]
fn invalid_utf8_is_replaced_and_counted_or_refused_when_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bad = b"good text here ".repeat(50);
    bad.extend_from_slice(b"\xff\xfe and \xe2\x82 more");
    let inputs = write_corpus(tmp.path(), &[b"clean file ".to_vec(), bad.clone()]);
    let mut o = options(inputs.clone(), &tmp.path().join("lossy"));
    o.tokenizer = TokenizerSpec::Bytes;
    let s = run(&o).unwrap();
    assert_eq!(s.replaced_bytes, 4);
    let lossy = String::from_utf8_lossy(&bad);
    let ids = stream(&tmp.path().join("lossy"));
    let expected: Vec<u32> = b"clean file ".iter().chain(lossy.as_bytes()).map(|&b| b as u32 + 1).collect();
    assert_eq!(ids, expected);
    assert_eq!(Manifest::read(&tmp.path().join("lossy")).unwrap().replaced_bytes, 4);

    o.out = tmp.path().join("strict");
    o.strict_utf8 = true;
    match run(&o).unwrap_err() {
        Error::InvalidUtf8 { path, offset } => {
            assert_eq!(path, std::path::absolute(&inputs[1]).unwrap());
            assert_eq!(offset, 15 * 50);
        }
        e => panic!("expected InvalidUtf8, got {e}"),
    }
}

#[test]
fn refusals_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_corpus(tmp.path(), &[random_text(3, 5000).into_bytes()]);
    let out = tmp.path().join("out");
    run(&options(inputs.clone(), &out)).unwrap();

    // A non-empty folder without --resume or --force.
    let msg = run(&options(inputs.clone(), &out)).unwrap_err().to_string();
    assert!(msg.contains("--resume") && msg.contains("--force"), "{msg}");

    // Resuming with other settings or another input lists every difference.
    let mut o = options(inputs.clone(), &out);
    o.resume = true;
    o.shard_bytes = 999;
    let changed = random_text(3, 5000).replacen("the", "eht", 1); // same size, other content
    std::fs::write(&inputs[0], changed).unwrap();
    match run(&o).unwrap_err() {
        Error::ResumeMismatch(m) => assert!(m.contains("--shard-bytes was 2000, now 999") && m.contains("changed content"), "{m}"),
        e => panic!("expected ResumeMismatch, got {e}"),
    }

    // --force starts over.
    let mut o = options(inputs.clone(), &out);
    o.force = true;
    run(&o).unwrap();

    // An empty corpus, a vocabulary below 257.
    let empty = write_corpus(&tmp.path().join(""), &[Vec::new()]);
    assert!(run(&options(empty, &tmp.path().join("e"))).unwrap_err().to_string().contains("empty"));
    let mut o = options(inputs, &tmp.path().join("v"));
    o.tokenizer = TokenizerSpec::Train { vocab_size: 100, sample_bytes: 1000, seed: 0, min_frequency: 2 };
    assert!(run(&o).unwrap_err().to_string().contains("257"));

    // Shards so small that rewriting the manifest after each one would dominate the job.
    let big = tmp.path().join("big.txt");
    std::fs::write(&big, random_text(6, 30_000)).unwrap();
    let mut o = options(vec![big.clone()], &tmp.path().join("tiny"));
    o.shard_bytes = 1;
    let msg = run(&o).unwrap_err().to_string();
    assert!(msg.contains("--shard-bytes 1 would cut the") && msg.contains("give at least"), "{msg}");
    assert!(!tmp.path().join("tiny").exists(), "nothing is written before the refusal");

    // An output that is a file.
    let msg = run(&options(vec![big.clone()], &big)).unwrap_err().to_string();
    assert!(msg.contains("File exists and is not a folder; --out names the folder of the token store"), "{msg}");
}

#[test]
fn a_bos_that_training_cannot_produce_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_corpus(tmp.path(), &[random_text(4, 20_000).into_bytes()]);
    let out = tmp.path().join("out");
    for name in ["<s>", "[BOS]", "日本"] {
        let mut o = options(inputs.clone(), &out);
        o.bos = Some(name.into());
        let progress = Progress::default();
        let msg = tokenize(&o, &progress).unwrap_err().to_string();
        assert!(msg.contains(&format!("--bos {name:?}: not a token of the tokenizer")) && msg.contains("\"<|endoftext|>\""), "{msg}");
        assert_eq!(progress.phase.load(std::sync::atomic::Ordering::Relaxed), 0, "refused before sampling or training");
        assert!(!out.exists(), "nothing is written before the refusal");
    }
    // What training may produce is trained, then looked up: a merge, <|endoftext|>, a byte.
    for (name, id) in [("Ġthe", None), ("<|endoftext|>", Some(0)), ("a", Some(98))] {
        let mut o = options(inputs.clone(), &out);
        o.bos = Some(name.into());
        o.force = true;
        run(&o).unwrap();
        let tokenizer = Tokenizer::from_file(&out.join("tokenizer.json")).unwrap();
        let expected = id.unwrap_or_else(|| tokenizer.token_id_for_bos(name).unwrap());
        assert!(expected > 256 || id.is_some(), "Ġthe is a merge");
        assert_eq!(Manifest::read(&out).unwrap().tokenizer.bos_id, Some(expected), "{name}");
    }
}

#[test]
fn a_second_job_on_a_locked_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_corpus(tmp.path(), &[random_text(5, 3000).into_bytes()]);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let holder = std::fs::File::create(out.join(".arrows.lock")).unwrap();
    holder.lock().unwrap();
    let msg = run(&options(inputs.clone(), &out)).unwrap_err().to_string();
    assert!(msg.contains("another arrows process"), "{msg}");
    drop(holder);
    run(&options(inputs, &out)).unwrap();
}

#[test]
fn cancelling_leaves_a_resumable_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_corpus(tmp.path(), &[random_text(6, 20_000).into_bytes()]);
    let out = tmp.path().join("out");
    let progress = Progress::default();
    progress.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut o = options(inputs.clone(), &out);
    o.tokenizer = TokenizerSpec::Bytes;
    assert!(matches!(tokenize(&o, &progress), Err(Error::Cancelled)));
    o.resume = true;
    run(&o).unwrap();
    let expected: Vec<u32> = random_text(6, 20_000).bytes().map(|b| b as u32 + 1).collect();
    assert_eq!(stream(&out), expected);
}

#[test]
fn a_cancel_skips_the_chunks_of_the_batch_not_yet_begun() {
    // A batch holds 16 chunks per thread; with a slow tokenizer (here one that encodes each file
    // whole, having no pre-tokenizer) encoding them all took many seconds after Ctrl-C.
    let tmp = tempfile::tempdir().unwrap();
    let texts: Vec<Vec<u8>> = (0..20).map(|i| random_text(20 + i, 600_000).into_bytes()).collect();
    let inputs = write_corpus(tmp.path(), &texts);
    let base = tmp.path().join("base");
    run(&options(inputs[..1].to_vec(), &base)).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(base.join("tokenizer.json")).unwrap()).unwrap();
    json["pre_tokenizer"] = serde_json::Value::Null;
    let whole_files = tmp.path().join("whole_files.json");
    std::fs::write(&whole_files, serde_json::to_vec(&json).unwrap()).unwrap();

    let out = tmp.path().join("out");
    let mut o = options(inputs, &out);
    o.tokenizer = TokenizerSpec::File(whole_files);
    o.threads = 1;
    o.shard_bytes = 1000; // a shard per file
    let progress = Progress::default();
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while progress.phase.load(std::sync::atomic::Ordering::Relaxed) != 3 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            progress.cancel.store(true, std::sync::atomic::Ordering::Relaxed); // Ctrl-C as encoding begins
        });
        tokenize(&o, &progress)
    });
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    let shards = Manifest::read(&out).unwrap().shards.len();
    // The file being encoded when the cancel came may be finished; not the 15 after it.
    assert!(shards < 8, "{shards} files encoded after the cancel");
    o.resume = true;
    run(&o).unwrap();
    assert_eq!(Manifest::read(&out).unwrap().shards.len(), 20);
}

/// The states a crash can leave, built from a finished run: the manifest as it was after shard
/// `k`, optionally shard `k`'s file already renamed but not yet listed, optionally a torn `.tmp`.
fn crash_state(finished: &Path, dir: &Path, k: usize, renamed_next: bool, torn_tmp: Option<usize>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut m = Manifest::read(finished).unwrap();
    let all = m.shards.clone();
    std::fs::copy(finished.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    for s in &all[..k] {
        std::fs::copy(finished.join(&s.file), dir.join(&s.file)).unwrap();
    }
    if let Some(next) = all.get(k) {
        let bytes = std::fs::read(finished.join(&next.file)).unwrap();
        if renamed_next {
            std::fs::write(dir.join(&next.file), &bytes).unwrap();
        }
        if let Some(cut) = torn_tmp {
            std::fs::write(dir.join(format!("{}.tmp", next.file)), &bytes[..cut % bytes.len()]).unwrap();
        }
    }
    m.shards.truncate(k);
    m.tokens = m.shards.iter().map(|s| s.tokens).sum();
    m.replaced_bytes = m.shards.iter().map(|s| s.replaced_bytes).sum();
    m.complete = false;
    m.write(dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn resume_after_any_crash_point_is_byte_identical(k in 0usize..12, renamed in any::<bool>(), torn in proptest::option::of(0usize..10_000), threads in 1usize..4) {
        let tmp = tempfile::tempdir().unwrap();
        let mut text = random_text(k as u64, 24_000).into_bytes();
        text.extend_from_slice(b"\xc3 tail"); // a replaced byte, to check the counts survive
        let inputs = write_corpus(tmp.path(), &[text]);
        let finished = tmp.path().join("finished");
        run(&options(inputs.clone(), &finished)).unwrap();
        let n = Manifest::read(&finished).unwrap().shards.len();
        prop_assume!(k < n);

        let crashed = tmp.path().join("crashed");
        crash_state(&finished, &crashed, k, renamed, torn);
        let mut o = options(inputs, &crashed);
        o.resume = true;
        o.threads = threads;
        run(&o).unwrap();
        // Same folder name for both, so the manifests (which hold no paths of the output) compare equal.
        prop_assert_eq!(snapshot(&crashed), snapshot(&finished));
    }
}

/// Chinese text has no ASCII character before its line ends (`。\n`): it must still be cut into
/// chunks (else a file of it is encoded in one piece, on one thread, in many times its size of
/// memory), with the ids of the whole.
#[test]
fn text_without_ascii_is_cut_into_chunks_too() {
    let tmp = tempfile::tempdir().unwrap();
    let clauses = ["我们今天去了商店", "时间之箭", "语言模型向前和向后", "第二行", "没有空格的文字"];
    let mut text = String::new();
    for i in 0..1500 {
        text.push_str(clauses[i % clauses.len()]);
        text.push_str(if i % 3 == 2 { "。\n" } else { "，" });
    }
    let inputs = write_corpus(tmp.path(), &[text.clone().into_bytes()]);
    let out = tmp.path().join("out");
    run(&options(inputs, &out)).unwrap();
    let tok = Tokenizer::from_file(&out.join("tokenizer.json")).unwrap();
    let mut whole = Vec::new();
    tok.encode(&text, &mut WordCache::new(), &mut whole).unwrap();
    assert_eq!(stream(&out), whole);
    // Shards end at chunk ends: 2,000-byte shards of 300-byte chunks.
    let shards = Store::open(&out, false).unwrap().shards.len();
    assert!(shards > text.len() / 4000, "{shards} shard(s) for {} bytes: the text was not cut", text.len());
}

/// A tokenizer.json that is not GPT-2 style goes through the `tokenizers` crate; its stream must
/// still equal each file encoded whole. The text is cut only where a check at load shows that the
/// ids stay the same: before a `\n` (GPT-2's regex), after it (Llama 3's regex, which keeps `.\n`
/// together), or before a space (a prefix-adding pre-tokenizer: the second part starts with the
/// space it would add); nowhere without a pre-tokenizer, nor where an added token that strips the
/// whitespace beside it would lose it to the other part.
#[test]
fn general_tokenizers_are_cut_only_where_the_ids_stay_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    // `<mask>` before and after line breaks and spaces, for the added tokens below.
    let texts: Vec<Vec<u8>> =
        [random_text(3, 30_000), random_text(4, 9_000)].iter().map(|t| t.replace("arrow", "arrow<mask>").replace("time", "<mask>time").into_bytes()).collect();
    let inputs = write_corpus(tmp.path(), &texts);
    let base = tmp.path().join("base");
    run(&options(inputs.clone(), &base)).unwrap();
    let trained: serde_json::Value = serde_json::from_slice(&std::fs::read(base.join("tokenizer.json")).unwrap()).unwrap();
    let mask_id = trained["model"]["vocab"].as_object().unwrap().len();

    let mut prefix = trained.clone();
    prefix["pre_tokenizer"]["add_prefix_space"] = true.into();
    let mut no_pre_tokenizer = trained.clone();
    no_pre_tokenizer["pre_tokenizer"] = serde_json::Value::Null;
    let mut sequence = trained.clone();
    sequence["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [trained["pre_tokenizer"].clone()]});
    let mut llama3 = trained.clone();
    let llama3_regex = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    llama3["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": llama3_regex}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
    ]});
    let with_mask = |lstrip: bool, rstrip: bool| {
        let mut t = sequence.clone();
        t["added_tokens"].as_array_mut().unwrap().push(serde_json::json!(
            {"id": mask_id, "content": "<mask>", "single_word": false, "lstrip": lstrip, "rstrip": rstrip, "normalized": false, "special": true}));
        t
    };

    // Where each may cut the sample: before its first "\n" (10), after it (11), before a space (5).
    let sample = b"first line\nsecond line\nthird";
    for (name, json, cut) in [
        ("prefix", prefix, Some(5)),
        ("no_pre_tokenizer", no_pre_tokenizer, None),
        ("sequence", sequence.clone(), Some(10)),
        ("llama3", llama3, Some(11)),
        ("mask_rstrip", with_mask(false, true), Some(11)), // "<mask>\n" | "x" keeps the "\n" it strips
        ("mask_lstrip_rstrip", with_mask(true, true), None),
    ] {
        let path = tmp.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let tok = Tokenizer::from_file(&path).unwrap();
        assert!(!tok.is_fast(), "{name}: expected the general engine");
        assert_eq!(tok.next_safe_split(sample, 1), cut, "{name}");

        let out = tmp.path().join(format!("out_{name}"));
        let mut o = options(inputs.clone(), &out);
        o.tokenizer = TokenizerSpec::File(path.clone());
        run(&o).unwrap();
        let mut whole = Vec::new();
        for t in &texts {
            tok.encode(std::str::from_utf8(t).unwrap(), &mut WordCache::new(), &mut whole).unwrap();
        }
        assert_eq!(stream(&out), whole, "{name}: the job's stream differs from encoding each file whole");
        let shards = Store::open(&out, false).unwrap().shards.len();
        if cut.is_some() {
            assert!(shards > 10, "{name}: {shards} shard(s): the text was not cut");
        } else {
            assert_eq!(shards, texts.len(), "{name}: one shard per file");
        }
    }
}

#[test]
fn force_deletes_only_the_files_arrows_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_corpus(tmp.path(), &[random_text(5, 8_000).into_bytes()]);
    let out = tmp.path().join("out");
    run(&options(inputs.clone(), &out)).unwrap();
    for (name, text) in [("my.tmp", "a user's file"), ("notes.md", "notes"), ("shard_000001.bin.tmp", "torn"), ("manifest.json.tmp", "torn")] {
        std::fs::write(out.join(name), text).unwrap();
    }
    let mut o = options(inputs, &out);
    o.force = true;
    run(&o).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("my.tmp")).unwrap(), "a user's file");
    assert!(out.join("notes.md").exists());
    assert!(!out.join("shard_000001.bin.tmp").exists() && !out.join("manifest.json.tmp").exists());
}

#[test]
fn resume_knows_the_inputs_by_their_real_paths_and_lists_few_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(corpus.join("sub")).unwrap();
    let texts: Vec<Vec<u8>> = (0..30).map(|i| random_text(i, 400).into_bytes()).collect();
    write_corpus(&corpus, &texts);
    let out = tmp.path().join("out");
    let mut o = options(vec![corpus.clone()], &out);
    o.tokenizer = TokenizerSpec::Bytes;
    run(&o).unwrap();

    // The same folder named another way (as `../corpus` from another working folder would).
    let mut again = o.clone();
    again.inputs = vec![corpus.join("sub").join("..")];
    again.resume = true;
    run(&again).unwrap();

    // One file added amid the thirty: named, and only it.
    std::fs::write(corpus.join("in1a.txt"), "added").unwrap();
    match run(&again).unwrap_err() {
        Error::ResumeMismatch(m) => {
            assert!(m.contains("in1a.txt is a new input") && m.contains("the input had 30 file(s), now 31"), "{m}");
            assert_eq!(m.matches("\n  - ").count(), 2, "{m}");
        }
        e => panic!("expected ResumeMismatch, got {e}"),
    }
    std::fs::remove_file(corpus.join("in1a.txt")).unwrap();

    // Thirty other files (30 new, 30 gone): a refusal that names a few and counts the rest.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    write_corpus(&other, &texts);
    again.inputs = vec![other];
    match run(&again).unwrap_err() {
        Error::ResumeMismatch(m) => {
            assert!(m.lines().count() < 25, "{m}");
            assert!(m.contains("and 40 more difference(s)"), "{m}");
        }
        e => panic!("expected ResumeMismatch, got {e}"),
    }

    // The same files in another order make another corpus.
    let mut files: Vec<PathBuf> = (0..30).map(|i| corpus.join(format!("in{i}.txt"))).collect();
    files.sort();
    files.swap(0, 1);
    again.inputs = files;
    match run(&again).unwrap_err() {
        Error::ResumeMismatch(m) => assert!(m.contains("the input files come in another order"), "{m}"),
        e => panic!("expected ResumeMismatch, got {e}"),
    }
}

#[test]
fn a_tokenizer_file_moved_or_gone_resumes_with_a_copy_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_corpus(tmp.path(), &[random_text(30, 20_000).into_bytes()]);
    let trained = tmp.path().join("trained");
    run(&options(inputs.clone(), &trained)).unwrap();
    let original = tmp.path().join("original.json");
    std::fs::copy(trained.join("tokenizer.json"), &original).unwrap();

    // A store made with it, and the same store interrupted after 3 shards.
    let finished = tmp.path().join("finished");
    let mut o = options(inputs.clone(), &finished);
    o.tokenizer = TokenizerSpec::File(original.clone());
    run(&o).unwrap();
    let expected = snapshot(&finished);
    let out = tmp.path().join("out");
    crash_state(&finished, &out, 3, false, None);
    o.out = out.clone();
    o.resume = true;
    // The original is gone: the store's own copy, or a copy elsewhere, is the same tokenizer.
    let moved = tmp.path().join("moved.json");
    std::fs::rename(&original, &moved).unwrap();
    for copy in [out.join("tokenizer.json"), moved] {
        o.tokenizer = TokenizerSpec::File(copy.clone());
        run(&o).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        assert_eq!(snapshot(&out), expected, "the store made with the original");
    }
    // Another tokenizer at any path is still refused.
    let mut other: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("tokenizer.json")).unwrap()).unwrap();
    other["model"]["merges"].as_array_mut().unwrap().pop();
    let other_path = tmp.path().join("other.json");
    std::fs::write(&other_path, serde_json::to_vec(&other).unwrap()).unwrap();
    o.tokenizer = TokenizerSpec::File(other_path);
    match run(&o).unwrap_err() {
        Error::ResumeMismatch(m) => assert!(m.contains("--tokenizer was") && m.contains("is not the tokenizer the folder was started with"), "{m}"),
        e => panic!("expected ResumeMismatch, got {e}"),
    }
}

#[test]
fn resume_refuses_an_input_edited_where_the_fingerprint_does_not_look() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = random_text(9, 4_000_000).into_bytes();
    let inputs = write_corpus(tmp.path(), std::slice::from_ref(&text));
    let out = tmp.path().join("out");
    let mut o = options(inputs.clone(), &out);
    o.tokenizer = TokenizerSpec::Bytes;
    o.shard_bytes = 1 << 20;
    o.chunk_bytes = 1 << 16;
    run(&o).unwrap();

    // One byte changed between the fingerprint's sampled blocks (after the first MiB, before the
    // last, outside the 16 blocks of 64 KiB), the size kept: as `sed -i s/a/b/` in the middle.
    let len = text.len();
    let (edge, block, stride) = (1 << 20, 1 << 16, (len - (1 << 16)) / 16);
    let at = (edge..len - edge).find(|&i| i % stride > block + 10 && text[i] == b'e').unwrap();
    text[at] = b'E';
    let file = std::fs::OpenOptions::new().write(true).open(&inputs[0]).unwrap();
    std::io::Write::write_all(&mut &file, &text).unwrap();
    // An edit happens after the run; some file systems keep whole seconds only.
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    drop(file);

    o.resume = true;
    match run(&o).unwrap_err() {
        Error::ResumeMismatch(m) => assert!(m.contains("in0.txt was modified after this folder was started") && m.contains("`touch -d @"), "{m}"),
        e => panic!("expected ResumeMismatch, got {e}"),
    }

    // The text put back and the recorded time restored, as the message suggests: resumed.
    text[at] = b'e';
    std::fs::write(&inputs[0], &text).unwrap();
    let recorded = Manifest::read(&out).unwrap().inputs[0].modified_ns.unwrap();
    let file = std::fs::File::options().write(true).open(&inputs[0]).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(recorded)).unwrap();
    drop(file);
    run(&o).unwrap();
}
