//! The records API's routes with their documentation, and its schemas (derived from the field
//! tables in [`super::fields`]).

use axum::http::Method;
use axum::routing::{delete, get, patch, post, put};
use serde_json::{Map, Value as Json, json};

use super::api::{self, Collection, Contacts, Deals, Tasks};
use super::fields::{FieldSpec, FieldType, specs};
use super::{Kind, api::MAX_LIMIT};
use crate::openapi::{ApiRoute, Operation, Param, reply};

fn title(kind: Kind) -> &'static str {
    match kind {
        Kind::Contact => "Contact",
        Kind::Deal => "Deal",
        Kind::Task => "Task",
    }
}

fn tag(kind: Kind) -> &'static str {
    match kind {
        Kind::Contact => "Contacts",
        Kind::Deal => "Deals",
        Kind::Task => "Tasks",
    }
}

const ID: &str = "A Ferry id, or an external id such as hubspot:contact:12345.";

fn idempotency_key() -> Param {
    Param::header(
        "Idempotency-Key",
        "Up to 255 characters. The same key with the same request replays the first answer (with \
         Idempotent-Replayed: true) for at least 24 hours; with a different request it is a 422; \
         while the first is running, a 409.",
    )
}

fn if_match() -> Param {
    Param::header(
        "If-Match",
        "The ETag you read (\"v<version>\"). A stale one gets 412 with the current version.",
    )
}

fn op(
    method: Method,
    path: String,
    operation_id: String,
    kind_tag: &'static str,
    summary: String,
    description: &str,
) -> Operation {
    Operation {
        method,
        path,
        operation_id,
        tag: kind_tag,
        summary,
        description: description.to_string(),
        params: Vec::new(),
        request: None,
        replies: Vec::new(),
    }
}

fn collection_routes<C: Collection>() -> Vec<ApiRoute> {
    let kind = C::KIND;
    let (one, plural, name) = (kind.as_str(), kind.plural(), title(kind));
    let base = format!("/{plural}");
    let item = format!("/{plural}/{{id}}");
    let problems = [
        reply(401, "Missing, unknown or revoked API key.", Some("Problem")),
        reply(429, "Rate limited; see Retry-After.", Some("Problem")),
    ];

    let mut list = op(
        Method::GET,
        base.clone(),
        format!("list_{plural}"),
        tag(kind),
        format!("List {plural}"),
        "Oldest change first, keyset-paginated: pass next_cursor back as cursor until it is null. \
         Pages stay stable while records are added.",
    );
    list.params = vec![
        Param::query(
            "updated_since",
            "Only records changed at or after this RFC 3339 time.",
            json!({"type": "string", "format": "date-time"}),
        ),
        Param::query(
            "limit",
            "Page size, 1 to 200 (default 50).",
            json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
        ),
        Param::query(
            "cursor",
            "The next_cursor of the previous page.",
            json!({"type": "string"}),
        ),
        Param::query(
            "external_id",
            "Only the record with this external id.",
            json!({"type": "string"}),
        ),
        Param::query(
            "include_deleted",
            "Also return deleted records (with deleted_at).",
            json!({"type": "boolean"}),
        ),
    ];
    if kind == Kind::Contact {
        list.params.push(Param::query(
            "email",
            "Only contacts with this email (matched lower-case).",
            json!({"type": "string"}),
        ));
    }
    list.replies = vec![
        reply(200, "A page of records.", Some(&format!("{name}List"))),
        reply(422, "A bad filter, limit or cursor.", Some("Problem")),
    ];
    list.replies.extend(problems.clone());

    let mut create = op(
        Method::POST,
        base.clone(),
        format!("create_{one}"),
        tag(kind),
        format!("Create a {one} (or upsert by external_id)"),
        "Creates a record (201, with Location). When external_id names an existing record, updates \
         it instead (200). Unknown members are a 422 naming them; read-only members are ignored.",
    );
    create.params = vec![idempotency_key()];
    create.request = Some(("application/json", format!("{name}Input")));
    create.replies = vec![
        reply(201, "Created.", Some(name)),
        reply(200, "Updated (external_id matched).", Some(name)),
        reply(
            409,
            "A request with this Idempotency-Key is in progress.",
            Some("Problem"),
        ),
        reply(415, "The body is not JSON.", Some("Problem")),
        reply(
            422,
            "Invalid fields, or an Idempotency-Key reused for another request.",
            Some("Problem"),
        ),
    ];
    create.replies.extend(problems.clone());

    let mut show = op(
        Method::GET,
        item.clone(),
        format!("get_{one}"),
        tag(kind),
        format!("Get a {one}"),
        "By Ferry id or external id. Answers with ETag; If-None-Match gets 304 when unchanged.",
    );
    show.params = vec![
        Param::path("id", ID),
        Param::header("If-None-Match", "An ETag you hold."),
    ];
    show.replies = vec![
        reply(200, "The record.", Some(name)),
        reply(304, "Not modified.", None),
        reply(
            404,
            "No such record in this tenant (or deleted).",
            Some("Problem"),
        ),
    ];
    show.replies.extend(problems.clone());

    let write_replies = |ok: &'static str| {
        let mut replies = vec![
            reply(200, ok, Some(name)),
            reply(404, "No such record in this tenant.", Some("Problem")),
            reply(
                409,
                "A request with this Idempotency-Key is in progress.",
                Some("Problem"),
            ),
            reply(
                412,
                "If-Match is stale; current_version says what it is.",
                Some("Problem"),
            ),
            reply(415, "The body is not JSON.", Some("Problem")),
            reply(422, "Invalid fields.", Some("Problem")),
        ];
        replies.extend(problems.clone());
        replies
    };
    let mut replace = op(
        Method::PUT,
        item.clone(),
        format!("replace_{one}"),
        tag(kind),
        format!("Replace a {one}"),
        "Sets every writable field; absent ones become empty.",
    );
    replace.params = vec![Param::path("id", ID), if_match(), idempotency_key()];
    replace.request = Some(("application/json", format!("{name}Input")));
    replace.replies = write_replies("Replaced.");

    let mut modify = op(
        Method::PATCH,
        item.clone(),
        format!("patch_{one}"),
        tag(kind),
        format!("Patch a {one}"),
        "A JSON merge patch (RFC 7386): members replace, null clears, custom and metadata merge.",
    );
    modify.params = vec![Param::path("id", ID), if_match(), idempotency_key()];
    modify.request = Some(("application/merge-patch+json", format!("{name}Patch")));
    modify.replies = write_replies("Patched.");

    let mut remove = op(
        Method::DELETE,
        item.clone(),
        format!("delete_{one}"),
        tag(kind),
        format!("Delete a {one}"),
        "Soft delete: the record leaves GET and list, and stays as a tombstone for syncs \
         (list with include_deleted=true).",
    );
    remove.params = vec![Param::path("id", ID), if_match(), idempotency_key()];
    remove.replies = vec![
        reply(204, "Deleted.", None),
        reply(404, "No such record in this tenant.", Some("Problem")),
        reply(412, "If-Match is stale.", Some("Problem")),
    ];
    remove.replies.extend(problems);

    vec![
        ApiRoute {
            operation: list,
            handler: get(api::list::<C>),
        },
        ApiRoute {
            operation: create,
            handler: post(api::create::<C>),
        },
        ApiRoute {
            operation: show,
            handler: get(api::show::<C>),
        },
        ApiRoute {
            operation: replace,
            handler: put(api::replace::<C>),
        },
        ApiRoute {
            operation: modify,
            handler: patch(api::patch::<C>),
        },
        ApiRoute {
            operation: remove,
            handler: delete(api::delete::<C>),
        },
    ]
}

