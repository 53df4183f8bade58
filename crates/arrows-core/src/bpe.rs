//! The fast encoder for GPT-2 style byte-level BPE vocabularies (`ByteBpe`).
//!
//! It gives exactly the ids of the `tokenizers` library encoding the same text with the same
//! `tokenizer.json`, in three steps:
//! 1. special tokens (`<|endoftext|>`, ...) are cut out of the raw text first, leftmost-longest,
//!    as the library's added vocabulary does;
//! 2. the text between them is cut into pre-tokens (`pretokenize`);
//! 3. each pre-token's bytes become byte tokens, merged again and again at the adjacent pair of
//!    lowest merge rank (leftmost on ties) until no pair merges.
//!
//! Natural text repeats its words, so step 3 is done once per distinct pre-token and remembered
//! in a `WordCache` (one per thread). Most of the time goes into pre-tokenizing and the cache probe.
//! Where pre-tokens rarely repeat (Chinese, whose pre-tokens are whole clauses), it goes into the
//! merge loop, mostly its lookups of pairs in `merges`; a word enters the cache only when met again.

use crate::pretokenize;
use crate::vocab::ByteBpe;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

/// Pre-tokens longer than this are rare: they are merged in O(n log n) (`merge_long`) instead of
/// by the simple O(n²) loop, and not cached (the cache's memory must not depend on the input).
const LONG_WORD: usize = 128;
/// The cache is emptied when it holds this many words (about 20 MB at most).
const MAX_CACHED_WORDS: usize = 1 << 18;
/// Bits of the filter of words seen once (`WordCache::seen`): 128 KB, emptied when a quarter
/// of them are set (then one word in four not seen yet passes for seen, and is cached).
const SEEN_BITS: usize = 1 << 20;
/// No merge for this pair.
const NO_RANK: u32 = u32::MAX;

/// FxHash (rustc's hasher, from the rustc-hash crate): several times faster than SipHash on the
/// short keys here (text, token ids), which no attacker chooses.
type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

#[inline(always)]
fn pair_key(left: u32, right: u32) -> u64 {
    (left as u64) << 32 | right as u64
}

/// Gives each encoder a distinct number, so a cache filled by one encoder is not used by another.
static NEXT_ENCODER: AtomicU64 = AtomicU64::new(1);

/// A byte-level BPE encoder, built once per vocabulary and shared by all threads.
pub struct Encoder {
    serial: u64,
    /// Id of the one-byte token of each byte.
    byte_ids: [u32; 256],
    /// (left id, right id) -> (merge rank, merged id).
    merges: FxMap<u64, (u32, u32)>,
    /// The same for the pairs of one-byte tokens, indexed by the two bytes: a word's first pairs
    /// are looked up here, where a text's few distinct bytes keep the few entries used in cache.
    byte_pairs: Box<[(u32, u32)]>,
    /// Special tokens: text and id.
    specials: Vec<(Vec<u8>, u32)>,
    /// Whether a special token starts with this byte: the scan for specials looks at one table.
    special_first: [bool; 256],
    /// For each special token that contains a safe split (see `pretokenize::is_safe_split`), the
    /// offsets of those splits: a cut there could fall inside an occurrence of the token.
    special_cuts: Vec<(Vec<u8>, Vec<usize>)>,
    /// Token id -> bytes, for `decode`.
    tokens: Vec<Vec<u8>>,
    /// Every merge involves only tokens made by merges of lower rank (see `merge_rank_by_rank`).
    ranks_follow_creation: bool,
}

/// Remembers the ids of the pre-tokens already encoded, plus reusable scratch space. One per
/// thread; it serves one encoder at a time (using it with another empties it).
pub struct WordCache {
    serial: u64,
    /// Pre-tokens of up to 15 bytes (nearly all), packed with their length into one integer: the
    /// probe compares integers instead of following a pointer to compare bytes.
    short: FxMap<u128, Ids>,
    /// The longer pre-tokens.
    long: FxMap<Box<[u8]>, Ids>,
    /// The ids of the cached words that have more than one.
    ids: Vec<u32>,
    /// A bit per hash of the words merged since the last emptying: a word is cached the second
    /// time it is merged. Most of Chinese text's pre-tokens (whole clauses) occur once; caching
    /// them cost a sixth of the time, and filled the cache with words never met again.
    seen: Vec<u64>,
    seen_count: usize,
    /// Scratch for merging a word: the current symbols and, for each adjacent pair, its
    /// (merge rank, merged id).
    symbols: Vec<u32>,
    pairs: Vec<(u32, u32)>,
}

/// Where the ids of a cached word are: `len` ids from `start` in `WordCache::ids`, or, when
/// `len` is 1 (most words with a large vocabulary), the id itself in `start`.
#[derive(Clone, Copy)]
struct Ids {
    start: u32,
    len: u32,
}

