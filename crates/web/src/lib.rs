//! Web service (port 8085): the API gateway and the WebSocket hub.
//!
//! The gateway serves `/api/users`, `/api/notifications`, `/api/events` and
//! `/api/logs` with the services' own routers when they run in this process,
//! and proxies to their base URLs when they do not. The hub keeps each user's
//! open sockets and writes PUSH notifications read from the bus to them.

mod gateway;
mod hub;
mod ws;

use std::sync::Arc;

use async_trait::async_trait;
use axum::{extract::FromRef, response::Html, routing::get, Router};
use clairon_auth::AuthContext;
use clairon_bus::consumer::{self, ConsumerSpec};
use clairon_events::{topics, PushRequested};
use clairon_http::ServiceDeps;
use uuid::Uuid;

pub use gateway::Upstream;
pub use hub::Hub;

/// Where undelivered PUSH notifications are kept (the notification service).
#[async_trait]
pub trait PushInbox: Send + Sync + 'static {
    /// The user's PUSH notifications no socket has taken yet, oldest first.
    async fn pending(&self, user: Uuid) -> anyhow::Result<Vec<PushRequested>>;
    /// Records that these reached a socket.
    async fn delivered(&self, ids: &[Uuid]) -> anyhow::Result<()>;
}

/// The four services behind the gateway.
pub struct Upstreams {
    pub users: Upstream,
    pub notifications: Upstream,
    pub events: Upstream,
    pub logs: Upstream,
}

pub struct Web {
    hub: Arc<Hub>,
    auth: Arc<AuthContext>,
    inbox: Arc<dyn PushInbox>,
    cancel: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    upstreams: Upstreams,
}

#[derive(Clone, FromRef)]
pub(crate) struct AppState {
    web: Arc<Web>,
    auth: Arc<AuthContext>,
}

impl Web {
    /// Spawns the push consumer; `group` must be unique per web replica so
    /// every replica sees every push.
    pub async fn start(
        deps: &ServiceDeps,
        inbox: Arc<dyn PushInbox>,
        upstreams: Upstreams,
        group: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let web = Arc::new(Web {
            hub: Arc::new(Hub::default()),
            auth: deps.auth.clone(),
            inbox,
            cancel: deps.cancel.clone(),
            tasks: deps.tasks.clone(),
            upstreams,
        });
        let mut spec = ConsumerSpec::new(group, &[topics::NOTIFICATION_PUSH], deps.retry.clone());
        // Pushes from before this replica existed are in the inbox already.
        spec.start = clairon_bus::StartFrom::Latest;
        let handler = Arc::new(ws::PushHandler { web: web.clone() });
        let (bus, cancel) = (deps.bus.clone(), deps.cancel.clone());
        deps.tasks.spawn(async move {
            if let Err(e) = consumer::run(bus, spec, handler, cancel).await {
                tracing::error!(error = %format!("{e:#}"), "push consumer stopped");
            }
        });
        Ok(web)
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let own = Router::new()
            .route("/", get(index))
            .route("/ws", get(ws::upgrade))
            .with_state(AppState {
                web: self.clone(),
                auth: self.auth.clone(),
            });
        own.merge(gateway::router(&self.upstreams))
    }
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}
