//! The tools: definitions, argument parsing and implementations.
//!
//! The nine knowledge-graph tools of the official memory server keep its
//! names, arguments and results: text content is the result as JSON
//! indented by two spaces (`JSON.stringify(x, null, 2)`), structured content
//! the same object, entities and relations in creation order, and the same
//! dedupe rules (an entity name once per space; a relation once per ends and
//! type; an observation once per entity). Every tool also takes `scope`.

use std::collections::{BTreeSet, HashSet};

use cellgate_kernel::{CallContext, McpError, PrincipalKind, Resource, Tool};
use cellgate_store::{
    EntityChange, EntityRecord, GraphRecords, ItemKind, MEMORY_BATCH_MAX, MemoryRecord, NewEntity,
    NewMemory, NewRelation, ObservationsAdded, RelationRecord, Space, StoreError, TenantId, View,
};
use serde_json::{Map, Value, json};

use crate::{MemoryError, MemoryProvider, SearchMode};

/// The official server's resource with the whole graph.
const GRAPH_URI: &str = "memory://knowledge-graph";
/// Most results `retrieve_memory` and `query_concepts` return.
const RESULTS_MAX: u64 = 100;

const SCOPE_WRITE: &str =
    "`shared` (default): the tenant's shared memory; `private`: the caller's own.";
const SCOPE_READ: &str = "`shared` (default), `private` (the caller's own), or `all` (both).";

fn tool(
    name: &str,
    title: &str,
    description: &str,
    properties: Value,
    required: &[&str],
    read_only: bool,
    destructive: bool,
) -> Tool {
    Tool::new(
        name,
        description,
        json!({ "type": "object", "properties": properties, "required": required }),
    )
    .with("title", json!(title))
    .with(
        "annotations",
        json!({ "readOnlyHint": read_only, "destructiveHint": destructive, "idempotentHint": read_only, "openWorldHint": false }),
    )
}

fn with_scope(mut properties: Value, read: bool) -> Value {
    properties["scope"] = if read {
        json!({ "type": "string", "enum": ["shared", "private", "all"], "description": SCOPE_READ })
    } else {
        json!({ "type": "string", "enum": ["shared", "private"], "description": SCOPE_WRITE })
    };
    properties
}

