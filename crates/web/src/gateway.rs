//! The API gateway: in-process routers when the service runs here, an HTTP
//! proxy to its base URL when it does not.

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderName, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use clairon_http::problem::problem_response;

pub enum Upstream {
    /// The service's router, served here.
    Local(Router),
    /// Base URL of the service, e.g. `http://users:8081`.
    Remote(String),
}

#[derive(Clone)]
struct Proxy {
    client: reqwest::Client,
    base: String,
}

pub(crate) fn router(up: &crate::Upstreams) -> Router {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    let mut r = Router::new();
    for (prefix, u) in [
        ("/api/users", &up.users),
        ("/api/notifications", &up.notifications),
        ("/api/events", &up.events),
        ("/api/logs", &up.logs),
    ] {
        r = match u {
            Upstream::Local(router) => r.merge(router.clone()),
            Upstream::Remote(base) => {
                let p = Proxy {
                    client: client.clone(),
                    base: base.trim_end_matches('/').to_owned(),
                };
                r.route(prefix, any(proxy).with_state(p.clone()))
                    .route(&format!("{prefix}/{{*rest}}"), any(proxy).with_state(p))
            }
        };
    }
    r
}

/// Hop-by-hop headers are the connection's, not the message's (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

async fn proxy(State(p): State<Proxy>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let url = format!("{}{}", p.base, path);
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, clairon_http::layers::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return problem_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is larger than the 1 MiB limit.".into(),
                vec![],
            )
        }
    };
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (k, v) in parts.headers.iter().filter(|(k, _)| !hop_by_hop(k)) {
        headers.append(k, v.clone());
    }
    // The service's span becomes a child of this request's span (itself the
    // client's child); untraced, the client's context goes through as it came.
    clairon_http::trace::inject(&mut headers);
    let out = p
        .client
        .request(parts.method, &url)
        .headers(headers)
        .body(body);
    match out.send().await {
        Ok(res) => {
            let mut b = Response::builder().status(res.status());
            for (k, v) in res
                .headers()
                .iter()
                .filter(|(k, _)| !hop_by_hop(k) && *k != header::CONTENT_LENGTH)
            {
                b = b.header(k, v);
            }
            b.body(Body::from_stream(res.bytes_stream()))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "upstream unreachable");
            problem_response(
                StatusCode::BAD_GATEWAY,
                "The service behind this address is not reachable right now.".into(),
                vec![],
            )
        }
    }
}
