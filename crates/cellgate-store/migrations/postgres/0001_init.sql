-- Text columns use the "C" collation so ordering (and keyset pagination) is
-- byte order, the same as SQLite's default BINARY collation.

-- Tenant registry: the only table without a tenant_id column.
CREATE TABLE tenants (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name          TEXT             NOT NULL,
    created_at_ms BIGINT           NOT NULL
);

-- General tenant-scoped JSON documents with optimistic versioning.
-- tenant_id leads the primary key so every lookup is confined to one tenant.
CREATE TABLE documents (
    tenant_id     TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    collection    TEXT COLLATE "C" NOT NULL,
    key           TEXT COLLATE "C" NOT NULL,
    value         JSONB            NOT NULL,
    version       BIGINT           NOT NULL CHECK (version >= 1),
    updated_at_ms BIGINT           NOT NULL,
    PRIMARY KEY (tenant_id, collection, key)
);

-- Per-call records written by the metering layer.
CREATE TABLE call_log (
    tenant_id  TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    id         BIGINT GENERATED ALWAYS AS IDENTITY,
    principal  TEXT   NOT NULL,
    method     TEXT   NOT NULL,
    target     TEXT,
    outcome    TEXT   NOT NULL,
    error_code BIGINT,
    latency_us BIGINT NOT NULL,
    at_ms      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX call_log_tenant_recent ON call_log (tenant_id, at_ms, id);
