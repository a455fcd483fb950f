-- Memory and knowledge (cellgate-memory).
--
-- owner is NULL for the tenant's shared space and the principal's id for
-- its private space; uniqueness and every lookup go through
-- COALESCE(owner, '') so that NULL compares equal to NULL. Full-text search
-- uses a generated tsvector column with a GIN index; every search also
-- filters by tenant and space.

CREATE TABLE memories (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    owner           TEXT COLLATE "C",
    key             TEXT COLLATE "C" NOT NULL,
    category        TEXT COLLATE "C" NOT NULL,
    tags            JSONB  NOT NULL,
    value           JSONB  NOT NULL,
    search_text     TEXT   NOT NULL,
    search_tsv      TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', search_text)) STORED,
    version         BIGINT NOT NULL CHECK (version >= 1),
    source          TEXT,
    provenance      JSONB  NOT NULL DEFAULT '[]',
    access_count    BIGINT NOT NULL DEFAULT 0,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT,
    embedding       BYTEA,
    embedding_model TEXT
);

CREATE UNIQUE INDEX memories_key ON memories (tenant_id, COALESCE(owner, ''), key);
CREATE INDEX memories_category ON memories (tenant_id, COALESCE(owner, ''), category);
CREATE INDEX memories_expiry ON memories (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
CREATE INDEX memories_fts ON memories USING GIN (search_tsv);

CREATE TABLE memory_versions (
    tenant_id     TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    memory_id     BIGINT NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    version       BIGINT NOT NULL,
    category      TEXT COLLATE "C" NOT NULL,
    tags          JSONB  NOT NULL,
    value         JSONB  NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (memory_id, version)
);

CREATE INDEX memory_versions_tenant ON memory_versions (tenant_id);

CREATE TABLE memory_entities (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    owner           TEXT COLLATE "C",
    name            TEXT COLLATE "C" NOT NULL,
    entity_type     TEXT   NOT NULL,
    confidence      DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    source          TEXT,
    provenance      JSONB  NOT NULL DEFAULT '[]',
    access_count    BIGINT NOT NULL DEFAULT 0,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    valid_from_ms   BIGINT NOT NULL,
    valid_to_ms     BIGINT,
    search_text     TEXT   NOT NULL,
    search_tsv      TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', search_text)) STORED,
    embedding       BYTEA,
    embedding_model TEXT
);

CREATE UNIQUE INDEX memory_entities_current
    ON memory_entities (tenant_id, COALESCE(owner, ''), name) WHERE valid_to_ms IS NULL;
CREATE INDEX memory_entities_space ON memory_entities (tenant_id, COALESCE(owner, ''), id);
CREATE INDEX memory_entities_fts ON memory_entities USING GIN (search_tsv);

CREATE TABLE memory_observations (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    entity_id     BIGINT NOT NULL REFERENCES memory_entities (id) ON DELETE CASCADE,
    content       TEXT   NOT NULL,
    confidence    DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    source        TEXT,
    created_at_ms BIGINT NOT NULL
);

CREATE INDEX memory_observations_entity ON memory_observations (entity_id, id);
CREATE INDEX memory_observations_tenant ON memory_observations (tenant_id);

CREATE TABLE memory_relations (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    owner         TEXT COLLATE "C",
    from_name     TEXT COLLATE "C" NOT NULL,
    to_name       TEXT COLLATE "C" NOT NULL,
    relation_type TEXT COLLATE "C" NOT NULL,
    confidence    DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    inferred      BOOLEAN NOT NULL DEFAULT FALSE,
    score         DOUBLE PRECISION,
    source        TEXT,
    created_at_ms BIGINT NOT NULL,
    valid_from_ms BIGINT NOT NULL,
    valid_to_ms   BIGINT
);

CREATE UNIQUE INDEX memory_relations_current
    ON memory_relations (tenant_id, COALESCE(owner, ''), from_name, to_name, relation_type, inferred)
    WHERE valid_to_ms IS NULL;
CREATE INDEX memory_relations_to
    ON memory_relations (tenant_id, COALESCE(owner, ''), to_name) WHERE valid_to_ms IS NULL;
