//! Names and URIs as clients see them: `<upstream><sep><name>` for tools and
//! prompts, `cellgate+upstream://<upstream>/<original uri>` for resources.
//! The scheme is described in this crate's README.

use std::collections::HashMap;

use cellgate_config::NamespaceMode;
use serde_json::Value;

/// The scheme of rewritten resource URIs.
pub const URI_SCHEME: &str = "cellgate+upstream";

/// The URI a client sees for `uri` of `upstream`: the original is kept
/// verbatim after the authority, so the rewrite is exactly reversible and
/// URI templates keep their `{variables}`.
pub fn wrap_uri(upstream: &str, uri: &str) -> String {
    format!("{URI_SCHEME}://{upstream}/{uri}")
}

/// Splits a rewritten URI into `(upstream, original uri)`; `None` for a URI
/// that is not one of ours. The scheme is matched regardless of case.
pub fn unwrap_uri(uri: &str) -> Option<(&str, &str)> {
    let prefix_len = URI_SCHEME.len() + 3;
    let head = uri.get(..prefix_len)?;
    if !head.eq_ignore_ascii_case(&format!("{URI_SCHEME}://")) {
        return None;
    }
    let rest = &uri[prefix_len..];
    let (name, original) = rest.split_once('/')?;
    (!name.is_empty()).then_some((name, original))
}

/// How exposed names are formed from upstream names.
#[derive(Debug, Clone)]
pub struct Namespace {
    separator: String,
    prefixed: bool,
}

impl Namespace {
    /// `upstreams` is the number of configured (enabled) upstreams, which
    /// decides the `conditional` mode.
    pub fn new(mode: NamespaceMode, separator: &str, upstreams: usize) -> Self {
        Self {
            separator: separator.to_owned(),
            prefixed: match mode {
                NamespaceMode::Always => true,
                NamespaceMode::Conditional => upstreams > 1,
                NamespaceMode::Never => false,
            },
        }
    }

    pub fn is_prefixed(&self) -> bool {
        self.prefixed
    }

    /// The name a client sees for `name` of `upstream`.
    pub fn expose(&self, upstream: &str, name: &str) -> String {
        if self.prefixed {
            format!("{upstream}{}{name}", self.separator)
        } else {
            name.to_owned()
        }
    }

    /// Every reading of `exposed` as `(upstream, original name)` given the
    /// known upstream names, longest upstream name first. The separator may
    /// occur inside upstream names and inside original names, so a name is
    /// split at each known upstream name, never blindly at a separator.
    pub fn candidates<'a>(
        &self,
        exposed: &'a str,
        upstreams: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(&'a str, &'a str)> {
        let mut out: Vec<(&str, &str)> = upstreams
            .into_iter()
            .filter_map(|u| {
                if !self.prefixed {
                    return Some((u, exposed));
                }
                let rest = exposed.strip_prefix(u)?.strip_prefix(&self.separator)?;
                (!rest.is_empty()).then_some((u, rest))
            })
            .collect();
        out.sort_by_key(|(u, _)| std::cmp::Reverse(u.len()));
        out
    }
}

/// One routable name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Index of the upstream (config order).
    pub upstream: usize,
    /// The name the upstream knows it by.
    pub original: String,
}

/// Two upstreams whose names would be exposed under the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub exposed: String,
    /// The upstream that keeps the name (the earlier in the configuration).
    pub kept: String,
    /// The upstream whose item is hidden.
    pub hidden: String,
}

/// Exposed name → where it goes; built from every upstream's list.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub routes: HashMap<String, Route>,
    pub collisions: Vec<Collision>,
}

