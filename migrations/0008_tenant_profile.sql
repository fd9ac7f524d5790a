-- Tenant profile (`/settings/profile`): the tenant's default time zone, an IANA zone name that the
-- application validates (chrono_tz) before storing. Existing tenants start on UTC.
ALTER TABLE tenants ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC';
