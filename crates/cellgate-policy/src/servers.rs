//! Virtual servers: the subset of tools, prompts and resources one endpoint
//! serves.

use cellgate_config::{ItemSelection, VirtualServerConfig};
use cellgate_kernel::{BoxFuture, Call, McpError, Request, Stage};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::Value;

/// Keeps a virtual server's callers inside its subset: lists show only
/// selected items, and a call, prompt or read outside the subset gets the
/// very error an unknown name gets, so a client cannot tell "hidden" from
/// "absent".
pub struct ServerScopeStage {
    name: String,
    tools: Selection,
    prompts: Selection,
    resources: Selection,
}

/// The kinds of list a virtual server trims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

struct Selection {
    include: GlobSet,
    exclude: GlobSet,
}

impl Selection {
    fn new(field: &str, s: &ItemSelection) -> Result<Self, String> {
        Ok(Selection {
            include: globs(&format!("{field}.include"), &s.include)?,
            exclude: globs(&format!("{field}.exclude"), &s.exclude)?,
        })
    }

    fn admits(&self, name: &str) -> bool {
        self.include.is_match(name) && !self.exclude.is_match(name)
    }
}

fn globs(field: &str, patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        // Literal separators: `*` must cross `/` in resource URIs as it
        // does everywhere else in our globs.
        let glob = Glob::new(p).map_err(|e| format!("{field}[{i}]: {p:?}: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| format!("{field}: {e}"))
}

impl ServerScopeStage {
    /// Compiles the server's selections; an error names the bad pattern.
    pub fn new(config: &VirtualServerConfig) -> Result<Self, String> {
        Ok(ServerScopeStage {
            name: config.name.clone(),
            tools: Selection::new("tools", &config.tools)?,
            prompts: Selection::new("prompts", &config.prompts)?,
            resources: Selection::new("resources", &config.resources)?,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the server serves the tool, prompt or resource `name`.
    pub fn admits(&self, kind: ListKind, name: &str) -> bool {
        match kind {
            ListKind::Tools => self.tools.admits(name),
            ListKind::Prompts => self.prompts.admits(name),
            ListKind::Resources | ListKind::Templates => self.resources.admits(name),
        }
    }
}

impl Stage for ServerScopeStage {
    type State = Option<ListKind>;

    fn before<'a>(
        &'a self,
        call: &'a mut Call,
    ) -> BoxFuture<'a, Result<Option<ListKind>, McpError>> {
        Box::pin(async move {
            let refused = match &call.request {
                Request::ListTools { .. } => return Ok(Some(ListKind::Tools)),
                Request::ListPrompts { .. } => return Ok(Some(ListKind::Prompts)),
                Request::ListResources { .. } => return Ok(Some(ListKind::Resources)),
                Request::ListResourceTemplates { .. } => return Ok(Some(ListKind::Templates)),
                Request::CallTool { name, .. } => (!self.tools.admits(name))
                    .then(|| McpError::invalid_params(format!("unknown tool: {name}"))),
                Request::GetPrompt { name, .. } => (!self.prompts.admits(name))
                    .then(|| McpError::invalid_params(format!("unknown prompt: {name}"))),
                Request::ReadResource { uri } => {
                    (!self.resources.admits(uri)).then(|| McpError::resource_not_found(uri))
                }
                Request::Complete { params } => complete_refusal(self, params),
            };
            match refused {
                Some(error) => {
                    call.ctx
                        .trail
                        .deny("server", format!("outside virtual server `{}`", self.name));
                    Err(error)
                }
                None => Ok(None),
            }
        })
    }

    fn after<'a>(
        &'a self,
        state: Option<ListKind>,
        result: &'a mut Result<Value, McpError>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (Some(kind), Ok(Value::Object(obj))) = (state, result) else {
                return;
            };
            let (key, field) = match kind {
                ListKind::Tools => ("tools", "name"),
                ListKind::Prompts => ("prompts", "name"),
                ListKind::Resources => ("resources", "uri"),
                ListKind::Templates => ("resourceTemplates", "uriTemplate"),
            };
            if let Some(Value::Array(items)) = obj.get_mut(key) {
                items.retain(|item| {
                    item.get(field)
                        .and_then(Value::as_str)
                        .is_some_and(|name| self.admits(kind, name))
                });
            }
        })
    }
}

