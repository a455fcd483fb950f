-- Memory and knowledge (cellgate-memory).
--
-- owner is NULL for the tenant's shared space and the principal's id for
-- its private space; uniqueness and every lookup go through
-- COALESCE(owner, '') so that NULL compares equal to NULL. The FTS5 tables
-- use external content (no copy of the text, no tenant column): triggers
-- keep them in step, and every search joins back to the owning row to
-- filter by tenant and space.

-- Key/value memories. value is JSON (a text value is a JSON string);
-- search_text is what full-text search sees (key, category, tags, value).
CREATE TABLE memories (
    id              INTEGER NOT NULL PRIMARY KEY,
    tenant_id       TEXT    NOT NULL REFERENCES tenants (id),
    owner           TEXT,
    key             TEXT    NOT NULL,
    category        TEXT    NOT NULL,
    tags            TEXT    NOT NULL CHECK (json_valid(tags)),
    value           TEXT    NOT NULL CHECK (json_valid(value)),
    search_text     TEXT    NOT NULL,
    version         INTEGER NOT NULL CHECK (version >= 1),
    source          TEXT,
    provenance      TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(provenance)),
    access_count    INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    embedding       BLOB,
    embedding_model TEXT
) STRICT;

CREATE UNIQUE INDEX memories_key ON memories (tenant_id, COALESCE(owner, ''), key);
CREATE INDEX memories_category ON memories (tenant_id, COALESCE(owner, ''), category);
CREATE INDEX memories_expiry ON memories (expires_at_ms) WHERE expires_at_ms IS NOT NULL;

-- Earlier values of a memory, the newest few kept.
CREATE TABLE memory_versions (
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id),
    memory_id     INTEGER NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    category      TEXT    NOT NULL,
    tags          TEXT    NOT NULL CHECK (json_valid(tags)),
    value         TEXT    NOT NULL CHECK (json_valid(value)),
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (memory_id, version)
) STRICT;

CREATE INDEX memory_versions_tenant ON memory_versions (tenant_id);

-- Knowledge graph nodes. A change supersedes a row (valid_to_ms set, a new
-- row inserted) instead of overwriting it; the current row of a name has
-- valid_to_ms NULL. search_text is name, type and current observations.
CREATE TABLE memory_entities (
    id              INTEGER NOT NULL PRIMARY KEY,
    tenant_id       TEXT    NOT NULL REFERENCES tenants (id),
    owner           TEXT,
    name            TEXT    NOT NULL,
    entity_type     TEXT    NOT NULL,
    confidence      REAL    NOT NULL DEFAULT 1.0,
    source          TEXT,
    provenance      TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(provenance)),
    access_count    INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    valid_from_ms   INTEGER NOT NULL,
    valid_to_ms     INTEGER,
    search_text     TEXT    NOT NULL,
    embedding       BLOB,
    embedding_model TEXT
) STRICT;

CREATE UNIQUE INDEX memory_entities_current
    ON memory_entities (tenant_id, COALESCE(owner, ''), name) WHERE valid_to_ms IS NULL;
CREATE INDEX memory_entities_space ON memory_entities (tenant_id, COALESCE(owner, ''), id);

CREATE TABLE memory_observations (
    id            INTEGER NOT NULL PRIMARY KEY,
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id),
    entity_id     INTEGER NOT NULL REFERENCES memory_entities (id) ON DELETE CASCADE,
    content       TEXT    NOT NULL,
    confidence    REAL    NOT NULL DEFAULT 1.0,
    source        TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX memory_observations_entity ON memory_observations (entity_id, id);
CREATE INDEX memory_observations_tenant ON memory_observations (tenant_id);

-- Edges by entity name (the official memory server allows relations to
-- names that have no entity). inferred edges come from relationship
-- discovery and carry their similarity score; an explicit edge and an
-- inferred one with the same ends and type may both exist.
CREATE TABLE memory_relations (
    id            INTEGER NOT NULL PRIMARY KEY,
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id),
    owner         TEXT,
    from_name     TEXT    NOT NULL,
    to_name       TEXT    NOT NULL,
    relation_type TEXT    NOT NULL,
    confidence    REAL    NOT NULL DEFAULT 1.0,
    inferred      INTEGER NOT NULL DEFAULT 0,
    score         REAL,
    source        TEXT,
    created_at_ms INTEGER NOT NULL,
    valid_from_ms INTEGER NOT NULL,
    valid_to_ms   INTEGER
) STRICT;

CREATE UNIQUE INDEX memory_relations_current
    ON memory_relations (tenant_id, COALESCE(owner, ''), from_name, to_name, relation_type, inferred)
    WHERE valid_to_ms IS NULL;
CREATE INDEX memory_relations_to
    ON memory_relations (tenant_id, COALESCE(owner, ''), to_name) WHERE valid_to_ms IS NULL;

CREATE VIRTUAL TABLE memories_fts USING fts5(
    search_text, content = 'memories', content_rowid = 'id', tokenize = 'porter unicode61'
);
CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts (rowid, search_text) VALUES (new.id, new.search_text);
END;
CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text);
END;
CREATE TRIGGER memories_fts_update AFTER UPDATE OF search_text ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text);
    INSERT INTO memories_fts (rowid, search_text) VALUES (new.id, new.search_text);
END;

CREATE VIRTUAL TABLE memory_entities_fts USING fts5(
    search_text, content = 'memory_entities', content_rowid = 'id', tokenize = 'porter unicode61'
);
CREATE TRIGGER memory_entities_fts_insert AFTER INSERT ON memory_entities BEGIN
    INSERT INTO memory_entities_fts (rowid, search_text) VALUES (new.id, new.search_text);
END;
CREATE TRIGGER memory_entities_fts_delete AFTER DELETE ON memory_entities BEGIN
    INSERT INTO memory_entities_fts (memory_entities_fts, rowid, search_text)
        VALUES ('delete', old.id, old.search_text);
END;
CREATE TRIGGER memory_entities_fts_update AFTER UPDATE OF search_text ON memory_entities BEGIN
    INSERT INTO memory_entities_fts (memory_entities_fts, rowid, search_text)
        VALUES ('delete', old.id, old.search_text);
    INSERT INTO memory_entities_fts (rowid, search_text) VALUES (new.id, new.search_text);
END;
