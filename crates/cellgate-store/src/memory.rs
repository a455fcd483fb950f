//! Memory and knowledge rows (for `cellgate-memory`): key/value memories with
//! versions and expiry, and a knowledge graph of entities, observations and
//! relations whose changes supersede rows instead of overwriting them. Full
//! text search is SQLite FTS5 (bm25) or PostgreSQL tsvector (`ts_rank`);
//! embeddings are stored as little-endian `f32` bytes, but searching them is
//! the caller's business.
//!
//! Every row belongs to the tenant of the [`Memory`] and to one [`Space`]:
//! the tenant's shared space (owner `NULL`) or a principal's private one.
//! Every query binds the tenant and the space(s) it may see.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};

use crate::backend::{Backend, is_foreign_key_violation, now_ms, on_backend};
use crate::{StoreError, TenantId};

/// Tables of this module with a `tenant_id` column, children first.
pub(crate) const TENANT_TABLES: &[&str] = &[
    "memory_versions",
    "memory_observations",
    "memory_relations",
    "memories",
    "memory_entities",
];

/// Longest key, category, tag, principal, entity name, entity or relation type.
pub const MEMORY_NAME_MAX_BYTES: usize = 512;
/// Largest memory value (as JSON text) and largest observation.
pub const MEMORY_VALUE_MAX_BYTES: usize = 256 * 1024;
/// Most items one call may write or name.
pub const MEMORY_BATCH_MAX: usize = 1000;
/// Most rows a listing or search returns.
pub const MEMORY_LIST_MAX: u32 = 1000;
/// Most terms of a full-text query that are used.
const FTS_MAX_TERMS: usize = 32;
/// Rows a word may be in and still be ranked by full-text search when the
/// query has rarer words (see [`Memory::search_text`]).
pub const FTS_COMMON_DOCS: u32 = 2000;

/// Whose memory: the tenant's shared space or one principal's private one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Space {
    Shared,
    Private(String),
}

impl Space {
    /// The owner column's value under `COALESCE(owner, '')`.
    pub fn owner_key(&self) -> &str {
        match self {
            Space::Shared => "",
            Space::Private(p) => p,
        }
    }

    fn owner(&self) -> Option<&str> {
        match self {
            Space::Shared => None,
            Space::Private(p) => Some(p),
        }
    }

    fn from_owner(owner: Option<String>) -> Space {
        match owner {
            None => Space::Shared,
            Some(p) => Space::Private(p),
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        match self {
            Space::Shared => Ok(()),
            Space::Private(p) => validate_text("principal", p, MEMORY_NAME_MAX_BYTES),
        }
    }
}

/// The spaces a read sees: one space, or the shared space and one
/// principal's private space together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    a: String,
    b: String,
}

impl View {
    pub fn only(space: &Space) -> View {
        View {
            a: space.owner_key().to_owned(),
            b: space.owner_key().to_owned(),
        }
    }

    /// The shared space and `principal`'s private space.
    pub fn shared_and_private(principal: &str) -> View {
        View {
            a: String::new(),
            b: principal.to_owned(),
        }
    }

    /// Whether a row of `space` is visible.
    pub fn sees(&self, space: &Space) -> bool {
        let k = space.owner_key();
        k == self.a || k == self.b
    }

    fn validate(&self) -> Result<(), StoreError> {
        for k in [&self.a, &self.b] {
            if !k.is_empty() {
                validate_text("principal", k, MEMORY_NAME_MAX_BYTES)?;
            }
        }
        Ok(())
    }
}

/// A key/value memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryRecord {
    pub id: i64,
    pub space: Space,
    pub key: String,
    pub category: String,
    pub tags: Vec<String>,
    pub value: Value,
    pub version: i64,
    pub source: Option<String>,
    pub provenance: Value,
    pub access_count: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// What full-text search and embeddings see.
    pub search_text: String,
}

/// What [`Memory::put_memory`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMemory {
    pub key: String,
    pub category: String,
    pub tags: Vec<String>,
    pub value: Value,
    pub expires_at_ms: Option<i64>,
    pub source: Option<String>,
    /// Where the memory came from (elevation, merges); `[]` by default.
    pub provenance: Option<Value>,
}

/// An earlier value of a memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryVersion {
    pub version: i64,
    pub category: String,
    pub tags: Vec<String>,
    pub value: Value,
    pub updated_at_ms: i64,
}

/// A knowledge-graph node with its current observations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityRecord {
    pub id: i64,
    pub space: Space,
    pub name: String,
    pub entity_type: String,
    pub observations: Vec<String>,
    pub confidence: f64,
    pub source: Option<String>,
    pub provenance: Value,
    pub access_count: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub valid_from_ms: i64,
    pub valid_to_ms: Option<i64>,
    pub search_text: String,
}

/// What [`Memory::create_entities`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntity {
    pub name: String,
    pub entity_type: String,
    pub observations: Vec<String>,
    pub confidence: f64,
    pub source: Option<String>,
    pub provenance: Option<Value>,
}

impl NewEntity {
    pub fn new(name: &str, entity_type: &str, observations: Vec<String>) -> NewEntity {
        NewEntity {
            name: name.to_owned(),
            entity_type: entity_type.to_owned(),
            observations,
            confidence: 1.0,
            source: None,
            provenance: None,
        }
    }
}

/// A directed, typed edge between entity names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelationRecord {
    pub id: i64,
    pub space: Space,
    pub from: String,
    pub to: String,
    pub relation_type: String,
    pub confidence: f64,
    /// Proposed by relationship discovery rather than stated.
    pub inferred: bool,
    pub score: Option<f64>,
    pub source: Option<String>,
    pub created_at_ms: i64,
    pub valid_from_ms: i64,
    pub valid_to_ms: Option<i64>,
}

/// What [`Memory::create_relations`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRelation {
    pub from: String,
    pub to: String,
    pub relation_type: String,
    pub confidence: f64,
    pub inferred: bool,
    pub score: Option<f64>,
    pub source: Option<String>,
}

impl NewRelation {
    pub fn stated(from: &str, to: &str, relation_type: &str) -> NewRelation {
        NewRelation {
            from: from.to_owned(),
            to: to.to_owned(),
            relation_type: relation_type.to_owned(),
            confidence: 1.0,
            inferred: false,
            score: None,
            source: None,
        }
    }
}

/// Entities and the relations among or around them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GraphRecords {
    pub entities: Vec<EntityRecord>,
    pub relations: Vec<RelationRecord>,
}

/// What [`Memory::add_observations`] did: either every entity existed and
/// these contents were new, or nothing was written because one was missing.
#[derive(Debug, Clone, PartialEq)]
pub enum ObservationsAdded {
    Added(Vec<(String, Vec<String>)>),
    MissingEntity(String),
}

/// Changes [`Memory::supersede_entity`] makes; absent fields keep their value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityChange {
    pub entity_type: Option<String>,
    /// Replaces every observation.
    pub observations: Option<Vec<String>>,
    /// Added after the (kept or replaced) observations, skipping duplicates.
    pub add_observations: Vec<String>,
    pub confidence: Option<f64>,
    pub source: Option<String>,
}

/// Which table's embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemKind {
    Memory,
    Entity,
}

impl ItemKind {
    fn table(self) -> &'static str {
        match self {
            ItemKind::Memory => "memories",
            ItemKind::Entity => "memory_entities",
        }
    }

    /// Rows that searches see: memories not expired, entities not superseded.
    fn live(self) -> &'static str {
        match self {
            ItemKind::Memory => "(expires_at_ms IS NULL OR expires_at_ms > $2)",
            ItemKind::Entity => "(valid_to_ms IS NULL AND $2 = $2)",
        }
    }
}

/// A stored embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVector {
    pub id: i64,
    pub space: Space,
    pub vector: Vec<f32>,
}

/// A live row whose embedding is missing or was made by another model.
#[derive(Debug, Clone, PartialEq)]
pub struct Unembedded {
    pub id: i64,
    pub space: Space,
    pub text: String,
}

/// The memory and knowledge rows of one tenant.
#[derive(Clone)]
pub struct Memory {
    pub(crate) backend: Backend,
    pub(crate) tenant: TenantId,
}

// ---- decoding (a macro, so one body serves both backends' row types) -------

