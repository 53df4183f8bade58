//! The GPT-2 pre-tokenizer, written out by hand.
//!
//! GPT-2 (and the `tokenizers` ByteLevel pre-tokenizer with `use_regex`) cuts text into
//! pre-tokens with the regex
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! run by Oniguruma (leftmost, first alternative wins, greedy with backtracking). BPE merges never
//! cross a pre-token boundary. A regex engine spends most of its time on bookkeeping, so this
//! module scans the text once, classifying each character as a letter (`\p{L}`), a number
//! (`\p{N}`), whitespace (Oniguruma's `\s`) or other, and reproduces the regex's choices:
//!
//! - `'` followed by `s t m d` or `re ve ll` (lowercase only) is a contraction token;
//! - otherwise a run of one class (letters, numbers or other), optionally preceded by one
//!   space U+0020 (only that character: the regex says ` ?`, not `\s?`);
//! - a whitespace run that reaches the end of the text is one token; one followed by a
//!   non-space gives up its last character (`\s+(?!\S)` backtracks by one), which then
//!   prefixes the next token if it is a space, or stands alone (`\s+`) otherwise.
//!
//! The tests compare this against the `tokenizers` crate on random and real text.

use unicode_general_category::{get_general_category, GeneralCategory as G};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

/// Classes of the ASCII bytes: the fast path, no decoding, no table of categories.
const ASCII_CLASS: [Class; 128] = {
    let mut t = [Class::Other; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() {
            Class::Letter
        } else if c.is_ascii_digit() {
            Class::Number
        } else if (c >= 0x09 && c <= 0x0D) || c == b' ' {
            // Oniguruma's \s in ASCII: \t \n \v \f \r and space (not 0x1C..0x1F, unlike Python).
            Class::Space
        } else {
            Class::Other
        };
        b += 1;
    }
    t
};

/// Oniguruma's `\s` outside ASCII: U+0085 and the Zs, Zl, Zp characters. This set (Unicode's
/// White_Space) has been stable since Unicode 6.3, so it is spelled out rather than looked up.
fn is_unicode_space(c: char) -> bool {
    matches!(c as u32, 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000)
}

fn class_of(c: char) -> Class {
    if is_unicode_space(c) {
        return Class::Space;
    }
    match get_general_category(c) {
        G::UppercaseLetter | G::LowercaseLetter | G::TitlecaseLetter | G::ModifierLetter | G::OtherLetter => Class::Letter,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Class::Number,
        _ => Class::Other,
    }
}

/// Class and UTF-8 length of the character starting at byte `i` of a valid UTF-8 string.
#[inline(always)]
fn class_at(text: &str, i: usize) -> (Class, usize) {
    let b = text.as_bytes()[i];
    if b < 0x80 {
        (ASCII_CLASS[b as usize], 1)
    } else {
        let c = text[i..].chars().next().expect("i is a char boundary");
        (class_of(c), c.len_utf8())
    }
}

/// Length of the contraction letters after an apostrophe (`s` -> 1, `re` -> 2), if any.
#[inline]
fn contraction_len(after: &[u8]) -> Option<usize> {
    match after {
        [b's' | b't' | b'm' | b'd', ..] => Some(1),
        [b'r', b'e', ..] | [b'v', b'e', ..] | [b'l', b'l', ..] => Some(2),
        _ => None,
    }
}

/// Calls `f` on every pre-token of `text`, in order; their concatenation is `text`.
pub fn for_each_pretoken<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut i = 0;
    while i < n {
        // 's 't 're 've 'm 'll 'd come first in the pattern.
        if bytes[i] == b'\'' {
            if let Some(len) = contraction_len(&bytes[i + 1..]) {
                f(&text[i..i + 1 + len]);
                i += 1 + len;
                continue;
            }
        }
        let (mut class, mut len) = class_at(text, i);
        let mut body = i; // where the run of one class starts (after an optional leading space)
        if bytes[i] == b' ' && i + 1 < n {
            let (next_class, next_len) = class_at(text, i + 1);
            if next_class != Class::Space {
                // ` ?\p{L}+`, ` ?\p{N}+` or ` ?[^\s\p{L}\p{N}]+` with its space.
                (class, len, body) = (next_class, next_len, i + 1);
            }
        }
        let mut end = body + len;
        if class == Class::Space {
            let mut last = body; // start of the last whitespace character of the run
            while end < n {
                let (c, l) = class_at(text, end);
                if c != Class::Space {
                    break;
                }
                last = end;
                end += l;
            }
            // Followed by a non-space: `\s+(?!\S)` keeps all but the last character. A run of
            // one character fails there and is matched by the final `\s+` alone.
            if end < n && last > i {
                end = last;
            }
        } else {
            while end < n {
                let (c, l) = class_at(text, end);
                if c != class {
                    break;
                }
                end += l;
            }
        }
        f(&text[i..end]);
        i = end;
    }
}

