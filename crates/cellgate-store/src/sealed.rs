//! Secrets at rest: values the store keeps (run-time upstream credentials,
//! cells' environment values) are sealed with ChaCha20-Poly1305 under one
//! instance key, and files written beside the store (compiled cell
//! artefacts) are authenticated with keys derived from it.
//!
//! The key lives in `<data_dir>/upstream-secrets.key` (32 random bytes,
//! mode 0600; the name predates its wider use and is kept so existing data
//! opens). Replicas sharing one PostgreSQL need the same file. The store
//! itself never sees the key or a clear value: callers seal before they
//! write and open after they read.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// The key file's name inside the data directory.
pub const SEAL_KEY_FILE: &str = "upstream-secrets.key";
const KEY_LEN: usize = 32;
/// Salt of the HKDF that derives authentication keys from the seal key.
const DERIVE_SALT: &[u8] = b"cellgate-secret-seal/derive/v1";

/// Why a key could not be loaded or a value not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} does not hold a {KEY_LEN}-byte key")]
    BadKey { path: PathBuf },
    #[error("the system random source failed")]
    Random,
    #[error("sealing failed")]
    Seal,
    #[error("deriving a key failed")]
    Derive,
    #[error("sealed value is {0}")]
    Malformed(&'static str),
    #[error(
        "sealed value does not open with this instance's key (another replica's key, another owner, or tampered)"
    )]
    WrongKey,
}

/// The instance's sealing key.
pub struct SecretSeal {
    key: LessSafeKey,
    derive: hkdf::Prk,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSeal").finish_non_exhaustive()
    }
}

impl SecretSeal {
    /// Reads `<dir>/upstream-secrets.key`, creating it (and `dir`) with a
    /// fresh random key when absent. Two processes creating it at once end
    /// up with the same key: the file is linked into place only if absent.
    pub fn load_or_create(dir: &Path) -> Result<SecretSeal, SealError> {
        let path = dir.join(SEAL_KEY_FILE);
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(dir, &path, &rng)?,
            Err(error) => {
                return Err(SealError::Io {
                    action: "reading",
                    path,
                    error,
                });
            }
        };
        if bytes.len() != KEY_LEN {
            return Err(SealError::BadKey { path });
        }
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| SealError::BadKey { path: path.clone() })?;
        Ok(SecretSeal {
            key: LessSafeKey::new(unbound),
            derive: hkdf::Salt::new(hkdf::HKDF_SHA256, DERIVE_SALT).extract(&bytes),
            rng,
        })
    }

    /// `nonce || ciphertext || tag`, base64. `owner` is bound as associated
    /// data: the value opens only under the same owner, so it cannot be
    /// moved to another record.
    pub fn seal(&self, owner: &str, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(B64.encode(out))
    }

    /// The clear value of [`SecretSeal::seal`]'s output, if it was sealed
    /// with this key for `owner` and not altered.
    pub fn open(&self, owner: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = B64
            .decode(sealed)
            .map_err(|_| SealError::Malformed("not base64"))?;
        if raw.len() < aead::NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Malformed("too short"));
        }
        let (nonce, rest) = raw.split_at(aead::NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| SealError::Malformed("bad nonce"))?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(owner.as_bytes()), &mut data)
            .map_err(|_| SealError::WrongKey)?;
        Ok(plain.to_vec())
    }

    /// An HMAC-SHA-256 key for `purpose`, derived from the seal key (HKDF),
    /// so files this instance writes can be checked before they are
    /// trusted. Different purposes get unrelated keys.
    pub fn authenticator(&self, purpose: &str) -> Result<Authenticator, SealError> {
        let info = [purpose.as_bytes()];
        // Only fails for outputs longer than 255 hash lengths; ours is one.
        let okm = self
            .derive
            .expand(&info, hmac::HMAC_SHA256)
            .map_err(|_| SealError::Derive)?;
        Ok(Authenticator {
            key: hmac::Key::from(okm),
        })
    }
}