/// `completion/complete` names a prompt (`ref/prompt`) or a resource
/// template (`ref/resource`); completing for an item outside the subset is
/// refused like using it.
fn complete_refusal(stage: &ServerScopeStage, params: &Value) -> Option<McpError> {
    let reference = params.get("ref")?;
    match reference.get("type").and_then(Value::as_str) {
        Some("ref/prompt") => {
            let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
            (!stage.prompts.admits(name))
                .then(|| McpError::invalid_params(format!("unknown prompt: {name}")))
        }
        Some("ref/resource") => {
            let uri = reference.get("uri").and_then(Value::as_str).unwrap_or("");
            (!stage.resources.admits(uri)).then(|| McpError::resource_not_found(uri))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellgate_kernel::CallContext;
    use serde_json::{Map, json};

    fn stage() -> ServerScopeStage {
        ServerScopeStage::new(&VirtualServerConfig {
            name: "docs".into(),
            description: None,
            tools: ItemSelection {
                include: vec!["memory__*".into(), "echo".into()],
                exclude: vec!["memory__delete_*".into()],
            },
            prompts: ItemSelection::default(),
            resources: ItemSelection {
                include: vec!["demo://static/*".into()],
                exclude: vec![],
            },
        })
        .unwrap()
    }

    fn call(request: Request) -> Call {
        Call {
            ctx: CallContext::detached("t"),
            request,
        }
    }

    #[tokio::test]
    async fn calls_outside_the_subset_look_unknown() {
        let s = stage();
        let tool = |name: &str| {
            call(Request::CallTool {
                name: name.into(),
                arguments: Map::new(),
            })
        };
        assert!(s.before(&mut tool("memory__read_graph")).await.is_ok());
        assert!(s.before(&mut tool("echo")).await.is_ok());
        let err = s
            .before(&mut tool("memory__delete_entities"))
            .await
            .unwrap_err();
        assert_eq!(err.message, "unknown tool: memory__delete_entities");
        assert!(s.before(&mut tool("echo2")).await.is_err());
        let err = s
            .before(&mut call(Request::GetPrompt {
                name: "p".into(),
                arguments: Map::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.message, "unknown prompt: p");
        assert!(
            s.before(&mut call(Request::ReadResource {
                uri: "demo://static/a/b".into()
            }))
            .await
            .is_ok()
        );
        assert!(
            s.before(&mut call(Request::ReadResource {
                uri: "demo://dynamic/x".into()
            }))
            .await
            .is_err()
        );
        let complete = |r: Value| {
            call(Request::Complete {
                params: json!({"ref": r, "argument": {"name": "a", "value": ""}}),
            })
        };
        assert!(
            s.before(&mut complete(json!({"type":"ref/prompt","name":"p"})))
                .await
                .is_err()
        );
        assert!(
            s.before(&mut complete(
                json!({"type":"ref/resource","uri":"demo://static/{x}"})
            ))
            .await
            .is_ok()
        );
    }

    #[tokio::test]
    async fn lists_keep_only_the_subset() {
        let s = stage();
        let mut c = call(Request::ListTools { cursor: None });
        let state = s.before(&mut c).await.unwrap();
        let mut result = Ok(json!({"tools": [
            {"name": "memory__read_graph"}, {"name": "memory__delete_entities"},
            {"name": "echo"}, {"name": "add"}, {"description": "no name"}
        ]}));
        s.after(state, &mut result).await;
        let names: Vec<_> = result.unwrap()["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["memory__read_graph", "echo"]);
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let err = ServerScopeStage::new(&VirtualServerConfig {
            name: "x".into(),
            description: None,
            tools: ItemSelection {
                include: vec!["a[".into()],
                exclude: vec![],
            },
            prompts: ItemSelection::default(),
            resources: ItemSelection::default(),
        })
        .err()
        .unwrap();
        assert!(err.starts_with("tools.include[0]: \"a[\""), "{err}");
    }
}
