//! One consumer group member: a librdkafka `StreamConsumer` per subscribe call.
//!
//! Offsets are committed only through [`Subscription::commit`] (auto-commit
//! off), synchronously, so a commit that returned is on the broker. Partitions
//! move between members with the cooperative-sticky protocol: a rebalance only
//! takes away the partitions that change owner, and the others keep flowing.
//!
//! A commit is never sent for a partition this member no longer owns, or that
//! was taken away and given back since its records were polled: the current
//! owner has re-read those records from the committed offset, and an older
//! commit would move its position backwards. The records are handled twice at
//! worst (at-least-once). A commit the coordinator refuses because a rebalance
//! is under way is kept and sent again on the next poll or just before the
//! partition is revoked, rather than failing the subscription (the shared
//! runner would re-create it, leave and re-join the group, and cause one more
//! rebalance for everyone).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::{
    client::ClientContext,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, Headers, Message as _},
    Offset, TopicPartitionList,
};

use super::{
    base_config, blocking, bus_error, client_error, log_line, reason, Inner, REQUEST_TIMEOUT,
};
use crate::{consumer::now_ms, BusError, Record, StartFrom, Subscription};

type TopicPartition = (String, i32);
type KConsumer = StreamConsumer<SubContext>;

pub(super) struct KafkaSubscription {
    inner: Arc<Inner>,
    /// Bare group name, for logs and errors.
    group: String,
    /// On-the-wire names.
    group_id: String,
    topics: Vec<String>,
    start: StartFrom,
    instance_id: Option<String>,
    consumer: Option<Arc<KConsumer>>,
    /// Assignment epoch of each partition when its records were last polled.
    polled: HashMap<TopicPartition, u64>,
    /// A record received after its partition was re-assigned mid-poll: it
    /// opens the next batch, so one batch never mixes two assignments.
    stash: Option<(Record, TopicPartition, u64)>,
}

