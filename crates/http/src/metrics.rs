//! Prometheus metrics: one recorder per process, rendered at `/metrics`.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (first call) and returns its handle.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .ok()?
                // Trigger → provider acceptance spans retries and backoff: up to minutes.
                .set_buckets_for_metric(
                    Matcher::Full("clairon_delivery_latency_seconds".into()),
                    &[
                        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                        300.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

pub fn router() -> Router {
    Router::new().route(
        "/metrics",
        get(|| async {
            let body = handle().map(|h| h.render()).unwrap_or_default();
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
        }),
    )
}

/// Counts requests and their latency by service, route template and status.
pub async fn track(service: &'static str, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    let labels = [
        ("service", service.to_owned()),
        ("method", method),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("clairon_http_requests_total", &labels).increment(1);
    metrics::histogram!("clairon_http_request_duration_seconds", &labels[..3])
        .record(start.elapsed().as_secs_f64());
    res
}
