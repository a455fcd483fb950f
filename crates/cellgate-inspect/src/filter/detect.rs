//! The content filter's detectors: a regular expression that finds
//! candidates (concept extraction) and a check that confirms them
//! (classification): Luhn for cards, mod-97 for IBANs, digit counts and
//! boundaries for phone numbers, address parsing for IPs.

use std::net::{Ipv4Addr, Ipv6Addr};

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use crate::InspectError;

/// What a detector finds; each category has one action in a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Email,
    Phone,
    Card,
    Iban,
    NationalId,
    Ip,
    Secret,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::Email,
        Category::Phone,
        Category::Card,
        Category::Iban,
        Category::NationalId,
        Category::Ip,
        Category::Secret,
    ];

    /// The name used in the configuration (`filter.actions.<name>`) and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Email => "email",
            Category::Phone => "phone",
            Category::Card => "card",
            Category::Iban => "iban",
            Category::NationalId => "national_id",
            Category::Ip => "ip",
            Category::Secret => "secret",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// How a candidate is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The match is the finding.
    None,
    Phone,
    Card,
    Iban,
    Ipv4,
    Ipv6,
    /// A secret assignment: the value must not be a placeholder.
    Assignment,
}

/// One detector.
#[derive(Debug)]
pub(crate) struct Detector {
    pub category: Category,
    /// The concept tag (`pii.email`, `secret.aws_key`, …).
    pub tag: String,
    /// The placeholder that replaces a redacted finding (`[REDACTED:email]`).
    pub placeholder: String,
    regex: Regex,
    check: Check,
    /// The finding is the capture group `v`, not the whole match.
    group: bool,
}

/// A confirmed finding: detector `det` at bytes `start..end` of a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub det: usize,
    pub start: usize,
    pub end: usize,
}

/// All detectors, with one set of their patterns to find in a single pass
/// which of them can match a string at all.
#[derive(Debug)]
pub struct Detectors {
    list: Vec<Detector>,
    set: RegexSet,
}

const BUILTIN: &[(Category, &str, &str, &str, Check)] = &[
    (
        Category::Email,
        "pii.email",
        "email",
        r"(?i)\b[a-z0-9._%+-]{1,64}@(?:[a-z0-9-]{1,63}\.)+[a-z]{2,24}\b",
        Check::None,
    ),
    (
        Category::Phone,
        "pii.phone",
        "phone",
        r"\+[1-9]\d{0,2}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){1,4}\b|(?:\(\d{3}\)[ .\-]?|\b\d{3}[ .\-])\d{3}[ .\-]\d{4}\b",
        Check::Phone,
    ),
    (
        Category::Card,
        "finance.card",
        "card",
        r"\b\d(?:[ \-]?\d){12,18}\b",
        Check::Card,
    ),
    (
        Category::Iban,
        "finance.iban",
        "iban",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
        Check::Iban,
    ),
    (
        Category::Ip,
        "net.ip",
        "ip",
        r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
        Check::Ipv4,
    ),
    (
        Category::Ip,
        "net.ip",
        "ip",
        r"(?i)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}",
        Check::Ipv6,
    ),
    (
        Category::Secret,
        "secret.private_key",
        "private_key",
        r"-----BEGIN[A-Z ]{0,24} PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END[A-Z ]{0,24} PRIVATE KEY(?: BLOCK)?-----|\z)",
        Check::None,
    ),
    (
        Category::Secret,
        "secret.aws_key",
        "aws_key",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA)[A-Z2-7]{16}\b",
        Check::None,
    ),
    (
        Category::Secret,
        "secret.aws_secret",
        "aws_secret",
        r"(?is)aws.{0,12}secret.{0,32}?(?P<v>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)",
        Check::None,
    ),
    (
        Category::Secret,
        "secret.jwt",
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
        Check::None,
    ),
    (
        Category::Secret,
        "secret.github_token",
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,250})\b",
        Check::None,
    ),
    (
        Category::Secret,
        "secret.slack_token",
        "slack_token",
        r"\bxox[abposr]-[A-Za-z0-9-]{10,250}|https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+",
        Check::None,
    ),
    (
        Category::Secret,
        "secret.openai_key",
        "openai_key",
        r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}",
        Check::None,
    ),
    (
        Category::Secret,
        "secret.stripe_key",
        "stripe_key",
        r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
        Check::None,
    ),
    (
        Category::Secret,
        "secret.api_key",
        "api_key",
        r#"(?i)\b(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|secret[_-]?key|client[_-]?secret|private[_-]?token|password|passwd)["']?\s*[:=]\s*["']?(?P<v>[^\s"'&,;<>\[\]{}]{8,})"#,
        Check::Assignment,
    ),
];

