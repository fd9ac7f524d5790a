//! Automation rules: "when a deal enters stage S, create a task (title template, due in N days,
//! assigned to the deal's owner)" — the SDR's follow-up.
//!
//! A rule fires once per deal per entry into the stage: the entry is identified by the deal's
//! version that made the move, and `automation_firings` is unique on (rule, deal, entry), so a
//! redelivered webhook or a re-run page finds the firing and does nothing. A redelivery also
//! changes nothing in the deal (the stage is already S), so it never looks like an entry.

use chrono::{Duration, Utc};
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use super::runs::Item;
use crate::db::TenantTx;
use crate::error::{Error, FieldError};
use crate::records::{Kind, service, store};

/// A tenant's rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: Uuid,
    pub name: String,
    pub stage: String,
    pub title_template: String,
    pub due_in_days: i32,
    pub enabled: bool,
}

/// What a person submits.
#[derive(Debug, Clone)]
pub struct Draft {
    pub name: String,
    pub stage: String,
    pub title_template: String,
    pub due_in_days: i32,
}

pub async fn list(tx: &mut TenantTx) -> Result<Vec<Rule>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT id, name, stage, title_template, due_in_days, enabled FROM automation_rules
         WHERE tenant_id = $1 ORDER BY created_at, id",
        tenant.0
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Rule {
            id: r.id,
            name: r.name,
            stage: r.stage,
            title_template: r.title_template,
            due_in_days: r.due_in_days,
            enabled: r.enabled,
        })
        .collect())
}

/// Checks a draft: every problem as a field error.
pub async fn check(tx: &mut TenantTx, draft: &Draft) -> Result<(), Error> {
    let mut errors = Vec::new();
    if draft.name.trim().is_empty() || draft.name.chars().count() > 100 {
        errors.push(FieldError::new(
            "name",
            "Give the rule a name (up to 100 characters).",
        ));
    }
    if draft.title_template.trim().is_empty() || draft.title_template.chars().count() > 300 {
        errors.push(FieldError::new(
            "title_template",
            "Give the task a title (up to 300 characters).",
        ));
    }
    if !(0..=365).contains(&draft.due_in_days) {
        errors.push(FieldError::new("due_in_days", "Between 0 and 365 days."));
    }
    let stages = crate::records::stages::list(tx).await?;
    if !stages.iter().any(|s| s.key == draft.stage) {
        errors.push(FieldError::new("stage", "Choose one of your deal stages."));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation(errors))
    }
}

pub async fn create(tx: &mut TenantTx, draft: &Draft, by: Option<Uuid>) -> Result<Uuid, Error> {
    check(tx, draft).await?;
    let tenant = tx.tenant_id();
    let id = Uuid::now_v7();
    sqlx::query!(
        "INSERT INTO automation_rules (id, tenant_id, name, stage, title_template, due_in_days,
                                       created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        id,
        tenant.0,
        draft.name.trim(),
        draft.stage,
        draft.title_template.trim(),
        draft.due_in_days,
        by
    )
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

pub async fn set_enabled(tx: &mut TenantTx, id: Uuid, enabled: bool) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let done = sqlx::query!(
        "UPDATE automation_rules SET enabled = $3 WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        id,
        enabled
    )
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

pub async fn delete(tx: &mut TenantTx, id: Uuid) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let done = sqlx::query!(
        "DELETE FROM automation_rules WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        id
    )
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// Fills `{title}`, `{stage}`, `{value}`, `{currency}` and `{owner_id}` from the deal; unknown
/// placeholders stay as written.
pub fn render(template: &str, deal: &Map<String, Json>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                let name = after[..end].trim().trim_start_matches("deal.");
                match deal.get(name) {
                    Some(Json::String(s)) => out.push_str(s),
                    Some(Json::Null) | None if is_field(name) => {}
                    Some(other) if !other.is_null() => out.push_str(&other.to_string()),
                    _ => {
                        out.push('{');
                        out.push_str(&after[..end]);
                        out.push('}');
                    }
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_field(name: &str) -> bool {
    [
        "title",
        "stage",
        "value",
        "currency",
        "owner_id",
        "close_date",
    ]
    .contains(&name)
}

/// After inbound items were applied: fires the rules of deals that entered a stage.
pub async fn after_inbound(tx: &mut TenantTx, items: &[Item]) -> Result<(), Error> {
    for item in items {
        if item.object != Kind::Deal {
            continue;
        }
        let (Some(deal), Some(changes)) = (item.record_id, &item.changes) else {
            continue;
        };
        let Some(stage) = changes
            .get("stage")
            .and_then(|c| c.get("after"))
            .and_then(Json::as_str)
        else {
            continue;
        };
        entered(tx, deal, stage).await?;
    }
    Ok(())
}

/// A deal is now in `stage` after a change that moved it there: run the stage's rules.
pub async fn entered(tx: &mut TenantTx, deal: Uuid, stage: &str) -> Result<Vec<Uuid>, Error> {
    let tenant = tx.tenant_id();
    let rules = sqlx::query!(
        "SELECT id, title_template, due_in_days FROM automation_rules
         WHERE tenant_id = $1 AND stage = $2 AND enabled ORDER BY created_at, id",
        tenant.0,
        stage
    )
    .fetch_all(&mut **tx)
    .await?;
    if rules.is_empty() {
        return Ok(vec![]);
    }
    let Some(stored) = store::fetch(tx, Kind::Deal, deal).await? else {
        return Ok(vec![]);
    };
    let fields = stored.fields.to_json(Kind::Deal);
    let mut created = Vec::new();
    for rule in rules {
        let task = Uuid::now_v7();
        let fired = sqlx::query_scalar!(
            "INSERT INTO automation_firings (tenant_id, rule_id, deal_id, entry, task_id)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING task_id",
            tenant.0,
            rule.id,
            deal,
            stored.version,
            task
        )
        .fetch_optional(&mut **tx)
        .await?;
        if fired.is_none() {
            continue;
        }
        let due = Utc::now() + Duration::days(i64::from(rule.due_in_days));
        let mut body = Map::new();
        let mut title = render(&rule.title_template, &fields);
        if title.trim().is_empty() {
            title = "Follow up".into();
        }
        body.insert(
            "title".into(),
            json!(title.chars().take(300).collect::<String>()),
        );
        body.insert("due_at".into(), json!(due.to_rfc3339()));
        body.insert("status".into(), json!("open"));
        if let Some(owner) = fields.get("owner_id").filter(|v| !v.is_null()) {
            body.insert("assignee_id".into(), owner.clone());
        }
        body.insert("linked".into(), json!({ "type": "deal", "id": deal }));
        let parsed = service::validate(tx, Kind::Task, &body).await?;
        let written = service::create_with_id(
            tx,
            Kind::Task,
            task,
            &parsed,
            &format!("automation:{}", rule.id),
        )
        .await?;
        created.push(written.record.id);
        metrics::counter!("ferry_automation_tasks_created_total").increment(1);
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_from_the_deal() {
        let deal = json!({"title": "Acme renewal", "stage": "qualified", "value": "1200.00", "owner_id": null});
        let deal = deal.as_object().cloned().unwrap_or_default();
        assert_eq!(
            render("Call about {title}", &deal),
            "Call about Acme renewal"
        );
        assert_eq!(
            render("{deal.title} ({stage})", &deal),
            "Acme renewal (qualified)"
        );
        assert_eq!(render("Owner: {owner_id}.", &deal), "Owner: .");
        assert_eq!(render("{unknown} stays", &deal), "{unknown} stays");
        assert_eq!(render("open { brace", &deal), "open { brace");
    }
}