pub(crate) fn definitions() -> Vec<Tool> {
    let entity = json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "description": "The name of the entity" },
            "entityType": { "type": "string", "description": "The type of the entity" },
            "observations": { "type": "array", "items": { "type": "string" }, "description": "An array of observation contents associated with the entity" }
        },
        "required": ["name", "entityType", "observations"]
    });
    let relation = json!({
        "type": "object",
        "properties": {
            "from": { "type": "string", "description": "The name of the entity where the relation starts" },
            "to": { "type": "string", "description": "The name of the entity where the relation ends" },
            "relationType": { "type": "string", "description": "The type of the relation" }
        },
        "required": ["from", "to", "relationType"]
    });
    let names =
        |d: &str| json!({ "type": "array", "items": { "type": "string" }, "description": d });
    vec![
        // ---- the official memory server's tools ----
        tool(
            "create_entities",
            "Create Entities",
            "Create multiple new entities in the knowledge graph",
            with_scope(
                json!({ "entities": { "type": "array", "items": entity } }),
                false,
            ),
            &["entities"],
            false,
            false,
        ),
        tool(
            "create_relations",
            "Create Relations",
            "Create multiple new relations between entities in the knowledge graph. Relations should be in active voice",
            with_scope(
                json!({ "relations": { "type": "array", "items": relation } }),
                false,
            ),
            &["relations"],
            false,
            false,
        ),
        tool(
            "add_observations",
            "Add Observations",
            "Add new observations to existing entities in the knowledge graph",
            with_scope(
                json!({ "observations": { "type": "array", "items": { "type": "object", "properties": {
                "entityName": { "type": "string", "description": "The name of the entity to add the observations to" },
                "contents": { "type": "array", "items": { "type": "string" }, "description": "An array of observation contents to add" }
            }, "required": ["entityName", "contents"] } } }),
                false,
            ),
            &["observations"],
            false,
            false,
        ),
        tool(
            "delete_entities",
            "Delete Entities",
            "Delete multiple entities and their associated relations from the knowledge graph",
            with_scope(
                json!({ "entityNames": names("An array of entity names to delete") }),
                false,
            ),
            &["entityNames"],
            false,
            true,
        ),
        tool(
            "delete_observations",
            "Delete Observations",
            "Delete specific observations from entities in the knowledge graph",
            with_scope(
                json!({ "deletions": { "type": "array", "items": { "type": "object", "properties": {
                "entityName": { "type": "string", "description": "The name of the entity containing the observations" },
                "observations": { "type": "array", "items": { "type": "string" }, "description": "An array of observations to delete" }
            }, "required": ["entityName", "observations"] } } }),
                false,
            ),
            &["deletions"],
            false,
            true,
        ),
        tool(
            "delete_relations",
            "Delete Relations",
            "Delete multiple relations from the knowledge graph",
            with_scope(
                json!({ "relations": { "type": "array", "items": relation, "description": "An array of relations to delete" } }),
                false,
            ),
            &["relations"],
            false,
            true,
        ),
        tool(
            "read_graph",
            "Read Graph",
            "Read the entire knowledge graph",
            with_scope(json!({}), true),
            &[],
            true,
            false,
        ),
        tool(
            "search_nodes",
            "Search Nodes",
            "Search for nodes in the knowledge graph based on a query",
            with_scope(
                json!({ "query": { "type": "string", "description": "The search query to match against entity names, types, and observation content" } }),
                true,
            ),
            &["query"],
            true,
            false,
        ),
        tool(
            "open_nodes",
            "Open Nodes",
            "Open specific nodes in the knowledge graph by their names",
            with_scope(
                json!({ "names": names("An array of entity names to retrieve") }),
                true,
            ),
            &["names"],
            true,
            false,
        ),
        // ---- key/value memories ----
        tool(
            "store_memory",
            "Store Memory",
            "Store a value (text or JSON) under a key and category. Replacing a key keeps earlier versions; `ttl` (seconds) makes it expire.",
            with_scope(
                json!({
                    "key": { "type": "string" },
                    "value": { "description": "Text or any JSON value" },
                    "category": { "type": "string" },
                    "tags": { "type": "array", "items": { "type": "string" } },
                    "ttl": { "type": "integer", "minimum": 1, "description": "Seconds until the memory expires" }
                }),
                false,
            ),
            &["key", "value", "category"],
            false,
            false,
        ),
        tool(
            "retrieve_memory",
            "Retrieve Memory",
            "Retrieve memories by exact key, by category, or by a search query (hybrid full-text and vector ranking).",
            with_scope(
                json!({
                    "key": { "type": "string" },
                    "category": { "type": "string" },
                    "query": { "type": "string" },
                    "limit": { "type": "integer", "minimum": 1, "maximum": RESULTS_MAX },
                    "versions": { "type": "boolean", "description": "With `key`: include earlier versions" }
                }),
                true,
            ),
            &[],
            true,
            false,
        ),
        tool(
            "delete_memory",
            "Delete Memory",
            "Delete the memory under a key, with its versions.",
            with_scope(json!({ "key": { "type": "string" } }), false),
            &["key"],
            false,
            true,
        ),
        tool(
            "list_categories",
            "List Categories",
            "List memory categories with the number of memories in each.",
            with_scope(json!({}), true),
            &[],
            true,
            false,
        ),
        // ---- beyond the official server ----
        tool(
            "query_concepts",
            "Query Concepts",
            "Rank entities by relevance to a text (hybrid full-text and vector search) and return them with the subgraph around them.",
            with_scope(
                json!({
                    "text": { "type": "string" },
                    "top_k": { "type": "integer", "minimum": 1, "maximum": RESULTS_MAX },
                    "depth": { "type": "integer", "minimum": 0, "maximum": 3, "description": "Relation hops around the results (default 1)" },
                    "filters": { "type": "object", "properties": {
                        "entityType": { "type": "string" },
                        "minConfidence": { "type": "number", "minimum": 0, "maximum": 1 },
                        "includeInferred": { "type": "boolean", "description": "Follow inferred related_to edges (default true)" }
                    } }
                }),
                true,
            ),
            &["text"],
            true,
            false,
        ),
        tool(
            "update_concept",
            "Update Concept",
            "Change an entity by superseding it: the old version stays (valid_to set) and a new one becomes current.",
            with_scope(
                json!({
                    "name": { "type": "string" },
                    "entityType": { "type": "string" },
                    "observations": { "type": "array", "items": { "type": "string" }, "description": "Replace all observations" },
                    "addObservations": { "type": "array", "items": { "type": "string" } },
                    "confidence": { "type": "number", "minimum": 0, "maximum": 1 },
                    "source": { "type": "string" }
                }),
                false,
            ),
            &["name"],
            false,
            false,
        ),
        tool(
            "export_graph",
            "Export Graph",
            "Export the graph as JSON (with confidence, source, provenance, inferred edges) or as the official memory server's JSONL.",
            with_scope(
                json!({ "format": { "type": "string", "enum": ["json", "jsonl"] } }),
                true,
            ),
            &[],
            true,
            false,
        ),
        tool(
            "import_graph",
            "Import Graph",
            "Import a graph exported as JSON or the official memory server's JSONL; existing entities gain missing observations.",
            with_scope(
                json!({ "format": { "type": "string", "enum": ["json", "jsonl"] }, "data": { "type": "string" } }),
                false,
            ),
            &["data"],
            false,
            false,
        ),
        tool(
            "consolidate_memory",
            "Consolidate Memory",
            "Merge near-duplicate entities (keeping provenance), prune weak inferred edges, expire memories past their TTL and rebuild the indexes. Returns counts.",
            with_scope(
                json!({
                    "mergeThreshold": { "type": "number", "minimum": 0, "maximum": 1 },
                    "pruneBelow": { "type": "number", "minimum": 0, "maximum": 1 }
                }),
                false,
            ),
            &[],
            false,
            true,
        ),
        tool(
            "elevate_knowledge",
            "Elevate Knowledge",
            "Copy private items into the tenant's shared space, personal data redacted, with provenance that does not name the owner. Ids are `memory:<key>` or `entity:<name>`.",
            json!({
                "ids": { "type": "array", "items": { "type": "string" } },
                "anonymize": { "type": "boolean", "description": "Redact personal data (default true)" }
            }),
            &["ids"],
            false,
            false,
        ),
    ]
}

pub(crate) fn graph_resource() -> Resource {
    Resource::new(GRAPH_URI, "knowledge-graph")
        .with("title", json!("Knowledge Graph"))
        .with(
            "description",
            json!("The full knowledge graph with all entities and relations"),
        )
        .with("mimeType", json!("application/json"))
}

pub(crate) async fn read_graph_resource(
    p: &MemoryProvider,
    ctx: &CallContext,
    uri: &str,
) -> Result<Value, McpError> {
    if uri != GRAPH_URI {
        return Err(McpError::resource_not_found(uri));
    }
    let tenant = tenant(ctx)?;
    let graph = p
        .memory(&tenant)
        .read_graph(&View::only(&Space::Shared), false)
        .await
        .map_err(store_error)?;
    let text = pretty(&official_graph(&graph));
    Ok(json!({ "contents": [{ "uri": GRAPH_URI, "mimeType": "application/json", "text": text }] }))
}

// ---- results -----------------------------------------------------------------

/// `JSON.stringify(value, null, 2)`.
fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// An official-style result: the text, and the structured content.
fn official(text: String, structured: Value) -> Value {
    json!({ "content": [{ "type": "text", "text": text }], "structuredContent": structured })
}

/// Our own tools' result: the value as text and as structured content.
fn ok(value: Value) -> Value {
    json!({ "content": [{ "type": "text", "text": value.to_string() }], "structuredContent": value })
}

