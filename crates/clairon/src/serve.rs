//! `clairon serve`: opens the bus and databases, starts the chosen services,
//! binds their listeners and shuts everything down in order on SIGTERM/SIGINT.

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use axum::Router;
use clairon_auth::{AuthContext, Revocations, Tokens};
use clairon_bus::{consumer::RetryPolicy, embedded::EmbeddedBus, EventBus};
use clairon_events::PushRequested;
use clairon_http::ServiceDeps;
use clairon_notifications::{channels, Contact, Notifications, UserDirectory};
use clairon_store::Database;
use clairon_users::Users;
use clairon_web::{PushInbox, Upstream, Upstreams, Web};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use uuid::Uuid;

use crate::{
    config::{Common, ServeArgs, ServiceName},
    remote::{RemoteDirectory, RemoteInbox, ServiceClient},
};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let wanted: HashSet<ServiceName> = args.services.iter().copied().collect();
    anyhow::ensure!(!wanted.is_empty(), "--services names no service");
    std::fs::create_dir_all(&args.common.data_dir).with_context(|| {
        format!(
            "creating the data folder {}",
            args.common.data_dir.display()
        )
    })?;

    // Install the metrics recorder before anything records.
    let _ = clairon_http::metrics::handle();
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();

    let bus = open_bus(&args, &cancel, &tasks).await?;

    // Each service owns its tables: only a process that runs the users
    // service opens its database. It answers from the revocation table
    // (authoritative, immediate); the others follow the `token-revoked` topic.
    let users_db = if wanted.contains(&ServiceName::Users) {
        Some(open_db(&args.common, "users").await?)
    } else {
        None
    };
    let revocations: Arc<dyn Revocations> = match &users_db {
        Some(db) => clairon_users::SqlRevocations::open(db.clone()).await?,
        None => {
            check_revocation_retention(&args)?;
            // Unique per start and never committed: every start replays the topic.
            let group = format!("revocations-{}", Uuid::new_v4());
            clairon_users::BusRevocations::start(
                bus.clone(),
                &group,
                REVOCATIONS_CATCH_UP,
                cancel.clone(),
                &tasks,
            )
            .await
            .context("reading the token revocations from the event bus")?
        }
    };
    let secret = jwt_secret(&args.common, true)?;
    let ttl = Duration::from_secs(args.common.token_ttl_secs);
    // A second signer with the same key, for the calls this process makes to other services.
    let tokens = Arc::new(Tokens::new(secret.as_bytes(), ttl)?);
    let auth = Arc::new(AuthContext {
        tokens: Tokens::new(secret.as_bytes(), ttl)?,
        revocations,
    });
    let deps = ServiceDeps {
        bus: bus.clone(),
        auth,
        cancel: cancel.clone(),
        tasks: tasks.clone(),
        retry: RetryPolicy {
            max_attempts: args.retry_max_attempts.max(1),
            initial_backoff: Duration::from_millis(args.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(
                args.retry_max_backoff_ms.max(args.retry_initial_backoff_ms),
            ),
        },
    };

    spawn_lag_gauges(bus.clone(), cancel.clone(), &tasks);

    // Services, in dependency order; each listener gets its router plus the common routes.
    let mut listeners: Vec<(ServiceName, SocketAddr, Router)> = Vec::new();
    let mut docs = Vec::new();

    let users = if let Some(users_db) = &users_db {
        let admin = clairon_users::AdminBootstrap {
            email: args.admin_email.clone(),
            password: args.admin_password.clone(),
        };
        let svc = Users::start(&deps, users_db.clone(), admin)
            .await
            .context("starting the users service")?;
        let router = svc.router();
        listeners.push((
            ServiceName::Users,
            args.users_addr,
            common_routes(
                router.clone(),
                Some(users_db.clone()),
                &bus,
                Users::openapi(),
            ),
        ));
        docs.push(Users::openapi());
        Some((svc, router))
    } else {
        None
    };

    let events = if wanted.contains(&ServiceName::Events) {
        let db = open_db(&args.common, "publisher").await?;
        let svc = clairon_publisher::Publisher::start(&deps, db.clone())
            .await
            .context("starting the event publisher")?;
        let router = svc.router();
        let doc = clairon_publisher::Publisher::openapi();
        listeners.push((
            ServiceName::Events,
            args.events_addr,
            common_routes(router.clone(), Some(db), &bus, doc.clone()),
        ));
        docs.push(doc);
        Some(router)
    } else {
        None
    };

    let notifications = if wanted.contains(&ServiceName::Notifications) {
        let db = open_db(&args.common, "notifications").await?;
        let directory: Arc<dyn UserDirectory> = match (&users, &args.users_url) {
            (Some((svc, _)), _) => Arc::new(LocalDirectory(svc.clone())),
            (None, Some(url)) => Arc::new(RemoteDirectory(ServiceClient::new(url, tokens.clone(), "clairon-notifications")?)),
            (None, None) => anyhow::bail!(
                "the notification service looks up contact details in the users service: run it in this process or set CLAIRON_USERS_URL"
            ),
        };
        let chans = build_channels(&args, &bus)?;
        let svc = Notifications::start(&deps, db.clone(), chans, directory, claim_owner(&args)?)
            .await
            .context("starting the notification service")?;
        let router = svc.router();
        let doc = Notifications::openapi();
        listeners.push((
            ServiceName::Notifications,
            args.notifications_addr,
            common_routes(router.clone(), Some(db), &bus, doc.clone()),
        ));
        docs.push(doc);
        Some((svc, router))
    } else {
        None
    };

    let logs = if wanted.contains(&ServiceName::Logs) {
        let db = open_db(&args.common, "audit").await?;
        let svc = clairon_audit::Audit::start(&deps, db.clone())
            .await
            .context("starting the logging service")?;
        let router = svc.router();
        let doc = clairon_audit::Audit::openapi();
        listeners.push((
            ServiceName::Logs,
            args.logs_addr,
            common_routes(router.clone(), Some(db), &bus, doc.clone()),
        ));
        docs.push(doc);
        Some(router)
    } else {
        None
    };

    let mut web_service: Option<Arc<Web>> = None;
    if wanted.contains(&ServiceName::Web) {
        let inbox: Arc<dyn PushInbox> = match (&notifications, &args.notifications_url) {
            (Some((svc, _)), _) => Arc::new(LocalInbox(svc.clone())),
            (None, Some(url)) => Arc::new(RemoteInbox(ServiceClient::new(url, tokens.clone(), "clairon-web")?)),
            (None, None) => anyhow::bail!(
                "the web service keeps undelivered pushes in the notification service: run it in this process or set CLAIRON_NOTIFICATIONS_URL"
            ),
        };
        let pick = |local: Option<Router>,
                    url: &Option<String>,
                    name: &str,
                    var: &str|
         -> anyhow::Result<Upstream> {
            match (local, url) {
                (Some(r), _) => Ok(Upstream::Local(r)),
                (None, Some(u)) => Ok(Upstream::Remote(u.clone())),
                (None, None) => anyhow::bail!(
                    "the web gateway needs {name}: run it in this process or set {var}"
                ),
            }
        };
        let upstreams = Upstreams {
            users: pick(
                users.as_ref().map(|(_, r)| r.clone()),
                &args.users_url,
                "the users service",
                "CLAIRON_USERS_URL",
            )?,
            notifications: pick(
                notifications.as_ref().map(|(_, r)| r.clone()),
                &args.notifications_url,
                "the notification service",
                "CLAIRON_NOTIFICATIONS_URL",
            )?,
            events: pick(
                events.clone(),
                &args.events_url,
                "the event publisher",
                "CLAIRON_EVENTS_URL",
            )?,
            logs: pick(
                logs.clone(),
                &args.logs_url,
                "the logging service",
                "CLAIRON_LOGS_URL",
            )?,
        };
        let web = Web::start(&deps, inbox, upstreams, &args.web_group)
            .await
            .context("starting the web service")?;
        web.set_kafka_ui_url(args.kafka_ui_url.clone());
        web_service = Some(web.clone());
        let mut doc = docs
            .first()
            .cloned()
            .unwrap_or_else(|| utoipa::openapi::OpenApiBuilder::new().build());
        for d in docs.iter().skip(1) {
            doc.merge(d.clone());
        }
        listeners.push((
            ServiceName::Web,
            args.web_addr,
            common_routes(web.router(), None, &bus, doc),
        ));
    }

    // Bind everything before announcing anything, so a port clash fails fast.
    let mut bound = Vec::new();
    for (name, addr, router) in listeners {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("the {} service cannot listen on {addr}", name.as_str()))?;
        bound.push((name, l, router));
    }
    let mut servers = Vec::new();
    let mut health_targets = Vec::new();
    for (name, l, router) in bound {
        let local = l.local_addr()?;
        println!("clairon: {} listening on http://{local}", name.as_str());
        tracing::info!(service = name.as_str(), %local, "listening");
        health_targets.push((name.as_str().to_owned(), clairon_web::local_base_url(local)));
        let router = clairon_http::layers::apply(name.as_str(), router);
        // Outermost on the web listener: `/ws?token=` leaves the URI before anything logs it.
        let router = match name {
            ServiceName::Web => clairon_web::outer_layers(router),
            _ => router,
        };
        let c = cancel.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(l, router)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await
        }));
    }
    if let Some(web) = &web_service {
        // The monitoring page probes the services of this process and those it reaches by URL.
        for (name, url) in [
            ("users", &args.users_url),
            ("notifications", &args.notifications_url),
            ("events", &args.events_url),
            ("logs", &args.logs_url),
        ] {
            let here = health_targets.iter().any(|(n, _)| n == name);
            if let (Some(url), false) = (url, here) {
                health_targets.push((name.to_owned(), url.clone()));
            }
        }
        web.set_health_targets(health_targets);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    shutdown_signal().await;
    tracing::info!("shutting down: intake stops, in-flight work finishes");
    cancel.cancel();
    tasks.close();
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let drain = async {
        for s in servers {
            let _ = s.await;
        }
        tasks.wait().await;
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(
            grace_secs = args.shutdown_grace_secs,
            "shutdown grace period over; exiting with work unfinished (it will be redelivered)"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long start-up may take to replay the `token-revoked` topic.
const REVOCATIONS_CATCH_UP: Duration = Duration::from_secs(60);

/// A process without the users service knows only the revocations the bus
/// still holds: the log must keep them at least as long as a token lives.
fn check_revocation_retention(args: &ServeArgs) -> anyhow::Result<()> {
    let (retention_hours, var) = if args.kafka.kafka_brokers.is_some() {
        (
            args.kafka.kafka_retention_hours.max(0) as u64,
            "CLAIRON_KAFKA_RETENTION_HOURS",
        )
    } else {
        (args.bus_retention_hours, "CLAIRON_BUS_RETENTION_HOURS")
    };
    anyhow::ensure!(
        args.common.token_ttl_secs < retention_hours.saturating_mul(3600),
        "tokens live {} s but the event log keeps revocations only {retention_hours} h: \
         raise {var} or lower CLAIRON_TOKEN_TTL_SECS",
        args.common.token_ttl_secs
    );
    Ok(())
}

/// Publishes each consumer group's lag as `clairon_bus_consumer_lag`, for alerts.
fn spawn_lag_gauges(bus: Arc<dyn EventBus>, cancel: CancellationToken, tasks: &TaskTracker) {
    tasks.spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), bus.describe()).await {
                Ok(Ok(o)) => {
                    for g in o.groups {
                        metrics::gauge!(
                            "clairon_bus_consumer_lag",
                            "group" => g.group,
                            "topic" => g.topic,
                            "partition" => g.partition.to_string()
                        )
                        .set(g.lag as f64);
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "could not read consumer lag"),
                Err(_) => tracing::debug!("reading consumer lag timed out"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
        }
    });
}

/// The event bus: Kafka when brokers are configured, else the embedded log.
async fn open_bus(
    args: &ServeArgs,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Arc<dyn EventBus>> {
    if args.kafka.kafka_brokers.is_some() {
        let bus = kafka_bus(&args.kafka)?;
        if args.kafka.kafka_init_topics {
            let created = init_topics(&bus, args.retry_max_attempts)
                .await
                .context("creating Kafka topics (disable with CLAIRON_KAFKA_INIT_TOPICS=false)")?;
            if !created.is_empty() {
                tracing::info!(topics = ?created, "created Kafka topics");
            }
        }
        return Ok(Arc::new(bus));
    }
    let bus = Arc::new(
        EmbeddedBus::open(&args.common.data_dir.join("bus.db"), args.bus_partitions)
            .await
            .context("opening the embedded event log")?,
    );
    let (b, cancel, keep) = (
        bus.clone(),
        cancel.clone(),
        Duration::from_secs(args.bus_retention_hours * 3600),
    );
    tasks.spawn(async move {
        loop {
            match b.prune(keep).await {
                Ok(n) if n > 0 => tracing::info!(records = n, "pruned expired event log records"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning the event log failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    });
    Ok(bus)
}

fn kafka_bus(k: &crate::config::KafkaArgs) -> anyhow::Result<clairon_bus::kafka::KafkaBus> {
    let brokers = k
        .kafka_brokers
        .clone()
        .ok_or_else(|| anyhow::anyhow!("set CLAIRON_KAFKA_BROKERS"))?;
    let settings = clairon_bus::kafka::KafkaSettings {
        brokers,
        topic_prefix: k.kafka_topic_prefix.clone(),
        client_id: format!("clairon-{}", std::process::id()),
        security_protocol: k.kafka_security_protocol.clone(),
        sasl_mechanism: k.kafka_sasl_mechanism.clone(),
        sasl_username: k.kafka_sasl_username.clone(),
        sasl_password: k.kafka_sasl_password.clone(),
        ssl_ca_location: k.kafka_ssl_ca_location.clone(),
        partitions: k.kafka_partitions,
        replication_factor: k.kafka_replication_factor,
        retention_ms: Some(k.kafka_retention_hours * 3600 * 1000),
        session_timeout_ms: k.kafka_session_timeout_ms,
        instance_id: k.kafka_instance_id.clone(),
    };
    clairon_bus::kafka::KafkaBus::connect(settings).context("configuring the Kafka client")
}

/// The consumer groups of every service, with the topics each consumes: their
/// retry topics are created with the main ones.
fn consumer_groups() -> Vec<(String, Vec<String>)> {
    use clairon_events::topics::*;
    let owned = |ts: &[&str]| ts.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let mut audit = owned(&ALL);
    audit.extend(ALL.iter().map(|t| dead_letter(t)));
    vec![
        (
            clairon_notifications::CONSUMER_GROUP.to_owned(),
            owned(&[USER_REGISTERED, NOTIFICATION_TRIGGERED]),
        ),
        (clairon_audit::CONSUMER_GROUP.to_owned(), audit),
    ]
}

/// Creates the topics of every group (with their retry topics) if missing.
async fn init_topics(
    bus: &clairon_bus::kafka::KafkaBus,
    max_attempts: u32,
) -> anyhow::Result<Vec<String>> {
    let groups = consumer_groups();
    let refs: Vec<Vec<&str>> = groups
        .iter()
        .map(|(_, ts)| ts.iter().map(String::as_str).collect())
        .collect();
    let pairs: Vec<(&str, &[&str])> = groups
        .iter()
        .zip(&refs)
        .map(|((g, _), ts)| (g.as_str(), ts.as_slice()))
        .collect();
    Ok(bus.init_topics(&pairs, max_attempts).await?)
}

/// `clairon kafka init`: creates the topics, then exits.
pub async fn kafka_init(args: crate::config::KafkaInitArgs) -> anyhow::Result<()> {
    let bus = kafka_bus(&args.kafka)?;
    let created = init_topics(&bus, args.retry_max_attempts).await?;
    println!("clairon: {} topic(s) created", created.len());
    for t in created {
        println!("  {t}");
    }
    Ok(())
}

fn common_routes(
    router: Router,
    db: Option<Database>,
    bus: &Arc<dyn EventBus>,
    mut doc: utoipa::openapi::OpenApi,
) -> Router {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .build(),
        ),
    );
    doc.info.title = "Clairon".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    let doc = Arc::new(doc);
    router
        .merge(clairon_http::health::router(db, bus.clone()))
        .merge(clairon_http::metrics::router())
        .route(
            "/api/docs/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
}

/// Names this process in the notification service's delivery claims. The
/// static group member id is unique per process and kept across restarts;
/// without one, an id kept in the data folder (one per process, as each
/// process has its own) does the same, so a restarted process takes back at
/// once what it was sending when it stopped.
fn claim_owner(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(id) = args
        .kafka
        .kafka_instance_id
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        return Ok(id.to_owned());
    }
    let path = args.common.data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Ok(_) => write_instance_id(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_instance_id(&path),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_instance_id(path: &std::path::Path) -> anyhow::Result<String> {
    let id = Uuid::new_v4().to_string();
    std::fs::write(path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

async fn open_db(c: &Common, service: &str) -> anyhow::Result<Database> {
    let url = match &c.database_url {
        Some(u) => u.clone(),
        None => format!("sqlite://{}/{service}.db", c.data_dir.display()),
    };
    Database::connect(&url, 8)
        .await
        .with_context(|| format!("opening the {service} database"))
}

fn build_channels(args: &ServeArgs, bus: &Arc<dyn EventBus>) -> anyhow::Result<channels::Channels> {
    let email: Box<dyn channels::Channel> = match &args.smtp_url {
        Some(url) => Box::new(channels::EmailChannel::new(&channels::SmtpSettings {
            url: url.clone(),
            username: args.smtp_username.clone(),
            password: args.smtp_password.clone(),
            from: args.smtp_from.clone(),
        })?),
        None => {
            tracing::warn!("CLAIRON_SMTP_URL is not set: emails are stored as CAPTURED, not sent");
            Box::new(channels::Capture)
        }
    };
    let sms: Box<dyn channels::Channel> = match &args.sms_url {
        Some(url) => Box::new(channels::SmsChannel::new(channels::SmsSettings {
            url: url.clone(),
            token: args.sms_token.clone(),
        })?),
        None => {
            tracing::warn!("CLAIRON_SMS_URL is not set: SMS are stored as CAPTURED, not sent");
            Box::new(channels::Capture)
        }
    };
    Ok(channels::Channels {
        email,
        sms,
        push: Box::new(channels::PushChannel::new(bus.clone())),
    })
}

/// The token signing secret: the configured one, else the one kept in the data
/// folder (created on first start when `create`).
pub fn jwt_secret(c: &Common, create: bool) -> anyhow::Result<String> {
    if let Some(s) = &c.jwt_secret {
        return Ok(s.clone());
    }
    let path = c.data_dir.join("jwt-secret");
    match std::fs::read_to_string(&path) {
        Ok(s) => return Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "reading the token secret {} (set CLAIRON_JWT_SECRET)",
                    path.display()
                )
            })
        }
    }
    let secret = clairon_auth::random_secret(64);
    std::fs::create_dir_all(&c.data_dir)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    use std::io::Write;
    let mut f = opts
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    tracing::info!(path = %path.display(), "generated the token signing secret");
    Ok(secret)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Contact look-ups served by the users service in this process.
struct LocalDirectory(Arc<Users>);

#[async_trait]
impl UserDirectory for LocalDirectory {
    async fn contact(&self, user_id: Uuid) -> anyhow::Result<Option<Contact>> {
        Ok(self.0.contact(user_id).await?.map(|c| Contact {
            email: c.email,
            phone_number: c.phone_number,
            first_name: c.first_name,
        }))
    }
}

/// The PUSH inbox kept by the notification service in this process.
struct LocalInbox(Arc<Notifications>);

#[async_trait]
impl PushInbox for LocalInbox {
    async fn pending(&self, user: Uuid) -> anyhow::Result<Vec<PushRequested>> {
        self.0.pending_pushes(user, 500).await
    }

    async fn delivered(&self, ids: &[Uuid]) -> anyhow::Result<()> {
        self.0.mark_pushes_delivered(ids).await
    }
}
