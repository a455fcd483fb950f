//! Canonical JSON and the small encodings the chain is built on.
//!
//! Canonical JSON here means: no insignificant whitespace; object members
//! sorted by the UTF-8 bytes of their keys; strings escaped exactly as
//! `serde_json` writes them (`\"`, `\\`, `\b \f \n \r \t`, other control
//! characters as `\u00XX` in lowercase hex, everything else, including
//! non-ASCII, as raw UTF-8); numbers as `serde_json` prints them (integers
//! in plain decimal, floats in the shortest form that reads back
//! identically). Two values that are equal as JSON objects up to member
//! order give the same bytes.
//!
//! This is close to RFC 8785 (JCS) but not identical: JCS orders keys by
//! UTF-16 code units (which differs from byte order only for keys with
//! characters above U+FFFF next to ones in U+E000..U+FFFF) and prints
//! floats the ECMAScript way (`1` rather than `1.0`). The rule above is the
//! one the digests are computed with; the README says so too.

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Appends the canonical JSON of `value` to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
    }
}

/// The canonical JSON of `value`.
pub fn to_canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

/// A JSON string literal, escaped the way `serde_json` escapes.
pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// SHA-256 of the canonical JSON of `value`: the argument digest recorded
/// instead of the arguments themselves.
pub fn args_digest(value: &Value) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(256);
    write_canonical(value, &mut bytes);
    Sha256::digest(&bytes).into()
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Decodes exactly `N` bytes of lowercase hex; anything else is `None`
/// (uppercase too: stored hashes have one spelling).
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_are_sorted_and_whitespace_is_gone() {
        let v = json!({ "b": 1, "a": [true, null, { "z": "x", "y": 2.5 }], "A": -3 });
        assert_eq!(
            String::from_utf8(to_canonical(&v)).ok().as_deref(),
            Some(r#"{"A":-3,"a":[true,null,{"y":2.5,"z":"x"}],"b":1}"#)
        );
    }

    #[test]
    fn member_order_does_not_change_the_digest() {
        let one: Value = serde_json::from_str(r#"{"x": {"k": 1, "j": [1, 2]}, "a": "é"}"#)
            .unwrap_or(Value::Null);
        let two: Value =
            serde_json::from_str(r#"{"a":"é","x":{"j":[1,2],"k":1}}"#).unwrap_or(Value::Null);
        assert_ne!(one, Value::Null);
        assert_eq!(args_digest(&one), args_digest(&two));
        // Different values, different digests; array order matters.
        let three = json!({ "a": "é", "x": { "j": [2, 1], "k": 1 } });
        assert_ne!(args_digest(&one), args_digest(&three));
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        let v = json!({ "q\"": "tab\tnl\nnul\u{0}é\u{1f}" });
        assert_eq!(
            String::from_utf8(to_canonical(&v)).ok().as_deref(),
            Some("{\"q\\\"\":\"tab\\tnl\\nnul\\u0000é\\u001f\"}")
        );
    }

    #[test]
    fn empty_object_digest_is_the_sha256_of_braces() {
        // sha256("{}"), computed independently.
        assert_eq!(
            to_hex(&args_digest(&json!({}))),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex::<4>("0001abff"), Some(bytes));
        assert_eq!(from_hex::<4>("0001ABFF"), None);
        assert_eq!(from_hex::<4>("0001abf"), None);
        assert_eq!(from_hex::<4>("0001abfg"), None);
        assert_eq!(from_hex::<2>("0001abff"), None);
    }
}
