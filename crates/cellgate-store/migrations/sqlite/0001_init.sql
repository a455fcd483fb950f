-- Tenant registry: the only table without a tenant_id column.
CREATE TABLE tenants (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

-- General tenant-scoped JSON documents with optimistic versioning.
-- tenant_id leads the primary key so every lookup is confined to one tenant.
CREATE TABLE documents (
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id),
    collection    TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    value         TEXT    NOT NULL CHECK (json_valid(value)),
    version       INTEGER NOT NULL CHECK (version >= 1),
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, collection, key)
) STRICT, WITHOUT ROWID;

-- Per-call records written by the metering layer.
-- id is the rowid (SQLite only auto-assigns a single-column integer key);
-- the tenant-leading index serves every query the store issues.
CREATE TABLE call_log (
    id         INTEGER NOT NULL PRIMARY KEY,
    tenant_id  TEXT    NOT NULL REFERENCES tenants (id),
    principal  TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    target     TEXT,
    outcome    TEXT    NOT NULL,
    error_code INTEGER,
    latency_us INTEGER NOT NULL,
    at_ms      INTEGER NOT NULL
) STRICT;

CREATE INDEX call_log_tenant_recent ON call_log (tenant_id, at_ms, id);
