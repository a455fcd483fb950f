//! Threat rules as data: the TOML rule file format, the built-in set
//! (`rules/default.toml`), loading extra files and compiling a set into the
//! matchers the scanner runs.

use std::collections::HashMap;
use std::path::Path;

use regex::bytes::{RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;

/// The built-in rule set, compiled into the binary.
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");

/// The name the built-in rule file goes by in errors.
pub const DEFAULT_RULES_NAME: &str = "<built-in rules/default.toml>";

/// Largest score a rule may carry.
pub const MAX_SCORE: u32 = 1000;

/// How a rule matches.
///
/// Patterns are matched against the UTF-8 bytes of a string with Unicode
/// off by default: `\w`, `\b`, `\d`, `\s` and `(?i)` are ASCII, and a
/// negated class such as `[^a-z]` also matches the bytes of non-ASCII
/// characters. This keeps all patterns in one fast automaton; a pattern that
/// needs Unicode can ask for it with `(?u:…)`, at a cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// A regular expression (`pattern`) searched in every string value.
    Regex,
    /// URLs (and whole values of URL- or host-declared fields) whose host is
    /// internal: loopback, private, link-local or metadata addresses in any
    /// encoding, internal names.
    Ssrf,
    /// `..` path segments, also percent-encoded, double-encoded, overlong
    /// UTF-8, backslashed or full-width.
    PathTraversal,
    /// A long run of base64 or hex (`encoding`, `min_length`).
    EncodedBlob,
}

impl RuleKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "regex" => Self::Regex,
            "ssrf" => Self::Ssrf,
            "path_traversal" => Self::PathTraversal,
            "encoded_blob" => Self::EncodedBlob,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regex => "regex",
            Self::Ssrf => "ssrf",
            Self::PathTraversal => "path_traversal",
            Self::EncodedBlob => "encoded_blob",
        }
    }
}

/// Where a rule looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppliesTo {
    /// Tool and prompt arguments.
    Arguments,
    /// Tool results, resource contents, prompt messages.
    Outputs,
    Both,
}

impl AppliesTo {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "arguments" => Self::Arguments,
            "outputs" => Self::Outputs,
            "both" => Self::Both,
            _ => return None,
        })
    }
    fn arguments(self) -> bool {
        matches!(self, Self::Arguments | Self::Both)
    }
    fn outputs(self) -> bool {
        matches!(self, Self::Outputs | Self::Both)
    }
}

/// The alphabet of an [`RuleKind::EncodedBlob`] rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Standard and URL-safe base64 (`A–Z a–z 0–9 + / - _`, `=` padding).
    Base64,
    /// Hexadecimal digits.
    Hex,
}

/// One rule, checked and ready to compile.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique id (`[a-z0-9._-]+`), named in block errors and the trail.
    pub id: String,
    pub description: String,
    pub kind: RuleKind,
    /// The regular expression of a `regex` rule.
    pub pattern: Option<String>,
    pub applies_to: AppliesTo,
    /// Declared field kinds the rule is limited to (`command`, `sql`, …);
    /// empty: every string.
    pub fields: Vec<String>,
    /// Added to the call's threat score when the rule matches.
    pub score: u32,
    /// `encoded_blob`: the alphabet.
    pub encoding: Encoding,
    /// `encoded_blob`: the shortest run that counts.
    pub min_length: usize,
    /// The file the rule came from (for errors).
    pub source: String,
}

/// A rule file that cannot be used. Each variant names the file; the
/// problems of one rule name its id (or its position, `#3`, without one).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule file {file}: cannot read it: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rule file {file}: {message}")]
    Syntax { file: String, message: String },
    #[error("rule file {file}, rule {rule}: {problem}")]
    Invalid {
        file: String,
        rule: String,
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    #[serde(default)]
    description: String,
    kind: String,
    pattern: Option<String>,
    #[serde(default = "both")]
    applies_to: String,
    fields: Option<Vec<String>>,
    score: i64,
    encoding: Option<String>,
    min_length: Option<u64>,
}

fn both() -> String {
    "both".into()
}

