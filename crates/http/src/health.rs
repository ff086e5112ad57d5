//! `/health/live` (the process answers) and `/health/ready` (its database and its
//! bus answer), for probes and load balancers.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use clairon_bus::EventBus;
use clairon_store::Database;
use serde_json::json;

#[derive(Clone)]
struct Checks {
    db: Option<Database>,
    bus: Arc<dyn EventBus>,
}

pub fn router(db: Option<Database>, bus: Arc<dyn EventBus>) -> Router {
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "UP"})) }),
        )
        .route("/health/ready", get(ready))
        .with_state(Checks { db, bus })
}

async fn ready(State(c): State<Checks>) -> (StatusCode, Json<serde_json::Value>) {
    let timeout = Duration::from_secs(2);
    let db = match &c.db {
        None => "UP".to_owned(),
        Some(db) => match tokio::time::timeout(timeout, db.ping()).await {
            Ok(Ok(())) => "UP".to_owned(),
            Ok(Err(e)) => format!("DOWN: {e}"),
            Err(_) => "DOWN: timed out".to_owned(),
        },
    };
    let bus = match tokio::time::timeout(timeout, c.bus.ready()).await {
        Ok(Ok(())) => "UP".to_owned(),
        Ok(Err(e)) => format!("DOWN: {e}"),
        Err(_) => "DOWN: timed out".to_owned(),
    };
    let up = db == "UP" && bus == "UP";
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if up { "UP" } else { "DOWN" },
            "checks": { "database": db, "bus": bus, "busEngine": c.bus.engine() }
        })),
    )
}