macro_rules! memory_from_row {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<MemoryRecord, sqlx::Error> {
            let Json(tags) = row.try_get::<Json<Vec<String>>, _>("tags")?;
            let Json(value) = row.try_get::<Json<Value>, _>("value")?;
            let Json(provenance) = row.try_get::<Json<Value>, _>("provenance")?;
            Ok(MemoryRecord {
                id: row.try_get("id")?,
                space: Space::from_owner(row.try_get("owner")?),
                key: row.try_get("key")?,
                category: row.try_get("category")?,
                tags,
                value,
                version: row.try_get("version")?,
                source: row.try_get("source")?,
                provenance,
                access_count: row.try_get("access_count")?,
                created_at_ms: row.try_get("created_at_ms")?,
                updated_at_ms: row.try_get("updated_at_ms")?,
                expires_at_ms: row.try_get("expires_at_ms")?,
                search_text: row.try_get("search_text")?,
            })
        })()
    }};
}

macro_rules! entity_from_row {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<EntityRecord, sqlx::Error> {
            let Json(provenance) = row.try_get::<Json<Value>, _>("provenance")?;
            Ok(EntityRecord {
                id: row.try_get("id")?,
                space: Space::from_owner(row.try_get("owner")?),
                name: row.try_get("name")?,
                entity_type: row.try_get("entity_type")?,
                observations: Vec::new(),
                confidence: row.try_get("confidence")?,
                source: row.try_get("source")?,
                provenance,
                access_count: row.try_get("access_count")?,
                created_at_ms: row.try_get("created_at_ms")?,
                updated_at_ms: row.try_get("updated_at_ms")?,
                valid_from_ms: row.try_get("valid_from_ms")?,
                valid_to_ms: row.try_get("valid_to_ms")?,
                search_text: row.try_get("search_text")?,
            })
        })()
    }};
}

macro_rules! relation_from_row {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<RelationRecord, sqlx::Error> {
            Ok(RelationRecord {
                id: row.try_get("id")?,
                space: Space::from_owner(row.try_get("owner")?),
                from: row.try_get("from_name")?,
                to: row.try_get("to_name")?,
                relation_type: row.try_get("relation_type")?,
                confidence: row.try_get("confidence")?,
                inferred: row.try_get("inferred")?,
                score: row.try_get("score")?,
                source: row.try_get("source")?,
                created_at_ms: row.try_get("created_at_ms")?,
                valid_from_ms: row.try_get("valid_from_ms")?,
                valid_to_ms: row.try_get("valid_to_ms")?,
            })
        })()
    }};
}