impl Detectors {
    /// The built-in detectors plus one per named national-id pattern.
    pub fn new(national_ids: &[(String, String)]) -> Result<Self, InspectError> {
        let mut list = Vec::new();
        for &(category, tag, label, pattern, check) in BUILTIN {
            list.push(Detector {
                category,
                tag: tag.into(),
                placeholder: format!("[REDACTED:{label}]"),
                regex: compile(pattern).expect("built-in detector patterns compile (tested)"),
                check,
                group: false,
            });
        }
        for (i, (name, pattern)) in national_ids.iter().enumerate() {
            let regex = compile(pattern).map_err(|e| {
                InspectError::config(
                    format!("filter.national_ids[{i}].pattern"),
                    format!("the pattern of {name:?} does not compile: {e}"),
                )
            })?;
            list.push(Detector {
                category: Category::NationalId,
                tag: format!("pii.national_id.{name}"),
                placeholder: format!("[REDACTED:{name}]"),
                regex,
                check: Check::None,
                group: false,
            });
        }
        for d in &mut list {
            d.group = d.regex.capture_names().any(|n| n == Some("v"));
        }
        let set = RegexSetBuilder::new(list.iter().map(|d| d.regex.as_str()))
            .unicode(false)
            .build()
            .map_err(|e| {
                InspectError::config(
                    "filter.national_ids",
                    format!("the patterns do not compile together: {e}"),
                )
            })?;
        Ok(Self { list, set })
    }

    pub(crate) fn get(&self, det: usize) -> &Detector {
        &self.list[det]
    }

    /// Concept extraction: the raw candidates in `s`, as (detector, start,
    /// end). `out` is only touched when something may match.
    pub(crate) fn extract(&self, s: &str, mut each: impl FnMut(Span)) {
        let b = s.as_bytes();
        let m = self.set.matches(b);
        if !m.matched_any() {
            return;
        }
        // Patterns run on bytes: widen each span to whole characters.
        let mut span = |det, start, end| {
            each(Span {
                det,
                start: s.floor_char_boundary(start),
                end: s.ceil_char_boundary(end),
            })
        };
        for det in m.iter() {
            let d = &self.list[det];
            if d.group {
                for c in d.regex.captures_iter(b) {
                    if let Some(v) = c.name("v") {
                        span(det, v.start(), v.end());
                    }
                }
            } else {
                for f in d.regex.find_iter(b) {
                    span(det, f.start(), f.end());
                }
            }
        }
    }

    /// Classification: confirms a candidate (and may narrow it, as for an
    /// IBAN followed by more capitals). `None`: not a finding.
    pub(crate) fn classify(&self, s: &str, c: Span) -> Option<Span> {
        let d = &self.list[c.det];
        let text = &s[c.start..c.end];
        let before = s[..c.start].chars().next_back();
        let after = s[c.end..].chars().next();
        match d.check {
            Check::None => Some(c),
            Check::Phone => phone_ok(text, before).then_some(c),
            Check::Card => (before != Some('+') && card_ok(text)).then_some(c),
            Check::Iban => iban_len(text).map(|len| Span {
                end: c.start + len,
                ..c
            }),
            Check::Ipv4 => {
                let dotted_before = before == Some('.');
                let dotted_after = after == Some('.')
                    && s[c.end + 1..].starts_with(|ch: char| ch.is_ascii_digit());
                (!dotted_before && !dotted_after && text.parse::<Ipv4Addr>().is_ok()).then_some(c)
            }
            Check::Ipv6 => {
                let glued = before.is_some_and(|b| b.is_alphanumeric() || b == '_' || b == ':')
                    || after.is_some_and(|a| a.is_alphanumeric() || a == '_');
                // `a::b` parses, but text like that is rarely an address.
                let groups = text.split(':').filter(|g| !g.is_empty()).count();
                let ok = !glued
                    && text.bytes().any(|b| b.is_ascii_digit())
                    && (groups >= 2 || text.starts_with("::"))
                    && text.parse::<Ipv6Addr>().is_ok();
                ok.then_some(c)
            }
            Check::Assignment => {
                let placeholder = text.starts_with("[REDACTED")
                    || text.starts_with('$')
                    || text.chars().all(|ch| ch == '*' || ch == 'x' || ch == 'X');
                (!placeholder).then_some(c)
            }
        }
    }
}