/// Parses the text of one rule file; `file` names it in errors.
pub fn parse_rules(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let syntax = |message: String| RuleError::Syntax {
        file: file.to_owned(),
        message,
    };
    let table: toml::Table =
        toml::from_str(text).map_err(|e| syntax(e.to_string().trim_end().to_owned()))?;
    if let Some(key) = table.keys().find(|k| k.as_str() != "rule") {
        return Err(syntax(format!(
            "unknown top-level key `{key}`: a rule file holds only [[rule]] tables"
        )));
    }
    let items = match table.get("rule") {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(items)) => items,
        Some(_) => {
            return Err(syntax(
                "`rule` must be an array of tables ([[rule]])".into(),
            ));
        }
    };
    let mut out: Vec<Rule> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = item
            .get("id")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("#{} (no id)", i + 1), str::to_owned);
        let invalid = |problem: String| RuleError::Invalid {
            file: file.to_owned(),
            rule: name.clone(),
            problem,
        };
        let raw: RawRule = item
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.message().trim_end().to_owned()))?;
        let rule = check(raw, file).map_err(invalid)?;
        if out.iter().any(|r| r.id == rule.id) {
            return Err(invalid(
                "the id is used by an earlier rule of this file".into(),
            ));
        }
        out.push(rule);
    }
    Ok(out)
}

fn check(raw: RawRule, file: &str) -> Result<Rule, String> {
    if raw.id.is_empty()
        || !raw.id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
    {
        return Err(format!(
            "id {:?} must be lower-case letters, digits, `.`, `_` or `-`",
            raw.id
        ));
    }
    let kind = RuleKind::parse(&raw.kind).ok_or_else(|| {
        format!(
            "unknown kind {:?}: expected \"regex\", \"ssrf\", \"path_traversal\" or \"encoded_blob\"",
            raw.kind
        )
    })?;
    let applies_to = AppliesTo::parse(&raw.applies_to).ok_or_else(|| {
        format!(
            "applies_to {:?} must be \"arguments\", \"outputs\" or \"both\"",
            raw.applies_to
        )
    })?;
    let score = u32::try_from(raw.score)
        .ok()
        .filter(|s| *s <= MAX_SCORE)
        .ok_or_else(|| format!("score {} is outside 0..={MAX_SCORE}", raw.score))?;
    let fields = raw.fields.unwrap_or_default();
    if let Some(f) = fields.iter().find(|f| f.trim().is_empty()) {
        return Err(format!("fields holds an empty kind ({f:?})"));
    }
    let fields: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
    if !fields.is_empty() && !applies_to.arguments() {
        return Err(
            "fields (declared kinds) exist only in tool input schemas: use applies_to = \"arguments\""
                .into(),
        );
    }
    match (kind, &raw.pattern) {
        (RuleKind::Regex, None) => return Err("a regex rule needs a pattern".into()),
        (RuleKind::Regex, Some(p)) => {
            RegexBuilder::new(p)
                .unicode(false)
                .build()
                .map_err(|e| format!("pattern does not compile: {e}"))?;
        }
        (_, Some(_)) => {
            return Err(format!(
                "pattern is only for regex rules, not {}",
                kind.as_str()
            ));
        }
        (_, None) => {}
    }
    let (encoding, min_length) = match kind {
        RuleKind::EncodedBlob => {
            let encoding = match raw.encoding.as_deref() {
                Some("base64") => Encoding::Base64,
                Some("hex") => Encoding::Hex,
                Some(other) => {
                    return Err(format!("encoding {other:?} must be \"base64\" or \"hex\""));
                }
                None => return Err("an encoded_blob rule needs encoding".into()),
            };
            let min = raw
                .min_length
                .ok_or("an encoded_blob rule needs min_length")?;
            if !(16..=1 << 20).contains(&min) {
                return Err(format!("min_length {min} is outside 16..=1048576"));
            }
            (encoding, min as usize)
        }
        _ => {
            if raw.encoding.is_some() || raw.min_length.is_some() {
                return Err("encoding and min_length are only for encoded_blob rules".into());
            }
            (Encoding::Base64, 0)
        }
    };
    Ok(Rule {
        id: raw.id,
        description: raw.description,
        kind,
        pattern: raw.pattern,
        applies_to,
        fields,
        score,
        encoding,
        min_length,
        source: file.to_owned(),
    })
}

/// The rules of one direction (arguments or outputs), compiled.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    /// Regex rules for every string, as one set; `general_ids[i]` is the
    /// rule of pattern `i`.
    pub general: Option<RegexSet>,
    pub general_ids: Vec<usize>,
    /// Regex rules limited to declared field kinds, by kind.
    pub by_kind: HashMap<String, (RegexSet, Vec<usize>)>,
    /// Non-regex rules, each with the kinds it is limited to (empty: all).
    pub ssrf: Vec<usize>,
    pub traversal: Vec<usize>,
    pub blobs: Vec<usize>,
    /// Whether any rule of the scope reads declared field kinds.
    pub uses_kinds: bool,
}

