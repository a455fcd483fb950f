//! Protocol revisions and how a revision is chosen. The rules are written
//! down in this crate's README ("Version negotiation").

/// Revisions that begin with `initialize` and keep a session.
pub const SESSION_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The stateless revision: no `initialize`, version and capabilities travel
/// in each request's `_meta`.
pub const STATELESS_VERSION: &str = "2026-07-28";
/// Every revision this edge speaks, oldest first.
pub const ALL_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];
/// The newest revision with an `initialize` handshake.
pub const LATEST_SESSION_VERSION: &str = "2025-11-25";
/// The revision assumed for HTTP requests without `MCP-Protocol-Version`.
pub const DEFAULT_HTTP_VERSION: &str = "2025-03-26";

pub fn is_supported(v: &str) -> bool {
    ALL_VERSIONS.contains(&v)
}

/// The answer to `initialize` with `requested`: the same revision when we
/// speak it and it has a handshake; otherwise our latest handshake revision,
/// which the client may accept or refuse.
pub fn negotiate_initialize(requested: &str) -> &'static str {
    SESSION_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LATEST_SESSION_VERSION)
}

/// Whether a revision allows JSON-RPC batches (removed in 2025-06-18).
pub fn allows_batches(v: &str) -> bool {
    v == "2024-11-05" || v == "2025-03-26"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        for v in SESSION_VERSIONS {
            assert_eq!(negotiate_initialize(v), v);
        }
        assert_eq!(negotiate_initialize("2026-07-28"), "2025-11-25");
        assert_eq!(negotiate_initialize("1999-01-01"), "2025-11-25");
        assert!(is_supported("2026-07-28") && !is_supported("2025-01-01"));
        assert!(allows_batches("2025-03-26") && !allows_batches("2025-06-18"));
    }
}
