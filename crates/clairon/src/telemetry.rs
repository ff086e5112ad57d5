//! Logs and traces. Logs go to stderr (text or JSON) as filtered by
//! `CLAIRON_LOG`. When `CLAIRON_OTLP_ENDPOINT` is set, spans are also exported
//! to that OpenTelemetry collector over OTLP/HTTP with protobuf bodies: the
//! request, record-handling and provider-send spans (target
//! [`SPAN_TARGET`], DEBUG so that logs never show them) plus whatever the log
//! filter lets through. Unset, no OpenTelemetry layer is installed and those
//! spans are disabled at their call sites.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clairon_bus::consumer::SPAN_TARGET;
use opentelemetry::{trace::TracerProvider as _, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::config::{LogFormat, ServeArgs, ServiceName};

/// Where and as what spans are exported.
pub struct Otlp {
    pub endpoint: String,
    pub service_name: String,
}

impl Otlp {
    /// The OTLP settings of `serve`, when an endpoint is configured.
    pub fn of(args: &ServeArgs) -> Option<Otlp> {
        let endpoint = args.common.otlp_endpoint.as_deref().map(str::trim)?;
        if endpoint.is_empty() {
            return None;
        }
        let service_name = match args.common.otlp_service_name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => default_service_name(&args.services),
        };
        Some(Otlp {
            endpoint: endpoint.to_owned(),
            service_name,
        })
    }
}

/// `clairon-<services>` in the usual order, `clairon-all` for all five.
fn default_service_name(services: &[ServiceName]) -> String {
    let all = [
        ServiceName::Users,
        ServiceName::Notifications,
        ServiceName::Events,
        ServiceName::Logs,
        ServiceName::Web,
    ];
    let here: Vec<&str> = all
        .iter()
        .filter(|s| services.contains(s))
        .map(|s| s.as_str())
        .collect();
    if here.len() == all.len() {
        "clairon-all".to_owned()
    } else {
        format!("clairon-{}", here.join("-"))
    }
}

/// The URL spans are posted to: the endpoint, with `/v1/traces` unless it ends so.
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    };
    let parsed = reqwest::Url::parse(&url)
        .with_context(|| format!("CLAIRON_OTLP_ENDPOINT `{endpoint}` is not a URL"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "CLAIRON_OTLP_ENDPOINT `{endpoint}` must be an http:// or https:// URL (OTLP over HTTP, usually port 4318)"
    );
    Ok(url)
}

/// Installs the process's subscriber. With `otlp`, returns the tracer provider
/// to [`shutdown`] before exit so buffered spans are sent.
pub fn init(
    log: &str,
    format: LogFormat,
    otlp: Option<Otlp>,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let filter = || EnvFilter::try_new(log).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let provider = otlp.map(|o| provider(&o, runtime)).transpose()?;
    let otel = provider.as_ref().map(|p| {
        let spans = EnvFilter::try_new(format!("{log},{SPAN_TARGET}=debug"))
            .unwrap_or_else(|_| EnvFilter::new(format!("info,{SPAN_TARGET}=debug")));
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("clairon"))
            .with_filter(spans)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .init();
    Ok(provider)
}

fn provider(otlp: &Otlp, runtime: &tokio::runtime::Handle) -> anyhow::Result<SdkTracerProvider> {
    let url = traces_url(&otlp.endpoint)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the OTLP HTTP client")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime {
            client,
            runtime: runtime.clone(),
        })
        .with_endpoint(url)
        .build()
        .context("configuring the OTLP span exporter")?;
    let resource = Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Sends what is buffered and stops exporting; bounded in time.
pub fn shutdown(provider: SdkTracerProvider) {
    if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
        tracing::warn!(error = %e, "could not send the last spans to the OTLP collector");
    }
}

/// The exporter's HTTP client: the workspace's async reqwest client, run on the
/// process's Tokio runtime. The SDK's batch processor exports from a thread of
/// its own, which waits for the request to finish there.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let res = client.execute(reqwest::Request::try_from(request)?).await?;
            let mut out = Response::builder().status(res.status());
            if let Some(headers) = out.headers_mut() {
                *headers = res.headers().clone();
            }
            Ok::<_, HttpError>(out.body(res.bytes().await?)?)
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(
            traces_url("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://collector:4318/").unwrap(),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c/otlp/v1/traces").unwrap(),
            "http://c/otlp/v1/traces"
        );
        assert!(traces_url("collector:4317").is_err());
        assert!(traces_url("grpc://collector:4317").is_err());
    }

    #[test]
    fn the_service_name_names_the_services() {
        use ServiceName::*;
        assert_eq!(
            default_service_name(&[Notifications]),
            "clairon-notifications"
        );
        assert_eq!(default_service_name(&[Web, Users]), "clairon-users-web");
        assert_eq!(
            default_service_name(&[Users, Notifications, Events, Logs, Web]),
            "clairon-all"
        );
    }
}
