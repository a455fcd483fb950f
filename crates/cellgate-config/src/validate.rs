//! Rules on values that types alone cannot express. Each rule names its key.

use std::net::SocketAddr;

use crate::diagnostic::Problem;
use crate::{Config, StoreBackend};

pub(crate) fn validate(config: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let s = &config.server;
    if s.listen.parse::<SocketAddr>().is_err() {
        p.push(Problem::new(
            "server.listen",
            format!(
                "{:?} is not an IP address and port such as 127.0.0.1:8080",
                s.listen
            ),
        ));
    }
    range(
        &mut p,
        "server.max_body_bytes",
        s.max_body_bytes,
        1024,
        1 << 30,
    );
    range(
        &mut p,
        "server.max_json_depth",
        u64::from(s.max_json_depth),
        2,
        1024,
    );
    range(
        &mut p,
        "server.session_idle_secs",
        s.session_idle_secs,
        1,
        7 * 24 * 3600,
    );
    range(&mut p, "server.sse_retry_ms", s.sse_retry_ms, 1, 3_600_000);
    range(
        &mut p,
        "server.sse_history",
        u64::from(s.sse_history),
        1,
        1_000_000,
    );
    range(
        &mut p,
        "server.request_timeout_secs",
        s.request_timeout_secs,
        1,
        24 * 3600,
    );
    for (i, origin) in s.allowed_origins.iter().enumerate() {
        if !is_origin(origin) {
            p.push(Problem::new(
                format!("server.allowed_origins[{i}]"),
                format!("{origin:?} is not an origin such as https://app.example.com or http://localhost:3000"),
            ));
        }
    }
    for (i, host) in s.allowed_hosts.iter().enumerate() {
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            p.push(Problem::new(
                format!("server.allowed_hosts[{i}]"),
                format!("{host:?} is not a host name such as gateway.example.com"),
            ));
        }
    }

    match (&s.tls_cert, &s.tls_key) {
        (Some(_), None) => p.push(Problem::new(
            "server.tls_key",
            "required with server.tls_cert",
        )),
        (None, Some(_)) => p.push(Problem::new(
            "server.tls_cert",
            "required with server.tls_key",
        )),
        _ => {}
    }

    let st = &config.store;
    match st.backend {
        StoreBackend::Sqlite => {
            if st.url.is_some() {
                p.push(Problem::new(
                    "store.url",
                    "only used with backend = \"postgres\"; the sqlite backend takes store.path",
                ));
            }
            if st.path.as_deref() == Some("") {
                p.push(Problem::new("store.path", "must not be empty"));
            }
        }
        StoreBackend::Postgres => match st.url.as_deref() {
            None => p.push(Problem::new(
                "store.url",
                "required with backend = \"postgres\" (postgres://user:password@host:5432/database)",
            )),
            Some(u) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => p.push(Problem::new(
                "store.url",
                format!(
                    "{:?} is not a postgres:// URL",
                    crate::redact_url_password(u)
                ),
            )),
            Some(_) => {}
        },
    }
    range(
        &mut p,
        "store.max_connections",
        u64::from(st.max_connections),
        1,
        1000,
    );
    if config.log.level.trim().is_empty() {
        p.push(Problem::new(
            "log.level",
            "must not be empty (for example \"info\")",
        ));
    }
    if config.data_dir.as_deref() == Some("") {
        p.push(Problem::new("data_dir", "must not be empty"));
    }
    config.auth.validate(&mut p);
    config.inspect.validate(&mut p);
    config.filter.validate(&mut p);
    config.audit.validate(&mut p);
    config.policy.validate(&mut p);
    config.rate_limit.validate(&mut p);
    config.federation.validate(&mut p);
    config.cells.validate(&mut p);
    config.memory.validate(&mut p);
    config.orchestration.validate(&mut p);
    crate::upstreams::validate_upstreams(&config.upstreams, &mut p);
    crate::servers::validate_servers(&config.servers, &mut p);
    p
}

fn range(p: &mut Vec<Problem>, key: &str, value: u64, min: u64, max: u64) {
    if value < min || value > max {
        p.push(Problem::new(
            key,
            format!("{value} is outside {min}..={max}"),
        ));
    }
}

fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}
