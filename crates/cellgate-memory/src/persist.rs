//! Built HNSW graphs on disk, so a restart loads a tenant's graph instead
//! of rebuilding it (minutes at a million items).
//!
//! A file is `MAGIC`, an FNV-1a checksum of the rest, then the postcard
//! encoding of the embedding model's name, the graph parameters and the
//! graph. It is used only if all of that checks out *and* every entry
//! naming a row that still exists holds exactly that row's folded stored
//! vector (entries of rows deleted since are tolerated, as deletions are
//! while running); anything else is reported and the graph is rebuilt,
//! overwriting the file. The vectors stay in the database: the file is a
//! cache of work, never a source of data.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cellgate_store::{ItemKind, TenantId};
use instant_distance::HnswMap;
use serde::{Deserialize, Serialize};

use crate::index::{GRAPH_DIMS, GRAPH_EF_CONSTRUCTION, GRAPH_EF_SEARCH, Vector, fold};

/// Names the file layout; a new layout gets a new one.
const MAGIC: &[u8; 8] = b"CGHNSW01";

/// Why a saved graph was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl PersistError {
    pub(crate) fn is_missing(&self) -> bool {
        matches!(self, PersistError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

#[derive(Serialize)]
struct SavedRef<'a> {
    model: &'a str,
    graph_dims: u32,
    ef_construction: u32,
    ef_search: u32,
    map: &'a HnswMap<Vector, i64>,
}

#[derive(Deserialize)]
struct Saved {
    model: String,
    graph_dims: u32,
    ef_construction: u32,
    ef_search: u32,
    map: HnswMap<Vector, i64>,
}

/// The file of one tenant's index of one kind under `dir`. Tenant ids are
/// lowercase letters, digits, `_` and `-`, so they are safe file names.
pub(crate) fn path(dir: &Path, tenant: &TenantId, kind: ItemKind) -> PathBuf {
    let kind = match kind {
        ItemKind::Memory => "memories",
        ItemKind::Entity => "entities",
    };
    dir.join(format!("{}.{kind}.hnsw", tenant.as_str()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes `map` to `path` (through a temporary file and a rename, so a
/// crash leaves the old file or the new one, never half of one).
pub(crate) fn save(
    path: &Path,
    model: &str,
    map: &HnswMap<Vector, i64>,
) -> Result<(), PersistError> {
    let io = |source| PersistError::Io {
        path: path.to_owned(),
        source,
    };
    let body = postcard::to_stdvec(&SavedRef {
        model,
        graph_dims: GRAPH_DIMS as u32,
        ef_construction: GRAPH_EF_CONSTRUCTION as u32,
        ef_search: GRAPH_EF_SEARCH as u32,
        map,
    })
    .map_err(|e| PersistError::Invalid {
        path: path.to_owned(),
        message: format!("encoding: {e}"),
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("hnsw.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(MAGIC).map_err(io)?;
    file.write_all(&fnv1a(&body).to_le_bytes()).map_err(io)?;
    file.write_all(&body).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads the graph at `path` if it was built over `model`'s vectors with
/// the current parameters and agrees with `rows` (the live rows' full
/// vectors by id). CPU- and IO-heavy: run it off the async threads.
pub(crate) fn load(
    path: &Path,
    model: &str,
    rows: &HashMap<i64, Arc<[f32]>>,
) -> Result<HnswMap<Vector, i64>, PersistError> {
    let invalid = |message: String| PersistError::Invalid {
        path: path.to_owned(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| PersistError::Io {
        path: path.to_owned(),
        source,
    })?;
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(invalid("not a cellgate HNSW file of this version".into()));
    }
    let (sum, body) = bytes[8..].split_at(8);
    let mut stored = [0u8; 8];
    stored.copy_from_slice(sum);
    if u64::from_le_bytes(stored) != fnv1a(body) {
        return Err(invalid("checksum mismatch (truncated or corrupt)".into()));
    }
    let saved: Saved = postcard::from_bytes(body).map_err(|e| invalid(format!("decoding: {e}")))?;
    if saved.model != model {
        return Err(invalid(format!(
            "built over model {:?}, the embedder is {model:?}",
            saved.model
        )));
    }
    if saved.graph_dims != GRAPH_DIMS as u32
        || saved.ef_construction != GRAPH_EF_CONSTRUCTION as u32
        || saved.ef_search != GRAPH_EF_SEARCH as u32
    {
        return Err(invalid("built with other graph parameters".into()));
    }
    let map = saved.map;
    if map.iter().count() != map.values.len() {
        return Err(invalid("points and row ids differ in number".into()));
    }
    let mut seen = std::collections::HashSet::with_capacity(map.values.len());
    for ((_, point), id) in map.iter().zip(&map.values) {
        if !seen.insert(*id) {
            return Err(invalid(format!("row {id} appears twice")));
        }
        // A row deleted since is a dead entry, as after a deletion while
        // running; a row whose vector differs means the file is stale.
        let Some(vector) = rows.get(id) else { continue };
        let expected = fold(vector);
        let same = expected.0.len() == point.0.len()
            && expected
                .0
                .iter()
                .zip(point.0.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            return Err(invalid(format!(
                "row {id}'s vector changed since the graph was saved"
            )));
        }
    }
    Ok(map)
}
