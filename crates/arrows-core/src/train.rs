//! Byte-level BPE training from pre-token counts.
//!
//! The corpus is first reduced to `WordCounts`: each distinct pre-token (a "word": the GPT-2
//! pre-tokenizer's pieces, as bytes) with how often it occurs. Training then only ever looks at
//! distinct words, so its cost depends on the size of the vocabulary of the text, not on its length.
//!
//! `train_bpe` is the standard incremental algorithm (the one of the `tokenizers` library):
//!
//! - every word is a list of symbol ids, starting as its bytes;
//! - a table maps each adjacent pair of symbols to its count (summed over words, weighted by the
//!   word's count) and to the list of words it occurs in;
//! - a max-heap of (count, pair) gives the most frequent pair; entries are not updated when a count
//!   drops, instead a popped entry is checked against the table and pushed back with its current
//!   count if it was stale ("lazy invalidation");
//! - a merge rewrites only the words that contain the pair and adjusts the counts of the pairs
//!   around each occurrence.
//!
//! Compared with the `tokenizers` trainer:
//! - the merges are the same, merge for merge (tested here, and checked on 150 MB with 50k merges):
//!   ties between pairs of equal count go to the pair with the lowest ids when the 256 bytes are
//!   numbered in the order of their byte-level characters (`bytelevel::byte_to_char`), which is how
//!   `tokenizers` numbers its initial alphabet;
//! - counts are 64-bit (theirs are i32 and wrap on corpora of a few GB);
//! - memory is several times smaller: words are one flat `u32` buffer (4 bytes a symbol, not 32),
//!   each pair keeps a plain sorted `Vec` of word indices instead of a hash set, and pairs too rare
//!   to ever reach `min_frequency` are dropped;
//! - a guard differs: a pair whose merged bytes already are a token (another split of the same
//!   string) is skipped, where `tokenizers` would record a second merge for the old token, since
//!   our layout has exactly one new token per merge. (A random search over 200k small corpora never
//!   hit this case.)

use crate::bytelevel;
use crate::error::{Error, Result};
use crate::vocab::ByteBpe;
use rayon::prelude::*;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

// -----------------------------------------------------------------------------------------------
// A fast hasher for the two big tables (pre-tokens, symbol pairs): FxHash from the rustc-hash
// crate, several times faster than SipHash on short keys; no DoS concern for a training sample.
type FxBuild = rustc_hash::FxBuildHasher;

// -----------------------------------------------------------------------------------------------
// Word counts.

/// How often each distinct pre-token occurs, with 64-bit counts.
///
/// Count pieces of the corpus in parallel (one `WordCounts` per rayon task) and `merge` them.
#[derive(Default, Clone, Debug)]
pub struct WordCounts {
    counts: HashMap<Box<[u8]>, u64, FxBuild>,
    total: u64,
}

impl WordCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one occurrence of `word`.
    pub fn add_word(&mut self, word: &[u8]) {
        self.add_word_count(word, 1);
    }

    /// Count `count` occurrences of `word` at once.
    pub fn add_word_count(&mut self, word: &[u8], count: u64) {
        if count == 0 {
            return;
        }
        // Look up by slice first: allocate the key only for a word not seen before.
        match self.counts.get_mut(word) {
            Some(c) => *c += count,
            None => {
                self.counts.insert(word.into(), count);
            }
        }
        self.total += count;
    }

    /// Pre-tokenize `text` (the GPT-2 pattern) and count every pre-token. The caller removes
    /// `<|endoftext|>` first: it is a special token, never part of a word.
    pub fn add_text(&mut self, text: &str) {
        crate::pretokenize::for_each_pretoken(text, |w| self.add_word(w.as_bytes()));
    }

    /// Add the counts of `other` to these.
    pub fn merge(&mut self, mut other: WordCounts) {
        // Insert the smaller table into the larger one.
        if other.counts.len() > self.counts.len() {
            std::mem::swap(self, &mut other);
        }
        self.counts.reserve(other.counts.len());
        for (word, count) in other.counts {
            *self.counts.entry(word).or_insert(0) += count;
        }
        self.total += other.total;
    }

    /// Number of distinct words.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Number of words counted (with repetition).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The count of one word (0 if never seen).
    pub fn get(&self, word: &[u8]) -> u64 {
        self.counts.get(word).copied().unwrap_or(0)
    }

    /// The distinct words and their counts, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.counts.iter().map(|(w, &c)| (&w[..], c))
    }
}

