//! Settings: command-line flags, then `CLAIRON_*` environment variables, then
//! an optional TOML file (`--config` / `CLAIRON_CONFIG`), then defaults. A TOML
//! key is the variable's name without the prefix, in any case, `-` or `_`
//! (`users_addr = "0.0.0.0:8081"`); unknown keys are refused so typos show.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "clairon",
    version,
    about = "Clairon — real-time notification platform (users, notifications, event publisher, audit log, web).",
    long_about = "Clairon — real-time notification platform.\n\n\
        With no command, runs `serve`: all five services in one process on the embedded default \
        (SQLite files and an embedded durable event log under CLAIRON_DATA_DIR).\n\n\
        Every setting can be given as a flag, as the CLAIRON_* environment variable shown, or as a key \
        in the TOML file named by --config / CLAIRON_CONFIG (key = variable name without CLAIRON_, \
        e.g. `users_addr`). Flags win over the environment, the environment over the file.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// TOML file with settings (keys like `users_addr`, `smtp_url`).
    #[arg(long, env = "CLAIRON_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run services (all five unless --services says otherwise).
    Serve(Box<ServeArgs>),
    /// Mint a signed access token, e.g. a SERVICE token for a script that publishes events.
    Token(TokenArgs),
    /// Kafka administration.
    #[command(subcommand)]
    Kafka(KafkaCommand),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Folder for the embedded databases, event log and generated secrets.
    #[arg(long, env = "CLAIRON_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Database for every service in this process (`sqlite://path` or `mysql://user:pass@host/db`).
    /// Default: one SQLite file per service in the data folder.
    #[arg(long, env = "CLAIRON_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Secret (≥ 32 bytes) that signs access tokens; default: generated once into <data-dir>/jwt-secret.
    #[arg(long, env = "CLAIRON_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Lifetime of access tokens, seconds.
    #[arg(long, env = "CLAIRON_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `clairon=debug,info`.
    #[arg(long, env = "CLAIRON_LOG", default_value = "info,sqlx=warn")]
    pub log: String,

    /// Log format on stderr.
    #[arg(long, env = "CLAIRON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OpenTelemetry collector receiving traces over OTLP/HTTP with protobuf bodies, e.g.
    /// `http://otel-collector:4318` (`/v1/traces` is appended unless given). Unset: no traces
    /// are exported.
    #[arg(long, env = "CLAIRON_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of the exported traces. Default: `clairon-<services>`, e.g.
    /// `clairon-notifications`, or `clairon-all` when all five run in the process.
    #[arg(long, env = "CLAIRON_OTLP_SERVICE_NAME")]
    pub otlp_service_name: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceName {
    Users,
    Notifications,
    Events,
    Logs,
    Web,
}

impl ServiceName {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Users => "users",
            ServiceName::Notifications => "notifications",
            ServiceName::Events => "events",
            ServiceName::Logs => "logs",
            ServiceName::Web => "web",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: Common,

