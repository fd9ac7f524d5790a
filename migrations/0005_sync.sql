-- The sync engine's durable state (src/sync/): where each cursor sync stands, webhook deliveries
-- and the events they carry, each connection's place in the outbox, sync history, the dead-letter
-- queue, and automation rules.
--
-- Postgres is the source of truth for due work: every row that says "something is due" carries
-- the time it is due at, and the reconciler (src/sync/reconcile.rs) enqueues from these rows. A
-- flushed Redis therefore delays work and loses none.

-- One row per connection and object kind: the cursor of its poll.
--
-- A poll pages through the CRM's search sorted by last-modified ascending, starting at
-- `query_from` (inclusive; NULL = from the beginning) and following `query_after` (the CRM's
-- paging token) inside that query. Each page's records and the new position commit together.
-- Near the CRM's per-query cap (HubSpot: 10,000 results) a new query starts from the last
-- timestamp seen; records at the boundary come again and are recognised as unchanged.
CREATE TABLE sync_cursors (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connection_id    uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    object           text NOT NULL CHECK (object IN ('contact', 'deal', 'task')),
    query_from       timestamptz,
    query_after      text,
    -- Results consumed in the current query (to restart before the cap).
    query_offset     integer NOT NULL DEFAULT 0,
    -- Highest last-modified time committed, and the remote id holding it.
    watermark        timestamptz,
    watermark_id     text,
    -- NULL while the initial backfill runs; set when its first full pass ends.
    backfilled_at    timestamptz,
    backfill_done    bigint NOT NULL DEFAULT 0,
    -- The CRM's estimate of the records to fetch (search `total` at the start of the backfill).
    backfill_total   bigint,
    -- When the next poll is due (set from the poll interval, "sync now", or a retry backoff).
    next_poll_at     timestamptz NOT NULL DEFAULT now(),
    -- Consecutive failed attempts (reset on success); drives the backoff.
    failures         integer NOT NULL DEFAULT 0,
    last_run_id      bigint,
    last_success_at  timestamptz,
    last_error       text,
    last_error_at    timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, connection_id, object)
);
-- The reconciler's "what polls are due?" (cross-tenant by nature).
CREATE INDEX sync_cursors_due ON sync_cursors (next_poll_at);
CREATE TRIGGER sync_cursors_updated_at BEFORE UPDATE ON sync_cursors
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- What Ferry last pushed for a link, property by property, so the echo of its own write is
-- recognised when it comes back (a property whose value equals what was pushed is not a remote
-- change). `pushed_hash` (0002) is the SHA-256 of this document.
ALTER TABLE external_links ADD COLUMN pushed jsonb;

-- When each field of a record last changed (newest_wins compares per field): the outbox rows of
-- one record.
CREATE INDEX outbox_record ON outbox (tenant_id, record_kind, record_id);