/// Whether a BPE trained by `train_bpe` with `vocab_size` ids could learn the token written
/// `token` in tokenizer.json (the byte-level alphabet). Known before training, so that a `--bos`
/// that no training can produce is refused at once, not after minutes of training.
///
/// A learned token is two bytes or more of one pre-token: merges never cross a pre-token's end.
/// Alone, such a piece is one pre-token again (a run of one class, with perhaps its leading space;
/// whitespace; a contraction), except the starts of the contractions `'re`, `'ve`, `'ll`, which
/// the pre-tokenizer splits when alone. Bytes that are not UTF-8 (part of a character) are not
/// judged: they may be learned.
pub fn could_learn(token: &str, vocab_size: usize) -> bool {
    let Some(bytes) = bytelevel::decode(token) else { return false };
    if bytes.len() < 2 || vocab_size <= 257 {
        return false; // the bytes themselves are ids 1..=256; there are no merges
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => crate::pretokenize::pretokens(text).len() == 1 || matches!(text, "'r" | "'v" | "'l"),
        Err(_) => true,
    }
}

// -----------------------------------------------------------------------------------------------
// Training.

/// Learn byte-level BPE merges from `counts` until the vocabulary has `vocab_size` tokens
/// (`<|endoftext|>` + 256 bytes + one token per merge), or until no pair of adjacent symbols occurs
/// at least `min_frequency` times (the vocabulary is then smaller).
///
/// `progress(merges_done, merges_wanted)` is called every few hundred merges and at the end.
/// Setting `cancel` makes it return `Error::Cancelled` within one merge.
pub fn train_bpe(
    counts: &WordCounts,
    vocab_size: usize,
    min_frequency: u64,
    progress: &dyn Fn(usize, usize),
    cancel: &AtomicBool,
) -> Result<ByteBpe> {
    let base = ByteBpe::bytes_only().vocab_size();
    if vocab_size < base {
        return Err(Error::Input(format!(
            "vocabulary size {vocab_size} is too small: a byte-level vocabulary needs at least {base} tokens \
             (the 256 bytes and <|endoftext|>)"
        )));
    }
    if vocab_size > u32::MAX as usize {
        return Err(Error::Input(format!("vocabulary size {vocab_size} is too large: token ids are 32-bit")));
    }
    let wanted = vocab_size - base;
    progress(0, wanted);
    let mut t = Trainer::new(counts, min_frequency)?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    while t.merges.len() < wanted {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if !t.step() {
            break;
        }
        // After every merge: a report is one atomic store, and the first merges on text without
        // spaces (Chinese) take up to 0.1 s each (every 256 merges left the bar at 0% for half a
        // minute).
        progress(t.merges.len(), wanted);
    }
    progress(t.merges.len(), wanted);
    Ok(t.into_bpe())
}

/// About how much memory `train_bpe` takes on `counts`, beyond the counts themselves: 4 bytes a
/// symbol for the words, about 8 more for the pairs' word lists as merges create pairs, and each
/// word's entry. Fitted on Chinese text (samples of 40 and 200 MB: 11 and 12.5 bytes per byte of
/// the distinct words measured, the most a real text asks for per byte), where nearly every clause
/// is a distinct word; English text, whose distinct words level off, needs little (the 200 MB
/// benchmark corpus: under 70 MB for the whole job).
pub fn training_memory_bytes(counts: &WordCounts) -> u64 {
    let (symbols, words) = counts.iter().filter(|(w, _)| w.len() > 1).fold((0u64, 0u64), |(s, n), (w, _)| (s + w.len() as u64, n + 1));
    12 * symbols + 32 * words
}

/// A pair of symbol ids packed into one key: left id in the high half. Comparing keys compares
/// (left, right) lexicographically, which is the tie-break order.
type PairKey = u64;

fn key(a: u32, b: u32) -> PairKey {
    ((a as u64) << 32) | b as u64
}

fn unkey(k: PairKey) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

type PairTable = HashMap<PairKey, PairStat, FxBuild>;

#[derive(Default)]
struct PairStat {
    /// Occurrences, weighted by word counts.
    count: u64,
    /// Indices of the words it occurs in: sorted, no duplicates, but possibly stale (a word may
    /// have lost the pair to another merge since; merging it there is then a no-op).
    words: Vec<u32>,
}

/// One distinct word: where its symbols are, how many, how often it occurs. Kept together: a merge
/// visits words in scattered places, and one cache miss per word beats three.
struct WordInfo {
    start: usize,
    count: u64,
    len: u32,
}

