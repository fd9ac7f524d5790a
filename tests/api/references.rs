//! The references that migration 0010 checks once per statement instead of once per row
//! (contacts, outbox, external_links, sync_items): what a foreign key refused is still refused,
//! through the restricted role too, and deleting a tenant, connection or run still removes (or
//! detaches) what hung off it.

use ferry::db::Db;
use ferry::tenancy::TenantId;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestDb;

/// A database with two tenants, Acme and Globex, each with a connection and a run.
struct Fixture {
    db: TestDb,
    tenant: Uuid,
    connection: Uuid,
    run: i64,
    /// Globex's tenant, connection and run.
    other: (Uuid, Uuid, i64),
}

async fn tenant(pool: &PgPool, name: &str) -> (Uuid, Uuid, i64) {
    let tenant: Uuid = sqlx::query_scalar("INSERT INTO tenants (name) VALUES ($1) RETURNING id")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("tenant");
    let connection = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO connections (id, tenant_id, provider, remote_account_id, status)
         VALUES ($1, $2, 'hubspot', $3, 'active')",
    )
    .bind(connection)
    .bind(tenant)
    .bind(name)
    .execute(pool)
    .await
    .expect("connection");
    let run: i64 = sqlx::query_scalar(
        "INSERT INTO sync_runs (tenant_id, connection_id, object, kind)
         VALUES ($1, $2, 'contact', 'backfill') RETURNING id",
    )
    .bind(tenant)
    .bind(connection)
    .fetch_one(pool)
    .await
    .expect("run");
    (tenant, connection, run)
}

async fn fixture() -> Fixture {
    let db = TestDb::create().await;
    let (tenant, connection, run) = tenant(&db.pool, "Acme").await;
    let other = self::tenant(&db.pool, "Globex").await;
    Fixture {
        db,
        tenant,
        connection,
        run,
        other,
    }
}

/// Writes one contact, its link, outbox row and history item for `tenant` (two of each, so the
/// statements carry several rows).
async fn write(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    connection: Option<Uuid>,
    item_connection: Uuid,
    run: i64,
) -> Result<(), sqlx::Error> {
    let ids = [Uuid::now_v7(), Uuid::now_v7()];
    sqlx::query(
        "INSERT INTO contacts (id, tenant_id, email, source)
         SELECT id, $2, id::text || '@example.com', 'test' FROM unnest($1::uuid[]) AS id",
    )
    .bind(&ids[..])
    .bind(tenant)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO external_links (tenant_id, key, record_kind, record_id, connection_id)
         SELECT $2, 'hubspot:contact:' || id::text, 'contact', id, $3 FROM unnest($1::uuid[]) AS id",
    )
    .bind(&ids[..])
    .bind(tenant)
    .bind(connection)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (tenant_id, record_kind, record_id, operation, version, changed_fields,
                             origin)
         SELECT $2, 'contact', id, 'create', 1, '{email}', 'test' FROM unnest($1::uuid[]) AS id",
    )
    .bind(&ids[..])
    .bind(tenant)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO sync_items (tenant_id, run_id, connection_id, object, direction, record_id,
                                 action, outcome)
         SELECT $2, $3, $4, 'contact', 'inbound', id, 'created', 'ok' FROM unnest($1::uuid[]) AS id",
    )
    .bind(&ids[..])
    .bind(tenant)
    .bind(run)
    .bind(item_connection)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn is_reference_error(result: Result<(), sqlx::Error>) -> bool {
    match result {
        Err(sqlx::Error::Database(e)) => e.code().as_deref() == Some("23503"),
        _ => false,
    }
}

async fn count(pool: &PgPool, table: &str, tenant: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE tenant_id = $1"
    )))
    .bind(tenant)
    .fetch_one(pool)
    .await
    .expect("count")
}

