//! `[auth]`: who may call. Owned by the authentication work (cellgate-auth).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// Authentication of callers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Refuse calls without a valid credential (JWT bearer token or API key).
    /// Off by default only for a loopback listener: a single local tenant.
    pub required: bool,
}

impl AuthConfig {
    pub(crate) fn validate(&self, _p: &mut Vec<Problem>) {}
}