/// A word of up to 15 bytes as one integer: its bytes, zeros, its length in the last byte.
/// Built in registers: copying the word into a 16-byte buffer and reading it back as one integer
/// stalls the processor (a store of unknown size, then a larger load), 6% of encoding Chinese.
#[inline(always)]
fn pack(word: &[u8]) -> u128 {
    let n = word.len();
    let (lo, hi) = word.split_at(n.min(8));
    (load_le(lo) as u128) | (load_le(hi) as u128) << 64 | (n as u128) << 120
}

/// Up to 8 bytes as a little-endian integer, from two reads that may overlap (an overlapping byte
/// is the same byte at the same place in both, so OR-ing them is exact).
#[inline(always)]
fn load_le(b: &[u8]) -> u64 {
    let n = b.len();
    if n >= 4 {
        let first = u32::from_le_bytes(b[..4].try_into().unwrap()) as u64;
        let last = u32::from_le_bytes(b[n - 4..].try_into().unwrap()) as u64;
        first | last << (8 * (n - 4))
    } else if n > 0 {
        b[0] as u64 | (b[n / 2] as u64) << (8 * (n / 2)) | (b[n - 1] as u64) << (8 * (n - 1))
    } else {
        0
    }
}

impl Default for WordCache {
    fn default() -> Self {
        Self::new()
    }
}

impl WordCache {
    pub fn new() -> Self {
        WordCache {
            serial: 0,
            short: FxMap::default(),
            long: FxMap::default(),
            ids: Vec::new(),
            seen: vec![0; SEEN_BITS / 64],
            seen_count: 0,
            symbols: Vec::new(),
            pairs: Vec::new(),
        }
    }

    /// Number of pre-tokens remembered.
    pub fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.short.clear();
        self.long.clear();
        self.ids.clear();
    }

    /// Appends the ids of `word` if it is cached.
    #[inline]
    fn emit(&self, word: &[u8], out: &mut Vec<u32>) -> bool {
        let found = if word.len() < 16 { self.short.get(&pack(word)) } else { self.long.get(word) };
        match found {
            Some(&Ids { start, len: 1 }) => out.push(start),
            Some(&Ids { start, len }) => out.extend_from_slice(&self.ids[start as usize..(start + len) as usize]),
            None => return false,
        }
        true
    }

    /// Whether `word` was seen since the filter was last emptied (or another word with the same
    /// bit: a false yes only caches a word that may not come back); then it counts as seen.
    fn seen_before(&mut self, word: &[u8]) -> bool {
        use std::hash::BuildHasher;
        let bit = rustc_hash::FxBuildHasher.hash_one(word) as usize % SEEN_BITS;
        let (at, mask) = (bit / 64, 1u64 << (bit % 64));
        if self.seen[at] & mask != 0 {
            return true;
        }
        if self.seen_count == SEEN_BITS / 4 {
            self.seen.fill(0);
            self.seen_count = 0;
        }
        self.seen[at] |= mask;
        self.seen_count += 1;
        false
    }

    fn insert(&mut self, word: &[u8], ids: &[u32]) {
        if self.len() >= MAX_CACHED_WORDS {
            self.clear();
        }
        let at = if let [id] = ids {
            Ids { start: *id, len: 1 }
        } else {
            let start = self.ids.len() as u32;
            self.ids.extend_from_slice(ids);
            Ids { start, len: ids.len() as u32 }
        };
        if word.len() < 16 {
            self.short.insert(pack(word), at);
        } else {
            self.long.insert(word.into(), at);
        }
    }
}

