// TEMPORARY stand-in (being replaced by the exact scanner).
pub fn for_each_pretoken<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    for w in text.split_inclusive(' ') { f(w) }
}
pub fn is_safe_split(bytes: &[u8], p: usize) -> bool {
    p > 0 && p < bytes.len() && bytes[p].is_ascii_whitespace() && bytes[p - 1].is_ascii() && !bytes[p - 1].is_ascii_whitespace()
}
pub fn next_safe_split(bytes: &[u8], from: usize) -> Option<usize> {
    (from.max(1)..bytes.len()).find(|&p| is_safe_split(bytes, p))
}
