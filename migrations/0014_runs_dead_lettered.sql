-- A run counts the records it dead-lettered.
--
-- A record can be written and still filed in the dead-letter queue: a mapping rule failed on
-- one of its fields, so the record was created or updated without it. Its history item says
-- `created` (or `updated`) with the outcome `dead_lettered`, and the run counted it only as
-- created, so a run that dead-lettered records read "succeeded · 0 failed". Runs now count
-- items by outcome too: `dead_lettered` beside `failed`, and a run with either is `partial`
-- (or `failed` when nothing in it went through; see src/sync/runs.rs).
ALTER TABLE sync_runs ADD COLUMN dead_lettered integer NOT NULL DEFAULT 0;

-- Runs written before this migration: their dead-lettered items counted now (through the
-- partial index of problem items, 0006), and a finished run that said `succeeded` over them
-- says `partial`.
UPDATE sync_runs r
SET dead_lettered = d.n,
    outcome = CASE WHEN r.outcome = 'succeeded' THEN 'partial' ELSE r.outcome END
FROM (SELECT tenant_id, run_id, count(*)::integer AS n
      FROM sync_items
      WHERE outcome <> 'ok' AND outcome = 'dead_lettered'
      GROUP BY tenant_id, run_id) d
WHERE r.tenant_id = d.tenant_id AND r.id = d.run_id;

-- A connection's runs by start time: the dashboard and the connection page count the last day's
-- runs by outcome and the last hour's problems (runs are one per batch, so the index is small).
CREATE INDEX sync_runs_connection_started ON sync_runs (tenant_id, connection_id, started_at);
