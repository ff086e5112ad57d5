//! Web service (port 8085): the web interface, the API gateway and the
//! WebSocket hub.
//!
//! - Pages (`/`, `/dashboard`, `/notifications`, `/monitoring`, `/logs`) and
//!   their assets are compiled into the binary ([`assets`]).
//! - The gateway serves `/api/users`, `/api/notifications`, `/api/events` and
//!   `/api/logs` with the services' own routers when they run in this process,
//!   and proxies to their base URLs when they do not.
//! - `/ws` writes each user's PUSH notifications to their open sockets, and
//!   every event of the bus to administrators' sockets ([`feed`]).
//! - `GET /api/monitoring` (administrators) gathers the services' health and
//!   the bus's topics and consumer lag.

mod assets;
mod feed;
mod gateway;
mod hub;
mod monitoring;
mod ws;

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use axum::{extract::FromRef, http::HeaderMap, middleware, routing::get, Router};
use clairon_auth::AuthContext;
use clairon_bus::{
    consumer::{self, ConsumerSpec, RetryPolicy},
    EventBus, StartFrom,
};
use clairon_events::{topics, PushRequested};
use clairon_http::ServiceDeps;
use uuid::Uuid;

pub use assets::CSP;
pub use gateway::Upstream;
pub use hub::{Hub, SocketRole};
pub use ws::BEARER_PROTOCOL;

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
    bus: Arc<dyn EventBus>,
    feed: Arc<feed::Feed>,
    cancel: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    upstreams: Upstreams,
    /// For health probes of the services.
    client: reqwest::Client,
    /// (service name, base URL) of each service whose health the monitoring page shows.
    health_targets: RwLock<Vec<(String, String)>>,
    kafka_ui_url: RwLock<Option<String>>,
}

#[derive(Clone, FromRef)]
pub(crate) struct AppState {
    web: Arc<Web>,
    auth: Arc<AuthContext>,
}

impl Web {
    /// Spawns the push consumer and the administrators' event feed; `group`
    /// must be unique per web replica so every replica sees every push and
    /// every event (the feed uses `<group>-dashboard`).
    pub async fn start(
        deps: &ServiceDeps,
        inbox: Arc<dyn PushInbox>,
        upstreams: Upstreams,
        group: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let web = Arc::new(Web {
            hub: Arc::new(Hub::default()),
            auth: deps.auth.clone(),
            inbox,
            bus: deps.bus.clone(),
            feed: Arc::new(feed::Feed::default()),
            cancel: deps.cancel.clone(),
            tasks: deps.tasks.clone(),
            upstreams,
            client,
            health_targets: RwLock::new(Vec::new()),
            kafka_ui_url: RwLock::new(None),
        });
        // One attempt and no retry topics (each replica has its own group, so
        // retry topics would multiply): a push that fails here stays in the inbox
        // and reaches the user on the next connection.
        let once = RetryPolicy {
            max_attempts: 1,
            ..deps.retry.clone()
        };
        let mut spec = ConsumerSpec::new(group, &[topics::NOTIFICATION_PUSH], once);
        // Pushes from before this replica existed are in the inbox already.
        spec.start = StartFrom::Latest;
        let handler = Arc::new(ws::PushHandler { web: web.clone() });
        let (bus, cancel) = (deps.bus.clone(), deps.cancel.clone());
        deps.tasks.spawn(async move {
            if let Err(e) = consumer::run(bus, spec, handler, cancel).await {
                tracing::error!(error = %format!("{e:#}"), "push consumer stopped");
            }
        });

        // The live feed: its handler never fails, so one attempt and no retry topics.
        let names = feed::feed_topics();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let policy = RetryPolicy {
            max_attempts: 1,
            ..deps.retry.clone()
        };
        let mut spec = ConsumerSpec::new(format!("{group}-dashboard"), &refs, policy);
        spec.start = StartFrom::Latest;
        let handler = Arc::new(feed::FeedHandler {
            feed: web.feed.clone(),
            hub: web.hub.clone(),
        });
        let (bus, cancel) = (deps.bus.clone(), deps.cancel.clone());
        deps.tasks.spawn(async move {
            if let Err(e) = consumer::run(bus, spec, handler, cancel).await {
                tracing::error!(error = %format!("{e:#}"), "dashboard feed consumer stopped");
            }
        });
        deps.tasks.spawn(feed::tick_stats(
            web.feed.clone(),
            web.hub.clone(),
            deps.cancel.clone(),
        ));
        Ok(web)
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The services the monitoring page probes: (name, base URL such as
    /// `http://127.0.0.1:8081`), each answering `/health/live` and `/health/ready`.
    /// Shown in the platform's order (users, notifications, events, logs, web).
    pub fn set_health_targets(&self, mut targets: Vec<(String, String)>) {
        const ORDER: [&str; 5] = ["users", "notifications", "events", "logs", "web"];
        targets
            .sort_by_key(|(name, _)| ORDER.iter().position(|o| o == name).unwrap_or(ORDER.len()));
        if let Ok(mut t) = self.health_targets.write() {
            *t = targets;
        }
    }

    pub fn health_targets(&self) -> Vec<(String, String)> {
        self.health_targets
            .read()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// The Kafka UI the monitoring page links to (`CLAIRON_KAFKA_UI_URL`);
    /// only `http://` and `https://` addresses are kept.
    pub fn set_kafka_ui_url(&self, url: Option<String>) {
        let url = url
            .map(|u| u.trim().to_owned())
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"));
        if let Ok(mut k) = self.kafka_ui_url.write() {
            *k = url;
        }
    }

    pub fn kafka_ui_url(&self) -> Option<String> {
        self.kafka_ui_url.read().ok().and_then(|k| k.clone())
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let mut own = Router::new()
            .route("/ws", get(ws::upgrade))
            .route("/api/monitoring", get(monitoring::get_monitoring))
            .route("/assets/{*path}", get(assets::asset));
        for (route, page) in assets::PAGES {
            own = own.route(
                route,
                get(move |headers: HeaderMap| async move { assets::serve(page, &headers) }),
            );
        }
        let own = own.with_state(AppState {
            web: self.clone(),
            auth: self.auth.clone(),
        });
        own.merge(gateway::router(&self.upstreams))
    }
}

/// The base URL this process reaches a listener bound to `addr` at: a
/// wildcard address (`0.0.0.0`, `::`) is reached on loopback.
pub fn local_base_url(addr: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Wraps the web listener's whole stack (request logging included): takes a
/// `?token=` out of `/ws` URLs before anything logs the URI. Apply it last.
pub fn outer_layers(router: Router) -> Router {
    router.layer(middleware::map_request(ws::hide_query_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        assert_eq!(
            local_base_url("0.0.0.0:8081".parse().unwrap()),
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            local_base_url("[::]:8085".parse().unwrap()),
            "http://[::1]:8085"
        );
        assert_eq!(
            local_base_url("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80"
        );
    }
}
