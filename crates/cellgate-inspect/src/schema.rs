//! Tool input schemas: compiled once per definition and cached, the
//! declared field kinds (`format`, `x-cellgate-kind`) the rules look at, and
//! validation errors that name the JSON pointer of the offending field
//! without echoing its value.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cellgate_kernel::{McpError, Tool};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::{Value, json};

/// The kinds declared on the fields of a schema, as a tree that follows the
/// arguments: `props` by property name, `any` for array items and
/// additional or pattern properties.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct KindTree {
    pub kinds: Vec<String>,
    pub props: HashMap<String, KindTree>,
    pub any: Option<Box<KindTree>>,
}

/// Field kinds that name a URL or a host (the SSRF rule then takes the whole
/// value as a target, scheme or not).
pub(crate) const URL_KINDS: [&str; 10] = [
    "uri",
    "url",
    "uri-reference",
    "iri",
    "iri-reference",
    "uri-template",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
];

impl KindTree {
    /// The kinds declared anywhere in `schema`, or `None` when there are none.
    pub fn of(schema: &Value) -> Option<Self> {
        let mut tree = KindTree::default();
        collect(schema, schema, &mut tree, 0);
        (!tree.is_empty()).then_some(tree)
    }

    fn is_empty(&self) -> bool {
        self.kinds.is_empty()
            && self.props.values().all(KindTree::is_empty)
            && self.any.as_deref().is_none_or(KindTree::is_empty)
    }

    pub fn child(&self, key: &str) -> Option<&KindTree> {
        self.props.get(key).or(self.any.as_deref())
    }

    pub fn item(&self) -> Option<&KindTree> {
        self.any.as_deref()
    }

    pub fn has(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
    }

    pub fn is_url(&self) -> bool {
        self.kinds
            .iter()
            .any(|k| URL_KINDS.contains(&k.as_str()) || k == "host")
    }
}