fn failed(message: impl Into<String>) -> Value {
    json!({ "content": [{ "type": "text", "text": message.into() }], "isError": true })
}

fn store_error(e: StoreError) -> McpError {
    match e {
        StoreError::Invalid { field, message } => {
            McpError::invalid_params(format!("`{field}` {message}"))
        }
        other => McpError::internal(other.to_string()),
    }
}

fn memory_error(e: MemoryError) -> McpError {
    match e {
        MemoryError::Store(s) => store_error(s),
        other => McpError::internal(other.to_string()),
    }
}

fn official_entity(e: &EntityRecord) -> Value {
    json!({ "name": e.name, "entityType": e.entity_type, "observations": e.observations })
}

fn official_relation(r: &RelationRecord) -> Value {
    json!({ "from": r.from, "to": r.to, "relationType": r.relation_type })
}

fn official_graph(g: &GraphRecords) -> Value {
    json!({
        "entities": g.entities.iter().map(official_entity).collect::<Vec<_>>(),
        "relations": g.relations.iter().map(official_relation).collect::<Vec<_>>(),
    })
}

fn scope_name(space: &Space) -> &'static str {
    match space {
        Space::Shared => "shared",
        Space::Private(_) => "private",
    }
}

fn rich_entity(e: &EntityRecord) -> Value {
    json!({
        "name": e.name, "entityType": e.entity_type, "observations": e.observations,
        "scope": scope_name(&e.space), "confidence": e.confidence, "source": e.source,
        "provenance": e.provenance, "accessCount": e.access_count,
        "createdAtMs": e.created_at_ms, "updatedAtMs": e.updated_at_ms,
        "validFromMs": e.valid_from_ms, "validToMs": e.valid_to_ms,
    })
}

fn rich_relation(r: &RelationRecord) -> Value {
    json!({
        "from": r.from, "to": r.to, "relationType": r.relation_type, "scope": scope_name(&r.space),
        "confidence": r.confidence, "inferred": r.inferred, "score": r.score, "source": r.source,
        "validFromMs": r.valid_from_ms,
    })
}

fn memory_json(m: &MemoryRecord) -> Value {
    json!({
        "key": m.key, "value": m.value, "category": m.category, "tags": m.tags,
        "scope": scope_name(&m.space), "version": m.version, "source": m.source,
        "provenance": m.provenance, "accessCount": m.access_count,
        "createdAtMs": m.created_at_ms, "updatedAtMs": m.updated_at_ms, "expiresAtMs": m.expires_at_ms,
    })
}

// ---- arguments -----------------------------------------------------------------

fn tenant(ctx: &CallContext) -> Result<TenantId, McpError> {
    TenantId::parse(&ctx.tenant).map_err(|e| McpError::invalid_request(format!("tenant: {e}")))
}

fn private_space(ctx: &CallContext) -> Result<Space, McpError> {
    if ctx.principal.kind == PrincipalKind::Anonymous {
        return Err(McpError::invalid_params(
            "`scope` \"private\" needs an authenticated caller: an anonymous caller has no private memory",
        ));
    }
    Ok(Space::Private(ctx.principal.id.to_string()))
}

/// The space a write goes to.
fn write_space(ctx: &CallContext, args: &Map<String, Value>) -> Result<Space, McpError> {
    match args.get("scope") {
        None | Some(Value::Null) => Ok(Space::Shared),
        Some(Value::String(s)) if s == "shared" => Ok(Space::Shared),
        Some(Value::String(s)) if s == "private" => private_space(ctx),
        Some(other) => Err(McpError::invalid_params(format!(
            "`scope` must be \"shared\" or \"private\", got {other}"
        ))),
    }
}

/// The spaces a read sees.
fn read_view(ctx: &CallContext, args: &Map<String, Value>) -> Result<View, McpError> {
    match args.get("scope") {
        Some(Value::String(s)) if s == "all" => {
            let Space::Private(p) = private_space(ctx)? else {
                unreachable!("private_space returns a private space")
            };
            Ok(View::shared_and_private(&p))
        }
        _ => write_space(ctx, args).map(|s| View::only(&s)),
    }
}

fn string<'a>(args: &'a Map<String, Value>, field: &str) -> Result<&'a str, McpError> {
    match args.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(McpError::invalid_params(format!("`{field}` is required"))),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{field}` must be a string"
        ))),
    }
}

fn opt_string<'a>(args: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, McpError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{field}` must be a string"
        ))),
    }
}

fn strings(value: Option<&Value>, field: &str) -> Result<Vec<String>, McpError> {
    let Some(Value::Array(items)) = value else {
        return Err(McpError::invalid_params(format!(
            "`{field}` must be an array of strings"
        )));
    };
    if items.len() > MEMORY_BATCH_MAX {
        return Err(McpError::invalid_params(format!(
            "`{field}` has more than {MEMORY_BATCH_MAX} items"
        )));
    }
    items
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| McpError::invalid_params(format!("`{field}` must be an array of strings")))
}

fn objects<'a>(
    args: &'a Map<String, Value>,
    field: &str,
) -> Result<Vec<&'a Map<String, Value>>, McpError> {
    let Some(Value::Array(items)) = args.get(field) else {
        return Err(McpError::invalid_params(format!(
            "`{field}` must be an array of objects"
        )));
    };
    if items.len() > MEMORY_BATCH_MAX {
        return Err(McpError::invalid_params(format!(
            "`{field}` has more than {MEMORY_BATCH_MAX} items"
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_object().ok_or_else(|| {
                McpError::invalid_params(format!("`{field}[{i}]` must be an object"))
            })
        })
        .collect()
}

fn item_string(
    item: &Map<String, Value>,
    list: &str,
    i: usize,
    field: &str,
) -> Result<String, McpError> {
    item.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| McpError::invalid_params(format!("`{list}[{i}].{field}` must be a string")))
}

