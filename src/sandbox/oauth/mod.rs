//! OAuth 2.0 as HubSpot does it: a consent page, authorisation codes (single use, short-lived,
//! PKCE S256 checked when a challenge was sent), token, introspection and revocation endpoints.

pub mod authorize;
pub mod grants;
pub mod token;

use axum::Router;
use axum::routing::get;

use super::state::Shared;

/// Scopes the sandbox's app may be granted.
pub const KNOWN_SCOPES: &[&str] = &[
    "oauth",
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.deals.read",
    "crm.objects.deals.write",
    "crm.objects.owners.read",
    "crm.schemas.contacts.read",
    "crm.schemas.contacts.write",
    "crm.schemas.deals.read",
    "crm.schemas.deals.write",
];

pub fn routes() -> Router<Shared> {
    use axum::routing::post;
    Router::new()
        .route(
            "/oauth/authorize",
            get(authorize::show).post(authorize::decide),
        )
        .route("/oauth/v1/token", post(token::token))
        .route("/oauth/2026-03/token", post(token::token))
        .route("/oauth/2026-03/token/introspect", post(token::introspect))
        .route("/oauth/2026-03/token/revoke", post(token::revoke))
        .route(
            "/oauth/v1/access-tokens/{token}",
            get(token::v1_access_token),
        )
        .route(
            "/oauth/v1/refresh-tokens/{token}",
            get(token::v1_refresh_token).delete(token::v1_revoke_refresh_token),
        )
}
