//! Tenants and their users: sign-up, listing, adding, role changes, removal.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Actor, AuditEvent, RequestMeta};
use super::{Role, TenantId, UserId, normalize_email, password, valid_email};
use crate::db::{Db, TenantTx};
use crate::error::{Error, FieldError, unique_violation};

/// A user as the settings pages show it.
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

fn parse_role(text: &str) -> Result<Role, Error> {
    // The column's CHECK constraint makes anything else impossible; say so loudly if it happens.
    text.parse()
        .map_err(|_| Error::Database(sqlx::Error::Decode(format!("bad role {text}").into())))
}

/// What the sign-up form sends.
pub struct SignUp {
    pub tenant_name: String,
    pub name: String,
    pub email: String,
    pub password: SecretString,
}

/// What the add-user form sends.
pub struct NewUser {
    pub name: String,
    pub email: String,
    pub role: Role,
    pub password: SecretString,
}

/// Validates the fields shared by sign-up and add-user; returns the normalised email.
fn check_person(
    name: &str,
    email: &str,
    password: &SecretString,
    errors: &mut Vec<FieldError>,
) -> String {
    let email = normalize_email(email);
    if !valid_email(&email) {
        errors.push(FieldError::new(
            "email",
            "Enter an email address like name@example.com.",
        ));
    }
    if name.trim().chars().count() > 200 {
        errors.push(FieldError::new("name", "Use at most 200 characters."));
    }
    if let Some(problem) = password::check_strength(password.expose_secret(), &email) {
        errors.push(FieldError::new("password", problem));
    }
    email
}

fn email_taken() -> Error {
    Error::Validation(vec![FieldError::new(
        "email",
        "An account with this email already exists.",
    )])
}

/// Creates a tenant and its owner in one transaction. Returns the new ids.
pub async fn sign_up(
    db: &Db,
    input: SignUp,
    meta: &RequestMeta,
) -> Result<(TenantId, UserId), Error> {
    let mut errors = Vec::new();
    let tenant_name = input.tenant_name.trim().to_string();
    if tenant_name.is_empty() || tenant_name.chars().count() > 200 {
        errors.push(FieldError::new(
            "tenant_name",
            "Enter your organisation's name (up to 200 characters).",
        ));
    }
    let email = check_person(&input.name, &input.email, &input.password, &mut errors);
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let password_hash = password::hash(input.password).await?;

    // The tenant does not exist yet, but its id does: the whole sign-up runs inside that
    // tenant's scope, so no cross-tenant access is needed.
    let tenant = TenantId(Uuid::new_v4());
    let user = UserId(Uuid::new_v4());
    let mut tx = db.tenant(tenant).await?;
    sqlx::query!(
        "INSERT INTO tenants (id, name) VALUES ($1, $2)",
        tenant.0,
        tenant_name
    )
    .execute(&mut *tx)
    .await?;
    let inserted = sqlx::query!(
        "INSERT INTO users (id, tenant_id, email, name, password_hash, role)
         VALUES ($1, $2, $3, $4, $5, 'owner')",
        user.0,
        tenant.0,
        email,
        input.name.trim(),
        password_hash
    )
    .execute(&mut *tx)
    .await;
    if let Err(err) = inserted {
        return Err(match unique_violation(&err) {
            Some("users_email_key") => email_taken(),
            _ => err.into(),
        });
    }
    let actor = Actor::user(user, &email);
    audit::record(
        &mut tx,
        &actor,
        meta,
        AuditEvent::new("tenant.created")
            .target("tenant", tenant.to_string())
            .after(json!({ "name": tenant_name })),
    )
    .await?;
    audit::record(
        &mut tx,
        &actor,
        meta,
        AuditEvent::new("auth.signup")
            .target("user", user.to_string())
            .after(json!({ "email": email, "role": "owner" })),
    )
    .await?;
    tx.commit().await?;
    Ok((tenant, user))
}

/// The tenant's display name.
pub async fn tenant_name(tx: &mut TenantTx) -> Result<String, Error> {
    let tenant = tx.tenant_id();
    let name = sqlx::query_scalar!("SELECT name FROM tenants WHERE id = $1", tenant.0)
        .fetch_optional(&mut **tx)
        .await?;
    name.ok_or(Error::NotFound)
}

/// All users of the tenant, oldest first.
pub async fn list_users(tx: &mut TenantTx) -> Result<Vec<User>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT id, tenant_id, email, name, role, created_at, last_login_at
         FROM users WHERE tenant_id = $1 ORDER BY created_at, id",
        tenant.0
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(User {
                id: UserId(r.id),
                tenant_id: TenantId(r.tenant_id),
                email: r.email,
                name: r.name,
                role: parse_role(&r.role)?,
                created_at: r.created_at,
                last_login_at: r.last_login_at,
            })
        })
        .collect()
}

/// One user of the tenant, or NotFound (also for another tenant's user).
pub async fn find_user(tx: &mut TenantTx, id: UserId) -> Result<User, Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        "SELECT id, tenant_id, email, name, role, created_at, last_login_at
         FROM users WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        id.0
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound)?;
    Ok(User {
        id: UserId(row.id),
        tenant_id: TenantId(row.tenant_id),
        email: row.email,
        name: row.name,
        role: parse_role(&row.role)?,
        created_at: row.created_at,
        last_login_at: row.last_login_at,
    })
}

