//! The instance key and the instance's own token issuer.
//!
//! Every cellgate instance has an Ed25519 key, `instance.key` in its data
//! directory, created on first use. It signs the instance's own tokens (dev
//! tokens from `cellgate token issue`, device-flow tokens) and the audit
//! log's checkpoints. Replicas that must accept each other's tokens share
//! the file.
//!
//! The file is PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, the format of
//! `openssl genpkey -algorithm ed25519`), mode 0600. A file holding exactly
//! the 32 raw bytes of an Ed25519 seed is read too.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cellgate_kernel::PrincipalKind;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::jwt::{ClaimMapping, IssuerSpec, KeySpec};
use crate::{Secret, SetupError};

/// The Ed25519 key of this instance.
pub struct InstanceKey {
    signing: SigningKey,
    /// The JWS `kid` of tokens it signs: the first 16 characters of the
    /// base64url SHA-256 of the public key.
    key_id: String,
    path: Option<PathBuf>,
}

impl fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceKey")
            .field("key_id", &self.key_id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl InstanceKey {
    /// The file name inside the data directory.
    pub const FILE_NAME: &'static str = "instance.key";

    /// Reads `<data_dir>/instance.key`, or creates it (and the directory)
    /// with a fresh key. A new file is written with mode 0600; an existing
    /// file that others may read is refused, as is one that does not hold a
    /// key (it is never overwritten).
    pub fn load_or_create(data_dir: &Path) -> Result<InstanceKey, SetupError> {
        let path = data_dir.join(Self::FILE_NAME);
        let io = |action: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |error| SetupError::Io {
                action,
                path,
                error,
            }
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                check_permissions(&path)?;
                let signing = parse_key(&bytes)
                    .map_err(|message| SetupError::invalid(path.display().to_string(), message))?;
                Ok(Self::with_path(signing, Some(path)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_dir_private(data_dir)
                    .map_err(io("creating the data directory", data_dir))?;
                let signing = SigningKey::from_bytes(&crate::random::bytes::<32>());
                let pem = signing
                    .to_pkcs8_pem(Default::default())
                    .map_err(|e| SetupError::invalid("instance.key", e.to_string()))?;
                match write_new_private(&path, pem.as_bytes()) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "created the instance key");
                        Ok(Self::with_path(signing, Some(path)))
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(data_dir)
                    }
                    Err(e) => Err(io("writing the instance key", &path)(e)),
                }
            }
            Err(e) => Err(io("reading the instance key", &path)(e)),
        }
    }

    /// A key held in memory only (tests, tools).
    pub fn from_signing_key(signing: SigningKey) -> InstanceKey {
        Self::with_path(signing, None)
    }

    fn with_path(signing: SigningKey, path: Option<PathBuf>) -> InstanceKey {
        let digest = Sha256::digest(signing.verifying_key().as_bytes());
        let mut key_id = URL_SAFE_NO_PAD.encode(digest);
        key_id.truncate(16);
        InstanceKey {
            signing,
            key_id,
            path,
        }
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The `kid` of the instance's tokens.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Where the key was read from or written to, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

fn parse_key(bytes: &[u8]) -> Result<SigningKey, String> {
    if let Ok(seed) = <[u8; 32]>::try_from(bytes) {
        return Ok(SigningKey::from_bytes(&seed));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "holds neither PKCS#8 PEM nor a 32-byte raw Ed25519 key")?;
    SigningKey::from_pkcs8_pem(text.trim())
        .map_err(|e| format!("is not an Ed25519 PKCS#8 PEM private key: {e}"))
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), SetupError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|error| SetupError::Io {
        action: "reading the permissions of",
        path: path.display().to_string(),
        error,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SetupError::invalid(
            path.display().to_string(),
            format!("may be read by others (mode {mode:o}); run `chmod 600` on it"),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), SetupError> {
    Ok(())
}

fn create_dir_private(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates `path` (failing if it exists) readable by the owner only.
fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

// ---- the local issuer --------------------------------------------------------

/// What a token from the instance's issuer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub tenant: String,
    pub principal: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// `None`: the configured default lifetime.
    pub ttl: Option<Duration>,
    pub kind: PrincipalKind,
}

impl TokenRequest {
    /// A user token with roles and no scopes.
    pub fn new(tenant: &str, principal: &str, roles: &[&str]) -> TokenRequest {
        TokenRequest {
            tenant: tenant.to_owned(),
            principal: principal.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            scopes: Vec::new(),
            ttl: None,
            kind: PrincipalKind::User,
        }
    }
}

/// A token the instance issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: Secret,
    /// Unix time (seconds) at which it expires.
    pub expires_at: i64,
    /// Its lifetime in seconds.
    pub expires_in: u64,
}

/// Issues EdDSA JWTs signed with the instance key, with `iss` the
/// instance's issuer id and `aud` the resource URL, which the same instance
/// (and replicas sharing the key) accepts through [`LocalIssuer::issuer_spec`].
pub struct LocalIssuer {
    key: std::sync::Arc<InstanceKey>,
    encoding: EncodingKey,
    issuer: String,
    audience: String,
    default_ttl: Duration,
    max_ttl: Duration,
    clock: Clock,
}

impl fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kid", &self.key.key_id())
            .finish_non_exhaustive()
    }
}

/// The name the local issuer has among issuers (in errors and logs).
pub const LOCAL_ISSUER_NAME: &str = "local";

