//! Publisher keys and detached manifest signatures (Ed25519).
//!
//! A signature covers [`Manifest::signing_bytes`], which include the
//! module's SHA-256: signing the manifest pins the code.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::manifest::Manifest;

pub const ALGORITHM: &str = "ed25519";

/// Why a signature or digest check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("the cell is unsigned and this tenant does not allow unsigned cells")]
    Unsigned,
    #[error("signature.{field}: {message}")]
    Malformed {
        field: &'static str,
        message: String,
    },
    #[error("signed by key {key_id}, which is not a trusted publisher of this tenant")]
    UntrustedKey { key_id: String },
    #[error("the signature by key {key_id} does not match the manifest (altered after signing?)")]
    BadSignature { key_id: String },
    #[error("module digest mismatch: the manifest pins sha256 {expected}, the module is {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("publicKey: {0}")]
    BadPublicKey(String),
    #[error("secret key file: {0}")]
    BadSecretKey(String),
}

/// A detached signature, as stored beside a manifest (`*.sig.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CellSignature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signer's key id (see [`key_id`]).
    pub key_id: String,
    /// Base64 of the 64-byte signature.
    pub signature: String,
}

/// A key a tenant trusts to publish cells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedPublisher {
    pub key_id: String,
    /// Who the key belongs to (free text).
    pub name: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
}

impl TrustedPublisher {
    /// Validates the public key and derives its id.
    pub fn new(name: &str, public_key_b64: &str) -> Result<TrustedPublisher, TrustError> {
        let key = parse_public_key(public_key_b64)?;
        if name.trim().is_empty() || name.len() > 256 {
            return Err(TrustError::BadPublicKey(
                "name: must be 1-256 bytes".to_owned(),
            ));
        }
        Ok(TrustedPublisher {
            key_id: key_id(&key),
            name: name.to_owned(),
            public_key: B64.encode(key.as_bytes()),
        })
    }
}

/// A publisher's signing key, as kept in a key file (JSON). The file holds
/// the secret seed: keep it private.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyFile {
    pub algorithm: String,
    pub key_id: String,
    pub public_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("key_id", &self.key_id)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// A loaded signing key.
pub struct PublisherKey {
    key: SigningKey,
}

impl PublisherKey {
    /// A new random key (`cellgate cell keygen`).
    pub fn generate() -> PublisherKey {
        let seed: [u8; 32] = rand::random();
        PublisherKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn from_key_file(file: &KeyFile) -> Result<PublisherKey, TrustError> {
        if file.algorithm != ALGORITHM {
            return Err(TrustError::BadSecretKey(format!(
                "algorithm must be `{ALGORITHM}`, got `{}`",
                file.algorithm
            )));
        }
        let seed: [u8; 32] = B64
            .decode(&file.secret_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                TrustError::BadSecretKey("secretKey: must be base64 of 32 bytes".into())
            })?;
        let key = PublisherKey {
            key: SigningKey::from_bytes(&seed),
        };
        if key.public_key_b64() != file.public_key {
            return Err(TrustError::BadSecretKey(
                "publicKey does not belong to secretKey".into(),
            ));
        }
        Ok(key)
    }

    /// Parses a key file's JSON text.
    pub fn from_key_file_json(text: &str) -> Result<PublisherKey, TrustError> {
        let file: KeyFile =
            serde_json::from_str(text).map_err(|e| TrustError::BadSecretKey(e.to_string()))?;
        Self::from_key_file(&file)
    }

    pub fn key_file(&self) -> KeyFile {
        KeyFile {
            algorithm: ALGORITHM.to_owned(),
            key_id: self.key_id(),
            public_key: self.public_key_b64(),
            secret_key: B64.encode(self.key.to_bytes()),
        }
    }

    pub fn key_id(&self) -> String {
        key_id(&self.key.verifying_key())
    }

    pub fn public_key_b64(&self) -> String {
        B64.encode(self.key.verifying_key().as_bytes())
    }