/// Recomputes an entity's search text from its name, type and current
/// observations (and clears its embedding, which no longer matches).
macro_rules! refresh_entity_text {
    ($tx:expr, $tenant:expr, $id:expr, $err:expr) => {{
        let row = sqlx::query("SELECT name, entity_type FROM memory_entities WHERE tenant_id = $1 AND id = $2")
            .bind($tenant)
            .bind($id)
            .fetch_one(&mut *$tx)
            .await
            .map_err($err)?;
        let name: String = row.try_get("name").map_err($err)?;
        let entity_type: String = row.try_get("entity_type").map_err($err)?;
        let observations: Vec<String> = sqlx::query_scalar(
            "SELECT content FROM memory_observations WHERE tenant_id = $1 AND entity_id = $2 ORDER BY id",
        )
        .bind($tenant)
        .bind($id)
        .fetch_all(&mut *$tx)
        .await
        .map_err($err)?;
        sqlx::query(
            "UPDATE memory_entities SET search_text = $3, embedding = NULL, embedding_model = NULL \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind($tenant)
        .bind($id)
        .bind(entity_search_text(&name, &entity_type, &observations))
        .execute(&mut *$tx)
        .await
        .map_err($err)?;
    }};
}

const MEMORY_COLUMNS: &str = "id, owner, key, category, tags, value, version, source, provenance, \
     access_count, created_at_ms, updated_at_ms, expires_at_ms, search_text";
const ENTITY_COLUMNS: &str = "id, owner, name, entity_type, confidence, source, provenance, \
     access_count, created_at_ms, updated_at_ms, valid_from_ms, valid_to_ms, search_text";
const RELATION_COLUMNS: &str = "id, owner, from_name, to_name, relation_type, confidence, \
     inferred, score, source, created_at_ms, valid_from_ms, valid_to_ms";

impl Memory {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    fn db(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |error| {
            if is_foreign_key_violation(&error) {
                StoreError::UnknownTenant {
                    tenant: self.tenant.clone(),
                }
            } else {
                StoreError::Database {
                    backend: self.backend.name(),
                    operation,
                    error,
                }
            }
        }
    }

    // ---- key/value memories ------------------------------------------------

    /// Inserts or replaces the memory `key` in `space`. A replaced value
    /// goes to the history, of which the newest `keep_versions` stay.
    pub async fn put_memory(
        &self,
        space: &Space,
        memory: &NewMemory,
        keep_versions: u32,
    ) -> Result<MemoryRecord, StoreError> {
        let mut written = self
            .put_memories(space, std::slice::from_ref(memory), keep_versions)
            .await?;
        written.pop().ok_or_else(|| StoreError::Database {
            backend: self.backend.name(),
            operation: "writing a memory",
            error: sqlx::Error::RowNotFound,
        })
    }

    /// [`Memory::put_memory`] for up to [`MEMORY_BATCH_MAX`] memories in one
    /// transaction (bulk loads pay one commit, not one per row); the records
    /// in the order given. A key given twice is written twice, the later
    /// value winning.
    pub async fn put_memories(
        &self,
        space: &Space,
        memories: &[NewMemory],
        keep_versions: u32,
    ) -> Result<Vec<MemoryRecord>, StoreError> {
        space.validate()?;
        validate_batch("memories", memories.len())?;
        let mut texts = Vec::with_capacity(memories.len());
        for memory in memories {
            texts.push(validate_new_memory(memory)?);
        }
        if memories.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let tenant = self.tenant.as_str();
        let owner_key = space.owner_key();
        let err = self.db("writing a memory");
        let select = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 AND key = $3"
        );
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            let mut records = Vec::with_capacity(memories.len());
            for (memory, search_text) in memories.iter().zip(&texts) {
                let provenance = memory.provenance.clone().unwrap_or_else(|| json!([]));
                // The history insert comes first: it is a write, so SQLite
                // takes the write lock before anything is read.
                sqlx::query(
                    "INSERT INTO memory_versions (tenant_id, memory_id, version, category, tags, value, updated_at_ms) \
                     SELECT tenant_id, id, version, category, tags, value, updated_at_ms FROM memories \
                     WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 AND key = $3",
                )
                .bind(tenant)
                .bind(owner_key)
                .bind(&memory.key)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
                let updated = sqlx::query(
                    "UPDATE memories SET category = $4, tags = $5, value = $6, search_text = $7, \
                     version = version + 1, source = $8, provenance = $9, updated_at_ms = $10, \
                     expires_at_ms = $11, embedding = NULL, embedding_model = NULL \
                     WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 AND key = $3 RETURNING id, version",
                )
                .bind(tenant)
                .bind(owner_key)
                .bind(&memory.key)
                .bind(&memory.category)
                .bind(Json(&memory.tags))
                .bind(Json(&memory.value))
                .bind(search_text)
                .bind(&memory.source)
                .bind(Json(&provenance))
                .bind(now)
                .bind(memory.expires_at_ms)
                .fetch_optional(&mut *tx)
                .await
                .map_err(&err)?;
                if let Some(row) = updated {
                    let id: i64 = row.try_get("id").map_err(&err)?;
                    let version: i64 = row.try_get("version").map_err(&err)?;
                    sqlx::query(
                        "DELETE FROM memory_versions WHERE memory_id = $1 AND version <= $2",
                    )
                    .bind(id)
                    .bind(version - 1 - i64::from(keep_versions))
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                } else {
                    sqlx::query(
                        "INSERT INTO memories (tenant_id, owner, key, category, tags, value, search_text, version, \
                         source, provenance, created_at_ms, updated_at_ms, expires_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $10, $11)",
                    )
                    .bind(tenant)
                    .bind(space.owner())
                    .bind(&memory.key)
                    .bind(&memory.category)
                    .bind(Json(&memory.tags))
                    .bind(Json(&memory.value))
                    .bind(search_text)
                    .bind(&memory.source)
                    .bind(Json(&provenance))
                    .bind(now)
                    .bind(memory.expires_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                }
                let row = sqlx::query(&select)
                    .bind(tenant)
                    .bind(owner_key)
                    .bind(&memory.key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(&err)?;
                records.push(memory_from_row!(&row).map_err(&err)?);
            }
            tx.commit().await.map_err(&err)?;
            Ok(records)
        })
    }

    /// The live memory `key` as seen through `view` (the private one first
    /// when both spaces have the key).
    pub async fn get_memory(
        &self,
        view: &View,
        key: &str,
    ) -> Result<Option<MemoryRecord>, StoreError> {
        view.validate()?;
        validate_text("key", key, MEMORY_NAME_MAX_BYTES)?;
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = $1 AND COALESCE(owner, '') IN ($2, $3) \
             AND key = $4 AND (expires_at_ms IS NULL OR expires_at_ms > $5) ORDER BY owner IS NULL LIMIT 1"
        );
        let err = self.db("reading a memory");
        on_backend!(&self.backend, |pool| {
            let row = sqlx::query(&sql)
                .bind(self.tenant.as_str())
                .bind(&view.a)
                .bind(&view.b)
                .bind(key)
                .bind(now_ms())
                .fetch_optional(pool)
                .await
                .map_err(&err)?;
            row.as_ref()
                .map(|r| memory_from_row!(r))
                .transpose()
                .map_err(&err)
        })
    }

    /// Live memories by id (in the order given), those `view` sees.
    pub async fn memories_by_ids(
        &self,
        view: &View,
        ids: &[i64],
    ) -> Result<Vec<MemoryRecord>, StoreError> {
        view.validate()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let err = self.db("reading memories");
        let mut found: Vec<MemoryRecord> = on_backend!(&self.backend, |pool, Db| {
            let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
                "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = "
            ));
            q.push_bind(self.tenant.as_str())
                .push(" AND COALESCE(owner, '') IN (")
                .push_bind(&view.a)
                .push(", ")
                .push_bind(&view.b)
                .push(") AND (expires_at_ms IS NULL OR expires_at_ms > ")
                .push_bind(now_ms())
                .push(") AND id IN (");
            let mut list = q.separated(", ");
            for id in ids.iter().take(MEMORY_LIST_MAX as usize) {
                list.push_bind(*id);
            }
            q.push(")");
            let rows = q.build().fetch_all(pool).await.map_err(&err)?;
            rows.iter()
                .map(|r| memory_from_row!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?
        });
        found.sort_by_key(|m| ids.iter().position(|i| *i == m.id));
        Ok(found)
    }

    /// Live memories `view` sees, newest first, optionally of one category.
    pub async fn list_memories(
        &self,
        view: &View,
        category: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MemoryRecord>, StoreError> {
        view.validate()?;
        if let Some(c) = category {
            validate_text("category", c, MEMORY_NAME_MAX_BYTES)?;
        }
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant_id = $1 AND COALESCE(owner, '') IN ($2, $3) \
             AND (expires_at_ms IS NULL OR expires_at_ms > $4) AND ($5 = '' OR category = $5) \
             ORDER BY updated_at_ms DESC, id DESC LIMIT $6"
        );
        let err = self.db("listing memories");
        on_backend!(&self.backend, |pool| {
            let rows = sqlx::query(&sql)
                .bind(self.tenant.as_str())
                .bind(&view.a)
                .bind(&view.b)
                .bind(now_ms())
                .bind(category.unwrap_or(""))
                .bind(i64::from(limit.clamp(1, MEMORY_LIST_MAX)))
                .fetch_all(pool)
                .await
                .map_err(&err)?;
            rows.iter()
                .map(|r| memory_from_row!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)
        })
    }

    /// Earlier values of `key` in `space`, newest first.
    pub async fn memory_versions(
        &self,
        space: &Space,
        key: &str,
    ) -> Result<Vec<MemoryVersion>, StoreError> {
        space.validate()?;
        validate_text("key", key, MEMORY_NAME_MAX_BYTES)?;
        let err = self.db("reading memory versions");
        on_backend!(&self.backend, |pool| {
            let rows = sqlx::query(
                "SELECT v.version, v.category, v.tags, v.value, v.updated_at_ms FROM memory_versions v \
                 JOIN memories m ON m.id = v.memory_id \
                 WHERE m.tenant_id = $1 AND v.tenant_id = $1 AND COALESCE(m.owner, '') = $2 AND m.key = $3 \
                 ORDER BY v.version DESC",
            )
            .bind(self.tenant.as_str())
            .bind(space.owner_key())
            .bind(key)
            .fetch_all(pool)
            .await
            .map_err(&err)?;
            rows.iter()
                .map(|row| {
                    let Json(tags) = row.try_get::<Json<Vec<String>>, _>("tags")?;
                    let Json(value) = row.try_get::<Json<Value>, _>("value")?;
                    Ok(MemoryVersion {
                        version: row.try_get("version")?,
                        category: row.try_get("category")?,
                        tags,
                        value,
                        updated_at_ms: row.try_get("updated_at_ms")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(&err)
        })
    }

    /// Deletes the memory `key` of `space` with its history; its id, or
    /// `None` if there was none.
    pub async fn delete_memory(&self, space: &Space, key: &str) -> Result<Option<i64>, StoreError> {
        space.validate()?;
        validate_text("key", key, MEMORY_NAME_MAX_BYTES)?;
        let err = self.db("deleting a memory");
        on_backend!(&self.backend, |pool| {
            sqlx::query_scalar::<_, i64>(
                "DELETE FROM memories WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 AND key = $3 RETURNING id",
            )
            .bind(self.tenant.as_str())
            .bind(space.owner_key())
            .bind(key)
            .fetch_optional(pool)
            .await
            .map_err(&err)
        })
    }

    /// Categories of live memories `view` sees, with counts, by name.
    pub async fn categories(&self, view: &View) -> Result<Vec<(String, i64)>, StoreError> {
        view.validate()?;
        let err = self.db("listing memory categories");
        on_backend!(&self.backend, |pool| {
            let rows = sqlx::query(
                "SELECT category, COUNT(*) AS n FROM memories WHERE tenant_id = $1 \
                 AND COALESCE(owner, '') IN ($2, $3) AND (expires_at_ms IS NULL OR expires_at_ms > $4) \
                 GROUP BY category ORDER BY category",
            )
            .bind(self.tenant.as_str())
            .bind(&view.a)
            .bind(&view.b)
            .bind(now_ms())
            .fetch_all(pool)
            .await
            .map_err(&err)?;
            rows.iter()
                .map(|r| Ok((r.try_get("category")?, r.try_get("n")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(&err)
        })
    }

    /// Counts one more read of each memory.
    pub async fn touch_memories(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.touch(ItemKind::Memory, ids).await
    }

    /// Counts one more read of each entity.
    pub async fn touch_entities(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.touch(ItemKind::Entity, ids).await
    }

    async fn touch(&self, kind: ItemKind, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let err = self.db("counting reads");
        on_backend!(&self.backend, |pool, Db| {
            // `tenant_id || ''` keeps SQLite from walking the tenant's
            // (tenant_id, owner, …) index, which it otherwise prefers to the
            // row ids here: a scan of every row of the tenant per read.
            let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
                "UPDATE {} SET access_count = access_count + 1 WHERE (tenant_id || '') = ",
                kind.table()
            ));
            q.push_bind(self.tenant.as_str()).push(" AND id IN (");
            let mut list = q.separated(", ");
            for id in ids.iter().take(MEMORY_LIST_MAX as usize) {
                list.push_bind(*id);
            }
            q.push(")");
            q.build().execute(pool).await.map_err(&err)?;
        });
        Ok(())
    }

    /// Deletes the tenant's memories (every space) whose expiry has passed;
    /// their ids.
    pub async fn expire_memories(&self) -> Result<Vec<i64>, StoreError> {
        let err = self.db("expiring memories");
        on_backend!(&self.backend, |pool| {
            sqlx::query_scalar::<_, i64>(
                "DELETE FROM memories WHERE tenant_id = $1 AND expires_at_ms IS NOT NULL \
                 AND expires_at_ms <= $2 RETURNING id",
            )
            .bind(self.tenant.as_str())
            .bind(now_ms())
            .fetch_all(pool)
            .await
            .map_err(&err)
        })
    }

    // ---- full-text search ----------------------------------------------------

    /// Ids of live items of `kind` that `view` sees matching any word of
    /// `query`, best first, with a score where higher is better (bm25
    /// negated on SQLite, `ts_rank` weighted by BM25 inverse document
    /// frequency on PostgreSQL). Words are letters and digits only, so the
    /// query language of either engine is never exposed.
    ///
    /// Cost is bounded by [`FTS_COMMON_DOCS`] rather than by the table:
    /// ranking every row that has a common word is what makes full-text
    /// search slow on large tables (the engines have no top-k pruning), and
    /// such a word hardly moves a BM25 ranking. So a word found in more rows
    /// than that (counted with a limit, over every tenant) is left out when
    /// the query has rarer words; when every word is that common, the newest
    /// [`FTS_COMMON_DOCS`] matches the view sees are ranked.
    pub async fn search_text(
        &self,
        kind: ItemKind,
        view: &View,
        query: &str,
        limit: u32,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        view.validate()?;
        let terms = fts_terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let limit = i64::from(limit.clamp(1, MEMORY_LIST_MAX));
        let table = kind.table();
        let live = kind
            .live()
            .replace("expires_at_ms", "t.expires_at_ms")
            .replace("valid_to_ms", "t.valid_to_ms");
        let cap = FTS_COMMON_DOCS as i64;
        let err = self.db("searching text");
        match &self.backend {
            Backend::Sqlite(pool) => {
                let mut rare = Vec::new();
                for t in &terms {
                    let df: i64 = sqlx::query_scalar(&format!(
                        "SELECT count(*) FROM (SELECT rowid FROM {table}_fts WHERE {table}_fts MATCH $1 LIMIT $2)"
                    ))
                    .bind(format!("\"{t}\""))
                    .bind(cap + 1)
                    .fetch_one(pool)
                    .await
                    .map_err(&err)?;
                    if df <= cap {
                        rare.push(t);
                    }
                }
                let all_common = rare.is_empty();
                let used = if all_common {
                    terms.iter().collect()
                } else {
                    rare
                };
                let expr = used
                    .iter()
                    .map(|t| format!("\"{t}\""))
                    .collect::<Vec<_>>()
                    .join(" OR ");
                let matches = format!(
                    "SELECT t.id AS id, -bm25({table}_fts) AS score FROM {table}_fts \
                     JOIN {table} t ON t.id = {table}_fts.rowid \
                     WHERE {table}_fts MATCH $1 AND t.tenant_id = $3 AND {live} \
                     AND COALESCE(t.owner, '') IN ($4, $5)"
                );
                // Newest first, stopping after the cap: no ORDER BY on the
                // score, so the engine need not rank every match.
                let sql = if all_common {
                    format!(
                        "SELECT id, score FROM ({matches} ORDER BY {table}_fts.rowid DESC LIMIT $7) \
                         ORDER BY score DESC, id LIMIT $6"
                    )
                } else {
                    format!("{matches} ORDER BY score DESC, t.id LIMIT $6")
                };
                let mut q = sqlx::query(&sql)
                    .bind(expr)
                    .bind(now_ms())
                    .bind(self.tenant.as_str())
                    .bind(&view.a)
                    .bind(&view.b)
                    .bind(limit);
                if all_common {
                    q = q.bind(cap);
                }
                let rows = q.fetch_all(pool).await.map_err(&err)?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, r.try_get("score")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(&err)
            }
            Backend::Postgres(pool) => {
                // ts_rank knows term frequency but not how rare a term is, so
                // a rare word would lose to several common ones. Weigh each
                // term's rank by its BM25 inverse document frequency: the
                // document frequency is counted (up to the cap) over the
                // rows this search may see, the row count is the planner's
                // estimate of the table (it only scales the weights).
                let now = now_ms();
                let scoped = |q: &mut QueryBuilder<'_, sqlx::Postgres>| {
                    q.push(" FROM ")
                        .push(table)
                        .push(" t WHERE t.tenant_id = ")
                        .push_bind(self.tenant.as_str().to_owned())
                        .push(" AND COALESCE(t.owner, '') IN (")
                        .push_bind(view.a.clone())
                        .push(", ")
                        .push_bind(view.b.clone())
                        .push(")");
                    match kind {
                        ItemKind::Memory => q
                            .push(" AND (t.expires_at_ms IS NULL OR t.expires_at_ms > ")
                            .push_bind(now)
                            .push(")"),
                        ItemKind::Entity => q.push(" AND t.valid_to_ms IS NULL"),
                    };
                };
                let mut q: QueryBuilder<sqlx::Postgres> = QueryBuilder::new("SELECT ");
                for (i, t) in terms.iter().enumerate() {
                    if i > 0 {
                        q.push(", ");
                    }
                    q.push("(SELECT count(*)::float8 FROM (SELECT 1");
                    scoped(&mut q);
                    q.push(" AND t.search_tsv @@ to_tsquery('english', ")
                        .push_bind(t.clone())
                        .push(") LIMIT ")
                        .push_bind(cap + 1)
                        .push(") c)");
                }
                q.push(", (SELECT GREATEST(reltuples, 0)::float8 FROM pg_class WHERE oid = '")
                    .push(table)
                    .push("'::regclass)");
                let row = q.build().fetch_one(pool).await.map_err(&err)?;
                let mut df = Vec::with_capacity(terms.len());
                for i in 0..terms.len() {
                    df.push(row.try_get::<f64, _>(i).map_err(&err)?);
                }
                let estimate: f64 = row.try_get(terms.len()).map_err(&err)?;
                let total = df.iter().copied().fold(estimate, f64::max);
                let rare: Vec<usize> = (0..terms.len()).filter(|i| df[*i] <= cap as f64).collect();
                let all_common = rare.is_empty();
                let used: Vec<usize> = if all_common {
                    (0..terms.len()).collect()
                } else {
                    rare
                };
                // When every word is common: the newest matches up to the
                // cap, then ranked.
                let mut q: QueryBuilder<sqlx::Postgres> = QueryBuilder::new(if all_common {
                    "SELECT id, score FROM (SELECT t.id AS id, (0"
                } else {
                    "SELECT t.id AS id, (0"
                });
                for &i in &used {
                    let idf = (1.0 + (total - df[i] + 0.5) / (df[i] + 0.5)).ln();
                    q.push(" + ts_rank(t.search_tsv, to_tsquery('english', ")
                        .push_bind(terms[i].clone())
                        .push(")) * ")
                        .push_bind(idf);
                }
                q.push(")::float8 AS score");
                scoped(&mut q);
                let any: Vec<&str> = used.iter().map(|&i| terms[i].as_str()).collect();
                q.push(" AND t.search_tsv @@ to_tsquery('english', ")
                    .push_bind(any.join(" | "))
                    .push(")");
                if all_common {
                    q.push(" ORDER BY t.id DESC LIMIT ")
                        .push_bind(cap)
                        .push(") s ORDER BY score DESC, id LIMIT ")
                        .push_bind(limit);
                } else {
                    q.push(" ORDER BY score DESC, t.id LIMIT ").push_bind(limit);
                }
                let rows = q.build().fetch_all(pool).await.map_err(&err)?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, r.try_get("score")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(&err)
            }
        }
    }

    // ---- embeddings ----------------------------------------------------------

    /// Stores the embedding of one row (little-endian `f32`), tagged with
    /// the model that made it.
    pub async fn set_embedding(
        &self,
        kind: ItemKind,
        id: i64,
        model: &str,
        vector: &[f32],
    ) -> Result<(), StoreError> {
        self.set_embeddings(kind, model, &[(id, vector)]).await
    }

    /// [`Memory::set_embedding`] for up to [`MEMORY_BATCH_MAX`] rows in one
    /// transaction.
    pub async fn set_embeddings(
        &self,
        kind: ItemKind,
        model: &str,
        vectors: &[(i64, &[f32])],
    ) -> Result<(), StoreError> {
        validate_text("model", model, MEMORY_NAME_MAX_BYTES)?;
        validate_batch("embeddings", vectors.len())?;
        if vectors.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE {} SET embedding = $3, embedding_model = $4 WHERE tenant_id = $1 AND id = $2",
            kind.table()
        );
        let err = self.db("storing embeddings");
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            for (id, vector) in vectors {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                sqlx::query(&sql)
                    .bind(self.tenant.as_str())
                    .bind(*id)
                    .bind(bytes)
                    .bind(model)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
            }
            tx.commit().await.map_err(&err)?;
        });
        Ok(())
    }

    /// One page (by id, after `after_id`) of live rows' embeddings made by
    /// `model`, in every space: to rebuild an index.
    pub async fn embeddings(
        &self,
        kind: ItemKind,
        model: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredVector>, StoreError> {
        let sql = format!(
            "SELECT id, owner, embedding FROM {} WHERE tenant_id = $1 AND {} AND embedding_model = $3 \
             AND id > $4 ORDER BY id LIMIT $5",
            kind.table(),
            kind.live()
        );
        let err = self.db("reading embeddings");
        on_backend!(&self.backend, |pool| {
            let rows = sqlx::query(&sql)
                .bind(self.tenant.as_str())
                .bind(now_ms())
                .bind(model)
                .bind(after_id)
                .bind(i64::from(limit.clamp(1, 100_000)))
                .fetch_all(pool)
                .await
                .map_err(&err)?;
            rows.iter()
                .map(|r| {
                    let bytes: Vec<u8> = r.try_get("embedding")?;
                    Ok(StoredVector {
                        id: r.try_get("id")?,
                        space: Space::from_owner(r.try_get("owner")?),
                        vector: bytes
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(&err)
        })
    }

    /// Live rows (every space) without an embedding by `model`, by id.
    pub async fn unembedded(
        &self,
        kind: ItemKind,
        model: &str,
        limit: u32,
    ) -> Result<Vec<Unembedded>, StoreError> {
        let sql = format!(
            "SELECT id, owner, search_text FROM {} WHERE tenant_id = $1 AND {} \
             AND (embedding_model IS NULL OR embedding_model <> $3) ORDER BY id LIMIT $4",
            kind.table(),
            kind.live()
        );
        let err = self.db("reading rows to embed");
        on_backend!(&self.backend, |pool| {
            let rows = sqlx::query(&sql)
                .bind(self.tenant.as_str())
                .bind(now_ms())
                .bind(model)
                .bind(i64::from(limit.clamp(1, 100_000)))
                .fetch_all(pool)
                .await
                .map_err(&err)?;
            rows.iter()
                .map(|r| {
                    Ok(Unembedded {
                        id: r.try_get("id")?,
                        space: Space::from_owner(r.try_get("owner")?),
                        text: r.try_get("search_text")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(&err)
        })
    }

    // ---- knowledge graph -----------------------------------------------------

    /// Creates the entities whose name is not yet in `space` (the first of
    /// a name given twice wins), with their observations as given; returns
    /// those created, in order.
    pub async fn create_entities(
        &self,
        space: &Space,
        entities: &[NewEntity],
    ) -> Result<Vec<EntityRecord>, StoreError> {
        space.validate()?;
        validate_batch("entities", entities.len())?;
        for e in entities {
            validate_text("name", &e.name, MEMORY_NAME_MAX_BYTES)?;
            validate_text("entityType", &e.entity_type, MEMORY_NAME_MAX_BYTES)?;
            validate_observations(&e.observations)?;
            validate_confidence(e.confidence)?;
        }
        let now = now_ms();
        let tenant = self.tenant.as_str();
        let err = self.db("creating entities");
        let insert = format!(
            "INSERT INTO memory_entities (tenant_id, owner, name, entity_type, confidence, source, provenance, \
             created_at_ms, updated_at_ms, valid_from_ms, search_text) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8, $9) ON CONFLICT DO NOTHING RETURNING {ENTITY_COLUMNS}"
        );
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            let mut created = Vec::new();
            for e in entities {
                let row = sqlx::query(&insert)
                    .bind(tenant)
                    .bind(space.owner())
                    .bind(&e.name)
                    .bind(&e.entity_type)
                    .bind(e.confidence)
                    .bind(&e.source)
                    .bind(Json(e.provenance.clone().unwrap_or_else(|| json!([]))))
                    .bind(now)
                    .bind(entity_search_text(&e.name, &e.entity_type, &e.observations))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(&err)?;
                let Some(row) = row else { continue };
                let mut record = entity_from_row!(&row).map_err(&err)?;
                for o in &e.observations {
                    sqlx::query(
                        "INSERT INTO memory_observations (tenant_id, entity_id, content, confidence, source, created_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(tenant)
                    .bind(record.id)
                    .bind(o)
                    .bind(e.confidence)
                    .bind(&e.source)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                }
                record.observations = e.observations.clone();
                created.push(record);
            }
            tx.commit().await.map_err(&err)?;
            Ok(created)
        })
    }

    /// Creates the relations not yet in `space` (same ends, type and
    /// inferred flag); returns those created, in order. Ends need not be
    /// entities, as in the official memory server.
    pub async fn create_relations(
        &self,
        space: &Space,
        relations: &[NewRelation],
    ) -> Result<Vec<RelationRecord>, StoreError> {
        space.validate()?;
        validate_batch("relations", relations.len())?;
        for r in relations {
            validate_text("from", &r.from, MEMORY_NAME_MAX_BYTES)?;
            validate_text("to", &r.to, MEMORY_NAME_MAX_BYTES)?;
            validate_text("relationType", &r.relation_type, MEMORY_NAME_MAX_BYTES)?;
            validate_confidence(r.confidence)?;
        }
        let now = now_ms();
        let err = self.db("creating relations");
        let insert = format!(
            "INSERT INTO memory_relations (tenant_id, owner, from_name, to_name, relation_type, confidence, \
             inferred, score, source, created_at_ms, valid_from_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) ON CONFLICT DO NOTHING RETURNING {RELATION_COLUMNS}"
        );
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            let mut created = Vec::new();
            for r in relations {
                let row = sqlx::query(&insert)
                    .bind(self.tenant.as_str())
                    .bind(space.owner())
                    .bind(&r.from)
                    .bind(&r.to)
                    .bind(&r.relation_type)
                    .bind(r.confidence)
                    .bind(r.inferred)
                    .bind(r.score)
                    .bind(&r.source)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(&err)?;
                if let Some(row) = row {
                    created.push(relation_from_row!(&row).map_err(&err)?);
                }
            }
            tx.commit().await.map_err(&err)?;
            Ok(created)
        })
    }

    /// Adds to each named entity the contents it does not have yet. If one
    /// entity is missing nothing is written (as the official server, which
    /// fails the whole call).
    pub async fn add_observations(
        &self,
        space: &Space,
        additions: &[(String, Vec<String>)],
        source: Option<&str>,
    ) -> Result<ObservationsAdded, StoreError> {
        space.validate()?;
        validate_batch("observations", additions.len())?;
        for (name, contents) in additions {
            validate_text("entityName", name, MEMORY_NAME_MAX_BYTES)?;
            validate_observations(contents)?;
        }
        let now = now_ms();
        let tenant = self.tenant.as_str();
        let err = self.db("adding observations");
        let mut touched = Vec::new();
        let outcome = on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            let mut results = Vec::new();
            let mut missing = None;
            for (name, contents) in additions {
                // A write first (SQLite takes the write lock), which also
                // finds the entity.
                let id = sqlx::query_scalar::<_, i64>(
                    "UPDATE memory_entities SET updated_at_ms = $4 WHERE tenant_id = $1 \
                     AND COALESCE(owner, '') = $2 AND name = $3 AND valid_to_ms IS NULL RETURNING id",
                )
                .bind(tenant)
                .bind(space.owner_key())
                .bind(name)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(&err)?;
                let Some(id) = id else {
                    missing = Some(name.clone());
                    break;
                };
                let existing: Vec<String> = sqlx::query_scalar(
                    "SELECT content FROM memory_observations WHERE tenant_id = $1 AND entity_id = $2",
                )
                .bind(tenant)
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(&err)?;
                // Only existing contents are filtered out, not repeats within
                // the call: the official server does the same.
                let added: Vec<String> = contents
                    .iter()
                    .filter(|c| !existing.contains(c))
                    .cloned()
                    .collect();
                for c in &added {
                    sqlx::query(
                        "INSERT INTO memory_observations (tenant_id, entity_id, content, source, created_at_ms) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(tenant)
                    .bind(id)
                    .bind(c)
                    .bind(source)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                }
                touched.push(id);
                results.push((name.clone(), added));
            }
            if let Some(name) = missing {
                tx.rollback().await.map_err(&err)?;
                ObservationsAdded::MissingEntity(name)
            } else {
                for id in &touched {
                    refresh_entity_text!(&mut *tx, tenant, *id, &err);
                }
                tx.commit().await.map_err(&err)?;
                ObservationsAdded::Added(results)
            }
        });
        Ok(outcome)
    }

    /// Deletes the named entities of `space` (every version) and every
    /// relation of `space` that starts or ends at one of them; the ids of
    /// the current entity rows deleted.
    pub async fn delete_entities(
        &self,
        space: &Space,
        names: &[String],
    ) -> Result<Vec<i64>, StoreError> {
        space.validate()?;
        validate_batch("entityNames", names.len())?;
        for n in names {
            validate_text("entityNames", n, MEMORY_NAME_MAX_BYTES)?;
        }
        let tenant = self.tenant.as_str();
        let err = self.db("deleting entities");
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            let mut ids = Vec::new();
            for n in names {
                sqlx::query(
                    "DELETE FROM memory_relations WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 \
                     AND (from_name = $3 OR to_name = $3)",
                )
                .bind(tenant)
                .bind(space.owner_key())
                .bind(n)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
                let rows = sqlx::query(
                    "DELETE FROM memory_entities WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 AND name = $3 \
                     RETURNING id, valid_to_ms",
                )
                .bind(tenant)
                .bind(space.owner_key())
                .bind(n)
                .fetch_all(&mut *tx)
                .await
                .map_err(&err)?;
                for r in rows {
                    let to: Option<i64> = r.try_get("valid_to_ms").map_err(&err)?;
                    if to.is_none() {
                        ids.push(r.try_get("id").map_err(&err)?);
                    }
                }
            }
            tx.commit().await.map_err(&err)?;
            Ok(ids)
        })
    }

    /// Removes the given contents from each named entity; unknown entities
    /// are skipped.
    pub async fn delete_observations(
        &self,
        space: &Space,
        deletions: &[(String, Vec<String>)],
    ) -> Result<(), StoreError> {
        space.validate()?;
        validate_batch("deletions", deletions.len())?;
        for (name, contents) in deletions {
            validate_text("entityName", name, MEMORY_NAME_MAX_BYTES)?;
            validate_batch("observations", contents.len())?;
        }
        let tenant = self.tenant.as_str();
        let err = self.db("deleting observations");
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            for (name, contents) in deletions {
                let id = sqlx::query_scalar::<_, i64>(
                    "UPDATE memory_entities SET updated_at_ms = $4 WHERE tenant_id = $1 \
                     AND COALESCE(owner, '') = $2 AND name = $3 AND valid_to_ms IS NULL RETURNING id",
                )
                .bind(tenant)
                .bind(space.owner_key())
                .bind(name)
                .bind(now_ms())
                .fetch_optional(&mut *tx)
                .await
                .map_err(&err)?;
                let Some(id) = id else { continue };
                for c in contents {
                    sqlx::query("DELETE FROM memory_observations WHERE tenant_id = $1 AND entity_id = $2 AND content = $3")
                        .bind(tenant)
                        .bind(id)
                        .bind(c)
                        .execute(&mut *tx)
                        .await
                        .map_err(&err)?;
                }
                refresh_entity_text!(&mut *tx, tenant, id, &err);
            }
            tx.commit().await.map_err(&err)?;
            Ok(())
        })
    }

    /// Deletes relations matching ends and type (stated or inferred).
    pub async fn delete_relations(
        &self,
        space: &Space,
        relations: &[NewRelation],
    ) -> Result<u64, StoreError> {
        space.validate()?;
        validate_batch("relations", relations.len())?;
        let err = self.db("deleting relations");
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            let mut n = 0;
            for r in relations {
                n += sqlx::query(
                    "DELETE FROM memory_relations WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 \
                     AND from_name = $3 AND to_name = $4 AND relation_type = $5",
                )
                .bind(self.tenant.as_str())
                .bind(space.owner_key())
                .bind(&r.from)
                .bind(&r.to)
                .bind(&r.relation_type)
                .execute(&mut *tx)
                .await
                .map_err(&err)?
                .rows_affected();
            }
            tx.commit().await.map_err(&err)?;
            Ok(n)
        })
    }

    /// Deletes inferred relations scoring below `min_score`; how many.
    pub async fn prune_inferred_relations(
        &self,
        space: &Space,
        min_score: f64,
    ) -> Result<u64, StoreError> {
        space.validate()?;
        let err = self.db("pruning inferred relations");
        on_backend!(&self.backend, |pool| {
            sqlx::query(
                "DELETE FROM memory_relations WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 \
                 AND inferred = $3 AND (score IS NULL OR score < $4)",
            )
            .bind(self.tenant.as_str())
            .bind(space.owner_key())
            .bind(true)
            .bind(min_score)
            .execute(pool)
            .await
            .map(|d| d.rows_affected())
            .map_err(&err)
        })
    }

    /// The current graph of the spaces `view` sees: entities and relations
    /// in creation order. Inferred relations only with `include_inferred`.
    pub async fn read_graph(
        &self,
        view: &View,
        include_inferred: bool,
    ) -> Result<GraphRecords, StoreError> {
        view.validate()?;
        let err = self.db("reading the graph");
        let entity_sql = format!(
            "SELECT {ENTITY_COLUMNS} FROM memory_entities WHERE tenant_id = $1 AND COALESCE(owner, '') IN ($2, $3) \
             AND valid_to_ms IS NULL ORDER BY id"
        );
        let relation_sql = format!(
            "SELECT {RELATION_COLUMNS} FROM memory_relations WHERE tenant_id = $1 AND COALESCE(owner, '') IN ($2, $3) \
             AND valid_to_ms IS NULL AND (inferred = $4 OR $5) ORDER BY id"
        );
        let (mut entities, relations, observations) = on_backend!(&self.backend, |pool| {
            let rows = sqlx::query(&entity_sql)
                .bind(self.tenant.as_str())
                .bind(&view.a)
                .bind(&view.b)
                .fetch_all(pool)
                .await
                .map_err(&err)?;
            let entities = rows
                .iter()
                .map(|r| entity_from_row!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?;
            let rows = sqlx::query(&relation_sql)
                .bind(self.tenant.as_str())
                .bind(&view.a)
                .bind(&view.b)
                .bind(false)
                .bind(include_inferred)
                .fetch_all(pool)
                .await
                .map_err(&err)?;
            let relations = rows
                .iter()
                .map(|r| relation_from_row!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?;
            let rows = sqlx::query(
                "SELECT o.entity_id, o.content FROM memory_observations o JOIN memory_entities e ON e.id = o.entity_id \
                 WHERE o.tenant_id = $1 AND e.tenant_id = $1 AND COALESCE(e.owner, '') IN ($2, $3) \
                 AND e.valid_to_ms IS NULL ORDER BY o.id",
            )
            .bind(self.tenant.as_str())
            .bind(&view.a)
            .bind(&view.b)
            .fetch_all(pool)
            .await
            .map_err(&err)?;
            let observations = rows
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get::<i64, _>("entity_id")?,
                        r.try_get::<String, _>("content")?,
                    ))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(&err)?;
            (entities, relations, observations)
        });
        attach_observations(&mut entities, observations);
        Ok(GraphRecords {
            entities,
            relations,
        })
    }

    /// Entity rows by id (current or superseded), with their observations,
    /// in the order given; those `view` sees.
    pub async fn entities_by_ids(
        &self,
        view: &View,
        ids: &[i64],
    ) -> Result<Vec<EntityRecord>, StoreError> {
        view.validate()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.iter().take(MEMORY_LIST_MAX as usize).copied().collect();
        let err = self.db("reading entities");
        let (mut entities, observations) = on_backend!(&self.backend, |pool, Db| {
            let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
                "SELECT {ENTITY_COLUMNS} FROM memory_entities WHERE tenant_id = "
            ));
            q.push_bind(self.tenant.as_str())
                .push(" AND COALESCE(owner, '') IN (")
                .push_bind(&view.a)
                .push(", ")
                .push_bind(&view.b)
                .push(") AND id IN (");
            let mut list = q.separated(", ");
            for id in &ids {
                list.push_bind(*id);
            }
            q.push(")");
            let rows = q.build().fetch_all(pool).await.map_err(&err)?;
            let entities = rows
                .iter()
                .map(|r| entity_from_row!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?;
            let mut q: QueryBuilder<Db> = QueryBuilder::new(
                "SELECT entity_id, content FROM memory_observations WHERE tenant_id = ",
            );
            q.push_bind(self.tenant.as_str())
                .push(" AND entity_id IN (");
            let mut list = q.separated(", ");
            for e in &entities {
                list.push_bind(e.id);
            }
            list.push_bind(-1_i64);
            q.push(") ORDER BY id");
            let rows = q.build().fetch_all(pool).await.map_err(&err)?;
            let observations = rows
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get::<i64, _>("entity_id")?,
                        r.try_get::<String, _>("content")?,
                    ))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(&err)?;
            (entities, observations)
        });
        attach_observations(&mut entities, observations);
        entities.sort_by_key(|e| ids.iter().position(|i| *i == e.id));
        Ok(entities)
    }

    /// The current entity `name` of `space`.
    pub async fn entity(
        &self,
        space: &Space,
        name: &str,
    ) -> Result<Option<EntityRecord>, StoreError> {
        space.validate()?;
        validate_text("name", name, MEMORY_NAME_MAX_BYTES)?;
        let err = self.db("reading an entity");
        let id = on_backend!(&self.backend, |pool| {
            sqlx::query_scalar::<_, i64>(
                "SELECT id FROM memory_entities WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 \
                 AND name = $3 AND valid_to_ms IS NULL",
            )
            .bind(self.tenant.as_str())
            .bind(space.owner_key())
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(&err)?
        });
        match id {
            None => Ok(None),
            Some(id) => Ok(self.entities_by_ids(&View::only(space), &[id]).await?.pop()),
        }
    }

    /// The current entities named in `names` that `view` sees, in creation
    /// order, with their observations.
    pub async fn entities_by_names(
        &self,
        view: &View,
        names: &[String],
    ) -> Result<Vec<EntityRecord>, StoreError> {
        view.validate()?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let err = self.db("reading entities");
        let ids: Vec<i64> = on_backend!(&self.backend, |pool, Db| {
            let mut q: QueryBuilder<Db> =
                QueryBuilder::new("SELECT id FROM memory_entities WHERE tenant_id = ");
            q.push_bind(self.tenant.as_str())
                .push(" AND COALESCE(owner, '') IN (")
                .push_bind(&view.a)
                .push(", ")
                .push_bind(&view.b)
                .push(") AND valid_to_ms IS NULL AND name IN (");
            let mut list = q.separated(", ");
            for n in names.iter().take(MEMORY_LIST_MAX as usize) {
                list.push_bind(n);
            }
            q.push(") ORDER BY id");
            q.build_query_scalar::<i64>()
                .fetch_all(pool)
                .await
                .map_err(&err)?
        });
        self.entities_by_ids(view, &ids).await
    }

    /// Every version of entity `name` in `space`, oldest first.
    pub async fn entity_history(
        &self,
        space: &Space,
        name: &str,
    ) -> Result<Vec<EntityRecord>, StoreError> {
        space.validate()?;
        validate_text("name", name, MEMORY_NAME_MAX_BYTES)?;
        let err = self.db("reading entity history");
        let ids: Vec<i64> = on_backend!(&self.backend, |pool| {
            sqlx::query_scalar::<_, i64>(
                "SELECT id FROM memory_entities WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 AND name = $3 ORDER BY id",
            )
            .bind(self.tenant.as_str())
            .bind(space.owner_key())
            .bind(name)
            .fetch_all(pool)
            .await
            .map_err(&err)?
        });
        self.entities_by_ids(&View::only(space), &ids).await
    }

    /// Current relations of the spaces `view` sees that start or end at one
    /// of `names`, in creation order.
    pub async fn relations_touching(
        &self,
        view: &View,
        names: &[String],
        include_inferred: bool,
    ) -> Result<Vec<RelationRecord>, StoreError> {
        view.validate()?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let err = self.db("reading relations");
        on_backend!(&self.backend, |pool, Db| {
            let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
                "SELECT {RELATION_COLUMNS} FROM memory_relations WHERE tenant_id = "
            ));
            q.push_bind(self.tenant.as_str())
                .push(" AND COALESCE(owner, '') IN (")
                .push_bind(&view.a)
                .push(", ")
                .push_bind(&view.b)
                .push(") AND valid_to_ms IS NULL AND (inferred = ")
                .push_bind(false)
                .push(" OR ")
                .push_bind(include_inferred)
                .push(") AND (from_name IN (");
            let mut list = q.separated(", ");
            for n in names.iter().take(MEMORY_LIST_MAX as usize) {
                list.push_bind(n);
            }
            q.push(") OR to_name IN (");
            let mut list = q.separated(", ");
            for n in names.iter().take(MEMORY_LIST_MAX as usize) {
                list.push_bind(n);
            }
            q.push(")) ORDER BY id");
            let rows = q.build().fetch_all(pool).await.map_err(&err)?;
            rows.iter()
                .map(|r| relation_from_row!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)
        })
    }

    /// Replaces the current entity `name` of `space` by a new version with
    /// `change` applied; the old row stays, with `valid_to_ms` set. `None`
    /// if there is no such entity.
    pub async fn supersede_entity(
        &self,
        space: &Space,
        name: &str,
        change: &EntityChange,
    ) -> Result<Option<(i64, EntityRecord)>, StoreError> {
        space.validate()?;
        validate_text("name", name, MEMORY_NAME_MAX_BYTES)?;
        if let Some(t) = &change.entity_type {
            validate_text("entityType", t, MEMORY_NAME_MAX_BYTES)?;
        }
        if let Some(o) = &change.observations {
            validate_observations(o)?;
        }
        validate_observations(&change.add_observations)?;
        if let Some(c) = change.confidence {
            validate_confidence(c)?;
        }
        let now = now_ms();
        let tenant = self.tenant.as_str();
        let err = self.db("superseding an entity");
        let close = format!(
            "UPDATE memory_entities SET valid_to_ms = $4 WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 \
             AND name = $3 AND valid_to_ms IS NULL RETURNING {ENTITY_COLUMNS}"
        );
        let insert = format!(
            "INSERT INTO memory_entities (tenant_id, owner, name, entity_type, confidence, source, provenance, \
             access_count, created_at_ms, updated_at_ms, valid_from_ms, search_text) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11) RETURNING {ENTITY_COLUMNS}"
        );
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            let Some(row) = sqlx::query(&close)
                .bind(tenant)
                .bind(space.owner_key())
                .bind(name)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(&err)?
            else {
                tx.rollback().await.map_err(&err)?;
                return Ok(None);
            };
            let old = entity_from_row!(&row).map_err(&err)?;
            let old_observations: Vec<String> = sqlx::query_scalar(
                "SELECT content FROM memory_observations WHERE tenant_id = $1 AND entity_id = $2 ORDER BY id",
            )
            .bind(tenant)
            .bind(old.id)
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
            let mut observations = change.observations.clone().unwrap_or(old_observations);
            for o in &change.add_observations {
                if !observations.contains(o) {
                    observations.push(o.clone());
                }
            }
            let entity_type = change
                .entity_type
                .clone()
                .unwrap_or(old.entity_type.clone());
            let confidence = change.confidence.unwrap_or(old.confidence);
            let source = change.source.clone().or(old.source.clone());
            let row = sqlx::query(&insert)
                .bind(tenant)
                .bind(space.owner())
                .bind(name)
                .bind(&entity_type)
                .bind(confidence)
                .bind(&source)
                .bind(Json(&old.provenance))
                .bind(old.access_count)
                .bind(old.created_at_ms)
                .bind(now)
                .bind(entity_search_text(name, &entity_type, &observations))
                .fetch_one(&mut *tx)
                .await
                .map_err(&err)?;
            let mut record = entity_from_row!(&row).map_err(&err)?;
            for o in &observations {
                sqlx::query(
                    "INSERT INTO memory_observations (tenant_id, entity_id, content, confidence, source, created_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(tenant)
                .bind(record.id)
                .bind(o)
                .bind(confidence)
                .bind(&source)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            }
            record.observations = observations;
            tx.commit().await.map_err(&err)?;
            Ok(Some((old.id, record)))
        })
    }

    /// Merges entity `duplicate` into `keep` (both current, in `space`):
    /// `keep` gains the observations it lacks and a provenance entry naming
    /// `duplicate`; relations of `duplicate` move to `keep` (self-loops
    /// dropped); `duplicate` is superseded, not deleted. Returns the
    /// duplicate's row id, or `None` if either entity is missing.
    pub async fn merge_entities(
        &self,
        space: &Space,
        keep: &str,
        duplicate: &str,
        score: f64,
    ) -> Result<Option<i64>, StoreError> {
        space.validate()?;
        validate_text("keep", keep, MEMORY_NAME_MAX_BYTES)?;
        validate_text("duplicate", duplicate, MEMORY_NAME_MAX_BYTES)?;
        if keep == duplicate {
            return Err(StoreError::invalid("duplicate", "must differ from keep"));
        }
        let now = now_ms();
        let tenant = self.tenant.as_str();
        let owner = space.owner_key();
        let err = self.db("merging entities");
        on_backend!(&self.backend, |pool| {
            let mut tx = pool.begin().await.map_err(&err)?;
            let dup = sqlx::query_scalar::<_, i64>(
                "UPDATE memory_entities SET valid_to_ms = $4 WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 \
                 AND name = $3 AND valid_to_ms IS NULL RETURNING id",
            )
            .bind(tenant)
            .bind(owner)
            .bind(duplicate)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(&err)?;
            let kept = sqlx::query(
                "SELECT id, provenance FROM memory_entities WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 \
                 AND name = $3 AND valid_to_ms IS NULL",
            )
            .bind(tenant)
            .bind(owner)
            .bind(keep)
            .fetch_optional(&mut *tx)
            .await
            .map_err(&err)?;
            let (Some(dup), Some(kept)) = (dup, kept) else {
                tx.rollback().await.map_err(&err)?;
                return Ok(None);
            };
            let keep_id: i64 = kept.try_get("id").map_err(&err)?;
            let Json(mut provenance) =
                kept.try_get::<Json<Value>, _>("provenance").map_err(&err)?;
            if !provenance.is_array() {
                provenance = json!([]);
            }
            if let Some(list) = provenance.as_array_mut() {
                list.push(
                    json!({ "merged": duplicate, "entityId": dup, "score": score, "atMs": now }),
                );
            }
            sqlx::query(
                "INSERT INTO memory_observations (tenant_id, entity_id, content, confidence, source, created_at_ms) \
                 SELECT tenant_id, $3, content, confidence, source, created_at_ms FROM memory_observations d \
                 WHERE d.tenant_id = $1 AND d.entity_id = $2 AND NOT EXISTS (SELECT 1 FROM memory_observations k \
                 WHERE k.tenant_id = $1 AND k.entity_id = $3 AND k.content = d.content) ORDER BY d.id",
            )
            .bind(tenant)
            .bind(dup)
            .bind(keep_id)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
            sqlx::query("UPDATE memory_entities SET provenance = $3, updated_at_ms = $4 WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(keep_id)
                .bind(Json(&provenance))
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            // Re-point the duplicate's relations: close each and insert it
            // again with the kept name, unless that already exists.
            let moved = sqlx::query(&format!(
                "UPDATE memory_relations SET valid_to_ms = $4 WHERE tenant_id = $1 AND COALESCE(owner, '') = $2 \
                 AND valid_to_ms IS NULL AND (from_name = $3 OR to_name = $3) RETURNING {RELATION_COLUMNS}"
            ))
            .bind(tenant)
            .bind(owner)
            .bind(duplicate)
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?;
            for row in &moved {
                let r = relation_from_row!(row).map_err(&err)?;
                let from = if r.from == duplicate {
                    keep
                } else {
                    r.from.as_str()
                };
                let to = if r.to == duplicate {
                    keep
                } else {
                    r.to.as_str()
                };
                if from == to {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO memory_relations (tenant_id, owner, from_name, to_name, relation_type, confidence, \
                     inferred, score, source, created_at_ms, valid_from_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                )
                .bind(tenant)
                .bind(space.owner())
                .bind(from)
                .bind(to)
                .bind(&r.relation_type)
                .bind(r.confidence)
                .bind(r.inferred)
                .bind(r.score)
                .bind(&r.source)
                .bind(r.created_at_ms)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            }
            refresh_entity_text!(&mut *tx, tenant, keep_id, &err);
            tx.commit().await.map_err(&err)?;
            Ok(Some(dup))
        })
    }
}

fn attach_observations(entities: &mut [EntityRecord], observations: Vec<(i64, String)>) {
    let index: std::collections::HashMap<i64, usize> = entities
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id, i))
        .collect();
    for (entity, content) in observations {
        if let Some(&i) = index.get(&entity) {
            entities[i].observations.push(content);
        }
    }
}

