//! Fuzzing the readers of a token store: the shard header, the manifest, and opening (then
//! reading) a store whose files are damaged or forged. Whatever the bytes, a reader returns a
//! typed error that names the file, or a store that is consistent; it never panics and never reads
//! out of bounds (these tests run with overflow checks on). Seeded: every run draws the same cases.

mod common;
use common::{at_path, leaves, seeded};

use arrows_core::error::Error;
use arrows_core::manifest::{self, Manifest};
use arrows_core::shard::{self, ShardHeader, HEADER_LEN};
use arrows_core::source::TokenSource;
use arrows_core::store::Store;
use arrows_core::tokenize::{tokenize, Progress, TokenizeOptions, TokenizerSpec};
use proptest::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use xxhash_rust::xxh3::xxh3_64;

/// A small finished store (bytes tokenizer, 5 shards), made once; each case works on a copy.
fn pristine() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..3000u32).flat_map(|i| format!("w{} ", i % 97).into_bytes()).chain(*b"\xff tail").collect();
        let input = tmp.path().join("in.txt");
        std::fs::write(&input, &text).unwrap();
        let opts = small_shards(input, tmp.path().join("store"), TokenizerSpec::Bytes);
        tokenize(&opts, &Progress::default()).unwrap();
        assert_eq!(Manifest::read(&opts.out).unwrap().shards.len(), 5);
        (tmp, opts.out)
    })
    .1
}

fn is_corrupt(e: &Error) -> bool {
    matches!(e, Error::Corrupt { .. })
}

fn copy_store(to: &Path) -> PathBuf {
    let dir = to.join("store");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(pristine()).unwrap().flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    dir
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    Manifest::read(dir).unwrap().shards.iter().map(|s| dir.join(&s.file)).collect()
}

/// The only errors a damaged store may give: corrupt data or a file problem, naming a path in
/// `dir` (or `dir` itself), or an input error (e.g. "unfinished") naming `dir`.
fn check_error(err: &Error, dir: &Path) -> Result<(), TestCaseError> {
    let message = err.to_string();
    match err {
        Error::Corrupt { path, .. } | Error::Io { path, .. } => prop_assert!(path.starts_with(dir), "{message}"),
        Error::Input(_) => prop_assert!(message.contains(&dir.display().to_string()), "{message}"),
        other => prop_assert!(false, "unexpected error kind: {other:?}"),
    }
    Ok(())
}

/// Open the store and, if that succeeds, read every token through the loader's source: either a
/// typed error or a consistent stream, never a panic.
fn open_and_read(dir: &Path) -> Result<Option<Vec<u32>>, TestCaseError> {
    match Store::open(dir, true) {
        Err(e) => {
            check_error(&e, dir)?;
            Ok(None)
        }
        Ok(store) => {
            let ids = store.read_all().unwrap();
            prop_assert_eq!(ids.len() as u64, store.len());
            if store.manifest.complete {
                match TokenSource::from_store(dir) {
                    Ok(source) => {
                        let mut out = vec![0i64; source.len() as usize];
                        if let Err(e) = source.read(0, &mut out) {
                            check_error(&e, dir)?; // an id outside a (forged) vocabulary
                        }
                    }
                    Err(e) => check_error(&e, dir)?,
                }
            }
            Ok(Some(ids))
        }
    }
}

/// A 64-byte header with arbitrary fields and a correct header checksum, so that the parser's
/// checks beyond the checksum are reached.
fn forged_header(version: u32, bytes_per_token: u32, count: u64, start: u64, end: u64) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(&shard::MAGIC);
    b[8..12].copy_from_slice(&version.to_le_bytes());
    b[12..16].copy_from_slice(&bytes_per_token.to_le_bytes());
    b[16..24].copy_from_slice(&count.to_le_bytes());
    b[24..32].copy_from_slice(&7u64.to_le_bytes());
    b[32..40].copy_from_slice(&9u64.to_le_bytes());
    b[40..48].copy_from_slice(&start.to_le_bytes());
    b[48..56].copy_from_slice(&end.to_le_bytes());
    let check = xxh3_64(&b[0..56]);
    b[56..64].copy_from_slice(&check.to_le_bytes());
    b
}

/// Token counts that stress the size arithmetic: small, any, and at the edges of overflow.
fn counts() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..3000, any::<u64>(), (u64::MAX / 2 - 40)..=(u64::MAX / 2), (u64::MAX / 4 - 40)..=(u64::MAX / 4), (u64::MAX - 40)..=u64::MAX]
}

/// Values a forged manifest may hold in place of any field.
fn forged_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(0)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(true)),
        Just(serde_json::json!("x")),
        Just(serde_json::json!("u32")),
        Just(serde_json::json!("../store2/shard_000000.bin")),
        Just(serde_json::json!("/etc/passwd")),
        Just(serde_json::json!("shard_000001.bin")),
        Just(serde_json::json!("ffffffffffffffff")),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        (0u64..20_000).prop_map(|n| serde_json::json!(n)),
    ]
}