    /// Services to run in this process, comma-separated.
    #[arg(
        long,
        env = "CLAIRON_SERVICES",
        value_enum,
        value_delimiter = ',',
        default_value = "users,notifications,events,logs,web"
    )]
    pub services: Vec<ServiceName>,

    /// Listen address of the users service.
    #[arg(long, env = "CLAIRON_USERS_ADDR", default_value = "0.0.0.0:8081")]
    pub users_addr: SocketAddr,
    /// Listen address of the notification service.
    #[arg(
        long,
        env = "CLAIRON_NOTIFICATIONS_ADDR",
        default_value = "0.0.0.0:8082"
    )]
    pub notifications_addr: SocketAddr,
    /// Listen address of the event publisher.
    #[arg(long, env = "CLAIRON_EVENTS_ADDR", default_value = "0.0.0.0:8083")]
    pub events_addr: SocketAddr,
    /// Listen address of the logging (audit) service.
    #[arg(long, env = "CLAIRON_LOGS_ADDR", default_value = "0.0.0.0:8084")]
    pub logs_addr: SocketAddr,
    /// Listen address of the web interface and API gateway.
    #[arg(long, env = "CLAIRON_WEB_ADDR", default_value = "0.0.0.0:8085")]
    pub web_addr: SocketAddr,

    /// Base URL of the users service when it runs elsewhere (gateway upstream).
    #[arg(long, env = "CLAIRON_USERS_URL")]
    pub users_url: Option<String>,
    /// Base URL of the notification service when it runs elsewhere.
    #[arg(long, env = "CLAIRON_NOTIFICATIONS_URL")]
    pub notifications_url: Option<String>,
    /// Base URL of the event publisher when it runs elsewhere.
    #[arg(long, env = "CLAIRON_EVENTS_URL")]
    pub events_url: Option<String>,
    /// Base URL of the logging service when it runs elsewhere.
    #[arg(long, env = "CLAIRON_LOGS_URL")]
    pub logs_url: Option<String>,

    /// Email of the bootstrap administrator created at first start.
    #[arg(long, env = "CLAIRON_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// Password of the bootstrap administrator; when unset a random one is printed once.
    #[arg(long, env = "CLAIRON_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// SMTP server for EMAIL: `smtp://host:port` (plain; `?tls=required` for STARTTLS) or
    /// `smtps://host:port`. Unset: emails are stored as CAPTURED, not sent.
    #[arg(long, env = "CLAIRON_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// SMTP user name.
    #[arg(long, env = "CLAIRON_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// SMTP password.
    #[arg(long, env = "CLAIRON_SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    /// Sender of emails.
    #[arg(
        long,
        env = "CLAIRON_SMTP_FROM",
        default_value = "Clairon <no-reply@clairon.local>"
    )]
    pub smtp_from: String,

    /// SMS gateway endpoint receiving a JSON POST per SMS. Unset: SMS are stored as CAPTURED.
    #[arg(long, env = "CLAIRON_SMS_URL")]
    pub sms_url: Option<String>,
    /// Bearer token sent to the SMS gateway.
    #[arg(long, env = "CLAIRON_SMS_TOKEN", hide_env_values = true)]
    pub sms_token: Option<String>,

    /// Deliveries a failing event gets (first one included) before it is dead-lettered.
    #[arg(long, env = "CLAIRON_RETRY_MAX_ATTEMPTS", default_value_t = 4)]
    pub retry_max_attempts: u32,
    /// Delay before the first retry, milliseconds; doubles each retry.
    #[arg(long, env = "CLAIRON_RETRY_INITIAL_BACKOFF_MS", default_value_t = 1000)]
    pub retry_initial_backoff_ms: u64,
    /// Longest delay between retries, milliseconds.
    #[arg(long, env = "CLAIRON_RETRY_MAX_BACKOFF_MS", default_value_t = 60_000)]
    pub retry_max_backoff_ms: u64,

    /// Partitions of each topic of the embedded event log.
    #[arg(long, env = "CLAIRON_BUS_PARTITIONS", default_value_t = 8)]
    pub bus_partitions: u32,

    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// How long the embedded event log keeps records, hours.
    #[arg(long, env = "CLAIRON_BUS_RETENTION_HOURS", default_value_t = 168)]
    pub bus_retention_hours: u64,

    /// Consumer group of this web replica for PUSH fan-out (unique per replica).
    #[arg(long, env = "CLAIRON_WEB_GROUP", default_value = "web")]
    pub web_group: String,

    /// Kafka UI address the monitoring page links to (e.g. `http://kafka-ui:8080`); unset: no link.
    #[arg(long, env = "CLAIRON_KAFKA_UI_URL")]
    pub kafka_ui_url: Option<String>,

    /// On SIGTERM, how long in-flight work may take before the process exits anyway, seconds.
    #[arg(long, env = "CLAIRON_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
}