impl KafkaSubscription {
    pub(super) fn open(
        inner: Arc<Inner>,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Self, BusError> {
        let mut full_topics: Vec<String> = topics.iter().map(|t| inner.full(t)).collect();
        full_topics.sort();
        full_topics.dedup();
        let instance_id = inner
            .settings
            .instance_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .map(|id| reserve_instance_id(&inner, id, &full_topics));
        let mut sub = KafkaSubscription {
            group_id: inner.full(group),
            inner,
            group: group.to_owned(),
            topics: full_topics,
            start,
            instance_id,
            consumer: None,
            polled: HashMap::new(),
            stash: None,
        };
        sub.consumer = Some(sub.build()?);
        Ok(sub)
    }

    fn build(&self) -> Result<Arc<KConsumer>, BusError> {
        let s = &self.inner.settings;
        let mut cfg = base_config(s);
        cfg.set("group.id", &self.group_id)
            // Positions move only when the caller commits what it handled.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set("session.timeout.ms", s.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (s.session_timeout_ms / 3).max(100).to_string(),
            )
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Notice new partitions (and topics created after subscribing) soon.
            .set("topic.metadata.refresh.interval.ms", "30000")
            .set("enable.partition.eof", "false")
            // librdkafka prefetches up to 64 MB per consumer by default, and a
            // service runs one consumer per retry level: keep that modest.
            .set("queued.max.messages.kbytes", "16384");
        if let Some(id) = &self.instance_id {
            cfg.set("group.instance.id", id);
        }
        let consumer: KConsumer = cfg
            .create_with_context(SubContext::new(&self.group))
            .map_err(|e| {
                BusError::Other(format!(
                    "Kafka: could not create a consumer for group '{}': {e}",
                    self.group
                ))
            })?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| {
            bus_error(
                format_args!("could not subscribe group '{}' to {topics:?}", self.group),
                &e,
            )
        })?;
        Ok(Arc::new(consumer))
    }

    fn consumer(&self) -> Result<Arc<KConsumer>, BusError> {
        self.consumer
            .clone()
            .ok_or_else(|| BusError::Other("Kafka: the subscription is closed".into()))
    }

    fn key(&self, topic: &str, partition: u32) -> TopicPartition {
        (self.inner.full(topic), partition as i32)
    }

    fn to_record(&self, m: &BorrowedMessage<'_>) -> (Record, TopicPartition) {
        let full = m.topic();
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned(), v.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let record = Record {
            topic: self.inner.bare(full).unwrap_or(full).to_owned(),
            partition: m.partition().max(0) as u32,
            offset: m.offset().max(0) as u64,
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            headers,
            payload: m.payload().unwrap_or_default().to_vec(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or_else(now_ms),
        };
        (record, (full.to_owned(), m.partition()))
    }

    /// Sends the commits a rebalance refused earlier, for partitions still owned
    /// under the same assignment.
    async fn retry_pending(&self, consumer: &Arc<KConsumer>) {
        let ctx = consumer.context().clone();
        let due = ctx.due_pending();
        if due.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), off, _) in &due {
            if tpl
                .add_partition_offset(t, *p, Offset::Offset(*off))
                .is_err()
            {
                return;
            }
        }
        let c = consumer.clone();
        match blocking("committing offsets", REQUEST_TIMEOUT, move || {
            c.commit(&tpl, CommitMode::Sync)
        })
        .await
        {
            Ok(Ok(())) => ctx.clear_pending(&due),
            Ok(Err(e)) => {
                tracing::debug!(group = %self.group, error = %reason(&e), "deferred commit refused again; will retry")
            }
            Err(e) => {
                tracing::debug!(group = %self.group, error = %e, "deferred commit failed; will retry")
            }
        }
    }

    /// librdkafka gave up on this consumer (e.g. fenced by another member with
    /// the same static id): start a fresh one, and say why.
    fn rebuild(&mut self, code: RDKafkaErrorCode) -> BusError {
        if let Some(old) = self.consumer.take() {
            close_in_background(old);
        }
        self.polled.clear();
        self.stash = None;
        let hint = match (&self.instance_id, code) {
            (Some(id), RDKafkaErrorCode::FencedInstanceId) => format!(
                " — another consumer uses group.instance.id '{id}': give each process its own instance id"
            ),
            _ => String::new(),
        };
        let msg = format!(
            "Kafka: the consumer of group '{}' failed ({code}){hint}",
            self.group
        );
        match self.build() {
            Ok(c) => {
                self.consumer = Some(c);
                BusError::Other(format!("{msg}; it was re-created"))
            }
            Err(e) => BusError::Other(format!("{msg}; re-creating it failed: {e}")),
        }
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let consumer = self.consumer()?;
        self.retry_pending(&consumer).await;
        let ctx = consumer.context().clone();
        let deadline = tokio::time::Instant::now() + wait;
        let max = max.max(1);
        let mut out: Vec<Record> = Vec::new();
        let mut epochs: HashMap<TopicPartition, u64> = HashMap::new();
        if let Some((record, tp, epoch)) = self.stash.take() {
            epochs.insert(tp, epoch);
            out.push(record);
        }
        let mut misses = 0;
        while out.len() < max {
            // Wait for the first record only; then take what is already there.
            let next = if out.is_empty() {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(m) => m.map(|m| self.to_record(&m)),
                    Err(_) => break,
                }
            } else {
                match consumer.recv().now_or_never() {
                    Some(m) => m.map(|m| self.to_record(&m)),
                    // Pending can also mean "served a rebalance event": look twice.
                    None if misses < 2 => {
                        misses += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    None => break,
                }
            };
            match next {
                Ok((record, tp)) => {
                    let epoch = ctx.epoch(&tp).unwrap_or(0);
                    match epochs.get(&tp) {
                        Some(e) if *e != epoch => {
                            self.stash = Some((record, tp, epoch));
                            break;
                        }
                        _ => {
                            epochs.insert(tp, epoch);
                            out.push(record);
                        }
                    }
                }
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(KafkaError::MessageConsumptionFatal(code)) => {
                    if out.is_empty() {
                        return Err(self.rebuild(code));
                    }
                    // Hand over what was read; the next poll meets the error again.
                    tracing::warn!(group = %self.group, error = %code, "fatal consumer error");
                    break;
                }
                Err(e) => {
                    let code = e.rdkafka_error_code();
                    if matches!(
                        code,
                        Some(
                            RDKafkaErrorCode::UnknownTopicOrPartition
                                | RDKafkaErrorCode::UnknownTopic
                        )
                    ) {
                        // Deleted or not yet visible: the subscription picks it up later.
                        tracing::debug!(group = %self.group, error = %reason(&e), "subscribed topic not available yet");
                    } else {
                        tracing::warn!(group = %self.group, error = %reason(&e), "Kafka consumer error");
                    }
                    if !out.is_empty() {
                        break;
                    }
                    // librdkafka retries by itself; do not spin on a repeated error.
                    let pause = tokio::time::Instant::now() + Duration::from_millis(50);
                    tokio::time::sleep_until(pause.min(deadline)).await;
                }
            }
        }
        self.polled.extend(epochs);
        Ok(out)
    }

    async fn commit(
        &mut self,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), BusError> {
        let consumer = self.consumer()?;
        let ctx = consumer.context().clone();
        let tp = self.key(topic, partition);
        let Some(epoch) = ctx.epoch(&tp) else {
            tracing::debug!(group = %self.group, topic, partition, next_offset,
                "partition no longer assigned; commit skipped (its new owner re-reads from the last commit)");
            return Ok(());
        };
        if self.polled.get(&tp).is_some_and(|seen| *seen != epoch) {
            tracing::debug!(group = %self.group, topic, partition, next_offset,
                "partition re-assigned since its records were polled; commit skipped");
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(next_offset as i64))
            .map_err(|e| bus_error("bad offset", &e))?;
        let c = consumer.clone();
        let res = blocking("committing offsets", REQUEST_TIMEOUT, move || {
            c.commit(&tpl, CommitMode::Sync)
        })
        .await?;
        match res {
            Ok(()) => {
                ctx.forget_pending(&tp);
                Ok(())
            }
            Err(e) if refused_during_rebalance(&e) => {
                tracing::debug!(group = %self.group, topic, partition, next_offset, error = %reason(&e),
                    "commit refused during a rebalance; kept and sent again");
                ctx.set_pending(tp, next_offset as i64, epoch);
                Ok(())
            }
            Err(e) => Err(bus_error(
                format_args!(
                    "group '{}' could not commit {topic}[{partition}] at offset {next_offset}",
                    self.group
                ),
                &e,
            )),
        }
    }

    async fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), BusError> {
        let consumer = self.consumer()?;
        let tp = self.key(topic, partition);
        if consumer.context().epoch(&tp).is_none() {
            // Its new owner reads from the committed offset anyway.
            tracing::debug!(group = %self.group, topic, partition, offset, "seek on a partition no longer assigned; ignored");
            return Ok(());
        }
        if self.stash.as_ref().is_some_and(|(_, t, _)| *t == tp) {
            self.stash = None;
        }
        let c = consumer.clone();
        let (t, p) = tp.clone();
        let res = blocking("seeking", REQUEST_TIMEOUT, move || {
            c.seek(&t, p, Offset::Offset(offset as i64), REQUEST_TIMEOUT)
        })
        .await?;
        res.map_err(|e| {
            bus_error(
                format_args!("could not move to offset {offset} of {topic}[{partition}]"),
                &e,
            )
        })?;
        self.commit(topic, partition, offset).await
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        if let Some(id) = self.instance_id.take() {
            if let Ok(mut ids) = self.inner.instance_ids.lock() {
                ids.remove(&id);
            }
        }
        if let Some(c) = self.consumer.take() {
            close_in_background(c);
        }
    }
}

