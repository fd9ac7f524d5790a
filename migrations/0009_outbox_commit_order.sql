-- The outbox in commit order. Outbox ids come from a sequence when a row is inserted, but
-- transactions commit in any order: a dispatcher that had read past id 11 would never see id 10
-- if its transaction committed later. Each row now records the transaction that wrote it, and a
-- connection's place is a (transaction, id) pair: a dispatcher reads only rows of transactions
-- older than every running one (`pg_snapshot_xmin`), in (transaction, id) order, so no row can
-- appear behind a place once it has been passed.
-- Rows written before this migration keep transaction 0 and so their id order, as before; every
-- place stored so far is such a (0, id) pair.
ALTER TABLE outbox ADD COLUMN tx bigint NOT NULL DEFAULT 0;
ALTER TABLE outbox ALTER COLUMN tx SET DEFAULT (pg_current_xact_id()::text::bigint);
ALTER TABLE sync_connections ADD COLUMN outbox_tx bigint NOT NULL DEFAULT 0;

DROP INDEX outbox_tenant_pending;
CREATE INDEX outbox_tenant_commit ON outbox (tenant_id, tx, id);
-- `processed_at` was never set: a row is done per connection, by its place.
ALTER TABLE outbox DROP COLUMN processed_at;
