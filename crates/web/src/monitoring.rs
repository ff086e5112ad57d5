//! `GET /api/monitoring` (administrators): each service's liveness and
//! readiness as its own `/health/live` and `/health/ready` answer them, the
//! event bus's topics, partitions and consumer-group lag, and the Kafka UI
//! address when one is configured.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, Json};
use clairon_events::Timestamp;
use clairon_http::{auth::AdminOnly, ApiResult};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{AppState, Web};

/// How long one health probe or the bus description may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) async fn get_monitoring(
    State(state): State<AppState>,
    AdminOnly(_admin): AdminOnly,
) -> ApiResult<Json<Value>> {
    Ok(Json(overview(&state.web).await))
}

/// The monitoring body: `{services, bus, busError, kafkaUiUrl, checkedAt}`.
pub(crate) async fn overview(web: &Arc<Web>) -> Value {
    let targets = web.health_targets();
    let probes = futures::future::join_all(
        targets
            .iter()
            .map(|(name, base)| probe(&web.client, name, base)),
    );
    let describe = tokio::time::timeout(PROBE_TIMEOUT, web.bus.describe());
    let (services, bus) = tokio::join!(probes, describe);
    let (bus, bus_error) = match bus {
        Ok(Ok(o)) => (serde_json::to_value(o).unwrap_or(Value::Null), Value::Null),
        Ok(Err(e)) => (Value::Null, json!(e.to_string())),
        Err(_) => (Value::Null, json!("the event bus did not answer in time")),
    };
    json!({
        "services": services,
        "bus": bus,
        "busError": bus_error,
        "kafkaUiUrl": web.kafka_ui_url(),
        "checkedAt": Timestamp::now(),
    })
}

/// `{name, url, live, ready, status, httpStatus, checks, error, latencyMs}` of one service.
async fn probe(client: &reqwest::Client, name: &str, base: &str) -> Value {
    let base = base.trim_end_matches('/');
    let started = Instant::now();
    let live_req = client
        .get(format!("{base}/health/live"))
        .timeout(PROBE_TIMEOUT)
        .send();
    let ready_req = client
        .get(format!("{base}/health/ready"))
        .timeout(PROBE_TIMEOUT)
        .send();
    let (live, ready) = tokio::join!(live_req, ready_req);
    let live_ok = matches!(&live, Ok(r) if r.status().is_success());
    let latency = started.elapsed().as_millis() as u64;
    let (ready_ok, http_status, checks, error) = match ready {
        Ok(res) => {
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let error = (!status.is_success())
                .then(|| format!("/health/ready answered {}", status.as_u16()));
            (
                status.is_success(),
                Some(status.as_u16()),
                body.get("checks").cloned().unwrap_or(Value::Null),
                error,
            )
        }
        Err(e) => (
            false,
            None,
            Value::Null,
            Some(if e.is_timeout() {
                "no answer in time".to_owned()
            } else if e.is_connect() {
                "not reachable (connection refused or no route)".to_owned()
            } else {
                format!("request failed: {e}")
            }),
        ),
    };
    json!({
        "name": name,
        "url": base,
        "live": live_ok,
        "ready": ready_ok,
        "status": if ready_ok { "UP" } else { "DOWN" },
        "httpStatus": http_status,
        "checks": checks,
        "error": error,
        "latencyMs": latency,
    })
}