#[tokio::test]
async fn rows_naming_what_does_not_exist_are_refused() {
    let f = fixture().await;
    let pool = &f.db.pool;
    let (other_tenant, other_connection, other_run) = f.other;

    // The real thing works, as the owner and through a tenant transaction.
    let mut conn = pool.acquire().await.expect("conn");
    write(&mut conn, f.tenant, Some(f.connection), f.connection, f.run)
        .await
        .expect("valid rows");
    write(&mut conn, f.tenant, None, f.connection, f.run)
        .await
        .expect("links without a connection");
    drop(conn);
    let db = Db::from_pool(pool.clone());
    let mut tx = db.tenant(TenantId(f.tenant)).await.expect("tx");
    write(&mut tx, f.tenant, Some(f.connection), f.connection, f.run)
        .await
        .expect("valid rows as the tenant");
    tx.commit().await.expect("commit");

    // Each broken reference, one at a time, each in its own rolled-back transaction.
    let missing = Uuid::now_v7();
    let cases: [(&str, Uuid, Option<Uuid>, Uuid, i64); 5] = [
        (
            "a tenant that does not exist",
            missing,
            None,
            f.connection,
            f.run,
        ),
        (
            "a connection that does not exist",
            f.tenant,
            Some(missing),
            f.connection,
            f.run,
        ),
        (
            "another tenant's connection",
            f.tenant,
            Some(other_connection),
            f.connection,
            f.run,
        ),
        (
            "a run that does not exist",
            f.tenant,
            Some(f.connection),
            f.connection,
            1 << 40,
        ),
        (
            "another connection's run",
            f.tenant,
            Some(f.connection),
            f.connection,
            other_run,
        ),
    ];
    for (what, tenant, connection, item_connection, run) in cases {
        let mut tx = pool.begin().await.expect("tx");
        let result = write(&mut tx, tenant, connection, item_connection, run).await;
        let shown = format!("{result:?}");
        assert!(is_reference_error(result), "rows naming {what}: {shown}");
    }
    // An item whose connection is not its run's.
    let mut tx = pool.begin().await.expect("tx");
    let result = write(&mut tx, f.tenant, None, other_connection, f.run).await;
    assert!(
        is_reference_error(result),
        "an item of another connection's run was stored"
    );
    drop(tx);

    // Rows never move to another tenant, run or connection.
    for statement in [
        "UPDATE contacts SET tenant_id = $2 WHERE tenant_id = $1",
        "UPDATE outbox SET tenant_id = $2 WHERE tenant_id = $1",
        "UPDATE external_links SET tenant_id = $2 WHERE tenant_id = $1",
        "UPDATE sync_items SET tenant_id = $2 WHERE tenant_id = $1",
    ] {
        let result = sqlx::query(statement)
            .bind(f.tenant)
            .bind(other_tenant)
            .execute(pool)
            .await
            .map(|_| ());
        assert!(is_reference_error(result), "{statement} was allowed");
    }
    let moved = sqlx::query("UPDATE external_links SET connection_id = $2 WHERE tenant_id = $1")
        .bind(f.tenant)
        .bind(other_connection)
        .execute(pool)
        .await
        .map(|_| ());
    assert!(
        is_reference_error(moved),
        "links moved to another tenant's connection"
    );
    // Handing links to none and back to their own connection is fine.
    for connection in [None, Some(f.connection)] {
        sqlx::query("UPDATE external_links SET connection_id = $2 WHERE tenant_id = $1")
            .bind(f.tenant)
            .bind(connection)
            .execute(pool)
            .await
            .expect("detach and reattach");
    }

    // Nothing of the refused statements was kept.
    for table in ["contacts", "outbox", "external_links", "sync_items"] {
        assert_eq!(count(pool, table, f.tenant).await, 6, "{table}");
        assert_eq!(count(pool, table, missing).await, 0, "{table}");
    }
}

#[tokio::test]
async fn deleting_a_run_connection_or_tenant_still_removes_what_hung_off_it() {
    let f = fixture().await;
    let pool = &f.db.pool;
    let (other_tenant, other_connection, other_run) = f.other;
    let mut conn = pool.acquire().await.expect("conn");
    write(&mut conn, f.tenant, Some(f.connection), f.connection, f.run)
        .await
        .expect("rows");
    write(
        &mut conn,
        other_tenant,
        Some(other_connection),
        other_connection,
        other_run,
    )
    .await
    .expect("other tenant's rows");
    let second_run: i64 = sqlx::query_scalar(
        "INSERT INTO sync_runs (tenant_id, connection_id, kind) VALUES ($1, $2, 'webhook')
         RETURNING id",
    )
    .bind(f.tenant)
    .bind(f.connection)
    .fetch_one(&mut *conn)
    .await
    .expect("run");
    write(
        &mut conn,
        f.tenant,
        Some(f.connection),
        f.connection,
        second_run,
    )
    .await
    .expect("rows of the second run");
    drop(conn);

    // A run: its items go, nothing else.
    sqlx::query("DELETE FROM sync_runs WHERE id = $1")
        .bind(f.run)
        .execute(pool)
        .await
        .expect("delete run");
    assert_eq!(count(pool, "sync_items", f.tenant).await, 2);
    assert_eq!(count(pool, "contacts", f.tenant).await, 4);

    // A connection: its runs' items go, its links stay, detached.
    sqlx::query("DELETE FROM connections WHERE id = $1")
        .bind(f.connection)
        .execute(pool)
        .await
        .expect("delete connection");
    assert_eq!(count(pool, "sync_items", f.tenant).await, 0);
    assert_eq!(count(pool, "external_links", f.tenant).await, 4);
    let attached: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM external_links WHERE tenant_id = $1 AND connection_id IS NOT NULL",
    )
    .bind(f.tenant)
    .fetch_one(pool)
    .await
    .expect("count");
    assert_eq!(attached, 0);

    // A tenant: all of its rows go; the other tenant keeps all of its own.
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(f.tenant)
        .execute(pool)
        .await
        .expect("delete tenant");
    for table in ["contacts", "outbox", "external_links", "sync_items"] {
        assert_eq!(count(pool, table, f.tenant).await, 0, "{table}");
        assert_eq!(count(pool, table, other_tenant).await, 2, "{table}");
    }
}