impl LocalIssuer {
    pub fn new(
        key: std::sync::Arc<InstanceKey>,
        issuer: &str,
        audience: &str,
        default_ttl: Duration,
        max_ttl: Duration,
        clock: Clock,
    ) -> Result<LocalIssuer, SetupError> {
        let der = key
            .signing_key()
            .to_pkcs8_der()
            .map_err(|e| SetupError::invalid("instance.key", e.to_string()))?;
        Ok(LocalIssuer {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            key,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            default_ttl,
            max_ttl,
            clock,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// How the verifier should trust this issuer's tokens.
    pub fn issuer_spec(&self) -> IssuerSpec {
        IssuerSpec {
            name: LOCAL_ISSUER_NAME.into(),
            issuer: self.issuer.clone(),
            audiences: vec![self.audience.clone()],
            algorithms: vec![Algorithm::EdDSA],
            keys: KeySpec::Ed25519 {
                key: self.key.verifying_key(),
                kid: Some(self.key.key_id().to_owned()),
            },
            leeway: Duration::from_secs(5),
            claims: ClaimMapping::default(),
            pinned_tenant: None,
            principal_kind: PrincipalKind::User,
        }
    }

    /// Signs a token for `request`. Refuses an invalid tenant id, an empty
    /// principal and lifetimes above the configured maximum.
    pub fn issue(&self, request: &TokenRequest) -> Result<IssuedToken, SetupError> {
        cellgate_store::TenantId::parse(&request.tenant)
            .map_err(|e| SetupError::invalid("tenant", e.to_string()))?;
        if request.principal.trim().is_empty() || request.principal.len() > 255 {
            return Err(SetupError::invalid(
                "principal",
                "must be 1 to 255 bytes and not blank",
            ));
        }
        if request
            .roles
            .iter()
            .any(|r| r.trim().is_empty() || r.contains([' ', ',']))
        {
            return Err(SetupError::invalid(
                "roles",
                "role names must be non-empty, without spaces or commas",
            ));
        }
        let ttl = request.ttl.unwrap_or(self.default_ttl);
        if ttl.is_zero() || ttl > self.max_ttl {
            return Err(SetupError::invalid(
                "ttl",
                format!(
                    "must be between 1 second and {} seconds",
                    self.max_ttl.as_secs()
                ),
            ));
        }
        let now = self.clock.now_secs();
        let expires_in = ttl.as_secs().max(1);
        let exp = now.saturating_add(i64::try_from(expires_in).unwrap_or(i64::MAX));
        let mut claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": request.principal,
            "tenant": request.tenant,
            "roles": request.roles,
            "kind": request.kind.as_str(),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": URL_SAFE_NO_PAD.encode(crate::random::bytes::<16>()),
        });
        if !request.scopes.is_empty() {
            claims["scope"] = json!(request.scopes.join(" "));
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.key_id().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| SetupError::invalid("instance.key", format!("signing failed: {e}")))?;
        Ok(IssuedToken {
            token: Secret::new(token),
            expires_at: exp,
            expires_in,
        })
    }

    /// A dev token: `issue` for a user principal with the given roles.
    pub fn issue_dev_token(
        &self,
        tenant: &str,
        roles: &[String],
        ttl: Option<Duration>,
        principal: &str,
    ) -> Result<IssuedToken, SetupError> {
        self.issue(&TokenRequest {
            tenant: tenant.to_owned(),
            principal: principal.to_owned(),
            roles: roles.to_vec(),
            scopes: Vec::new(),
            ttl,
            kind: PrincipalKind::User,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "cellgate-auth-key-{}",
                URL_SAFE_NO_PAD.encode(crate::random::bytes::<9>())
            ));
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_key_is_created_once_with_0600_and_read_back() {
        let dir = TempDir::new();
        let data = dir.0.join("nested");
        let first = InstanceKey::load_or_create(&data).expect("creates");
        let path = data.join(InstanceKey::FILE_NAME);
        let text = std::fs::read_to_string(&path).expect("reads");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let second = InstanceKey::load_or_create(&data).expect("loads");
        assert_eq!(first.verifying_key(), second.verifying_key());
        assert_eq!(first.key_id(), second.key_id());
        assert!(!format!("{first:?}").contains("signing"));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_or_a_broken_file_is_refused_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new();
        InstanceKey::load_or_create(&dir.0).expect("creates");
        let path = dir.0.join(InstanceKey::FILE_NAME);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = InstanceKey::load_or_create(&dir.0).expect_err("refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");

        std::fs::write(&path, b"garbage").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = InstanceKey::load_or_create(&dir.0).expect_err("refused");
        assert!(err.to_string().contains("Ed25519"), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"garbage");
    }

    #[test]
    fn raw_seeds_are_accepted() {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        let path = dir.0.join(InstanceKey::FILE_NAME);
        write_new_private(&path, &[7u8; 32]).expect("write");
        let key = InstanceKey::load_or_create(&dir.0).expect("loads");
        assert_eq!(key.signing_key().to_bytes(), [7u8; 32]);
    }

    #[test]
    fn issuing_checks_its_inputs() {
        let key = std::sync::Arc::new(InstanceKey::from_signing_key(SigningKey::from_bytes(
            &[1u8; 32],
        )));
        let issuer = LocalIssuer::new(
            key,
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/mcp",
            Duration::from_secs(3600),
            Duration::from_secs(7200),
            Clock::system(),
        )
        .expect("issuer");
        let ok = issuer
            .issue(&TokenRequest::new("acme", "ada", &["admin"]))
            .expect("issues");
        assert_eq!(ok.expires_in, 3600);
        assert_eq!(ok.token.expose().split('.').count(), 3);
        for bad in [
            TokenRequest::new("Not A Tenant", "ada", &[]),
            TokenRequest::new("acme", " ", &[]),
            TokenRequest::new("acme", "ada", &["two words"]),
            TokenRequest {
                ttl: Some(Duration::from_secs(7201)),
                ..TokenRequest::new("acme", "ada", &[])
            },
        ] {
            assert!(issuer.issue(&bad).is_err(), "{bad:?}");
        }
    }
}
