//! Event publisher (port 8083): turns authenticated API calls into
//! `NotificationTriggered` and `UserActionPerformed` events. Each accepted
//! request is committed to the outbox (with its idempotency record, when the
//! caller sent an `Idempotency-Key`) before the 202 goes out.

mod api;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use axum::{extract::FromRef, routing::post, Router};
use clairon_auth::AuthContext;
use clairon_http::ServiceDeps;
use clairon_store::{migrate, now_ms, outbox::Outbox, Database, Migration};

pub use api::{ApiDoc, NotificationRequest, UserActionRequest};

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct Publisher {
    db: Database,
    outbox: Arc<Outbox>,
    auth: Arc<AuthContext>,
}

#[derive(Clone, FromRef)]
struct AppState {
    svc: Arc<Publisher>,
    auth: Arc<AuthContext>,
}

pub fn migrations() -> Vec<Migration> {
    vec![
        Outbox::new("publisher_outbox").migration(1),
        Migration::portable(
            2,
            "idempotency keys",
            // Key: 2 × 255 utf8mb4 characters = 2,040 bytes, under InnoDB's 3,072.
            // `response` is at most a batch's 500 ids (~20 KB), within TEXT.
            "CREATE TABLE publisher_idempotency (\
             principal VARCHAR(255) NOT NULL, idem_key VARCHAR(255) NOT NULL, request_hash VARCHAR(64) NOT NULL, \
             response TEXT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (principal, idem_key));\
             CREATE INDEX publisher_idempotency_created ON publisher_idempotency (created_at)",
        ),
    ]
}

impl Publisher {
    pub async fn start(deps: &ServiceDeps, db: Database) -> anyhow::Result<Arc<Self>> {
        migrate(&db, "publisher", &migrations()).await?;
        let svc = Arc::new(Publisher {
            db: db.clone(),
            outbox: Outbox::new("publisher_outbox"),
            auth: deps.auth.clone(),
        });
        deps.tasks.spawn(svc.outbox.clone().run_relay(
            db.clone(),
            deps.bus.clone(),
            deps.cancel.clone(),
        ));
        let (db2, cancel) = (db, deps.cancel.clone());
        deps.tasks.spawn(async move {
            loop {
                let cutoff = now_ms() - IDEMPOTENCY_TTL.as_millis() as i64;
                if let Err(e) =
                    sqlx::query("DELETE FROM publisher_idempotency WHERE created_at < ?")
                        .bind(cutoff)
                        .execute(&db2.pool)
                        .await
                {
                    tracing::warn!(error = %e, "pruning idempotency keys failed");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
            }
        });
        Ok(svc)
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/events/notifications", post(api::trigger))
            .route("/api/events/notifications/batch", post(api::trigger_batch))
            .route("/api/events/user-actions", post(api::user_action))
            .with_state(AppState {
                svc: self.clone(),
                auth: self.auth.clone(),
            })
    }

    pub fn openapi() -> utoipa::openapi::OpenApi {
        <ApiDoc as utoipa::OpenApi>::openapi()
    }
}
