//! Login and logout: a browser form at `/login`, and JSON at `/api/v1/login` for programs.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;

use super::{Login, Principal};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::AppState;

/// The login and logout routes (open: they are how one gets credentials).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login_form))
        .route("/api/v1/login", post(login_json))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/me", get(me))
}

/// `POST /api/v1/login` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Logs in and returns a session token; also sets the session cookie.
#[utoipa::path(post, path = "/api/v1/login", tag = "auth", request_body = LoginRequest, security(()),
    responses((status = 200, body = Login), (status = 401, body = crate::error::ErrorBody)))]
async fn login_json(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    let login = state.auth().login(&req.user, &req.password).await?;
    let cookie = cookie_header(state.auth().session_cookie(&login.token))?;
    Ok(([(header::SET_COOKIE, cookie)], Json(login)).into_response())
}

/// Ends the session the request carries (the cookie, or a session token as `Authorization: Bearer`):
/// the server refuses it from now on, and the cookie is cleared. API tokens stay valid until revoked.
#[utoipa::path(post, path = "/api/v1/logout", tag = "auth", security(()),
    responses((status = 204, description = "the session is ended and the session cookie is cleared")))]
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.auth().logout(&headers).await?;
    let cookie = cookie_header(state.auth().clear_session_cookie())?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// Who the caller is.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth",
    responses((status = 200, body = Principal), (status = 401, body = crate::error::ErrorBody)))]
async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}

async fn login_page(Query(q): Query<NextQuery>) -> Html<String> {
    Html(page(&safe_next(q.next.as_deref()), None))
}

async fn login_form(
    State(state): State<AppState>,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let next = safe_next(form.next.as_deref());
    match state.auth().login(&form.user, &form.password).await {
        Ok(login) => {
            let cookie = cookie_header(state.auth().session_cookie(&login.token))?;
            Ok(([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response())
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            Ok((StatusCode::UNAUTHORIZED, Html(page(&next, Some(&e.message)))).into_response())
        }
        Err(e) => Err(e),
    }
}

fn cookie_header(value: String) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&value).map_err(ApiError::internal)
}

/// Where to go after logging in: a path on this server only (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.contains("://") => {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(next: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>comfyume — log in</title>
<style>
body{{font-family:system-ui,sans-serif;background:#202020;color:#eee;display:grid;place-items:center;min-height:100vh;margin:0}}
form{{background:#2b2b2b;padding:2rem;border-radius:8px;min-width:18rem;display:grid;gap:.8rem}}
input{{padding:.5rem;border-radius:4px;border:1px solid #555;background:#1a1a1a;color:#eee}}
button{{padding:.6rem;border:0;border-radius:4px;background:#4a7dff;color:#fff;font-weight:600;cursor:pointer}}
.error{{color:#ff8080;margin:0}}
</style></head>
<body><form method="post" action="/login">
<h1>comfyume</h1>
{error}
<label>User <input name="user" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<input type="hidden" name="next" value="{next}">
<button type="submit">Log in</button>
</form></body></html>"#,
        next = escape(next)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_never_leaves_the_site() {
        assert_eq!(safe_next(Some("/u/alice/")), "/u/alice/");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "evil",
            "/x?u=http://e",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_page_escapes_what_it_echoes() {
        let html = page("/\"><script>", Some("<b>no</b>"));
        assert!(!html.contains("<script>") && !html.contains("<b>no"));
    }
}
