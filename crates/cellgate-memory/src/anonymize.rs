//! Redaction of what `elevate_knowledge` copies into the shared space. The
//! personal-data detection is the content filter's (`cellgate-inspect`),
//! run with every category set to redact; this module adds only what the
//! filter cannot know: the private owner's own identifier.

use std::sync::Arc;

use cellgate_inspect::{Action, ContentFilterStage, Detectors, FilterPolicy, StaticFilterPolicies};
use serde_json::Value;

/// Redacts personal data and a given identity from JSON documents.
pub struct Anonymizer {
    filter: ContentFilterStage,
    policy: FilterPolicy,
}

/// What replaces the owner's identifier.
const OWNER_PLACEHOLDER: &str = "[REDACTED:principal]";

impl Anonymizer {
    /// Redacts with these detectors (pass the configured ones, with the
    /// instance's national-id patterns, to match the content filter).
    pub fn new(detectors: Detectors) -> Self {
        Self {
            filter: ContentFilterStage::new(detectors, Arc::new(StaticFilterPolicies::default())),
            policy: FilterPolicy::uniform(Action::Redact),
        }
    }

    /// The built-in detectors only.
    pub fn builtin() -> Self {
        // The built-in patterns are compiled and tested by cellgate-inspect;
        // with no extra national-id pattern nothing can fail to compile.
        match Detectors::new(&[]) {
            Ok(d) => Self::new(d),
            Err(e) => unreachable!("built-in detectors always compile: {e}"),
        }
    }

    /// Redacts `doc` in place; returns the number of replacements.
    /// `owner`, when given, is replaced wherever it appears (ignoring case).
    pub fn redact(&self, doc: &mut Value, owner: Option<&str>) -> usize {
        let outcome = self.filter.filter(&self.policy, doc, false);
        let mut count = outcome.redacted;
        if let Some(owner) = owner.filter(|o| o.chars().count() >= 3) {
            count += replace_owner(doc, owner);
        }
        count
    }

    /// Redacts one string.
    pub fn redact_text(&self, text: &str, owner: Option<&str>) -> (String, usize) {
        let mut doc = Value::String(text.to_owned());
        let n = self.redact(&mut doc, owner);
        match doc {
            Value::String(s) => (s, n),
            other => (other.to_string(), n),
        }
    }
}

fn replace_owner(doc: &mut Value, owner: &str) -> usize {
    match doc {
        Value::String(s) => {
            let (out, n) = replace_ignoring_case(s, owner);
            if n > 0 {
                *s = out;
            }
            n
        }
        Value::Array(items) => items.iter_mut().map(|v| replace_owner(v, owner)).sum(),
        Value::Object(map) => map.values_mut().map(|v| replace_owner(v, owner)).sum(),
        _ => 0,
    }
}

fn replace_ignoring_case(text: &str, needle: &str) -> (String, usize) {
    let lower_text = text.to_lowercase();
    let lower_needle = needle.to_lowercase();
    // Lower-casing can change byte lengths outside ASCII; then fall back to
    // exact matching rather than cut at the wrong place.
    if lower_text.len() != text.len() || lower_needle.len() != needle.len() {
        let n = text.matches(needle).count();
        return (text.replace(needle, OWNER_PLACEHOLDER), n);
    }
    let mut out = String::with_capacity(text.len());
    let mut n = 0;
    let mut rest = 0;
    for (at, _) in lower_text.match_indices(&lower_needle) {
        if at < rest {
            continue;
        }
        out.push_str(&text[rest..at]);
        out.push_str(OWNER_PLACEHOLDER);
        rest = at + needle.len();
        n += 1;
    }
    out.push_str(&text[rest..]);
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_filter_findings_and_the_owner() {
        let a = Anonymizer::builtin();
        let mut doc = json!({"note": "Mail alice@example.com or call +1 415 555 0100; Alice said hi", "n": 3});
        let n = a.redact(&mut doc, Some("alice"));
        let text = doc["note"].as_str().unwrap_or_default();
        assert!(!text.contains("alice@example.com"), "{text}");
        assert!(!text.to_lowercase().contains("alice"), "{text}");
        assert!(text.contains("[REDACTED:email]"), "{text}");
        assert!(n >= 3, "{n}: {text}");
        assert_eq!(doc["n"], 3);
    }

    #[test]
    fn clean_text_is_unchanged() {
        let (s, n) = Anonymizer::builtin().redact_text("the build uses cargo", Some("bob"));
        assert_eq!((s.as_str(), n), ("the build uses cargo", 0));
    }
}
