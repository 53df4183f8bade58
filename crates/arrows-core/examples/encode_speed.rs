//! Single-thread speed of the fast encoder.
//!
//! ```text
//! cargo run --release -p arrows-core --example encode_speed -- tokenizer.json text.txt [--check]
//! ```
//!
//! Encodes the whole text three times with a fresh word cache each time and prints MB/s (the first
//! pass, cache cold, is what a real job sees per thread). `--check` also encodes with the
//! `tokenizers` library, prints its speed and checks that the ids are the same.

use arrows_core::bpe::{Encoder, WordCache};
use arrows_core::vocab::ByteBpe;
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: encode_speed TOKENIZER_JSON TEXT [--check]");
        std::process::exit(2);
    }
    let (tok_path, text_path) = (Path::new(&args[0]), Path::new(&args[1]));
    let check = args.iter().any(|a| a == "--check");

    let json = std::fs::read_to_string(tok_path).expect("readable tokenizer.json");
    let bpe = ByteBpe::from_json(&json, tok_path).expect("valid tokenizer.json").expect("a GPT-2 style byte-level BPE");
    let text = String::from_utf8_lossy(&std::fs::read(text_path).expect("readable text")).into_owned();
    let mb = text.len() as f64 / 1e6;

    let started = Instant::now();
    let encoder = Encoder::new(&bpe);
    println!("vocabulary {} tokens, {} merges; encoder built in {:.2?}", bpe.vocab_size(), bpe.merges.len(), started.elapsed());

    let mut ids = Vec::with_capacity(text.len() / 3);
    for pass in 1..=3 {
        ids.clear();
        let mut cache = WordCache::new();
        let started = Instant::now();
        encoder.encode(&text, &mut cache, &mut ids);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "pass {pass}: {mb:.1} MB -> {} tokens ({:.2} bytes/token) in {secs:.3} s: {:.1} MB/s, {} words cached",
            ids.len(),
            text.len() as f64 / ids.len() as f64,
            mb / secs,
            cache.len()
        );
    }

    if check {
        let tok = tokenizers::Tokenizer::from_file(tok_path).expect("tokenizers loads the file");
        let started = Instant::now();
        let theirs = tok.encode(text.as_str(), false).expect("tokenizers encodes");
        let secs = started.elapsed().as_secs_f64();
        println!("tokenizers (whole text, its own threading): {secs:.3} s: {:.1} MB/s", mb / secs);
        if theirs.get_ids() == ids.as_slice() {
            println!("same ids");
        } else {
            let i = theirs.get_ids().iter().zip(&ids).position(|(a, b)| a != b);
            println!("DIFFERENT ids (first difference at {i:?})");
            std::process::exit(1);
        }
    }
}
