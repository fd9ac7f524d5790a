-- Canonical records (contacts, deals, tasks), their links to remote systems, the outbox of local
-- changes, idempotency keys of the REST API, and items pushed by custom connectors.
--
-- Every table is tenant-owned: `tenant_id` leads every index and a row-level security policy
-- compares it with `app_tenant_id()` (see 0001_tenancy.sql).

-- People. `email` is stored normalised (trimmed, lower case) so matching is an index hit.
CREATE TABLE contacts (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email       text,
    first_name  text,
    last_name   text,
    phone       text,
    company     text,
    job_title   text,
    owner_id    text,
    custom      jsonb NOT NULL DEFAULT '{}',
    metadata    jsonb NOT NULL DEFAULT '{}',
    -- Where the record was first created: `api`, or `connector:<id>` / `<provider>` for syncs.
    source      text NOT NULL,
    -- Bumped on every change; the ETag is "v<version>".
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
-- Keyset pagination and `updated_since` (oldest change first).
CREATE INDEX contacts_tenant_updated ON contacts (tenant_id, updated_at, id);
-- Dedupe by email (not unique: CRMs hold duplicates, Ferry links rather than refuses them).
CREATE INDEX contacts_tenant_email ON contacts (tenant_id, email) WHERE deleted_at IS NULL;

-- A tenant's deal pipeline. Without rows here, the default stages apply (see src/records/stages.rs).
CREATE TABLE deal_stages (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key        text NOT NULL CHECK (key ~ '^[a-z0-9_]{1,64}$'),
    label      text NOT NULL CHECK (char_length(label) BETWEEN 1 AND 100),
    position   integer NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE deals (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    title       text NOT NULL,
    -- Money as an exact decimal with its ISO 4217 currency.
    value       numeric(20, 4),
    currency    char(3),
    stage       text,
    close_date  date,
    owner_id    text,
    custom      jsonb NOT NULL DEFAULT '{}',
    metadata    jsonb NOT NULL DEFAULT '{}',
    source      text NOT NULL,
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    CHECK (value IS NULL OR currency IS NOT NULL)
);
CREATE INDEX deals_tenant_updated ON deals (tenant_id, updated_at, id);

-- Which contacts a deal involves, in the order given.
CREATE TABLE deal_contacts (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    deal_id     uuid NOT NULL REFERENCES deals (id) ON DELETE CASCADE,
    contact_id  uuid NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    position    integer NOT NULL,
    PRIMARY KEY (tenant_id, deal_id, contact_id)
);
CREATE INDEX deal_contacts_contact ON deal_contacts (tenant_id, contact_id);

CREATE TABLE tasks (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    title        text NOT NULL,
    body         text,
    due_at       timestamptz,
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'in_progress', 'done')),
    priority     text CHECK (priority IN ('low', 'medium', 'high')),
    assignee_id  text,
    -- The contact or deal the task is about (checked by the application: one of two tables).
    linked_type  text CHECK (linked_type IN ('contact', 'deal')),
    linked_id    uuid,
    custom       jsonb NOT NULL DEFAULT '{}',
    metadata     jsonb NOT NULL DEFAULT '{}',
    source       text NOT NULL,
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    CHECK ((linked_type IS NULL) = (linked_id IS NULL))
);
CREATE INDEX tasks_tenant_updated ON tasks (tenant_id, updated_at, id);
CREATE INDEX tasks_tenant_linked ON tasks (tenant_id, linked_type, linked_id);

-- A record's identity in another system: `<provider>:<object>:<remote id>`, e.g.
-- `hubspot:contact:12345`. Unique per tenant, so external-id lookups and dedupe are index hits.
CREATE TABLE external_links (
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key                text NOT NULL CHECK (char_length(key) BETWEEN 5 AND 300),
    record_kind        text NOT NULL CHECK (record_kind IN ('contact', 'deal', 'task')),
    record_id          uuid NOT NULL,
    -- The connection that owns the link, once connections exist (NULL for API-given ids).
    connection_id      uuid,
    remote_updated_at  timestamptz,
    -- Hash of the values last pushed, so the echo of our own write is recognised.
    pushed_hash        bytea,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX external_links_record ON external_links (tenant_id, record_kind, record_id, created_at);

-- Local changes waiting to be pushed to connected CRMs; written in the transaction of the change.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    record_kind     text NOT NULL CHECK (record_kind IN ('contact', 'deal', 'task')),
    record_id       uuid NOT NULL,
    operation       text NOT NULL CHECK (operation IN ('create', 'update', 'delete')),
    version         bigint NOT NULL,
    changed_fields  text[] NOT NULL,
    -- Who made the change: `api`, `connector:<id>`, ... The pusher skips changes that came from
    -- the system it would push to.
    origin          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz
);
CREATE INDEX outbox_tenant_pending ON outbox (tenant_id, id) WHERE processed_at IS NULL;

-- Idempotency keys of the REST API (per tenant). A key is claimed (locked_at) before the work
-- runs; the response is stored in the transaction of the work, so both commit or neither does.
CREATE TABLE idempotency_keys (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key              text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    method           text NOT NULL,
    path             text NOT NULL,
    -- SHA-256 of method, path and the canonical JSON body.
    fingerprint      bytea NOT NULL,
    locked_at        timestamptz NOT NULL DEFAULT now(),
    response_status  integer,
    response_headers jsonb,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Records pushed by custom connectors through POST /v1/internal/sync, kept as received.
CREATE TABLE inbound_items (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connector_id   text NOT NULL,
    external_type  text NOT NULL,
    external_id    text NOT NULL,
    payload        jsonb NOT NULL,
    record_kind    text,
    record_id      uuid,
    action         text,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbound_items_tenant_received ON inbound_items (tenant_id, id DESC);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['contacts', 'deal_stages', 'deals', 'deal_contacts', 'tasks',
                             'external_links', 'outbox', 'idempotency_keys', 'inbound_items']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_tenant_id()) '
            'WITH CHECK (tenant_id = app_tenant_id())', t);
    END LOOP;
END
$$;