fn collect(node: &Value, root: &Value, into: &mut KindTree, depth: u32) {
    // Guards against `$ref` cycles and absurd nesting.
    if depth > 32 {
        return;
    }
    let Some(obj) = node.as_object() else {
        return;
    };
    for key in ["format", "x-cellgate-kind"] {
        match obj.get(key) {
            Some(Value::String(k)) => push_kind(into, k),
            Some(Value::Array(ks)) => ks
                .iter()
                .filter_map(Value::as_str)
                .for_each(|k| push_kind(into, k)),
            _ => {}
        }
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, sub) in props {
            collect(
                sub,
                root,
                into.props.entry(name.clone()).or_default(),
                depth + 1,
            );
        }
    }
    for key in [
        "items",
        "additionalProperties",
        "additionalItems",
        "prefixItems",
        "unevaluatedProperties",
        "unevaluatedItems",
    ] {
        match obj.get(key) {
            Some(sub @ Value::Object(_)) => {
                collect(sub, root, into.any.get_or_insert_default(), depth + 1);
            }
            Some(Value::Array(subs)) => {
                for sub in subs {
                    collect(sub, root, into.any.get_or_insert_default(), depth + 1);
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Object(pats)) = obj.get("patternProperties") {
        for sub in pats.values() {
            collect(sub, root, into.any.get_or_insert_default(), depth + 1);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = obj.get(key) {
            for b in branches {
                collect(b, root, into, depth + 1);
            }
        }
    }
    for key in ["then", "else"] {
        if let Some(b) = obj.get(key) {
            collect(b, root, into, depth + 1);
        }
    }
    // Local references only; anything else is not followed.
    if let Some(Value::String(r)) = obj.get("$ref")
        && let Some(pointer) = r.strip_prefix('#')
        && let Some(target) = root.pointer(pointer)
    {
        collect(target, root, into, depth + 1);
    }
}

fn push_kind(into: &mut KindTree, kind: &str) {
    let k = kind.trim().to_ascii_lowercase();
    if !k.is_empty() && !into.kinds.contains(&k) {
        into.kinds.push(k);
    }
}

/// One tool definition, ready to check arguments against.
pub(crate) struct CompiledTool {
    /// The validator, or why the schema cannot be compiled.
    pub validator: Result<jsonschema::Validator, String>,
    pub kinds: Option<KindTree>,
}

impl CompiledTool {
    pub fn compile(schema: &Value) -> Self {
        let validator = jsonschema::options()
            // Never fetch anything: a `$ref` outside the document fails.
            .offline()
            .build(schema)
            .map_err(|e| {
                format!(
                    "{} (at {})",
                    describe(e.kind()),
                    pointer_or_root(e.instance_path().as_str())
                )
            });
        Self {
            validator,
            kinds: KindTree::of(schema),
        }
    }

    /// Checks `args` (the arguments object); the error names the tool and
    /// the JSON pointer of each offending field (at most five).
    pub fn validate(&self, tool: &str, args: &Value) -> Result<(), McpError> {
        let validator = match &self.validator {
            Ok(v) => v,
            Err(why) => {
                return Err(McpError::invalid_params(format!(
                    "tool `{tool}` cannot be called: its inputSchema does not compile: {why}"
                )));
            }
        };
        if validator.is_valid(args) {
            return Ok(());
        }
        let mut parts = Vec::new();
        let mut data = Vec::new();
        for e in validator.iter_errors(args).take(5) {
            let mut path = e.instance_path().as_str().to_owned();
            let what = match e.kind() {
                ValidationErrorKind::Required { property } => {
                    path.push('/');
                    path.push_str(&escape_pointer(property.as_str().unwrap_or("?")));
                    "is required".to_owned()
                }
                ValidationErrorKind::AdditionalProperties { unexpected }
                | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                    if let Some(first) = unexpected.first() {
                        path.push('/');
                        path.push_str(&escape_pointer(first));
                    }
                    "is not an argument of this tool".to_owned()
                }
                kind => describe(kind),
            };
            parts.push(format!("{}: {what}", pointer_or_root(&path)));
            data.push(json!({ "path": path, "keyword": e.kind().keyword() }));
        }
        Err(McpError::invalid_params(format!(
            "invalid arguments for tool `{tool}`: {}",
            parts.join("; ")
        ))
        .with_data(json!({ "tool": tool, "errors": data })))
    }
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

pub(crate) fn pointer_or_root(p: &str) -> &str {
    if p.is_empty() { "(arguments)" } else { p }
}

/// What a violated keyword demands, in words; never the offending value.
fn describe(kind: &ValidationErrorKind) -> String {
    use ValidationErrorKind as K;
    match kind {
        K::Type { kind } => match kind {
            TypeKind::Single(t) => format!("must be of type {t}"),
            TypeKind::Multiple(ts) => format!(
                "must be of type {}",
                ts.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        },
        K::Enum { .. } => "must be one of the values the schema allows".into(),
        K::Constant { .. } => "must equal the constant the schema sets".into(),
        K::MinLength { limit } => format!("must be at least {limit} characters long"),
        K::MaxLength { limit } => format!("must be at most {limit} characters long"),
        K::Minimum { limit } => format!("must be at least {limit}"),
        K::Maximum { limit } => format!("must be at most {limit}"),
        K::ExclusiveMinimum { limit } => format!("must be greater than {limit}"),
        K::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        K::MultipleOf { .. } => "must be a multiple of the schema's multipleOf".into(),
        K::Pattern { pattern } => format!("must match the pattern {pattern}"),
        K::Format { format } => format!("must be a valid {format}"),
        K::MinItems { limit } => format!("must have at least {limit} items"),
        K::MaxItems { limit } => format!("must have at most {limit} items"),
        K::UniqueItems => "must not repeat items".into(),
        K::MinProperties { limit } => format!("must have at least {limit} properties"),
        K::MaxProperties { limit } => format!("must have at most {limit} properties"),
        K::Referencing(e) => format!("a reference cannot be resolved ({e})"),
        other => format!("does not satisfy `{}`", other.keyword()),
    }
}

/// Compiled schemas by tool name, each with a hash of the schema it came
/// from: a definition that changes is recompiled, an unchanged one (even if
/// the catalog rebuilt its definitions) is not. Bounded: past `capacity`,
/// the entry used longest ago goes.
pub(crate) struct SchemaCache {
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
    tick: AtomicU64,
    compilations: AtomicU64,
}

struct Entry {
    /// The definition the entry was last confirmed for (same pointer: same schema).
    def: Arc<Tool>,
    hash: u64,
    compiled: Arc<CompiledTool>,
    used: u64,
}

impl SchemaCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            compilations: AtomicU64::new(0),
        }
    }

    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    pub fn get(&self, tool: &Arc<Tool>) -> Arc<CompiledTool> {
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut hash = None;
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = entries.get_mut(&tool.name) {
                if Arc::ptr_eq(&e.def, tool) {
                    e.used = now;
                    return e.compiled.clone();
                }
                let h = schema_hash(&tool.input_schema);
                if h == e.hash {
                    e.def = tool.clone();
                    e.used = now;
                    return e.compiled.clone();
                }
                hash = Some(h);
            }
        }
        // Compiled outside the lock: other tools' calls do not wait for it.
        let hash = hash.unwrap_or_else(|| schema_hash(&tool.input_schema));
        let compiled = Arc::new(CompiledTool::compile(&tool.input_schema));
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&tool.name) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                entries.remove(&k);
            }
        }
        entries.insert(
            tool.name.clone(),
            Entry {
                def: tool.clone(),
                hash,
                compiled: compiled.clone(),
                used: now,
            },
        );
        compiled
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

fn schema_hash(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    hash_value(v, &mut h);
    h.finish()
}

