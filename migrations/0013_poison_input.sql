-- One bad item never blocks another (issue 19, item 4).
--
-- A webhook delivery is routed on its own: one whose body is not JSON events, or whose events
-- cannot be stored, is done (`processed_at`) with the reason in `error`, and the deliveries
-- behind it are routed. (The body stays as received, in `body`, for seven days.)
ALTER TABLE webhook_deliveries ADD COLUMN error text;

-- Deliveries that could not be routed, newest first (for operators; few by nature).
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (id DESC) WHERE error IS NOT NULL;

-- An event's own retries. A connection-level failure (the CRM unreachable, 5xx, 429) backs the
-- connection's event processing off (`sync_connections.inbound_retry_at`) and charges no event.
-- An object that fails alone while the CRM answers for others is charged here: `attempts`,
-- `failures` (one `{"at", "class", "error", "status"}` per failed attempt, the dead letter's
-- history when it is filed) and `retry_at` (not before then; the others go ahead). When its
-- attempts are used up, or at once for a permanent failure, the object is dead-lettered and its
-- events are `failed` with the reason in `error`.
ALTER TABLE inbound_events
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN failures jsonb,
    ADD COLUMN retry_at timestamptz,
    ADD COLUMN error text;