-- Per connection: its place in the tenant's outbox and the state of inbound event processing.
CREATE TABLE sync_connections (
    tenant_id            uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connection_id        uuid PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    -- Every outbox row with an id up to this one has been pushed (or dead-lettered) for this
    -- connection. Starts at the outbox's end when the connection is made: Ferry pushes changes
    -- made after connecting (see docs/decisions.md).
    outbox_position      bigint NOT NULL DEFAULT 0,
    outbound_failures    integer NOT NULL DEFAULT 0,
    outbound_retry_at    timestamptz,
    inbound_failures     integer NOT NULL DEFAULT 0,
    inbound_retry_at     timestamptz,
    last_error           text,
    last_error_at        timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_connections_tenant ON sync_connections (tenant_id);
CREATE TRIGGER sync_connections_updated_at BEFORE UPDATE ON sync_connections
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Webhook POSTs as received, before anyone knows which tenants they concern (one POST may carry
-- events of several portals). Stored before the 2xx; split into inbound_events by a job.
-- Not tenant-owned: only the receiver and the splitter touch it.
CREATE TABLE webhook_deliveries (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider      text NOT NULL,
    body          bytea NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (id) WHERE processed_at IS NULL;

-- Webhook events routed to a connection. `dedupe_key` identifies an event across redeliveries
-- (HubSpot: portal, subscription type, object, occurredAt and property; eventId alone is not
-- unique).
CREATE TABLE inbound_events (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connection_id      uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    delivery_id        bigint REFERENCES webhook_deliveries (id) ON DELETE SET NULL,
    dedupe_key         text NOT NULL,
    event_id           text,
    -- `contact.propertyChange`, `deal.deletion`, ...
    subscription_type  text NOT NULL,
    object             text NOT NULL CHECK (object IN ('contact', 'deal', 'task')),
    object_id          text NOT NULL,
    occurred_at        timestamptz NOT NULL,
    payload            jsonb NOT NULL,
    status             text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processed', 'failed')),
    received_at        timestamptz NOT NULL DEFAULT now(),
    processed_at       timestamptz,
    UNIQUE (tenant_id, connection_id, dedupe_key)
);
CREATE INDEX inbound_events_pending ON inbound_events (tenant_id, connection_id, id)
    WHERE status = 'pending';
-- The reconciler's "which connections have unprocessed events?" (cross-tenant).
CREATE INDEX inbound_events_pending_all ON inbound_events (connection_id) WHERE status = 'pending';

-- Sync history: one run per unit of work (a poll page series, a batch of webhook events, an
-- outbound drain, a replay), with counts.
CREATE TABLE sync_runs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connection_id  uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    -- NULL when a run spans kinds (webhook events of contacts and deals).
    object         text CHECK (object IN ('contact', 'deal', 'task')),
    kind           text NOT NULL
        CHECK (kind IN ('backfill', 'incremental', 'webhook', 'outbound', 'replay', 'resync')),
    outcome        text NOT NULL DEFAULT 'running'
        CHECK (outcome IN ('running', 'succeeded', 'partial', 'failed')),
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    fetched        integer NOT NULL DEFAULT 0,
    created        integer NOT NULL DEFAULT 0,
    updated        integer NOT NULL DEFAULT 0,
    unchanged      integer NOT NULL DEFAULT 0,
    skipped        integer NOT NULL DEFAULT 0,
    failed         integer NOT NULL DEFAULT 0,
    error          text
);
CREATE INDEX sync_runs_tenant ON sync_runs (tenant_id, id DESC);
CREATE INDEX sync_runs_connection ON sync_runs (tenant_id, connection_id, id DESC);

-- Every record a run touched.
CREATE TABLE sync_items (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    run_id           bigint NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
    connection_id    uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    object           text NOT NULL CHECK (object IN ('contact', 'deal', 'task')),
    direction        text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    record_id        uuid,
    remote_id        text,
    action           text NOT NULL
        CHECK (action IN ('created', 'updated', 'unchanged', 'linked', 'deleted', 'merged',
                          'skipped', 'echo', 'failed')),
    outcome          text NOT NULL CHECK (outcome IN ('ok', 'failed', 'dead_lettered')),
    attempts         integer NOT NULL DEFAULT 1,
    error_class      text CHECK (error_class IN ('transient', 'permanent', 'auth')),
    error            text,
    mapping_version  integer,
    -- Per field: {"field": {"before": .., "after": ..}} (values as stored; masked when shown).
    changes          jsonb,
    latency_ms       integer,
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_items_run ON sync_items (tenant_id, run_id, id);
CREATE INDEX sync_items_record ON sync_items (tenant_id, record_id, id DESC) WHERE record_id IS NOT NULL;
CREATE INDEX sync_items_remote ON sync_items (tenant_id, remote_id, id DESC) WHERE remote_id IS NOT NULL;

-- Work that failed permanently or exhausted its retries. One open letter per piece of work: a
-- new failure of the same work updates it (attempts + 1) rather than adding another.
--
-- `payload` is what the handler needs to run again:
--   inbound record:  {"remote": {"id", "properties", "updatedAt"}}  (the CRM record as fetched)
--   outbound record: {"record_id": uuid, "properties": {..}}        (what was to be sent)
--   poll:            {}                                              (re-run the cursor sync)
--   events:          {}                                              (re-process pending events)
-- Replaying runs the same idempotent handler, with `edited_payload` when an operator edited it.
CREATE TABLE dead_letters (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connection_id     uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    object            text NOT NULL CHECK (object IN ('contact', 'deal', 'task')),
    direction         text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    scope             text NOT NULL CHECK (scope IN ('record', 'poll', 'events')),
    -- What the letter is about: the remote id (inbound) or the Ferry record (outbound).
    remote_id         text,
    record_id         uuid,
    -- Identifies the work across failures (open letters are unique on it).
    work_key          text NOT NULL,
    payload           jsonb NOT NULL,
    edited_payload    jsonb,
    edited_by         uuid REFERENCES users (id) ON DELETE SET NULL,
    edited_at         timestamptz,
    error_class       text NOT NULL CHECK (error_class IN ('transient', 'permanent', 'auth')),
    error             text NOT NULL,
    attempts          integer NOT NULL DEFAULT 1,
    first_failed_at   timestamptz NOT NULL DEFAULT now(),
    last_failed_at    timestamptz NOT NULL DEFAULT now(),
    -- open: waiting for someone; queued: replay requested (the worker picks it up); replayed:
    -- the replay succeeded; discarded: kept for the record, never run.
    status            text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'queued', 'replayed', 'discarded')),
    acted_by          uuid REFERENCES users (id) ON DELETE SET NULL,
    acted_at          timestamptz,
    run_id            bigint REFERENCES sync_runs (id) ON DELETE SET NULL
);
CREATE UNIQUE INDEX dead_letters_open_work ON dead_letters (tenant_id, connection_id, work_key)
    WHERE status IN ('open', 'queued');
