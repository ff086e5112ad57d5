//! `clairon-bench`: measures a Clairon platform through its public APIs only
//! (HTTP and WebSocket, all through the web gateway) and prints one JSON
//! document of figures to stdout. Progress goes to stderr.
//!
//! Phases:
//! 1. `ingest`: closed-loop HTTP/1.1 keep-alive workers trigger PUSH
//!    notifications as fast as they are answered;
//! 2. drain: the bench user's WebSocket is read until it has been quiet for 2 s;
//! 3. `latency`: an open-loop fixed offered rate of PUSH notifications, each
//!    matched to its WebSocket frame to measure trigger → delivery latency.

mod api;
mod collector;
mod phases;
mod report;
mod stats;
mod target;

use std::{io::Write, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{ArgGroup, Parser};
use uuid::Uuid;

use crate::{
    api::Api,
    collector::{Collector, Titles},
    report::{Machine, Report, Setup},
    target::Target,
};

/// Benchmark a Clairon platform through its public HTTP and WebSocket APIs.
///
/// Prints one JSON document of figures to stdout; progress goes to stderr.
#[derive(Parser, Debug, Clone)]
#[command(name = "clairon-bench", version, about, long_about = None)]
#[command(group(ArgGroup::new("target").required(true).args(["start", "web_url"])))]
pub struct Args {
    /// Spawn the `clairon` binary (fresh temporary data directory, every
    /// service on 127.0.0.1 with an ephemeral port) and stop it at the end.
    #[arg(long)]
    pub start: bool,

    /// The `clairon` binary to spawn with --start [default: `clairon` next to
    /// this program, e.g. target/release/clairon].
    #[arg(long, value_name = "PATH", requires = "start")]
    pub clairon_bin: Option<PathBuf>,

    /// Extra environment for the spawned binary (repeatable); applied last,
    /// so it can override what the bench sets (with --split: except the
    /// listen addresses, service URLs and database URL).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env, requires = "start")]
    pub envs: Vec<(String, String)>,

    /// With --start: run the platform distributed, one process per service,
    /// as a real deployment does. Needs Kafka and MySQL/MariaDB given with
    /// --env (`eval "$(scripts/infra.sh up)"` starts both locally).
    ///
    /// Each service runs as `clairon serve --services <svc>` on its own
    /// 127.0.0.1 port with its own data folder; the web gateway reaches the
    /// four others by URL and the notification service reaches users. Users
    /// starts first (it creates the admin), then the other four; the bench
    /// waits for each one's `/health/ready`. They share a random
    /// CLAIRON_JWT_SECRET, the admin account, CLAIRON_LOG=warn and the --env
    /// pairs; CLAIRON_* variables of the bench's own environment are not passed
    /// on.
    ///
    /// Requires --env CLAIRON_KAFKA_BROKERS=… and --env
    /// CLAIRON_DATABASE_URL=mysql://user:password@host:port/db. The database
    /// named in that URL is left alone: the bench creates a fresh one on the
    /// same server, `clairon_test_<unix secs>_bench_<random>`, with the
    /// `mariadb` (or `mysql`) command-line client, and drops it at the end. The
    /// account must be allowed to create and drop it (the one scripts/infra.sh
    /// provisions may create `clairon_test_%`; a test run drops such a database
    /// left behind by a killed bench once it is an hour old). Unless --env sets
    /// CLAIRON_KAFKA_TOPIC_PREFIX, topics and consumer groups get the prefix
    /// `bench-<unix secs>-<random>-`, so runs do not see each other's records;
    /// they are deleted at the end.
    #[arg(long, requires = "start")]
    pub split: bool,

    /// Web gateway of an already running platform, e.g. http://127.0.0.1:8085
    /// (loopback addresses only).
    #[arg(long, value_name = "URL")]
    pub web_url: Option<String>,

    /// Admin email: required with --web-url; with --start the bench makes one up
    /// unless given.
    #[arg(long, env = "CLAIRON_ADMIN_EMAIL", value_name = "EMAIL")]
    pub admin_email: Option<String>,

    /// Admin password: required with --web-url; with --start the bench makes one
    /// up unless given.
    #[arg(
        long,
        env = "CLAIRON_ADMIN_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub admin_password: Option<String>,

    /// Value of the `mode` field of the output [default: `distributed` with
    /// --split, `one-process` when --env names Kafka brokers, else `embedded`].
    #[arg(long)]
    pub label: Option<String>,

    /// Length of the ingest phase in seconds (0 skips it).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub ingest_secs: u64,

    /// Number of concurrent ingest workers (one keep-alive connection each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,

    /// Offered rate of the latency phase, notifications per second.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,

    /// Length of the latency phase in seconds (0 skips it).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub latency_secs: u64,

    /// Longest wait for the WebSocket to go quiet after the ingest phase.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub drain_cap_secs: u64,

    /// How long after the latency phase a push may still arrive before it
    /// counts as lost.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub loss_wait_secs: u64,

    /// Longest wait for the spawned binary to announce its listeners and
    /// become ready.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub startup_timeout_secs: u64,

    /// Per-request timeout for every HTTP call.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub request_timeout_secs: u64,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// Progress line on stderr.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("clairon-bench: {}", format_args!($($arg)*)) };
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let work = async {
        let target = Target::open(&args).await?;
        let result = bench(&args, &target).await;
        target.shutdown().await;
        result
    };
    let outcome = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let written = serde_json::to_writer_pretty(&mut out, &report)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
                .and_then(|()| out.flush());
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    progress!("error: writing the report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            progress!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: &Args, target: &Target) -> anyhow::Result<Report> {
    let timeout = Duration::from_secs(args.request_timeout_secs);
    let api = Api::new(target.web.clone(), timeout, 64)?;
    // Distinguishes this run's titles from anything else on the socket.
    let tag = Uuid::new_v4().simple().to_string()[..8].to_string();

    // Setup: admin session, one fresh bench user and its WebSocket.
    let admin = api
        .login(&target.admin_email, &target.admin_password)
        .await
        .context("admin login")?;
    if admin.role != "ADMIN" {
        progress!("warning: the admin account has role {:?}", admin.role);
    }
    let email = format!("bench-{tag}-{}@bench.clairon.test", Uuid::new_v4().simple());
    let password = format!("Bench-{}", Uuid::new_v4().simple());
    api.register(&email, &password)
        .await
        .context("registering the bench user")?;
    let user = api
        .login(&email, &password)
        .await
        .context("bench user login")?;
    progress!("bench user {} ({email})", user.user_id);
    let ws_url = api.ws_url(&user.token)?;
    let (ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(ws_url.as_str()))
        .await
        .context("opening the WebSocket /ws: timed out")?
        .context("opening the WebSocket /ws")?;
    let collector = Collector::spawn(ws, &tag);

    let ctx = phases::Ctx {
        args,
        api: &api,
        admin_token: &admin.token,
        user_id: &user.user_id,
        titles: Arc::new(Titles::new(&tag)),
        collector: &collector,
    };
    let probe = phases::probe(&ctx).await.context("probe push")?;

    let ingest = if args.ingest_secs > 0 {
        let out = phases::ingest(&ctx).await?;
        let mut report = out.report;
        report.pushes = Some(phases::drain(&ctx, report.accepted, out.started).await);
        Some(report)
    } else {
        None
    };
    let latency = if args.latency_secs > 0 {
        Some(phases::latency(&ctx).await?)
    } else {
        None
    };
    let websocket = collector.stop().await;

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Ok(Report {
        mode: args.label.clone().unwrap_or_else(|| {
            let on_kafka = args.envs.iter().any(|(k, _)| k == "CLAIRON_KAFKA_BROKERS");
            match (args.split, on_kafka) {
                (true, _) => "distributed",
                (false, true) => "one-process",
                (false, false) => "embedded",
            }
            .to_string()
        }),
        machine: Machine { cores },
        setup: Setup {
            probe_delivery_ms: probe,
        },
        ingest,
        latency,
        websocket,
    })
}