impl Index {
    /// `lists[i]` are the original names upstream `i` (named `names[i]`)
    /// offers. An earlier upstream keeps a contested name.
    pub fn build(ns: &Namespace, names: &[&str], lists: &[Vec<String>]) -> Self {
        let mut index = Index::default();
        for (i, list) in lists.iter().enumerate() {
            for original in list {
                let exposed = ns.expose(names[i], original);
                match index.routes.get(&exposed) {
                    Some(existing) if existing.upstream != i => {
                        index.collisions.push(Collision {
                            exposed,
                            kept: names[existing.upstream].to_owned(),
                            hidden: names[i].to_owned(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        index.routes.insert(
                            exposed,
                            Route {
                                upstream: i,
                                original: original.clone(),
                            },
                        );
                    }
                }
            }
        }
        index
    }
}

/// Rewrites the resource URIs inside content items (`resource_link` and
/// embedded `resource`) so that a client can read them back through cellgate.
pub fn wrap_content_uris(upstream: &str, content: &mut Value) {
    let Some(items) = content.as_array_mut() else {
        if content.is_object() {
            wrap_item(upstream, content);
        }
        return;
    };
    for item in items {
        wrap_item(upstream, item);
    }
}

fn wrap_item(upstream: &str, item: &mut Value) {
    match item.get("type").and_then(Value::as_str) {
        Some("resource_link") => wrap_field(upstream, item),
        Some("resource") => {
            if let Some(r) = item.get_mut("resource") {
                wrap_field(upstream, r);
            }
        }
        _ => {}
    }
}

fn wrap_field(upstream: &str, obj: &mut Value) {
    if let Some(Value::String(uri)) = obj.get_mut("uri") {
        *uri = wrap_uri(upstream, uri);
    }
}

/// Rewrites a `CallToolResult`: the URIs in `content`.
pub fn wrap_tool_result(upstream: &str, result: &mut Value) {
    if let Some(content) = result.get_mut("content") {
        wrap_content_uris(upstream, content);
    }
}

/// Rewrites a `GetPromptResult`: the URIs in each message's content.
pub fn wrap_prompt_result(upstream: &str, result: &mut Value) {
    if let Some(Value::Array(messages)) = result.get_mut("messages") {
        for m in messages {
            if let Some(content) = m.get_mut("content") {
                wrap_content_uris(upstream, content);
            }
        }
    }
}

/// Rewrites a `ReadResourceResult`: the URI of each of its `contents`.
pub fn wrap_read_result(upstream: &str, result: &mut Value) {
    if let Some(Value::Array(contents)) = result.get_mut("contents") {
        for c in contents {
            wrap_field(upstream, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uris_round_trip_exactly() {
        for original in [
            "file:///home/a/b c.txt",
            "demo://resource/static/document/architecture.md",
            "https://example.com/a?b=c&d=%2F#frag",
            "test://template/{id}/data",
            "urn:isbn:0451450523",
            "",
            "x",
            "cellgate+upstream://nested/file:///x",
        ] {
            let wrapped = wrap_uri("my__srv-1", original);
            assert_eq!(
                unwrap_uri(&wrapped),
                Some(("my__srv-1", original)),
                "{wrapped}"
            );
        }
        assert_eq!(
            unwrap_uri("CELLGATE+Upstream://a/file:///x"),
            Some(("a", "file:///x"))
        );
        for foreign in [
            "file:///x",
            "cellgate+upstream://",
            "cellgate+upstream:///x",
            "cellgate+upstream://noslash",
            "cellgate+upstreams://a/x",
            "é",
        ] {
            assert_eq!(unwrap_uri(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn templates_keep_their_variables() {
        let t = cellgate_kernel::ResourceTemplate::new(
            wrap_uri("everything", "demo://resource/dynamic/text/{resourceId}"),
            "t",
        );
        let vars = t
            .match_uri("cellgate+upstream://everything/demo://resource/dynamic/text/7")
            .unwrap();
        assert_eq!(vars["resourceId"], json!("7"));
    }

    #[test]
    fn modes() {
        let always = Namespace::new(NamespaceMode::Always, "__", 1);
        assert_eq!(always.expose("a", "t"), "a__t");
        let cond1 = Namespace::new(NamespaceMode::Conditional, "__", 1);
        assert_eq!(cond1.expose("a", "t"), "t");
        let cond2 = Namespace::new(NamespaceMode::Conditional, "__", 2);
        assert_eq!(cond2.expose("a", "t"), "a__t");
        let never = Namespace::new(NamespaceMode::Never, "__", 3);
        assert_eq!(never.expose("a", "t"), "t");
    }

    #[test]
    fn separator_inside_names_is_split_at_known_upstreams() {
        let ns = Namespace::new(NamespaceMode::Always, "__", 3);
        let names = ["my__server", "my", "other"];
        // A blind split at the first separator would give ("my", "server__read__file").
        let c = ns.candidates("my__server__read__file", names);
        assert_eq!(
            c,
            vec![("my__server", "read__file"), ("my", "server__read__file")]
        );
        assert_eq!(ns.candidates("other__x", names), vec![("other", "x")]);
        assert!(ns.candidates("other__", names).is_empty());
        assert!(ns.candidates("nobody__x", names).is_empty());

        // The index routes by the upstreams' actual lists.
        let lists = vec![
            vec!["read__file".to_owned()],
            vec!["write".to_owned()],
            vec!["my__server__read__file".to_owned()],
        ];
        let index = Index::build(&ns, &names, &lists);
        assert_eq!(
            index.routes["my__server__read__file"],
            Route {
                upstream: 0,
                original: "read__file".into()
            }
        );
        assert_eq!(index.routes["my__write"].upstream, 1);
        assert_eq!(
            index.routes["other__my__server__read__file"].original,
            "my__server__read__file"
        );
        assert!(index.collisions.is_empty());
    }

    #[test]
    fn collisions_name_both_upstreams() {
        // With the separator inside names, "a" + "b__c" and "a__b" + "c" meet.
        let ns = Namespace::new(NamespaceMode::Always, "__", 2);
        let index = Index::build(
            &ns,
            &["a", "a__b"],
            &[vec!["b__c".into()], vec!["c".into(), "d".into()]],
        );
        assert_eq!(
            index.collisions,
            vec![Collision {
                exposed: "a__b__c".into(),
                kept: "a".into(),
                hidden: "a__b".into()
            }]
        );
        assert_eq!(index.routes["a__b__c"].upstream, 0);
        assert_eq!(index.routes["a__b__d"].upstream, 1);

        let never = Namespace::new(NamespaceMode::Never, "__", 2);
        let index = Index::build(
            &never,
            &["x", "y"],
            &[vec!["search".into()], vec!["search".into(), "other".into()]],
        );
        assert_eq!(index.collisions.len(), 1);
        assert_eq!(
            (
                index.collisions[0].kept.as_str(),
                index.collisions[0].hidden.as_str()
            ),
            ("x", "y")
        );
    }

    #[test]
    fn content_uris_are_wrapped() {
        let mut r = json!({"content": [
            {"type": "text", "text": "hi"},
            {"type": "resource_link", "uri": "file:///a", "name": "a"},
            {"type": "resource", "resource": {"uri": "demo://b", "text": "b"}}
        ]});
        wrap_tool_result("u", &mut r);
        assert_eq!(r["content"][1]["uri"], "cellgate+upstream://u/file:///a");
        assert_eq!(
            r["content"][2]["resource"]["uri"],
            "cellgate+upstream://u/demo://b"
        );
        let mut p = json!({"messages": [{"role": "user", "content": {"type": "resource", "resource": {"uri": "x://y"}}}]});
        wrap_prompt_result("u", &mut p);
        assert_eq!(
            p["messages"][0]["content"]["resource"]["uri"],
            "cellgate+upstream://u/x://y"
        );
    }
}
