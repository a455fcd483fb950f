//! Virtual servers (`[[servers]]`): named subsets of what the gateway
//! serves, each at its own endpoint.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// A named subset of the gateway's tools, prompts and resources, served at
/// `/servers/{name}/mcp` through the same trust pipeline as `/mcp`. A client
/// of a virtual server neither sees nor reaches anything outside its subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualServerConfig {
    /// The path segment: letters, digits, `_` and `-`, at most 64
    /// characters, unique regardless of case.
    pub name: String,
    /// Shown to clients as the server's instructions, if set.
    #[serde(default)]
    pub description: Option<String>,
    /// Which tools (by the name clients see, e.g. `github__create_issue`).
    #[serde(default)]
    pub tools: ItemSelection,
    /// Which prompts (by name).
    #[serde(default)]
    pub prompts: ItemSelection,
    /// Which resources and resource templates (by URI or URI template).
    #[serde(default)]
    pub resources: ItemSelection,
}

/// Globs (`*` any run of characters, `?` one character, `[abc]` a class)
/// choosing items by name. An item is served when it matches an `include`
/// pattern and no `exclude` pattern; with no `include` patterns nothing of
/// that kind is served (deny by default: write `include = ["*"]` for all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ItemSelection {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

pub(crate) fn validate_servers(servers: &[VirtualServerConfig], p: &mut Vec<Problem>) {
    let mut seen: Vec<String> = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let key = format!("servers[{i}]");
        let name = &server.name;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            p.push(Problem::new(
                format!("{key}.name"),
                format!(
                    "{name:?} is not a server name (1-64 letters, digits, `_` or `-`; it becomes the path /servers/NAME/mcp)"
                ),
            ));
        } else if seen.contains(&name.to_ascii_lowercase()) {
            p.push(Problem::new(
                format!("{key}.name"),
                format!("a virtual server named {name:?} is already declared"),
            ));
        } else {
            seen.push(name.to_ascii_lowercase());
        }
        for (kind, selection) in [
            ("tools", &server.tools),
            ("prompts", &server.prompts),
            ("resources", &server.resources),
        ] {
            for (list, patterns) in [
                ("include", &selection.include),
                ("exclude", &selection.exclude),
            ] {
                for (j, pattern) in patterns.iter().enumerate() {
                    if let Err(reason) = check_glob(pattern) {
                        p.push(Problem::new(
                            format!("{key}.{kind}.{list}[{j}]"),
                            format!("{pattern:?} is not a usable glob: {reason}"),
                        ));
                    }
                }
            }
        }
        if server.tools.include.is_empty()
            && server.prompts.include.is_empty()
            && server.resources.include.is_empty()
        {
            p.push(Problem::new(
                key,
                format!(
                    "virtual server {name:?} includes nothing: add patterns to tools.include, prompts.include or resources.include"
                ),
            ));
        }
    }
}

/// The glob rules [`ItemSelection`] documents, checked without a glob
/// library: not empty, no whitespace, balanced `[...]` classes.
fn check_glob(pattern: &str) -> Result<(), &'static str> {
    if pattern.is_empty() {
        return Err("it is empty");
    }
    if pattern.chars().any(char::is_whitespace) {
        return Err("it contains whitespace");
    }
    let mut open = false;
    for c in pattern.chars() {
        match c {
            '[' if open => return Err("a `[` class is opened inside another"),
            '[' => open = true,
            ']' if open => open = false,
            _ => {}
        }
    }
    if open {
        return Err("a `[` class is never closed");
    }
    Ok(())
}