/// Adds a user to the tenant with an initial password chosen by the admin.
pub async fn add_user(
    tx: &mut TenantTx,
    actor: &Actor,
    actor_role: Role,
    meta: &RequestMeta,
    input: NewUser,
) -> Result<UserId, Error> {
    if !actor_role.can_manage(input.role) {
        return Err(Error::Validation(vec![FieldError::new(
            "role",
            format!("Your role cannot add a user with the role {}.", input.role),
        )]));
    }
    let mut errors = Vec::new();
    let email = check_person(&input.name, &input.email, &input.password, &mut errors);
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let password_hash = password::hash(input.password).await?;
    let tenant = tx.tenant_id();
    let id = UserId(Uuid::new_v4());
    let inserted = sqlx::query!(
        "INSERT INTO users (id, tenant_id, email, name, password_hash, role)
         VALUES ($1, $2, $3, $4, $5, $6)",
        id.0,
        tenant.0,
        email,
        input.name.trim(),
        password_hash,
        input.role.as_str()
    )
    .execute(&mut **tx)
    .await;
    if let Err(err) = inserted {
        return Err(match unique_violation(&err) {
            Some("users_email_key") => email_taken(),
            _ => err.into(),
        });
    }
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new("user.added")
            .target("user", id.to_string())
            .after(json!({ "email": email, "name": input.name.trim(), "role": input.role })),
    )
    .await?;
    Ok(id)
}

/// Locks the tenant's owners and counts them, so two concurrent demotions cannot both pass the
/// "keep one owner" rule.
async fn lock_owner_count(tx: &mut TenantTx) -> Result<usize, Error> {
    let tenant = tx.tenant_id();
    let owners = sqlx::query_scalar!(
        "SELECT id FROM users WHERE tenant_id = $1 AND role = 'owner' FOR UPDATE",
        tenant.0
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(owners.len())
}

/// Checks that `actor` may change `target` at all.
fn check_manage(actor_id: UserId, actor_role: Role, target: &User) -> Result<(), Error> {
    if target.id == actor_id {
        return Err(Error::Conflict(
            "You cannot change your own role or remove yourself; ask another admin.".into(),
        ));
    }
    if !actor_role.can_manage(target.role) {
        return Err(Error::Forbidden);
    }
    Ok(())
}

pub async fn change_role(
    tx: &mut TenantTx,
    actor: &Actor,
    actor_id: UserId,
    actor_role: Role,
    meta: &RequestMeta,
    target: UserId,
    new_role: Role,
) -> Result<(), Error> {
    let owners = lock_owner_count(tx).await?;
    let user = find_user(tx, target).await?;
    check_manage(actor_id, actor_role, &user)?;
    if !actor_role.can_manage(new_role) {
        return Err(Error::Forbidden);
    }
    if user.role == new_role {
        return Ok(());
    }
    if user.role == Role::Owner && owners <= 1 {
        return Err(Error::Conflict(
            "A tenant must keep at least one owner.".into(),
        ));
    }
    let tenant = tx.tenant_id();
    sqlx::query!(
        "UPDATE users SET role = $3 WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        target.0,
        new_role.as_str()
    )
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new("user.role_changed")
            .target("user", target.to_string())
            .before(json!({ "email": user.email, "role": user.role }))
            .after(json!({ "email": user.email, "role": new_role })),
    )
    .await?;
    Ok(())
}

/// Removes a user; their sessions stop working on their next request.
pub async fn remove_user(
    tx: &mut TenantTx,
    actor: &Actor,
    actor_id: UserId,
    actor_role: Role,
    meta: &RequestMeta,
    target: UserId,
) -> Result<(), Error> {
    let owners = lock_owner_count(tx).await?;
    let user = find_user(tx, target).await?;
    check_manage(actor_id, actor_role, &user)?;
    if user.role == Role::Owner && owners <= 1 {
        return Err(Error::Conflict(
            "A tenant must keep at least one owner.".into(),
        ));
    }
    let tenant = tx.tenant_id();
    sqlx::query!(
        "DELETE FROM users WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        target.0
    )
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new("user.removed")
            .target("user", target.to_string())
            .before(json!({ "email": user.email, "name": user.name, "role": user.role })),
    )
    .await?;
    Ok(())
}

/// Creates the tenant and owner for `ferry tenant create`, or (for `ferry demo`) reuses the
/// tenant of an existing user with that email and resets the password so the printed login works.
pub async fn ensure_tenant_with_owner(
    db: &Db,
    tenant_name: &str,
    email: &str,
    password: SecretString,
    reuse: bool,
) -> Result<(TenantId, UserId, bool), Error> {
    let email = normalize_email(email);
    // CROSS-TENANT: an operator's command names an account by email before any tenant is known.
    let existing = sqlx::query!(
        "SELECT id, tenant_id FROM users WHERE lower(email) = $1",
        email
    )
    .fetch_optional(db.cross_tenant())
    .await?;
    match existing {
        Some(row) if reuse => {
            let hash = password::hash(password).await?;
            let tenant = TenantId(row.tenant_id);
            let mut tx = db.tenant(tenant).await?;
            sqlx::query!(
                "UPDATE users SET password_hash = $3, session_epoch = session_epoch + 1
                 WHERE tenant_id = $1 AND id = $2",
                tenant.0,
                row.id,
                hash
            )
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                &Actor::system("ferry demo"),
                &RequestMeta::default(),
                AuditEvent::new("user.password_reset").target("user", row.id.to_string()),
            )
            .await?;
            tx.commit().await?;
            Ok((tenant, UserId(row.id), false))
        }
        Some(_) => Err(email_taken()),
        None => {
            let (tenant, user) = sign_up(
                db,
                SignUp {
                    tenant_name: tenant_name.to_string(),
                    name: String::new(),
                    email,
                    password,
                },
                &RequestMeta::default(),
            )
            .await?;
            Ok((tenant, user, true))
        }
    }
}
