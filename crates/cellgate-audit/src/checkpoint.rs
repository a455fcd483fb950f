//! Signed checkpoints: an instance's Ed25519 signature over `(seq, hash,
//! time)` of the chain.
//!
//! The signed message is 76 bytes:
//!
//! ```text
//! "cellgate-audit/v1/checkpoint" (28 ASCII bytes)
//! seq    as unsigned 64-bit big-endian   (8 bytes)
//! hash   the entry's raw SHA-256         (32 bytes)
//! at_ms  as signed 64-bit big-endian     (8 bytes)
//! ```
//!
//! The prefix keeps these signatures from being valid for anything else the
//! same key signs. Signatures are checked with `verify_strict` (no weak keys,
//! no malleable signatures). A checkpoint stores the signer's public key so
//! that several replicas, each with its own key, can checkpoint one chain;
//! verification accepts only keys it is given.

use cellgate_store::AuditCheckpoint;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::canonical::{from_hex, to_hex};

/// The first bytes of every signed checkpoint message.
pub const CHECKPOINT_DOMAIN: &[u8; 28] = b"cellgate-audit/v1/checkpoint";

/// The bytes an instance signs for a checkpoint.
pub fn checkpoint_message(seq: u64, hash: &[u8; 32], at_ms: i64) -> [u8; 76] {
    let mut m = [0u8; 76];
    m[..28].copy_from_slice(CHECKPOINT_DOMAIN);
    m[28..36].copy_from_slice(&seq.to_be_bytes());
    m[36..68].copy_from_slice(hash);
    m[68..].copy_from_slice(&at_ms.to_be_bytes());
    m
}

/// A checkpoint of the entry `seq` with `hash`, signed now-ish (`at_ms`).
pub fn sign_checkpoint(key: &SigningKey, seq: u64, hash: &[u8; 32], at_ms: i64) -> AuditCheckpoint {
    let signature = key.sign(&checkpoint_message(seq, hash, at_ms));
    AuditCheckpoint {
        seq: i64::try_from(seq).unwrap_or(i64::MAX),
        hash: to_hex(hash),
        at_ms,
        key: to_hex(key.verifying_key().as_bytes()),
        signature: to_hex(&signature.to_bytes()),
    }
}

/// Why a checkpoint's signature is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureProblem {
    /// A field is not the hex it should be, or the key is not a valid point.
    Malformed(&'static str),
    /// Signed by a key that is not among the trusted ones.
    UntrustedKey(String),
    /// The signature does not verify under the named (trusted) key.
    Invalid,
}

impl std::fmt::Display for SignatureProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureProblem::Malformed(what) => write!(f, "malformed {what}"),
            SignatureProblem::UntrustedKey(key) => {
                write!(f, "signed by key {key}, which is not a trusted key")
            }
            SignatureProblem::Invalid => {
                f.write_str("the signature does not verify over (seq, hash, time)")
            }
        }
    }
}

/// Checks a stored checkpoint's signature against the trusted keys.
pub fn check_signature(
    c: &AuditCheckpoint,
    trusted: &[VerifyingKey],
) -> Result<(), SignatureProblem> {
    let key_bytes = from_hex::<32>(&c.key).ok_or(SignatureProblem::Malformed("key"))?;
    let key = trusted
        .iter()
        .find(|k| k.as_bytes() == &key_bytes)
        .ok_or_else(|| SignatureProblem::UntrustedKey(c.key.clone()))?;
    let signature = from_hex::<64>(&c.signature).ok_or(SignatureProblem::Malformed("signature"))?;
    let hash = from_hex::<32>(&c.hash).ok_or(SignatureProblem::Malformed("hash"))?;
    let seq = u64::try_from(c.seq).map_err(|_| SignatureProblem::Malformed("seq"))?;
    key.verify_strict(
        &checkpoint_message(seq, &hash, c.at_ms),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| SignatureProblem::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn the_message_layout_is_fixed() {
        let m = checkpoint_message(0x0102, &[0xaa; 32], -1);
        assert_eq!(&m[..28], b"cellgate-audit/v1/checkpoint");
        assert_eq!(&m[28..36], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&m[36..68], &[0xaa; 32]);
        assert_eq!(&m[68..], &[0xff; 8]);
    }

    #[test]
    fn signed_checkpoints_verify_only_as_signed() {
        let k = key(7);
        let trusted = [k.verifying_key()];
        let c = sign_checkpoint(&k, 42, &[3; 32], 1_700_000_000_000);
        assert_eq!(c.key, to_hex(k.verifying_key().as_bytes()));
        assert_eq!(check_signature(&c, &trusted), Ok(()));

        for tamper in [
            |c: &mut AuditCheckpoint| c.seq += 1,
            |c: &mut AuditCheckpoint| c.at_ms += 1,
            |c: &mut AuditCheckpoint| c.hash = to_hex(&[4; 32]),
        ] {
            let mut bad = c.clone();
            tamper(&mut bad);
            assert_eq!(
                check_signature(&bad, &trusted),
                Err(SignatureProblem::Invalid)
            );
        }

        // Re-signed by a key nobody trusts.
        let forged = sign_checkpoint(&key(8), 42, &[3; 32], 1_700_000_000_000);
        assert!(matches!(
            check_signature(&forged, &trusted),
            Err(SignatureProblem::UntrustedKey(_))
        ));
        let mut garbled = c.clone();
        garbled.signature = "zz".repeat(64);
        assert_eq!(
            check_signature(&garbled, &trusted),
            Err(SignatureProblem::Malformed("signature"))
        );
        // Trusting several keys (several replicas) works for each.
        let both = [key(8).verifying_key(), k.verifying_key()];
        assert_eq!(check_signature(&c, &both), Ok(()));
        assert_eq!(check_signature(&forged, &both), Ok(()));
    }
}
