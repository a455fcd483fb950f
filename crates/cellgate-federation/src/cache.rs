//! The result cache of one upstream: results of read-only, idempotent tools,
//! per tenant, bounded by entries and bytes, least recently used first out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cellgate_config::CacheConfig;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::{Map, Value};

use crate::pins::canonical_json;
use crate::session::lock;

/// The key of one cached result: tenant, tool (as the upstream names it)
/// and arguments, as canonical JSON (object keys sorted at every level), so
/// the same arguments in another key order hit the same entry.
pub fn cache_key(tenant: &str, tool: &str, arguments: &Map<String, Value>) -> String {
    let mut out = String::new();
    canonical_json(
        &Value::Array(vec![
            Value::String(tenant.to_owned()),
            Value::String(tool.to_owned()),
            Value::Object(arguments.clone()),
        ]),
        &mut out,
    );
    out
}

struct Entry {
    value: Value,
    expires: Instant,
    bytes: usize,
    /// Position in `ResultCache::recency`.
    tick: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Tick → key, oldest use first.
    recency: BTreeMap<u64, String>,
    next_tick: u64,
    bytes: usize,
}

impl State {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.recency.remove(&e.tick);
            self.bytes -= e.bytes;
        }
    }
}

/// What [`ResultCache::get`] found.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    Hit(Value),
    Miss,
}

/// The same glob syntax as the permission matrix's (globset): `*`, `?`,
/// `[...]`. A pattern globset refuses matches itself literally, so a typo
/// caches less, never more.
fn tool_globs(patterns: &[String]) -> GlobSet {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).or_else(|_| Glob::new(&globset::escape(p)));
        if let Ok(glob) = glob {
            set.add(glob);
        }
    }
    set.build().unwrap_or_else(|_| GlobSet::empty())
}

/// One upstream's cached results.
pub struct ResultCache {
    patterns: GlobSet,
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    state: Mutex<State>,
}

impl ResultCache {
    /// `None` when the configuration caches nothing.
    pub fn new(cfg: &CacheConfig) -> Option<Self> {
        if cfg.tools.is_empty() {
            return None;
        }
        Some(Self {
            patterns: tool_globs(&cfg.tools),
            ttl: Duration::from_secs(cfg.ttl_secs),
            max_entries: usize::try_from(cfg.max_entries)
                .unwrap_or(usize::MAX)
                .max(1),
            max_bytes: usize::try_from(cfg.max_bytes).unwrap_or(usize::MAX),
            state: Mutex::default(),
        })
    }

    /// Whether results of `tool` (the upstream's name for it) may be cached
    /// by name; the caller also checks its annotations.
    pub fn covers(&self, tool: &str) -> bool {
        self.patterns.is_match(tool)
    }

    pub fn get(&self, key: &str, now: Instant) -> Lookup {
        let mut s = lock(&self.state);
        let (expired, old_tick) = match s.entries.get(key) {
            None => return Lookup::Miss,
            Some(e) => (e.expires <= now, e.tick),
        };
        if expired {
            s.remove(key);
            return Lookup::Miss;
        }
        let tick = s.next_tick;
        s.next_tick += 1;
        s.recency.remove(&old_tick);
        s.recency.insert(tick, key.to_owned());
        let e = s.entries.get_mut(key).expect("present: checked above");
        e.tick = tick;
        Lookup::Hit(e.value.clone())
    }

    /// Stores a result unless it is an error result or too large (over a
    /// quarter of the byte bound, so one result cannot flush the cache).
    /// Returns whether it was stored.
    pub fn put(&self, key: String, value: &Value, now: Instant) -> bool {
        if value.get("isError").and_then(Value::as_bool) == Some(true) {
            return false;
        }
        let bytes = key.len() + value.to_string().len();
        if bytes > self.max_bytes / 4 {
            return false;
        }
        let mut s = lock(&self.state);
        s.remove(&key);
        while !s.entries.is_empty()
            && (s.entries.len() >= self.max_entries || s.bytes + bytes > self.max_bytes)
        {
            let Some((_, oldest)) = s.recency.pop_first() else {
                break;
            };
            if let Some(e) = s.entries.remove(&oldest) {
                s.bytes -= e.bytes;
            }
        }
        let tick = s.next_tick;
        s.next_tick += 1;
        s.recency.insert(tick, key.clone());
        s.bytes += bytes;
        s.entries.insert(
            key,
            Entry {
                value: value.clone(),
                expires: now + self.ttl,
                bytes,
                tick,
            },
        );
        true
    }

