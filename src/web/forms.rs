//! Values no form can send: a NUL (`\u0000`, `%00`) in any field or query parameter of any page,
//! signed in or not (`/login`, `/signup` included). Postgres stores no NUL in text, so such a
//! value used to reach a query and fail it with a 500; here it is a 422 page that names each
//! field, checked once for every page rather than in each form's handler.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::Error;
use crate::records::input::{nul_in_pairs, nul_in_uri};

/// Forms are small (the CSRF check reads them under the same limit).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Refuses a request whose query or url-encoded form holds a NUL, naming the fields; the body is
/// put back for the handler otherwise.
pub async fn reject_nul(request: Request, next: Next) -> Result<Response, Error> {
    let errors = nul_in_uri(request.uri(), None);
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let is_form = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok(next.run(request).await);
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| Error::BadRequest("The form is too large.".into()))?;
    let errors = nul_in_pairs(&bytes);
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await)
}
