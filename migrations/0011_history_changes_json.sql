-- A history item's field changes are stored as `json` (the text as written), not `jsonb`.
--
-- They are written once for every record a sync touches and only ever read whole (nothing
-- queries into them). `jsonb` parsed each one into its binary form on the way in and printed it
-- back on every read: 6% of Postgres's CPU in a million-contact backfill. `json` only checks
-- that the text is JSON. (The change rewrites the table once.)
ALTER TABLE sync_items ALTER COLUMN changes TYPE json USING changes::json;
