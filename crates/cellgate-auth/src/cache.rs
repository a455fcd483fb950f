//! A small bounded map with per-entry expiry, keyed by SHA-256 digests of
//! credentials: what lets a warm call skip signature checks and Argon2.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

pub(crate) type CacheKey = [u8; 32];

/// SHA-256 of a credential. The cache never holds the credential itself.
pub(crate) fn digest(credential: &str) -> CacheKey {
    Sha256::digest(credential.as_bytes()).into()
}

pub(crate) struct TtlCache<V> {
    entries: Mutex<HashMap<CacheKey, (V, i64)>>,
    capacity: usize,
}

impl<V: Clone> TtlCache<V> {
    /// A cache of at most `capacity` entries; 0 caches nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (V, i64)>> {
        // A panic while holding the lock leaves a map that is still
        // consistent (no multi-step updates), so poisoning is ignored.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value, if present and not expired at `now_ms`.
    pub(crate) fn get(&self, key: &CacheKey, now_ms: i64) -> Option<V> {
        let mut map = self.lock();
        match map.get(key) {
            Some((value, expires)) if *expires > now_ms => Some(value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores a value until `expires_ms`. When full, expired entries go
    /// first, then an arbitrary eighth of the rest.
    pub(crate) fn insert(&self, key: CacheKey, value: V, expires_ms: i64, now_ms: i64) {
        if self.capacity == 0 || expires_ms <= now_ms {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (_, expires)| *expires > now_ms);
            if map.len() >= self.capacity {
                let drop_count = (self.capacity / 8).max(1);
                let victims: Vec<CacheKey> = map.keys().take(drop_count).copied().collect();
                for victim in victims {
                    map.remove(&victim);
                }
            }
        }
        map.insert(key, (value, expires_ms));
    }

    /// Removes every entry whose value matches.
    pub(crate) fn remove_where(&self, mut matches: impl FnMut(&V) -> bool) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, (value, _)| !matches(value));
        before - map.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_bound_holds() {
        let cache = TtlCache::new(16);
        let now = 1_000;
        cache.insert(digest("a"), 1, now + 10, now);
        assert_eq!(cache.get(&digest("a"), now), Some(1));
        assert_eq!(cache.get(&digest("a"), now + 10), None);
        assert_eq!(cache.len(), 0);
        // Already expired: not stored.
        cache.insert(digest("b"), 2, now, now);
        assert_eq!(cache.len(), 0);
        for i in 0..100 {
            cache.insert(digest(&i.to_string()), i, now + 1_000, now);
            assert!(cache.len() <= 16);
        }
        assert_eq!(cache.get(&digest("99"), now), Some(99));
        assert_eq!(cache.remove_where(|v| *v == 99), 1);
        assert_eq!(cache.get(&digest("99"), now), None);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = TtlCache::new(0);
        cache.insert(digest("a"), 1, 10, 0);
        assert_eq!(cache.get(&digest("a"), 0), None);
    }
}