fn relations_arg(args: &Map<String, Value>) -> Result<Vec<NewRelation>, McpError> {
    objects(args, "relations")?
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(NewRelation::stated(
                &item_string(r, "relations", i, "from")?,
                &item_string(r, "relations", i, "to")?,
                &item_string(r, "relations", i, "relationType")?,
            ))
        })
        .collect()
}

fn uint(args: &Map<String, Value>, field: &str, default: u64, max: u64) -> Result<u64, McpError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=max).contains(n) || (field == "depth" && *n <= max))
            .ok_or_else(|| {
                McpError::invalid_params(format!("`{field}` must be an integer within 1..={max}"))
            }),
    }
}

fn unit_number(args: &Map<String, Value>, field: &str) -> Result<Option<f64>, McpError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| (0.0..=1.0).contains(n))
            .map(Some)
            .ok_or_else(|| {
                McpError::invalid_params(format!("`{field}` must be a number within 0..=1"))
            }),
    }
}

fn flag(args: &Map<String, Value>, field: &str, default: bool) -> Result<bool, McpError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(McpError::invalid_params(format!(
            "`{field}` must be a boolean"
        ))),
    }
}

// ---- dispatch ------------------------------------------------------------------

pub(crate) async fn call(
    p: &MemoryProvider,
    ctx: &CallContext,
    name: &str,
    args: Map<String, Value>,
) -> Result<Value, McpError> {
    let tenant = tenant(ctx)?;
    let t = &tenant;
    let a = &args;
    match name {
        "create_entities" => create_entities(p, ctx, t, a).await,
        "create_relations" => {
            let space = write_space(ctx, a)?;
            let created = p
                .memory(t)
                .create_relations(&space, &relations_arg(a)?)
                .await
                .map_err(store_error)?;
            let list: Vec<Value> = created.iter().map(official_relation).collect();
            Ok(official(pretty(&json!(list)), json!({ "relations": list })))
        }
        "add_observations" => add_observations(p, ctx, t, a).await,
        "delete_entities" => {
            let space = write_space(ctx, a)?;
            let names = strings(a.get("entityNames"), "entityNames")?;
            let ids = p
                .memory(t)
                .delete_entities(&space, &names)
                .await
                .map_err(store_error)?;
            p.unindex(t, ItemKind::Entity, &ids).await;
            Ok(done("Entities deleted successfully"))
        }
        "delete_observations" => {
            let space = write_space(ctx, a)?;
            let deletions = objects(a, "deletions")?
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    Ok((
                        item_string(d, "deletions", i, "entityName")?,
                        strings(
                            d.get("observations"),
                            &format!("deletions[{i}].observations"),
                        )?,
                    ))
                })
                .collect::<Result<Vec<_>, McpError>>()?;
            let memory = p.memory(t);
            memory
                .delete_observations(&space, &deletions)
                .await
                .map_err(store_error)?;
            reembed_entities(
                p,
                t,
                &space,
                deletions.iter().map(|d| d.0.clone()).collect(),
            )
            .await?;
            Ok(done("Observations deleted successfully"))
        }
        "delete_relations" => {
            let space = write_space(ctx, a)?;
            p.memory(t)
                .delete_relations(&space, &relations_arg(a)?)
                .await
                .map_err(store_error)?;
            Ok(done("Relations deleted successfully"))
        }
        "read_graph" => {
            let graph = p
                .memory(t)
                .read_graph(&read_view(ctx, a)?, false)
                .await
                .map_err(store_error)?;
            let g = official_graph(&graph);
            Ok(official(pretty(&g), g))
        }
        "search_nodes" => {
            let query = string(a, "query")?.to_lowercase();
            let graph = p
                .memory(t)
                .read_graph(&read_view(ctx, a)?, false)
                .await
                .map_err(store_error)?;
            // The official server's matching: a case-insensitive substring
            // of the name, the type or any observation.
            let entities: Vec<EntityRecord> = graph
                .entities
                .into_iter()
                .filter(|e| {
                    e.name.to_lowercase().contains(&query)
                        || e.entity_type.to_lowercase().contains(&query)
                        || e.observations
                            .iter()
                            .any(|o| o.to_lowercase().contains(&query))
                })
                .collect();
            Ok(subgraph_result(entities, graph.relations))
        }
        "open_nodes" => {
            let names = strings(a.get("names"), "names")?;
            let graph = p
                .memory(t)
                .read_graph(&read_view(ctx, a)?, false)
                .await
                .map_err(store_error)?;
            let entities = graph
                .entities
                .into_iter()
                .filter(|e| names.contains(&e.name))
                .collect();
            Ok(subgraph_result(entities, graph.relations))
        }
        "store_memory" => store_memory(p, ctx, t, a).await,
        "retrieve_memory" => retrieve_memory(p, ctx, t, a).await,
        "delete_memory" => {
            let space = write_space(ctx, a)?;
            let id = p
                .memory(t)
                .delete_memory(&space, string(a, "key")?)
                .await
                .map_err(store_error)?;
            if let Some(id) = id {
                p.unindex(t, ItemKind::Memory, &[id]).await;
            }
            Ok(ok(json!({ "deleted": id.is_some() })))
        }
        "list_categories" => {
            let cats = p
                .memory(t)
                .categories(&read_view(ctx, a)?)
                .await
                .map_err(store_error)?;
            let list: Vec<Value> = cats
                .iter()
                .map(|(c, n)| json!({ "category": c, "count": n }))
                .collect();
            Ok(ok(json!({ "categories": list })))
        }
        "query_concepts" => query_concepts(p, ctx, t, a).await,
        "update_concept" => update_concept(p, ctx, t, a).await,
        "export_graph" => export_graph(p, ctx, t, a).await,
        "import_graph" => import_graph(p, ctx, t, a).await,
        "consolidate_memory" => {
            let space = write_space(ctx, a)?;
            let merge =
                unit_number(a, "mergeThreshold")?.map_or(p.config.merge_threshold, |v| v as f32);
            let prune = unit_number(a, "pruneBelow")?.unwrap_or(p.config.prune_below);
            let counts = p
                .consolidate(t, &space, merge, prune)
                .await
                .map_err(memory_error)?;
            Ok(ok(counts))
        }
        "elevate_knowledge" => elevate(p, ctx, t, a).await,
        other => Err(McpError::invalid_params(format!("unknown tool: {other}"))),
    }
}

