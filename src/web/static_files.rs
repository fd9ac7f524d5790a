//! The few static files, compiled into the binary so Ferry runs offline from one file.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../static/app.css"),
    },
    Asset {
        path: "htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../static/htmx.min.js"),
    },
];

pub async fn serve(Path(path): Path<String>) -> Result<Response, Error> {
    let asset = ASSETS
        .iter()
        .find(|a| a.path == path)
        .ok_or(Error::NotFound)?;
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    Ok(response)
}