pub fn routes() -> Vec<ApiRoute> {
    let mut routes = collection_routes::<Contacts>();
    routes.extend(collection_routes::<Deals>());
    routes.extend(collection_routes::<Tasks>());

    let mut stages = op(
        Method::GET,
        "/deal-stages".into(),
        "list_deal_stages".into(),
        "Deals",
        "List the deal pipeline's stages".into(),
        "The stage keys a deal's stage may take, in order.",
    );
    stages.replies = vec![reply(200, "The stages.", Some("DealStageList"))];
    let mut set_stages = op(
        Method::PUT,
        "/deal-stages".into(),
        "replace_deal_stages".into(),
        "Deals",
        "Replace the deal pipeline's stages".into(),
        "Existing deals keep their stage; new writes must use a listed one.",
    );
    set_stages.request = Some(("application/json", "DealStagesInput".into()));
    set_stages.replies = vec![
        reply(200, "The new stages.", Some("DealStageList")),
        reply(422, "Invalid or duplicate stages.", Some("Problem")),
    ];
    let mut sync = op(
        Method::POST,
        "/internal/sync".into(),
        "push_record".into(),
        "Connectors",
        "Push a record from a custom connector".into(),
        "Stores the payload as received and upserts the canonical record by external id \
         (<connector_id>:<external_type>:<external_id>) through the same mapping and dedupe path as \
         native connectors: payload members named like canonical fields set them, others go to \
         custom; a first-seen contact joins the local contact with the same email.",
    );
    sync.params = vec![idempotency_key()];
    sync.request = Some(("application/json", "InternalSyncRequest".into()));
    sync.replies = vec![
        reply(201, "A record was created.", Some("InternalSyncResult")),
        reply(
            200,
            "A record was linked, updated or already up to date.",
            Some("InternalSyncResult"),
        ),
        reply(422, "Invalid push or payload.", Some("Problem")),
    ];
    routes.extend([
        ApiRoute {
            operation: stages,
            handler: get(api::stages_index),
        },
        ApiRoute {
            operation: set_stages,
            handler: put(api::stages_replace),
        },
        ApiRoute {
            operation: sync,
            handler: post(api::internal_sync),
        },
    ]);
    routes
}