/// What full-text search and embeddings see of a memory: key, category,
/// tags and every string or number in the value.
pub fn memory_search_text(key: &str, category: &str, tags: &[String], value: &Value) -> String {
    let mut out = format!("{key} {category}");
    for t in tags {
        out.push(' ');
        out.push_str(t);
    }
    fn leaves(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push(' ');
                out.push_str(s);
            }
            Value::Number(n) => {
                out.push(' ');
                out.push_str(&n.to_string());
            }
            Value::Bool(_) | Value::Null => {}
            Value::Array(items) => items.iter().for_each(|i| leaves(i, out)),
            Value::Object(map) => map.iter().for_each(|(k, v)| {
                out.push(' ');
                out.push_str(k);
                leaves(v, out);
            }),
        }
    }
    leaves(value, &mut out);
    out
}

/// What full-text search and embeddings see of an entity.
pub fn entity_search_text(name: &str, entity_type: &str, observations: &[String]) -> String {
    let mut out = format!("{name} {entity_type}");
    for o in observations {
        out.push_str(". ");
        out.push_str(o);
    }
    out
}

/// Lower-cased runs of letters and digits, deduplicated, at most
/// [`FTS_MAX_TERMS`]: safe to quote for FTS5 and to join for `to_tsquery`.
fn fts_terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for word in query.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        let w = word.to_lowercase();
        if !terms.contains(&w) {
            terms.push(w);
        }
        if terms.len() == FTS_MAX_TERMS {
            break;
        }
    }
    terms
}

