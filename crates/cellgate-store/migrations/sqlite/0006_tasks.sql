-- Orchestration (cellgate-orchestration): the durable task queue, workflows
-- with their checkpoints and history, and external worker nodes.

-- A task is one tool call to run later, as the principal that submitted it.
-- status: queued → running (leased) → succeeded | failed | cancelled; a
-- failed attempt with retries left goes back to queued with a later eta.
-- A lease is (lease_owner, attempts): attempts grows with every lease, so a
-- worker whose lease expired and was handed to another cannot complete the
-- task any more. lease_node is set when an external node holds the lease.
-- requires_node is 1 when the task has resource or label requirements:
-- those run only on registered nodes that satisfy them.
CREATE TABLE tasks (
    id                  TEXT    NOT NULL PRIMARY KEY,
    tenant_id           TEXT    NOT NULL REFERENCES tenants (id),
    queue               TEXT    NOT NULL,
    tool                TEXT    NOT NULL,
    arguments           TEXT    NOT NULL CHECK (json_valid(arguments)),
    principal_id        TEXT    NOT NULL,
    principal           TEXT    NOT NULL CHECK (json_valid(principal)),
    priority            INTEGER NOT NULL,
    eta_ms              INTEGER NOT NULL,
    time_limit_ms       INTEGER NOT NULL CHECK (time_limit_ms >= 1),
    max_retries         INTEGER NOT NULL CHECK (max_retries >= 0),
    backoff_base_ms     INTEGER NOT NULL CHECK (backoff_base_ms >= 0),
    backoff_max_ms      INTEGER NOT NULL CHECK (backoff_max_ms >= 0),
    idempotency_key     TEXT,
    result_ttl_ms       INTEGER,
    requires_node       INTEGER NOT NULL DEFAULT 0,
    req_cpu_millis      INTEGER NOT NULL DEFAULT 0,
    req_memory_mb       INTEGER NOT NULL DEFAULT 0,
    req_gpus            INTEGER NOT NULL DEFAULT 0,
    req_labels          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(req_labels)),
    status              TEXT    NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    lease_owner         TEXT,
    lease_node          TEXT,
    lease_expires_at_ms INTEGER,
    result              TEXT    CHECK (result IS NULL OR json_valid(result)),
    error               TEXT,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    started_at_ms       INTEGER,
    finished_at_ms      INTEGER,
    expires_at_ms       INTEGER
) STRICT;

-- NULL keys are distinct, so tasks without a key never collide.
CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant_id, idempotency_key);
-- Dequeue: the best ready task of a queue.
CREATE INDEX tasks_ready ON tasks (queue, requires_node, priority DESC, eta_ms, id)
    WHERE status = 'queued';
CREATE INDEX tasks_leases ON tasks (lease_expires_at_ms) WHERE status = 'running';
CREATE INDEX tasks_owner ON tasks (lease_owner) WHERE status = 'running';
CREATE INDEX tasks_tenant ON tasks (tenant_id, created_at_ms, id);
CREATE INDEX tasks_expiry ON tasks (expires_at_ms) WHERE expires_at_ms IS NOT NULL;

-- A workflow run: its definition, input and the run state (outputs so far
-- and where to continue), which is rewritten at every checkpoint. The lease
-- says which engine drives it; an engine that dies stops renewing it and
-- another (or the same after a restart) takes over from the state.
CREATE TABLE workflows (
    id                  TEXT    NOT NULL PRIMARY KEY,
    tenant_id           TEXT    NOT NULL REFERENCES tenants (id),
    name                TEXT    NOT NULL,
    definition          TEXT    NOT NULL CHECK (json_valid(definition)),
    input               TEXT    NOT NULL CHECK (json_valid(input)),
    principal_id        TEXT    NOT NULL,
    principal           TEXT    NOT NULL CHECK (json_valid(principal)),
    status              TEXT    NOT NULL
        CHECK (status IN ('created', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'rolled_back')),
    state               TEXT    NOT NULL CHECK (json_valid(state)),
    lease_owner         TEXT,
    lease_expires_at_ms INTEGER,
    error               TEXT,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    started_at_ms       INTEGER,
    finished_at_ms      INTEGER
) STRICT;

CREATE INDEX workflows_tenant ON workflows (tenant_id, created_at_ms, id);
CREATE INDEX workflows_active ON workflows (lease_expires_at_ms) WHERE status = 'running';

-- Snapshots of a workflow's state after a phase or a step; rollback
-- restores one. id orders them.
CREATE TABLE workflow_checkpoints (
    id            INTEGER NOT NULL PRIMARY KEY,
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id),
    workflow_id   TEXT    NOT NULL REFERENCES workflows (id),
    kind          TEXT    NOT NULL CHECK (kind IN ('phase', 'step', 'rollback')),
    phase         TEXT    NOT NULL,
    step          TEXT,
    state         TEXT    NOT NULL CHECK (json_valid(state)),
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX workflow_checkpoints_run ON workflow_checkpoints (tenant_id, workflow_id, id);

-- What happened in a run: phase and step executions, compensations,
-- rollbacks, with outputs, errors and timings.
CREATE TABLE workflow_history (
    id             INTEGER NOT NULL PRIMARY KEY,
    tenant_id      TEXT    NOT NULL REFERENCES tenants (id),
    workflow_id    TEXT    NOT NULL REFERENCES workflows (id),
    event          TEXT    NOT NULL,
    phase          TEXT,
    step           TEXT,
    iteration      INTEGER,
    output         TEXT    CHECK (output IS NULL OR json_valid(output)),
    error          TEXT,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX workflow_history_run ON workflow_history (tenant_id, workflow_id, id);

-- External worker nodes of a tenant, with what they offer. A node that
-- stops heartbeating stops renewing its task leases, so its tasks return to
-- the queue.
CREATE TABLE worker_nodes (
    tenant_id         TEXT    NOT NULL REFERENCES tenants (id),
    id                TEXT    NOT NULL,
    cpu_millis        INTEGER NOT NULL CHECK (cpu_millis >= 0),
    memory_mb         INTEGER NOT NULL CHECK (memory_mb >= 0),
    gpus              INTEGER NOT NULL CHECK (gpus >= 0),
    labels            TEXT    NOT NULL CHECK (json_valid(labels)),
    queues            TEXT    NOT NULL CHECK (json_valid(queues)),
    registered_by     TEXT    NOT NULL,
    registered_at_ms  INTEGER NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT, WITHOUT ROWID;