impl Encoder {
    /// Panics if `bpe` breaks the invariants `ByteBpe::from_json` checks (a byte with no token,
    /// a merge whose result is not in the vocabulary).
    pub fn new(bpe: &ByteBpe) -> Encoder {
        let is_special = |id: usize| bpe.specials.iter().any(|&(_, s)| s as usize == id);
        // Bytes -> id of the ordinary tokens, first id winning, as in `ByteBpe::from_json`.
        let mut index: HashMap<&[u8], u32> = HashMap::with_capacity(bpe.tokens.len());
        for (id, t) in bpe.tokens.iter().enumerate() {
            if !is_special(id) {
                index.entry(t.as_slice()).or_insert(id as u32);
            }
        }
        let mut byte_ids = [0u32; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = *index.get(&[b as u8][..]).unwrap_or_else(|| panic!("the vocabulary has no token for byte {b}"));
        }
        // A pair listed twice keeps its last rank, as in the `tokenizers` library.
        let mut merges = FxMap::with_capacity_and_hasher(bpe.merges.len(), Default::default());
        let mut joined = Vec::new();
        for (rank, &(a, b)) in bpe.merges.iter().enumerate() {
            joined.clear();
            joined.extend_from_slice(&bpe.tokens[a as usize]);
            joined.extend_from_slice(&bpe.tokens[b as usize]);
            let id = *index.get(joined.as_slice()).unwrap_or_else(|| panic!("merge {rank} makes a token not in the vocabulary"));
            merges.insert(pair_key(a, b), (rank as u32, id));
        }
        // The highest rank that makes each token (bytes: none), then whether every merge comes after
        // the making of its two parts.
        let mut made_at: Vec<Option<u32>> = vec![None; bpe.tokens.len()];
        for &(rank, id) in merges.values() {
            let slot = &mut made_at[id as usize];
            *slot = (*slot).max(Some(rank));
        }
        let ranks_follow_creation = merges.iter().all(|(&key, &(rank, _))| {
            let (a, b) = ((key >> 32) as usize, key as u32 as usize);
            made_at[a].is_none_or(|m| m < rank) && made_at[b].is_none_or(|m| m < rank)
        });
        let specials: Vec<(Vec<u8>, u32)> =
            bpe.specials.iter().filter(|(s, _)| !s.is_empty()).map(|(s, id)| (s.as_bytes().to_vec(), *id)).collect();
        let mut special_first = [false; 256];
        for (s, _) in &specials {
            special_first[s[0] as usize] = true;
        }
        let special_cuts = specials
            .iter()
            .filter_map(|(s, _)| {
                let cuts: Vec<usize> = (1..s.len()).filter(|&k| pretokenize::is_safe_split(s, k)).collect();
                (!cuts.is_empty()).then(|| (s.clone(), cuts))
            })
            .collect();
        Encoder {
            serial: NEXT_ENCODER.fetch_add(1, Ordering::Relaxed),
            byte_ids,
            byte_pairs: (0..1 << 16)
                .map(|i: usize| merges.get(&pair_key(byte_ids[i >> 8], byte_ids[i & 255])).copied().unwrap_or((NO_RANK, 0)))
                .collect(),
            merges,
            specials,
            special_first,
            special_cuts,
            tokens: bpe.tokens.clone(),
            ranks_follow_creation,
        }
    }

    /// Appends the ids of `text` to `out`.
    pub fn encode(&self, text: &str, cache: &mut WordCache, out: &mut Vec<u32>) {
        if cache.serial != self.serial {
            cache.clear();
            cache.serial = self.serial;
        }
        let bytes = text.as_bytes();
        let mut start = 0;
        while let Some((at, end, id)) = self.find_special(bytes, start) {
            self.encode_ordinary(&text[start..at], cache, out);
            out.push(id);
            start = end;
        }
        self.encode_ordinary(&text[start..], cache, out);
    }

    /// The leftmost occurrence of a special token at or after `from`, the longest one if several
    /// start there: (start, end, id).
    fn find_special(&self, bytes: &[u8], from: usize) -> Option<(usize, usize, u32)> {
        if self.specials.is_empty() {
            return None;
        }
        for at in from..bytes.len() {
            if !self.special_first[bytes[at] as usize] {
                continue;
            }
            let mut best: Option<(usize, u32)> = None;
            for (s, id) in &self.specials {
                if bytes[at..].starts_with(s) && best.is_none_or(|(len, _)| s.len() > len) {
                    best = Some((s.len(), *id));
                }
            }
            if let Some((len, id)) = best {
                return Some((at, at + len, id));
            }
        }
        None
    }

    /// Text with no special tokens in it.
    fn encode_ordinary(&self, text: &str, cache: &mut WordCache, out: &mut Vec<u32>) {
        if self.merges.is_empty() {
            // No merges: one token per byte, and pre-tokens would change nothing.
            out.extend(text.bytes().map(|b| self.byte_ids[b as usize]));
            return;
        }
        pretokenize::for_each_pretoken(text, |word| self.encode_word(word.as_bytes(), cache, out));
    }

    #[inline]
    fn encode_word(&self, word: &[u8], cache: &mut WordCache, out: &mut Vec<u32>) {
        if word.len() == 1 {
            out.push(self.byte_ids[word[0] as usize]);
            return;
        }
        if word.len() > LONG_WORD {
            self.merge_long(word, out);
            return;
        }
        if cache.emit(word, out) {
            return;
        }
        let first = out.len();
        self.merge_short(word, cache, out);
        if cache.seen_before(word) {
            cache.insert(word, &out[first..]);
        }
    }

    /// (rank, merged id) of an adjacent pair, `NO_RANK` if it does not merge.
    #[inline]
    fn pair(&self, left: u32, right: u32) -> (u32, u32) {
        self.merges.get(&pair_key(left, right)).copied().unwrap_or((NO_RANK, 0))
    }

