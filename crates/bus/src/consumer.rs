//! The delivery policy every engine shares.
//!
//! One loop per topic level: the main topics, then the group's own retry
//! topics `<topic>-retry-<group>-1` … `-(N-1)`. Within a poll, partitions are handled concurrently and
//! each partition in offset order, so one key's records keep their order while a
//! slow key does not hold up the others. A record whose handling fails with
//! [`HandleError::Retry`] is forwarded to the next retry topic with a not-before
//! time (exponential backoff); because every record on one retry level waits the
//! same delay, waiting for the head of a retry partition never delays a record
//! that is already due. After `max_attempts`, or at once for
//! [`HandleError::Reject`] (e.g. an unparseable payload), the record goes to
//! `<topic>-dlt` with the reason, and the consumer moves on.
//!
//! A record whose handler answers [`HandleError::Defer`] (another process is
//! handling the same thing) goes to the last retry level with that level's
//! delay and its attempt count unchanged: waiting for someone else never
//! dead-letters it.
//!
//! A group may read dead-letter topics too (the audit does). There the record is
//! never forwarded: a `Retry` failure is delivered again after a pause, in
//! place, and a `Reject` is logged and skipped, the record staying in its topic.
//!
//! Each record is handled inside a span `handle <topic>` whose parent is the
//! producer's span named by the record's `traceparent` header, so one trace
//! follows an event from the request that caused it to every consumer.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use clairon_events::{headers, topics};
use opentelemetry::{propagation::TextMapPropagator, trace::TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{BusError, EventBus, Message, Record, Subscription};

/// Target of the spans opened for distributed tracing (handled records here,
/// requests and provider sends in the services). They are DEBUG spans: the log
/// filter leaves them out, so they cost nothing unless the OpenTelemetry layer,
/// installed when an OTLP endpoint is configured, enables this target.
pub const SPAN_TARGET: &str = "clairon_trace";

/// Reads W3C trace context (`traceparent`, `tracestate`) from record headers.
struct HeaderCarrier<'a>(&'a [(String, String)]);

