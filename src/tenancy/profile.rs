//! The tenant's profile: its display name and time zone (the UI shows every time in it), as
//! `/settings/profile` shows them.

use chrono_tz::Tz;
use serde_json::json;

use super::Role;
use super::audit::{self, Actor, AuditEvent, RequestMeta};
use crate::db::TenantTx;
use crate::error::{Error, FieldError};

/// Longest tenant name the profile form accepts, in characters (after trimming).
pub const NAME_MAX: usize = 100;

/// A tenant's profile as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// An IANA zone name, e.g. `Europe/Berlin`.
    pub time_zone: String,
}

/// The profile of the transaction's tenant.
pub async fn load(tx: &mut TenantTx) -> Result<Profile, Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        "SELECT name, time_zone FROM tenants WHERE id = $1",
        tenant.0
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound)?;
    Ok(Profile {
        name: row.name,
        time_zone: row.time_zone,
    })
}

/// Checks what the form sent; returns the trimmed name and the zone in its canonical spelling, or
/// one message per bad field.
pub fn validate(name: &str, time_zone: &str) -> Result<Profile, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = name.trim();
    let length = name.chars().count();
    if length == 0 || length > NAME_MAX {
        errors.push(FieldError::new(
            "name",
            format!("Enter the organisation's name (1 to {NAME_MAX} characters)."),
        ));
    }
    let zone = time_zone.trim().parse::<Tz>();
    if zone.is_err() {
        errors.push(FieldError::new(
            "time_zone",
            "Choose a time zone from the list, such as Europe/Berlin or UTC.",
        ));
    }
    match zone {
        Ok(zone) if errors.is_empty() => Ok(Profile {
            name: name.to_string(),
            time_zone: zone.name().to_string(),
        }),
        _ => Err(errors),
    }
}

/// Changes the profile of the transaction's tenant and audits the change. Returns whether anything
/// changed (an unchanged form records nothing). Owners and admins only.
pub async fn update(
    tx: &mut TenantTx,
    actor: &Actor,
    actor_role: Role,
    meta: &RequestMeta,
    name: &str,
    time_zone: &str,
) -> Result<bool, Error> {
    if !actor_role.at_least(Role::Admin) {
        return Err(Error::Forbidden);
    }
    let after = validate(name, time_zone).map_err(Error::Validation)?;
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        "SELECT name, time_zone FROM tenants WHERE id = $1 FOR UPDATE",
        tenant.0
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound)?;
    let before = Profile {
        name: row.name,
        time_zone: row.time_zone,
    };
    if before == after {
        return Ok(false);
    }
    sqlx::query!(
        "UPDATE tenants SET name = $2, time_zone = $3 WHERE id = $1",
        tenant.0,
        after.name,
        after.time_zone
    )
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new("tenant.profile_changed")
            .target("tenant", tenant.to_string())
            .before(json!({ "name": before.name, "time_zone": before.time_zone }))
            .after(json!({ "name": after.name, "time_zone": after.time_zone })),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_trimmed_name_and_a_known_zone() {
        let profile = validate("  Acme GmbH ", " Europe/Berlin ").expect("valid");
        assert_eq!(profile.name, "Acme GmbH");
        assert_eq!(profile.time_zone, "Europe/Berlin");
    }

    #[test]
    fn rejects_blank_or_long_names_and_unknown_zones() {
        let errors = validate("   ", "Mars/Olympus").expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "time_zone"]);
        assert!(validate(&"x".repeat(NAME_MAX), "UTC").is_ok());
        assert!(validate(&"x".repeat(NAME_MAX + 1), "UTC").is_err());
        assert!(validate("Acme", "").is_err());
    }
}