    /// BPE on a short word: find the pair of lowest rank (leftmost on ties), merge it, repeat.
    /// Quadratic, but for a dozen symbols nothing is faster.
    fn merge_short(&self, word: &[u8], cache: &mut WordCache, out: &mut Vec<u32>) {
        let WordCache { symbols, pairs, .. } = cache;
        symbols.clear();
        symbols.extend(word.iter().map(|&b| self.byte_ids[b as usize]));
        pairs.clear();
        pairs.extend(word.windows(2).map(|w| self.byte_pairs[(w[0] as usize) << 8 | w[1] as usize]));
        loop {
            let mut best = NO_RANK;
            let mut at = 0;
            for (i, &(rank, _)) in pairs.iter().enumerate() {
                if rank < best {
                    best = rank;
                    at = i;
                }
            }
            if best == NO_RANK {
                break;
            }
            symbols[at] = pairs[at].1;
            symbols.remove(at + 1);
            pairs.remove(at);
            if at > 0 {
                pairs[at - 1] = self.pair(symbols[at - 1], symbols[at]);
            }
            if at < pairs.len() {
                pairs[at] = self.pair(symbols[at], symbols[at + 1]);
            }
        }
        out.extend_from_slice(symbols);
    }

    /// BPE on a long word, in O(n log n) whatever its length (a 100 MB run of letters is legal
    /// input). The symbols form a linked list over the byte positions (a merged symbol keeps its
    /// left position) and a priority queue holds the candidate merges by (rank, position). A
    /// candidate is stale if the pair at its position changed since it was queued; spans only
    /// grow, so the pair is unchanged exactly when it still has the same rank. This is the order of
    /// the simple loop, and of `tokenizers`' own `merge_all`. Memory: about 20 bytes per byte.
    fn merge_long(&self, word: &[u8], out: &mut Vec<u32>) {
        let mut chain = Chain::new(word, &self.byte_ids);
        if self.ranks_follow_creation {
            self.merge_rank_by_rank(&mut chain);
        } else {
            self.merge_with_heap(&mut chain);
        }
        chain.emit(out);
    }

    /// Merges the pair at `pos` if it still has rank `rank`; then offers the two new pairs.
    #[inline]
    fn merge_at(&self, chain: &mut Chain, pos: u32, rank: u32, mut offer: impl FnMut(u32, u32)) {
        let p = pos as usize;
        let right = chain.next[p];
        if chain.symbols[p] == GONE || right == NONE {
            return;
        }
        let (current, merged) = self.pair(chain.symbols[p], chain.symbols[right as usize]);
        if current != rank {
            return;
        }
        chain.symbols[p] = merged;
        chain.symbols[right as usize] = GONE;
        let after = chain.next[right as usize];
        chain.next[p] = after;
        if after != NONE {
            chain.prev[after as usize] = pos;
            let (r, _) = self.pair(merged, chain.symbols[after as usize]);
            if r != NO_RANK {
                offer(r, pos);
            }
        }
        let before = chain.prev[p];
        if before != NONE {
            let (r, _) = self.pair(chain.symbols[before as usize], merged);
            if r != NO_RANK {
                offer(r, before);
            }
        }
    }

    /// The general case: a binary heap of (rank, position).
    fn merge_with_heap(&self, chain: &mut Chain) {
        let candidate = |rank: u32, pos: u32| Reverse((rank as u64) << 32 | pos as u64);
        let mut heap: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
        chain.for_each_pair(self, |rank, pos| heap.push(candidate(rank, pos)));
        while let Some(Reverse(top)) = heap.pop() {
            self.merge_at(chain, top as u32, (top >> 32) as u32, |rank, pos| heap.push(candidate(rank, pos)));
        }
    }

    /// The usual case, several times faster on huge words: when a merge only involves tokens made
    /// by earlier merges (true of every trained vocabulary), a merge only creates pairs of higher
    /// rank, so ranks come out of the queue in increasing order. The queue is then a bucket of
    /// positions per rank, each sorted once when its turn comes, and a small heap of the ranks
    /// that have a bucket; no 100-million-entry heap to sift through memory.
    fn merge_rank_by_rank(&self, chain: &mut Chain) {
        fn offer(buckets: &mut FxMap<u32, Vec<u32>>, ranks: &mut BinaryHeap<Reverse<u32>>, rank: u32, pos: u32) {
            buckets
                .entry(rank)
                .or_insert_with(|| {
                    ranks.push(Reverse(rank));
                    Vec::new()
                })
                .push(pos)
        }
        let mut buckets = FxMap::default();
        let mut ranks = BinaryHeap::new();
        chain.for_each_pair(self, |rank, pos| offer(&mut buckets, &mut ranks, rank, pos));
        while let Some(Reverse(rank)) = ranks.pop() {
            let mut positions = buckets.remove(&rank).expect("a queued rank has a bucket");
            positions.sort_unstable();
            for pos in positions {
                self.merge_at(chain, pos, rank, |r, p| {
                    debug_assert!(r > rank, "ranks follow creation");
                    offer(&mut buckets, &mut ranks, r, p)
                });
            }
        }
    }