fn done(message: &str) -> Value {
    official(
        message.to_owned(),
        json!({ "success": true, "message": message }),
    )
}

/// The entities, and the relations with at least one end among them.
fn subgraph_result(entities: Vec<EntityRecord>, relations: Vec<RelationRecord>) -> Value {
    let names: HashSet<&str> = entities.iter().map(|e| e.name.as_str()).collect();
    let relations: Vec<RelationRecord> = relations
        .into_iter()
        .filter(|r| names.contains(r.from.as_str()) || names.contains(r.to.as_str()))
        .collect();
    let g = official_graph(&GraphRecords {
        entities,
        relations,
    });
    official(pretty(&g), g)
}

async fn create_entities(
    p: &MemoryProvider,
    ctx: &CallContext,
    t: &TenantId,
    a: &Map<String, Value>,
) -> Result<Value, McpError> {
    let space = write_space(ctx, a)?;
    let entities = objects(a, "entities")?
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(NewEntity::new(
                &item_string(e, "entities", i, "name")?,
                &item_string(e, "entities", i, "entityType")?,
                strings(
                    e.get("observations"),
                    &format!("entities[{i}].observations"),
                )?,
            ))
        })
        .collect::<Result<Vec<_>, McpError>>()?;
    let created = p
        .memory(t)
        .create_entities(&space, &entities)
        .await
        .map_err(store_error)?;
    p.after_entities_created(t, &space, &created)
        .await
        .map_err(memory_error)?;
    let list: Vec<Value> = created.iter().map(official_entity).collect();
    Ok(official(pretty(&json!(list)), json!({ "entities": list })))
}

async fn add_observations(
    p: &MemoryProvider,
    ctx: &CallContext,
    t: &TenantId,
    a: &Map<String, Value>,
) -> Result<Value, McpError> {
    let space = write_space(ctx, a)?;
    let additions = objects(a, "observations")?
        .iter()
        .enumerate()
        .map(|(i, o)| {
            Ok((
                item_string(o, "observations", i, "entityName")?,
                strings(o.get("contents"), &format!("observations[{i}].contents"))?,
            ))
        })
        .collect::<Result<Vec<_>, McpError>>()?;
    match p
        .memory(t)
        .add_observations(&space, &additions, None)
        .await
        .map_err(store_error)?
    {
        ObservationsAdded::MissingEntity(name) => {
            Ok(failed(format!("Entity with name {name} not found")))
        }
        ObservationsAdded::Added(results) => {
            reembed_entities(p, t, &space, results.iter().map(|r| r.0.clone()).collect()).await?;
            let list: Vec<Value> = results
                .iter()
                .map(|(n, added)| json!({ "entityName": n, "addedObservations": added }))
                .collect();
            Ok(official(pretty(&json!(list)), json!({ "results": list })))
        }
    }
}

/// Entities whose text changed get a new vector.
async fn reembed_entities(
    p: &MemoryProvider,
    t: &TenantId,
    space: &Space,
    names: Vec<String>,
) -> Result<(), McpError> {
    let names: Vec<String> = names
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let current = p
        .memory(t)
        .entities_by_names(&View::only(space), &names)
        .await
        .map_err(store_error)?;
    let rows: Vec<(i64, Space, String)> = current
        .into_iter()
        .map(|e| (e.id, e.space, e.search_text))
        .collect();
    p.embed_rows(t, ItemKind::Entity, &rows)
        .await
        .map_err(memory_error)
}

async fn store_memory(
    p: &MemoryProvider,
    ctx: &CallContext,
    t: &TenantId,
    a: &Map<String, Value>,
) -> Result<Value, McpError> {
    let space = write_space(ctx, a)?;
    let value = match a.get("value") {
        None | Some(Value::Null) => return Err(McpError::invalid_params("`value` is required")),
        Some(v) => v.clone(),
    };
    let tags = match a.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        v => strings(v, "tags")?,
    };
    let expires_at_ms = match a.get("ttl") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let secs = v
                .as_u64()
                .filter(|s| (1..=100 * 365 * 86_400).contains(s))
                .ok_or_else(|| {
                    McpError::invalid_params(
                        "`ttl` must be a number of seconds within 1..=3153600000",
                    )
                })?;
            Some(now_ms() + secs as i64 * 1000)
        }
    };
    let new = NewMemory {
        key: string(a, "key")?.to_owned(),
        category: string(a, "category")?.to_owned(),
        tags,
        value,
        expires_at_ms,
        source: None,
        provenance: None,
    };
    let record = p
        .memory(t)
        .put_memory(&space, &new, p.config.keep_versions)
        .await
        .map_err(store_error)?;
    p.embed_rows(
        t,
        ItemKind::Memory,
        &[(record.id, record.space.clone(), record.search_text.clone())],
    )
    .await
    .map_err(memory_error)?;
    Ok(ok(json!({ "memory": memory_json(&record) })))
}

