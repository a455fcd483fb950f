//! Routes requests to providers and merges their lists.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::{CallContext, McpError, Provider, ProviderEvent, Tool};

/// Tool definitions by name.
type ToolDefs = HashMap<String, Arc<Tool>>;

/// Items per page of a list result.
pub const PAGE_SIZE: usize = 100;

/// The set of providers behind one endpoint.
///
/// Tool and prompt names are routed through an index built from the
/// providers' lists and rebuilt whenever a provider reports a change, so a
/// call costs one hash lookup rather than a listing of every provider.
pub struct Catalog {
    providers: Vec<Arc<dyn Provider>>,
    tool_index: RwLock<Option<HashMap<String, usize>>>,
    /// Definitions by name, for layers that need a tool's schema or
    /// annotations (inspection, caching); rebuilt with the index.
    tool_defs: RwLock<Option<Arc<ToolDefs>>>,
    prompt_index: RwLock<Option<HashMap<String, usize>>>,
}

impl Catalog {
    pub fn new(providers: Vec<Arc<dyn Provider>>) -> Arc<Self> {
        let catalog = Arc::new(Self {
            providers,
            tool_index: RwLock::new(None),
            tool_defs: RwLock::new(None),
            prompt_index: RwLock::new(None),
        });
        // Invalidate indexes on change events; the task ends with the catalog.
        if tokio::runtime::Handle::try_current().is_ok() {
            for p in &catalog.providers {
                if let Some(mut rx) = p.events() {
                    let weak = Arc::downgrade(&catalog);
                    tokio::spawn(async move {
                        while let Ok(ev) = rx.recv().await {
                            let Some(c) = weak.upgrade() else { break };
                            c.invalidate(&ev);
                        }
                    });
                }
            }
        }
        catalog
    }

    pub fn providers(&self) -> &[Arc<dyn Provider>] {
        &self.providers
    }

    fn invalidate(&self, ev: &ProviderEvent) {
        match ev {
            ProviderEvent::ToolsChanged => {
                *self.tool_index.write().unwrap_or_else(|e| e.into_inner()) = None;
                *self.tool_defs.write().unwrap_or_else(|e| e.into_inner()) = None;
            }
            ProviderEvent::PromptsChanged => {
                *self.prompt_index.write().unwrap_or_else(|e| e.into_inner()) = None
            }
            _ => {}
        }
    }

    pub async fn list_tools(
        &self,
        ctx: &CallContext,
        cursor: Option<&str>,
    ) -> Result<Value, McpError> {
        let all = self.collect_tools(ctx).await?;
        let all = all
            .iter()
            .map(|t| {
                serde_json::to_value(t.as_ref()).map_err(|e| McpError::internal(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        paginate("tools", all, cursor)
    }

    /// Lists every provider's tools and rebuilds the routing index and the
    /// definitions map. The first provider to list a name owns it.
    async fn collect_tools(&self, ctx: &CallContext) -> Result<Vec<Arc<Tool>>, McpError> {
        let mut listed = Vec::with_capacity(self.providers.len());
        for p in &self.providers {
            listed.push(p.list_tools(ctx).await?);
        }
        // The gateway's own providers claim names first, then those that
        // front upstreams; within each, the earlier provider wins.
        let mut index = HashMap::new();
        let mut defs = HashMap::new();
        for fronting in [false, true] {
            for (i, tools) in listed.iter().enumerate() {
                if self.providers[i].fronts_others() != fronting {
                    continue;
                }
                for t in tools {
                    if !index.contains_key(&t.name) {
                        index.insert(t.name.clone(), i);
                        defs.insert(t.name.clone(), Arc::new(t.clone()));
                    }
                }
            }
        }
        // Listed in provider order, each name once: the one calls reach.
        let mut all = Vec::new();
        for (i, tools) in listed.into_iter().enumerate() {
            for t in tools {
                if index.get(&t.name) == Some(&i) {
                    all.push(defs[&t.name].clone());
                }
            }
        }
        *self.tool_index.write().unwrap_or_else(|e| e.into_inner()) = Some(index);
        *self.tool_defs.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(defs));
        Ok(all)
    }

    /// The definition of the tool a call to `name` would reach, if any.
    pub async fn tool(&self, ctx: &CallContext, name: &str) -> Result<Option<Arc<Tool>>, McpError> {
        let cached = self
            .tool_defs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let defs = match cached {
            Some(defs) => defs,
            None => {
                self.collect_tools(ctx).await?;
                let fresh = self
                    .tool_defs
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                fresh.unwrap_or_default()
            }
        };
        Ok(defs.get(name).cloned())
    }

    /// The first provider claiming an unlisted name ([`Provider::claims`]).
    fn claimant(&self, name: &str, tool: bool) -> Option<usize> {
        self.providers.iter().position(|p| p.claims(name, tool))
    }

    async fn route(
        &self,
        ctx: &CallContext,
        name: &str,
        tools: bool,
    ) -> Result<Option<usize>, McpError> {
        let lock = if tools {
            &self.tool_index
        } else {
            &self.prompt_index
        };
        if let Some(idx) = lock.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(idx.get(name).copied());
        }
        if tools {
            self.collect_tools(ctx).await?;
            let found = lock
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|idx| idx.get(name).copied());
            return Ok(found);
        }
        self.collect_prompts(ctx).await?;
        let found = lock
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|idx| idx.get(name).copied());
        Ok(found)
    }

