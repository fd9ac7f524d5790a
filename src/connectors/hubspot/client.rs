//! HubSpot CRM API client, coded against `contracts/hubspot.md`: search with paging, list, batch
//! read/create/update/upsert/archive, properties (cached), deal pipelines, associations. Every call
//! spends the account's shared budget first, has a timeout, and fails with a classified error.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use url::Url;

use super::limiter::{Bucket, LimitError, Limiter, Policy};
use crate::connectors::http::without_url;

/// How long discovered properties are reused.
pub const PROPERTIES_TTL: Duration = Duration::from_secs(10 * 60);
/// Every call gives up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Batch endpoints take at most 100 inputs.
pub const BATCH_LIMIT: usize = 100;
/// Search pages hold at most 200 results, and a query at most 10,000.
pub const SEARCH_PAGE_LIMIT: u32 = 200;
pub const SEARCH_RESULT_CAP: u64 = 10_000;

/// How a failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network, timeout, 5xx, 423, 429: retry with backoff.
    Transient,
    /// 400/404/409/422: the request is wrong; retrying cannot help (dead-letter it).
    Permanent,
    /// 401 with a fresh token, 403 MISSING_SCOPES: the connection needs the tenant.
    Auth,
}

/// HubSpot's error body (every member optional).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub status: Option<String>,
    pub message: Option<String>,
    pub category: Option<String>,
    pub correlation_id: Option<String>,
    pub error_type: Option<String>,
    pub policy_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("HubSpot answered {status}: {message}")]
    Status {
        status: u16,
        class: ErrorClass,
        message: String,
        body: Box<ErrorBody>,
        retry_after: Option<Duration>,
    },
    #[error("HubSpot unreachable: {0}")]
    Network(String),
    #[error("unexpected answer from HubSpot: {0}")]
    Decode(String),
    #[error(transparent)]
    Limited(#[from] LimitError),
}

impl ApiError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::Status { class, .. } => *class,
            ApiError::Network(_) | ApiError::Limited(_) => ErrorClass::Transient,
            // A body we cannot read is usually a gateway page: try again later.
            ApiError::Decode(_) => ErrorClass::Transient,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Classifies an HTTP status with HubSpot's body.
pub fn classify(status: StatusCode, body: &ErrorBody) -> ErrorClass {
    match status.as_u16() {
        401 => ErrorClass::Auth,
        403 if body.category.as_deref() == Some("MISSING_SCOPES") => ErrorClass::Auth,
        423 | 429 => ErrorClass::Transient,
        s if s >= 500 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// A CRM record: ids and property values are strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub properties: BTreeMap<String, Option<String>>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    #[serde(default)]
    pub archived: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Filter {
    #[serde(rename = "propertyName")]
    pub property: String,
    pub operator: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One search request (one sort, at most 5 filter groups).
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub filter_groups: Vec<Vec<Filter>>,
    pub sort: Option<(String, bool)>,
    pub properties: Vec<String>,
    pub limit: u32,
    pub after: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SearchPage {
    pub total: u64,
    pub results: Vec<Record>,
    pub after: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub results: Vec<Record>,
    pub after: Option<String>,
}

/// How many times a call refused by a per-second 429 is sent again before the error is returned.
const SECONDLY_RETRIES: u32 = 3;
/// A call is sent again in place only while the pause it waits out is at most this long (longer
/// pauses, after repeated 429s, go back to the caller's retry policy).
const SECONDLY_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Why one attempt of a call failed: a per-second 429 (with the pause it set) or anything else.
enum Refused {
    Secondly(ApiError, Duration),
    Other(ApiError),
}

/// The outcome of a batch call: what succeeded, and per-input errors (207).
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    pub results: Vec<Record>,
    /// For upserts: which results were created.
    pub created: Vec<bool>,
    pub errors: Vec<Json>,
}

/// The body of a batch call: `{"inputs": [...]}`.
#[derive(Serialize)]
struct Inputs<'a, T> {
    inputs: &'a [T],
}

/// A batch input naming a record: `{"id": "..."}`.
#[derive(Serialize)]
struct Id<'a> {
    id: &'a str,
}