impl opentelemetry::propagation::Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        headers::find(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The remote parent named by the W3C trace context in `headers`, if well-formed.
pub fn remote_parent(headers: &[(String, String)]) -> Option<opentelemetry::Context> {
    extract_parent(&HeaderCarrier(headers))
}

/// The remote parent named by the W3C trace context (`traceparent`, and
/// `tracestate` with it) a carrier holds, if well-formed.
pub fn extract_parent(
    carrier: &dyn opentelemetry::propagation::Extractor,
) -> Option<opentelemetry::Context> {
    if !carrier
        .get(headers::TRACEPARENT)
        .is_some_and(|tp| well_formed_traceparent(tp.trim()))
    {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The W3C shape: `version-traceid-parentid-flags` in lower-case hex of 2, 32,
/// 16 and 2 digits (later versions may append fields). The propagator alone
/// would also take shorter ids.
pub fn well_formed_traceparent(tp: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let parts: Vec<&str> = tp.split('-').collect();
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && (parts[0] != "00" || parts.len() == 4)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// The span one record is handled in: `handle <topic>`, a child of the span
/// named by the record's `traceparent` header.
fn record_span(group: &str, r: &Record) -> tracing::Span {
    let span = tracing::debug_span!(
        target: SPAN_TARGET,
        "handle",
        otel.name = %format!("handle {}", r.topic),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.operation.type = "process",
        messaging.destination.name = %r.topic,
        messaging.destination.partition.id = r.partition,
        messaging.consumer.group.name = %group,
        messaging.message.id = %r.event_id(),
        clairon.offset = r.offset,
        clairon.attempt = r.attempt(),
        clairon.outcome = tracing::field::Empty,
    );
    if !span.is_disabled() {
        if let Some(parent) = remote_parent(&r.headers) {
            let _ = span.set_parent(parent);
        }
    }
    span
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Deliveries a record gets before it is dead-lettered (first one included).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `failed_attempt + 1`.
    pub fn backoff(&self, failed_attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed_attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum HandleError {
    /// Worth trying again later (provider down, database busy).
    #[error("{0}")]
    Retry(String),
    /// Will never succeed (unparseable, invalid): dead-letter at once.
    #[error("{0}")]
    Reject(String),
    /// Not this handler's turn (another process is handling the same thing):
    /// asked again later, without using up an attempt.
    #[error("{0}")]
    Defer(String),
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, record: &Record) -> Result<(), HandleError>;

    /// Called before a record is written to the dead-letter topic. An error keeps
    /// the record uncommitted, so it is delivered again.
    async fn dead_lettered(&self, _record: &Record, _reason: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub group: String,
    pub topics: Vec<String>,
    pub policy: RetryPolicy,
    pub batch_size: usize,
    /// Where the group starts when it has no committed offset.
    pub start: crate::StartFrom,
}

impl ConsumerSpec {
    pub fn new(group: impl Into<String>, topics: &[&str], policy: RetryPolicy) -> Self {
        ConsumerSpec {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            policy,
            batch_size: 256,
            start: crate::StartFrom::Earliest,
        }
    }
}

/// Runs the consumer until `cancel` fires; the batch in hand is finished and
/// committed first.
pub async fn run(
    bus: Arc<dyn EventBus>,
    spec: ConsumerSpec,
    handler: Arc<dyn Handler>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut loops = Vec::new();
    for level in 0..spec.policy.max_attempts.max(1) {
        // A record read from a dead-letter topic is retried in place, never
        // forwarded: dead-letter topics have no retry levels.
        let topics: Vec<String> = if level == 0 {
            spec.topics.clone()
        } else {
            spec.topics
                .iter()
                .filter(|t| !topics::is_dead_letter(t))
                .map(|t| topics::retry(t, &spec.group, level))
                .collect()
        };
        if topics.is_empty() {
            break;
        }
        loops.push(tokio::spawn(level_loop(
            bus.clone(),
            spec.clone(),
            topics,
            handler.clone(),
            cancel.clone(),
        )));
    }
    for l in loops {
        l.await??;
    }
    Ok(())
}

async fn level_loop(
    bus: Arc<dyn EventBus>,
    spec: ConsumerSpec,
    topics: Vec<String>,
    handler: Arc<dyn Handler>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub: Option<Box<dyn Subscription>> = None;
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        let s = match sub.as_mut() {
            Some(s) => s,
            None => match bus.subscribe_from(&spec.group, &topics, spec.start).await {
                Ok(s) => sub.insert(s),
                Err(e) => {
                    tracing::warn!(group = %spec.group, error = %e, "subscribe failed; retrying");
                    pause(&cancel, &mut failures).await;
                    continue;
                }
            },
        };
        let batch = tokio::select! {
            _ = cancel.cancelled() => break,
            b = s.poll(spec.batch_size, Duration::from_millis(500)) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(group = %spec.group, error = %e, "poll failed; retrying");
                pause(&cancel, &mut failures).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let mut by_partition: BTreeMap<(String, u32), Vec<Record>> = BTreeMap::new();
        for r in batch {
            by_partition
                .entry((r.topic.clone(), r.partition))
                .or_default()
                .push(r);
        }
        let outcomes = futures::future::join_all(by_partition.into_iter().map(|(tp, recs)| {
            let bus = bus.clone();
            let handler = handler.clone();
            let policy = spec.policy.clone();
            let cancel = cancel.clone();
            let group = spec.group.clone();
            async move {
                let out = handle_partition(&*bus, &*handler, &policy, &group, &recs, &cancel).await;
                (tp, out)
            }
        }))
        .await;
        let mut ok = true;
        for ((topic, partition), out) in outcomes {
            let mut res = Ok(());
            if let Some(next) = out.next {
                res = s.commit(&topic, partition, next).await;
            }
            if let Some(at) = out.stopped_at {
                ok = false;
                res = res.and(s.seek(&topic, partition, at).await);
            }
            if let Err(e) = res {
                tracing::warn!(group = %spec.group, %topic, partition, error = %e, "commit failed; records will be delivered again");
                ok = false;
                // The subscription's position may be ahead of what is committed: start over.
                sub = None;
                break;
            }
        }
        if ok {
            failures = 0;
        } else {
            pause(&cancel, &mut failures).await;
        }
    }
    Ok(())
}

async fn pause(cancel: &CancellationToken, failures: &mut u32) {
    *failures = (*failures + 1).min(6);
    let d = Duration::from_millis(100 * 2u64.pow(*failures));
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

struct PartitionOutcome {
    /// First offset not yet handled, to commit.
    next: Option<u64>,
    /// Set when handling stopped before the end of the batch (shutdown, the bus
    /// could not take a retry or dead-letter record, or a dead letter could not
    /// be handled yet): the rest is delivered again.
    stopped_at: Option<u64>,
}

async fn handle_partition(
    bus: &dyn EventBus,
    handler: &dyn Handler,
    policy: &RetryPolicy,
    group: &str,
    records: &[Record],
    cancel: &CancellationToken,
) -> PartitionOutcome {
    let mut next = None;
    for r in records {
        if let Some(due) = r
            .header(headers::NOT_BEFORE)
            .and_then(|v| v.parse::<i64>().ok())
        {
            let wait = due - now_ms();
            if wait > 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return PartitionOutcome { next, stopped_at: Some(r.offset) },
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                }
            }
        }
        let span = record_span(group, r);
        let outcome = async {
            match handler.handle(r).await {
                Ok(()) => Ok("handled"),
                // The end of the line: forwarding a dead letter would file it under
                // its original topic's retries or loop it through the dead-letter
                // topic again. A passing failure is waited out, a rejection leaves
                // the record where it is, in the dead-letter topic.
                Err(HandleError::Retry(reason) | HandleError::Defer(reason))
                    if topics::is_dead_letter(&r.topic) =>
                {
                    Err(BusError::Other(format!("handling a dead letter failed: {reason}")))
                }
                Err(HandleError::Reject(reason)) if topics::is_dead_letter(&r.topic) => {
                    tracing::error!(topic = %r.topic, partition = r.partition, offset = r.offset, %reason, "a dead letter was rejected; it stays in its topic and is skipped");
                    Ok("skipped")
                }
                // Without retry topics, a deferred record waits in place.
                Err(HandleError::Defer(reason)) if policy.max_attempts < 2 => {
                    Err(BusError::Other(format!("deferred: {reason}")))
                }
                Err(HandleError::Defer(reason)) => {
                    forward(bus, r, group, Route::Defer(policy), &reason)
                        .await
                        .map(|_| "deferred")
                }
                Err(HandleError::Retry(reason)) if r.attempt() < policy.max_attempts => {
                    forward(bus, r, group, Route::Retry(policy), &reason)
                        .await
                        .map(|_| "retried")
                }
                Err(HandleError::Retry(reason)) | Err(HandleError::Reject(reason)) => {
                    match handler.dead_lettered(r, &reason).await {
                        Ok(()) => forward(bus, r, group, Route::DeadLetter, &reason)
                            .await
                            .map(|_| "dead_lettered"),
                        Err(e) => Err(BusError::Other(format!("dead-letter hook failed: {e:#}"))),
                    }
                }
            }
        }
        .instrument(span.clone())
        .await;
        let _in_span = span.enter();
        match outcome {
            Ok(what) => {
                span.record("clairon.outcome", what);
                if what != "handled" {
                    span.record("otel.status_code", "ERROR");
                }
                metrics::counter!("clairon_bus_records_total", "topic" => topics::base_topic(&r.topic).to_owned(), "outcome" => what).increment(1);
                if what == "dead_lettered" {
                    tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, event_id = %r.event_id(), "record dead-lettered");
                }
                next = Some(r.offset + 1);
            }
            Err(e) => {
                span.record("clairon.outcome", "redeliver");
                span.record("otel.status_code", "ERROR");
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = %e, "a failed record was not forwarded; it will be delivered again");
                return PartitionOutcome {
                    next,
                    stopped_at: Some(r.offset),
                };
            }
        }
    }
    PartitionOutcome {
        next,
        stopped_at: None,
    }
}

/// Where [`forward`] writes a record that was not handled.
enum Route<'a> {
    /// The next retry topic, one attempt used.
    Retry(&'a RetryPolicy),
    /// A retry topic again, no attempt used.
    Defer(&'a RetryPolicy),
    DeadLetter,
}

/// Writes a record that was not handled to a retry topic or to its
/// dead-letter topic, keeping key, payload and metadata.
async fn forward(
    bus: &dyn EventBus,
    r: &Record,
    group: &str,
    route: Route<'_>,
    reason: &str,
) -> Result<(), BusError> {
    let original = r
        .header(headers::ORIGINAL_TOPIC)
        .map(str::to_owned)
        .unwrap_or_else(|| topics::base_topic(&r.topic).to_owned());
    let mut hs = r.headers.clone();
    if r.header(headers::ORIGINAL_TOPIC).is_none() {
        headers::set(&mut hs, headers::ORIGINAL_TOPIC, original.clone());
        headers::set(
            &mut hs,
            headers::ORIGINAL_PARTITION,
            r.partition.to_string(),
        );
        headers::set(&mut hs, headers::ORIGINAL_OFFSET, r.offset.to_string());
    }
    // Keep error text to a size any engine accepts in a header.
    let reason: String = reason.chars().take(1000).collect();
    headers::set(&mut hs, headers::ERROR, reason);
    headers::set(&mut hs, headers::CONSUMER_GROUP, group);
    let topic = match route {
        Route::Retry(p) => {
            let attempt = r.attempt();
            headers::set(&mut hs, headers::ATTEMPT, (attempt + 1).to_string());
            let due = now_ms() + p.backoff(attempt).as_millis() as i64;
            headers::set(&mut hs, headers::NOT_BEFORE, due.to_string());
            topics::retry(&original, group, attempt)
        }
        // The last retry level, with that level's delay (so every record there
        // still waits the same time) and the attempt count left as it was.
        Route::Defer(p) => {
            let level = p.max_attempts.saturating_sub(1).max(1);
            let due = now_ms() + p.backoff(level).as_millis() as i64;
            headers::set(&mut hs, headers::NOT_BEFORE, due.to_string());
            topics::retry(&original, group, level)
        }
        Route::DeadLetter => {
            hs.retain(|(k, _)| !k.eq_ignore_ascii_case(headers::NOT_BEFORE));
            topics::dead_letter(&original)
        }
    };
    bus.publish(Message {
        topic: topic.clone(),
        key: r.key.clone(),
        headers: hs,
        payload: r.payload.clone(),
    })
    .await?;
    metrics::counter!("clairon_bus_published_total", "topic" => topic).increment(1);
    Ok(())
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanContext, SpanId, TraceId, TracerProvider as _};
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
    };
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::embedded::EmbeddedBus;

    /// Keeps every finished span.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Notes the span context the handler runs in.
    #[derive(Default)]
    struct Seen(Mutex<Vec<SpanContext>>);

    #[async_trait]
    impl Handler for Seen {
        async fn handle(&self, _r: &Record) -> Result<(), HandleError> {
            let cx = tracing::Span::current().context();
            self.0
                .lock()
                .unwrap()
                .push(cx.span().span_context().clone());
            Ok(())
        }
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    #[tokio::test]
    async fn a_records_traceparent_is_the_parent_of_its_handling_span() {
        let exported = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exported.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        // Current-thread runtime: the consumer's tasks run on this thread, under this subscriber.
        // Keep two dispatchers registered: with one, tracing-core rates a call site
        // that a concurrent test (no subscriber) reaches first by that thread's
        // default alone, which disables it on every thread.
        let _other = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let _default = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().unwrap();
        let bus: Arc<dyn EventBus> = Arc::new(
            EmbeddedBus::open(&dir.path().join("bus.db"), 1)
                .await
                .unwrap(),
        );
        bus.publish(Message {
            topic: "orders".into(),
            key: "k".into(),
            headers: vec![(
                headers::TRACEPARENT.into(),
                format!("00-{TRACE}-{PARENT}-01"),
            )],
            payload: b"{}".to_vec(),
        })
        .await
        .unwrap();

        let handler = Arc::new(Seen::default());
        let cancel = CancellationToken::new();
        let run = tokio::spawn(run(
            bus,
            ConsumerSpec::new("g", &["orders"], RetryPolicy::default()),
            handler.clone(),
            cancel.clone(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !exported
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.name == "handle orders")
        {
            assert!(std::time::Instant::now() < deadline, "no span was exported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        run.await.unwrap().unwrap();

        let seen = handler.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let trace = TraceId::from_hex(TRACE).unwrap();
        let parent = SpanId::from_hex(PARENT).unwrap();
        // The handler runs in the record's trace, in a span of its own.
        assert_eq!(seen[0].trace_id(), trace);
        assert_ne!(seen[0].span_id(), parent);

        let spans = exported.0.lock().unwrap();
        let span = spans.iter().find(|s| s.name == "handle orders").unwrap();
        assert_eq!(span.span_context.trace_id(), trace);
        assert_eq!(span.span_context.span_id(), seen[0].span_id());
        assert_eq!(span.parent_span_id, parent);
        assert!(span.parent_span_is_remote);
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Consumer);
        assert!(span
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "clairon.outcome" && kv.value.as_str() == "handled"));
    }

    #[test]
    fn malformed_trace_context_names_no_parent() {
        for tp in [
            "",
            "00-abc-def-01",
            &format!("00-{}-{PARENT}-01", "0".repeat(32)),
            &format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            &format!("00-{TRACE}-{PARENT}-01-extra"),
            &format!("ff-{TRACE}-{PARENT}-01"),
        ] {
            let hs = vec![(headers::TRACEPARENT.to_owned(), tp.to_owned())];
            assert!(remote_parent(&hs).is_none(), "{tp}");
        }
        let hs = vec![("TraceParent".to_owned(), format!("00-{TRACE}-{PARENT}-01"))];
        assert!(remote_parent(&hs).is_some());
        // A later version may carry more fields.
        let hs = vec![(
            headers::TRACEPARENT.to_owned(),
            format!("01-{TRACE}-{PARENT}-01-more"),
        )];
        assert!(remote_parent(&hs).is_some());
    }
}