fn field_schema(spec: &FieldSpec) -> Json {
    let mut schema = match spec.ty {
        FieldType::Text { max } => json!({"type": ["string", "null"], "maxLength": max}),
        FieldType::Email => json!({"type": ["string", "null"], "format": "email"}),
        FieldType::Decimal => {
            json!({"type": ["string", "null"], "pattern": "^-?[0-9]{1,15}(\\.[0-9]{1,4})?$"})
        }
        FieldType::Currency => json!({"type": ["string", "null"], "pattern": "^[A-Z]{3}$"}),
        FieldType::Date => json!({"type": ["string", "null"], "format": "date"}),
        FieldType::DateTime => json!({"type": ["string", "null"], "format": "date-time"}),
        FieldType::Enum(values) => {
            let mut options: Vec<Json> = values.iter().map(|v| json!(v)).collect();
            options.push(Json::Null);
            json!({"type": ["string", "null"], "enum": options})
        }
        FieldType::Stage => json!({"type": ["string", "null"]}),
        FieldType::ContactIds => {
            json!({"type": "array", "items": {"type": "string"}, "maxItems": 100})
        }
        FieldType::Linked => json!({
            "type": ["object", "null"],
            "required": ["type", "id"],
            "properties": {
                "type": {"type": "string", "enum": ["contact", "deal"]},
                "id": {"type": "string"}
            }
        }),
        FieldType::Object => json!({"type": "object"}),
    };
    schema["description"] = json!(spec.description);
    schema
}

pub fn schemas() -> Map<String, Json> {
    let mut out = Map::new();
    for kind in Kind::ALL {
        let name = title(kind);
        let mut props = Map::new();
        for spec in specs(kind) {
            props.insert(spec.name.to_string(), field_schema(spec));
        }
        let writable = props.clone();
        let mut input = writable.clone();
        input.insert(
            "external_id".into(),
            json!({"type": ["string", "null"], "description": "provider:object:id; on POST, upserts the record it names."}),
        );
        let required: Vec<&str> = specs(kind)
            .iter()
            .filter(|s| s.required)
            .map(|s| s.name)
            .collect();
        out.insert(
            format!("{name}Input"),
            json!({"type": "object", "required": required, "properties": input, "additionalProperties": true,
                   "description": "Writable fields. Unknown members are rejected with 422; read-only members of the representation (id, object, version, created_at, updated_at, deleted_at, source) are ignored."}),
        );
        out.insert(
            format!("{name}Patch"),
            json!({"type": "object", "properties": writable, "description": "A JSON merge patch of the writable fields."}),
        );
        let mut full = props;
        for (field, schema) in [
            ("id", json!({"type": "string", "format": "uuid"})),
            ("object", json!({"type": "string", "enum": [kind.as_str()]})),
            (
                "external_id",
                json!({"type": ["string", "null"], "description": "The first external id linked to the record."}),
            ),
            (
                "source",
                json!({"type": "string", "description": "api, or connector:<id> / a provider for synced records."}),
            ),
            (
                "version",
                json!({"type": "integer", "description": "Bumped on every change; the ETag is \"v<version>\"."}),
            ),
            (
                "created_at",
                json!({"type": "string", "format": "date-time"}),
            ),
            (
                "updated_at",
                json!({"type": "string", "format": "date-time"}),
            ),
            (
                "deleted_at",
                json!({"type": "string", "format": "date-time", "description": "Only on deleted records (list with include_deleted)."}),
            ),
        ] {
            full.insert(field.into(), schema);
        }
        out.insert(
            name.to_string(),
            json!({"type": "object", "required": ["id", "object", "version", "created_at", "updated_at"], "properties": full}),
        );
        out.insert(
            format!("{name}List"),
            json!({
                "type": "object",
                "required": ["data", "next_cursor"],
                "properties": {
                    "data": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                    "next_cursor": {"type": ["string", "null"], "description": "Pass as cursor for the next page; null on the last."}
                }
            }),
        );
    }
    out.insert(
        "DealStage".into(),
        json!({"type": "object", "required": ["key", "label"], "properties": {
            "key": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
            "label": {"type": "string", "maxLength": 100}
        }}),
    );
    out.insert(
        "DealStageList".into(),
        json!({"type": "object", "properties": {"data": {"type": "array", "items": {"$ref": "#/components/schemas/DealStage"}}}}),
    );
    out.insert(
        "DealStagesInput".into(),
        json!({"type": "object", "required": ["stages"], "properties": {"stages": {"type": "array", "items": {"$ref": "#/components/schemas/DealStage"}, "minItems": 1, "maxItems": 50}}}),
    );
    out.insert(
        "InternalSyncRequest".into(),
        json!({"type": "object", "required": ["connector_id", "external_type", "external_id", "payload"], "properties": {
            "connector_id": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$", "description": "Names your connector."},
            "external_type": {"type": "string", "enum": ["contact", "deal", "task"]},
            "external_id": {"type": "string", "maxLength": 200, "description": "The record's id in your system."},
            "payload": {"type": "object", "description": "The record as your system has it."}
        }}),
    );
    out.insert(
        "InternalSyncResult".into(),
        json!({"type": "object", "properties": {
            "action": {"type": "string", "enum": ["created", "linked", "updated", "unchanged"]},
            "inbound_item_id": {"type": "integer"},
            "record": {"description": "The canonical record (Contact, Deal or Task)."}
        }}),
    );
    out
}
