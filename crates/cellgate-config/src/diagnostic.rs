//! Problems found in a configuration, located by line, column and key.

use std::fmt;
use std::path::PathBuf;

use crate::Config;

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line and column, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key such as `server.listen` (array items as `upstreams[2].name`).
    pub key: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn whole_file(message: String) -> Self {
        Self {
            line: None,
            column: None,
            key: None,
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_invalid(origin.as_deref(), diagnostics))]
    Invalid {
        /// The file, `environment`, or `defaults`.
        origin: Option<String>,
        diagnostics: Vec<Diagnostic>,
    },
}

fn render_invalid(origin: Option<&str>, diagnostics: &[Diagnostic]) -> String {
    let mut out = format!(
        "invalid configuration ({}): {} problem(s)",
        origin.unwrap_or("defaults"),
        diagnostics.len()
    );
    for d in diagnostics {
        out.push_str("\n  ");
        out.push_str(&d.to_string());
    }
    out
}

/// Parses and type-checks text, keeping positions: every syntax error (the
/// parser recovers and goes on), else the first type or unknown-key error.
pub(crate) fn parse_with_positions(text: &str) -> Result<Config, Vec<Diagnostic>> {
    let (_, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| located(text, e.span(), None, e.message()))
            .collect());
    }
    let de = toml::Deserializer::parse(text)
        .map_err(|e| vec![located(text, e.span(), None, e.message())])?;
    serde_path_to_error::deserialize::<_, Config>(de).map_err(|e| {
        let key = key_of(e.path());
        let inner = e.inner();
        vec![located(text, inner.span(), key, inner.message())]
    })
}

/// Type-checks a table assembled from the file and the environment.
pub(crate) fn from_table(table: toml::Table) -> Result<Config, Diagnostic> {
    serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(table)).map_err(|e| {
        Diagnostic {
            line: None,
            column: None,
            key: key_of(e.path()),
            message: e.inner().message().to_owned(),
        }
    })
}

fn key_of(path: &serde_path_to_error::Path) -> Option<String> {
    let s = path.to_string();
    (s != "." && !s.is_empty()).then_some(s)
}

fn located(
    text: &str,
    span: Option<std::ops::Range<usize>>,
    key: Option<String>,
    message: &str,
) -> Diagnostic {
    let (line, column) = match span {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    Diagnostic {
        line,
        column,
        key,
        message: message.trim_end().to_owned(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A problem found by value rules, before it is given a place in the file.
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Finds the key's line in `text`; a key that came from a default or the
    /// environment has none.
    pub fn locate(self, text: &str) -> Diagnostic {
        let span = key_span(text, &self.key);
        let (line, column) = match span {
            Some(offset) => {
                let (l, c) = line_col(text, offset);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Diagnostic {
            line,
            column,
            key: Some(self.key),
            message: self.message,
        }
    }
}

/// Byte offset of the value at a dotted key path (`a.b[2].c`).
fn key_span(text: &str, key: &str) -> Option<usize> {
    use toml::de::DeValue;
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut segments = Vec::new();
    for part in key.split('.') {
        match part.split_once('[') {
            Some((name, rest)) => {
                segments.push((name.to_owned(), None));
                for idx in rest.split('[') {
                    let n = idx.trim_end_matches(']').parse::<usize>().ok()?;
                    segments.push((String::new(), Some(n)));
                }
            }
            None => segments.push((part.to_owned(), None)),
        }
    }
    let mut table = root.get_ref();
    let mut current: Option<&toml::Spanned<DeValue<'_>>> = None;
    for (name, index) in segments {
        let value = match (index, current) {
            (Some(i), Some(v)) => match v.get_ref() {
                DeValue::Array(items) => items.get(i)?,
                _ => return None,
            },
            (None, _) => {
                if let Some(v) = current {
                    match v.get_ref() {
                        DeValue::Table(t) => table = t,
                        _ => return None,
                    }
                }
                table
                    .iter()
                    .find(|(k, _)| k.get_ref().as_ref() == name)
                    .map(|(_, v)| v)?
            }
            (Some(_), None) => return None,
        };
        current = Some(value);
    }
    current.map(|v| v.span().start)
}