/// Checks a memory to write; its search text.
fn validate_new_memory(memory: &NewMemory) -> Result<String, StoreError> {
    validate_text("key", &memory.key, MEMORY_NAME_MAX_BYTES)?;
    validate_text("category", &memory.category, MEMORY_NAME_MAX_BYTES)?;
    if memory.tags.len() > 64 {
        return Err(StoreError::invalid("tags", "at most 64 tags"));
    }
    for tag in &memory.tags {
        validate_text("tags", tag, MEMORY_NAME_MAX_BYTES)?;
    }
    let value_len = memory.value.to_string().len();
    if value_len > MEMORY_VALUE_MAX_BYTES {
        return Err(StoreError::invalid(
            "value",
            format!("must be at most {MEMORY_VALUE_MAX_BYTES} bytes of JSON, got {value_len}"),
        ));
    }
    if let Some(p) = &memory.source {
        validate_text("source", p, MEMORY_NAME_MAX_BYTES)?;
    }
    let search_text =
        memory_search_text(&memory.key, &memory.category, &memory.tags, &memory.value);
    check_no_nul("value", &search_text)?;
    Ok(search_text)
}

fn validate_text(field: &'static str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(StoreError::invalid(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    check_no_nul(field, value)
}

fn check_no_nul(field: &'static str, value: &str) -> Result<(), StoreError> {
    if value.contains('\0') {
        return Err(StoreError::invalid(field, "must not contain NUL"));
    }
    Ok(())
}