/// The training state. Symbol ids here are internal: bytes in byte-level character order
/// (`byte_of[i]` is the byte of id i < 256), then 256 + k for the token of merge k.
struct Trainer {
    /// All words' symbols back to back; word w is `syms[words[w].start..][..words[w].len]`. A
    /// merge shortens a word in place.
    syms: Vec<u32>,
    words: Vec<WordInfo>,
    pairs: PairTable,
    /// Max-heap on (count, lowest pair key); entries may be stale, see `best_pair`.
    heap: BinaryHeap<(u64, Reverse<PairKey>)>,
    /// Internal id -> bytes (for the merged tokens only; ids < 256 are `byte_of`).
    merged: Vec<Vec<u8>>,
    /// The bytes of every merged token, to refuse a second token with the same bytes.
    known: HashSet<Vec<u8>>,
    merges: Vec<(u32, u32)>,
    byte_of: [u8; 256],
    /// `min_frequency`, at least 1. A pair below it can never be merged: counts only grow in the
    /// merge that creates a pair, so such a pair is dropped from the table (and the heap).
    min_count: u64,
}

/// The `tokenizers` trainer numbers the 256 bytes by sorting their byte-level characters; doing the
/// same makes "lowest ids first" pick the same pair on ties, so both learn identical merges.
fn byte_order() -> ([u32; 256], [u8; 256]) {
    let mut bytes: Vec<u8> = (0..=255).collect();
    bytes.sort_by_key(|&b| bytelevel::byte_to_char(b));
    let mut id_of = [0u32; 256];
    let mut byte_of = [0u8; 256];
    for (i, &b) in bytes.iter().enumerate() {
        id_of[b as usize] = i as u32;
        byte_of[i] = b;
    }
    (id_of, byte_of)
}

impl Trainer {
    fn new(counts: &WordCounts, min_frequency: u64) -> Result<Self> {
        let (id_of, byte_of) = byte_order();

        // Words of one byte have no pair: they can never take part in a merge.
        let mut n_syms = 0;
        let mut n_words = 0;
        for (w, _) in counts.iter().filter(|(w, _)| w.len() > 1) {
            n_syms += w.len();
            n_words += 1;
        }
        if n_words > u32::MAX as usize {
            return Err(Error::Input(format!("{n_words} distinct words is too many to train on; use a smaller sample")));
        }
        let mut syms = Vec::with_capacity(n_syms);
        let mut words = Vec::with_capacity(n_words);
        for (w, c) in counts.iter().filter(|(w, _)| w.len() > 1) {
            words.push(WordInfo { start: syms.len(), count: c, len: w.len() as u32 });
            syms.extend(w.iter().map(|&b| id_of[b as usize]));
        }

        let mut t = Trainer {
            syms,
            words,
            pairs: HashMap::default(),
            heap: BinaryHeap::new(),
            merged: Vec::new(),
            known: HashSet::new(),
            merges: Vec::new(),
            byte_of,
            min_count: min_frequency.max(1),
        };
        t.count_pairs();
        Ok(t)
    }

    /// The initial pair table. All symbols are still bytes, so there are at most 65536 pairs:
    /// plain arrays indexed by (a << 8 | b) instead of hash tables. Counts are summed in parallel
    /// over ranges of words; then the word lists are filled in one pass, allocated to their exact
    /// size, and only for the pairs frequent enough to ever be merged.
    fn count_pairs(&mut self) {
        const N: usize = 1 << 16;
        let n = self.words.len();
        let chunk = (n / (4 * rayon::current_num_threads().max(1))).max(4096);
        let this = &*self;
        let (count, n_words) = (0..n.div_ceil(chunk))
            .into_par_iter()
            .map(|i| {
                let (mut count, mut n_words, mut last) = (vec![0u64; N], vec![0u32; N], vec![u32::MAX; N]);
                for w in i * chunk..((i + 1) * chunk).min(n) {
                    let c = this.words[w].count;
                    for p in this.word(w).windows(2) {
                        let pi = ((p[0] << 8) | p[1]) as usize;
                        count[pi] += c;
                        if last[pi] != w as u32 {
                            last[pi] = w as u32;
                            n_words[pi] += 1;
                        }
                    }
                }
                (count, n_words)
            })
            .reduce(
                || (vec![0u64; N], vec![0u32; N]),
                |(mut c1, mut n1), (c2, n2)| {
                    c1.iter_mut().zip(c2).for_each(|(a, b)| *a += b);
                    n1.iter_mut().zip(n2).for_each(|(a, b)| *a += b);
                    (c1, n1)
                },
            );

        let frequent = |i: usize| count[i] >= self.min_count;
        let mut lists: Vec<Vec<u32>> = (0..N).map(|i| if frequent(i) { Vec::with_capacity(n_words[i] as usize) } else { Vec::new() }).collect();
        for w in 0..n {
            for p in self.word(w).windows(2) {
                let pi = ((p[0] << 8) | p[1]) as usize;
                if frequent(pi) && lists[pi].last() != Some(&(w as u32)) {
                    lists[pi].push(w as u32);
                }
            }
        }
        self.pairs = lists
            .into_iter()
            .enumerate()
            .filter(|&(i, _)| frequent(i))
            .map(|(i, words)| (key(i as u32 >> 8, i as u32 & 255), PairStat { count: count[i], words }))
            .collect();
        self.heap = self.pairs.iter().map(|(&k, s)| (s.count, Reverse(k))).collect();
    }

