//! The OpenAPI document of API v1, served at `GET /api/v1/openapi.json` (to logged-in users).
//!
//! Generated from the handlers' `#[utoipa::path]` annotations and the wire types' `ToSchema`, so it
//! cannot drift from the code; a test checks that it lists every route the router serves.

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::{Principal, SESSION_COOKIE};

/// The document's description of API v1.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "comfyume API",
        version = "1",
        description = "Shared GPU inference for ComfyUI: submit workflows as jobs into one fair queue, follow \
            them live, download their outputs. Errors are JSON `{code, message}`. Authenticate with \
            `Authorization: Bearer <token>` (an API token from `comfyume users token`, or the session token \
            from `POST /api/v1/login`) or the session cookie. Only `/health` and the login routes are open."
    ),
    paths(
        crate::health,
        crate::auth::routes::login_json,
        crate::auth::routes::logout,
        crate::auth::routes::me,
        crate::api::jobs::submit,
        crate::api::jobs::list,
        crate::api::jobs::get,
        crate::api::jobs::cancel,
        crate::api::jobs::delete,
        crate::api::outputs::list,
        crate::api::outputs::by_index,
        crate::api::outputs::by_name,
        crate::api::inputs::upload,
        crate::api::inputs::list,
        crate::api::inputs::get,
        crate::api::inputs::delete,
        crate::api::queue::overview,
        crate::events::events,
        crate::api::callbacks::deliver,
        serve,
        crate::api::admin::pause_queue,
        crate::api::admin::resume_queue,
        crate::api::admin::set_policy,
        crate::api::admin::move_to_front,
        crate::api::admin::set_priority,
        crate::api::admin::users,
        crate::api::admin::pause_user,
        crate::api::admin::resume_user,
        crate::api::admin::set_weight,
        crate::api::admin::set_caps,
        crate::api::admin::providers,
        crate::api::admin::drain,
        crate::api::admin::undrain,
        crate::api::admin::control::cancel_user,
        crate::api::admin::control::set_order,
        crate::api::admin::overview::jobs,
        crate::api::admin::overview::usage,
        crate::api::admin::overview::history,
        crate::api::admin::overview::audit,
        crate::api::admin::overview::dashboard,
        crate::admin::live::live,
        crate::ops::ready,
        crate::ops::metrics,
    ),
    components(schemas(
        crate::events::StreamMessage,
        crate::events::PositionEntry,
    )),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("session_cookie" = [])),
    tags(
        (name = "jobs", description = "Submit, read, list and cancel jobs"),
        (name = "outputs", description = "Download what jobs produced"),
        (name = "inputs", description = "Each user's own input files, which workflows' loaders name"),
        (name = "queue", description = "Where jobs wait and when they may start"),
        (name = "events", description = "Live job events over a WebSocket"),
        (name = "callbacks", description = "Live progress pushed by serverless workers, with a job's own token"),
        (name = "admin", description = "The instructor's view and controls, and the audit log (admins only)"),
        (name = "auth", description = "Logging in and out"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "an API token (`cmu_…`) or a session token from POST /api/v1/login",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                SESSION_COOKIE,
                "the browser session, set by /login or POST /api/v1/login",
            ))),
        );
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json"),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn serve(_who: Principal) -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}