CREATE INDEX dead_letters_tenant ON dead_letters (tenant_id, status, id DESC);
CREATE INDEX dead_letters_connection ON dead_letters (tenant_id, connection_id, status, id DESC);
-- The reconciler's "which replays were requested?" (cross-tenant).
CREATE INDEX dead_letters_queued ON dead_letters (tenant_id) WHERE status = 'queued';

-- Every failed attempt of a dead letter's work, with the answer it got.
CREATE TABLE dead_letter_attempts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    dead_letter_id  bigint NOT NULL REFERENCES dead_letters (id) ON DELETE CASCADE,
    at              timestamptz NOT NULL DEFAULT now(),
    error_class     text NOT NULL,
    error           text NOT NULL,
    -- The CRM's HTTP status, when there was one.
    status          integer
);
CREATE INDEX dead_letter_attempts_letter ON dead_letter_attempts (tenant_id, dead_letter_id, id);

-- Automation: "when a deal enters stage S, create a task".
CREATE TABLE automation_rules (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    -- The Ferry deal stage key (src/records/stages.rs).
    stage           text NOT NULL,
    -- Task title; `{deal.title}`-style placeholders are filled from the deal.
    title_template  text NOT NULL CHECK (char_length(title_template) BETWEEN 1 AND 300),
    due_in_days     integer NOT NULL DEFAULT 1 CHECK (due_in_days BETWEEN 0 AND 365),
    enabled         boolean NOT NULL DEFAULT true,
    created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX automation_rules_tenant ON automation_rules (tenant_id, stage) WHERE enabled;
CREATE TRIGGER automation_rules_updated_at BEFORE UPDATE ON automation_rules
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- One firing per rule, deal and entry into the stage: `entry` is the deal's version that entered
-- the stage, so a redelivered event finds its firing and does nothing.
CREATE TABLE automation_firings (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    rule_id     uuid NOT NULL REFERENCES automation_rules (id) ON DELETE CASCADE,
    deal_id     uuid NOT NULL REFERENCES deals (id) ON DELETE CASCADE,
    entry       bigint NOT NULL,
    task_id     uuid NOT NULL,
    fired_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_id, deal_id, entry)
);

ALTER TABLE sync_cursors ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sync_cursors
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE sync_connections ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sync_connections
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE inbound_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON inbound_events
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE sync_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sync_runs
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE sync_items ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sync_items
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON dead_letters
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE dead_letter_attempts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON dead_letter_attempts
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE automation_rules ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON automation_rules
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE automation_firings ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON automation_firings
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
-- The receiver runs as the application role too.
REVOKE UPDATE, DELETE ON dead_letter_attempts FROM ferry_app;

-- Connections made before the sync engine existed get their sync state now.
INSERT INTO sync_cursors (tenant_id, connection_id, object)
SELECT c.tenant_id, c.id, o.object
FROM connections c CROSS JOIN (VALUES ('contact'), ('deal'), ('task')) AS o (object);
INSERT INTO sync_connections (tenant_id, connection_id, outbox_position)
SELECT c.tenant_id, c.id, coalesce((SELECT max(id) FROM outbox WHERE tenant_id = c.tenant_id), 0)
FROM connections c;
