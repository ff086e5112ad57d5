//! The `clairon` binary: configuration, wiring and process lifecycle.

mod config;
mod remote;
mod serve;

use clap::Parser;
use config::{Cli, Command, LogFormat};

fn main() -> std::process::ExitCode {
    if let Err(e) = config::load_config_file() {
        eprintln!("clairon: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(Box::new(cli.serve)));
    match &command {
        Command::Serve(s) => init_tracing(&s.common.log, s.common.log_format),
        Command::Token(t) => init_tracing(&t.common.log, t.common.log_format),
        Command::Kafka(config::KafkaCommand::Init(k)) => init_tracing(&k.log, LogFormat::Text),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("clairon: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Token(args) => token(args),
            Command::Kafka(config::KafkaCommand::Init(args)) => serve::kafka_init(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "clairon stopped on an error");
            eprintln!("clairon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(log: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn token(args: config::TokenArgs) -> anyhow::Result<()> {
    let role = clairon_auth::Role::parse(&args.role)
        .ok_or_else(|| anyhow::anyhow!("--role must be ADMIN, USER or SERVICE"))?;
    let secret = serve::jwt_secret(&args.common, false)?;
    let tokens = clairon_auth::Tokens::new(
        secret.as_bytes(),
        std::time::Duration::from_secs(args.ttl_secs),
    )?;
    let issued = tokens.issue(&args.subject, role)?;
    println!("{}", issued.token);
    Ok(())
}
