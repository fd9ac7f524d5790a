-- Foundation: tenants, their users, API keys, the audit log, and browser sessions.
--
-- Isolation model. Every tenant-owned table carries `tenant_id` and a row-level security policy
-- that compares it with the transaction-local setting `app.tenant_id`. Ferry's tenant-scoped
-- transactions (src/db.rs, `Db::tenant`) set that setting *and* switch to the role `ferry_app`
-- for the length of the transaction. `ferry_app` is neither a superuser nor a table owner, so the
-- policies always apply to it, even when DATABASE_URL names a superuser (superusers and owners
-- bypass row-level security). Work that must cross tenants (login by email, API-key lookup,
-- schedulers) runs as the connecting role and says so: grep for `cross_tenant`.

-- The restricted role. Roles are cluster-wide, so several Ferry databases (tests!) share it and
-- may race to create it: tolerate both outcomes.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ferry_app') THEN
        BEGIN
            CREATE ROLE ferry_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    -- The connecting role must be able to `SET ROLE ferry_app` (superusers always can).
    IF NOT pg_has_role(current_user, 'ferry_app', 'MEMBER') THEN
        EXECUTE format('GRANT ferry_app TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO ferry_app;
-- Tables and sequences created later by this (migrating) role are usable by ferry_app too.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ferry_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO ferry_app;

-- The tenant of the current transaction, or NULL when none is set (then every policy hides
-- every row). `current_setting(.., true)` yields '' after a transaction-local value expires.
CREATE FUNCTION app_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid $$;

-- Keeps `updated_at` honest on every UPDATE of a table that opts in.
CREATE FUNCTION set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- A tenant is one customer of the product that embeds Ferry.
CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER tenants_updated_at BEFORE UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = app_tenant_id()) WITH CHECK (id = app_tenant_id());

-- People who log in to the admin UI. An email address belongs to exactly one tenant, so login
-- needs only email and password; the unique index on lower(email) is therefore global (the one
-- index here that does not lead with tenant_id).
CREATE TABLE users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email          text NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254),
    name           text NOT NULL DEFAULT '' CHECK (char_length(name) <= 200),
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'viewer')),
    -- Bumped when the password changes or the user is signed out everywhere: sessions carry the
    -- epoch they were created under and die when it moves.
    session_epoch  integer NOT NULL DEFAULT 0,
    last_login_at  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_tenant_created ON users (tenant_id, created_at, id);
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

-- API keys for the REST API. Only a SHA-256 of the key is stored (keys carry ~190 bits of
-- randomness, so a slow hash buys nothing); `prefix` is the public part shown in the UI.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL,
    created_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    revoked_by    uuid REFERENCES users (id) ON DELETE SET NULL
);
-- Looked up by hash before the tenant is known (cross-tenant by nature).
CREATE UNIQUE INDEX api_keys_hash_key ON api_keys (key_hash);
CREATE INDEX api_keys_tenant_created ON api_keys (tenant_id, created_at, id);
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

-- Who did what, when, from where. Append-only for the application role.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    actor_type   text NOT NULL CHECK (actor_type IN ('user', 'api_key', 'system', 'anonymous')),
    actor_id     uuid,
    actor_label  text NOT NULL DEFAULT '',
    action       text NOT NULL,
    target_type  text,
    target_id    text,
    ip           inet,
    user_agent   text,
    before       jsonb,
    after        jsonb
);
-- Newest first, keyset-paginated by id (ids grow with time).
CREATE INDEX audit_log_tenant_recent ON audit_log (tenant_id, id DESC);
CREATE INDEX audit_log_tenant_action ON audit_log (tenant_id, action, id DESC);
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());

-- Browser sessions (tower-sessions records). Not tenant-owned: a session exists before anyone
-- logs in. Expired rows are purged by the maintenance job.
CREATE TABLE sessions (
    id           text PRIMARY KEY,
    data         jsonb NOT NULL,
    expiry_date  timestamptz NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expiry_date);

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ferry_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ferry_app;
-- The audit trail is append-only for application code.
REVOKE UPDATE, DELETE ON audit_log FROM ferry_app;
-- Sessions are never touched inside a tenant transaction.
REVOKE ALL ON sessions FROM ferry_app;
