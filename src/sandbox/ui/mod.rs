//! The sandbox's own pages: accounts, records (list, search, edit, move a deal's stage),
//! webhook deliveries and faults. Server-rendered with askama, styled by Ferry's `app.css`
//! (served here from the same file, so the sandbox stays a separate program).

mod admin;
mod records;

use askama::Template;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use url::Url;

use super::state::{Sandbox, Shared};

/// What the layout needs on every page.
pub struct Chrome {
    pub title: String,
    pub nav: &'static str,
    /// The portal the record links in the navigation point at.
    pub portal_id: u64,
    pub notice: Option<String>,
}

impl Chrome {
    pub fn new(sandbox: &Sandbox, title: &str, nav: &'static str) -> Chrome {
        Chrome {
            title: title.to_string(),
            nav,
            portal_id: sandbox.portals.first().map(|p| p.id).unwrap_or_default(),
            notice: None,
        }
    }

    pub fn in_portal(mut self, portal_id: u64) -> Chrome {
        self.portal_id = portal_id;
        self
    }

    pub fn with_notice(mut self, notice: Option<&str>) -> Chrome {
        self.notice = notice.map(|n| {
            match n {
                "saved" => "Saved. A webhook goes out if the app is installed in this account.",
                "created" => "Created.",
                "archived" => "Archived (moved to the recycle bin).",
                "restored" => "Restored.",
                "moved" => "Stage changed.",
                "faults" => "Faults updated.",
                "tokens" => "Tokens updated.",
                _ => "Done.",
            }
            .to_string()
        });
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("this form did not come from the sandbox's own pages")]
    Forbidden,
    #[error("template rendering failed")]
    Template(#[from] askama::Error),
}

#[derive(Template)]
#[template(path = "sandbox/error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    message: String,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            UiError::NotFound => (StatusCode::NOT_FOUND, "Nothing here.".to_string()),
            UiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            UiError::Forbidden => (StatusCode::FORBIDDEN, self.to_string()),
            UiError::Template(err) => {
                tracing::error!(error = %err, "sandbox page failed to render");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The page could not be rendered.".to_string(),
                )
            }
        };
        let page = ErrorPage {
            chrome: Chrome {
                title: format!("Error {}", status.as_u16()),
                nav: "",
                portal_id: super::state::FIRST_PORTAL_ID,
                notice: None,
            },
            status: status.as_u16(),
            message: message.clone(),
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, message).into_response(),
        }
    }
}

pub fn render(template: &impl Template) -> Result<Response, UiError> {
    Ok(Html(template.render()?).into_response())
}

pub fn render_status(status: StatusCode, template: &impl Template) -> Result<Response, UiError> {
    Ok((status, Html(template.render()?)).into_response())
}

/// Refuses form posts from other sites (the pages have no login, so this is their CSRF guard).
pub async fn same_origin(request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        let headers = request.headers();
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site");
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_differs = match (
            headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()),
            host,
        ) {
            (Some("null"), _) => true,
            (Some(origin), Some(host)) => Url::parse(origin).ok().is_none_or(|u| {
                let authority = match u.port() {
                    Some(port) => format!("{}:{port}", u.host_str().unwrap_or("")),
                    None => u.host_str().unwrap_or("").to_string(),
                };
                authority != host
            }),
            _ => false,
        };
        if cross_site || origin_differs {
            return UiError::Forbidden.into_response();
        }
    }
    next.run(request).await
}

async fn stylesheet() -> Response {
    let mut response = include_str!("../../../static/app.css").into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

pub fn routes(faults_enabled: bool) -> Router<Shared> {
    let faults_page = if faults_enabled {
        get(admin::faults).post(admin::set_faults)
    } else {
        get(admin::faults)
    };
    let mut router = Router::new()
        .route("/", get(admin::index))
        .route("/ui/webhooks", get(admin::webhooks))
        .route("/ui/faults", faults_page)
        .route("/ui/{portal}/{object}", get(records::list))
        .route(
            "/ui/{portal}/{object}/new",
            get(records::new_form).post(records::create),
        )
        .route(
            "/ui/{portal}/{object}/{id}",
            get(records::show).post(records::save),
        )
        .route(
            "/ui/{portal}/{object}/{id}/stage",
            post(records::move_stage),
        )
        .route("/ui/{portal}/{object}/{id}/archive", post(records::archive))
        .route("/ui/{portal}/{object}/{id}/restore", post(records::restore));
    if faults_enabled {
        router = router.route("/ui/faults/tokens", post(admin::tokens));
    }
    router
        .layer(middleware::from_fn(same_origin))
        .route("/static/app.css", get(stylesheet))
}
