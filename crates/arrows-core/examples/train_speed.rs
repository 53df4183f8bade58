//! Time byte-level BPE training on a text file: count pre-tokens in parallel, then `train_bpe`.
//! Compare with the `tokenizers` trainer (`/work/shared/bench/reference_tokenize_anchor.py`),
//! under `/usr/bin/time -v` for the peak memory.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p arrows-core --example train_speed -- CORPUS [VOCAB] [MIN_FREQ] [OUT.json]
//!
//! With `TRAINER=hf`, the same word counts go to the `tokenizers` crate's trainer instead of
//! `train_bpe`: the two trainers compared on identical input (and their merges should be equal:
//! compare the OUT.json files). Its vocabulary has no `<|endoftext|>`, so it gets one token less.

use arrows_core::bytelevel;
use arrows_core::train::{train_bpe, WordCounts};
use rayon::prelude::*;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// Pieces of about `size` bytes, cut after a newline so no word is split (unless a line is
/// longer than a piece). Read as the counting goes: the file is never whole in memory.
fn pieces(path: &str, size: usize) -> impl Iterator<Item = String> + Send {
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path).expect("open corpus"));
    std::iter::from_fn(move || {
        let mut buf = Vec::with_capacity(size + 4096);
        reader.by_ref().take(size as u64).read_to_end(&mut buf).expect("read corpus");
        if buf.is_empty() {
            return None;
        }
        reader.read_until(b'\n', &mut buf).expect("read corpus");
        Some(String::from_utf8_lossy(&buf).into_owned())
    })
}

/// Peak resident memory so far in MB (Linux; 0 elsewhere).
fn peak_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    kb.unwrap_or(0.0) / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: train_speed CORPUS [VOCAB] [MIN_FREQ] [OUT.json]");
    let vocab: usize = args.get(2).map_or(50257, |s| s.parse().unwrap());
    let min_freq: u64 = args.get(3).map_or(2, |s| s.parse().unwrap());
    let size = std::fs::metadata(path).unwrap().len() as f64;

    let t0 = Instant::now();
    let counts = pieces(path, 1 << 20)
        .par_bridge()
        .fold(WordCounts::new, |mut wc, text| {
            wc.add_text(&text);
            wc
        })
        .reduce(WordCounts::new, |mut a, b| {
            a.merge(b);
            a
        });
    let t1 = Instant::now();
    eprintln!("counted: peak {:.0} MB", peak_mb());
    if std::env::var("TRAINER").as_deref() == Ok("hf") {
        return hf_train(counts, vocab, min_freq, size, (t1 - t0).as_secs_f64(), args.get(4));
    }
    let last = std::cell::Cell::new(Instant::now());
    let progress = |done: usize, wanted: usize| {
        if last.get().elapsed().as_secs_f64() > 5.0 {
            eprintln!("  {done}/{wanted} merges");
            last.set(Instant::now());
        }
    };
    let bpe = train_bpe(&counts, vocab, min_freq, &progress, &AtomicBool::new(false)).unwrap();
    let t2 = Instant::now();

    let (count_s, train_s) = ((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
    println!(
        "arrows: bytes={size} threads={} words={} distinct={} count_s={count_s:.2} train_bpe_s={train_s:.2} total_s={:.2} MBps={:.1} vocab={} peak_MB={:.0}",
        rayon::current_num_threads(),
        counts.total(),
        counts.len(),
        count_s + train_s,
        size / 1e6 / (count_s + train_s),
        bpe.vocab_size(),
        peak_mb()
    );
    if let Some(out) = args.get(4) {
        std::fs::write(out, bpe.to_json()).unwrap();
    }
}

/// Train with `tokenizers::models::bpe::BpeTrainer` on the same counts. Only `train` is timed: the
/// hand-over (every occurrence as a string, the way `feed` wants them) is not.
fn hf_train(counts: WordCounts, vocab: usize, min_freq: u64, size: f64, count_s: f64, out: Option<&String>) {
    use tokenizers::models::bpe::{BpeTrainer, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::Trainer;

    let mut trainer = BpeTrainer::builder()
        .vocab_size(vocab - 1)
        .min_frequency(min_freq)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    // Byte-level strings never contain '\0' (byte 0 is written 'Ā'): join words with it, in
    // batches, so that `feed` sees few sequences.
    let words: Vec<(String, u64)> = counts.iter().map(|(w, c)| (bytelevel::encode(w), c)).collect();
    let (distinct, total) = (counts.len(), counts.total());
    drop(counts);
    let batches = words.chunks(1000).map(|chunk| {
        let mut s = String::new();
        for (w, c) in chunk {
            for _ in 0..*c {
                s.push_str(w);
                s.push('\0');
            }
        }
        s
    });
    trainer.feed(batches, |s| Ok(s.split_terminator('\0').map(str::to_owned).collect())).unwrap();
    drop(words);
    let mut model = BPE::default();
    let t1 = Instant::now();
    trainer.train(&mut model).unwrap();
    let train_s = t1.elapsed().as_secs_f64();
    drop(trainer);
    let vocab_out = tokenizers::Model::get_vocab_size(&model);
    println!(
        "tokenizers: bytes={size} threads={} words={total} distinct={distinct} count_s={count_s:.2} train_s={train_s:.2} vocab={} peak_MB={:.0}",
        rayon::current_num_threads(),
        vocab_out + 1,
        peak_mb()
    );
    if let Some(out) = out {
        let mut tok = tokenizers::Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tok.save(out, true).unwrap();
    }
}
