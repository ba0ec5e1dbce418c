//! The admin page at `/admin/`: one HTML file, one script and one style sheet, built into the binary
//! (no build step, nothing fetched from elsewhere: workshop networks are often offline). The page reads
//! the dashboard from the live feed (`/api/v1/admin/live`) and acts through the admin API with the
//! browser's session cookie.
//!
//! Anyone not logged in is sent to `/login?next=/admin/`; a logged-in user who is not an admin gets a
//! 403 page. The script and style sheet need an admin session too.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::auth::Admin;
use crate::state::AppState;

const INDEX: &str = include_str!("../../assets/admin/index.html");
const SCRIPT: &str = include_str!("../../assets/admin/dashboard.js");
const STYLE: &str = include_str!("../../assets/admin/dashboard.css");

/// Scripts and styles from this server only; connections (fetch, WebSocket) to this server only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn with_headers(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /admin/`: the page for admins; the login form for anyone not logged in; 403 for other users.
pub async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.auth().authenticate(&headers) {
        Ok(p) if p.admin => with_headers("text/html; charset=utf-8", INDEX),
        Ok(p) => (
            StatusCode::FORBIDDEN,
            Html(format!(
                "<!doctype html><meta charset=utf-8><title>comfyume — admins only</title>\
                 <p style=\"font:1.2rem system-ui;margin:3rem\">This page is for admins; you are logged in as \
                 {}. <a href=\"/login?next=/admin/\">Log in as an admin</a>.</p>",
                p.user
            )),
        )
            .into_response(),
        Err(_) => Redirect::to("/login?next=/admin/").into_response(),
    }
}

/// `GET /admin`: to `/admin/`.
pub async fn without_slash() -> Redirect {
    Redirect::permanent("/admin/")
}

/// `GET /admin/dashboard.js`.
pub async fn script(Admin(_): Admin) -> Response {
    with_headers("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /admin/dashboard.css`.
pub async fn style(Admin(_): Admin) -> Response {
    with_headers("text/css; charset=utf-8", STYLE)
}