/// Patterns run on UTF-8 bytes with ASCII classes (`\d`, `\b`, `(?i)`):
/// one fast automaton for all of them, whatever the text.
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).unicode(false).build()
}

fn phone_ok(text: &str, before: Option<char>) -> bool {
    // Part of an identifier, a path or a version (ORD-555-123-4567, v1.555…).
    if before.is_some_and(|b| b.is_alphanumeric() || matches!(b, '-' | '_' | '/' | '.' | '#')) {
        return false;
    }
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_digit).collect();
    if let Some(rest) = text.strip_prefix('+') {
        let n = digits.len();
        // E.164: at most 15 digits; a country code and a subscriber number.
        return (8..=15).contains(&n) && rest.contains([' ', '-', '.', '('])
            || (10..=15).contains(&n);
    }
    // North American: NXX-NXX-XXXX.
    digits.len() == 10 && digits[0] >= b'2' && digits[3] >= b'2'
}

/// A 13–19 digit number with a plausible issuer prefix that passes Luhn.
pub(crate) fn card_ok(text: &str) -> bool {
    let digits: Vec<u8> = text
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    (13..=19).contains(&digits.len()) && (2..=6).contains(&digits[0]) && luhn(&digits)
}

/// The Luhn checksum of decimal digits (0–9 values).
pub fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// IBAN lengths by country (the SWIFT registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HN", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MN", 20),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
    ("YE", 30),
];

/// If `text` starts with a valid IBAN (its country's length, mod-97 = 1),
/// the byte length of that IBAN within `text` (spaces included).
fn iban_len(text: &str) -> Option<usize> {
    let country = text.get(..2)?;
    let (_, want) = IBAN_LENGTHS.iter().find(|(c, _)| *c == country)?;
    let mut compact = String::with_capacity(*want);
    let mut end = 0;
    for (i, ch) in text.char_indices() {
        if ch == ' ' {
            continue;
        }
        compact.push(ch);
        if compact.len() == *want {
            end = i + ch.len_utf8();
            break;
        }
    }
    (compact.len() == *want && iban_ok(&compact)).then_some(end)
}

