-- Alert destinations (issue 8): webhooks a tenant registers to hear about its alerts (Slack
-- incoming webhooks or anything that takes a JSON POST), the log of every delivery, and the
-- tenant's alert thresholds. Alerts themselves are rows of `alerts` (0003); src/alerts/ raises
-- the sync ones and delivers every open alert to every destination once.

-- Where a tenant's alerts go. The URL is kept as entered: it is what we must call, and Ferry never
-- shows it again in full (pages and logs mask it; see docs/decisions.md).
CREATE TABLE alert_destinations (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    url         text NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2000),
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX alert_destinations_tenant_url ON alert_destinations (tenant_id, url);

-- One row per alert and destination (and one per test alert): the row is the claim. Whoever
-- inserts it (or takes it back from `failed`) sends; a second deliverer finds it and does not, so
-- an alert reaches a destination at most once. `sending` rows are in flight; a crash leaves one
-- behind, and it is never re-sent (the receiver may have had it).
CREATE TABLE alert_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    destination_id   uuid NOT NULL REFERENCES alert_destinations (id) ON DELETE CASCADE,
    -- NULL for a test alert.
    alert_id         bigint REFERENCES alerts (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'sending'
        CHECK (status IN ('sending', 'delivered', 'failed')),
    -- HTTP attempts made so far (a delivery retries a few times, then again on later passes,
    -- up to a bound).
    attempts         integer NOT NULL DEFAULT 0,
    status_code      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    delivered_at     timestamptz
);
CREATE UNIQUE INDEX alert_deliveries_once ON alert_deliveries (tenant_id, destination_id, alert_id)
    WHERE alert_id IS NOT NULL;
CREATE INDEX alert_deliveries_tenant ON alert_deliveries (tenant_id, id DESC);

-- Per-tenant thresholds; a tenant without a row uses the defaults in src/alerts/checks.rs.
CREATE TABLE alert_settings (
    tenant_id      uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    -- Raise `dlq_growth` when this many dead letters are open.
    dlq_threshold  integer NOT NULL CHECK (dlq_threshold BETWEEN 1 AND 1000000),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER alert_settings_updated_at BEFORE UPDATE ON alert_settings
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- The dashboard's 24-hour throughput and error counts per connection (and the connection page's
-- recent errors) read sync items by connection and time.
CREATE INDEX sync_items_connection_at ON sync_items (tenant_id, connection_id, at);

-- The alert checks' "which open alerts has a destination not had yet?" (cross-tenant).
CREATE INDEX alerts_open ON alerts (tenant_id, id) WHERE resolved_at IS NULL;

ALTER TABLE alert_destinations ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_destinations
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE alert_deliveries ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_deliveries
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
ALTER TABLE alert_settings ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_settings
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