async fn retrieve_memory(
    p: &MemoryProvider,
    ctx: &CallContext,
    t: &TenantId,
    a: &Map<String, Value>,
) -> Result<Value, McpError> {
    let view = read_view(ctx, a)?;
    let limit = uint(a, "limit", 10, RESULTS_MAX)?;
    let memory = p.memory(t);
    let key = opt_string(a, "key")?;
    let category = opt_string(a, "category")?;
    let query = opt_string(a, "query")?;
    let found: Vec<(MemoryRecord, Option<f64>)> = if let Some(key) = key {
        memory
            .get_memory(&view, key)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|m| (m, None))
            .collect()
    } else if let Some(query) = query {
        // Over-fetch when filtering by category after ranking.
        let want = if category.is_some() {
            RESULTS_MAX as usize
        } else {
            limit as usize
        };
        let ranked = p
            .search(t, ItemKind::Memory, &view, query, want, SearchMode::Hybrid)
            .await
            .map_err(memory_error)?;
        let ids: Vec<i64> = ranked.iter().map(|r| r.0).collect();
        let records = memory
            .memories_by_ids(&view, &ids)
            .await
            .map_err(store_error)?;
        records
            .into_iter()
            .filter(|m| category.is_none_or(|c| m.category == c))
            .take(limit as usize)
            .map(|m| {
                let score = ranked.iter().find(|r| r.0 == m.id).map(|r| r.1);
                (m, score)
            })
            .collect()
    } else if let Some(category) = category {
        memory
            .list_memories(&view, Some(category), limit as u32)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|m| (m, None))
            .collect()
    } else {
        return Err(McpError::invalid_params(
            "give one of `key`, `category` or `query`",
        ));
    };
    let ids: Vec<i64> = found.iter().map(|f| f.0.id).collect();
    memory.touch_memories(&ids).await.map_err(store_error)?;
    let mut list = Vec::new();
    for (m, score) in &found {
        let mut v = memory_json(m);
        if let Some(s) = score {
            v["score"] = json!(s);
        }
        if key.is_some() && flag(a, "versions", false)? {
            let versions = memory
                .memory_versions(&m.space, &m.key)
                .await
                .map_err(store_error)?;
            v["versions"] = json!(versions);
        }
        list.push(v);
    }
    Ok(ok(json!({ "memories": list })))
}

async fn query_concepts(
    p: &MemoryProvider,
    ctx: &CallContext,
    t: &TenantId,
    a: &Map<String, Value>,
) -> Result<Value, McpError> {
    let view = read_view(ctx, a)?;
    let text = string(a, "text")?;
    let top_k = uint(a, "top_k", 5, RESULTS_MAX)? as usize;
    let depth = uint(a, "depth", 1, 3)? as usize;
    let filters = match a.get("filters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(f)) => f.clone(),
        Some(_) => return Err(McpError::invalid_params("`filters` must be an object")),
    };
    let entity_type = opt_string(&filters, "entityType")?;
    let min_confidence = unit_number(&filters, "minConfidence")?.unwrap_or(0.0);
    let include_inferred = flag(&filters, "includeInferred", true)?;
    let memory = p.memory(t);
    let ranked = p
        .search(
            t,
            ItemKind::Entity,
            &view,
            text,
            RESULTS_MAX as usize,
            SearchMode::Hybrid,
        )
        .await
        .map_err(memory_error)?;
    let ids: Vec<i64> = ranked.iter().map(|r| r.0).collect();
    let hits: Vec<EntityRecord> = memory
        .entities_by_ids(&view, &ids)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|e| e.valid_to_ms.is_none())
        .filter(|e| entity_type.is_none_or(|ty| e.entity_type == ty))
        .filter(|e| e.confidence >= min_confidence)
        .take(top_k)
        .collect();
    memory
        .touch_entities(&hits.iter().map(|e| e.id).collect::<Vec<_>>())
        .await
        .map_err(store_error)?;
    // Breadth-first over relations, `depth` hops from the hits.
    let mut seen: BTreeSet<String> = hits.iter().map(|e| e.name.clone()).collect();
    let mut frontier: Vec<String> = seen.iter().cloned().collect();
    let mut relations: Vec<RelationRecord> = Vec::new();
    let mut relation_ids = HashSet::new();
    for _ in 0..depth {
        if frontier.is_empty() {
            break;
        }
        let found = memory
            .relations_touching(&view, &frontier, include_inferred)
            .await
            .map_err(store_error)?;
        let mut next = Vec::new();
        for r in found {
            for end in [&r.from, &r.to] {
                if seen.insert(end.clone()) {
                    next.push(end.clone());
                }
            }
            if relation_ids.insert(r.id) {
                relations.push(r);
            }
        }
        frontier = next;
    }
    let names: Vec<String> = seen.into_iter().collect();
    let entities = memory
        .entities_by_names(&view, &names)
        .await
        .map_err(store_error)?;
    let results: Vec<Value> = hits
        .iter()
        .map(|e| {
            let mut v = rich_entity(e);
            v["score"] = json!(ranked.iter().find(|r| r.0 == e.id).map(|r| r.1));
            v
        })
        .collect();
    relations.sort_by_key(|r| r.id);
    Ok(ok(json!({
        "results": results,
        "subgraph": {
            "entities": entities.iter().map(rich_entity).collect::<Vec<_>>(),
            "relations": relations.iter().map(rich_relation).collect::<Vec<_>>(),
        }
    })))
}

async fn update_concept(
    p: &MemoryProvider,
    ctx: &CallContext,
    t: &TenantId,
    a: &Map<String, Value>,
) -> Result<Value, McpError> {
    let space = write_space(ctx, a)?;
    let name = string(a, "name")?;
    let change = EntityChange {
        entity_type: opt_string(a, "entityType")?.map(str::to_owned),
        observations: match a.get("observations") {
            None | Some(Value::Null) => None,
            v => Some(strings(v, "observations")?),
        },
        add_observations: match a.get("addObservations") {
            None | Some(Value::Null) => Vec::new(),
            v => strings(v, "addObservations")?,
        },
        confidence: unit_number(a, "confidence")?,
        source: opt_string(a, "source")?.map(str::to_owned),
    };
    let Some((old, record)) = p
        .memory(t)
        .supersede_entity(&space, name, &change)
        .await
        .map_err(store_error)?
    else {
        return Ok(failed(format!("Entity with name {name} not found")));
    };
    p.unindex(t, ItemKind::Entity, &[old]).await;
    p.embed_rows(
        t,
        ItemKind::Entity,
        &[(record.id, record.space.clone(), record.search_text.clone())],
    )
    .await
    .map_err(memory_error)?;
    Ok(ok(json!({ "entity": rich_entity(&record) })))
}

