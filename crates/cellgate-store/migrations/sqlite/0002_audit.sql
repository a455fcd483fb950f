-- The tamper-evident audit chain. Integrity comes from the hash chain and
-- the signed checkpoints computed by cellgate-audit, not from these
-- constraints: someone with write access to the file can change anything,
-- and verification is what notices.
--
-- Entries are cross-tenant system records: every row names its tenant, but
-- there is no foreign key to tenants, so refused calls under unknown tenants
-- are recorded and entries outlive the tenants they mention. The column is
-- `tenant`, not `tenant_id`, on purpose: `tenant_id` marks rows a tenant
-- owns, which are deleted with it (`all_tenant_tables`); deleting audit
-- entries would break the chain and erase the record of what was done.
CREATE TABLE audit_entries (
    -- The position in the chain, 1, 2, 3, … without gaps; the rowid.
    seq            INTEGER NOT NULL PRIMARY KEY CHECK (seq >= 1),
    at_ms          INTEGER NOT NULL,
    tenant         TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    principal      TEXT    NOT NULL,
    principal_kind TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    target         TEXT,
    args_digest    TEXT,
    outcome        TEXT    NOT NULL,
    error_code     INTEGER,
    latency_us     INTEGER NOT NULL,
    -- Canonical JSON array of the layers' decisions.
    decisions      TEXT    NOT NULL,
    category       TEXT,
    message        TEXT,
    -- Lowercase hex SHA-256 values.
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_entries_tenant ON audit_entries (tenant, seq);
CREATE INDEX audit_entries_time ON audit_entries (at_ms);

-- The chain head: one row, updated in the same transaction as every append.
-- Appenders lock it first and read the head from it, so one chain stays
-- linear however many writers there are. seq 0 with a NULL hash is the
-- empty chain.
CREATE TABLE audit_head (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL CHECK (seq >= 0),
    hash TEXT
) STRICT;

INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, NULL);

-- Signed (seq, hash, time) statements about the chain. `key` is the
-- signer's Ed25519 public key and `signature` its signature, both hex.
CREATE TABLE audit_checkpoints (
    id        INTEGER NOT NULL PRIMARY KEY,
    seq       INTEGER NOT NULL,
    hash      TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL,
    key       TEXT    NOT NULL,
    signature TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_checkpoints_seq ON audit_checkpoints (seq, id);
