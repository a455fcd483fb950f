//! Text helpers shared by the detectors: decoding views of a string,
//! path-traversal and encoded-blob recognition.

use std::borrow::Cow;

/// Percent-decodes `s` once. Invalid escapes stay as they are; bytes that do
/// not form UTF-8 become U+FFFD.
pub(crate) fn percent_decode_once(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(decode_overlong(e.as_bytes())),
    }
}

/// Percent-decodes until nothing changes (at most three rounds: double and
/// triple encoding).
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    let mut cur = Cow::Borrowed(s);
    for _ in 0..3 {
        match percent_decode_once(&cur) {
            Cow::Borrowed(_) => break,
            Cow::Owned(next) => {
                if next == *cur {
                    break;
                }
                cur = Cow::Owned(next);
            }
        }
    }
    cur
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes bytes that are not valid UTF-8, reading overlong encodings of
/// ASCII (`C0 AE` for `.`, `E0 80 AF` for `/`) as the character they spell,
/// as some servers do; other invalid bytes become U+FFFD.
fn decode_overlong(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match std::str::from_utf8(&b[i..]) {
            Ok(rest) => {
                out.push_str(rest);
                break;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(std::str::from_utf8(&b[i..i + good]).unwrap_or_default());
                i += good;
                if i + 1 < b.len() && (b[i] == 0xC0 || b[i] == 0xC1) && b[i + 1] & 0xC0 == 0x80 {
                    out.push(char::from(((b[i] & 0x1F) << 6) | (b[i + 1] & 0x3F)));
                    i += 2;
                } else if i + 2 < b.len()
                    && b[i] == 0xE0
                    && b[i + 1] & 0xE0 == 0x80
                    && b[i + 2] & 0xC0 == 0x80
                {
                    let v = (u32::from(b[i + 1] & 0x3F) << 6) | u32::from(b[i + 2] & 0x3F);
                    out.push(char::from_u32(v).unwrap_or('\u{FFFD}'));
                    i += 3;
                } else {
                    out.push('\u{FFFD}');
                    i += e.error_len().unwrap_or(b.len() - i).max(1);
                }
            }
        }
    }
    out
}

/// Invisible characters used to split words so that patterns miss them.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// `s` without invisible characters, if it has any.
pub(crate) fn strip_invisible(s: &str) -> Option<String> {
    if s.is_ascii() || !s.chars().any(is_invisible) {
        return None;
    }
    Some(s.chars().filter(|c| !is_invisible(*c)).collect())
}

/// Whether `s` holds a `..` path segment, after undoing the encodings used
/// to slip one past filters: percent-encoding (also double), overlong UTF-8,
/// backslashes and full-width dots and slashes.
pub(crate) fn has_traversal(s: &str) -> bool {
    if !(s.contains("..") || s.contains('%') || s.contains('\u{FF0E}')) {
        return false;
    }
    let decoded = percent_decode(s);
    let text: Cow<'_, str> = if decoded.contains(['\\', '\u{FF0E}', '\u{FF0F}', '\u{2215}']) {
        Cow::Owned(
            decoded
                .chars()
                .map(|c| match c {
                    '\\' | '\u{FF0F}' | '\u{2215}' => '/',
                    '\u{FF0E}' => '.',
                    c => c,
                })
                .collect(),
        )
    } else {
        decoded
    };
    if text.trim() == ".." {
        return true;
    }
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'.' {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i] == b'.' {
            i += 1;
        }
        let run = i - start;
        // `...` alone is an ellipsis; `....` survives filters that strip `../`.
        if run == 1 || run == 3 {
            continue;
        }
        let before = start.checked_sub(1).map(|j| b[j]);
        let after = b.get(i).copied();
        let bounded_before = matches!(
            before,
            None | Some(b'/' | b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'=' | b':' | b'(')
        );
        let bounded_after = matches!(
            after,
            None | Some(b'/' | b';' | b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'?' | b'#' | b')')
        );
        if bounded_before && bounded_after && (before == Some(b'/') || after == Some(b'/')) {
            return true;
        }
    }
    false
}

