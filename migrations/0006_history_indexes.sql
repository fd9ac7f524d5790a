-- Indexes for the operator pages over sync history and the dead-letter queue (src/history/).
-- Measured with bench/history-page.sh (10 million sync_items in one tenant; BENCHMARKS.md).

-- A run's page can show only its problems (failed or dead-lettered items). A backfill run holds
-- millions of items, nearly all fine: without this, each page of problems walks the run's
-- successful items to find the next hundred failures.
CREATE INDEX sync_items_run_problems ON sync_items (tenant_id, run_id, id) WHERE outcome <> 'ok';

-- The record timeline finds records by the start of a name or title, case-insensitively.
--
-- Under row-level security Postgres may use a condition in an index scan only if its operator is
-- leakproof, and neither `lower()` nor `LIKE` is: an index on `lower(last_name)` is never used by
-- the application role, which then reads every contact of the tenant. So the lower-cased values
-- are stored (generated columns) and searched with the prefix range operators of
-- text_pattern_ops (`~>=~`, `~<~`), which are leakproof and compare bytes whatever the collation.
ALTER TABLE contacts
    ADD COLUMN first_name_key text GENERATED ALWAYS AS (lower(first_name)) STORED,
    ADD COLUMN last_name_key text GENERATED ALWAYS AS (lower(last_name)) STORED;
ALTER TABLE deals ADD COLUMN title_key text GENERATED ALWAYS AS (lower(title)) STORED;
ALTER TABLE tasks ADD COLUMN title_key text GENERATED ALWAYS AS (lower(title)) STORED;

CREATE INDEX contacts_tenant_first_name ON contacts (tenant_id, first_name_key text_pattern_ops)
    WHERE deleted_at IS NULL;
CREATE INDEX contacts_tenant_last_name ON contacts (tenant_id, last_name_key text_pattern_ops)
    WHERE deleted_at IS NULL;
CREATE INDEX deals_tenant_title ON deals (tenant_id, title_key text_pattern_ops)
    WHERE deleted_at IS NULL;
CREATE INDEX tasks_tenant_title ON tasks (tenant_id, title_key text_pattern_ops)
    WHERE deleted_at IS NULL;