/// Closing leaves the group (and waits for the broker), which blocks: do it on
/// a blocking thread when there is a runtime.
fn close_in_background(consumer: Arc<KConsumer>) {
    let close = move || {
        let ctx = consumer.context().clone();
        let due = ctx.due_pending();
        if !due.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((t, p), off, _) in &due {
                let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*off));
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::debug!(error = %reason(&e), "deferred commit lost at close; records will be delivered again");
            }
        }
        drop(consumer);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(close);
        }
        Err(_) => close(),
    }
}

/// Errors the group coordinator gives while the group is re-forming; the
/// member rejoins by itself on its next poll.
fn refused_during_rebalance(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::AssignmentLost
                | RDKafkaErrorCode::State
        )
    )
}

/// A static member id per (process id, topic set): each of a group's topic
/// levels is its own member, and the id must stay the same across restarts.
fn reserve_instance_id(inner: &Inner, base: &str, topics: &[String]) -> String {
    let digest = crate::partition_for(&topics.join(","), u32::MAX);
    let stable = format!("{base}-{digest:08x}");
    let Ok(mut ids) = inner.instance_ids.lock() else {
        return stable;
    };
    // Two live subscriptions to the same topics in one process would fence
    // each other: the second gets a suffix.
    let mut id = stable.clone();
    let mut n = 2;
    while !ids.insert(id.clone()) {
        id = format!("{stable}-{n}");
        n += 1;
    }
    id
}