    /// Lists every provider's prompts and rebuilds the prompt routing index,
    /// by the same rule as tools: the gateway's own providers claim names
    /// first, and each name is listed once, from the provider calls reach.
    async fn collect_prompts(&self, ctx: &CallContext) -> Result<Vec<Value>, McpError> {
        let mut listed = Vec::with_capacity(self.providers.len());
        for p in &self.providers {
            listed.push(p.list_prompts(ctx).await?);
        }
        let mut index = HashMap::new();
        for fronting in [false, true] {
            for (i, prompts) in listed.iter().enumerate() {
                if self.providers[i].fronts_others() == fronting {
                    for t in prompts {
                        index.entry(t.name.clone()).or_insert(i);
                    }
                }
            }
        }
        let mut all = Vec::new();
        for (i, prompts) in listed.into_iter().enumerate() {
            for t in prompts {
                if index.get(&t.name) == Some(&i) {
                    all.push(
                        serde_json::to_value(t).map_err(|e| McpError::internal(e.to_string()))?,
                    );
                }
            }
        }
        *self.prompt_index.write().unwrap_or_else(|e| e.into_inner()) = Some(index);
        Ok(all)
    }

    pub async fn call_tool(
        &self,
        ctx: &CallContext,
        name: &str,
        arguments: Map<String, Value>,
    ) -> Result<Value, McpError> {
        match self
            .route(ctx, name, true)
            .await?
            .or_else(|| self.claimant(name, true))
        {
            Some(i) => self.providers[i].call_tool(ctx, name, arguments).await,
            None => Err(McpError::invalid_params(format!("unknown tool: {name}"))
                .with_data(json!({ "name": name }))),
        }
    }

    pub async fn list_resources(
        &self,
        ctx: &CallContext,
        cursor: Option<&str>,
    ) -> Result<Value, McpError> {
        let mut all = Vec::new();
        for p in &self.providers {
            for r in p.list_resources(ctx).await? {
                all.push(serde_json::to_value(r).map_err(|e| McpError::internal(e.to_string()))?);
            }
        }
        paginate("resources", all, cursor)
    }

    pub async fn list_resource_templates(
        &self,
        ctx: &CallContext,
        cursor: Option<&str>,
    ) -> Result<Value, McpError> {
        let mut all = Vec::new();
        for p in &self.providers {
            for r in p.list_resource_templates(ctx).await? {
                all.push(serde_json::to_value(r).map_err(|e| McpError::internal(e.to_string()))?);
            }
        }
        paginate("resourceTemplates", all, cursor)
    }

    pub async fn read_resource(&self, ctx: &CallContext, uri: &str) -> Result<Value, McpError> {
        for p in &self.providers {
            match p.read_resource(ctx, uri).await {
                Err(e) if e.code == crate::codes::RESOURCE_NOT_FOUND => continue,
                other => return other,
            }
        }
        Err(McpError::resource_not_found(uri))
    }

    pub async fn list_prompts(
        &self,
        ctx: &CallContext,
        cursor: Option<&str>,
    ) -> Result<Value, McpError> {
        let all = self.collect_prompts(ctx).await?;
        paginate("prompts", all, cursor)
    }

    pub async fn get_prompt(
        &self,
        ctx: &CallContext,
        name: &str,
        arguments: Map<String, Value>,
    ) -> Result<Value, McpError> {
        match self
            .route(ctx, name, false)
            .await?
            .or_else(|| self.claimant(name, false))
        {
            Some(i) => self.providers[i].get_prompt(ctx, name, arguments).await,
            None => Err(McpError::invalid_params(format!("unknown prompt: {name}"))
                .with_data(json!({ "name": name }))),
        }
    }

    /// Asks each provider in turn; a reference nobody claims gets empty values,
    /// as the spec allows.
    pub async fn complete(&self, ctx: &CallContext, params: &Value) -> Result<Value, McpError> {
        for p in &self.providers {
            if let Some(v) = p.complete(ctx, params).await? {
                return Ok(v);
            }
        }
        Ok(json!({ "completion": { "values": [], "total": 0, "hasMore": false } }))
    }
}

/// Cuts `items` into pages. The cursor is opaque to clients: base64url of
/// `o:<offset>`; anything else is an invalid-params error.
fn paginate(key: &str, items: Vec<Value>, cursor: Option<&str>) -> Result<Value, McpError> {
    let offset = match cursor {
        None => 0,
        Some(c) => decode_cursor(c).ok_or_else(|| {
            McpError::invalid_params(format!(
                "invalid cursor {c:?}: pass back exactly the nextCursor of a previous page"
            ))
        })?,
    };
    if offset > items.len() {
        return Err(McpError::invalid_params(format!(
            "invalid cursor: offset {offset} is past the end of the list"
        )));
    }
    let end = (offset + PAGE_SIZE).min(items.len());
    let has_more = end < items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(end - offset).collect();
    let mut out = Map::new();
    out.insert(key.to_owned(), Value::Array(page));
    if has_more {
        out.insert(
            "nextCursor".into(),
            Value::String(URL_SAFE_NO_PAD.encode(format!("o:{end}"))),
        );
    }
    Ok(Value::Object(out))
}