/// The pre-tokens of `text`, collected (for tests and callers that want a list).
pub fn pretokens(text: &str) -> Vec<&str> {
    let mut v = Vec::new();
    for_each_pretoken(text, |t| v.push(t));
    v
}

/// Whether cutting `bytes` at `p` (0 < p < len) leaves the pre-tokens unchanged: the pre-tokens of
/// `bytes[..p]` followed by those of `bytes[p..]` are those of `bytes`. The rule: `bytes[p]` is
/// ASCII whitespace (`\t \n \v \f \r` or space) and the character before it is not whitespace.
/// It holds before most spaces and line ends of real text, in any script: `。\n` in Chinese,
/// `é ` in French, `а ` in Russian. (An earlier rule wanted an ASCII character before the cut, and
/// found none in Chinese or Japanese text: a file of it was encoded in one piece, on one thread,
/// in several times its size of memory.)
///
/// Why it is safe. Call `c` the character before the cut and `w` the one after.
/// 1. The whole text has a token boundary at `p`: the token holding `c` (not whitespace) is a
///    contraction, or a run of letters, numbers or others with perhaps one leading space. None of
///    these contains whitespace after a non-whitespace character, so it cannot take in `w`.
/// 2. The tokens before `p` are the same in the prefix: each was chosen looking at characters up to
///    `c` and at most one further, `w`, where it stopped or failed (a run of one class stops at
///    whitespace, a contraction needs letters after the `'`). At the end of the prefix the same
///    runs stop and the same contractions fail. Whitespace runs before `p` end before `c`, so
///    their `(?!\S)` look-ahead sees the same character in both.
/// 3. The tokens from `p` on are the same in the suffix: the pattern only looks forward.
///
/// Raw bytes are decoded lossily (U+FFFD for each maximal invalid sequence). An ASCII byte is never
/// part of a multi-byte sequence, valid or not, so the pieces decoded apart give the characters of
/// the whole; `c` is the last of them, U+FFFD (not whitespace) when the bytes before `p` do not end
/// in a valid character.
pub fn is_safe_split(bytes: &[u8], p: usize) -> bool {
    0 < p && p < bytes.len() && is_ascii_space(bytes[p]) && ends_in_non_space(&bytes[..p])
}

/// Oniguruma's `\s` among ASCII bytes: `\t \n \v \f \r` and space.
#[inline]
fn is_ascii_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ')
}

/// Whether the last character of `bytes`, decoded lossily, is not whitespace.
#[inline]
fn ends_in_non_space(bytes: &[u8]) -> bool {
    let Some(&last) = bytes.last() else { return false };
    if last < 0x80 {
        return ASCII_CLASS[last as usize] != Class::Space;
    }
    // A character takes at most 4 bytes: its lead byte is the last one that is not a
    // continuation byte (0b10xx_xxxx).
    let lead = (bytes.len().saturating_sub(4)..bytes.len()).rev().find(|&i| bytes[i] & 0xC0 != 0x80);
    match lead.map(|i| std::str::from_utf8(&bytes[i..])) {
        Some(Ok(c)) => c.chars().all(|c| class_of(c) != Class::Space),
        // Not one valid character: the lossy decoding ends with U+FFFD, which is not whitespace.
        _ => true,
    }
}