    /// The first position `p >= from` where `bytes` can be cut and each side encoded on its own
    /// with the same ids as the whole: a safe split of the pre-tokenizer
    /// (`pretokenize::next_safe_split`) that does not fall inside an occurrence of a special token.
    /// (If no occurrence crosses the cut, the leftmost-longest matching of specials picks the same
    /// occurrences in the two sides as in the whole.)
    pub fn next_safe_split(&self, bytes: &[u8], from: usize) -> Option<usize> {
        let mut from = from;
        loop {
            let p = pretokenize::next_safe_split(bytes, from)?;
            if !self.inside_special(bytes, p) {
                return Some(p);
            }
            from = p + 1;
        }
    }

    /// Whether some occurrence of a special token starts before `p` and ends after it. A special
    /// token can only straddle a safe split at one of its own safe splits.
    fn inside_special(&self, bytes: &[u8], p: usize) -> bool {
        self.special_cuts.iter().any(|(s, cuts)| cuts.iter().any(|&k| p >= k && bytes[p - k..].starts_with(s)))
    }

    /// The bytes of a sequence of ids (special tokens give their text). Panics on an id outside
    /// the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(&self.tokens[id as usize]);
        }
        out
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

const NONE: u32 = u32::MAX;
/// A symbol merged into its left neighbour.
const GONE: u32 = u32::MAX;

/// The symbols of a long word as a doubly linked list over byte positions.
struct Chain {
    symbols: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
}

impl Chain {
    fn new(word: &[u8], byte_ids: &[u32; 256]) -> Chain {
        let n = word.len();
        assert!(n >= 2 && n < u32::MAX as usize, "a pre-token of {n} bytes is too long to encode (limit 4 GiB)");
        let mut next: Vec<u32> = (1..=n as u32).collect();
        next[n - 1] = NONE;
        Chain {
            symbols: word.iter().map(|&b| byte_ids[b as usize]).collect(),
            next,
            prev: (0..n as u32).map(|i| i.wrapping_sub(1)).collect(), // 0 -> NONE
        }
    }

    /// Calls `f(rank, position)` for each adjacent pair that merges, at the start.
    fn for_each_pair(&self, encoder: &Encoder, mut f: impl FnMut(u32, u32)) {
        for (i, w) in self.symbols.windows(2).enumerate() {
            let (rank, _) = encoder.pair(w[0], w[1]);
            if rank != NO_RANK {
                f(rank, i as u32);
            }
        }
    }

    fn emit(&self, out: &mut Vec<u32>) {
        let mut i = 0; // the first symbol is never merged away
        while i != NONE {
            out.push(self.symbols[i as usize]);
            i = self.next[i as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretokenize::tests::ATOMS;
    use crate::vocab::END_OF_TEXT;
    use proptest::prelude::*;
    use std::path::Path;
    use std::str::FromStr;
    use std::sync::OnceLock;
    use tokenizers::Tokenizer;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/");

    fn data_text(name: &str) -> Option<String> {
        let path = format!("{DATA}{name}");
        let text = std::fs::read_to_string(&path).ok();
        if text.is_none() {
            eprintln!("skipping the part on {path}: absent");
        }
        text
    }

    /// Words that the trained vocabulary merges, mixed into the random texts.
    const WORDS: &[&str] = &[
        "the", " the", " of", " and", " to", " in", "ing", "tion", " is", " for", " package", " Debian", " system", " file",
        " de", " la", " le", " les", " des", " paquet", " système", " fichier", "é", "è", " être", " à", "'s", "n't",
        " configuration", " installation", "  ", "\n\n", "    ", ".", ",", "$ ", "/etc/", "apt-get", " 2024", "123456",
        "aaaaaaaa", "ééééé", "\n", " ", "::", "...", "<|endoftext|>", "<|endoftext|><|endoftext|>", "<|endoftext",
    ];

    fn random_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![prop::sample::select(ATOMS), prop::sample::select(WORDS)];
        prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
    }

    /// A byte-level BPE trained by the `tokenizers` library, the way people make their vocabularies.
    pub(crate) fn train(texts: &[String], vocab_size: usize) -> ByteBpe {
        use tokenizers::models::bpe::{BpeTrainer, BPE};
        use tokenizers::models::TrainerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::AddedToken;
        let mut tok = Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevel::default()));
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        tok.train(&mut trainer, texts.iter()).unwrap();
        ByteBpe::from_json(&tok.to_string(false).unwrap(), Path::new("trained.json")).unwrap().expect("a plain byte-level BPE")
    }

