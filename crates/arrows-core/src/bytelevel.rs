//! GPT-2's byte-level alphabet: every byte maps to one printable character, so that a byte string
//! can be written as a JSON string in `tokenizer.json` (a space becomes `Ġ`, a newline `Ċ`).

use std::sync::OnceLock;

/// The character that stands for `byte` in byte-level vocabularies.
pub fn byte_to_char(byte: u8) -> char {
    table().0[byte as usize]
}

/// The byte a byte-level character stands for, or `None` if `c` is not in the alphabet.
pub fn char_to_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 324 {
        let b = table().1[code as usize];
        if b >= 0 {
            return Some(b as u8);
        }
    }
    None
}

/// A byte string written in the byte-level alphabet.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

/// The bytes a byte-level string stands for, or `None` if a character is outside the alphabet.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

fn table() -> &'static ([char; 256], [i16; 324]) {
    static TABLE: OnceLock<([char; 256], [i16; 324])> = OnceLock::new();
    TABLE.get_or_init(|| {
        // Printable Latin-1 bytes stand for themselves; the others are shifted to 256 + n in order.
        let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let mut to_char = ['\0'; 256];
        let mut to_byte = [-1i16; 324];
        let mut shifted = 0u32;
        for b in 0..256u32 {
            let code = if printable(b) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            to_char[b as usize] = char::from_u32(code).unwrap();
            to_byte[code as usize] = b as i16;
        }
        (to_char, to_byte)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_characters() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0), 'Ā');
    }

    #[test]
    fn round_trip_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let s = encode(&all);
        assert_eq!(s.chars().count(), 256);
        assert_eq!(decode(&s).unwrap(), all);
        assert_eq!(decode("a\u{4e00}"), None);
    }
}
