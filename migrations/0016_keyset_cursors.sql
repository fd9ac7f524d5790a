-- Cursor syncs page by keyset, not by offset (issue 20): every page is a new search for the
-- records modified at or after `query_from`. `query_after` no longer holds the CRM's paging
-- offset; it now holds the id after which the records modified exactly at `query_from` are read
-- by id (only when a whole page shares one timestamp). Offsets saved by the old code are cleared:
-- those cursors read again from `query_from`, which only repeats records already applied.
UPDATE sync_cursors SET query_after = NULL, query_offset = 0 WHERE query_after IS NOT NULL;

COMMENT ON COLUMN sync_cursors.query_after IS
    'while reading the records modified exactly at query_from by id: the last id read';
COMMENT ON COLUMN sync_cursors.query_offset IS 'unused since keyset paging (always 0)';
