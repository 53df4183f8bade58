//! `arrows tokenize`: train (or load) a tokenizer, then encode the corpus on every core into
//! shards, resumable after a crash at any instant.
//!
//! The corpus is cut into chunks of about `CHUNK_BYTES`, each inside one file and cut only where the
//! pre-tokenizer would split anyway, so that encoding chunks separately gives exactly the ids of
//! encoding each file whole. Chunks are encoded in parallel and appended in order; a shard closes at
//! the first chunk end at least `shard_bytes` past its start. Chunk and shard boundaries depend only
//! on the input and the settings, never on the thread count, so a resumed run (which restarts after
//! the last complete shard) writes the same bytes as an uninterrupted one.

use crate::bpe::WordCache;
use crate::corpus::{decode_lossy, fingerprint, Corpus};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{hex, write_atomic, InputEntry, Manifest, Settings, ShardEntry, TokenizerEntry, TrainingEntry};
use crate::shard::{Dtype, ShardWriter};
use crate::tokenizer::Tokenizer;
use crate::train::{train_bpe, WordCounts};
use crate::vocab::{ByteBpe, END_OF_TEXT};
use rayon::prelude::*;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Instant;

/// Default work unit of the parallel encoder (recorded in the manifest: it places shard ends).
pub const CHUNK_BYTES: u64 = 1 << 20;
pub const TOKENIZER_FILE: &str = "tokenizer.json";
const LOCK_FILE: &str = ".arrows.lock";

#[derive(Clone, Debug)]
pub enum TokenizerSpec {
    /// Train a byte-level BPE on a sample of the corpus.
    Train { vocab_size: usize, sample_bytes: u64, seed: u64, min_frequency: u64 },
    /// Plain bytes, no merges (vocabulary 257).
    Bytes,
    /// An existing tokenizer.json.
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct TokenizeOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub tokenizer: TokenizerSpec,
    /// 0 = every core.
    pub threads: usize,
    pub shard_bytes: u64,
    /// Size of the pieces encoded in parallel (`CHUNK_BYTES`; tests use tiny ones).
    pub chunk_bytes: u64,
    pub strict_utf8: bool,
    pub resume: bool,
    pub force: bool,
    /// The token every training window begins with, by its text (`--bos`); None: the tokenizer's
    /// (`Tokenizer::bos_id`). A store keeps the BOS it was started with.
    pub bos: Option<String>,
}

/// What the job is doing, for progress display.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Starting = 0,
    /// Counting pre-tokens of the training sample: `done`/`total` in bytes.
    Counting = 1,
    /// Learning merges: `done`/`total` in merges.
    Merging = 2,
    /// Encoding: `done`/`total` in corpus bytes.
    Encoding = 3,
    Done = 4,
}

/// Counters the job updates and a caller (the Python progress bar) reads; `cancel` asks it to stop.
#[derive(Default)]
pub struct Progress {
    pub phase: AtomicU8,
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub tokens: AtomicU64,
    pub replaced_bytes: AtomicU64,
    pub cancel: AtomicBool,
}

