//! The `clairon` binary: configuration, wiring and process lifecycle.

mod config;
mod remote;
mod serve;
mod telemetry;

use clap::Parser;
use config::{Cli, Command, LogFormat};

fn main() -> std::process::ExitCode {
    if let Err(e) = config::load_config_file() {
        eprintln!("clairon: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(Box::new(cli.serve)));
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
    let (log, format, otlp) = match &command {
        Command::Serve(s) => (&s.common.log, s.common.log_format, telemetry::Otlp::of(s)),
        Command::Token(t) => (&t.common.log, t.common.log_format, None),
        Command::Kafka(config::KafkaCommand::Init(k)) => (&k.log, LogFormat::Text, None),
    };
    let tracer = match telemetry::init(log, format, otlp, runtime.handle()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("clairon: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Token(args) => token(args),
            Command::Kafka(config::KafkaCommand::Init(args)) => serve::kafka_init(args).await,
        }
    });
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "clairon stopped on an error");
            eprintln!("clairon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // While the runtime still runs: the exporter's requests are made on it.
    if let Some(tracer) = tracer {
        telemetry::shutdown(tracer);
    }
    code
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