/// The ISO 13616 check: move the first four characters to the end, turn
/// letters into numbers (A = 10 … Z = 35), and the result mod 97 is 1.
pub fn iban_ok(iban: &str) -> bool {
    let b = iban.as_bytes();
    if b.len() < 15 || !b.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            b'a'..=b'z' => u32::from(c - b'a') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(d: &Detectors, s: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.extract(s, |c| {
            if let Some(c) = d.classify(s, c) {
                out.push((d.get(c.det).tag.clone(), s[c.start..c.end].to_owned()));
            }
        });
        out
    }

    fn detectors() -> Detectors {
        Detectors::new(&[(
            "us_ssn".into(),
            cellgate_config::FilterConfig::default().national_ids[0]
                .pattern
                .clone(),
        )])
        .unwrap()
    }

    #[test]
    fn luhn_and_cards() {
        let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        for ok in [
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "79927398713",
        ] {
            assert!(luhn(&digits(ok)), "{ok}");
        }
        for bad in ["4111111111111112", "1234567812345678", "0"] {
            assert!(!luhn(&digits(bad)) || bad == "0", "{bad}");
        }
        assert!(card_ok("4111 1111 1111 1111"));
        assert!(card_ok("3782-822463-10005"));
        assert!(!card_ok("4111 1111 1111 1112"), "fails Luhn");
        assert!(!card_ok("79927398713"), "too short");
        assert!(!card_ok("1000000000000009"), "no issuer starts with 1");
    }

    #[test]
    fn iban_mod97() {
        for ok in [
            "DE89370400440532013000",
            "GB82WEST12345698765432",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
        ] {
            assert!(iban_ok(ok), "{ok}");
        }
        for bad in ["DE89370400440532013001", "GB82WEST12345698765433", "XX00"] {
            assert!(!iban_ok(bad), "{bad}");
        }
        assert_eq!(iban_len("DE89 3704 0044 0532 0130 00 THANKS"), Some(27));
        assert_eq!(
            iban_len("ZZ89 3704 0044 0532 0130 00"),
            None,
            "unknown country"
        );
    }

    #[test]
    fn detectors_find_and_confirm() {
        let d = detectors();
        let cases: &[(&str, &str, &str)] = &[
            (
                "mail jane.doe+x@example.co.uk now",
                "pii.email",
                "jane.doe+x@example.co.uk",
            ),
            ("call +44 20 7946 0958.", "pii.phone", "+44 20 7946 0958"),
            ("call +1 (415) 555-2671", "pii.phone", "+1 (415) 555-2671"),
            ("or (415) 555-2671", "pii.phone", "(415) 555-2671"),
            ("or 415-555-2671", "pii.phone", "415-555-2671"),
            (
                "card 4111 1111 1111 1111 ok",
                "finance.card",
                "4111 1111 1111 1111",
            ),
            (
                "pay to DE89 3704 0044 0532 0130 00 THANKS",
                "finance.iban",
                "DE89 3704 0044 0532 0130 00",
            ),
            ("ssn 123-45-6789", "pii.national_id.us_ssn", "123-45-6789"),
            ("host 192.168.1.20 up", "net.ip", "192.168.1.20"),
            ("host 2001:db8::1 up", "net.ip", "2001:db8::1"),
            (
                "AKIAIOSFODNN7EXAMPLE",
                "secret.aws_key",
                "AKIAIOSFODNN7EXAMPLE",
            ),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
                "secret.aws_secret",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
            (
                "t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig_nature-1",
                "secret.jwt",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig_nature-1",
            ),
            (
                "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "secret.github_token",
                "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            ),
            (
                "xoxb-123456789012-abcdefghij",
                "secret.slack_token",
                "xoxb-123456789012-abcdefghij",
            ),
            (
                "key sk-proj-abcdefghijklmnopqrstuv123",
                "secret.openai_key",
                "sk-proj-abcdefghijklmnopqrstuv123",
            ),
            (
                "{\"api_key\": \"z9y8x7w6v5u4\"}",
                "secret.api_key",
                "z9y8x7w6v5u4",
            ),
            (
                "password=correcthorsebattery",
                "secret.api_key",
                "correcthorsebattery",
            ),
        ];
        for (text, tag, value) in cases {
            let f = found(&d, text);
            assert!(
                f.iter().any(|(t, v)| t == tag && v == value),
                "{text:?}: want {tag} {value:?}, got {f:?}"
            );
        }
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        assert_eq!(
            found(&d, pem),
            vec![("secret.private_key".into(), pem.into())]
        );
    }

    #[test]
    fn look_alikes_are_not_findings() {
        let d = detectors();
        for s in [
            "meeting on 2024-01-15 at 10:30",
            "order ORD-555-123-4567 shipped",
            "order number 20240115000123",
            "invoice 1234567890",
            "4111 1111 1111 1112",
            "timestamp 1700000000000",
            "version 1.2.3.4.5",
            "std::io::Result and a::b",
            "mac 00:1a:2b:3c:4d:5e",
            "at 12:30:45",
            "password: must be long",
            "api_key=${API_KEY}",
            "call 123-456-7890",
            "the ratio is 3.14159",
            "id 000-12-3456",
        ] {
            assert_eq!(found(&d, s), vec![], "{s:?}");
        }
    }
}