    fn word(&self, w: usize) -> &[u32] {
        let info = &self.words[w];
        &self.syms[info.start..info.start + info.len as usize]
    }

    fn bytes_of(&self, id: u32) -> &[u8] {
        if id < 256 {
            std::slice::from_ref(&self.byte_of[id as usize])
        } else {
            &self.merged[id as usize - 256]
        }
    }

    /// The most frequent pair (lowest key on ties), if one has at least `min_count` occurrences.
    fn best_pair(&mut self) -> Option<PairKey> {
        while let Some((c, Reverse(k))) = self.heap.pop() {
            // A pair's count only grows in the merge that creates it, then only shrinks: an entry
            // is never below the current count, so the first up-to-date entry is the true max.
            let now = self.pairs.get(&k).map_or(0, |s| s.count);
            if now != c {
                if now > 0 {
                    self.heap.push((now, Reverse(k)));
                }
                continue;
            }
            // (The table only holds frequent enough pairs, so this holds; kept as a guard.)
            return (c >= self.min_count).then_some(k);
        }
        None
    }

    /// Do one merge. False when no pair is frequent enough.
    fn step(&mut self) -> bool {
        loop {
            let Some(k) = self.best_pair() else { return false };
            let (a, b) = unkey(k);
            let mut bytes = self.bytes_of(a).to_vec();
            bytes.extend_from_slice(self.bytes_of(b));
            if self.known.contains(&bytes) {
                // Same bytes as an earlier token by another split: never merge this pair. Its heap
                // entry is gone and, being an old pair, it is never pushed again.
                continue;
            }
            self.known.insert(bytes.clone());
            self.merged.push(bytes);
            self.merges.push((a, b));
            self.apply(k, 255 + self.merges.len() as u32);
            return true;
        }
    }

