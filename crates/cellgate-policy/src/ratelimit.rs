//! GCRA rate limits per tenant, per principal and per tool.
//!
//! [`MemoryLimiter`] keeps state in this process (`governor`);
//! [`RedisLimiter`] keeps it in Redis with one atomic script, so replicas
//! behind a load balancer share the limits. Both implement [`RateLimiter`].

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cellgate_config::RatePlan;
use cellgate_kernel::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// One limit to check: a key and its rate (cells per second) and burst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey {
    pub key: String,
    pub per_second: u32,
    pub burst: u32,
    /// `tenant`, `principal` or `tool`, for the error message.
    pub scope: &'static str,
}

/// The limits that apply to one call under `plan`; rates of 0 are no limit.
pub fn limit_keys(
    plan: &RatePlan,
    tenant: &str,
    principal: &str,
    tool: Option<&str>,
) -> Vec<LimitKey> {
    let mut keys = Vec::with_capacity(3);
    let mut push = |scope, key: String, rate: u32, burst: u32| {
        if rate > 0 {
            keys.push(LimitKey {
                key,
                per_second: rate,
                burst: if burst == 0 { rate } else { burst },
                scope,
            });
        }
    };
    // Separators cannot occur in tenant ids; principal and tool names are
    // length-prefixed so no two (principal, tool) pairs share a key.
    push(
        "tenant",
        format!("t:{tenant}"),
        plan.tenant_per_second,
        plan.tenant_burst,
    );
    push(
        "principal",
        format!("p:{tenant}:{}:{principal}", principal.len()),
        plan.principal_per_second,
        plan.principal_burst,
    );
    if let Some(tool) = tool {
        push(
            "tool",
            format!("x:{tenant}:{}:{principal}:{tool}", principal.len()),
            plan.tool_per_second,
            plan.tool_burst,
        );
    }
    keys
}

/// The answer of a limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    /// Over the limit of `scope`; retry after the duration.
    Yes {
        scope: &'static str,
        retry_after: Duration,
    },
    No,
}

#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct LimiterError(pub String);

pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one cell from every key, or none if any of them is exhausted.
    fn check<'a>(&'a self, keys: &'a [LimitKey]) -> BoxFuture<'a, Result<Limited, LimiterError>>;
}

type KeyedLimiter = DefaultKeyedRateLimiter<String>;

/// In-process GCRA on `governor`: one keyed limiter per distinct quota.
#[derive(Default)]
pub struct MemoryLimiter {
    limiters: RwLock<HashMap<(u32, u32), Arc<KeyedLimiter>>>,
    checks: AtomicU64,
}

/// How often (in checks) idle keys are swept so memory stays bounded.
const SWEEP_EVERY: u64 = 1 << 14;

impl MemoryLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn limiter(&self, per_second: u32, burst: u32) -> Arc<KeyedLimiter> {
        if let Some(l) = self
            .limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(per_second, burst))
        {
            return l.clone();
        }
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst_nz);
        self.limiters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry((per_second, burst))
            .or_insert_with(|| Arc::new(DefaultKeyedRateLimiter::keyed(quota)))
            .clone()
    }
}

impl RateLimiter for MemoryLimiter {
    fn check<'a>(&'a self, keys: &'a [LimitKey]) -> BoxFuture<'a, Result<Limited, LimiterError>> {
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for l in self
                .limiters
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                l.retain_recent();
            }
        }
        // governor checks keys one by one: a cell taken from the tenant
        // bucket is not returned when the principal bucket refuses. Within
        // one process that over-counts by at most one cell per refused call.
        let mut verdict = Limited::No;
        for k in keys {
            if let Err(not_until) = self.limiter(k.per_second, k.burst).check_key(&k.key) {
                verdict = Limited::Yes {
                    scope: k.scope,
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                };
                break;
            }
        }
        Box::pin(std::future::ready(Ok(verdict)))
    }
}

/// GCRA over several keys at once, all or nothing, on Redis's clock (so
/// replicas with skewed clocks agree). KEYS: the buckets. ARGV: per key, the
/// emission interval and the burst tolerance in microseconds. Returns
/// `{0, 0}` when allowed (and then takes a cell from every key), else
/// `{microseconds to wait, 1-based index of the refusing key}`.
const GCRA_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local wait, which = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - tolerance
  if allow_at > now and allow_at - now > wait then
    wait = allow_at - now
    which = i
  end
  tats[i] = new_tat
end
if wait > 0 then return {math.ceil(wait), which} end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return {0, 0}
"#;

/// GCRA in Redis, shared by every replica that points at the same server.
pub struct RedisLimiter {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    prefix: String,
}

impl RedisLimiter {
    /// Connects (with automatic reconnection). Keys are `<prefix><key>`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LimiterError> {
        let client =
            redis::Client::open(url).map_err(|e| LimiterError(format!("bad Redis URL: {e}")))?;
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| LimiterError(format!("connecting to Redis: {e}")))?;
        Ok(Self {
            conn,
            script: redis::Script::new(GCRA_SCRIPT),
            prefix: prefix.to_owned(),
        })
    }
}

