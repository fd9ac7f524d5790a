//! The REST API's description. Every `/v1` route is declared once as an [`ApiRoute`]: the router is
//! built from these declarations and so is the OpenAPI 3.1 document (`/openapi.json`) and the
//! human-readable reference (`/docs`). A route cannot exist without being documented.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::Method;
use axum::response::Response;
use axum::routing::MethodRouter;
use serde_json::{Map, Value as Json, json};

use crate::app::AppState;
use crate::error::Error;

/// A parameter of an operation.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: &'static str,
    /// `path`, `query` or `header`.
    pub location: &'static str,
    pub required: bool,
    pub description: &'static str,
    pub schema: Json,
}

impl Param {
    pub fn path(name: &'static str, description: &'static str) -> Param {
        Param {
            name,
            location: "path",
            required: true,
            description,
            schema: json!({"type": "string"}),
        }
    }

    pub fn query(name: &'static str, description: &'static str, schema: Json) -> Param {
        Param {
            name,
            location: "query",
            required: false,
            description,
            schema,
        }
    }

    pub fn header(name: &'static str, description: &'static str) -> Param {
        Param {
            name,
            location: "header",
            required: false,
            description,
            schema: json!({"type": "string"}),
        }
    }
}

/// One documented response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub description: &'static str,
    /// A schema name in `components.schemas`; problems use `Problem`.
    pub schema: Option<String>,
}

pub fn reply(status: u16, description: &'static str, schema: Option<&str>) -> Reply {
    Reply {
        status,
        description,
        schema: schema.map(String::from),
    }
}

/// One operation of the API, as documented.
#[derive(Debug, Clone)]
pub struct Operation {
    pub method: Method,
    /// Path under `/v1`, in OpenAPI syntax (`/contacts/{id}`), which is also axum's.
    pub path: String,
    pub operation_id: String,
    pub tag: &'static str,
    pub summary: String,
    pub description: String,
    pub params: Vec<Param>,
    /// Media type and schema name of the request body.
    pub request: Option<(&'static str, String)>,
    pub replies: Vec<Reply>,
}

/// An operation and the handler that serves it.
pub struct ApiRoute {
    pub operation: Operation,
    pub handler: MethodRouter<AppState>,
}

/// Every `/v1` route of every feature.
pub fn v1_routes() -> Vec<ApiRoute> {
    let mut routes = crate::tenancy::api::routes();
    routes.extend(crate::records::docs::routes());
    routes.extend(crate::sync::api::routes());
    routes
}

/// The `/v1` router, built from the declarations.
pub fn v1_router() -> Router<AppState> {
    v1_routes()
        .into_iter()
        .fold(Router::new(), |router, route| {
            router.route(&route.operation.path, route.handler)
        })
        // A NUL in a path or query parameter is a 422 naming it, for every route.
        .layer(axum::middleware::from_fn(
            crate::records::input::reject_nul_in_uri,
        ))
}

/// An operation's replies, with the [`common_replies`] it does not document itself.
fn all_replies(op: &Operation) -> Vec<Reply> {
    let mut replies = op.replies.clone();
    for common in common_replies() {
        if !replies.iter().any(|r| r.status == common.status) {
            replies.push(common);
        }
    }
    replies
}

/// Answers every operation can give, whatever it does: documented once here.
fn common_replies() -> [Reply; 2] {
    [
        reply(
            422,
            "A value Ferry cannot store: a NUL character (\\u0000) in a body, path or query \
             parameter, or a JSON number beyond ±1e300. `errors` names each field.",
            Some("Problem"),
        ),
        reply(
            503,
            "Postgres (or Redis) is unavailable: `unavailable`, with Retry-After. Retry then, \
             with the same Idempotency-Key for a write.",
            Some("Problem"),
        ),
    ]
}

/// Schemas shared by every feature.
fn common_schemas() -> Map<String, Json> {
    let mut schemas = Map::new();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "An error, as RFC 9457 problem details (application/problem+json).",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string", "format": "uri", "description": "Stable identifier of the kind of problem, e.g. https://ferry.dev/problems/validation."},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "errors": {
                    "type": "array",
                    "description": "With validation problems: which fields are wrong and why.",
                    "items": {"$ref": "#/components/schemas/FieldError"}
                },
                "current_version": {"type": "integer", "description": "With precondition-failed: the record's current version."}
            }
        }),
    );
    schemas.insert(
        "FieldError".into(),
        json!({
            "type": "object",
            "required": ["field", "message"],
            "properties": {"field": {"type": "string"}, "message": {"type": "string"}}
        }),
    );
    schemas
}