async fn export_graph(
    p: &MemoryProvider,
    ctx: &CallContext,
    t: &TenantId,
    a: &Map<String, Value>,
) -> Result<Value, McpError> {
    let view = read_view(ctx, a)?;
    let format = opt_string(a, "format")?.unwrap_or("json");
    let (data, graph) = match format {
        "json" => {
            let graph = p
                .memory(t)
                .read_graph(&view, true)
                .await
                .map_err(store_error)?;
            let doc = json!({
                "format": "cellgate-memory-graph/1",
                "entities": graph.entities.iter().map(rich_entity).collect::<Vec<_>>(),
                "relations": graph.relations.iter().map(rich_relation).collect::<Vec<_>>(),
            });
            (pretty(&doc), graph)
        }
        "jsonl" => {
            let graph = p
                .memory(t)
                .read_graph(&view, false)
                .await
                .map_err(store_error)?;
            (to_jsonl(&graph), graph)
        }
        other => {
            return Err(McpError::invalid_params(format!(
                "`format` must be \"json\" or \"jsonl\", got {other:?}"
            )));
        }
    };
    Ok(json!({
        "content": [{ "type": "text", "text": data }],
        "structuredContent": { "format": format, "entities": graph.entities.len(), "relations": graph.relations.len(), "data": data },
    }))
}

/// The official server's file format: one JSON object per line.
pub(crate) fn to_jsonl(graph: &GraphRecords) -> String {
    let mut lines: Vec<String> = graph
        .entities
        .iter()
        .map(|e| json!({ "type": "entity", "name": e.name, "entityType": e.entity_type, "observations": e.observations }).to_string())
        .collect();
    lines.extend(graph.relations.iter().map(|r| {
        json!({ "type": "relation", "from": r.from, "to": r.to, "relationType": r.relation_type }).to_string()
    }));
    lines.join("\n")
}

/// Entities and relations of an import; relations carry inferred flags.
type Parsed = (Vec<NewEntity>, Vec<NewRelation>);

fn parse_import(format: &str, data: &str) -> Result<Parsed, McpError> {
    let bad = |m: String| McpError::invalid_params(format!("`data`: {m}"));
    let entity_of = |v: &Value, at: &str| -> Result<NewEntity, McpError> {
        let s = |f: &str| {
            v.get(f)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}: `{f}` must be a string")))
        };
        let observations = match v.get("observations") {
            None | Some(Value::Null) => Vec::new(),
            o => strings(o, &format!("{at}.observations"))?,
        };
        let mut e = NewEntity::new(s("name")?, s("entityType")?, observations);
        if let Some(c) = v.get("confidence").and_then(Value::as_f64) {
            e.confidence = c;
        }
        e.source = v.get("source").and_then(Value::as_str).map(str::to_owned);
        e.provenance = v.get("provenance").filter(|p| p.is_array()).cloned();
        Ok(e)
    };
    let relation_of = |v: &Value, at: &str| -> Result<NewRelation, McpError> {
        let s = |f: &str| {
            v.get(f)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}: `{f}` must be a string")))
        };
        let mut r = NewRelation::stated(s("from")?, s("to")?, s("relationType")?);
        r.inferred = v.get("inferred").and_then(Value::as_bool).unwrap_or(false);
        r.score = v.get("score").and_then(Value::as_f64);
        if let Some(c) = v.get("confidence").and_then(Value::as_f64) {
            r.confidence = c;
        }
        r.source = v.get("source").and_then(Value::as_str).map(str::to_owned);
        Ok(r)
    };
    let (mut entities, mut relations) = (Vec::new(), Vec::new());
    match format {
        "jsonl" => {
            for (n, line) in data
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let at = format!("line {}", n + 1);
                let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("{at}: {e}")))?;
                match v.get("type").and_then(Value::as_str) {
                    Some("entity") => entities.push(entity_of(&v, &at)?),
                    Some("relation") => relations.push(relation_of(&v, &at)?),
                    _ => {
                        return Err(bad(format!(
                            "{at}: `type` must be \"entity\" or \"relation\""
                        )));
                    }
                }
            }
        }
        "json" => {
            let v: Value = serde_json::from_str(data).map_err(|e| bad(e.to_string()))?;
            for (i, e) in v
                .get("entities")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                entities.push(entity_of(e, &format!("entities[{i}]"))?);
            }
            for (i, r) in v
                .get("relations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                relations.push(relation_of(r, &format!("relations[{i}]"))?);
            }
        }
        other => {
            return Err(McpError::invalid_params(format!(
                "`format` must be \"json\" or \"jsonl\", got {other:?}"
            )));
        }
    }
    Ok((entities, relations))
}

async fn import_graph(
    p: &MemoryProvider,
    ctx: &CallContext,
    t: &TenantId,
    a: &Map<String, Value>,
) -> Result<Value, McpError> {
    let space = write_space(ctx, a)?;
    let format = opt_string(a, "format")?.unwrap_or("jsonl");
    let (entities, relations) = parse_import(format, string(a, "data")?)?;
    let memory = p.memory(t);
    let mut created_entities = 0;
    let mut added_observations = 0;
    for chunk in entities.chunks(MEMORY_BATCH_MAX) {
        let created = memory
            .create_entities(&space, chunk)
            .await
            .map_err(store_error)?;
        created_entities += created.len();
        // Entities that already existed gain the observations they lack.
        let created_names: HashSet<&str> = created.iter().map(|e| e.name.as_str()).collect();
        let additions: Vec<(String, Vec<String>)> = chunk
            .iter()
            .filter(|e| !created_names.contains(e.name.as_str()) && !e.observations.is_empty())
            .map(|e| (e.name.clone(), e.observations.clone()))
            .collect();
        if let ObservationsAdded::Added(results) = memory
            .add_observations(&space, &additions, None)
            .await
            .map_err(store_error)?
        {
            added_observations += results.iter().map(|r| r.1.len()).sum::<usize>();
            reembed_entities(p, t, &space, results.into_iter().map(|r| r.0).collect()).await?;
        }
        p.after_entities_created(t, &space, &created)
            .await
            .map_err(memory_error)?;
    }
    let mut created_relations = 0;
    for chunk in relations.chunks(MEMORY_BATCH_MAX) {
        created_relations += memory
            .create_relations(&space, chunk)
            .await
            .map_err(store_error)?
            .len();
    }
    Ok(ok(json!({
        "entitiesCreated": created_entities,
        "observationsAdded": added_observations,
        "relationsCreated": created_relations,
    })))
}