impl Scope {
    pub fn is_empty(&self) -> bool {
        self.general.is_none()
            && self.by_kind.is_empty()
            && self.ssrf.is_empty()
            && self.traversal.is_empty()
            && self.blobs.is_empty()
    }
}

/// A checked, compiled set of rules.
#[derive(Debug)]
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    pub(crate) arguments: Scope,
    pub(crate) outputs: Scope,
    /// Shortest `min_length` among blob rules (a string shorter than it
    /// cannot hold a blob).
    pub(crate) min_blob: usize,
}

impl RuleSet {
    /// The built-in rules alone.
    pub fn builtin() -> Self {
        let rules = parse_rules(DEFAULT_RULES_NAME, DEFAULT_RULES)
            .expect("the built-in rules are valid (checked by a unit test)");
        Self::from_rules(rules).expect("the built-in rules are valid (checked by a unit test)")
    }

    /// The built-in rules followed by those of each file in `files`.
    pub fn load<P: AsRef<Path>>(files: &[P]) -> Result<Self, RuleError> {
        let mut rules = parse_rules(DEFAULT_RULES_NAME, DEFAULT_RULES)?;
        for f in files {
            let path = f.as_ref();
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
                file: name.clone(),
                source,
            })?;
            rules.extend(parse_rules(&name, &text)?);
        }
        Self::from_rules(rules)
    }

    /// Compiles rules (from [`parse_rules`]); ids must be unique across them.
    pub fn from_rules(rules: Vec<Rule>) -> Result<Self, RuleError> {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for r in &rules {
            if let Some(first) = seen.insert(&r.id, &r.source) {
                return Err(RuleError::Invalid {
                    file: r.source.clone(),
                    rule: r.id.clone(),
                    problem: format!("the id is already used by a rule in {first}"),
                });
            }
        }
        let arguments = compile_scope(&rules, AppliesTo::arguments)?;
        let outputs = compile_scope(&rules, AppliesTo::outputs)?;
        let min_blob = rules
            .iter()
            .filter(|r| r.kind == RuleKind::EncodedBlob)
            .map(|r| r.min_length)
            .min()
            .unwrap_or(usize::MAX);
        Ok(Self {
            rules,
            arguments,
            outputs,
            min_blob,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

fn compile_scope(rules: &[Rule], wants: fn(AppliesTo) -> bool) -> Result<Scope, RuleError> {
    let mut scope = Scope::default();
    let mut general = Vec::new();
    let mut by_kind: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        if !wants(r.applies_to) {
            continue;
        }
        // SSRF rules read declared URL and host fields even without `fields`.
        scope.uses_kinds |= !r.fields.is_empty() || r.kind == RuleKind::Ssrf;
        match r.kind {
            RuleKind::Regex if r.fields.is_empty() => general.push(i),
            RuleKind::Regex => {
                for f in &r.fields {
                    by_kind.entry(f.clone()).or_default().push(i);
                }
            }
            RuleKind::Ssrf => scope.ssrf.push(i),
            RuleKind::PathTraversal => scope.traversal.push(i),
            RuleKind::EncodedBlob => scope.blobs.push(i),
        }
    }
    let set = |ids: &[usize]| {
        RegexSetBuilder::new(
            ids.iter()
                .map(|&i| rules[i].pattern.as_deref().unwrap_or("")),
        )
        .unicode(false)
        .build()
        .map_err(|e| RuleError::Invalid {
            file: rules[ids[0]].source.clone(),
            rule: ids
                .iter()
                .map(|&i| rules[i].id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            problem: format!("the patterns do not compile together: {e}"),
        })
    };
    if !general.is_empty() {
        scope.general = Some(set(&general)?);
        scope.general_ids = general;
    }
    for (kind, ids) in by_kind {
        let s = set(&ids)?;
        scope.by_kind.insert(kind, (s, ids));
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_rules("extra.toml", text)
            .and_then(RuleSet::from_rules)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_builtin_rules_load() {
        let set = RuleSet::builtin();
        assert!(set.rules().len() >= 15, "{}", set.rules().len());
        for id in [
            "injection.ignore_instructions",
            "path.traversal",
            "ssrf.internal_target",
            "command.shell_metachar",
            "sql.tautology",
            "exfil.base64",
            "exfil.hex",
        ] {
            assert!(set.get(id).is_some(), "{id}");
        }
        assert!(!set.arguments.is_empty() && !set.outputs.is_empty());
        assert!(set.arguments.uses_kinds);
        assert!(set.arguments.by_kind.contains_key("command"));
        assert!(set.arguments.by_kind.contains_key("sql"));
        assert!(set.rules().iter().all(|r| !r.description.is_empty()));
    }

    #[test]
    fn rule_file_errors_name_file_rule_and_problem() {
        let cases = [
            (
                "[[rule]]\nid = \"a\"\nkind = \"regex\"\npattern = \"(\"\nscore = 5\n",
                "rule a: pattern does not compile",
            ),
            (
                "[[rule]]\nid = \"b\"\nkind = \"telepathy\"\nscore = 5\n",
                "rule b: unknown kind \"telepathy\"",
            ),
            (
                "[[rule]]\nid = \"c\"\nkind = \"regex\"\nscore = 5\n",
                "rule c: a regex rule needs a pattern",
            ),
            (
                "[[rule]]\nid = \"d\"\nkind = \"regex\"\npattern = \"x\"\nscore = 5000\n",
                "rule d: score 5000 is outside 0..=1000",
            ),
            (
                "[[rule]]\nid = \"e\"\nkind = \"regex\"\npattern = \"x\"\nscore = 5\npatern = 1\n",
                "rule e: unknown field `patern`",
            ),
            (
                "[[rule]]\nkind = \"regex\"\npattern = \"x\"\nscore = 5\n",
                "rule #1 (no id): missing field `id`",
            ),
            (
                "[[rule]]\nid = \"f\"\nkind = \"encoded_blob\"\nencoding = \"base64\"\nscore = 5\n",
                "rule f: an encoded_blob rule needs min_length",
            ),
            (
                "[[rule]]\nid = \"g\"\nkind = \"ssrf\"\npattern = \"x\"\nscore = 5\n",
                "rule g: pattern is only for regex rules",
            ),
            (
                "[[rule]]\nid = \"h\"\nkind = \"regex\"\npattern = \"x\"\nscore = 5\napplies_to = \"outputs\"\nfields = [\"sql\"]\n",
                "rule h: fields (declared kinds) exist only",
            ),
            (
                "[[rule]]\nid = \"Bad Id\"\nkind = \"regex\"\npattern = \"x\"\nscore = 5\n",
                "rule Bad Id: id \"Bad Id\" must be",
            ),
            (
                "[[rule]]\nid = \"i\"\nkind = \"regex\"\npattern = \"x\"\nscore = 5\n[[rule]]\nid = \"i\"\nkind = \"regex\"\npattern = \"y\"\nscore = 5\n",
                "rule i: the id is used by an earlier rule",
            ),
            (
                "[[rule]]\nid = \"j\"\nkind = \"regex\"\npattern = \"x\"\nscore = 5\napplies_to = \"inputs\"\n",
                "rule j: applies_to \"inputs\"",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.starts_with("rule file extra.toml"), "{e}");
            assert!(e.contains(want), "want {want:?} in {e}");
        }
        let e = err("[[rule]\nid = 1");
        assert!(e.starts_with("rule file extra.toml: "), "{e}");
        let e = err("[rules]\nx = 1\n");
        assert!(e.contains("unknown top-level key `rules`"), "{e}");
    }

    #[test]
    fn ids_must_be_unique_across_files() {
        let mut rules = parse_rules(DEFAULT_RULES_NAME, DEFAULT_RULES).unwrap();
        rules.extend(
            parse_rules(
                "mine.toml",
                "[[rule]]\nid = \"path.traversal\"\nkind = \"regex\"\npattern = \"x\"\nscore = 1\n",
            )
            .unwrap(),
        );
        let e = RuleSet::from_rules(rules).unwrap_err().to_string();
        assert!(
            e.contains(
                "mine.toml, rule path.traversal: the id is already used by a rule in <built-in"
            ),
            "{e}"
        );
    }

    #[test]
    fn extra_files_are_loaded_and_unreadable_ones_named() {
        let dir =
            std::env::temp_dir().join(format!("cellgate-inspect-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("extra.toml");
        std::fs::write(
            &path,
            "[[rule]]\nid = \"acme.codename\"\ndescription = \"internal code name\"\nkind = \"regex\"\npattern = \"(?i)project\\\\s+bluebird\"\napplies_to = \"both\"\nscore = 40\n",
        )
        .unwrap();
        let set = RuleSet::load(&[&path]).unwrap();
        assert_eq!(set.get("acme.codename").unwrap().score, 40);
        let missing = dir.join("missing.toml");
        let e = RuleSet::load(&[&missing]).unwrap_err();
        assert!(matches!(e, RuleError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