    /// Replace pair `k` by the new symbol `n` in every word that has it, updating the pair table.
    fn apply(&mut self, k: PairKey, n: u32) {
        let (a, b) = unkey(k);
        // The merged pair leaves the table for good: nothing can form it again (new adjacencies
        // all involve `n`).
        let stat = self.pairs.remove(&k).expect("the best pair is in the table");
        let pairs = &mut self.pairs;
        let mut fresh: Vec<PairKey> = Vec::new();

        let min_count = self.min_count;
        // Count changes. `dec` ignores the merged pair itself (removed above), which shows up as a
        // neighbour in runs like "aaa", and pairs already dropped for being too rare. An old pair
        // falling below `min_count` is dropped; a new one (it contains `n`) may still grow during
        // this merge: it is judged at the end.
        let dec = |pairs: &mut PairTable, p: PairKey, c: u64| {
            if let Some(s) = pairs.get_mut(&p).filter(|_| p != k) {
                s.count -= c;
                let (x, y) = unkey(p);
                if s.count < min_count && x != n && y != n {
                    pairs.remove(&p);
                }
            }
        };
        let inc = |pairs: &mut PairTable, fresh: &mut Vec<PairKey>, p: PairKey, c: u64, w: u32| {
            let s = pairs.entry(p).or_insert_with(|| {
                fresh.push(p);
                PairStat::default()
            });
            s.count += c;
            if s.words.last() != Some(&w) {
                s.words.push(w); // words are visited in increasing order: the list stays sorted
            }
        };

        for &w in &stat.words {
            let info = &mut self.words[w as usize];
            let c = info.count;
            let word = &mut self.syms[info.start..info.start + info.len as usize];
            // Rewrite the word in place, left to right: `i` reads, `j` writes (j <= i).
            let (mut i, mut j) = (0, 0);
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    if j > 0 {
                        // The left neighbour is already rewritten: it is `n` when two
                        // occurrences touch ("abab"), which the +/- below handle correctly.
                        let x = word[j - 1];
                        dec(pairs, key(x, a), c);
                        inc(pairs, &mut fresh, key(x, n), c, w);
                    }
                    if i + 2 < word.len() {
                        let y = word[i + 2];
                        dec(pairs, key(b, y), c);
                        inc(pairs, &mut fresh, key(n, y), c, w);
                    }
                    word[j] = n;
                    i += 2;
                } else {
                    word[j] = word[i];
                    i += 1;
                }
                j += 1;
            }
            info.len = j as u32;
        }

        // Every pair that gained occurrences is new (it contains `n`): one heap entry each, or
        // out of the table if too rare to be merged ever.
        fresh.sort_unstable();
        fresh.dedup();
        for p in fresh {
            match pairs.get(&p).map(|s| s.count) {
                Some(c) if c >= min_count => self.heap.push((c, Reverse(p))),
                Some(_) => {
                    pairs.remove(&p);
                }
                None => {}
            }
        }
        // The entries of pairs that left the table stay in the heap until popped, and most never
        // are: rebuild the heap from the table when they outnumber the live pairs (amortized, this
        // costs little), so that it does not grow with every merge.
        if self.heap.len() > 2 * self.pairs.len() + 4096 {
            self.heap = self.pairs.iter().map(|(&p, s)| (s.count, Reverse(p))).collect();
        }
    }

    /// The internal id of a symbol -> its id in the arrows layout (0 = `<|endoftext|>`, byte b =
    /// b + 1, merge k = 257 + k).
    fn public_id(&self, id: u32) -> u32 {
        if id < 256 {
            self.byte_of[id as usize] as u32 + 1
        } else {
            id + 1
        }
    }

    fn into_bpe(self) -> ByteBpe {
        let merges = self.merges.iter().map(|&(a, b)| (self.public_id(a), self.public_id(b))).collect();
        ByteBpe::from_merges(merges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn never() -> AtomicBool {
        AtomicBool::new(false)
    }

    fn train(counts: &WordCounts, vocab_size: usize, min_frequency: u64) -> ByteBpe {
        train_bpe(counts, vocab_size, min_frequency, &|_, _| {}, &never()).unwrap()
    }

    fn counts_of(words: &[(&str, u64)]) -> WordCounts {
        let mut wc = WordCounts::new();
        for &(w, c) in words {
            wc.add_word_count(w.as_bytes(), c);
        }
        wc
    }

    /// The merged tokens' bytes, as strings, in rank order.
    fn merged_tokens(bpe: &ByteBpe) -> Vec<String> {
        bpe.tokens[257..].iter().map(|t| String::from_utf8_lossy(t).into_owned()).collect()
    }

    /// ~200 KB of varied text, the same every run: a few real lines (English, French, numbers,
    /// punctuation, runs of blanks, emoji, CJK) between sentences of made-up words drawn from a
    /// lexicon of a few thousand, with a skewed (Zipf-like) frequency, like real text.
    fn corpus() -> String {
        let lines = [
            "The quick brown fox jumps over the lazy dog. It's 1999 and we'll see; they've gone!",
            "Le renard brun rapide saute par-dessus le chien paresseux. L'été était très chaud, n'est-ce pas ?",
            "La configuration du système se fait dans /etc ; les journaux sont dans /var/log.   ",
            "\tIndented line with tabs\tand  double  spaces, plus numbers 3.14159 and 2,718.",
            "\"Quoted\" words -- dashes -- and émojis 🎉🎉 and 中文字符 and ÀÉÎÕÜ.",
        ];
        let syllables = [
            "ka", "to", "re", "mi", "sa", "lu", "ne", "po", "di", "an", "er", "in", "ou", "é", "è", "ch", "st", "th",
            "qu", "ion", "ment", "ing", "ed", "s", "x", "über", "ñ", "ß", "12", "7",
        ];
        let mut x: u64 = 12345;
        let mut next = |m: usize| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as usize % m
        };
        let lexicon: Vec<String> = (0..4000).map(|_| (0..1 + next(4)).map(|_| syllables[next(syllables.len())]).collect()).collect();
        let mut out = String::new();
        while out.len() < 200_000 {
            if next(10) == 0 {
                out.push_str(lines[next(lines.len())]);
                out.push('\n');
                continue;
            }
            for i in 0..3 + next(12) {
                // Zipf-like: low indices far more often.
                let r = next(1 << 20) as f64 / (1 << 20) as f64;
                let w = &lexicon[(r.powi(3) * lexicon.len() as f64) as usize];
                if i == 0 {
                    let mut c = w.chars();
                    out.extend(c.next().map(|f| f.to_uppercase().collect::<String>()));
                    out.push_str(c.as_str());
                } else {
                    out.push(' ');
                    out.push_str(w);
                }
                if next(7) == 0 {
                    out.push(',');
                }
            }
            out.push_str([". ", ".\n", "! ", "?\n\n", "; "][next(5)]);
        }
        out
    }

    /// Encode `word` with `bpe`'s merges the textbook way: repeatedly merge (all occurrences, left
    /// to right) the adjacent pair of lowest rank.
    fn reference_encode(bpe: &ByteBpe, word: &[u8]) -> Vec<u32> {
        let rank: HashMap<(u32, u32), usize> = bpe.merges.iter().enumerate().map(|(r, &p)| (p, r)).collect();
        let mut s: Vec<u32> = word.iter().map(|&b| b as u32 + 1).collect();
        loop {
            let best = s.windows(2).filter_map(|p| rank.get(&(p[0], p[1])).copied()).min();
            let Some(r) = best else { return s };
            let (a, b) = bpe.merges[r];
            let mut out = Vec::with_capacity(s.len());
            let mut i = 0;
            while i < s.len() {
                if i + 1 < s.len() && s[i] == a && s[i + 1] == b {
                    out.push(257 + r as u32);
                    i += 2;
                } else {
                    out.push(s[i]);
                    i += 1;
                }
            }
            s = out;
        }
    }

    #[test]
    fn textbook_examples() {
        // The Hugging Face course example: "ug" (20), then "un" (16), then "hug" (15).
        let wc = counts_of(&[("hug", 10), ("pug", 5), ("pun", 12), ("bun", 4), ("hugs", 5)]);
        let bpe = train(&wc, 260, 0);
        assert_eq!(merged_tokens(&bpe), ["ug", "un", "hug"]);
        let id = |c: u8| c as u32 + 1;
        assert_eq!(bpe.merges, [(id(b'u'), id(b'g')), (id(b'u'), id(b'n')), (id(b'h'), 257)]);

        // Wikipedia's "aaabdaaabac": aa (4, overlapping), then ab and aaa tie at 2 and the lower
        // ids win ("a" < "aa"), then aa+ab; nothing else occurs twice.
        let wc = counts_of(&[("aaabdaaabac", 1)]);
        let bpe = train(&wc, 1000, 2);
        assert_eq!(merged_tokens(&bpe), ["aa", "ab", "aaab"]);
        assert_eq!(bpe.vocab_size(), 260);
    }

    #[test]
    fn overlapping_and_repeated_pairs() {
                let wc = counts_of(&[("aaaa", 3), ("abab", 2), ("aaa", 1)]);
        let bpe = train(&wc, 1000, 1);
        // aa 11 (overlapping), then ab 4 beats aa+aa 3 (b a went with ab), then aa+aa, ab+ab, aa+a.
        assert_eq!(merged_tokens(&bpe), ["aa", "ab", "aaaa", "abab", "aaa"]);
        for w in ["aaaa", "abab", "aaa"] {
            assert_eq!(reference_encode(&bpe, w.as_bytes()).len(), 1, "{w}");
        }
    }

    /// Train `merges` merges with the internal trainer; also return every word (of 2 bytes or more)
    /// with its final segmentation, in public ids.
    /// Each word's bytes, and its final segmentation.
    type Segmented = Vec<(Vec<u8>, Vec<u32>)>;

    fn train_and_segment(wc: &WordCounts, merges: usize, min_frequency: u64) -> (ByteBpe, Segmented) {
        let mut t = Trainer::new(wc, min_frequency).unwrap();
        while t.merges.len() < merges && t.step() {}
        let bpe = ByteBpe::from_merges(t.merges.iter().map(|&(a, b)| (t.public_id(a), t.public_id(b))).collect());
        let words = (0..t.words.len())
            .map(|w| {
                let seg: Vec<u32> = t.word(w).iter().map(|&s| t.public_id(s)).collect();
                let bytes = seg.iter().flat_map(|&id| bpe.tokens[id as usize].clone()).collect();
                (bytes, seg)
            })
            .collect();
        (bpe, words)
    }

    #[test]
    fn merges_reproduce_the_trainers_segmentation() {
        let mut wc = WordCounts::new();
        wc.add_text(&corpus());
        let (bpe, words) = train_and_segment(&wc, 600, 1);
        assert_eq!(bpe.merges.len(), 600);
        assert_eq!(words.len(), wc.iter().filter(|(w, _)| w.len() > 1).count());
        for (bytes, seg) in &words {
            assert!(wc.get(bytes) > 0);
            assert_eq!(&reference_encode(&bpe, bytes), seg, "{:?}", String::from_utf8_lossy(bytes));
        }
        let fully_merged = words.iter().filter(|(_, seg)| seg.len() == 1).count();
        assert!(fully_merged > 100, "only {fully_merged} words became single tokens");
    }

    #[test]
    fn deterministic_whatever_the_insertion_order() {
        let text = corpus();
        let mut forward = WordCounts::new();
        forward.add_text(&text);
        let mut words: Vec<(Vec<u8>, u64)> = forward.iter().map(|(w, c)| (w.to_vec(), c)).collect();
        words.sort();
        let mut sorted = WordCounts::new();
        for (w, c) in &words {
            sorted.add_word_count(w, *c);
        }
        // Reversed and split in two halves merged, as per-thread counts would be.
        let (mut left, mut right) = (WordCounts::new(), WordCounts::new());
        for (i, (w, c)) in words.iter().rev().enumerate() {
            if i % 3 == 0 { &mut left } else { &mut right }.add_word_count(w, *c);
        }
        left.merge(right);
        assert_eq!(left.len(), forward.len());
        assert_eq!(left.total(), forward.total());

        let a = train(&forward, 2000, 2);
        assert_eq!(a, train(&sorted, 2000, 2));
        assert_eq!(a, train(&left, 2000, 2));
        // And with another number of threads for the parallel pair counting.
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(a, one.install(|| train(&left, 2000, 2)));
    }

    #[test]
    fn counts_beyond_32_bits() {
        // Truncated to 32 bits these counts would order ef > cd > ab.
        let wc = counts_of(&[("ab", 1 << 33), ("cd", u32::MAX as u64 + 7), ("ef", 1000)]);
        assert_eq!(wc.total(), (1 << 33) + u32::MAX as u64 + 7 + 1000);
        assert_eq!(merged_tokens(&train(&wc, 1000, 2)), ["ab", "cd", "ef"]);
        let mut more = counts_of(&[("ab", u64::MAX / 4)]);
        more.merge(wc);
        assert_eq!(more.get(b"ab"), u64::MAX / 4 + (1 << 33));
        assert_eq!(merged_tokens(&train(&more, 1000, 2)), ["ab", "cd", "ef"]);
    }

    #[test]
    fn stopping_rules_and_errors() {
        let wc = counts_of(&[("hug", 10), ("pug", 5), ("pun", 12), ("bun", 4), ("hugs", 5)]);
        // min_frequency: ug 20, un 16, hug 15, then "pug"/"hugs" pieces at 5 and bu at 4.
        assert_eq!(merged_tokens(&train(&wc, 1000, 15)), ["ug", "un", "hug"]);
        assert_eq!(merged_tokens(&train(&wc, 1000, 16)), ["ug", "un"]);
        assert_eq!(train(&wc, 1000, 1000).vocab_size(), 257);
        // Everything merged: each word becomes one token. pug and hugs tie at 5: p is a byte, a
        // lower id than the token hug.
        assert_eq!(merged_tokens(&train(&wc, 1000, 0)), ["ug", "un", "hug", "pun", "pug", "hugs", "bun"]);
        assert_eq!(train(&wc, 257, 1), ByteBpe::bytes_only());
        assert_eq!(train(&WordCounts::new(), 50257, 2), ByteBpe::bytes_only());

        let err = train_bpe(&wc, 256, 1, &|_, _| {}, &never()).unwrap_err();
        assert!(matches!(err, Error::Input(_)) && err.to_string().contains("257"), "{err}");

        let stop = AtomicBool::new(true);
        assert!(matches!(train_bpe(&wc, 1000, 1, &|_, _| {}, &stop), Err(Error::Cancelled)));
        // Cancelled from the progress callback, mid-way through a long training.
        let mut big = WordCounts::new();
        big.add_text(&corpus());
        let stop = AtomicBool::new(false);
        let calls = std::cell::Cell::new(0);
        let progress = |done: usize, wanted: usize| {
            assert_eq!(wanted, 5000 - 257);
            calls.set(calls.get() + 1);
            if done >= 2 {
                stop.store(true, Ordering::Relaxed);
            }
        };
        assert!(matches!(train_bpe(&big, 5000, 1, &progress, &stop), Err(Error::Cancelled)));
        assert_eq!(calls.get(), 3); // 0, 1, 2
    }

    #[test]
    fn tokenizer_json_loads_in_tokenizers_and_encodes_alike() {
        // Words that any GPT-2 pre-tokenizer keeps whole (` ?\p{L}+`), so that `tokenizers`
        // encodes each as one pre-token, whatever `crate::pretokenize` does with the full text.
        let mut wc = WordCounts::new();
        for w in corpus().split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()) {
            wc.add_word(w.as_bytes());
            wc.add_word(format!(" {w}").as_bytes());
        }
        let (bpe, words) = train_and_segment(&wc, 1500, 2);
        assert_eq!(bpe.merges.len(), 1500);
        let hf = tokenizers::Tokenizer::from_str(&bpe.to_json()).unwrap();
        for (bytes, seg) in &words {
            let theirs = hf.encode(std::str::from_utf8(bytes).unwrap(), false).unwrap();
            assert_eq!(theirs.get_ids(), seg, "{:?}", String::from_utf8_lossy(bytes));
        }
        let fully_merged = words.iter().filter(|(_, seg)| seg.len() == 1).count();
        assert!(fully_merged > 200, "only {fully_merged} words became single tokens");
        // train_bpe's result is the same vocabulary.
        assert_eq!(train(&wc, 257 + 1500, 2), bpe);
    }

    #[test]
    fn same_merges_as_the_tokenizers_trainer() {
        use tokenizers::models::bpe::{BpeTrainer, BPE};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::Trainer as _;

        let text = corpus();
        let mut wc = WordCounts::new();
        wc.add_text(&text);
        let bpe = train(&wc, 3000, 2);

        // The same words, written in the byte-level alphabet, counted by `tokenizers` itself.
        // Their vocabulary has no <|endoftext|>: one token fewer for the same number of merges.
        let mut trainer = BpeTrainer::builder()
            .vocab_size(3000 - 1)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let occurrences = wc.iter().flat_map(|(w, c)| std::iter::repeat_n(bytelevel::encode(w), c as usize));
        trainer.feed(occurrences, |w| Ok(vec![w.to_owned()])).unwrap();
        let mut model = BPE::default();
        trainer.train(&mut model).unwrap();
        let json = serde_json::to_value(&model).unwrap();
        let theirs: Vec<(String, String)> = serde_json::from_value(json["merges"].clone()).unwrap();
        let ours: Vec<(String, String)> = bpe
            .merges
            .iter()
            .map(|&(a, b)| (bytelevel::encode(&bpe.tokens[a as usize]), bytelevel::encode(&bpe.tokens[b as usize])))
            .collect();
        assert!(ours.len() > 1000, "only {} merges", ours.len());
        assert_eq!(ours, theirs);
    }

    #[test]
    fn could_learn_every_token_training_learns_and_not_what_it_cannot() {
        // Sound: every merged token of a real training is said to be learnable (contractions,
        // `'ll` included, in the text below).
        let mut counts = WordCounts::new();
        counts.add_text(&corpus());
        counts.add_text(&"you'll we're they've it's I'd don't ".repeat(50));
        let bpe = train(&counts, 3000, 2);
        let learned: Vec<String> = bpe.tokens[257..].iter().map(|t| bytelevel::encode(t)).collect();
        assert!(learned.len() > 1000 && learned.iter().any(|t| t == "'l" || t == "'ll"));
        for t in &learned {
            assert!(could_learn(t, 3000), "{t:?} was learned");
        }
        for t in ["Ġthe", "the", "'l", "'re", "ĊĊ", "ĠĠĠ", "Ã©", "Ã§a", "Ġ42", "!!"] {
            assert!(could_learn(t, 50257), "{t:?}");
        }
        // Never a merge: a piece of several pre-tokens, text outside the byte-level alphabet (as
        // tokenizer.json writes a byte), one byte (ids 1..=256, not learned), or no merges at all.
        for t in ["<s>", "[BOS]", "<bos>", "theĠ", "a1", "日本", "a", "Ġ"] {
            assert!(!could_learn(t, 50257), "{t:?}");
        }
        assert!(!could_learn("Ġthe", 257));
    }
}