fn decode_cursor(c: &str) -> Option<usize> {
    let raw = URL_SAFE_NO_PAD.decode(c).ok()?;
    let s = std::str::from_utf8(&raw).ok()?;
    s.strip_prefix("o:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_round_trip_and_bad_cursor() {
        let items: Vec<Value> = (0..250).map(|i| json!(i)).collect();
        let p1 = paginate("tools", items.clone(), None).unwrap();
        assert_eq!(p1["tools"].as_array().unwrap().len(), PAGE_SIZE);
        let c = p1["nextCursor"].as_str().unwrap().to_owned();
        let p2 = paginate("tools", items.clone(), Some(&c)).unwrap();
        assert_eq!(p2["tools"][0], json!(100));
        let c3 = p2["nextCursor"].as_str().unwrap().to_owned();
        let p3 = paginate("tools", items.clone(), Some(&c3)).unwrap();
        assert_eq!(p3["tools"].as_array().unwrap().len(), 50);
        assert!(p3.get("nextCursor").is_none());
        for bad in ["", "!!", "bm9wZQ", &URL_SAFE_NO_PAD.encode("o:9999")] {
            let e = paginate("tools", items.clone(), Some(bad)).unwrap_err();
            assert_eq!(e.code, crate::codes::INVALID_PARAMS, "{bad}");
        }
    }

    /// Lists nothing, but owns the names under `down__`.
    struct Down;

    impl Provider for Down {
        fn id(&self) -> &str {
            "down"
        }
        fn call_tool<'a>(
            &'a self,
            _: &'a CallContext,
            name: &'a str,
            _: Map<String, Value>,
        ) -> crate::BoxFuture<'a, Result<Value, McpError>> {
            Box::pin(async move { Err(McpError::internal(format!("{name}: upstream is down"))) })
        }
        fn claims(&self, name: &str, tool: bool) -> bool {
            tool && name.starts_with("down__")
        }
    }

    #[tokio::test]
    async fn an_unlisted_name_goes_to_the_provider_that_claims_it() {
        let catalog = Catalog::new(vec![Arc::new(Down)]);
        let ctx = CallContext::detached("t");
        let claimed = catalog
            .call_tool(&ctx, "down__x", Map::new())
            .await
            .unwrap_err();
        assert_eq!(claimed.message, "down__x: upstream is down");
        let unknown = catalog
            .call_tool(&ctx, "other", Map::new())
            .await
            .unwrap_err();
        assert_eq!(unknown.message, "unknown tool: other");
        let prompt = catalog
            .get_prompt(&ctx, "down__x", Map::new())
            .await
            .unwrap_err();
        assert_eq!(prompt.message, "unknown prompt: down__x");
    }

    /// Offers one prompt, `greet`, and says who answered.
    struct Greeter {
        id: &'static str,
        fronts: bool,
    }

    impl Provider for Greeter {
        fn id(&self) -> &str {
            self.id
        }
        fn fronts_others(&self) -> bool {
            self.fronts
        }
        fn list_prompts<'a>(
            &'a self,
            _: &'a CallContext,
        ) -> crate::BoxFuture<'a, Result<Vec<crate::model::Prompt>, McpError>> {
            Box::pin(async { Ok(vec![crate::model::Prompt::new("greet")]) })
        }
        fn get_prompt<'a>(
            &'a self,
            _: &'a CallContext,
            _: &'a str,
            _: Map<String, Value>,
        ) -> crate::BoxFuture<'a, Result<Value, McpError>> {
            Box::pin(async move { Ok(json!({ "from": self.id })) })
        }
    }

    #[tokio::test]
    async fn a_prompt_name_is_listed_once_and_routed_to_the_gateway_own_provider() {
        let upstream = Arc::new(Greeter {
            id: "upstream",
            fronts: true,
        });
        let own = Arc::new(Greeter {
            id: "own",
            fronts: false,
        });
        let ctx = CallContext::detached("t");
        // Routing must not depend on whether the list ran first.
        let catalog = Catalog::new(vec![upstream.clone(), own.clone()]);
        let before = catalog.get_prompt(&ctx, "greet", Map::new()).await.unwrap();
        assert_eq!(before["from"], "own");
        let catalog = Catalog::new(vec![upstream, own]);
        let listed = catalog.list_prompts(&ctx, None).await.unwrap();
        assert_eq!(listed["prompts"].as_array().unwrap().len(), 1, "{listed}");
        let after = catalog.get_prompt(&ctx, "greet", Map::new()).await.unwrap();
        assert_eq!(after["from"], "own");
    }
}
