// TEMPORARY stand-in (being replaced by the fast encoder).
use crate::vocab::ByteBpe;
pub struct Encoder { tok: tokenizers::Tokenizer, bpe: ByteBpe }
pub struct WordCache;
impl WordCache { pub fn new() -> Self { WordCache } }
impl Encoder {
    pub fn new(bpe: &ByteBpe) -> Encoder { Encoder { tok: bpe.to_json().parse().unwrap(), bpe: bpe.clone() } }
    pub fn encode(&self, text: &str, _cache: &mut WordCache, out: &mut Vec<u32>) {
        out.extend_from_slice(self.tok.encode(text, false).unwrap().get_ids());
    }
    pub fn next_safe_split(&self, bytes: &[u8], from: usize) -> Option<usize> { crate::pretokenize::next_safe_split(bytes, from) }
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> { ids.iter().flat_map(|&i| self.bpe.tokens[i as usize].clone()).collect() }
}
