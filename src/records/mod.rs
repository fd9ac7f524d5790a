//! Canonical records (contacts, deals, tasks), the REST API over them, idempotency, ETags, the
//! outbox, and pushes from custom connectors.

pub mod api;
pub mod fields;
pub mod idempotency;
pub mod internal_sync;
pub mod links;
pub mod outbox;
pub mod service;
pub mod stages;
pub mod store;

use axum::Router;
use axum::routing::{get, post};

use crate::app::AppState;

/// The kinds of canonical record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Contact,
    Deal,
    Task,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Contact, Kind::Deal, Kind::Task];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Contact => "contact",
            Kind::Deal => "deal",
            Kind::Task => "task",
        }
    }

    /// The collection's path segment.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Contact => "contacts",
            Kind::Deal => "deals",
            Kind::Task => "tasks",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

fn routes<C: api::Collection>(router: Router<AppState>) -> Router<AppState> {
    let base = format!("/{}", C::KIND.plural());
    let item = format!("{base}/{{id}}");
    router
        .route(&base, get(api::list::<C>).post(api::create::<C>))
        .route(
            &item,
            get(api::show::<C>)
                .put(api::replace::<C>)
                .patch(api::patch::<C>)
                .delete(api::delete::<C>),
        )
}

/// `/v1` routes of this feature (nested under `/v1` by the app).
pub fn router() -> Router<AppState> {
    let router = Router::new();
    let router = routes::<api::Contacts>(router);
    let router = routes::<api::Deals>(router);
    let router = routes::<api::Tasks>(router);
    router
        .route(
            "/deal-stages",
            get(api::stages_index).put(api::stages_replace),
        )
        .route("/internal/sync", post(api::internal_sync))
}