/// Tracks which partitions this member owns, under which assignment, and the
/// commits a rebalance refused.
pub(super) struct SubContext {
    group: String,
    state: Mutex<Assignment>,
}

#[derive(Default)]
struct Assignment {
    next_epoch: u64,
    owned: HashMap<TopicPartition, u64>,
    /// Refused commits: partition → (offset, epoch it was made under).
    pending: HashMap<TopicPartition, (i64, u64)>,
}

impl SubContext {
    fn new(group: &str) -> Self {
        SubContext {
            group: group.to_owned(),
            state: Mutex::new(Assignment::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Assignment) -> T) -> T {
        // A panic elsewhere cannot leave this map half-updated: keep using it.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut st)
    }

    fn epoch(&self, tp: &TopicPartition) -> Option<u64> {
        self.with(|st| st.owned.get(tp).copied())
    }

    fn set_pending(&self, tp: TopicPartition, offset: i64, epoch: u64) {
        self.with(|st| st.pending.insert(tp, (offset, epoch)));
    }

    fn forget_pending(&self, tp: &TopicPartition) {
        self.with(|st| st.pending.remove(tp));
    }

    /// Pending commits still valid (same assignment); drops the others.
    fn due_pending(&self) -> Vec<(TopicPartition, i64, u64)> {
        self.with(|st| {
            let owned = &st.owned;
            st.pending
                .retain(|tp, (_, epoch)| owned.get(tp) == Some(epoch));
            st.pending
                .iter()
                .map(|(tp, (off, ep))| (tp.clone(), *off, *ep))
                .collect()
        })
    }

    fn clear_pending(&self, sent: &[(TopicPartition, i64, u64)]) {
        self.with(|st| {
            for (tp, off, ep) in sent {
                if st.pending.get(tp) == Some(&(*off, *ep)) {
                    st.pending.remove(tp);
                }
            }
        });
    }
}

impl ClientContext for SubContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        log_line("consumer", level, fac, line);
    }

    fn error(&self, error: KafkaError, reason_text: &str) {
        client_error("consumer", &error, reason_text);
    }
}

impl ConsumerContext for SubContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        // Last chance for refused commits of the partitions that leave.
        let lost = consumer.assignment_lost();
        let mut tpl = TopicPartitionList::new();
        self.with(|st| {
            for e in revoked.elements() {
                let tp = (e.topic().to_owned(), e.partition());
                if let Some((off, epoch)) = st.pending.remove(&tp) {
                    if !lost && st.owned.get(&tp) == Some(&epoch) {
                        let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(off));
                    }
                }
            }
        });
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::debug!(group = %self.group, error = %reason(&e), "deferred commit failed at revocation; the new owner re-reads those records");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = self.with(|st| {
                    st.next_epoch += 1;
                    let epoch = st.next_epoch;
                    for e in tpl.elements() {
                        st.owned
                            .insert((e.topic().to_owned(), e.partition()), epoch);
                    }
                    st.owned.len()
                });
                if tpl.count() > 0 {
                    tracing::info!(group = %self.group, added = tpl.count(), owned = parts, "Kafka partitions assigned");
                }
            }
            Rebalance::Revoke(tpl) => {
                let parts = self.with(|st| {
                    for e in tpl.elements() {
                        st.owned.remove(&(e.topic().to_owned(), e.partition()));
                    }
                    st.owned.len()
                });
                if tpl.count() > 0 {
                    tracing::info!(group = %self.group, removed = tpl.count(), owned = parts,
                        lost = consumer.assignment_lost(), "Kafka partitions revoked");
                }
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %reason(e), "Kafka rebalance failed")
            }
        }
    }
}