/// The OpenAPI 3.1 document.
pub fn document() -> Json {
    let routes = v1_routes();
    let mut paths = Map::new();
    for route in &routes {
        let op = &route.operation;
        let entry = paths
            .entry(format!("/v1{}", op.path))
            .or_insert_with(|| json!({}));
        if let Json::Object(item) = entry {
            item.insert(op.method.as_str().to_lowercase(), operation_json(op));
        }
    }
    let mut schemas = common_schemas();
    schemas.extend(crate::tenancy::api::schemas());
    schemas.extend(crate::records::docs::schemas());
    schemas.extend(crate::sync::api::schemas());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Ferry API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Canonical contacts, deals and tasks of one tenant, kept in sync with its CRM. \
    Authenticate with an API key: `Authorization: Bearer <key>`. Errors are application/problem+json. \
    Writes accept `Idempotency-Key`; reads return `ETag: \"v<version>\"`, which writes accept in `If-Match`."
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "tags": [
            {"name": "Account", "description": "The tenant an API key belongs to."},
            {"name": "Contacts"}, {"name": "Deals"}, {"name": "Tasks"},
            {"name": "Connectors", "description": "Pushing records from a custom connector."},
            {"name": "Dead letters", "description": "Sync work that failed: inspect, replay, discard."}
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key from Settings → API keys."}
            },
            "schemas": schemas
        }
    })
}

fn operation_json(op: &Operation) -> Json {
    let mut responses = Map::new();
    for reply in &all_replies(op) {
        let mut body = json!({"description": reply.description});
        if let Some(schema) = &reply.schema {
            let media = if schema == "Problem" {
                "application/problem+json"
            } else {
                "application/json"
            };
            body["content"] =
                json!({ media: {"schema": {"$ref": format!("#/components/schemas/{schema}")}} });
        }
        responses.insert(reply.status.to_string(), body);
    }
    let parameters: Vec<Json> = op
        .params
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "in": p.location,
                "required": p.required,
                "description": p.description,
                "schema": p.schema,
            })
        })
        .collect();
    let mut out = json!({
        "operationId": op.operation_id,
        "tags": [op.tag],
        "summary": op.summary,
        "description": op.description,
        "parameters": parameters,
        "responses": responses,
    });
    if let Some((media, schema)) = &op.request {
        out["requestBody"] = json!({
            "required": true,
            "content": { *media: {"schema": {"$ref": format!("#/components/schemas/{schema}")}} }
        });
    }
    out
}

/// `GET /openapi.json`.
pub async fn serve_document() -> axum::Json<Json> {
    axum::Json(document())
}

#[derive(Template)]
#[template(path = "docs/index.html")]
struct DocsPage {
    operations: Vec<DocOperation>,
    schemas: Vec<DocSchema>,
}

struct DocOperation {
    anchor: String,
    method: String,
    path: String,
    tag: &'static str,
    summary: String,
    description: String,
    params: Vec<(String, String, bool, String)>,
    request: Option<String>,
    replies: Vec<(u16, String, Option<String>)>,
}

struct DocSchema {
    name: String,
    description: String,
    fields: Vec<(String, String, String)>,
}

fn type_label(schema: &Json) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Json::as_str) {
        return reference
            .rsplit('/')
            .next()
            .unwrap_or(reference)
            .to_string();
    }
    let base = match schema.get("type") {
        Some(Json::String(t)) => t.clone(),
        Some(Json::Array(types)) => types
            .iter()
            .filter_map(Json::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".to_string(),
    };
    let base = match schema.get("items") {
        Some(items) => format!("{base} of {}", type_label(items)),
        None => base,
    };
    match schema.get("format").and_then(Json::as_str) {
        Some(format) => format!("{base} ({format})"),
        None => base,
    }
}

/// `GET /docs`: the reference, rendered on the server from the same declarations (no scripts,
/// nothing fetched).
pub async fn serve_docs(State(_): State<AppState>) -> Result<Response, Error> {
    let operations = v1_routes()
        .into_iter()
        .map(|route| {
            let op = route.operation;
            let replies = all_replies(&op);
            DocOperation {
                anchor: op.operation_id.clone(),
                method: op.method.to_string(),
                path: format!("/v1{}", op.path),
                tag: op.tag,
                summary: op.summary,
                description: op.description,
                params: op
                    .params
                    .iter()
                    .map(|p| {
                        (
                            p.name.to_string(),
                            p.location.to_string(),
                            p.required,
                            p.description.to_string(),
                        )
                    })
                    .collect(),
                request: op
                    .request
                    .map(|(media, schema)| format!("{schema} ({media})")),
                replies: replies
                    .into_iter()
                    .map(|r| (r.status, r.description.to_string(), r.schema))
                    .collect(),
            }
        })
        .collect();
    let mut schemas = common_schemas();
    schemas.extend(crate::tenancy::api::schemas());
    schemas.extend(crate::records::docs::schemas());
    schemas.extend(crate::sync::api::schemas());
    let schemas = schemas
        .into_iter()
        .map(|(name, schema)| DocSchema {
            description: schema
                .get("description")
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_string(),
            fields: schema
                .get("properties")
                .and_then(Json::as_object)
                .map(|props| {
                    props
                        .iter()
                        .map(|(field, s)| {
                            (
                                field.clone(),
                                type_label(s),
                                s.get("description")
                                    .and_then(Json::as_str)
                                    .unwrap_or("")
                                    .to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            name,
        })
        .collect();
    crate::web::render(&DocsPage {
        operations,
        schemas,
    })
}