fn validate_batch(field: &'static str, len: usize) -> Result<(), StoreError> {
    if len > MEMORY_BATCH_MAX {
        return Err(StoreError::invalid(
            field,
            format!("at most {MEMORY_BATCH_MAX} items per call, got {len}"),
        ));
    }
    Ok(())
}

fn validate_observations(observations: &[String]) -> Result<(), StoreError> {
    validate_batch("observations", observations.len())?;
    for o in observations {
        // Empty observations are allowed: the official server stores them.
        if o.len() > MEMORY_VALUE_MAX_BYTES {
            return Err(StoreError::invalid(
                "observations",
                format!("each must be at most {MEMORY_VALUE_MAX_BYTES} bytes"),
            ));
        }
        check_no_nul("observations", o)?;
    }
    Ok(())
}

fn validate_confidence(c: f64) -> Result<(), StoreError> {
    if !(0.0..=1.0).contains(&c) {
        return Err(StoreError::invalid(
            "confidence",
            format!("must be within 0..=1, got {c}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts_terms_are_plain_words() {
        assert_eq!(
            fts_terms("Hello, \"world\" OR x* NEAR(y)"),
            ["hello", "world", "or", "x", "near", "y"]
        );
        assert!(fts_terms("!!! ---").is_empty());
        assert_eq!(fts_terms(&"a ".repeat(100)).len(), 1);
    }

    #[test]
    fn search_text_covers_value_leaves() {
        let t = memory_search_text(
            "k",
            "c",
            &["t1".into()],
            &json!({"a": ["x", 3], "b": {"c": "y"}}),
        );
        for part in ["k", "c", "t1", "a", "x", "3", "b", "y"] {
            assert!(t.split_whitespace().any(|w| w == part), "{part} in {t}");
        }
    }

    #[test]
    fn views_see_their_spaces() {
        let alice = Space::Private("alice".into());
        let v = View::shared_and_private("alice");
        assert!(v.sees(&Space::Shared) && v.sees(&alice));
        assert!(!v.sees(&Space::Private("bob".into())));
        assert!(!View::only(&Space::Shared).sees(&alice));
    }
}