/// Whether `s` holds a run of `min` or more characters of the encoding.
pub(crate) fn has_blob(s: &str, encoding: crate::rules::Encoding, min: usize) -> bool {
    if s.len() < min {
        return false;
    }
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let in_alphabet = |c: u8| match encoding {
            crate::rules::Encoding::Base64 => {
                c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_' | b'=')
            }
            crate::rules::Encoding::Hex => c.is_ascii_hexdigit(),
        };
        if !in_alphabet(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let (mut digit, mut upper, mut lower, mut slash, mut letters) = (false, false, false, 0, 0);
        while i < b.len() {
            let c = b[i];
            if in_alphabet(c) {
                digit |= c.is_ascii_digit();
                upper |= c.is_ascii_uppercase();
                lower |= c.is_ascii_lowercase();
                letters += usize::from(c.is_ascii_alphabetic());
                slash += usize::from(c == b'/');
                i += 1;
            } else if matches!(c, b'\r' | b'\n') && encoding == crate::rules::Encoding::Base64 {
                // MIME base64 breaks lines.
                i += 1;
            } else {
                break;
            }
        }
        let len = i - start;
        if len < min {
            continue;
        }
        let hit = match encoding {
            // Random base64 mixes cases and digits; a path has many slashes.
            crate::rules::Encoding::Base64 => digit && upper && lower && slash * 16 <= len,
            crate::rules::Encoding::Hex => digit && letters > 0,
        };
        if hit {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Encoding;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2e%2E%2fb"), "a../b");
        assert_eq!(percent_decode("%252e%252e%252f"), "../");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%c0%ae%c0%ae%c0%af"), "../");
        assert_eq!(percent_decode("%e0%80%ae."), "..");
        assert!(matches!(percent_decode("plain"), Cow::Borrowed(_)));
        assert_eq!(strip_invisible("ig\u{200B}nore").as_deref(), Some("ignore"));
        assert_eq!(strip_invisible("naïve"), None);
    }

    #[test]
    fn traversal() {
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "..\\..\\windows",
            "%2e%2e%2fsecret",
            "%2E%2E/x",
            "..%2f..%2fx",
            "%252e%252e%252fx",
            "%c0%ae%c0%ae%c0%afx",
            "\u{FF0E}\u{FF0E}/x",
            "....//....//etc",
            "/var/www/..",
            "..",
            "x/..;/admin",
            "cat ../secret",
        ] {
            assert!(has_traversal(bad), "{bad}");
        }
        for ok in [
            "wait...",
            "1 .. 5",
            "file..txt",
            "./local/file",
            "version 1.2.3",
            "see ... /x",
            "100%",
            "a.b/c.d",
        ] {
            assert!(!has_traversal(ok), "{ok}");
        }
    }

    #[test]
    fn blobs() {
        let b64 =
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0MjQyNDI0MjQyYWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo=";
        assert!(has_blob(b64, Encoding::Base64, 64));
        assert!(!has_blob(b64, Encoding::Base64, 200));
        assert!(!has_blob("SGVsbG8gd29ybGQ=", Encoding::Base64, 16 + 1));
        let path = "/api/v1/Users/12345/Orders/67890/Items/ABCDE/Details/xyz/More/Segments/Here/And/There/9/8/7/6/5/4/3/2/1/Zz";
        assert!(!has_blob(path, Encoding::Base64, 64));
        let hex = "deadbeef0123456789".repeat(8);
        assert!(has_blob(&hex, Encoding::Hex, 128));
        assert!(!has_blob(&"1".repeat(200), Encoding::Hex, 128));
        assert!(!has_blob(&"abc".repeat(100), Encoding::Base64, 128));
    }
}
