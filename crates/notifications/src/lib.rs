//! Notification service (port 8082).
//!
//! Consumes `UserRegistered` (a welcome EMAIL) and `NotificationTriggered`,
//! stores every notification with its status history and delivers it through
//! its channel. Idempotent per `notificationId`: a redelivered event whose
//! notification already reached a final status sends nothing. The only repeat
//! possible is a crash between the provider's acceptance and our commit; the
//! provider gets the notification id as its idempotency key for that case.

mod api;
pub mod channels;
mod repo;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::Arc;

use async_trait::async_trait;
use axum::{
    extract::FromRef,
    routing::{get, post},
    Router,
};
use clairon_auth::AuthContext;
use clairon_bus::consumer::{self, ConsumerSpec};
use clairon_events::{topics, PushRequested};
use clairon_http::ServiceDeps;
use clairon_store::{migrate, outbox::Outbox, Database};
use uuid::Uuid;

pub use api::ApiDoc;
pub use channels::Channels;
pub use repo::migrations;

/// Contact details the service needs when an event names no recipient.
#[derive(Debug, Clone)]
pub struct Contact {
    pub email: String,
    pub phone_number: Option<String>,
    pub first_name: String,
}

/// Where contact details come from (the users service, in-process or remote).
#[async_trait]
pub trait UserDirectory: Send + Sync + 'static {
    async fn contact(&self, user_id: Uuid) -> anyhow::Result<Option<Contact>>;
}

pub struct Notifications {
    db: Database,
    outbox: Arc<Outbox>,
    auth: Arc<AuthContext>,
    channels: Channels,
    directory: Arc<dyn UserDirectory>,
    /// Notifications being delivered right now in this process: a second
    /// delivery of the same one (say its retry copy and a redelivery of the
    /// original) waits for another round instead of sending in parallel.
    in_flight: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    /// Names this process in delivery claims, which keep other processes from
    /// sending a notification this one is sending (see [`repo::claim`]).
    owner: String,
}

#[derive(Clone, FromRef)]
struct AppState {
    svc: Arc<Notifications>,
    auth: Arc<AuthContext>,
}

pub const CONSUMER_GROUP: &str = "notifications";

impl Notifications {
    /// Runs migrations, then spawns the outbox relay and the consumer.
    /// `owner` names this process in delivery claims: unique among the
    /// processes sharing the database, and the same after a restart if it can
    /// be, so that a restarted process takes its claims back at once.
    pub async fn start(
        deps: &ServiceDeps,
        db: Database,
        channels: Channels,
        directory: Arc<dyn UserDirectory>,
        owner: String,
    ) -> anyhow::Result<Arc<Self>> {
        migrate(&db, "notifications", &migrations()).await?;
        let svc = Arc::new(Notifications {
            db: db.clone(),
            outbox: Outbox::new(repo::OUTBOX),
            auth: deps.auth.clone(),
            channels,
            directory,
            in_flight: Default::default(),
            owner,
        });
        deps.tasks.spawn(
            svc.outbox
                .clone()
                .run_relay(db, deps.bus.clone(), deps.cancel.clone()),
        );
        let spec = ConsumerSpec::new(
            CONSUMER_GROUP,
            &[topics::USER_REGISTERED, topics::NOTIFICATION_TRIGGERED],
            deps.retry.clone(),
        );
        let (bus, handler, cancel) = (deps.bus.clone(), svc.clone(), deps.cancel.clone());
        deps.tasks.spawn(async move {
            if let Err(e) = consumer::run(bus, spec, handler, cancel).await {
                tracing::error!(error = %format!("{e:#}"), "notification consumer stopped");
            }
        });
        Ok(svc)
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/notifications", get(api::list))
            .route("/api/notifications/dead-letters", get(api::dead_letters))
            .route(
                "/api/notifications/dead-letters/{id}/replay",
                post(api::replay),
            )
            .route("/api/notifications/push/pending", get(api::push_pending))
            .route(
                "/api/notifications/push/delivered",
                post(api::push_delivered),
            )
            .route("/api/notifications/{id}", get(api::get_one))
            .route("/api/notifications/{id}/read", post(api::mark_read))
            .with_state(AppState {
                svc: self.clone(),
                auth: self.auth.clone(),
            })
    }

    pub fn openapi() -> utoipa::openapi::OpenApi {
        <ApiDoc as utoipa::OpenApi>::openapi()
    }

    /// PUSH notifications of `user` sent while no socket took them, oldest first.
    pub async fn pending_pushes(
        &self,
        user: Uuid,
        limit: i64,
    ) -> anyhow::Result<Vec<PushRequested>> {
        repo::pending_pushes(&self.db, user, limit).await
    }

    /// Records that PUSH notifications reached a socket of their user.
    pub async fn mark_pushes_delivered(&self, ids: &[Uuid]) -> anyhow::Result<()> {
        repo::mark_delivered(&self.db, ids).await
    }
}
