//! Argument templates: `{{input.repo}}`, `{{phases.plan.output.items[0]}}`,
//! `{{steps.fetch.output}}`, `{{prev.output}}`.
//!
//! A template is a path into the workflow's state, not an expression: the
//! segments are names separated by `.`, each optionally followed by `[n]`
//! indexes. A string that is exactly one `{{…}}` becomes the value it names
//! (any JSON type); a `{{…}}` inside longer text is replaced by the value's
//! text (strings as they are, anything else as JSON).

use serde_json::{Map, Value};

/// One segment of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// A parsed `{{path}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Path {
    pub(crate) source: String,
    pub(crate) segments: Vec<Segment>,
}

impl Path {
    pub(crate) fn root(&self) -> &str {
        match self.segments.first() {
            Some(Segment::Key(k)) => k,
            _ => "",
        }
    }
    pub(crate) fn key(&self, i: usize) -> Option<&str> {
        match self.segments.get(i) {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

pub(crate) fn parse_path(source: &str) -> Result<Path, String> {
    let s = source.trim();
    if s.is_empty() {
        return Err("empty reference `{{}}`".into());
    }
    let mut segments = Vec::new();
    let mut chars = s.char_indices().peekable();
    let mut expect_key = true;
    while let Some(&(i, c)) = chars.peek() {
        if expect_key {
            if !is_ident_start(c) {
                return Err(format!(
                    "bad reference `{s}`: expected a name at offset {i}"
                ));
            }
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if !is_ident(c) {
                    break;
                }
                key.push(c);
                chars.next();
            }
            segments.push(Segment::Key(key));
            expect_key = false;
            continue;
        }
        match c {
            '.' => {
                chars.next();
                expect_key = true;
            }
            '[' => {
                chars.next();
                let mut digits = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if !c.is_ascii_digit() {
                        break;
                    }
                    digits.push(c);
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some(']') || digits.is_empty() {
                    return Err(format!(
                        "bad reference `{s}`: `[` must hold a number and close with `]`"
                    ));
                }
                let n = digits
                    .parse()
                    .map_err(|_| format!("bad reference `{s}`: index {digits} is too large"))?;
                segments.push(Segment::Index(n));
            }
            _ => {
                return Err(format!(
                    "bad reference `{s}`: unexpected {c:?} at offset {i} (references are paths like phases.plan.output.items[0], not expressions)"
                ));
            }
        }
    }
    if expect_key {
        return Err(format!("bad reference `{s}`: ends with `.`"));
    }
    Ok(Path {
        source: s.to_owned(),
        segments,
    })
}

/// A string split into literal text and references.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    Text(String),
    Ref(Path),
}

pub(crate) fn parse_template(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("`{{{{` without a closing `}}}}` in {s:?}"))?;
        pieces.push(Piece::Ref(parse_path(&after[..end])?));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// Every reference in `value` (recursively), with its location below
/// `base` (`arguments.files[0]`).
pub(crate) fn references(value: &Value, base: &str, out: &mut Vec<(String, Result<Path, String>)>) {
    match value {
        Value::String(s) => match parse_template(s) {
            Ok(pieces) => {
                for p in pieces {
                    if let Piece::Ref(path) = p {
                        out.push((base.to_owned(), Ok(path)));
                    }
                }
            }
            Err(e) => out.push((base.to_owned(), Err(e))),
        },
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                references(v, &format!("{base}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                references(v, &format!("{base}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// The value at `path` in `scope`.
pub(crate) fn lookup<'a>(scope: &'a Value, path: &Path) -> Result<&'a Value, String> {
    let mut at = scope;
    for seg in &path.segments {
        let next = match seg {
            Segment::Key(k) => at.get(k.as_str()),
            Segment::Index(i) => at.get(*i),
        };
        at = next.ok_or_else(|| format!("`{}` has no value here", path.source))?;
    }
    Ok(at)
}

/// Renders every template in `value` against `scope`.
pub(crate) fn render(value: &Value, scope: &Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) if s.contains("{{") => {
            let pieces = parse_template(s)?;
            if let [Piece::Ref(path)] = pieces.as_slice() {
                return lookup(scope, path).cloned();
            }
            let mut text = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => text.push_str(&t),
                    Piece::Ref(path) => match lookup(scope, &path)? {
                        Value::String(s) => text.push_str(s),
                        other => text.push_str(&other.to_string()),
                    },
                }
            }
            Value::String(text)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, scope)?)))
                .collect::<Result<Map<String, Value>, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_parse_and_reject() {
        let p = parse_path(" phases.plan.output.items[0].name ").unwrap();
        assert_eq!(p.segments.len(), 6);
        assert_eq!(p.segments[4], Segment::Index(0));
        for bad in ["", "a.", ".a", "a..b", "a[x]", "a[1", "a + b", "1a"] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
        assert!(parse_template("x {{input.a").is_err());
    }

    #[test]
    fn whole_references_keep_their_type() {
        let scope = json!({"input": {"n": 3, "items": ["a", "b"], "s": "x"}});
        assert_eq!(
            render(
                &json!({"k": "{{input.items}}", "t": "n={{input.n}} s={{ input.s }}"}),
                &scope
            )
            .unwrap(),
            json!({"k": ["a", "b"], "t": "n=3 s=x"})
        );
        assert_eq!(
            render(&json!("{{input.items[1]}}"), &scope).unwrap(),
            json!("b")
        );
        assert!(render(&json!("{{input.nope}}"), &scope).is_err());
    }
}