proptest! {
    #![proptest_config(seeded(2000, 1))]

    /// Arbitrary bytes, and valid headers with one to three bytes changed: a typed error naming
    /// the file, or (only for the untouched header) the header itself.
    #[test]
    fn header_parser_takes_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..160),
        edits in proptest::collection::vec((0usize..HEADER_LEN, any::<u8>()), 0..4),
    ) {
        let path = Path::new("/somewhere/shard_000003.bin");
        if let Err(e) = ShardHeader::from_bytes(&bytes, path) {
            prop_assert!(is_corrupt(&e) && e.to_string().contains("shard_000003.bin"));
        }
        let good = ShardHeader { dtype: shard::Dtype::U16, count: 12, tokenizer_hash: 3, checksum: 4, input_start: 5, input_end: 50 };
        let mut b = good.to_bytes();
        for &(i, v) in &edits {
            b[i] = v;
        }
        match ShardHeader::from_bytes(&b, path) {
            Ok(h) => prop_assert!(b == good.to_bytes() && h == good),
            Err(e) => prop_assert!(b != good.to_bytes() && is_corrupt(&e)),
        }
    }
}

proptest! {
    #![proptest_config(seeded(1500, 2))]

    /// Headers with a valid checksum but arbitrary fields (huge counts, unknown versions and
    /// widths, backward ranges), on files of arbitrary length: `read_header` accepts exactly the
    /// well-formed header whose file has the announced length.
    #[test]
    fn forged_header_fields_and_file_lengths(
        version in prop_oneof![Just(1u32), any::<u32>()],
        width in prop_oneof![Just(2u32), Just(4u32), any::<u32>()],
        count in counts(),
        start in prop_oneof![0u64..100, any::<u64>()],
        end in prop_oneof![0u64..100, any::<u64>()],
        extra in prop_oneof![Just(0i64), -3i64..3, -200i64..200],
    ) {
        let b = forged_header(version, width, count, start, end);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("shard_000000.bin");
        let parsed = ShardHeader::from_bytes(&b, &path);
        let well_formed = version == 1 && (width == 2 || width == 4) && end >= start;
        prop_assert_eq!(parsed.is_ok(), well_formed);
        // A payload of about the announced size (capped: the file is really written).
        let announced = count.saturating_mul(width as u64).min(4096) as i64;
        let payload = (announced + extra).max(0) as usize;
        let mut file = b.to_vec();
        file.resize(HEADER_LEN + payload, 0xAB);
        std::fs::write(&path, &file).unwrap();
        match shard::read_header(&path) {
            Ok(h) => prop_assert!(well_formed && h.count.checked_mul(width as u64) == Some(payload as u64)),
            Err(e) => {
                prop_assert!(is_corrupt(&e), "{e}");
                prop_assert!(e.to_string().contains("shard_000000.bin"));
            }
        }
    }
}

proptest! {
    #![proptest_config(seeded(400, 3))]

    /// manifest.json replaced by arbitrary bytes, or by the real one with bytes flipped, inserted
    /// or cut: the reader gives a typed error naming manifest.json, never a panic.
    #[test]
    fn manifest_parser_takes_any_bytes(
        random in proptest::collection::vec(any::<u8>(), 0..300),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..5),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_store(tmp.path());
        let path = dir.join(manifest::FILE_NAME);
        std::fs::write(&path, &random).unwrap();
        if let Err(e) = Manifest::read(&dir) {
            prop_assert!(is_corrupt(&e) && e.to_string().contains("manifest.json"), "{e}");
        }
        let mut text = std::fs::read(pristine().join(manifest::FILE_NAME)).unwrap();
        for (at, byte, kind) in edits {
            let i = at.index(text.len());
            match kind {
                0 => text[i] = byte,
                1 => text.insert(i, byte),
                _ => text.truncate(i),
            }
        }
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = Manifest::read(&dir) {
            prop_assert!(is_corrupt(&e), "{e}");
        }
        open_and_read(&dir)?;
    }
}

