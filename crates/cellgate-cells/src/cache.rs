//! Compiled cells on disk, so a restart does not compile every module and
//! component again (a Python component takes seconds).
//!
//! One file per (module SHA-256, engine compatibility hash) under
//! `<data_dir>/cells-cache/`: `tag || artefact`, where the tag is an
//! HMAC-SHA-256 (key derived from the instance's seal key, see
//! `cellgate_store::sealed`) over the file's identity and the artefact.
//! Files are written to a private temporary file and renamed into place.
//! A file that is missing, truncated, altered, written by another key or
//! another engine is ignored: the module is compiled and the file
//! rewritten. Nothing here can fail a call; problems are logged.

use std::hash::Hasher;
use std::path::PathBuf;

use cellgate_store::sealed::{Authenticator, TAG_LEN};
use sha2::{Digest as _, Sha256};
use wasmtime::Engine;

/// Domain separation of the tag (and the file format's version).
const TAG_LABEL: &[u8] = b"cellgate-cells-compiled/v1";
/// The purpose under which the tag key is derived from the seal key.
pub(crate) const KEY_PURPOSE: &str = "cellgate-cells/compiled-cache";

/// The directory of compiled artefacts and the key that vouches for them.
pub(crate) struct CompiledCache {
    dir: PathBuf,
    mac: Authenticator,
    /// Hex SHA-256 of `Engine::precompile_compatibility_hash`: artefacts of
    /// another wasmtime build or configuration never match.
    engine: String,
}

/// What a cache file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArtefactKind {
    Module,
    Component,
}

impl ArtefactKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ArtefactKind::Module => "module",
            ArtefactKind::Component => "component",
        }
    }

    fn label(self) -> &'static [u8] {
        self.name().as_bytes()
    }
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash
/// becomes a stable file-name component (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

impl CompiledCache {
    pub(crate) fn new(dir: PathBuf, mac: Authenticator, engine: &Engine) -> Self {
        let mut h = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        let engine = crate::signing::hex(&h.0.finalize());
        CompiledCache { dir, mac, engine }
    }

    /// The file of the module with digest `sha256` (hex, as in manifests).
    pub(crate) fn path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.cwasm", &self.engine[..16]))
    }

    /// What the tag covers: which module, which engine, which kind, and
    /// the artefact; so a valid file cannot be renamed to another module.
    fn tagged<'a>(
        &'a self,
        sha256: &'a str,
        kind: ArtefactKind,
        artefact: &'a [u8],
    ) -> [&'a [u8]; 5] {
        [
            TAG_LABEL,
            sha256.as_bytes(),
            self.engine.as_bytes(),
            kind.label(),
            artefact,
        ]
    }

    /// The artefact stored for `sha256`, if there is one and its tag
    /// proves this instance wrote it for this module, kind and engine.
    pub(crate) fn read(&self, sha256: &str, kind: ArtefactKind) -> Option<Vec<u8>> {
        let path = self.path(sha256);
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "reading a compiled cell: {e}");
                return None;
            }
        };
        if bytes.len() < TAG_LEN {
            tracing::warn!(path = %path.display(), "compiled cell is truncated; recompiling");
            return None;
        }
        let artefact = bytes.split_off(TAG_LEN);
        if !self
            .mac
            .verify(&self.tagged(sha256, kind, &artefact), &bytes)
        {
            tracing::warn!(
                path = %path.display(),
                "compiled cell fails its integrity check (altered, or written with another key); recompiling"
            );
            return None;
        }
        Some(artefact)
    }

    /// Stores `artefact` for `sha256`, replacing any file there.
    pub(crate) fn write(&self, sha256: &str, kind: ArtefactKind, artefact: &[u8]) {
        if let Err(e) = self.try_write(sha256, kind, artefact) {
            tracing::warn!(dir = %self.dir.display(), "storing a compiled cell: {e}");
        }
    }

    fn try_write(&self, sha256: &str, kind: ArtefactKind, artefact: &[u8]) -> std::io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(&self.dir)?;
        // NamedTempFile creates the file with mode 0600.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        {
            use std::io::Write as _;
            let file = tmp.as_file_mut();
            file.write_all(&self.mac.tag(&self.tagged(sha256, kind, artefact)))?;
            file.write_all(artefact)?;
            file.sync_all()?;
        }
        tmp.persist(self.path(sha256)).map_err(|e| e.error)?;
        Ok(())
    }
}