fn hash_value(v: &Value, h: &mut DefaultHasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(a) => {
            (4u8, a.len()).hash(h);
            a.iter().for_each(|x| hash_value(x, h));
        }
        Value::Object(o) => {
            (5u8, o.len()).hash(h);
            for (k, x) in o {
                k.hash(h);
                hash_value(x, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, schema: Value) -> Arc<Tool> {
        Arc::new(Tool::new(name, "t", schema))
    }

    #[test]
    fn errors_name_the_path_and_not_the_value() {
        let schema = json!({
            "type": "object",
            "properties": {
                "limit": {"type": "integer", "maximum": 100},
                "filter": {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 5}}}},
                "mode": {"enum": ["a", "b"]}
            },
            "required": ["query"],
            "additionalProperties": true
        });
        let c = CompiledTool::compile(&schema);
        let e = c
            .validate(
                "search",
                &json!({"query": "x", "limit": "SECRET-VALUE", "filter": {"tags": ["ok", "much-too-long-SECRET"]}}),
            )
            .unwrap_err();
        assert_eq!(e.code, cellgate_kernel::codes::INVALID_PARAMS);
        assert!(
            e.message.contains("/limit: must be of type integer"),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains("/filter/tags/1: must be at most 5 characters long"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("SECRET"), "{}", e.message);
        assert_eq!(e.data.as_ref().unwrap()["errors"][0]["path"], "/limit");

        let e = c
            .validate("search", &json!({"limit": 101, "mode": "c"}))
            .unwrap_err();
        assert!(e.message.contains("/query: is required"), "{}", e.message);
        assert!(
            e.message.contains("/limit: must be at most 100"),
            "{}",
            e.message
        );
        assert!(e.message.contains("/mode: must be one of"), "{}", e.message);
        c.validate("search", &json!({"query": "ok", "limit": 3}))
            .unwrap();

        let strict = CompiledTool::compile(
            &json!({"type":"object","properties":{"a":{}},"additionalProperties":false}),
        );
        let e = strict
            .validate("t", &json!({"a": 1, "b/c": 2}))
            .unwrap_err();
        assert!(
            e.message.contains("/b~1c: is not an argument of this tool"),
            "{}",
            e.message
        );
    }

    #[test]
    fn remote_refs_are_not_fetched_and_fail_closed() {
        for r in ["https://example.invalid/schema.json", "file:///etc/passwd"] {
            let c = CompiledTool::compile(&json!({"type":"object","properties":{"a":{"$ref": r}}}));
            let e = c.validate("t", &json!({"a": 1})).unwrap_err();
            assert!(e.message.contains("does not compile"), "{}", e.message);
        }
        let local = CompiledTool::compile(&json!({
            "$defs": {"n": {"type": "integer"}},
            "type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}
        }));
        assert!(local.validate("t", &json!({"a": "x"})).is_err());
        local.validate("t", &json!({"a": 1})).unwrap();
    }

    #[test]
    fn declared_kinds_follow_the_arguments() {
        let schema = json!({
            "$defs": {"q": {"type": "string", "x-cellgate-kind": "sql"}},
            "type": "object",
            "properties": {
                "cmd": {"type": "string", "format": "command"},
                "steps": {"type": "array", "items": {"type": "object", "properties": {"run": {"x-cellgate-kind": ["Shell", "command"]}}}},
                "query": {"$ref": "#/$defs/q"},
                "target": {"anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}]},
                "plain": {"type": "string"}
            }
        });
        let t = KindTree::of(&schema).unwrap();
        assert!(t.child("cmd").unwrap().has("command"));
        let run = t
            .child("steps")
            .unwrap()
            .item()
            .unwrap()
            .child("run")
            .unwrap();
        assert!(run.has("shell") && run.has("command"));
        assert!(t.child("query").unwrap().has("sql"));
        assert!(t.child("target").unwrap().is_url());
        assert!(t.child("plain").unwrap().kinds.is_empty());
        assert!(
            KindTree::of(&json!({"type":"object","properties":{"a":{"type":"string"}}})).is_none()
        );
        // A self-referencing schema terminates.
        let cyclic = json!({"$defs":{"n":{"properties":{"next":{"$ref":"#/$defs/n"}},"format":"command"}},"$ref":"#/$defs/n"});
        assert!(KindTree::of(&cyclic).unwrap().has("command"));
    }

    #[test]
    fn cache_compiles_once_and_recompiles_changed_definitions() {
        let cache = SchemaCache::new(2);
        let a1 = tool("a", json!({"type":"object"}));
        cache.get(&a1);
        cache.get(&a1);
        assert_eq!(cache.compilations(), 1);
        // The catalog rebuilt its definitions: same schema, new Arc.
        let a2 = tool("a", json!({"type":"object"}));
        cache.get(&a2);
        assert_eq!(cache.compilations(), 1);
        // A changed schema is recompiled and used.
        let a3 = tool("a", json!({"type":"object","required":["x"]}));
        assert!(cache.get(&a3).validate("a", &json!({})).is_err());
        assert_eq!(cache.compilations(), 2);
        // Bounded: a third tool evicts the least recently used.
        let b = tool("b", json!({"type":"object"}));
        let c = tool("c", json!({"type":"object"}));
        cache.get(&b);
        cache.get(&a3);
        cache.get(&c);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.compilations(), 4);
        cache.get(&a3);
        assert_eq!(cache.compilations(), 4, "a was used more recently than b");
        cache.get(&b);
        assert_eq!(cache.compilations(), 5, "b was evicted");
    }
}
