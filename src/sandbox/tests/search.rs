use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::support::*;

fn ids(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn filters_operators_and_sorting() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    for (email, first, company) in [
        ("ann@hubspot.com", "Ann", "Acme"),
        ("bob@example.com", "Bob", "Acme"),
        ("cat@hubspot.com", "Cat", ""),
        ("dan@example.com", "Dan", "Globex"),
    ] {
        let mut props = json!({ "email": email, "firstname": first });
        if !company.is_empty() {
            props["company"] = json!(company);
        }
        let (status, _) = sandbox
            .post(
                &token,
                "/crm/v3/objects/contacts",
                json!({ "properties": props }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let search = |body: Value| sandbox.post(&token, "/crm/v3/objects/contacts/search", body);
    let filter = |name: &str, op: &str, value: Value| json!({ "filterGroups": [{ "filters": [{ "propertyName": name, "operator": op, "value": value }] }], "properties": ["email", "firstname"] });

    let (status, body) = search(filter("email", "EQ", json!("ANN@hubspot.com"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 1);
    assert_eq!(body["results"][0]["properties"]["firstname"], "Ann");

    let (_, body) = search(filter("email", "CONTAINS_TOKEN", json!("*@hubspot.com"))).await;
    assert_eq!(body["total"], 2);
    let (_, body) = search(filter("company", "HAS_PROPERTY", Value::Null)).await;
    assert_eq!(body["total"], 3);
    let (_, body) = search(filter("company", "NOT_HAS_PROPERTY", Value::Null)).await;
    assert_eq!(body["total"], 1);
    let (_, body) = search(filter("company", "NEQ", json!("acme"))).await;
    assert_eq!(
        body["total"], 2,
        "NEQ includes records without the property"
    );
    let (_, body) = search(json!({ "filterGroups": [{ "filters": [{ "propertyName": "firstname", "operator": "IN", "values": ["ann", "Dan"] }] }] })).await;
    assert_eq!(body["total"], 2);
    let (_, body) = search(json!({ "filterGroups": [{ "filters": [{ "propertyName": "firstname", "operator": "NOT_IN", "values": ["ann", "Dan"] }] }] })).await;
    assert_eq!(body["total"], 2);
    let (_, body) = search(json!({ "filterGroups": [{ "filters": [{ "propertyName": "hs_object_id", "operator": "BETWEEN", "value": "2", "highValue": "3" }] }] })).await;
    assert_eq!(ids(&body), vec!["2", "3"]);
    let (_, body) = search(json!({ "filterGroups": [{ "filters": [{ "propertyName": "hs_object_id", "operator": "GT", "value": "1" }, { "propertyName": "company", "operator": "EQ", "value": "Acme" }] }] })).await;
    assert_eq!(ids(&body), vec!["2"], "filters in a group are ANDed");
    let (_, body) = search(json!({ "filterGroups": [
        { "filters": [{ "propertyName": "firstname", "operator": "EQ", "value": "Ann" }] },
        { "filters": [{ "propertyName": "firstname", "operator": "EQ", "value": "Dan" }] }
    ] }))
    .await;
    assert_eq!(ids(&body), vec!["1", "4"], "groups are ORed");
    let (_, body) = search(json!({ "sorts": [{ "propertyName": "firstname", "direction": "DESCENDING" }], "properties": ["firstname"] })).await;
    let names: Vec<&str> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["properties"]["firstname"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["Dan", "Cat", "Bob", "Ann"]);
    let (_, body) = search(json!({ "query": "globex" })).await;
    assert_eq!(ids(&body), vec!["4"]);
}

#[tokio::test]
async fn hubspots_limits_are_enforced() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let f = json!({ "propertyName": "email", "operator": "HAS_PROPERTY" });
    let bad = [
        json!({ "filterGroups": vec![json!({ "filters": [f.clone()] }); 6] }),
        json!({ "filterGroups": [{ "filters": vec![f.clone(); 7] }] }),
        json!({ "filterGroups": vec![json!({ "filters": vec![f.clone(); 5] }); 4] }),
        json!({ "sorts": [{ "propertyName": "email" }, { "propertyName": "firstname" }] }),
        json!({ "limit": 201 }),
        json!({ "filterGroups": [{ "filters": [{ "propertyName": "nosuch", "operator": "EQ", "value": "x" }] }] }),
        json!({ "filterGroups": [{ "filters": [{ "propertyName": "email", "operator": "LIKE", "value": "x" }] }] }),
        json!({ "after": "10000" }),
    ];
    for body in bad {
        let (status, answer) = sandbox
            .post(&token, "/crm/v3/objects/contacts/search", body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        assert_eq!(answer["category"], "VALIDATION_ERROR");
    }
    let (status, _) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/search",
            json!({ "limit": 200 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn paging_stops_at_ten_thousand_and_a_sync_restarts_from_the_last_timestamp() {
    let mut args = args();
    args.seed_contacts = 10_050;
    let sandbox = spawn_with(args).await;
    let token = sandbox.token().await;
    let query = |after: Option<&str>, since: Option<&str>| {
        let mut body = json!({
            "sorts": [{ "propertyName": "lastmodifieddate", "direction": "ASCENDING" }],
            "properties": ["lastmodifieddate"],
            "limit": 200,
        });
        if let Some(since) = since {
            body["filterGroups"] = json!([{ "filters": [{ "propertyName": "lastmodifieddate", "operator": "GTE", "value": since }] }]);
        }
        if let Some(after) = after {
            body["after"] = json!(after);
        }
        body
    };
    let (status, first) = sandbox
        .post(&token, "/crm/v3/objects/contacts/search", query(None, None))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["total"], 10_050);
    let (status, last) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/search",
            query(Some("9800"), None),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(last["results"].as_array().expect("results").len(), 200);
    assert_eq!(last["paging"]["next"]["after"], "10000");
    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/search",
            query(Some("10000"), None),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The documented way past the cap: a new query from the last timestamp seen.
    let results = last["results"].as_array().expect("results");
    let last_seen = results.last().expect("a record")["properties"]["lastmodifieddate"]
        .as_str()
        .expect("date");
    let ms = crate::sandbox::schema::parse_ms(last_seen)
        .expect("iso date")
        .to_string();
    let (status, rest) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/search",
            query(None, Some(&ms)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let total = rest["total"].as_u64().expect("total");
    assert!(
        (50..=60).contains(&total),
        "the rest, plus the boundary: {total}"
    );
    // Ascending order holds across the page.
    let dates: Vec<i64> = rest["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            crate::sandbox::schema::parse_ms(
                r["properties"]["lastmodifieddate"].as_str().expect("date"),
            )
            .expect("ms")
        })
        .collect();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn search_sees_writes_only_after_the_lag() {
    let mut args = args();
    args.search_lag_ms = 300;
    let sandbox = spawn_with(args).await;
    let token = sandbox.token().await;
    let id = sandbox
        .create_contact(&token, "late@example.com", "Late")
        .await;
    let body = json!({ "filterGroups": [{ "filters": [{ "propertyName": "email", "operator": "EQ", "value": "late@example.com" }] }] });
    let (_, now) = sandbox
        .post(&token, "/crm/v3/objects/contacts/search", body.clone())
        .await;
    assert_eq!(now["total"], 0, "not yet indexed");
    let (status, _) = sandbox
        .get(&token, &format!("/crm/v3/objects/contacts/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "reads by id are immediate");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, later) = sandbox
        .post(&token, "/crm/v3/objects/contacts/search", body)
        .await;
    assert_eq!(later["total"], 1);
    assert_eq!(later["results"][0]["id"], id.as_str());
}

#[tokio::test]
async fn archived_records_never_appear_in_search() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let id = sandbox
        .create_contact(&token, "bye@example.com", "Bye")
        .await;
    sandbox
        .call(
            reqwest::Method::DELETE,
            &token,
            &format!("/crm/v3/objects/contacts/{id}"),
            None,
        )
        .await;
    let (_, body) = sandbox
        .post(&token, "/crm/v3/objects/contacts/search", json!({}))
        .await;
    assert_eq!(body["total"], 0);
}

/// Paging through one query counts its matches once per snapshot: later pages reuse the count
/// (and stop scanning at the end of the page), and a write that becomes visible counts again.
#[tokio::test]
async fn paging_reuses_the_count_until_a_write_becomes_visible() {
    let mut args = args();
    args.search_lag_ms = 0;
    let sandbox = spawn_with(args).await;
    let token = sandbox.token().await;
    let mut created = Vec::new();
    for n in 0..5 {
        let id = sandbox
            .create_contact(&token, &format!("page{n}@example.com"), "Page")
            .await;
        created.push(id);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let page = |after: Option<&str>| {
        let mut body = json!({
            "filterGroups": [{ "filters": [{ "propertyName": "lastmodifieddate", "operator": "GTE", "value": "0" }] }],
            "sorts": [{ "propertyName": "lastmodifieddate", "direction": "ASCENDING" }],
            "limit": 2
        });
        if let Some(after) = after {
            body["after"] = json!(after);
        }
        sandbox.post(&token, "/crm/v3/objects/contacts/search", body)
    };
    let (_, first) = page(None).await;
    assert_eq!(first["total"], 5);
    assert_eq!(ids(&first), created[..2]);
    let (_, second) = page(Some("2")).await;
    assert_eq!(second["total"], 5);
    assert_eq!(ids(&second), created[2..4]);
    assert_eq!(second["paging"]["next"]["after"], "4");
    let (_, last) = page(Some("4")).await;
    assert_eq!(ids(&last), created[4..]);
    assert!(last.get("paging").is_none(), "{last}");

    let newest = sandbox
        .create_contact(&token, "page5@example.com", "Page")
        .await;
    let (_, again) = page(Some("4")).await;
    assert_eq!(again["total"], 6, "the new record was not counted");
    assert_eq!(ids(&again), [created[4].clone(), newest]);
}