proptest! {
    #![proptest_config(seeded(600, 4))]

    /// A well-formed manifest with one to three fields forged (wrong types, negative or huge
    /// numbers, other shards' names, paths leaving the folder, other checksums): opening either
    /// fails with a typed error naming a file of the store, or gives a store whose every token can
    /// be read. A forged shard list never makes the store read a file outside its folder.
    #[test]
    fn forged_manifest_fields(edits in proptest::collection::vec((any::<prop::sample::Index>(), forged_value()), 1..4)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_store(tmp.path());
        // A valid store beside it, so that a path escaping the folder would find a real shard.
        let _twin = copy_store(&{ let d = tmp.path().join("twin"); std::fs::create_dir(&d).unwrap(); d });
        let path = dir.join(manifest::FILE_NAME);
        let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for (at, value) in edits {
            let mut all = Vec::new();
            leaves(&v, &mut Vec::new(), &mut all);
            let target = all[at.index(all.len())].clone();
            *at_path(&mut v, &target) = value;
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        if let Ok(store) = Store::open(&dir, true) {
            for s in &store.shards {
                prop_assert!(s.path.parent() == Some(dir.as_path()), "{} is outside the store", s.path.display());
            }
        }
        open_and_read(&dir)?;
    }
}

proptest! {
    #![proptest_config(seeded(500, 5))]

    /// Damaged shard files: a flipped byte, a cut, bytes appended, or another shard's file in its
    /// place. A change to the header or the length is caught on opening, naming the shard; a change
    /// to the token bytes only is caught by `verify`, naming the shard. Nothing passes both.
    #[test]
    fn damaged_shards_are_named(which in 0usize..5, kind in 0u8..4, at in any::<prop::sample::Index>(), byte in 1u8..=255, other in 0usize..5) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_store(tmp.path());
        let shards = shard_files(&dir);
        let target = &shards[which];
        let good = std::fs::read(target).unwrap();
        let mut bad = good.clone();
        let mut header_or_length = true;
        match kind {
            0 => {
                let i = at.index(bad.len());
                bad[i] ^= byte;
                header_or_length = i < HEADER_LEN;
            }
            1 => bad.truncate(at.index(bad.len())),
            2 => bad.extend(std::iter::repeat_n(byte, 1 + at.index(9))),
            _ => {
                prop_assume!(other != which);
                bad = std::fs::read(&shards[other]).unwrap();
            }
        }
        std::fs::write(target, &bad).unwrap();
        let name = target.file_name().unwrap().to_str().unwrap();
        match Store::open(&dir, false) {
            Err(e) => {
                prop_assert!(header_or_length, "payload change refused on opening: {e}");
                prop_assert!(is_corrupt(&e) && e.to_string().contains(name), "{e}");
            }
            Ok(store) => {
                prop_assert!(!header_or_length, "a damaged header or length was accepted");
                let problems = store.verify();
                prop_assert_eq!(problems.len(), 1);
                prop_assert!(problems[0].to_string().contains(name) && problems[0].to_string().contains("checksum"));
            }
        }
        open_and_read(&dir)?;
    }
}

#[test]
fn a_shard_or_tokenizer_from_another_run_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_store(tmp.path());
    // Another run: the same text with another tokenizer, so every header names another hash.
    let other_dir = tmp.path().join("other");
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "other words ".repeat(500)).unwrap();
    let bpe = small_shards(input, other_dir.clone(), TokenizerSpec::Train { vocab_size: 300, sample_bytes: 1 << 20, seed: 0, min_frequency: 2 });
    tokenize(&bpe, &Progress::default()).unwrap();
    std::fs::copy(other_dir.join("shard_000000.bin"), dir.join("shard_000002.bin")).unwrap();
    let e = Store::open(&dir, false).err().expect("a foreign shard was accepted");
    assert!(e.to_string().contains("shard_000002.bin") && e.to_string().contains("another"), "{e}");

    // A tokenizer.json from another run: the shards are fine, the tokenizer is not theirs.
    let dir = copy_store(&{
        let d = tmp.path().join("t");
        std::fs::create_dir(&d).unwrap();
        d
    });
    std::fs::copy(other_dir.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let problems = Store::open(&dir, false).unwrap().verify();
    assert!(problems.iter().any(|p| p.to_string().contains("tokenizer.json")), "{problems:?}");
}

/// One thread, shards of 2,500 input bytes: a small input makes several shards.
fn small_shards(input: PathBuf, out: PathBuf, tokenizer: TokenizerSpec) -> TokenizeOptions {
    TokenizeOptions { inputs: vec![input], out, tokenizer, threads: 1, shard_bytes: 2500, chunk_bytes: 500, strict_utf8: false, resume: false, force: false, bos: None }
}

#[test]
fn verify_names_every_damaged_shard_not_only_the_first() {
    // Three shards damaged three ways (a header byte, a token byte, missing): each one is named,
    // the ones after a bad header included.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_store(tmp.path());
    let shards = shard_files(&dir);
    assert!(shards.len() >= 4, "the pristine store should have several shards");
    let flip = |path: &Path, at: usize| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    };
    flip(&shards[0], 20); // in the header
    flip(&shards[1], std::fs::metadata(&shards[1]).unwrap().len() as usize - 1); // the last token
    std::fs::remove_file(&shards[3]).unwrap();
    let problems: Vec<String> = Store::verify_folder(&dir).unwrap().iter().map(|e| e.to_string()).collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    for damaged in [&shards[0], &shards[1], &shards[3]] {
        let name = damaged.file_name().unwrap().to_string_lossy().into_owned();
        assert!(problems.iter().any(|p| p.contains(&name)), "{name} not named in {problems:?}");
    }
    assert!(!problems.iter().any(|p| p.contains(&*shards[2].file_name().unwrap().to_string_lossy())), "{problems:?}");
}
