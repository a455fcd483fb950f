//! `CELLGATE_*` overrides. The list of variables is derived from the JSON
//! Schema, so a key added to the types is overridable without further work.

use serde_json::Value;

use crate::Diagnostic;

const PREFIX: &str = "CELLGATE_";

/// What kind of text a variable must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Integer,
    Number,
    String,
    /// A TOML array (`["a", "b"]`) or comma-separated strings.
    Array,
    /// A TOML inline table.
    Table,
}

#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub path: Vec<String>,
    pub var: String,
    pub kind: Kind,
}

/// Every overridable key of the schema.
pub(crate) fn leaves(schema: &Value) -> Vec<Leaf> {
    let mut out = Vec::new();
    walk(schema, schema, &mut Vec::new(), &mut out);
    out
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    if let Some(r) = node.get("$ref").and_then(Value::as_str)
        && let Some(name) = r.strip_prefix("#/$defs/")
        && let Some(def) = root.get("$defs").and_then(|d| d.get(name))
    {
        return resolve(root, def);
    }
    // `Option<Struct>` comes as anyOf [ref, null].
    if let Some(alts) = node.get("anyOf").and_then(Value::as_array)
        && let Some(real) = alts
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) != Some("null"))
    {
        return resolve(root, real);
    }
    node
}

fn walk(root: &Value, node: &Value, path: &mut Vec<String>, out: &mut Vec<Leaf>) {
    let node = resolve(root, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            path.push(name.clone());
            walk(root, child, path, out);
            path.pop();
        }
        return;
    }
    if path.is_empty() {
        return;
    }
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let kind = if types.contains(&"boolean") {
        Kind::Bool
    } else if types.contains(&"integer") {
        Kind::Integer
    } else if types.contains(&"number") {
        Kind::Number
    } else if types.contains(&"array") {
        Kind::Array
    } else if types.contains(&"object") {
        Kind::Table
    } else {
        // Strings and string enums (`oneOf` of constants).
        Kind::String
    };
    out.push(Leaf {
        var: format!("{PREFIX}{}", path.join("_").to_uppercase()),
        path: path.clone(),
        kind,
    });
}

/// Sets every key named by a `CELLGATE_*` variable in `table`. Returns the
/// names of the variables applied, or a diagnostic per bad value.
pub(crate) fn apply(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, Vec<Diagnostic>> {
    let leaves = leaves(&crate::json_schema());
    let mut applied = Vec::new();
    let mut problems = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let Some(leaf) = leaves.iter().find(|l| l.var == var) else {
            continue;
        };
        match convert(leaf.kind, &raw) {
            Ok(value) => {
                set(table, &leaf.path, value);
                applied.push(var);
            }
            Err(message) => problems.push(Diagnostic {
                line: None,
                column: None,
                key: Some(leaf.path.join(".")),
                message: format!("{var}={raw:?}: {message}"),
            }),
        }
    }
    if problems.is_empty() {
        Ok(applied)
    } else {
        Err(problems)
    }
}

fn convert(kind: Kind, raw: &str) -> Result<toml::Value, String> {
    let trimmed = raw.trim();
    match kind {
        Kind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err("expected true or false".into()),
        },
        Kind::Integer => trimmed
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| "expected a whole number".into()),
        Kind::Number => trimmed
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| "expected a number".into()),
        Kind::String => Ok(toml::Value::String(raw.to_owned())),
        Kind::Array if trimmed.starts_with('[') => inline(trimmed),
        Kind::Array => Ok(toml::Value::Array(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        )),
        Kind::Table => inline(trimmed),
    }
}

fn inline(raw: &str) -> Result<toml::Value, String> {
    let doc: toml::Table = toml::from_str(&format!("v = {raw}"))
        .map_err(|e| format!("not a TOML value: {}", e.message()))?;
    doc.get("v").cloned().ok_or_else(|| "empty value".into())
}

fn set(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = path.split_last().expect("leaves have a path");
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            // The file had a scalar where a section belongs; the environment
            // wins, and type-checking reports nothing wrong with its value.
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.clone(), value);
}