/// HMAC-SHA-256 under a key derived from the seal key.
pub struct Authenticator {
    key: hmac::Key,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// Length of an [`Authenticator`] tag.
pub const TAG_LEN: usize = 32;

impl Authenticator {
    /// The tag of `parts`, each prefixed by its length so that the split
    /// between them is part of what is authenticated.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether `tag` is the tag of `parts` (constant-time comparison).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let expected = self.tag(parts);
        // `subtle` keeps the comparison free of data-dependent branches the
        // optimiser could add to a hand-written loop: no timing hint about
        // how much of a forged tag is right.
        tag.len() == TAG_LEN && bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], tag))
    }
}

/// Writes a fresh key to a private temporary file and links it into place
/// unless another process got there first; returns the key in the file.
fn create_key(dir: &Path, path: &Path, rng: &SystemRandom) -> Result<Vec<u8>, SealError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |error| SealError::Io {
            action,
            path,
            error,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut key = vec![0u8; KEY_LEN];
    rng.fill(&mut key).map_err(|_| SealError::Random)?;
    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix).map_err(|_| SealError::Random)?;
    let tmp = dir.join(format!(
        ".{SEAL_KEY_FILE}.{}.{}",
        std::process::id(),
        u64::from_be_bytes(suffix)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    {
        use std::io::Write as _;
        let mut f = options.open(&tmp).map_err(io("writing", &tmp))?;
        f.write_all(&key)
            .and_then(|()| f.sync_all())
            .map_err(io("writing", &tmp))?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read(path).map_err(io("reading", path))
        }
        Err(e) => Err(io("writing", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_owner_and_key() {
        let dir = tempdir();
        let seal = SecretSeal::load_or_create(&dir).unwrap();
        let sealed = seal.seal("acme\0cell\0TOKEN", b"s3cret").unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(seal.open("acme\0cell\0TOKEN", &sealed).unwrap(), b"s3cret");
        assert!(matches!(
            seal.open("acme\0other\0TOKEN", &sealed),
            Err(SealError::WrongKey)
        ));
        assert!(matches!(
            seal.open("x", "%%%"),
            Err(SealError::Malformed(_))
        ));
        let again = SecretSeal::load_or_create(&dir).unwrap();
        assert!(again.open("acme\0cell\0TOKEN", &sealed).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join(SEAL_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = SecretSeal::load_or_create(&dir.join("other")).unwrap();
        assert!(other.open("acme\0cell\0TOKEN", &sealed).is_err());
        std::fs::create_dir_all(dir.join("short")).unwrap();
        std::fs::write(dir.join("short").join(SEAL_KEY_FILE), b"x").unwrap();
        assert!(matches!(
            SecretSeal::load_or_create(&dir.join("short")),
            Err(SealError::BadKey { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn authenticators_are_per_purpose_and_per_key() {
        let dir = tempdir();
        let seal = SecretSeal::load_or_create(&dir).unwrap();
        let a = seal.authenticator("cells-cache").unwrap();
        let tag = a.tag(&[b"name", b"bytes"]);
        assert!(a.verify(&[b"name", b"bytes"], &tag));
        assert!(!a.verify(&[b"nameb", b"ytes"], &tag), "split is bound");
        assert!(!a.verify(&[b"name", b"bytes"], &tag[..31]));
        assert!(
            !seal
                .authenticator("other")
                .unwrap()
                .verify(&[b"name", b"bytes"], &tag)
        );
        let again = SecretSeal::load_or_create(&dir).unwrap();
        assert!(
            again
                .authenticator("cells-cache")
                .unwrap()
                .verify(&[b"name", b"bytes"], &tag)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir() -> PathBuf {
        let mut n = [0u8; 8];
        SystemRandom::new().fill(&mut n).unwrap();
        std::env::temp_dir().join(format!("cellgate-sealed-{}", u64::from_be_bytes(n)))
    }
}
