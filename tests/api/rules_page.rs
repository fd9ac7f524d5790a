//! `/settings/rules`: automation rules on a page. Admins create, enable, disable and delete with
//! field errors beside the fields; others read; another tenant gets 404; every change is audited;
//! and a rule made on the page makes a task when a deal moves in the sandbox CRM.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::connection_detail::audited;
use crate::helpers::{eventually, location, spawn_app};
use crate::sync::Synced;
use ferry::tenancy::TenantId;

fn rule_id(html: &str, name: &str) -> Uuid {
    let row = html
        .split("<tr id=\"rule-")
        .skip(1)
        .find(|row| row.contains(name))
        .unwrap_or_else(|| panic!("rule {name} listed: {html}"));
    row[..36].parse().expect("rule id")
}

async fn tenant_of(app: &crate::helpers::TestApp, email: &str) -> TenantId {
    TenantId(
        sqlx::query_scalar("SELECT tenant_id FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(app.pool())
            .await
            .expect("tenant"),
    )
}

#[tokio::test]
async fn admins_manage_rules_with_errors_beside_the_fields_and_every_change_audited() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let html = owner.page("/settings/rules").await;
    assert!(html.contains("id=\"no-rules\""), "{html}");
    assert!(
        html.contains("<option value=\"won\""),
        "the tenant's stages are offered"
    );
    assert!(
        html.contains("<code>{title}</code>"),
        "placeholders are explained"
    );
    assert!(
        html.contains("aria-current=\"page\">Rules</a>"),
        "in the nav"
    );

    let answer = owner
        .post_form(
            "/settings/rules",
            &[
                ("name", ""),
                ("stage", "nowhere"),
                ("title_template", "Call {title}"),
                ("due_in_days", "soon"),
            ],
        )
        .await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = answer.text().await.expect("html");
    for (id, message) in [
        ("rule-name-error", "Give the rule a name"),
        ("rule-stage-error", "Choose one of your deal stages."),
        ("rule-due-error", "Enter a whole number of days"),
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id}: {html}");
        assert!(html.contains(message), "{message}");
    }
    assert!(!html.contains("id=\"rule-title-error\""));
    assert!(
        html.contains("value=\"Call {title}\""),
        "typed values are kept"
    );
    assert!(html.contains("value=\"soon\""));

    let answer = owner
        .post_form(
            "/settings/rules",
            &[
                ("name", "Kick-off call"),
                ("stage", "won"),
                ("title_template", "Kick-off call for {title}"),
                ("due_in_days", "2"),
            ],
        )
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&answer), "/settings/rules");
    let html = owner.page("/settings/rules").await;
    assert!(html.contains("Rule “Kick-off call” created"));
    assert!(html.contains("Closed won"), "the stage's label");
    assert!(html.contains("in 2 days"));
    let id = rule_id(&html, "Kick-off call");

    let answer = owner
        .post_form(&format!("/settings/rules/{id}/disable"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM automation_rules WHERE id = $1")
        .bind(id)
        .fetch_one(app.pool())
        .await
        .expect("rule");
    assert!(!enabled);
    assert!(
        owner
            .page("/settings/rules")
            .await
            .contains(&format!("/settings/rules/{id}/enable"))
    );
    let answer = owner
        .post_form(&format!("/settings/rules/{id}/enable"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let answer = owner
        .post_form(&format!("/settings/rules/{id}/delete"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert!(
        owner
            .page("/settings/rules")
            .await
            .contains("id=\"no-rules\"")
    );

    let actions = audited(&app, tenant_of(&app, "jane@acme.test").await).await;
    for action in [
        "automation_rule.created",
        "automation_rule.disabled",
        "automation_rule.enabled",
        "automation_rule.deleted",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
}

#[tokio::test]
async fn others_read_rules_and_another_tenant_gets_404() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let answer = owner
        .post_form(
            "/settings/rules",
            &[
                ("name", "Proposal follow-up"),
                ("stage", "proposal"),
                ("title_template", "Chase {title}"),
                ("due_in_days", "3"),
            ],
        )
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let id = rule_id(&owner.page("/settings/rules").await, "Proposal follow-up");

    for role in ["operator", "viewer"] {
        let member = app.member(&owner, &format!("{role}@acme.test"), role).await;
        let html = member.page("/settings/rules").await;
        assert!(html.contains("Proposal follow-up"), "{role} reads");
        assert!(
            !html.contains("action=\"/settings/rules\""),
            "{role}: no form"
        );
        assert!(
            !html.contains(&format!("/settings/rules/{id}/")),
            "{role}: no buttons"
        );
        for path in [
            "/settings/rules".to_string(),
            format!("/settings/rules/{id}/disable"),
            format!("/settings/rules/{id}/enable"),
            format!("/settings/rules/{id}/delete"),
        ] {
            let answer = member
                .post_form(
                    &path,
                    &[
                        ("name", "x"),
                        ("stage", "won"),
                        ("title_template", "x"),
                        ("due_in_days", "1"),
                    ],
                )
                .await;
            assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{role} {path}");
        }
    }

    let other = app.owner("Globex", "hank@globex.test").await;
    let theirs = other.page("/settings/rules").await;
    assert!(!theirs.contains("Proposal follow-up"));
    assert!(theirs.contains("id=\"no-rules\""));
    for action in ["disable", "enable", "delete"] {
        let answer = other
            .post_form(&format!("/settings/rules/{id}/{action}"), &[])
            .await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{action}");
    }
    let (count, enabled): (i64, bool) =
        sqlx::query_as("SELECT count(*), bool_and(enabled) FROM automation_rules WHERE id = $1")
            .bind(id)
            .fetch_one(app.pool())
            .await
            .expect("rule");
    assert_eq!((count, enabled), (1, true), "untouched");
}

#[tokio::test]
async fn a_rule_made_on_the_page_creates_a_task_when_a_deal_is_won_in_the_crm() {
    let synced = Synced::start(0, 6, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let answer = synced
        .owner
        .post_form(
            "/settings/rules",
            &[
                ("name", "Kick-off call"),
                ("stage", "won"),
                ("title_template", "Kick-off call for {title}"),
                ("due_in_days", "2"),
            ],
        )
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);

    let (status, _) = synced
        .crm(
            reqwest::Method::PATCH,
            "/crm/v3/objects/deals/3",
            Some(json!({"properties": {"dealstage": "closedwon"}})),
        )
        .await;
    assert_eq!(status, 200);
    let deal: Uuid = sqlx::query_scalar(
        "SELECT record_id FROM external_links WHERE tenant_id = $1 AND key = 'hubspot:deal:3'",
    )
    .bind(synced.tenant.0)
    .fetch_one(synced.pool())
    .await
    .expect("deal link");
    let made = eventually(Duration::from_secs(30), || async {
        let titles: Vec<String> =
            sqlx::query_scalar("SELECT title FROM tasks WHERE tenant_id = $1 AND linked_id = $2")
                .bind(synced.tenant.0)
                .bind(deal)
                .fetch_all(synced.pool())
                .await
                .expect("tasks");
        titles.len() == 1 && titles[0].starts_with("Kick-off call for ")
    })
    .await;
    assert!(made, "no task: {:?}", synced.letters().await);
}
