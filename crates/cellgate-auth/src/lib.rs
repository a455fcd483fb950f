//! Authentication for cellgate: who is calling, and in which tenant.
//!
//! This crate turns what a request presents into an [`Identity`] (a tenant
//! and a [`cellgate_kernel::Principal`]):
//!
//! - **JWT bearer tokens** from configured issuers ([`JwtVerifier`]):
//!   HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 and EdDSA, with
//!   keys given inline, in files, or published as a JWKS (fetched, cached,
//!   refreshed, re-fetched on an unknown `kid` at most once per interval).
//!   The accepted algorithms are configured per issuer, never read from the
//!   token; `iss`, `aud`, `exp` and `nbf` are checked; claims map to the
//!   principal, tenant, roles and scopes. Verified tokens are cached by
//!   their SHA-256 until they expire, so a warm call costs a hash.
//! - **API keys** issued by cellgate ([`ApiKeyService`]): `cgk_<id>_<secret>`
//!   with 256 random bits, stored as Argon2id hashes, revocable, with a
//!   short verification cache that revocation clears.
//! - **The instance key and the local issuer** ([`InstanceKey`],
//!   [`LocalIssuer`]): an Ed25519 key in the data directory that signs dev
//!   tokens (`cellgate token issue`) and device-flow tokens.
//! - **OAuth 2.1 resource-server metadata** ([`ResourceServer`]): RFC 9728's
//!   `/.well-known/oauth-protected-resource` and the `WWW-Authenticate`
//!   answers that point to it.
//! - **The device authorization grant** ([`DeviceFlow`], RFC 8628) and its
//!   client ([`login::device_login`]) for `cellgate login`.
//! - **The HTTP layer** ([`HttpAuthLayer`]) that authenticates every request
//!   outside the exempt paths and stores the [`Identity`] in its extensions.
//!
//! [`AuthStack::from_config`] builds all of it from `[auth]`.
//!
//! It is *not* authorization: roles and scopes are carried, not judged
//! (the authorize layer maps roles to permissions). It does not carry the
//! identity into the MCP pipeline either: the edge copies
//! [`Identity::tenant`] and [`Identity::principal`] into the kernel's
//! `CallContext`. And it is not a full OAuth authorization server: for
//! browser sign-in (authorization code with PKCE), point clients at an
//! external one and configure it as an issuer.
//!
//! Secrets never reach logs: every type holding one prints it as
//! `<redacted>`.

mod apikeys;
mod authenticator;
mod cache;
mod clock;
mod device;
mod error;
mod http;
mod identity;
mod instance;
mod jwt;
pub mod login;
mod metadata;
mod random;
mod secret;
mod setup;

pub use apikeys::{
    API_KEY_PREFIX, ApiKeyError, ApiKeyService, ApiKeySettings, HashCost, IssuedApiKey, NewKey,
    looks_like_api_key,
};
pub use authenticator::{Authenticator, AuthenticatorParts, Credential};
pub use clock::Clock;
pub use device::{
    DEVICE_CODE_GRANT, DecideError, Decision, DeviceAuthorizationResponse, DeviceFlow,
    DeviceFlowSettings, DeviceTokenResponse, OAuthError, SLOW_DOWN_SECS, USER_CODE_ALPHABET,
    normalize_user_code,
};
pub use ed25519_dalek;
pub use error::{AuthError, SetupError};
pub use http::{API_KEY_HEADER, AuthRefusal, HttpAuth, HttpAuthLayer, RefusalLog, credential_of};
pub use identity::{Identity, LOCAL_TENANT};
pub use instance::{InstanceKey, IssuedToken, LOCAL_ISSUER_NAME, LocalIssuer, TokenRequest};
pub use jsonwebtoken::Algorithm;
pub use jwt::{ClaimMapping, IssuerSpec, JwtVerifier, KeySpec, MAX_TOKEN_BYTES};
pub use metadata::{METADATA_PATH, ResourceServer};
pub use secret::{Secret, ct_eq_bytes, ct_eq_str};
pub use setup::{AuthStack, issue_dev_token, local_issuer, local_issuer_id, resource_url};