    /// A detached signature over the manifest (`cellgate cell sign`).
    pub fn sign(&self, manifest: &Manifest) -> CellSignature {
        let sig = self.key.sign(&manifest.signing_bytes());
        CellSignature {
            algorithm: ALGORITHM.to_owned(),
            key_id: self.key_id(),
            signature: B64.encode(sig.to_bytes()),
        }
    }
}

/// First 16 hex digits of SHA-256 of the public key: short, stable, and
/// derived, so it cannot be claimed for another key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

fn parse_public_key(b64: &str) -> Result<VerifyingKey, TrustError> {
    let bytes: [u8; 32] = B64
        .decode(b64.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| TrustError::BadPublicKey("must be base64 of 32 bytes".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| TrustError::BadPublicKey("not a valid Ed25519 point".into()))
}

/// Checks `signature` over `manifest` against the tenant's trusted keys;
/// returns the publisher that signed it.
pub fn verify_manifest<'a>(
    manifest: &Manifest,
    signature: &CellSignature,
    trusted: &'a [TrustedPublisher],
) -> Result<&'a TrustedPublisher, TrustError> {
    if signature.algorithm != ALGORITHM {
        return Err(TrustError::Malformed {
            field: "algorithm",
            message: format!("must be `{ALGORITHM}`, got `{}`", signature.algorithm),
        });
    }
    let bytes: [u8; 64] = B64
        .decode(&signature.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| TrustError::Malformed {
            field: "signature",
            message: "must be base64 of 64 bytes".into(),
        })?;
    let publisher = trusted
        .iter()
        .find(|p| p.key_id == signature.key_id)
        .ok_or_else(|| TrustError::UntrustedKey {
            key_id: signature.key_id.clone(),
        })?;
    let key = parse_public_key(&publisher.public_key)?;
    key.verify(&manifest.signing_bytes(), &Signature::from_bytes(&bytes))
        .map_err(|_| TrustError::BadSignature {
            key_id: signature.key_id.clone(),
        })?;
    Ok(publisher)
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Refuses module bytes whose digest is not the one the manifest pins.
pub fn check_digest(manifest: &Manifest, module: &[u8]) -> Result<(), TrustError> {
    let actual = sha256_hex(module);
    if actual == manifest.module.sha256 {
        Ok(())
    } else {
        Err(TrustError::DigestMismatch {
            expected: manifest.module.sha256.clone(),
            actual,
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> Manifest {
        Manifest::from_value(json!({
            "name": "demo", "version": "0.1.0", "author": "me",
            "tools": [{ "name": "t", "description": "d", "inputSchema": { "type": "object" } }],
            "module": { "sha256": sha256_hex(b"module") }
        }))
        .unwrap()
    }

    #[test]
    fn sign_verify_and_tamper() {
        let key = PublisherKey::generate();
        let publisher = TrustedPublisher::new("me", &key.public_key_b64()).unwrap();
        let m = manifest();
        let sig = key.sign(&m);
        let trusted = [publisher.clone()];
        assert_eq!(verify_manifest(&m, &sig, &trusted).unwrap(), &publisher);

        let mut altered = m.clone();
        altered.limits.fuel += 1;
        assert!(matches!(
            verify_manifest(&altered, &sig, &trusted),
            Err(TrustError::BadSignature { .. })
        ));
        let other = PublisherKey::generate();
        let other_trusted = [TrustedPublisher::new("x", &other.public_key_b64()).unwrap()];
        assert!(matches!(
            verify_manifest(&m, &sig, &other_trusted),
            Err(TrustError::UntrustedKey { .. })
        ));
        assert!(check_digest(&m, b"module").is_ok());
        assert!(matches!(
            check_digest(&m, b"modulE"),
            Err(TrustError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn key_files_round_trip_and_reject_mismatches() {
        let key = PublisherKey::generate();
        let text = serde_json::to_string(&key.key_file()).unwrap();
        let again = PublisherKey::from_key_file_json(&text).unwrap();
        assert_eq!(again.key_id(), key.key_id());
        let mut file = key.key_file();
        file.public_key = PublisherKey::generate().public_key_b64();
        assert!(PublisherKey::from_key_file(&file).is_err());
        assert!(TrustedPublisher::new("x", "not base64!").is_err());
    }
}