impl Progress {
    fn set_phase(&self, phase: Phase, done: u64, total: u64) {
        self.done.store(done, Relaxed);
        self.total.store(total, Relaxed);
        self.phase.store(phase as u8, Relaxed);
    }
    fn check_cancel(&self) -> Result<()> {
        if self.cancel.load(Relaxed) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub out: PathBuf,
    pub tokens: u64,
    pub input_bytes: u64,
    pub replaced_bytes: u64,
    pub shards: usize,
    pub vocab_size: usize,
    /// Input bytes already encoded by an earlier run (0 for a fresh run).
    pub resumed_at: u64,
    pub trained: Option<TrainingEntry>,
    /// Time spent training the tokenizer in this run.
    pub train_seconds: Option<f64>,
    pub seconds: f64,
    /// Of which encoding (after the tokenizer was ready): the part that scales with threads.
    pub encode_seconds: f64,
    /// Things worth telling the user (a damaged shard re-encoded on resume, ...).
    pub notes: Vec<String>,
}

pub fn tokenize(opts: &TokenizeOptions, progress: &Progress) -> Result<Summary> {
    let started = Instant::now();
    check_options(opts)?;
    let corpus = Corpus::open(&opts.inputs)?;
    if corpus.total == 0 {
        return Err(Error::Input(format!("the corpus is empty: {} file(s), 0 bytes", corpus.files.len())));
    }
    // Each finished shard rewrites the manifest, which lists every shard so far: n shards cost
    // O(n²) bytes of manifest writes, which past a few ten thousand shards outweigh the encoding.
    let shards = corpus.total.div_ceil(opts.shard_bytes);
    if shards > MAX_SHARDS {
        return Err(Error::Input(format!(
            "--shard-bytes {} would cut the {}-byte corpus into about {shards} shards (at most {MAX_SHARDS}: each shard rewrites the \
             manifest); give at least {} bytes",
            opts.shard_bytes,
            corpus.total,
            corpus.total.div_ceil(MAX_SHARDS)
        )));
    }
    let out = opts.out.as_path();
    if out.exists() && !out.is_dir() {
        // create_dir_all's own error says only "File exists".
        return Err(Error::Input(format!(
            "{}: File exists and is not a folder; --out names the folder of the token store (its shards, manifest.json and \
             tokenizer.json): choose another",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).at(out)?;
    let _lock = lock_folder(out)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::Input(format!("cannot start {} threads: {e}", opts.threads)))?;
    pool.install(|| run(opts, &corpus, progress, started))
}

/// The most shards a job may plan (see `tokenize`): 2.6 TB of text at the default 128 MiB.
pub const MAX_SHARDS: u64 = 20_000;

fn check_options(opts: &TokenizeOptions) -> Result<()> {
    if opts.shard_bytes == 0 {
        return Err(Error::Input("--shard-bytes must be positive".into()));
    }
    if opts.chunk_bytes == 0 {
        return Err(Error::Input("the chunk size must be positive".into()));
    }
    if let TokenizerSpec::Train { vocab_size, sample_bytes, .. } = opts.tokenizer {
        if vocab_size < 257 {
            return Err(Error::Input(format!(
                "--vocab-size {vocab_size} is too small: a byte-level vocabulary needs 256 bytes + <|endoftext|> = 257 at least"
            )));
        }
        if sample_bytes == 0 {
            return Err(Error::Input("--sample-bytes must be positive".into()));
        }
    }
    if opts.resume && opts.force {
        return Err(Error::Input("--resume and --force contradict each other: --resume continues the folder, --force starts it over".into()));
    }
    // A --bos that no tokenizer of this kind can have is refused before anything is read or
    // written; for a trained one, before the training (minutes on a large sample), which was the
    // first time its tokens were known. The trained BPE starts as the bytes-only one: its
    // <|endoftext|> and 256 bytes, then merges.
    if let Some(name) = &opts.bos {
        let learnable = match opts.tokenizer {
            TokenizerSpec::Train { vocab_size, .. } => crate::train::could_learn(name, vocab_size),
            TokenizerSpec::Bytes => false,
            TokenizerSpec::File(_) => true, // checked once the file is read
        };
        if !learnable {
            Tokenizer::from_bpe(&ByteBpe::bytes_only()).token_id_for_bos(name)?;
        }
    }
    Ok(())
}

/// An exclusive lock on the output folder, held for the whole job: a second `arrows tokenize`
/// into the same folder is refused instead of interleaving writes.
fn lock_folder(out: &Path) -> Result<std::fs::File> {
    let path = out.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).at(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Input(format!(
            "{}: another arrows process is writing this folder; wait for it or choose another --out",
            out.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

fn run(opts: &TokenizeOptions, corpus: &Corpus, progress: &Progress, started: Instant) -> Result<Summary> {
    let out = opts.out.as_path();
    let inputs: Vec<InputEntry> = corpus
        .files
        .par_iter()
        .enumerate()
        .map(|(i, f)| {
            let map = corpus.map(i)?;
            let entry = InputEntry { path: f.path.display().to_string(), size: f.size, fingerprint: fingerprint(map.bytes()), modified_ns: f.modified };
            map.release(0, map.bytes().len());
            Ok(entry)
        })
        .collect::<Result<_>>()?;
    let settings = settings_of(opts);
    // Read a given tokenizer first: it may live in the very folder that --force is about to clear.
    let given = match &opts.tokenizer {
        TokenizerSpec::File(path) => Some(Tokenizer::from_file(path)?),
        _ => None,
    };
    // A --bos that names no token of a given tokenizer is said before anything is written (the
    // other kinds were checked in `check_options`; a trained one's merges, once it is trained).
    if let (Some(name), Some(t)) = (&opts.bos, &given) {
        t.token_id_for_bos(name)?;
    }
    let mut notes = Vec::new();
    let mut train_seconds = None;

    let existing = match Manifest::read(out) {
        Ok(m) => Some(m),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) if opts.force => {
            notes.push(format!("ignored the old manifest: {e}"));
            None
        }
        Err(e) => return Err(e),
    };
    if opts.force {
        remove_outputs(out)?;
    } else if !opts.resume && folder_has_entries(out)? {
        return Err(Error::Input(format!(
            "{} is not empty: add --resume to continue the tokenization there, or --force to start it over (its arrows files are deleted)",
            out.display()
        )));
    }

    let (tokenizer, mut manifest) = match existing.filter(|_| opts.resume) {
        Some(mut manifest) => {
            check_same_job(&manifest, &settings, &inputs, given.as_ref(), opts)?;
            let tokenizer = Tokenizer::from_file(&out.join(TOKENIZER_FILE))?;
            if hex(tokenizer.hash) != manifest.tokenizer.hash {
                return Err(Error::corrupt(out.join(TOKENIZER_FILE), "does not match the manifest's tokenizer hash: the folder was altered; start over with --force"));
            }
            if let Some(name) = &opts.bos {
                let id = tokenizer.token_id_for_bos(name)?;
                // A store that recorded no BOS begins its windows with id 0: --bos naming id 0 is that one.
                if id != manifest.tokenizer.bos_id.unwrap_or(0) {
                    let recorded = manifest.tokenizer.bos_id.map_or("none (id 0)".to_owned(), |b| format!("id {b}"));
                    return Err(Error::Input(format!(
                        "--bos {name:?} (id {id}): {} was started with another BOS ({recorded}), which its windows begin with; \
                         resume without --bos, or start over with --force",
                        out.display()
                    )));
                }
            }
            keep_valid_shards(out, &mut manifest, tokenizer.hash, &mut notes);
            (tokenizer, manifest)
        }
        None => {
            // A fresh start: whatever an interrupted earlier attempt left is ours to replace.
            remove_outputs(out)?;
            let (tokenizer, training) = match (given, &opts.tokenizer) {
                (Some(t), _) => (t, None),
                (None, TokenizerSpec::Train { vocab_size, sample_bytes, seed, min_frequency }) => {
                    let (t, entry, seconds) = train_tokenizer(corpus, *vocab_size, *sample_bytes, *seed, *min_frequency, progress)?;
                    (t, Some((entry, seconds)))
                }
                (None, _) => (Tokenizer::from_bpe(&ByteBpe::bytes_only()), None),
            };
            train_seconds = training.as_ref().map(|t| t.1);
            let bos_id = match &opts.bos {
                Some(name) => Some(tokenizer.token_id_for_bos(name)?),
                None => tokenizer.bos_id,
            };
            write_atomic(&out.join(TOKENIZER_FILE), tokenizer.json.as_bytes())?;
            let manifest = Manifest {
                format: crate::manifest::FORMAT.into(),
                version: crate::manifest::VERSION,
                tokenizer: TokenizerEntry {
                    file: TOKENIZER_FILE.into(),
                    hash: hex(tokenizer.hash),
                    vocab_size: tokenizer.vocab_size,
                    bos_id,
                },
                dtype: Dtype::for_vocab(tokenizer.vocab_size).name().into(),
                settings,
                inputs,
                total_input_bytes: corpus.total,
                shards: Vec::new(),
                complete: false,
                tokens: 0,
                replaced_bytes: 0,
                training: training.map(|t| t.0),
            };
            manifest.write(out)?;
            (tokenizer, manifest)
        }
    };

    notes.extend(tokenizer.bos_note(manifest.tokenizer.bos_id, opts.bos.is_some()));
    let resumed_at = manifest.next_input_offset();
    let encode_start = Instant::now();
    encode_corpus(opts, corpus, &tokenizer, &mut manifest, progress)?;
    let encode_seconds = encode_start.elapsed().as_secs_f64();
    progress.set_phase(Phase::Done, corpus.total, corpus.total);
    Ok(Summary {
        out: out.to_path_buf(),
        tokens: manifest.tokens,
        input_bytes: corpus.total,
        replaced_bytes: manifest.replaced_bytes,
        shards: manifest.shards.len(),
        vocab_size: tokenizer.vocab_size,
        resumed_at,
        trained: manifest.training.clone(),
        train_seconds,
        seconds: started.elapsed().as_secs_f64(),
        encode_seconds,
        notes,
    })
}

fn settings_of(opts: &TokenizeOptions) -> Settings {
    let (tokenizer, vocab_size, sample_bytes, seed, min_frequency) = match &opts.tokenizer {
        TokenizerSpec::Train { vocab_size, sample_bytes, seed, min_frequency } => {
            ("train".to_string(), Some(*vocab_size), Some(*sample_bytes), Some(*seed), Some(*min_frequency))
        }
        TokenizerSpec::Bytes => ("bytes".to_string(), None, None, None, None),
        TokenizerSpec::File(p) => {
            let real = p.canonicalize().or_else(|_| std::path::absolute(p)).unwrap_or(p.clone());
            (real.display().to_string(), None, None, None, None)
        }
    };
    Settings {
        tokenizer,
        vocab_size,
        sample_bytes,
        seed,
        min_frequency,
        shard_bytes: opts.shard_bytes,
        chunk_bytes: opts.chunk_bytes,
        strict_utf8: opts.strict_utf8,
    }
}

/// The most differences a refused `--resume` lists.
const MAX_DIFFS_SHOWN: usize = 20;

/// Refuse to resume a folder made from other inputs or settings, saying what differs.
fn check_same_job(manifest: &Manifest, settings: &Settings, inputs: &[InputEntry], given: Option<&Tokenizer>, opts: &TokenizeOptions) -> Result<()> {
    let mut diffs = Vec::new();
    let (a, b) = (&manifest.settings, settings);
    let mut setting = |name: &str, was: String, now: String| {
        if was != now {
            diffs.push(format!("{name} was {was}, now {now}"));
        }
    };
    // A tokenizer file is known by its content: the same file moved, or the store's own copy of it
    // (OUT/tokenizer.json, the only one left once the original is gone), resumes.
    let was_a_file = !matches!(a.tokenizer.as_str(), "train" | "bytes");
    if !(was_a_file && given.is_some_and(|t| hex(t.hash) == manifest.tokenizer.hash)) {
        setting("--tokenizer", a.tokenizer.clone(), b.tokenizer.clone());
    }
    // Options that only apply when a tokenizer is trained: "unset" otherwise, not Rust's `None`.
    let shown = |v: Option<u64>| v.map_or("unset".to_string(), |v| v.to_string());
    setting("--vocab-size", shown(a.vocab_size.map(|v| v as u64)), shown(b.vocab_size.map(|v| v as u64)));
    setting("--sample-bytes", shown(a.sample_bytes), shown(b.sample_bytes));
    setting("--seed", shown(a.seed), shown(b.seed));
    setting("min frequency", shown(a.min_frequency), shown(b.min_frequency));
    setting("--shard-bytes", a.shard_bytes.to_string(), b.shard_bytes.to_string());
    setting("chunk size", a.chunk_bytes.to_string(), b.chunk_bytes.to_string());
    setting("--strict-utf8", a.strict_utf8.to_string(), b.strict_utf8.to_string());
    if manifest.inputs.len() != inputs.len() {
        diffs.push(format!("the input had {} file(s), now {}", manifest.inputs.len(), inputs.len()));
    }
    // Files are matched by path, so that one file added to a folder is named as such (compared by
    // position, every file after it differed).
    let earlier: std::collections::HashMap<&str, &InputEntry> = manifest.inputs.iter().map(|e| (e.path.as_str(), e)).collect();
    let current: std::collections::HashSet<&str> = inputs.iter().map(|e| e.path.as_str()).collect();
    let before = diffs.len();
    for now in inputs.iter().filter(|e| !earlier.contains_key(e.path.as_str())) {
        diffs.push(format!("{} is a new input", now.path));
    }
    for was in manifest.inputs.iter().filter(|e| !current.contains(e.path.as_str())) {
        diffs.push(format!("{} was an input, and is no longer", was.path));
    }
    let same_files = diffs.len() == before && manifest.inputs.len() == inputs.len();
    if same_files && manifest.inputs.iter().zip(inputs).any(|(was, now)| was.path != now.path) {
        diffs.push("the input files come in another order (the corpus is their concatenation in the given order)".into());
    }
    for (was, now) in inputs.iter().filter_map(|now| earlier.get(now.path.as_str()).map(|was| (was, now))) {
        if was.size != now.size {
            diffs.push(format!("{} was {} bytes, now {}", now.path, was.size, now.size));
        } else if was.fingerprint != now.fingerprint {
            diffs.push(format!("{} has changed content (fingerprint {} → {})", now.path, was.fingerprint, now.fingerprint));
        } else if let Some(ns) = was.modified_ns.filter(|&t| Some(t) != now.modified_ns) {
            // Same size and sampled blocks, but written since: its encoded part may be stale.
            diffs.push(format!(
                "{} was modified after this folder was started (its modification time changed); if only its time changed \
                 (touched, copied), `touch -d @{}.{:09} '{}'` restores the recorded one",
                now.path,
                ns / 1_000_000_000,
                ns % 1_000_000_000,
                now.path
            ));
        }
    }
    if let Some(t) = given {
        if hex(t.hash) != manifest.tokenizer.hash {
            diffs.push(format!("{} is not the tokenizer the folder was started with", settings.tokenizer));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    // A folder of 10,000 files given from elsewhere would differ in every one: show a few.
    if diffs.len() > MAX_DIFFS_SHOWN {
        let more = diffs.len() - MAX_DIFFS_SHOWN;
        diffs.truncate(MAX_DIFFS_SHOWN);
        diffs.push(format!("... and {more} more difference(s)"));
    }
    Err(Error::ResumeMismatch(format!(
        "cannot resume {}: it was made from other inputs or settings:\n  - {}\nRun with the original inputs and options, or use --force to start over.",
        opts.out.display(),
        diffs.join("\n  - ")
    )))
}

/// Keep the manifest's shards up to the first one that is missing or damaged, and delete every
/// shard-like file the manifest does not list (left by a crash between a rename and the
/// manifest update, or unfinished `.tmp` files).
fn keep_valid_shards(out: &Path, manifest: &mut Manifest, tokenizer_hash: u64, notes: &mut Vec<String>) {
    let mut keep = 0;
    for s in &manifest.shards {
        let path = out.join(&s.file);
        let ok = crate::shard::read_header(&path).is_ok_and(|h| {
            h.count == s.tokens && h.tokenizer_hash == tokenizer_hash && hex(h.checksum) == s.checksum && h.input_start == s.input_start && h.input_end == s.input_end
        });
        if !ok {
            notes.push(format!("{} was missing or damaged: re-encoded from input byte {}", s.file, s.input_start));
            break;
        }
        keep += 1;
    }
    manifest.shards.truncate(keep);
    manifest.tokens = manifest.shards.iter().map(|s| s.tokens).sum();
    manifest.replaced_bytes = manifest.shards.iter().map(|s| s.replaced_bytes).sum();
    manifest.complete = false;
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let listed = manifest.shards.iter().any(|s| s.file == name);
            if (is_shard_name(&name) && !listed) || is_our_tmp(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn shard_name(index: usize) -> String {
    format!("shard_{index:06}.bin")
}

fn is_shard_name(name: &str) -> bool {
    name.starts_with("shard_") && (name.ends_with(".bin") || name.ends_with(".bin.tmp"))
}

/// The files arrows writes in an output folder besides the shards.
const OUTPUT_FILES: [&str; 3] = [crate::manifest::FILE_NAME, TOKENIZER_FILE, "tokens.h5"];

/// An unfinished file of ours (written under a temporary name, then renamed); a user's own `.tmp`
/// files in the folder are left alone.
fn is_our_tmp(name: &str) -> bool {
    name.strip_suffix(".tmp").is_some_and(|stem| is_shard_name(stem) || OUTPUT_FILES.contains(&stem))
}

fn folder_has_entries(out: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(out).at(out)?.flatten().any(|e| e.file_name() != LOCK_FILE))
}

/// Delete what arrows writes in an output folder (and nothing else).
fn remove_outputs(out: &Path) -> Result<()> {
    for e in std::fs::read_dir(out).at(out)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = is_shard_name(&name) || is_our_tmp(&name) || OUTPUT_FILES.contains(&name.as_str());
        if ours {
            std::fs::remove_file(e.path()).at(e.path())?;
        }
    }
    Ok(())
}

/// Train a byte-level BPE on a sample of the corpus: the tokenizer, what it was trained on, and
/// how long it took.
fn train_tokenizer(
    corpus: &Corpus,
    vocab_size: usize,
    sample_bytes: u64,
    seed: u64,
    min_frequency: u64,
    progress: &Progress,
) -> Result<(Tokenizer, TrainingEntry, f64)> {
    let t0 = Instant::now();
    let pieces = crate::sample::plan_sample(corpus, sample_bytes, seed)?;
    let sample_total: u64 = pieces.iter().map(|p| p.len() as u64).sum();
    progress.set_phase(Phase::Counting, 0, sample_total);
    let counts = pieces
        .par_iter()
        .try_fold(WordCounts::new, |mut counts, piece| {
            if !progress.cancel.load(Relaxed) {
                let map = corpus.map(piece.file)?;
                let (text, _) = decode_lossy(&map.bytes()[piece.start..piece.end]);
                for part in text.split(END_OF_TEXT) {
                    counts.add_text(part);
                }
                map.release(piece.start, piece.end);
                progress.done.fetch_add(piece.len() as u64, Relaxed);
            }
            Ok(counts)
        })
        .try_reduce(WordCounts::new, |mut a, b| {
            a.merge(b);
            Ok(a)
        })?;
    progress.check_cancel()?;
    check_training_fits(crate::train::training_memory_bytes(&counts), crate::memory::available_bytes(), sample_total, counts.len())?;
    progress.set_phase(Phase::Merging, 0, vocab_size.saturating_sub(257) as u64);
    let report = |done: usize, _total: usize| progress.done.store(done as u64, Relaxed);
    let bpe = train_bpe(&counts, vocab_size, min_frequency, &report, &progress.cancel)?;
    let entry = TrainingEntry { sample_bytes: sample_total, distinct_words: counts.len() as u64, merges: bpe.merges.len() };
    drop(counts);
    release_freed_memory();
    Ok((Tokenizer::from_bpe(&bpe), entry, t0.elapsed().as_secs_f64()))
}

/// Refuses a BPE training that would not fit in the memory available (`need` bytes for a sample
/// of `sample` bytes with `words` distinct words): the kernel would kill the job without a word.
/// Text without spaces between words (Chinese, Japanese) needs about 15 bytes per byte of sample.
fn check_training_fits(need: u64, available: Option<u64>, sample: u64, words: usize) -> Result<()> {
    let Some(available) = available else { return Ok(()) };
    // A fifth more than the estimate: the allocator's overhead, and the estimate's own error (a
    // job whose peak was the estimate plus 1% of the memory was killed).
    let need = need + need / 5;
    if need <= available {
        return Ok(());
    }
    // A sample this much smaller needs about 80% of what is available (for text whose words
    // rarely repeat, the need grows with the sample).
    let fits = (sample as f64 * 0.8 * available as f64 / need as f64) as u64;
    let size = |bytes: u64| if bytes >= 10_000_000_000 { format!("{:.0} GB", bytes as f64 / 1e9) } else { format!("{} MB", bytes / 1_000_000) };
    Err(Error::Input(format!(
        "training the BPE on this sample ({}, {words} distinct words) needs about {} of memory, and {} is available: \
         use --sample-bytes {}MB or less (text without spaces between words, such as Chinese, has a distinct word \
         for nearly every clause), or --tokenizer with an existing tokenizer.json",
        size(sample),
        size(need),
        size(available),
        (fits / 1_000_000).max(1)
    )))
}

/// Memory the `tokenizers` library takes to encode a text in one piece, per byte of it: 100 to 160
/// measured (a Metaspace BPE and a Llama 3 style one on 6.6 MB), with some margin.
const WHOLE_TEXT_BYTES_PER_BYTE: u64 = 170;

/// A tokenizer that cannot cut a text encodes each file whole, `at_once` files in parallel; refuses
/// the job when the largest file (`path`, `size` bytes) would not fit that way, since the kernel
/// would kill it without a word.
fn check_whole_files_fit(path: &Path, size: u64, at_once: u64, available: Option<u64>) -> Result<()> {
    let Some(available) = available else { return Ok(()) };
    let need = WHOLE_TEXT_BYTES_PER_BYTE * size * at_once.max(1);
    if need <= available {
        return Ok(());
    }
    let piece = available / WHOLE_TEXT_BYTES_PER_BYTE / at_once.max(1) * 4 / 5;
    Err(Error::Input(format!(
        "{}: this tokenizer cannot cut a text without changing its ids (no pre-tokenizer, or one that arrows' checks at load \
         could not cut at line ends or spaces), so each file is encoded whole, {at_once} at a time, and for this file of {} MB \
         that takes about {} MB of memory, {} MB available: split the input into files of at most {} MB (at line ends){}",
        path.display(),
        size / 1_000_000,
        need / 1_000_000,
        available / 1_000_000,
        (piece / 1_000_000).max(1),
        if at_once > 1 { ", or use --threads 1" } else { "" }
    )))
}

/// Returns freed heap memory to the system. The word counts and the trainer's tables are millions
/// of small allocations; once freed, glibc keeps their pages for later use, so a BPE trained on a
/// sample of Chinese (a distinct word for nearly every clause) left 1.4 GB resident per 200 MB of
/// sample through the whole encoding, which needs a small fraction of that.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A piece of one input file: bytes `start..end` of file `file`.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    file: usize,
    start: usize,
    end: usize,
}

/// The next chunk starting at global offset `pos` (< total), cut where the tokenizer allows.
/// Empty files hold no offset, so a chunk is never empty.
fn next_chunk(corpus: &Corpus, tokenizer: &Tokenizer, pos: u64, chunk_bytes: u64) -> Result<Chunk> {
    let (file, local) = corpus.locate(pos);
    let map = corpus.map(file)?;
    let bytes = map.bytes();
    let start = local as usize;
    let target = start + chunk_bytes as usize;
    let end = if target >= bytes.len() {
        bytes.len()
    } else {
        tokenizer.next_safe_split(bytes, target).unwrap_or(bytes.len())
    };
    Ok(Chunk { file, start, end })
}

thread_local! {
    // Each encoding thread keeps its word cache warm across chunks.
    static WORD_CACHE: RefCell<WordCache> = RefCell::new(WordCache::new());
}

/// Id vectors handed back by the writer for reuse: a megabyte-sized vector per chunk would be
/// allocated and faulted in afresh each time; recycled ones are already mapped.
#[derive(Default)]
struct IdBuffers(std::sync::Mutex<Vec<Vec<u32>>>);

impl IdBuffers {
    fn take(&self, capacity: usize) -> Vec<u32> {
        let mut v = self.0.lock().unwrap().pop().unwrap_or_default();
        v.clear();
        v.reserve(capacity);
        v
    }
    fn give(&self, v: Vec<u32>) {
        self.0.lock().unwrap().push(v);
    }
}

fn encode_chunk(c: Chunk, corpus: &Corpus, tokenizer: &Tokenizer, strict: bool, buffers: &IdBuffers) -> Result<(Vec<u32>, u64)> {
    let map = corpus.map(c.file)?;
    let bytes = &map.bytes()[c.start..c.end];
    if strict {
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(Error::InvalidUtf8 { path: corpus.files[c.file].path.clone(), offset: (c.start + e.valid_up_to()) as u64 });
        }
    }
    let (text, replaced) = decode_lossy(bytes);
    let mut ids = buffers.take(bytes.len() / 3);
    WORD_CACHE.with_borrow_mut(|cache| tokenizer.encode(&text, cache, &mut ids))?;
    map.release(c.start, c.end);
    Ok((ids, replaced))
}

type Encoded = Vec<(Chunk, Result<(Vec<u32>, u64)>)>;

/// Encode from the end of the last complete shard to the end of the corpus. The calling thread
/// plans chunks and encodes them in parallel, batch after batch; a writer thread appends the
/// results in order and closes shards meanwhile, so encoding never waits for the disk.
fn encode_corpus(opts: &TokenizeOptions, corpus: &Corpus, tokenizer: &Tokenizer, manifest: &mut Manifest, progress: &Progress) -> Result<()> {
    let start = manifest.next_input_offset();
    if !tokenizer.can_cut() {
        let remaining: Vec<_> = corpus.files.iter().filter(|f| f.start + f.size > start).collect();
        if let Some(file) = remaining.iter().max_by_key(|f| f.size) {
            let at_once = remaining.len().min(rayon::current_num_threads());
            check_whole_files_fit(&file.path, file.size, at_once as u64, crate::memory::available_bytes())?;
        }
    }
    progress.set_phase(Phase::Encoding, start, corpus.total);
    progress.tokens.store(manifest.tokens, Relaxed);
    progress.replaced_bytes.store(manifest.replaced_bytes, Relaxed);
    // Threads idle at the end of each batch until its slowest chunk is done: many chunks per
    // thread keep that tail short (4 per thread lost ~6% on 2 threads).
    let batch = 16 * rayon::current_num_threads();
    // Shards end at chunk ends: small shards need chunks no larger.
    let chunk_bytes = opts.chunk_bytes.min(opts.shard_bytes);
    // One batch being written while the next is encoded.
    let (send, receive) = std::sync::mpsc::sync_channel::<Encoded>(1);
    let buffers = IdBuffers::default();

    std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_shards(opts, corpus, tokenizer, manifest, progress, receive, start, &buffers));
        let mut p = start;
        let mut planned = Ok(());
        while p < corpus.total && !progress.cancel.load(Relaxed) && planned.is_ok() {
            let mut chunks = Vec::with_capacity(batch);
            while chunks.len() < batch && p < corpus.total {
                match next_chunk(corpus, tokenizer, p, chunk_bytes) {
                    Ok(c) => {
                        p += (c.end - c.start) as u64;
                        chunks.push(c);
                    }
                    Err(e) => {
                        planned = Err(e); // the chunks before it are still written
                        break;
                    }
                }
            }
            // After a cancel (Ctrl-C) the chunks not yet begun are skipped: a batch is 16 chunks
            // per thread, which a slow tokenizer takes many seconds to encode, and a tokenizer that
            // cannot cut takes whole files. The writer stops at the first skipped one.
            let encoded: Encoded = chunks
                .par_iter()
                .map(|&c| {
                    let ids = progress.check_cancel().and_then(|()| encode_chunk(c, corpus, tokenizer, opts.strict_utf8, &buffers));
                    (c, ids)
                })
                .collect();
            if send.send(encoded).is_err() {
                break; // the writer stopped on an error, which it returns
            }
        }
        drop(send);
        writer.join().expect("the shard writer does not panic").and(planned)
    })?;
    if manifest.complete {
        Ok(())
    } else {
        progress.check_cancel()
    }
}

/// Append encoded batches to shards in order, closing each shard (and rewriting the manifest)
/// when it covers `shard_bytes` of input. An unfinished shard is deleted on the way out.
#[allow(clippy::too_many_arguments)]
fn write_shards(
    opts: &TokenizeOptions,
    corpus: &Corpus,
    tokenizer: &Tokenizer,
    manifest: &mut Manifest,
    progress: &Progress,
    batches: std::sync::mpsc::Receiver<Encoded>,
    mut pos: u64,
    buffers: &IdBuffers,
) -> Result<()> {
    let out = opts.out.as_path();
    let dtype = Dtype::for_vocab(tokenizer.vocab_size);
    let mut writer: Option<ShardWriter> = None;
    let mut shard_replaced = 0u64;
    let result = (|| -> Result<()> {
        for batch in batches {
            for (c, res) in batch {
                let (ids, replaced) = res?;
                let chunk_end = corpus.files[c.file].start + c.end as u64;
                if writer.is_none() {
                    let path = out.join(shard_name(manifest.shards.len()));
                    writer = Some(ShardWriter::create(path, dtype, tokenizer.hash, pos)?);
                    shard_replaced = 0;
                }
                let w = writer.as_mut().unwrap();
                w.append(&ids, chunk_end)?;
                let n_ids = ids.len() as u64;
                buffers.give(ids);
                shard_replaced += replaced;
                pos = chunk_end;
                progress.done.store(pos, Relaxed);
                progress.tokens.fetch_add(n_ids, Relaxed);
                progress.replaced_bytes.fetch_add(replaced, Relaxed);
                if chunk_end - w.input_start() >= opts.shard_bytes || chunk_end == corpus.total {
                    let file = shard_name(manifest.shards.len());
                    let header = writer.take().unwrap().finish()?;
                    manifest.shards.push(ShardEntry {
                        file,
                        input_start: header.input_start,
                        input_end: header.input_end,
                        tokens: header.count,
                        checksum: hex(header.checksum),
                        replaced_bytes: shard_replaced,
                    });
                    manifest.tokens += header.count;
                    manifest.replaced_bytes += shard_replaced;
                    manifest.complete = chunk_end == corpus.total;
                    manifest.write(out)?;
                }
            }
        }
        Ok(())
    })();
    if let Some(w) = writer {
        w.abandon();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_files_that_cannot_fit_are_refused_with_a_size_that_would() {
        let path = Path::new("big.txt");
        assert!(check_whole_files_fit(path, 10_000_000, 2, Some(4_000_000_000)).is_ok());
        assert!(check_whole_files_fit(path, 10_000_000, 2, None).is_ok());
        let message = check_whole_files_fit(path, 100_000_000, 2, Some(8_000_000_000)).unwrap_err().to_string();
        for part in ["big.txt: this tokenizer cannot cut", "2 at a time", "100 MB", "about 34000 MB", "at most 18 MB", "--threads 1"] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
    }

    #[test]
    fn training_that_cannot_fit_is_refused_with_a_sample_that_would() {
        assert!(check_training_fits(5 << 30, Some(6 << 30), 1 << 30, 1000).is_ok());
        assert!(check_training_fits(5 << 30, None, 1 << 30, 1000).is_ok(), "unknown memory: go ahead");
        assert!(check_training_fits(5 << 30, Some(5 << 30), 1 << 30, 1000).is_err(), "no margin left");
        // 1 GB of Chinese: about 15 GB to train on, 8 GB available.
        let err = check_training_fits(12_500_000_000, Some(8_000_000_000), 1_000_000_000, 36_000_000).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::Input(_)));
        for part in ["1000 MB, 36000000 distinct words", "about 15 GB", "8000 MB is available", "--sample-bytes 426MB or less"] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
    }
}
