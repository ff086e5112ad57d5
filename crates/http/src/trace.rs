//! W3C trace context on the HTTP side: the span of each request (its parent
//! taken from an incoming `traceparent`) and the `traceparent` that events
//! created while handling a request carry, so one trace follows a notification
//! from the request through the bus to the provider.
//!
//! The spans are DEBUG spans of target [`SPAN_TARGET`]: without an OTLP
//! exporter the log filter drops them and nothing changes.

use std::{collections::HashMap, time::Duration};

use axum::{
    extract::MatchedPath,
    http::{HeaderMap, Request, Response},
};
pub use clairon_bus::consumer::SPAN_TARGET;
use opentelemetry::{propagation::TextMapPropagator, trace::TraceContextExt, Context};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{IdGenerator, RandomIdGenerator},
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span of one request, named `<METHOD> <route template>`. Only the
/// matched route is recorded, never the URI: query strings may hold tokens.
pub fn request_span<B>(service: &'static str, req: &Request<B>) -> Span {
    let method = req.method().as_str();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let span = tracing::debug_span!(
        target: SPAN_TARGET,
        "request",
        otel.name = %match route {
            Some(r) => format!("{method} {r}"),
            None => method.to_owned(),
        },
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        clairon.service = service,
    );
    if !span.is_disabled() {
        if let Some(parent) = remote_parent(req.headers()) {
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// Records the response status on the request span (5xx marks it failed).
pub fn record_response<B>(res: &Response<B>, latency: Duration, span: &Span) {
    let status = res.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    tracing::debug!(
        status = status.as_u16(),
        latency_ms = latency.as_millis() as u64,
        "finished processing request"
    );
}

/// The caller's span named by the request's W3C trace context, if well-formed.
pub fn remote_parent(headers: &HeaderMap) -> Option<Context> {
    clairon_bus::consumer::extract_parent(&HeaderExtractor(headers))
}

/// The `traceparent` of the current span, when it is traced (an OTLP exporter
/// is configured and a span is open).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current().context())
}

/// Puts the current span's W3C trace context (`traceparent`, and `tracestate`
/// when it has one) on the headers of an outgoing request, replacing any they
/// hold, so the callee's span is a child of this one. When the current span is
/// not traced the headers are left as they are and `false` is returned.
pub fn inject(headers: &mut HeaderMap) -> bool {
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return false;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    // The propagator always writes `tracestate`; an empty one, or a caller's
    // left over from a context this span did not continue, must not travel on.
    if cx.span().span_context().trace_state().header().is_empty() {
        headers.remove(TRACESTATE);
    }
    true
}

const TRACESTATE: &str = "tracestate";

fn traceparent_of(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The `traceparent` an event created by this request carries: the current
/// span's (so the event continues the request's trace), else the caller's
/// well-formed one, else a new trace.
pub fn event_traceparent(headers: &HeaderMap) -> String {
    current_traceparent()
        .or_else(|| remote_parent(headers).and_then(|cx| traceparent_of(&cx)))
        .unwrap_or_else(|| {
            let ids = RandomIdGenerator::default();
            format!("00-{}-{}-01", ids.new_trace_id(), ids.new_span_id())
        })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{body::Body, routing::get, Router};
    use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
    };
    use tower::ServiceExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Keeps every finished span.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    /// Per request: the current span's `traceparent` and the one an event gets.
    type Seen = Arc<Mutex<Vec<(Option<String>, String)>>>;

    /// A router behind the common layers whose handler reports the trace
    /// context it runs in and the `traceparent` an event would get.
    fn app(seen: Seen) -> Router {
        let router = Router::new().route(
            "/things/{id}",
            get(move |headers: HeaderMap| async move {
                seen.lock()
                    .unwrap()
                    .push((current_traceparent(), event_traceparent(&headers)));
                "ok"
            }),
        );
        crate::layers::apply("test", router)
    }

    fn get_with(tp: Option<&str>) -> Request<Body> {
        let mut req = Request::get("/things/42?token=secret");
        if let Some(tp) = tp {
            req = req.header("traceparent", tp);
        }
        req.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn the_request_span_continues_the_callers_trace() {
        let exported = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exported.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        // Keep two dispatchers registered: with one, tracing-core rates a call site
        // that a concurrent test (no subscriber) reaches first by that thread's
        // default alone, which disables it on every thread.
        let _other = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let _default = tracing::subscriber::set_default(subscriber);
        let seen = Arc::new(Mutex::new(Vec::new()));

        let res = app(seen.clone())
            .oneshot(get_with(Some(&format!("00-{TRACE}-{PARENT}-01"))))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        // The span ends with the response body.
        drop(res);
        let (current, event) = seen.lock().unwrap().pop().unwrap();
        let current = current.expect("the handler runs in a traced span");
        let parts: Vec<&str> = current.split('-').collect();
        assert_eq!(parts[1], TRACE, "same trace as the caller");
        assert_ne!(parts[2], PARENT, "a span of its own");
        assert_eq!(parts[3], "01");
        assert_eq!(event, current, "events continue the request's span");

        let spans = exported.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        // Named by the route template; the URI (and its query string) is nowhere.
        assert_eq!(span.name, "GET /things/{id}");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(span.parent_span_id, SpanId::from_hex(PARENT).unwrap());
        assert_eq!(span.span_context.span_id().to_string(), parts[2]);
        let attr = |k: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("http.route").as_deref(), Some("/things/{id}"));
        assert_eq!(attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr("http.response.status_code").as_deref(), Some("200"));
        assert!(span
            .attributes
            .iter()
            .all(|kv| !kv.value.to_string().contains("secret")));

        // Without a caller's context the request starts a trace of its own.
        app(seen.clone()).oneshot(get_with(None)).await.unwrap();
        let (current, _) = seen.lock().unwrap().pop().unwrap();
        let current = current.unwrap();
        assert!(TraceId::from_hex(current.split('-').nth(1).unwrap()).is_ok());
        assert_ne!(current.split('-').nth(1).unwrap(), TRACE);
    }

    #[test]
    fn outgoing_calls_carry_the_current_span_in_place_of_the_callers() {
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(Collect::default())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        // Two dispatchers registered, as in the request span test above.
        let _other = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let _default = tracing::subscriber::set_default(subscriber);

        let mut incoming = HeaderMap::new();
        incoming.insert(
            "traceparent",
            format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
        );
        incoming.insert("tracestate", "vendor=opaque".parse().unwrap());
        let span = tracing::debug_span!(target: SPAN_TARGET, "call");
        span.set_parent(remote_parent(&incoming).unwrap()).unwrap();
        let _entered = span.enter();

        // A proxy copies the caller's headers, then puts its own span in.
        let mut out = incoming.clone();
        assert!(inject(&mut out));
        let sent = out["traceparent"].to_str().unwrap().to_owned();
        assert_eq!(Some(&sent), current_traceparent().as_ref());
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts[1], TRACE);
        assert_ne!(parts[2], PARENT, "the callee's parent is this span");
        assert_eq!(
            out["tracestate"], "vendor=opaque",
            "the caller's state travels on"
        );
        assert_eq!(out.get_all("traceparent").iter().count(), 1);

        // A span starting a trace of its own has no state: a stale one is dropped.
        let root = tracing::debug_span!(target: SPAN_TARGET, parent: None, "root");
        let _root = root.enter();
        let mut out = incoming.clone();
        assert!(inject(&mut out));
        assert_ne!(
            out["traceparent"].to_str().unwrap().split('-').nth(1),
            Some(TRACE)
        );
        assert!(out.get("tracestate").is_none());
    }

    #[test]
    fn without_an_exporter_outgoing_headers_are_left_alone() {
        let mut out = HeaderMap::new();
        out.insert(
            "traceparent",
            format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
        );
        out.insert("tracestate", "vendor=opaque".parse().unwrap());
        let before = out.clone();
        assert!(!inject(&mut out));
        assert_eq!(out, before);
        assert!(!inject(&mut HeaderMap::new()));
    }

    #[tokio::test]
    async fn without_an_exporter_events_take_the_callers_context_or_a_new_one() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tp = format!("00-{TRACE}-{PARENT}-01");
        app(seen.clone())
            .oneshot(get_with(Some(&tp)))
            .await
            .unwrap();
        let (current, event) = seen.lock().unwrap().pop().unwrap();
        assert_eq!(current, None);
        assert_eq!(event, format!("00-{TRACE}-{PARENT}-01"));

        // Malformed (W3C wants lower-case hex): a new trace.
        for bad in [
            "00-not-a-trace-01".to_owned(),
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
        ] {
            app(seen.clone())
                .oneshot(get_with(Some(&bad)))
                .await
                .unwrap();
            let (_, event) = seen.lock().unwrap().pop().unwrap();
            let parts: Vec<&str> = event.split('-').collect();
            assert_eq!(parts.len(), 4);
            assert_ne!(parts[1], TRACE);
            assert!(TraceId::from_hex(parts[1]).is_ok_and(|t| t != TraceId::INVALID));
            assert!(SpanId::from_hex(parts[2]).is_ok_and(|s| s != SpanId::INVALID));
        }
    }
}
