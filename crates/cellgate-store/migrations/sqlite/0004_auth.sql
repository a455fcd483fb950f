-- Authentication (cellgate-auth).

-- API keys issued by cellgate. key_id is the public part of a key and is
-- unique across tenants: a presented key is looked up by it before its
-- tenant is known. Only an Argon2id hash (PHC string) of the secret part is
-- stored; the key itself is shown once, when it is created.
CREATE TABLE api_keys (
    key_id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id       TEXT    NOT NULL REFERENCES tenants (id),
    principal       TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    roles           TEXT    NOT NULL CHECK (json_valid(roles)),
    secret_hash     TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    revoked_at_ms   INTEGER,
    last_used_at_ms INTEGER
) STRICT;

CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at_ms, key_id);

-- Device authorization grants (RFC 8628) in flight. The device code is a
-- bearer secret, so only its SHA-256 (hex) is kept. A grant has no tenant
-- until someone approves it; it is deleted when its token is handed out.
-- too_fast records whether the latest poll came before the interval had
-- passed (the answer to it is slow_down).
CREATE TABLE device_codes (
    device_code_hash TEXT    NOT NULL PRIMARY KEY,
    user_code        TEXT    NOT NULL UNIQUE,
    client_id        TEXT,
    scope            TEXT,
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    tenant_id        TEXT    REFERENCES tenants (id),
    principal        TEXT,
    roles            TEXT    CHECK (roles IS NULL OR json_valid(roles)),
    approved_by      TEXT,
    interval_secs    INTEGER NOT NULL CHECK (interval_secs >= 1),
    too_fast         INTEGER NOT NULL DEFAULT 0,
    last_poll_at_ms  INTEGER,
    created_at_ms    INTEGER NOT NULL,
    expires_at_ms    INTEGER NOT NULL
) STRICT;

CREATE INDEX device_codes_expiry ON device_codes (expires_at_ms);
