// TEMPORARY stand-in (being replaced by the real trainer).
use crate::vocab::ByteBpe;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
#[derive(Default)]
pub struct WordCounts { words: HashMap<Vec<u8>, u64> }
impl WordCounts {
    pub fn new() -> Self { Self::default() }
    pub fn add_word(&mut self, w: &[u8]) { *self.words.entry(w.to_vec()).or_default() += 1; }
    pub fn add_text(&mut self, text: &str) { crate::pretokenize::for_each_pretoken(text, |w| self.add_word(w.as_bytes())); }
    pub fn merge(&mut self, other: WordCounts) { for (w, c) in other.words { *self.words.entry(w).or_default() += c; } }
    pub fn len(&self) -> usize { self.words.len() }
    pub fn total(&self) -> u64 { self.words.values().sum() }
}
pub fn train_bpe(counts: &WordCounts, vocab_size: usize, _min: u64, _p: &dyn Fn(usize, usize), _c: &AtomicBool) -> crate::Result<ByteBpe> {
    let _ = (counts, vocab_size);
    Ok(ByteBpe::from_merges(vec![(b't' as u32 + 1, b'h' as u32 + 1)]))
}
