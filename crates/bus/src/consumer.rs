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

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use clairon_events::{headers, topics};
use tokio_util::sync::CancellationToken;

use crate::{BusError, EventBus, Message, Record, Subscription};

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
        let topics: Vec<String> = if level == 0 {
            spec.topics.clone()
        } else {
            spec.topics
                .iter()
                .map(|t| topics::retry(t, &spec.group, level))
                .collect()
        };
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
    /// Set when handling stopped before the end of the batch (shutdown, or the bus
    /// could not take a retry or dead-letter record): the rest is delivered again.
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
        let outcome = match handler.handle(r).await {
            Ok(()) => Ok("handled"),
            Err(HandleError::Retry(reason)) if r.attempt() < policy.max_attempts => {
                forward(bus, r, group, Some(policy), &reason)
                    .await
                    .map(|_| "retried")
            }
            Err(HandleError::Retry(reason)) | Err(HandleError::Reject(reason)) => {
                match handler.dead_lettered(r, &reason).await {
                    Ok(()) => forward(bus, r, group, None, &reason)
                        .await
                        .map(|_| "dead_lettered"),
                    Err(e) => Err(BusError::Other(format!("dead-letter hook failed: {e:#}"))),
                }
            }
        };
        match outcome {
            Ok(what) => {
                metrics::counter!("clairon_bus_records_total", "topic" => topics::base_topic(&r.topic).to_owned(), "outcome" => what).increment(1);
                if what == "dead_lettered" {
                    tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, event_id = %r.event_id(), "record dead-lettered");
                }
                next = Some(r.offset + 1);
            }
            Err(e) => {
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = %e, "could not forward a failed record; it will be delivered again");
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

/// Writes a failed record to its next retry topic (`policy` given) or to its
/// dead-letter topic, keeping key, payload and metadata.
async fn forward(
    bus: &dyn EventBus,
    r: &Record,
    group: &str,
    policy: Option<&RetryPolicy>,
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
    let topic = match policy {
        Some(p) => {
            let attempt = r.attempt();
            headers::set(&mut hs, headers::ATTEMPT, (attempt + 1).to_string());
            let due = now_ms() + p.backoff(attempt).as_millis() as i64;
            headers::set(&mut hs, headers::NOT_BEFORE, due.to_string());
            topics::retry(&original, group, attempt)
        }
        None => {
            hs.retain(|(k, _)| !k.eq_ignore_ascii_case(headers::NOT_BEFORE));
            topics::dead_letter(&original)
        }
    };
    bus.publish(Message {
        topic,
        key: r.key.clone(),
        headers: hs,
        payload: r.payload.clone(),
    })
    .await
    .map(|_| ())
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
