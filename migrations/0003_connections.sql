-- Connections to tenants' CRM accounts, with their OAuth tokens sealed by the token vault
-- (src/connections/vault.rs), and alerts raised to tenants.

CREATE TABLE connections (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Registry key of the provider (`hubspot`, `hubspot-sandbox`).
    provider           text NOT NULL,
    -- The account at the provider (HubSpot: the portal id).
    remote_account_id  text NOT NULL,
    status             text NOT NULL
        CHECK (status IN ('active', 'needs_reauth', 'paused', 'disconnected')),
    scopes             text[] NOT NULL DEFAULT '{}',
    -- Sealed (AES-256-GCM) tokens; NULL once disconnected.
    access_token       bytea,
    refresh_token      bytea,
    expires_at         timestamptz,
    -- Bumped on every token write: a refresher only writes over the version it read (fencing,
    -- so a refresh whose Redis lock expired mid-call cannot overwrite a newer token).
    token_version      bigint NOT NULL DEFAULT 0,
    last_refreshed_at  timestamptz,
    refresh_failures   integer NOT NULL DEFAULT 0,
    settings           jsonb NOT NULL DEFAULT '{}',
    last_error         text,
    last_error_at      timestamptz,
    connected_by       uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    disconnected_at    timestamptz
);
-- Reconnecting the same account re-attaches the same connection (identity, history, mappings).
CREATE UNIQUE INDEX connections_tenant_account ON connections (tenant_id, provider, remote_account_id);
-- Cross-tenant by nature: "is this account already connected by someone else?", and the refresh
-- scheduler's "what expires soon?".
CREATE INDEX connections_account ON connections (provider, remote_account_id);
CREATE INDEX connections_expiry ON connections (expires_at) WHERE status = 'active';
CREATE TRIGGER connections_updated_at BEFORE UPDATE ON connections
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Things a tenant must know about (a connection needs reconnecting, ...). Shown in the UI; the
-- alert destinations (webhooks) deliver them.
CREATE TABLE alerts (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind           text NOT NULL,
    connection_id  uuid REFERENCES connections (id) ON DELETE CASCADE,
    message        text NOT NULL,
    raised_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz
);
CREATE INDEX alerts_tenant_open ON alerts (tenant_id, raised_at DESC) WHERE resolved_at IS NULL;

ALTER TABLE external_links
    ADD CONSTRAINT external_links_connection
    FOREIGN KEY (connection_id) REFERENCES connections (id) ON DELETE SET NULL;

ALTER TABLE connections ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON connections
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE alerts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alerts
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
