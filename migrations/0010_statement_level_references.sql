-- References checked once per statement on the tables a sync writes one row per record into.
--
-- A foreign key checks every inserted row on its own: a lookup and a row lock on the referenced
-- row, about 7 µs each on our machines. A backfill page of 200 contacts wrote 1,400 of them
-- (contacts → tenant; external_links → tenant, connection; outbox → tenant; sync_items →
-- tenant, connection, run), all for the same three referenced rows, and they were a fifth of
-- the Postgres time of a page. Here the same guarantees are kept with one check per statement:
--
-- * An INSERT checks, once, every distinct referenced row its new rows name, and locks it
--   FOR KEY SHARE, as the foreign key did (so a concurrent delete waits for this transaction,
--   then sees its rows and removes them).
-- * The columns those checks cover never change after insert (tenant_id, run_id), or are
--   checked again when they do (external_links.connection_id).
-- * Deleting a tenant, connection or run still removes (or for links, detaches) what hung off
--   it, by AFTER DELETE statement triggers in place of ON DELETE CASCADE / SET NULL.
--
-- sync_items is checked against its run, tenant *and* connection together (an item's run must
-- belong to the item's connection), which is stricter than the three keys it replaces. Deals,
-- tasks and the other tables keep their foreign keys: they are written one row per statement.

ALTER TABLE contacts DROP CONSTRAINT contacts_tenant_id_fkey;
ALTER TABLE outbox DROP CONSTRAINT outbox_tenant_id_fkey;
ALTER TABLE external_links
    DROP CONSTRAINT external_links_tenant_id_fkey,
    DROP CONSTRAINT external_links_connection;
ALTER TABLE sync_items
    DROP CONSTRAINT sync_items_tenant_id_fkey,
    DROP CONSTRAINT sync_items_connection_id_fkey,
    DROP CONSTRAINT sync_items_run_id_fkey;

-- Inserted rows (transition table `new_rows`) name existing tenants.
CREATE FUNCTION check_new_rows_tenants() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint;
    found bigint;
BEGIN
    SELECT count(DISTINCT tenant_id) INTO wanted FROM new_rows;
    SELECT count(*) INTO found
    FROM (SELECT 1 FROM tenants t WHERE t.id IN (SELECT tenant_id FROM new_rows)
          FOR KEY SHARE OF t) AS locked;
    IF found < wanted THEN
        RAISE EXCEPTION 'insert into % names a tenant that does not exist', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

-- Inserted links name existing connections of their own tenant (or none), and existing tenants.
CREATE FUNCTION check_new_links_connections() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint;
    found bigint;
BEGIN
    SELECT count(*) INTO wanted
    FROM (SELECT DISTINCT tenant_id, connection_id FROM new_rows
          WHERE connection_id IS NOT NULL) AS n;
    IF wanted > 0 THEN
        SELECT count(*) INTO found
        FROM (SELECT 1 FROM connections c
              WHERE (c.tenant_id, c.id) IN (SELECT tenant_id, connection_id FROM new_rows)
              FOR KEY SHARE OF c) AS locked;
        IF found < wanted THEN
            RAISE EXCEPTION 'insert into external_links names a connection that does not exist'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- Inserted sync items name an existing run of their own tenant and connection.
CREATE FUNCTION check_new_sync_items_runs() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint;
    found bigint;
BEGIN
    SELECT count(*) INTO wanted
    FROM (SELECT DISTINCT run_id, tenant_id, connection_id FROM new_rows) AS n;
    SELECT count(*) INTO found
    FROM (SELECT 1 FROM sync_runs r
          WHERE (r.id, r.tenant_id, r.connection_id)
                IN (SELECT run_id, tenant_id, connection_id FROM new_rows)
          FOR KEY SHARE OF r) AS locked;
    IF found < wanted THEN
        RAISE EXCEPTION 'insert into sync_items names a run that does not exist (or is another connection''s)'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER contacts_tenant AFTER INSERT ON contacts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_new_rows_tenants();
CREATE TRIGGER outbox_tenant AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_new_rows_tenants();
CREATE TRIGGER external_links_tenant AFTER INSERT ON external_links
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_new_rows_tenants();
CREATE TRIGGER external_links_connection AFTER INSERT ON external_links
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_new_links_connections();
CREATE TRIGGER sync_items_run AFTER INSERT ON sync_items
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_new_sync_items_runs();

-- The checked columns stay as inserted: a row never moves to another tenant or run.
CREATE FUNCTION refuse_reference_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: % cannot change after insert', TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'foreign_key_violation';
END
$$;

CREATE TRIGGER contacts_tenant_fixed AFTER UPDATE OF tenant_id ON contacts
    FOR EACH ROW WHEN (NEW.tenant_id IS DISTINCT FROM OLD.tenant_id)
    EXECUTE FUNCTION refuse_reference_change('tenant_id');
CREATE TRIGGER outbox_tenant_fixed AFTER UPDATE OF tenant_id ON outbox
    FOR EACH ROW WHEN (NEW.tenant_id IS DISTINCT FROM OLD.tenant_id)
    EXECUTE FUNCTION refuse_reference_change('tenant_id');
CREATE TRIGGER external_links_tenant_fixed AFTER UPDATE OF tenant_id ON external_links
    FOR EACH ROW WHEN (NEW.tenant_id IS DISTINCT FROM OLD.tenant_id)
    EXECUTE FUNCTION refuse_reference_change('tenant_id');
CREATE TRIGGER sync_items_references_fixed AFTER UPDATE OF tenant_id, connection_id, run_id
    ON sync_items
    FOR EACH ROW WHEN (NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
                       OR NEW.connection_id IS DISTINCT FROM OLD.connection_id
                       OR NEW.run_id IS DISTINCT FROM OLD.run_id)
    EXECUTE FUNCTION refuse_reference_change('tenant_id, connection_id or run_id');

-- A link handed to another connection (or taken over by one) is checked like a new one.
CREATE FUNCTION check_changed_link_connection() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM connections c
    WHERE c.id = NEW.connection_id AND c.tenant_id = NEW.tenant_id
    FOR KEY SHARE OF c;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'external_links: connection % does not exist', NEW.connection_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER external_links_connection_changed AFTER UPDATE OF connection_id ON external_links
    FOR EACH ROW WHEN (NEW.connection_id IS NOT NULL
                       AND NEW.connection_id IS DISTINCT FROM OLD.connection_id)
    EXECUTE FUNCTION check_changed_link_connection();

-- What the foreign keys' ON DELETE actions did.
CREATE FUNCTION remove_rows_of_deleted_tenants() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM contacts x USING old_rows o WHERE x.tenant_id = o.id;
    DELETE FROM outbox x USING old_rows o WHERE x.tenant_id = o.id;
    DELETE FROM external_links x USING old_rows o WHERE x.tenant_id = o.id;
    DELETE FROM sync_items x USING old_rows o WHERE x.tenant_id = o.id;
    RETURN NULL;
END
$$;

CREATE FUNCTION detach_links_of_deleted_connections() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE external_links x SET connection_id = NULL
    FROM old_rows o WHERE x.tenant_id = o.tenant_id AND x.connection_id = o.id;
    DELETE FROM sync_items x USING old_rows o
    WHERE x.tenant_id = o.tenant_id AND x.connection_id = o.id;
    RETURN NULL;
END
$$;

CREATE FUNCTION remove_items_of_deleted_runs() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sync_items x USING old_rows o WHERE x.tenant_id = o.tenant_id AND x.run_id = o.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_remove_rows AFTER DELETE ON tenants
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION remove_rows_of_deleted_tenants();
CREATE TRIGGER connections_detach_links AFTER DELETE ON connections
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION detach_links_of_deleted_connections();
CREATE TRIGGER sync_runs_remove_items AFTER DELETE ON sync_runs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION remove_items_of_deleted_runs();