async fn elevate(
    p: &MemoryProvider,
    ctx: &CallContext,
    t: &TenantId,
    a: &Map<String, Value>,
) -> Result<Value, McpError> {
    let private = private_space(ctx)?;
    let owner = private.owner_key().to_owned();
    let ids = strings(a.get("ids"), "ids")?;
    let anonymize = flag(a, "anonymize", true)?;
    let memory = p.memory(t);
    let redact = |v: &mut Value| {
        if anonymize {
            p.anonymizer().redact(v, Some(&owner))
        } else {
            0
        }
    };
    let at = now_ms();
    let provenance = json!([{ "elevatedFrom": "private", "anonymized": anonymize, "atMs": at }]);
    let mut elevated = Vec::new();
    let mut redactions = 0;
    let mut entity_names = Vec::new();
    for id in &ids {
        if let Some(key) = id.strip_prefix("memory:") {
            let Some(m) = memory
                .get_memory(&View::only(&private), key)
                .await
                .map_err(store_error)?
            else {
                return Ok(failed(format!("no private memory with key {key:?}")));
            };
            let mut doc =
                json!({ "key": m.key, "category": m.category, "tags": m.tags, "value": m.value });
            redactions += redact(&mut doc);
            let new = NewMemory {
                key: doc["key"].as_str().unwrap_or(key).to_owned(),
                category: doc["category"].as_str().unwrap_or(&m.category).to_owned(),
                tags: serde_json::from_value(doc["tags"].take()).unwrap_or_default(),
                value: doc["value"].take(),
                expires_at_ms: m.expires_at_ms,
                source: None,
                provenance: Some(provenance.clone()),
            };
            let r = memory
                .put_memory(&Space::Shared, &new, p.config.keep_versions)
                .await
                .map_err(store_error)?;
            p.embed_rows(
                t,
                ItemKind::Memory,
                &[(r.id, Space::Shared, r.search_text.clone())],
            )
            .await
            .map_err(memory_error)?;
            elevated.push(json!({ "id": id, "sharedId": format!("memory:{}", r.key) }));
        } else if let Some(name) = id.strip_prefix("entity:") {
            let Some(e) = memory.entity(&private, name).await.map_err(store_error)? else {
                return Ok(failed(format!("no private entity named {name:?}")));
            };
            let mut doc = json!({ "name": e.name, "entityType": e.entity_type, "observations": e.observations });
            redactions += redact(&mut doc);
            let observations: Vec<String> =
                serde_json::from_value(doc["observations"].take()).unwrap_or_default();
            let mut new = NewEntity::new(
                doc["name"].as_str().unwrap_or(name),
                doc["entityType"].as_str().unwrap_or(&e.entity_type),
                observations,
            );
            new.confidence = e.confidence;
            new.provenance = Some(provenance.clone());
            let created = memory
                .create_entities(&Space::Shared, std::slice::from_ref(&new))
                .await
                .map_err(store_error)?;
            if created.is_empty() {
                memory
                    .add_observations(
                        &Space::Shared,
                        &[(new.name.clone(), new.observations.clone())],
                        None,
                    )
                    .await
                    .map_err(store_error)?;
                reembed_entities(p, t, &Space::Shared, vec![new.name.clone()]).await?;
            } else {
                p.after_entities_created(t, &Space::Shared, &created)
                    .await
                    .map_err(memory_error)?;
            }
            entity_names.push((e.name.clone(), new.name.clone()));
            elevated.push(json!({ "id": id, "sharedId": format!("entity:{}", new.name) }));
        } else {
            return Err(McpError::invalid_params(format!(
                "`ids`: {id:?} must start with `memory:` or `entity:`"
            )));
        }
    }
    // Stated relations among the elevated entities come along.
    let private_names: Vec<String> = entity_names.iter().map(|n| n.0.clone()).collect();
    let renamed = |n: &str| entity_names.iter().find(|e| e.0 == n).map(|e| e.1.clone());
    let relations: Vec<NewRelation> = memory
        .relations_touching(&View::only(&private), &private_names, false)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter_map(|r| {
            Some(NewRelation::stated(
                &renamed(&r.from)?,
                &renamed(&r.to)?,
                &r.relation_type,
            ))
        })
        .collect();
    let relations_created = memory
        .create_relations(&Space::Shared, &relations)
        .await
        .map_err(store_error)?
        .len();
    Ok(ok(
        json!({ "elevated": elevated, "redactions": redactions, "relationsCreated": relations_created }),
    ))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trips() {
        let data = "{\"type\":\"entity\",\"name\":\"a\",\"entityType\":\"t\",\"observations\":[\"x\"]}\n\
                    {\"type\":\"relation\",\"from\":\"a\",\"to\":\"b\",\"relationType\":\"knows\"}\n";
        let (entities, relations) = parse_import("jsonl", data).expect("parses");
        assert_eq!((entities.len(), relations.len()), (1, 1));
        assert_eq!(entities[0].observations, ["x"]);
        assert!(parse_import("jsonl", "{\"type\":\"other\"}").is_err());
        assert!(parse_import("xml", "").is_err());
    }

    #[test]
    fn definitions_have_the_official_names() {
        let names: Vec<String> = definitions().into_iter().map(|t| t.name).collect();
        for n in [
            "create_entities",
            "create_relations",
            "add_observations",
            "delete_entities",
            "delete_observations",
            "delete_relations",
            "read_graph",
            "search_nodes",
            "open_nodes",
        ] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
    }
}