/// Apache Kafka, used instead of the embedded event log when brokers are given.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (`host:9092,host2:9092`). Unset: the embedded event log.
    #[arg(long, env = "CLAIRON_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Prefix added to every topic name (several platforms on one cluster).
    #[arg(long, env = "CLAIRON_KAFKA_TOPIC_PREFIX", default_value = "")]
    pub kafka_topic_prefix: String,
    /// Partitions of the topics `kafka init` creates.
    #[arg(long, env = "CLAIRON_KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
    /// Replication factor of the topics `kafka init` creates.
    #[arg(long, env = "CLAIRON_KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,
    /// Retention of the topics `kafka init` creates, hours.
    #[arg(long, env = "CLAIRON_KAFKA_RETENTION_HOURS", default_value_t = 168)]
    pub kafka_retention_hours: i64,
    /// Create missing topics at start-up (as `clairon kafka init` does).
    #[arg(long, env = "CLAIRON_KAFKA_INIT_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_init_topics: bool,
    /// security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    #[arg(long, env = "CLAIRON_KAFKA_SECURITY_PROTOCOL")]
    pub kafka_security_protocol: Option<String>,
    /// sasl.mechanism, e.g. PLAIN or SCRAM-SHA-512.
    #[arg(long, env = "CLAIRON_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    /// SASL user name.
    #[arg(long, env = "CLAIRON_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// SASL password.
    #[arg(long, env = "CLAIRON_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
    /// CA certificate file for SSL.
    #[arg(long, env = "CLAIRON_KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<String>,
    /// Stable identity of this process in its consumer groups (static membership: a restarted
    /// process gets its partitions back without a rebalance), e.g. the pod name.
    #[arg(long, env = "CLAIRON_KAFKA_INSTANCE_ID")]
    pub kafka_instance_id: Option<String>,
    /// Consumer session timeout, milliseconds: how soon a crashed consumer's partitions move.
    #[arg(
        long,
        env = "CLAIRON_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub kafka_session_timeout_ms: u32,
}

#[derive(Args, Debug, Clone)]
pub struct KafkaInitArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Deliveries a failing event gets; sets how many retry topics are created.
    #[arg(long, env = "CLAIRON_RETRY_MAX_ATTEMPTS", default_value_t = 4)]
    pub retry_max_attempts: u32,
    #[arg(long, env = "CLAIRON_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Subcommand, Debug)]
pub enum KafkaCommand {
    /// Create Clairon's topics (main, retry and dead-letter) if missing; safe to repeat.
    Init(KafkaInitArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    #[command(flatten)]
    pub common: Common,
    /// Role carried by the token: ADMIN, USER or SERVICE.
    #[arg(long, default_value = "SERVICE")]
    pub role: String,
    /// Subject: a user id, or a name for a service token.
    #[arg(long)]
    pub subject: String,
    /// Lifetime, seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
}

/// Loads the TOML file into the environment for variables not already set.
/// Runs before the async runtime starts, while the process has one thread.
pub fn load_config_file() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut path = std::env::var_os("CLAIRON_CONFIG").map(PathBuf::from);
    while let Some(a) = args.next() {
        if a == "--config" {
            path = args.next().map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing the configuration file {}", path.display()))?;
    let known = known_env_vars();
    for (key, value) in table {
        let var = format!("CLAIRON_{}", key.to_ascii_uppercase().replace('-', "_"));
        anyhow::ensure!(
            known.contains(&var),
            "unknown setting `{key}` in {} (known: {})",
            path.display(),
            known
                .iter()
                .map(|k| k.trim_start_matches("CLAIRON_").to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        if std::env::var_os(&var).is_none() {
            // Safe here: no other thread exists yet.
            std::env::set_var(&var, value);
        }
    }
    Ok(())
}

fn known_env_vars() -> Vec<String> {
    fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                let e = e.to_string_lossy().into_owned();
                if e != "CLAIRON_CONFIG" && !out.contains(&e) {
                    out.push(e);
                }
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed_and_defaults_to_all_services() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["clairon"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.services.len(), 5);
        assert_eq!(cli.serve.users_addr.port(), 8081);
        assert_eq!(cli.serve.web_addr.port(), 8085);
        let cli = Cli::try_parse_from(["clairon", "serve", "--services", "users,web"]).unwrap();
        let Some(Command::Serve(s)) = cli.command else {
            panic!("serve expected")
        };
        assert_eq!(s.services, vec![ServiceName::Users, ServiceName::Web]);
    }

    #[test]
    fn every_setting_has_an_environment_variable() {
        let vars = known_env_vars();
        for v in [
            "CLAIRON_USERS_ADDR",
            "CLAIRON_SMTP_URL",
            "CLAIRON_DATA_DIR",
            "CLAIRON_RETRY_MAX_ATTEMPTS",
            "CLAIRON_OTLP_ENDPOINT",
            "CLAIRON_OTLP_SERVICE_NAME",
        ] {
            assert!(vars.contains(&v.to_string()), "{v} missing");
        }
    }
}