    /// Drops every entry (the upstream's tool definitions changed).
    pub fn clear(&self) {
        *lock(&self.state) = State::default();
    }

    /// Entries and bytes held.
    pub fn size(&self) -> (usize, usize) {
        let s = lock(&self.state);
        (s.entries.len(), s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cache(max_entries: u32, max_bytes: u64) -> ResultCache {
        ResultCache::new(&CacheConfig {
            tools: vec!["get_*".into(), "e?ho".into()],
            ttl_secs: 10,
            max_entries,
            max_bytes,
        })
        .unwrap()
    }

    #[test]
    fn globs() {
        for (p, n, ok) in [
            ("*", "", true),
            ("*", "anything", true),
            ("get_*", "get_", true),
            ("get_*", "get_user", true),
            ("get_*", "forget_user", false),
            ("*_user", "get_user", true),
            ("e?ho", "echo", true),
            ("e?ho", "eho", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**", "x", true),
        ] {
            assert_eq!(tool_globs(&[p.to_owned()]).is_match(n), ok, "{p} vs {n}");
        }
        assert!(ResultCache::new(&CacheConfig::default()).is_none());
        let c = cache(10, 1 << 20);
        assert!(c.covers("get_x") && c.covers("echo") && !c.covers("set_x"));
    }

    #[test]
    fn keys_are_canonical_and_per_tenant() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, 2]}, "b": 1});
        let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
        assert_eq!(cache_key("t", "get", a), cache_key("t", "get", b));
        assert_ne!(cache_key("t", "get", a), cache_key("u", "get", a));
        assert_ne!(cache_key("t", "get", a), cache_key("t", "got", a));
        // No ambiguity from concatenation: the parts are JSON strings.
        assert_ne!(
            cache_key("t\",\"x", "y", &Map::new()),
            cache_key("t", "x\",\"y", &Map::new())
        );
    }

    #[test]
    fn ttl_lru_and_bounds() {
        let now = Instant::now();
        let c = cache(2, 1 << 20);
        assert_eq!(c.get("a", now), Lookup::Miss);
        assert!(c.put("a".into(), &json!({"n": 1}), now));
        assert!(c.put("b".into(), &json!({"n": 2}), now));
        // Touch `a`, so `b` is the least recently used.
        assert_eq!(c.get("a", now), Lookup::Hit(json!({"n": 1})));
        assert!(c.put("c".into(), &json!({"n": 3}), now));
        assert_eq!(c.get("b", now), Lookup::Miss);
        assert_eq!(c.get("a", now), Lookup::Hit(json!({"n": 1})));
        assert_eq!(c.size().0, 2);
        // Expiry.
        let later = now + Duration::from_secs(10);
        assert_eq!(c.get("a", later), Lookup::Miss);
        assert_eq!(c.size().0, 1);
        // Error results are not cached.
        assert!(!c.put("e".into(), &json!({"isError": true}), now));
        assert_eq!(c.get("e", now), Lookup::Miss);

        // The byte bound: entries of ~100 bytes in a 1024-byte cache.
        let c = cache(1000, 1024);
        let v = json!({ "text": "x".repeat(90) });
        for i in 0..20 {
            assert!(c.put(format!("k{i}"), &v, now));
            assert!(c.size().1 <= 1024, "{:?}", c.size());
        }
        assert_eq!(c.get("k0", now), Lookup::Miss);
        assert!(matches!(c.get("k19", now), Lookup::Hit(_)));
        // Too large for the cache: not stored, nothing evicted.
        let before = c.size();
        assert!(!c.put("big".into(), &json!({ "text": "x".repeat(300) }), now));
        assert_eq!(c.size(), before);
        c.clear();
        assert_eq!(c.size(), (0, 0));
    }
}
