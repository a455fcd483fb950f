-- Orchestration (cellgate-orchestration): the durable task queue, workflows
-- with their checkpoints and history, and external worker nodes. The
-- comments of the SQLite migration explain each table.

CREATE TABLE tasks (
    id                  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    tenant_id           TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    queue               TEXT COLLATE "C" NOT NULL,
    tool                TEXT   NOT NULL,
    arguments           JSONB  NOT NULL,
    principal_id        TEXT   NOT NULL,
    principal           JSONB  NOT NULL,
    priority            BIGINT NOT NULL,
    eta_ms              BIGINT NOT NULL,
    time_limit_ms       BIGINT NOT NULL CHECK (time_limit_ms >= 1),
    max_retries         BIGINT NOT NULL CHECK (max_retries >= 0),
    backoff_base_ms     BIGINT NOT NULL CHECK (backoff_base_ms >= 0),
    backoff_max_ms      BIGINT NOT NULL CHECK (backoff_max_ms >= 0),
    idempotency_key     TEXT COLLATE "C",
    result_ttl_ms       BIGINT,
    requires_node       BIGINT NOT NULL DEFAULT 0,
    req_cpu_millis      BIGINT NOT NULL DEFAULT 0,
    req_memory_mb       BIGINT NOT NULL DEFAULT 0,
    req_gpus            BIGINT NOT NULL DEFAULT 0,
    req_labels          JSONB  NOT NULL DEFAULT '{}',
    status              TEXT   NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts            BIGINT NOT NULL DEFAULT 0,
    lease_owner         TEXT,
    lease_node          TEXT,
    lease_expires_at_ms BIGINT,
    result              JSONB,
    error               TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    started_at_ms       BIGINT,
    finished_at_ms      BIGINT,
    expires_at_ms       BIGINT
);

CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant_id, idempotency_key);
CREATE INDEX tasks_ready ON tasks (queue, requires_node, priority DESC, eta_ms, id)
    WHERE status = 'queued';
CREATE INDEX tasks_leases ON tasks (lease_expires_at_ms) WHERE status = 'running';
CREATE INDEX tasks_owner ON tasks (lease_owner) WHERE status = 'running';
CREATE INDEX tasks_tenant ON tasks (tenant_id, created_at_ms, id);
CREATE INDEX tasks_expiry ON tasks (expires_at_ms) WHERE expires_at_ms IS NOT NULL;

CREATE TABLE workflows (
    id                  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    tenant_id           TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    name                TEXT   NOT NULL,
    definition          JSONB  NOT NULL,
    input               JSONB  NOT NULL,
    principal_id        TEXT   NOT NULL,
    principal           JSONB  NOT NULL,
    status              TEXT   NOT NULL
        CHECK (status IN ('created', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'rolled_back')),
    state               JSONB  NOT NULL,
    lease_owner         TEXT,
    lease_expires_at_ms BIGINT,
    error               TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    started_at_ms       BIGINT,
    finished_at_ms      BIGINT
);

CREATE INDEX workflows_tenant ON workflows (tenant_id, created_at_ms, id);
CREATE INDEX workflows_active ON workflows (lease_expires_at_ms) WHERE status = 'running';

CREATE TABLE workflow_checkpoints (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    workflow_id   TEXT COLLATE "C" NOT NULL REFERENCES workflows (id),
    kind          TEXT   NOT NULL CHECK (kind IN ('phase', 'step', 'rollback')),
    phase         TEXT   NOT NULL,
    step          TEXT,
    state         JSONB  NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE INDEX workflow_checkpoints_run ON workflow_checkpoints (tenant_id, workflow_id, id);

CREATE TABLE workflow_history (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    workflow_id    TEXT COLLATE "C" NOT NULL REFERENCES workflows (id),
    event          TEXT   NOT NULL,
    phase          TEXT,
    step           TEXT,
    iteration      BIGINT,
    output         JSONB,
    error          TEXT,
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT NOT NULL
);

CREATE INDEX workflow_history_run ON workflow_history (tenant_id, workflow_id, id);

CREATE TABLE worker_nodes (
    tenant_id         TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    id                TEXT COLLATE "C" NOT NULL,
    cpu_millis        BIGINT NOT NULL CHECK (cpu_millis >= 0),
    memory_mb         BIGINT NOT NULL CHECK (memory_mb >= 0),
    gpus              BIGINT NOT NULL CHECK (gpus >= 0),
    labels            JSONB  NOT NULL,
    queues            JSONB  NOT NULL,
    registered_by     TEXT   NOT NULL,
    registered_at_ms  BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