/// The body of a batch read. HubSpot's published spec marks `propertiesWithHistory` required;
/// an empty list asks for no history (the answer is what it was without it).
#[derive(Serialize)]
struct ReadBody<'a> {
    inputs: Vec<Id<'a>>,
    properties: &'a [String],
    #[serde(rename = "propertiesWithHistory")]
    properties_with_history: &'a [String],
}

impl<'a> ReadBody<'a> {
    fn new(ids: &'a [String], properties: &'a [String]) -> ReadBody<'a> {
        ReadBody {
            inputs: ids.iter().map(|id| Id { id }).collect(),
            properties,
            properties_with_history: &[],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "idProperty", skip_serializing_if = "Option::is_none")]
    pub id_property: Option<String>,
    pub properties: BTreeMap<String, String>,
}

/// A property as the schema endpoint describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Property {
    pub name: String,
    #[serde(default)]
    pub label: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub field_type: String,
    #[serde(default)]
    pub options: Vec<PropertyOption>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyOption {
    pub label: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pipeline {
    pub id: String,
    pub label: String,
    #[serde(default)]
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    pub id: String,
    pub label: String,
    #[serde(default)]
    pub display_order: i64,
}

/// Association type ids (v4, HubSpot-defined).
pub mod association {
    pub const TASK_TO_CONTACT: u32 = 204;
    pub const CONTACT_TO_TASK: u32 = 203;
    pub const TASK_TO_DEAL: u32 = 216;
    pub const DEAL_TO_TASK: u32 = 215;
    pub const CONTACT_TO_DEAL: u32 = 4;
    pub const DEAL_TO_CONTACT: u32 = 3;
}

type PropertyCache = Mutex<HashMap<(String, String, String), (Instant, Vec<Property>)>>;

fn property_cache() -> &'static PropertyCache {
    static CACHE: OnceLock<PropertyCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A client for one account, holding a valid access token.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    limiter: Limiter,
    account: String,
    token: SecretString,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(
        http: reqwest::Client,
        base: Url,
        limiter: Limiter,
        account: &str,
        token: SecretString,
    ) -> Client {
        Client {
            http,
            base,
            limiter,
            account: account.to_string(),
            token,
        }
    }

    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        bucket: Bucket,
    ) -> Result<(StatusCode, T), ApiError> {
        let mut refused = 0;
        loop {
            match self.call_once(method.clone(), path, body, bucket).await {
                // A per-second 429 costs its pause, not a failed job: the call waits it out
                // (inside `acquire`) and goes again, a few times at most. HubSpot did not act on
                // a refused request, so resending a write is safe.
                Err(Refused::Secondly(err, pause))
                    if refused < SECONDLY_RETRIES && pause <= SECONDLY_RETRY_PAUSE =>
                {
                    refused += 1;
                    tracing::debug!(refused, error = %err, "search refused for the second; retrying after the pause");
                }
                Err(Refused::Secondly(err, _) | Refused::Other(err)) => return Err(err),
                Ok(answer) => return Ok(answer),
            }
        }
    }

    async fn call_once<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        bucket: Bucket,
    ) -> Result<(StatusCode, T), Refused> {
        let slot = self
            .limiter
            .acquire(&self.account, bucket)
            .await
            .map_err(|e| Refused::Other(e.into()))?;
        let url = format!("{}{path}", self.base.as_str().trim_end_matches('/'));
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.token.expose_secret())
            .timeout(CALL_TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        let network = |e: reqwest::Error| Refused::Other(ApiError::Network(without_url(&e)));
        let response = request.send().await.map_err(network)?;
        let status = response.status();
        // HubSpot has counted the call by now: its slot counts from here if that is sooner.
        let refused = status == StatusCode::TOO_MANY_REQUESTS;
        if let Err(err) = self.limiter.answered(&slot, refused).await {
            tracing::debug!(error = %err, "could not note a call's answer");
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let limit_headers = response
            .headers()
            .keys()
            .any(|name| name.as_str().starts_with("x-hubspot-ratelimit-"));
        let bytes = response.bytes().await.map_err(network)?;
        if status.is_success() {
            let value = if bytes.is_empty() {
                b"null".as_slice()
            } else {
                &bytes[..]
            };
            let parsed = serde_json::from_slice(value)
                .map_err(|e| Refused::Other(ApiError::Decode(e.to_string())))?;
            return Ok((status, parsed));
        }
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        let mut policy = None;
        let mut pause = Duration::ZERO;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let read = Policy::of_429(
                body.policy_name.as_deref(),
                bucket == Bucket::Search,
                limit_headers,
            );
            policy = Some(read);
            match self
                .limiter
                .penalize(&self.account, read, retry_after)
                .await
            {
                Ok(set) => pause = set,
                Err(err) => tracing::warn!(error = %err, "could not record HubSpot's 429"),
            }
        }
        let class = classify(status, &body);
        let err = ApiError::Status {
            status: status.as_u16(),
            class,
            message: body.message.clone().unwrap_or_else(|| status.to_string()),
            body: Box::new(body),
            retry_after,
        };
        Err(match policy {
            Some(Policy::Secondly) => Refused::Secondly(err, pause),
            _ => Refused::Other(err),
        })
    }

    /// One page of a search.
    pub async fn search(&self, object: &str, search: &Search) -> Result<SearchPage, ApiError> {
        let groups: Vec<Json> = search
            .filter_groups
            .iter()
            .map(|filters| json!({ "filters": filters }))
            .collect();
        let mut body = json!({
            "filterGroups": groups,
            "properties": search.properties,
            "limit": search.limit.clamp(1, SEARCH_PAGE_LIMIT),
        });
        if let Some((property, ascending)) = &search.sort {
            body["sorts"] = json!([{ "propertyName": property, "direction": if *ascending { "ASCENDING" } else { "DESCENDING" } }]);
        }
        if let Some(after) = &search.after {
            body["after"] = json!(after);
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            total: u64,
            #[serde(default)]
            results: Vec<Record>,
            paging: Option<Paging>,
        }
        let (_, answer): (_, Answer) = self
            .call(
                Method::POST,
                &format!("/crm/v3/objects/{object}/search"),
                Some(&body),
                Bucket::Search,
            )
            .await?;
        Ok(SearchPage {
            total: answer.total,
            results: answer.results,
            after: answer.paging.and_then(|p| p.next).map(|n| n.after),
        })
    }

    /// One page of a plain listing.
    pub async fn list(
        &self,
        object: &str,
        limit: u32,
        after: Option<&str>,
        properties: &[String],
        archived: bool,
    ) -> Result<Page, ApiError> {
        let mut path = format!(
            "/crm/v3/objects/{object}?limit={}&archived={archived}",
            limit.clamp(1, 100)
        );
        if !properties.is_empty() {
            path.push_str("&properties=");
            path.push_str(
                &url::form_urlencoded::byte_serialize(properties.join(",").as_bytes())
                    .collect::<String>(),
            );
        }
        if let Some(after) = after {
            path.push_str("&after=");
            path.push_str(
                &url::form_urlencoded::byte_serialize(after.as_bytes()).collect::<String>(),
            );
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            results: Vec<Record>,
            paging: Option<Paging>,
        }
        let (_, answer): (_, Answer) = self
            .call(Method::GET, &path, None::<&Json>, Bucket::General)
            .await?;
        Ok(Page {
            results: answer.results,
            after: answer.paging.and_then(|p| p.next).map(|n| n.after),
        })
    }

    /// A batch call; `body` is serialised straight into the request (no `Json` copy of it).
    async fn batch<B: Serialize + ?Sized>(
        &self,
        object: &str,
        action: &str,
        body: &B,
    ) -> Result<BatchOutcome, ApiError> {
        #[derive(Deserialize)]
        struct Item {
            #[serde(flatten)]
            record: Record,
            #[serde(default)]
            new: Option<bool>,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            results: Vec<Item>,
            #[serde(default)]
            errors: Vec<Json>,
        }
        let (_, answer): (_, Option<Answer>) = self
            .call(
                Method::POST,
                &format!("/crm/v3/objects/{object}/batch/{action}"),
                Some(body),
                Bucket::General,
            )
            .await?;
        let answer = answer.unwrap_or(Answer {
            results: vec![],
            errors: vec![],
        });
        Ok(BatchOutcome {
            created: answer
                .results
                .iter()
                .map(|i| i.new.unwrap_or(false))
                .collect(),
            results: answer.results.into_iter().map(|i| i.record).collect(),
            errors: answer.errors,
        })
    }

    fn check_batch_size(len: usize) -> Result<(), ApiError> {
        if len > BATCH_LIMIT {
            return Err(ApiError::Status {
                status: 400,
                class: ErrorClass::Permanent,
                message: format!("batch of {len} exceeds HubSpot's {BATCH_LIMIT} inputs"),
                body: Box::default(),
                retry_after: None,
            });
        }
        Ok(())
    }

    pub async fn batch_read(
        &self,
        object: &str,
        ids: &[String],
        properties: &[String],
    ) -> Result<BatchOutcome, ApiError> {
        Self::check_batch_size(ids.len())?;
        self.batch(object, "read", &ReadBody::new(ids, properties))
            .await
    }

    pub async fn batch_create(
        &self,
        object: &str,
        inputs: &[BatchInput],
    ) -> Result<BatchOutcome, ApiError> {
        Self::check_batch_size(inputs.len())?;
        #[derive(Serialize)]
        struct Create<'a> {
            properties: &'a BTreeMap<String, String>,
        }
        let inputs: Vec<Create<'_>> = inputs
            .iter()
            .map(|i| Create {
                properties: &i.properties,
            })
            .collect();
        self.batch(object, "create", &Inputs { inputs: &inputs })
            .await
    }

    pub async fn batch_update(
        &self,
        object: &str,
        inputs: &[BatchInput],
    ) -> Result<BatchOutcome, ApiError> {
        Self::check_batch_size(inputs.len())?;
        self.batch(object, "update", &Inputs { inputs }).await
    }

    /// Upsert by a unique property (`email` for contacts).
    pub async fn batch_upsert(
        &self,
        object: &str,
        inputs: &[BatchInput],
    ) -> Result<BatchOutcome, ApiError> {
        Self::check_batch_size(inputs.len())?;
        self.batch(object, "upsert", &Inputs { inputs }).await
    }

    pub async fn batch_archive(&self, object: &str, ids: &[String]) -> Result<(), ApiError> {
        Self::check_batch_size(ids.len())?;
        let inputs: Vec<Id<'_>> = ids.iter().map(|id| Id { id }).collect();
        self.batch(object, "archive", &Inputs { inputs: &inputs })
            .await
            .map(|_| ())
    }

    /// The object's properties, from a ten-minute cache per account.
    pub async fn properties(&self, object: &str) -> Result<Vec<Property>, ApiError> {
        let key = (
            self.base.to_string(),
            self.account.clone(),
            object.to_string(),
        );
        if let Ok(cache) = property_cache().lock()
            && let Some((at, properties)) = cache.get(&key)
            && at.elapsed() < PROPERTIES_TTL
        {
            return Ok(properties.clone());
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            results: Vec<Property>,
        }
        let (_, answer): (_, Answer) = self
            .call(
                Method::GET,
                &format!("/crm/v3/properties/{object}"),
                None::<&Json>,
                Bucket::General,
            )
            .await?;
        if let Ok(mut cache) = property_cache().lock() {
            cache.insert(key, (Instant::now(), answer.results.clone()));
        }
        Ok(answer.results)
    }

    pub async fn deal_pipelines(&self) -> Result<Vec<Pipeline>, ApiError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            results: Vec<Pipeline>,
        }
        let (_, answer): (_, Answer) = self
            .call(
                Method::GET,
                "/crm/v3/pipelines/deals",
                None::<&Json>,
                Bucket::General,
            )
            .await?;
        Ok(answer.results)
    }

    /// Associates two records with HubSpot's default association type.
    pub async fn associate_default(
        &self,
        from: &str,
        from_id: &str,
        to: &str,
        to_id: &str,
    ) -> Result<(), ApiError> {
        let path = format!("/crm/v4/objects/{from}/{from_id}/associations/default/{to}/{to_id}");
        let _: (_, Json) = self
            .call(Method::PUT, &path, None::<&Json>, Bucket::General)
            .await?;
        Ok(())
    }

    /// The ids `ids` of `from` are associated with, in `to` (at most 1,000 per call).
    pub async fn associations(
        &self,
        from: &str,
        to: &str,
        ids: &[String],
    ) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
        if ids.len() > 1000 {
            return Err(ApiError::Status {
                status: 400,
                class: ErrorClass::Permanent,
                message: "association batch read takes at most 1,000 ids".into(),
                body: Box::default(),
                retry_after: None,
            });
        }
        let inputs: Vec<Id<'_>> = ids.iter().map(|id| Id { id }).collect();
        let (_, answer): (_, Json) = self
            .call(
                Method::POST,
                &format!("/crm/v4/associations/{from}/{to}/batch/read"),
                Some(&Inputs { inputs: &inputs }),
                Bucket::General,
            )
            .await?;
        let mut out = BTreeMap::new();
        for result in answer["results"].as_array().into_iter().flatten() {
            let from_id = match &result["from"]["id"] {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                _ => continue,
            };
            let targets = result["to"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| match &t["toObjectId"] {
                    Json::String(s) => Some(s.clone()),
                    Json::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            out.insert(from_id, targets);
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
struct Paging {
    next: Option<Next>,
}

#[derive(Deserialize)]
struct Next {
    after: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_as_the_contract_says() {
        let none = ErrorBody::default();
        let scopes = ErrorBody {
            category: Some("MISSING_SCOPES".into()),
            ..ErrorBody::default()
        };
        for (status, body, class) in [
            (401, &none, ErrorClass::Auth),
            (403, &scopes, ErrorClass::Auth),
            (403, &none, ErrorClass::Permanent),
            (400, &none, ErrorClass::Permanent),
            (404, &none, ErrorClass::Permanent),
            (409, &none, ErrorClass::Permanent),
            (422, &none, ErrorClass::Permanent),
            (423, &none, ErrorClass::Transient),
            (429, &none, ErrorClass::Transient),
            (500, &none, ErrorClass::Transient),
            (502, &none, ErrorClass::Transient),
            (504, &none, ErrorClass::Transient),
        ] {
            let status = StatusCode::from_u16(status).expect("status");
            assert_eq!(classify(status, body), class, "{status}");
        }
    }

    #[test]
    fn a_batch_read_sends_the_fields_hubspots_spec_requires() {
        let ids = vec!["1".to_string(), "2".to_string()];
        let properties = vec!["email".to_string()];
        let body = serde_json::to_value(ReadBody::new(&ids, &properties)).expect("body");
        assert_eq!(
            body,
            json!({
                "inputs": [{"id": "1"}, {"id": "2"}],
                "properties": ["email"],
                "propertiesWithHistory": [],
            })
        );
    }

    #[test]
    fn records_read_as_hubspot_sends_them() {
        let record: Record = serde_json::from_value(json!({
            "id": "101",
            "properties": {"email": "a@b.co", "firstname": null},
            "createdAt": "2026-11-01T10:00:00Z",
            "updatedAt": "2026-11-02T10:00:00Z",
            "archived": false
        }))
        .expect("record");
        assert_eq!(record.properties["email"].as_deref(), Some("a@b.co"));
        assert_eq!(record.properties["firstname"], None);
    }
}
