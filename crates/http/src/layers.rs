//! Layers every listener gets: body size limit (413), request metrics, tracing
//! spans (see [`crate::trace`]), and problem+json for unknown routes and
//! framework rejections.

use axum::{
    extract::{DefaultBodyLimit, Request},
    http::StatusCode,
    middleware,
    response::Response,
    Router,
};
use tower_http::{limit::RequestBodyLimitLayer, trace::TraceLayer};

use crate::problem::problem_response;

pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn apply(service: &'static str, router: Router) -> Router {
    router
        .fallback(|| async {
            problem_response(
                StatusCode::NOT_FOUND,
                "There is nothing at this address.".into(),
                vec![],
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        // Outside the limit layer, so its plain-text 413 becomes problem+json too.
        .layer(middleware::map_response(problemize))
        .layer(middleware::from_fn(
            move |req: Request, next: middleware::Next| crate::metrics::track(service, req, next),
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |req: &Request| crate::trace::request_span(service, req))
                .on_response(crate::trace::record_response),
        )
}

/// Turns plain-text error responses from the framework (413 from the body
/// limit, 405, …) into problem+json.
async fn problemize(res: Response) -> Response {
    let status = res.status();
    let is_problem = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.contains("json")
                || v.starts_with("text/html")
                || v.starts_with("application/javascript")
                || v.starts_with("text/css")
        });
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            "The request body is larger than the 1 MiB limit.".to_owned()
        }
        StatusCode::METHOD_NOT_ALLOWED => "This address does not accept that method.".to_owned(),
        _ => {
            let bytes = axum::body::to_bytes(res.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).trim().to_owned();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("Error").to_owned()
            } else {
                text
            }
        }
    };
    problem_response(status, detail, vec![])
}
