//! The HubSpot-compatible API: CRM objects v3, search, batch, schema, associations v4.

pub mod associations;
pub mod batch;
pub mod guard;
pub mod objects;
pub mod render;
pub mod schema;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post, put};

use super::search;
use super::state::Shared;

/// Every route here goes through [`guard::api_guard`] (faults, token, rate limits).
pub fn routes(state: Shared) -> Router<Shared> {
    Router::new()
        .route(
            "/crm/v3/objects/{object}",
            get(objects::list).post(objects::create),
        )
        .route("/crm/v3/objects/{object}/search", post(search::search))
        .route("/crm/v3/objects/{object}/merge", post(objects::merge))
        .route(
            "/crm/v3/objects/{object}/batch/{action}",
            post(batch::batch),
        )
        .route(
            "/crm/v3/objects/{object}/{id}",
            get(objects::get_one)
                .patch(objects::update)
                .delete(objects::archive),
        )
        .route(
            "/crm/v3/properties/{object}",
            get(schema::list_properties).post(schema::create_property),
        )
        .route(
            "/crm/v3/properties/{object}/{name}",
            get(schema::get_property),
        )
        .route("/crm/v3/pipelines/{object}", get(schema::pipelines))
        .route("/crm/v3/pipelines/{object}/{id}", get(schema::pipeline))
        .route("/crm/v3/owners", get(schema::owners))
        .route("/crm/v3/owners/", get(schema::owners))
        .route(
            "/crm/v4/objects/{from}/{id}/associations/default/{to}/{to_id}",
            put(associations::associate_default),
        )
        .route(
            "/crm/v4/objects/{from}/{id}/associations/{to}",
            get(associations::list_for_record),
        )
        .route(
            "/crm/v4/associations/{from}/{to}/batch/create",
            post(associations::batch_create),
        )
        .route(
            "/crm/v4/associations/{from}/{to}/batch/associate/default",
            post(associations::batch_associate_default),
        )
        .route(
            "/crm/v4/associations/{from}/{to}/batch/read",
            post(associations::batch_read),
        )
        .route_layer(middleware::from_fn_with_state(state, guard::api_guard))
}