    /// A vocabulary of 3000 tokens trained on the real texts (or, without them, on the words above).
    fn trained() -> &'static (ByteBpe, Encoder, Tokenizer) {
        static T: OnceLock<(ByteBpe, Encoder, Tokenizer)> = OnceLock::new();
        T.get_or_init(|| {
            let texts: Vec<String> = match (data_text("debian_reference_en.txt"), data_text("debian_reference_fr.txt")) {
                (Some(en), Some(fr)) => vec![en, fr],
                // Users' clones lack the data folder: the crate's own sources are text enough.
                _ => [include_str!("bpe.rs"), include_str!("pretokenize.rs"), include_str!("vocab.rs"), include_str!("error.rs")]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([WORDS.concat().repeat(20)])
                    .collect(),
            };
            let bpe = train(&texts, 3000);
            assert!(bpe.merges.len() > 500, "the training made only {} merges", bpe.merges.len());
            both(bpe)
        })
    }

    fn bytes_only() -> &'static (ByteBpe, Encoder, Tokenizer) {
        static T: OnceLock<(ByteBpe, Encoder, Tokenizer)> = OnceLock::new();
        T.get_or_init(|| both(ByteBpe::bytes_only()))
    }

    fn both(bpe: ByteBpe) -> (ByteBpe, Encoder, Tokenizer) {
        let enc = Encoder::new(&bpe);
        let tok = Tokenizer::from_str(&bpe.to_json()).unwrap();
        (bpe, enc, tok)
    }

    fn ours(enc: &Encoder, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        enc.encode(text, &mut WordCache::new(), &mut out);
        out
    }

    fn theirs(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).unwrap().get_ids().to_vec()
    }

    fn assert_same(enc: &Encoder, tok: &Tokenizer, text: &str) {
        let (a, b) = (ours(enc, text), theirs(tok, text));
        if a != b {
            let i = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            let around = |v: &[u32]| v[i.saturating_sub(3)..(i + 3).min(v.len())].to_vec();
            panic!("first difference at id {i}: ours {:?}, tokenizers {:?}, text {:?}", around(&a), around(&b), &text[..text.len().min(200)]);
        }
    }

    #[test]
    fn encoder_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Encoder>();
        check::<WordCache>();
    }

    #[test]
    fn small_vocabulary_by_hand() {
        // a+b -> 257, ab+c -> 258, b+c -> 259 (rank 2: "abc" must become [258], "bc" [259])
        let a = b'a' as u32 + 1;
        let b = b'b' as u32 + 1;
        let c = b'c' as u32 + 1;
        let bpe = ByteBpe::from_merges(vec![(a, b), (257, c), (b, c)]);
        let enc = Encoder::new(&bpe);
        assert_eq!(ours(&enc, "abc"), [258]);
        assert_eq!(ours(&enc, "bc abx"), [259, b' ' as u32 + 1, 257, b'x' as u32 + 1]);
        assert_eq!(ours(&enc, "ab<|endoftext|>c"), [257, 0, c]);
        let (_, _, tok) = &both(bpe);
        for t in ["abc", "bc abx", "ab<|endoftext|>c", "abcabcbcbc", "aabbcc abcb"] {
            assert_same(&enc, tok, t);
        }
    }

    #[test]
    fn real_text_matches_tokenizers() {
        for name in ["debian_reference_en.txt", "debian_reference_fr.txt"] {
            let Some(text) = data_text(name) else { return };
            for (_, enc, tok) in [trained(), bytes_only()] {
                assert_same(enc, tok, &text);
            }
            // The decoded ids give back the text.
            let (_, enc, _) = trained();
            assert_eq!(enc.decode(&ours(enc, &text)), text.as_bytes());
        }
    }

    #[test]
    fn long_pretokens_are_fast_and_exact() {
        // 2 MB of letters and 2 MB of digits: two pre-tokens. A quadratic merge would take hours
        // (and the test runner's time limit would end it); the O(n log n) one takes a second.
        let (_, enc, tok) = trained();
        let source = data_text("debian_reference_en.txt").unwrap_or_else(|| include_str!("bpe.rs").to_string());
        let letters: String = source.chars().filter(|c| c.is_ascii_alphabetic()).cycle().take(2 << 20).collect();
        let digits: String = (0..2u64 << 20).map(|i| char::from(b'0' + (i * i / 7 % 10) as u8)).collect();
        let text = format!("{letters}{digits} {letters}");
        assert_eq!(ours(enc, &text), theirs(tok, &text));
    }

    #[test]
    fn bytes_only_is_bytes_plus_one() {
        let (_, enc, _) = bytes_only();
        assert_eq!(ours(enc, "hé<|endoftext|>!"), [b'h' as u32 + 1, 0xC3 + 1, 0xA9 + 1, 0, b'!' as u32 + 1]);
    }

    #[test]
    fn specials_leftmost_longest_and_no_cut_inside() {
        let mut bpe = trained().0.clone();
        for s in ["<|a|>", "<|a|> b", "x y"] {
            bpe.specials.push((s.to_string(), bpe.tokens.len() as u32));
            bpe.tokens.push(s.as_bytes().to_vec());
        }
        let (_, enc, tok) = &both(bpe);
        let text = "q<|a|> b <|a|>b x yx y <|a|> bb<|endoftext|>";
        assert_same(enc, tok, text);
        let bytes = text.as_bytes();
        let mut cuts = Vec::new();
        let mut p = 0;
        while let Some(q) = enc.next_safe_split(bytes, p) {
            cuts.push(q);
            p = q + 1;
        }
        // Not 6 nor 28 (inside "<|a|> b"), nor 17 and 20 (inside "x y").
        assert_eq!(cuts, [8, 15, 22]);
        for &q in &cuts {
            let mut parts = ours(enc, &text[..q]);
            parts.extend(ours(enc, &text[q..]));
            assert_eq!(parts, ours(enc, text), "cut at {q}");
        }
    }

    /// The three ways to merge agree: simple loop, heap, and rank by rank.
    fn check_merges_agree(enc: &Encoder, word: &[u8]) {
        let mut short = Vec::new();
        enc.merge_short(word, &mut WordCache::new(), &mut short);
        if word.len() < 2 {
            return;
        }
        let mut chain = Chain::new(word, &enc.byte_ids);
        enc.merge_with_heap(&mut chain);
        let mut heap = Vec::new();
        chain.emit(&mut heap);
        assert_eq!(short, heap, "heap on {:?}", String::from_utf8_lossy(word));
        if enc.ranks_follow_creation {
            let mut chain = Chain::new(word, &enc.byte_ids);
            enc.merge_rank_by_rank(&mut chain);
            let mut by_rank = Vec::new();
            chain.emit(&mut by_rank);
            assert_eq!(short, by_rank, "rank by rank on {:?}", String::from_utf8_lossy(word));
        }
    }

    #[test]
    fn long_merge_equals_short_merge() {
        let (_, enc, _) = trained();
        assert!(enc.ranks_follow_creation);
        let words = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", " configurationconfigurationinstallation", "éééééééèèèèèèè", "abab"];
        for w in words.iter().chain(WORDS) {
            check_merges_agree(enc, w.as_bytes());
        }
    }

    /// The trained vocabulary with its merges in another order: merges then use tokens that later
    /// merges make, the case where only the heap is right. Still a valid tokenizer.json.
    fn shuffled() -> &'static (ByteBpe, Encoder, Tokenizer) {
        static T: OnceLock<(ByteBpe, Encoder, Tokenizer)> = OnceLock::new();
        T.get_or_init(|| {
            let mut bpe = trained().0.clone();
            let n = bpe.merges.len();
            // A fixed permutation: rank i goes to (i * 7919) mod n, 7919 prime to n or nearly so.
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (i * 7919) % n);
            bpe.merges = order.iter().map(|&i| bpe.merges[i]).collect();
            let t = both(bpe);
            assert!(!t.1.ranks_follow_creation);
            t
        })
    }

    #[test]
    fn merge_of_a_later_token_by_hand() {
        // Rank 0: "xy" + "x" -> "xyx"; rank 1: "x" + "y" -> "xy". In "xyxy", merging the first "xy"
        // creates a pair of rank 0, which must go before the second "xy" (rank 1).
        let (x, y) = (b'x' as u32 + 1, b'y' as u32 + 1);
        let mut bpe = ByteBpe::bytes_only();
        bpe.tokens.push(b"xy".to_vec()); // 257
        bpe.tokens.push(b"xyx".to_vec()); // 258
        bpe.merges = vec![(257, x), (x, y)];
        let (_, enc, tok) = &both(bpe);
        assert!(!enc.ranks_follow_creation);
        assert_eq!(ours(enc, "xyxy"), [258, y]);
        for text in ["xyxy", "xyxyxyxyxyxyx", &"xy".repeat(100), &"xyx".repeat(100)] {
            assert_same(enc, tok, text);
            check_merges_agree(enc, text.as_bytes());
        }
    }

    #[test]
    fn merges_out_of_order_match_tokenizers() {
        let (_, enc, tok) = shuffled();
        let source = data_text("debian_reference_fr.txt").unwrap_or_else(|| include_str!("pretokenize.rs").to_string());
        let text = &source[..source.char_indices().nth(200_000).map_or(source.len(), |(i, _)| i)];
        assert_same(enc, tok, text);
        let glued: String = text.chars().filter(|c| c.is_alphabetic()).take(100_000).collect();
        assert_same(enc, tok, &glued);
        for w in WORDS {
            check_merges_agree(enc, w.as_bytes());
        }
    }

    #[test]
    fn cache_follows_its_encoder_and_stays_bounded() {
        let (_, trained_enc, _) = trained();
        let (_, bytes_enc, _) = bytes_only();
        let mut cache = WordCache::new();
        let mut a = Vec::new();
        trained_enc.encode(" the the the", &mut cache, &mut a);
        assert!(!cache.is_empty());
        let mut b = Vec::new();
        bytes_enc.encode(" the the the", &mut cache, &mut b);
        assert_eq!(b.len(), 12);
        // Distinct words beyond the limit: the cache empties itself instead of growing.
        let mut out = Vec::new();
        // (Each twice: a word is cached the second time it is merged.)
        let text: String = (0..MAX_CACHED_WORDS + 10).map(|i| format!(" w{i:x}z w{i:x}z")).collect();
        trained_enc.encode(&text, &mut cache, &mut out);
        assert!(cache.len() <= MAX_CACHED_WORDS);
    }

    #[test]
    fn words_are_cached_the_second_time() {
        let (_, enc, _) = trained();
        let mut cache = WordCache::new();
        let mut out = Vec::new();
        enc.encode(" configuration", &mut cache, &mut out);
        assert!(cache.is_empty());
        enc.encode(" configuration", &mut cache, &mut out);
        assert_eq!(cache.len(), 1);
        let mut again = Vec::new();
        assert!(cache.emit(b" configuration", &mut again));
        assert_eq!(out, [again.clone(), again].concat());
    }

    #[test]
    fn byte_pairs_agree_with_merges() {
        for (_, enc, _) in [trained(), shuffled(), bytes_only()] {
            for i in 0..1 << 16 {
                assert_eq!(enc.byte_pairs[i], enc.pair(enc.byte_ids[i >> 8], enc.byte_ids[i & 255]), "bytes {:?}", (i >> 8, i & 255));
            }
        }
    }

    /// Lone CR, NUL, a surrogate as WTF-8, cut characters, stray continuation bytes.
    const ODD_BYTES: &[&[u8]] = &[b"\r", b"\0", b"\xed\xa0\x80", b"\xc3", b"\xe2\x82", b"\x80\x80", b" \r\n", b"\t \n"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn pack_is_bytes_then_length(word in prop::collection::vec(any::<u8>(), 0..16)) {
            let mut b = [0u8; 16];
            b[..word.len()].copy_from_slice(&word);
            b[15] = word.len() as u8;
            prop_assert_eq!(pack(&word), u128::from_le_bytes(b));
        }

        #[test]
        fn random_text_matches_tokenizers(text in random_text()) {
            for (_, enc, tok) in [trained(), bytes_only(), shuffled()] {
                prop_assert_eq!(ours(enc, &text), theirs(tok, &text), "text {:?}", text);
            }
        }

        #[test]
        fn random_words_merge_like_tokenizers(word in prop::collection::vec(prop::sample::select(WORDS), 1..40)) {
            // Glued words (no spaces): long pre-tokens, through `merge_long` when over LONG_WORD bytes.
            let text: String = word.concat().replace([' ', '\n', '<', '|', '>'], "");
            for (_, enc, tok) in [trained(), shuffled()] {
                prop_assert_eq!(ours(enc, &text), theirs(tok, &text));
                check_merges_agree(enc, text.as_bytes());
            }
        }

        /// Raw bytes as a corpus holds them (any characters, invalid UTF-8, NUL, lone CR), decoded
        /// lossily as `arrows tokenize` does, whole and in the chunks its safe splits cut: the ids
        /// are the `tokenizers` crate's, equal in chunks, and decode back to the lossy text.
        #[test]
        fn arbitrary_bytes_encode_like_tokenizers(pieces in prop::collection::vec(prop_oneof![
            2 => prop::sample::select(WORDS).prop_map(|w| w.as_bytes().to_vec()),
            2 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
            1 => prop::collection::vec(any::<u8>(), 0..6),
            1 => prop::sample::select(ODD_BYTES).prop_map(|b| b.to_vec()),
        ], 0..50)) {
            let bytes = pieces.concat();
            let text = crate::corpus::decode_lossy(&bytes).0.into_owned();
            for (_, enc, tok) in [trained(), bytes_only(), shuffled()] {
                let whole = ours(enc, &text);
                prop_assert_eq!(&whole, &theirs(tok, &text));
                prop_assert_eq!(enc.decode(&whole), text.as_bytes());
                let (mut p, mut start, mut parts) = (0, 0, Vec::new());
                while let Some(q) = enc.next_safe_split(&bytes, p) {
                    parts.extend(ours(enc, &crate::corpus::decode_lossy(&bytes[start..q]).0));
                    (p, start) = (q + 1, q);
                }
                parts.extend(ours(enc, &crate::corpus::decode_lossy(&bytes[start..]).0));
                prop_assert_eq!(&parts, &whole);
            }
        }

        #[test]
        fn safe_splits_keep_ids(text in random_text()) {
            let (_, enc, _) = trained();
            let whole = ours(enc, &text);
            let bytes = text.as_bytes();
            let mut p = 0;
            while let Some(q) = enc.next_safe_split(bytes, p) {
                let mut parts = ours(enc, &text[..q]);
                parts.extend(ours(enc, &text[q..]));
                prop_assert_eq!(&parts, &whole, "cut at {}", q);
                p = q + 1;
            }
        }
    }
}