/// The first safe split position `p >= from` (see [`is_safe_split`]), if any.
pub fn next_safe_split(bytes: &[u8], from: usize) -> Option<usize> {
    let mut p = from.max(1);
    while p < bytes.len() {
        let q = p + bytes[p..].iter().position(|&b| is_ascii_space(b))?;
        if ends_in_non_space(&bytes[..q]) {
            return Some(q);
        }
        p = q + 1;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    /// The pre-tokens according to the `tokenizers` crate (Oniguruma running the GPT-2 regex).
    pub(crate) fn reference_pretokens(text: &str) -> Vec<String> {
        let mut pre = PreTokenizedString::from(text);
        ByteLevel::new(false, false, true).pre_tokenize(&mut pre).unwrap();
        pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| String::from_utf8(crate::bytelevel::decode(s).unwrap()).unwrap())
            .collect()
    }

    fn check(text: &str) {
        let ours = pretokens(text);
        let theirs = reference_pretokens(text);
        assert_eq!(ours, theirs, "text {text:?}");
    }

    /// Pieces of text that exercise every branch of the pattern; random strings are drawn from them.
    pub(crate) const ATOMS: &[&str] = &[
        "a", "b", "Z", "s", "t", "re", "ve", "m", "ll", "d", "e", "l", "S", "RE", "hello", "0", "7", "42", "'", "'", "''",
        "!", ".", ",", "-", "\"", "(", "$", "<", "|", ">", "_", " ", " ", " ", "  ", "\t", "\n", "\n", "\r\n", "\x0b",
        "\x0c", "\r", "\x1c", "\x1f", "\x00", "\x7f", "\u{85}", "\u{a0}", "\u{1680}", "\u{2003}", "\u{200b}",
        "\u{2028}", "\u{2029}", "\u{202f}", "\u{3000}", "\u{180e}", "\u{feff}", "é", "É", "ß", "ñ", "ǅ", "ʰ", "中",
        "文字", "ー", "한", "ا", "\u{301}", "\u{308}", "\u{94d}", "Ⅻ", "ⅰ", "²", "½", "٣", "𝟙", "😀", "👍🏽", "🇫🇷",
        "\u{fffd}", "€", "¿", "«", "»", "…", "—", "\u{e000}", "\u{10ffff}", "\u{378}", "<|endoftext|>",
    ];

    /// Byte sequences that are not UTF-8: stray continuation bytes, cut characters, a surrogate.
    const INVALID_UTF8: &[&[u8]] = &[b"\xff", b"\x80", b"\xe4\xb8", b"\xf0\x9f\x98", b"\xc3", b"\xed\xa0\x80"];

    pub(crate) fn random_text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(ATOMS), 0..40).prop_map(|v| v.concat())
    }

    #[test]
    fn known_cases() {
        assert_eq!(pretokens("Hello world"), ["Hello", " world"]);
        assert_eq!(pretokens("I'm here, they'll see"), ["I", "'m", " here", ",", " they", "'ll", " see"]);
        assert_eq!(pretokens("a  b"), ["a", " ", " b"]);
        assert_eq!(pretokens("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(pretokens("a \n b  "), ["a", " \n", " b", "  "]);
        assert_eq!(pretokens("x 42 !! "), ["x", " 42", " !!", " "]);
        assert_eq!(pretokens("'S 'sam ''s"), ["'", "S", " '", "sam", " ''", "s"]);
        assert_eq!(pretokens(""), Vec::<&str>::new());
        for t in ["Hello world", "I'm here, they'll see", "a  b", "a\n\nb", "a \n b  ", "x 42 !! ", "'S 'sam ''s"] {
            check(t);
        }
    }

    #[test]
    fn every_atom_pair_matches_tokenizers() {
        for a in ATOMS {
            for b in ATOMS {
                for text in [format!("{a}{b}"), format!("{a} {b}"), format!(" {a}{b} "), format!("{a}\n{b}x")] {
                    check(&text);
                }
            }
        }
    }

    #[test]
    fn real_text_matches_tokenizers() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/");
        for name in ["debian_reference_en.txt", "debian_reference_fr.txt"] {
            let Ok(text) = std::fs::read_to_string(format!("{dir}{name}")) else {
                eprintln!("skipping: {dir}{name} is absent");
                return;
            };
            // Compare line groups so a difference is reported with a readable context.
            let ours: Vec<&str> = pretokens(&text);
            let theirs = reference_pretokens(&text);
            if ours != theirs {
                let i = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
                panic!("{name}: first difference at pre-token {i}: {:?} vs {:?}", &ours[i.saturating_sub(3)..(i + 3).min(ours.len())], &theirs[i.saturating_sub(3)..(i + 3).min(theirs.len())]);
            }
        }
    }

    #[test]
    fn every_character_class_matches_oniguruma() {
        // One text per block of code points, every scalar value once: catches a category table
        // that disagrees with Oniguruma's (both are Unicode 16).
        let all: Vec<char> = (0..=0x10FFFFu32).filter_map(char::from_u32).collect();
        for chunk in all.chunks(4096) {
            let mut text = String::new();
            for &c in chunk {
                // "a" c "1" c " " c: the class of c decides where each boundary falls.
                text.push('a');
                text.push(c);
                text.push('1');
                text.push(c);
                text.push(' ');
                text.push(c);
                text.push('\'');
            }
            check(&text);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_text_matches_tokenizers(text in random_text()) {
            let ours = pretokens(&text);
            prop_assert_eq!(ours, reference_pretokens(&text));
        }

        #[test]
        fn safe_splits_keep_pretokens(text in random_text()) {
            let whole = pretokens(&text);
            let bytes = text.as_bytes();
            let mut p = 0;
            while let Some(q) = next_safe_split(bytes, p) {
                prop_assert!(is_safe_split(bytes, q) && q >= p.max(1));
                let mut parts = pretokens(&text[..q]);
                parts.extend(pretokens(&text[q..]));
                prop_assert_eq!(&parts, &whole, "cut at {}", q);
                p = q + 1;
            }
        }

        /// The corpus is raw bytes, decoded lossily chunk by chunk: with invalid UTF-8 around
        /// the cuts, the chunks' characters and pre-tokens must still be the whole's.
        #[test]
        fn safe_splits_keep_pretokens_of_raw_bytes(pieces in prop::collection::vec(prop_oneof![
            3 => prop::sample::select(ATOMS).prop_map(|a| a.as_bytes().to_vec()),
            1 => prop::sample::select(INVALID_UTF8).prop_map(|b| b.to_vec()),
        ], 0..40)) {
            let bytes = pieces.concat();
            let whole_text = crate::corpus::decode_lossy(&bytes).0.into_owned();
            let whole = pretokens(&whole_text);
            let mut p = 0;
            while let Some(q) = next_safe_split(&bytes, p) {
                let (left, right) = (crate::corpus::decode_lossy(&bytes[..q]).0, crate::corpus::decode_lossy(&bytes[q..]).0);
                prop_assert_eq!(format!("{left}{right}"), whole_text.clone(), "decoding cut at {}", q);
                let mut parts = pretokens(&left);
                parts.extend(pretokens(&right));
                prop_assert_eq!(&parts, &whole, "cut at {}", q);
                p = q + 1;
            }
        }
    }

    #[test]
    fn safe_split_rule() {
        let b = b"ab cd\n\n e";
        let found: Vec<usize> = (0..b.len()).filter(|&p| is_safe_split(b, p)).collect();
        assert_eq!(found, [2, 5]);
        assert_eq!(next_safe_split(b, 0), Some(2));
        assert_eq!(next_safe_split(b, 3), Some(5));
        assert_eq!(next_safe_split(b, 6), None);
        assert!(!is_safe_split(b"a ", 0) && !is_safe_split(b"a ", 2));
        // Invalid UTF-8 before the cut decodes to U+FFFD, not whitespace.
        assert_eq!(next_safe_split(b"\xff\xfex \xc3", 0), Some(3));
        assert_eq!(next_safe_split(b"\xe4\xb8 x", 0), Some(2));
        assert_eq!(next_safe_split(b" \xf0\x9f\x98\x80\x80\n", 0), Some(6));
        // Any script: after a Chinese full stop, a French é, a Cyrillic letter, an emoji.
        let zh = "第一行。\n第二行";
        assert_eq!(next_safe_split(zh.as_bytes(), 0), zh.find('\n'));
        assert_eq!(next_safe_split("café au".as_bytes(), 0), Some(5));
        assert_eq!(next_safe_split("мир\tи".as_bytes(), 0), Some(6));
        assert_eq!(next_safe_split("😀 !".as_bytes(), 0), Some(4));
        // Not after whitespace, ASCII or not (a no-break space, an ideographic space, U+0085),
        // and only before ASCII whitespace.
        for (text, expected) in [("a\u{a0} b", vec![]), ("a\u{3000}\nb", vec![]), ("a\u{85}\nb", vec![]), ("a \nb", vec![1])] {
            let cuts: Vec<usize> = (0..text.len()).filter(|&p| is_safe_split(text.as_bytes(), p)).collect();
            assert_eq!(cuts, expected, "{text:?}");
        }
    }
}