impl RateLimiter for RedisLimiter {
    fn check<'a>(&'a self, keys: &'a [LimitKey]) -> BoxFuture<'a, Result<Limited, LimiterError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Limited::No);
            }
            let mut inv = self.script.prepare_invoke();
            for k in keys {
                let interval = 1_000_000u64 / u64::from(k.per_second.max(1));
                inv.key(format!("{}{}", self.prefix, k.key));
                inv.arg(interval).arg(interval * u64::from(k.burst.max(1)));
            }
            let mut conn = self.conn.clone();
            let (wait_us, which): (u64, usize) = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| LimiterError(e.to_string()))?;
            if wait_us == 0 {
                return Ok(Limited::No);
            }
            Ok(Limited::Yes {
                scope: keys
                    .get(which.saturating_sub(1))
                    .map_or("tenant", |k| k.scope),
                retry_after: Duration::from_micros(wait_us),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(t: u32, tb: u32, p: u32, pb: u32) -> RatePlan {
        RatePlan {
            tenant_per_second: t,
            tenant_burst: tb,
            principal_per_second: p,
            principal_burst: pb,
            tool_per_second: 0,
            tool_burst: 0,
        }
    }

    #[test]
    fn keys_skip_unlimited_scopes_and_do_not_collide() {
        let keys = limit_keys(&plan(10, 0, 0, 0), "acme", "bob", Some("t"));
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].scope, keys[0].burst), ("tenant", 10));
        let a = limit_keys(&plan(0, 0, 1, 1), "acme", "a:b", None);
        let b = limit_keys(&plan(0, 0, 1, 1), "acme", "a", None);
        assert_ne!(a[0].key, b[0].key);
    }

    #[tokio::test]
    async fn memory_limiter_allows_the_burst_then_refuses_with_a_wait() {
        let l = MemoryLimiter::new();
        let keys = limit_keys(&plan(0, 0, 1, 3), "acme", "bob", None);
        for _ in 0..3 {
            assert_eq!(l.check(&keys).await.unwrap(), Limited::No);
        }
        match l.check(&keys).await.unwrap() {
            Limited::Yes { scope, retry_after } => {
                assert_eq!(scope, "principal");
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            Limited::No => panic!("the fourth call within a second must be limited"),
        }
        // Another principal has its own bucket.
        let other = limit_keys(&plan(0, 0, 1, 3), "acme", "carol", None);
        assert_eq!(l.check(&other).await.unwrap(), Limited::No);
    }

    /// A real `redis-server` on a free loopback port, stopped on drop.
    struct RedisServer {
        child: std::process::Child,
        port: u16,
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_redis() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("CELLGATE_REQUIRE_REDIS").as_deref() != Ok("1"),
                    "CELLGATE_REQUIRE_REDIS=1 but redis-server cannot start: {e}"
                );
                eprintln!(
                    "note: redis-server not available ({e}); skipping the Redis limiter test"
                );
                return None;
            }
        };
        let server = RedisServer { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on port {port}");
    }

    #[tokio::test]
    async fn redis_limiter_is_shared_all_or_nothing_and_reports_the_scope() {
        let Some(server) = start_redis() else { return };
        let url = format!("redis://127.0.0.1:{}/", server.port);
        // Two limiters = two replicas sharing one Redis.
        let a = RedisLimiter::connect(&url, "cg-test:").await.unwrap();
        let b = RedisLimiter::connect(&url, "cg-test:").await.unwrap();
        let keys = limit_keys(&plan(100, 100, 1, 3), "acme", "bob", None);
        assert_eq!(a.check(&keys).await.unwrap(), Limited::No);
        assert_eq!(b.check(&keys).await.unwrap(), Limited::No);
        assert_eq!(a.check(&keys).await.unwrap(), Limited::No);
        match b.check(&keys).await.unwrap() {
            Limited::Yes { scope, retry_after } => {
                assert_eq!(scope, "principal");
                assert!(
                    retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1),
                    "{retry_after:?}"
                );
            }
            Limited::No => panic!("the burst of 3 is shared by both replicas"),
        }
        // The tenant bucket is shared by all of its principals.
        let tight = limit_keys(&plan(1, 4, 100, 100), "beta", "bob", None);
        for _ in 0..3 {
            assert_eq!(a.check(&tight).await.unwrap(), Limited::No);
        }
        let carol = limit_keys(&plan(1, 4, 100, 100), "beta", "carol", None);
        assert_eq!(a.check(&carol).await.unwrap(), Limited::No);
        assert!(matches!(
            a.check(&carol).await.unwrap(),
            Limited::Yes {
                scope: "tenant",
                ..
            }
        ));
        // A server that went away is an error (the stage then refuses).
        drop(server);
        assert!(a.check(&keys).await.is_err());
    }
}
