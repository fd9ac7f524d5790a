-- Field mappings, versioned: every save of a connection's mapping for one object kind is a new
-- row; nothing is updated or deleted, so any two versions can be compared and any one restored
-- (a rollback is itself a new version).

CREATE TABLE mapping_versions (
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connection_id      uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    object             text NOT NULL CHECK (object IN ('contact', 'deal', 'task')),
    version            integer NOT NULL CHECK (version > 0),
    -- The mapping document (src/mapping/model.rs), as JSON.
    document           jsonb NOT NULL,
    author_id          uuid REFERENCES users (id) ON DELETE SET NULL,
    author_label       text NOT NULL,
    note               text NOT NULL DEFAULT '',
    -- Set when this version restores an earlier one.
    restored_from      integer,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, connection_id, object, version)
);

ALTER TABLE mapping_versions ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON mapping_versions
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
-- History is append-only for the application.
REVOKE UPDATE, DELETE ON mapping_versions FROM ferry_app;
