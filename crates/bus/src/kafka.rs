//! The Kafka engine, on librdkafka through `rdkafka`.
//!
//! Same semantics as the embedded engine, so [`crate::consumer::run`] works
//! unchanged: records are keyed (one key, one partition, kept in order),
//! `publish` returns once the broker has the record on every in-sync replica,
//! and a consumer group's position only moves when [`Subscription::commit`] is
//! called — at-least-once delivery.
//!
//! Topic names (and consumer group ids) get `topic_prefix` on the wire, so
//! several environments can share one cluster; callers and the records they
//! read only ever see bare names. Topics are created by this engine through the
//! admin API, never by the broker's auto-creation, so every topic gets the
//! configured partition count and a retry or dead-letter topic gets as many
//! partitions as the topic it serves.

mod subscription;
pub mod testing;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use clairon_events::topics;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::ClientContext,
    config::{ClientConfig, RDKafkaLogLevel},
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    metadata::Metadata,
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
    Offset, TopicPartitionList,
};

use crate::{
    BusError, BusOverview, EventBus, GroupLag, Message, Position, StartFrom, Subscription,
    TopicInfo,
};

/// How the engine reaches the cluster and lays out topics.
#[derive(Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Put in front of every topic name and consumer group id on the wire.
    pub topic_prefix: String,
    pub client_id: String,
    /// `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    pub security_protocol: Option<String>,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512…
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    /// CA bundle to verify the brokers' certificates with.
    pub ssl_ca_location: Option<String>,
    /// Partitions of a topic this engine creates (retry and dead-letter topics
    /// take their source topic's count instead).
    pub partitions: i32,
    /// Replicas of a topic this engine creates; -1 takes the broker's default.
    pub replication_factor: i32,
    /// `retention.ms` of created topics; `None` keeps the broker's default.
    pub retention_ms: Option<i64>,
    /// A consumer that stops heartbeating for this long loses its partitions.
    pub session_timeout_ms: u32,
    /// Static membership (`group.instance.id`): a restarted process takes its
    /// partitions back at once instead of after a rebalance. Must differ
    /// between processes of the same group.
    pub instance_id: Option<String>,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            ..KafkaSettings::default()
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            client_id: "clairon".into(),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            partitions: 3,
            replication_factor: 1,
            retention_ms: None,
            session_timeout_ms: 10_000,
            instance_id: None,
        }
    }
}

// Hand-written so that the password never reaches a log line.
impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("client_id", &self.client_id)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field(
                "sasl_password",
                &self.sasl_password.as_ref().map(|_| "<redacted>"),
            )
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("retention_ms", &self.retention_ms)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// How long a delivery may take before `publish` gives up (librdkafka retries
/// within it). Short enough for callers such as the outbox relay to retry
/// themselves and report the outage.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Metadata, admin and offset requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound of a whole `describe()` call.
const DESCRIBE_BUDGET: Duration = Duration::from_secs(15);

pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    producer: FutureProducer<LogContext>,
    admin: AdminClient<LogContext>,
    /// Topics (full names) known to exist, so publish checks the cluster once.
    known_topics: Mutex<HashSet<String>>,
    /// One topic-creation round at a time: concurrent first publishes would
    /// otherwise all ask the cluster.
    creating: tokio::sync::Mutex<()>,
    /// Static member ids in use by this process's open subscriptions.
    instance_ids: Arc<Mutex<HashSet<String>>>,
}

impl KafkaBus {
    /// Creates the producer and admin clients. Does not wait for the cluster:
    /// librdkafka connects in the background, [`EventBus::ready`] tells when it
    /// answers.
    pub fn connect(settings: KafkaSettings) -> Result<Self, BusError> {
        if settings.brokers.trim().is_empty() {
            return Err(BusError::Other(
                "Kafka: no brokers configured (expected host:port[,host:port…])".into(),
            ));
        }
        if settings.partitions < 1 {
            return Err(BusError::Other(format!(
                "Kafka: partitions must be at least 1, got {}",
                settings.partitions
            )));
        }
        if settings.replication_factor < 1 && settings.replication_factor != -1 {
            return Err(BusError::Other(format!(
                "Kafka: replication factor must be at least 1 (or -1 for the broker's default), got {}",
                settings.replication_factor
            )));
        }
        let mut cfg = base_config(&settings);
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            // Idempotence keeps order per partition with up to 5 requests in flight.
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            // The Java client's key hashing, so a key lands on the same partition
            // whichever client (or language) published it.
            .set("partitioner", "murmur2_random")
            // Topics come from `ensure_topics` with the right partition count,
            // never from the broker's defaults.
            .set("allow.auto.create.topics", "false");
        let producer: FutureProducer<LogContext> = cfg
            .create_with_context(LogContext::new("producer"))
            .map_err(|e| config_error("producer", &e))?;
        let admin: AdminClient<LogContext> = base_config(&settings)
            .create_with_context(LogContext::new("admin"))
            .map_err(|e| config_error("admin client", &e))?;
        Ok(KafkaBus {
            inner: Arc::new(Inner {
                settings,
                producer,
                admin,
                known_topics: Mutex::new(HashSet::new()),
                creating: tokio::sync::Mutex::new(()),
                instance_ids: Arc::new(Mutex::new(HashSet::new())),
            }),
        })
    }

    /// Creates the topics (with prefix) idempotently through the admin API:
    /// every main topic in [`topics::ALL`] and those the groups read, each
    /// one's `-dlt`, and the retry topics `topics::retry(t, group, n)` for n in
    /// `1..max_attempts` (none of these for a dead-letter topic a group reads:
    /// the runner never forwards from one) — retry and dead-letter topics with their source's
    /// partition count. A topic that already exists is left as it is. Returns
    /// the (bare) names of the topics this call created.
    pub async fn init_topics(
        &self,
        groups: &[(&str, &[&str])],
        max_attempts: u32,
    ) -> Result<Vec<String>, BusError> {
        let mut wanted: Vec<String> = Vec::new();
        let mut add = |t: String| {
            if !wanted.contains(&t) {
                wanted.push(t);
            }
        };
        for t in topics::ALL {
            add(t.to_owned());
            add(topics::dead_letter(t));
        }
        for (group, group_topics) in groups {
            for t in *group_topics {
                add((*t).to_owned());
                // A group reading a dead-letter topic never forwards from it.
                if topics::is_dead_letter(t) {
                    continue;
                }
                add(topics::dead_letter(t));
                for n in 1..max_attempts {
                    add(topics::retry(t, group, n));
                }
            }
        }
        self.inner.create_missing(&wanted).await
    }
}

/// Settings every client shares: brokers, identity, security.
fn base_config(s: &KafkaSettings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &s.brokers)
        .set("client.id", &s.client_id);
    let optional = [
        ("security.protocol", &s.security_protocol),
        ("sasl.mechanism", &s.sasl_mechanism),
        ("sasl.username", &s.sasl_username),
        ("sasl.password", &s.sasl_password),
        ("ssl.ca.location", &s.ssl_ca_location),
    ];
    for (key, value) in optional {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            cfg.set(key, v);
        }
    }
    cfg
}

fn config_error(what: &str, e: &KafkaError) -> BusError {
    BusError::Other(format!("Kafka: could not create the {what}: {e}"))
}

/// The librdkafka error code's own text when there is one ("Broker: Group
/// rebalance in progress"), which reads better than the wrapper's.
fn reason(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => code.to_string(),
        None => e.to_string(),
    }
}

fn is_unavailable(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::TimedOutQueue
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::WaitingForCoordinator
        )
    )
}

fn bus_error(context: impl fmt::Display, e: &KafkaError) -> BusError {
    let msg = format!("Kafka: {context}: {}", reason(e));
    if is_unavailable(e) {
        BusError::Unavailable(msg)
    } else {
        BusError::Other(msg)
    }
}

/// Runs a blocking librdkafka call (metadata, offsets, commits) off the async
/// workers, and gives up waiting after `limit`.
async fn blocking<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BusError> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BusError::Other(format!("Kafka: {what} failed: {e}"))),
        Err(_) => Err(BusError::Unavailable(format!(
            "Kafka: {what} got no answer within {} s",
            limit.as_secs()
        ))),
    }
}

impl Inner {
    fn full(&self, bare: &str) -> String {
        format!("{}{bare}", self.settings.topic_prefix)
    }

    fn bare<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(self.settings.topic_prefix.as_str())
    }

    fn is_known(&self, full: &str) -> bool {
        self.known_topics
            .lock()
            .map(|k| k.contains(full))
            .unwrap_or(false)
    }

    fn forget(&self, full: &str) {
        if let Ok(mut k) = self.known_topics.lock() {
            k.remove(full);
        }
    }

    /// Metadata of the whole cluster: (full topic name → partition count).
    async fn topic_partitions(&self, limit: Duration) -> Result<HashMap<String, i32>, BusError> {
        let producer = self.producer.clone();
        let md = blocking("reading cluster metadata", limit, move || {
            producer.client().fetch_metadata(None, limit)
        })
        .await?
        .map_err(|e| bus_error("could not read cluster metadata", &e))?;
        Ok(partition_counts(&md))
    }

    /// Makes sure the (bare) topics exist before a publish or a subscribe.
    async fn ensure_topics(&self, bare: &[String]) -> Result<(), BusError> {
        let all_known = || bare.iter().all(|t| self.is_known(&self.full(t)));
        if all_known() {
            return Ok(());
        }
        let _one_at_a_time = self.creating.lock().await;
        // Another publish may have created them while this one waited.
        if all_known() {
            return Ok(());
        }
        self.create_missing_locked(bare).await.map(|_| ())
    }

    /// Creates those of `bare` that do not exist yet; returns their names.
    async fn create_missing(&self, bare: &[String]) -> Result<Vec<String>, BusError> {
        let _one_at_a_time = self.creating.lock().await;
        self.create_missing_locked(bare).await
    }

    async fn create_missing_locked(&self, bare: &[String]) -> Result<Vec<String>, BusError> {
        let existing = self.topic_partitions(REQUEST_TIMEOUT).await?;
        let mut planned: BTreeMap<String, i32> = BTreeMap::new();
        let mut order: Vec<&str> = bare.iter().map(String::as_str).collect();
        // Main topics first, so that their derived topics can copy their count.
        order.sort_by_key(|t| topics::base_topic(t) != *t);
        for t in order {
            let full = self.full(t);
            let base = topics::base_topic(t);
            let base_count = (base != t).then(|| {
                let base_full = self.full(base);
                existing
                    .get(&base_full)
                    .or_else(|| planned.get(base))
                    .copied()
                    .unwrap_or(self.settings.partitions)
            });
            match existing.get(&full) {
                Some(&have) => {
                    if let Some(want) = base_count.filter(|w| *w != have) {
                        tracing::warn!(topic = %full, partitions = have, source_partitions = want,
                            "topic exists with a partition count different from its source topic's; left as it is");
                    }
                }
                None => {
                    planned.insert(t.to_owned(), base_count.unwrap_or(self.settings.partitions));
                }
            }
        }
        let mut created = Vec::new();
        if !planned.is_empty() {
            let names: Vec<(String, i32)> =
                planned.iter().map(|(t, p)| (self.full(t), *p)).collect();
            let retention = self.settings.retention_ms.map(|ms| ms.to_string());
            let new_topics: Vec<NewTopic<'_>> = names
                .iter()
                .map(|(name, parts)| {
                    let t = NewTopic::new(
                        name,
                        *parts,
                        TopicReplication::Fixed(self.settings.replication_factor),
                    );
                    match &retention {
                        Some(ms) => t.set("retention.ms", ms),
                        None => t,
                    }
                })
                .collect();
            let opts = AdminOptions::new()
                .request_timeout(Some(REQUEST_TIMEOUT))
                .operation_timeout(Some(REQUEST_TIMEOUT));
            let results = tokio::time::timeout(
                REQUEST_TIMEOUT + Duration::from_secs(2),
                self.admin.create_topics(new_topics.iter(), &opts),
            )
            .await
            .map_err(|_| {
                BusError::Unavailable("Kafka: creating topics got no answer in time".into())
            })?
            .map_err(|e| bus_error("could not create topics", &e))?;
            let mut failures = Vec::new();
            for r in results {
                match r {
                    Ok(name) => {
                        tracing::info!(topic = %name, "created Kafka topic");
                        if let Some(b) = self.bare(&name) {
                            created.push(b.to_owned());
                        }
                    }
                    // Someone else (another replica) was faster: that is success.
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => failures.push(format!("{name} ({code})")),
                }
            }
            if !failures.is_empty() {
                return Err(BusError::Other(format!(
                    "Kafka: could not create topics: {}",
                    failures.join(", ")
                )));
            }
        }
        if let Ok(mut k) = self.known_topics.lock() {
            k.extend(bare.iter().map(|t| self.full(t)));
        }
        created.sort();
        Ok(created)
    }

    fn record(&self, m: &Message) -> (String, OwnedHeaders) {
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        (self.full(&m.topic), headers)
    }

    fn delivery_error(&self, topic: &str, e: &KafkaError) -> BusError {
        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
            // Deleted behind our back: check again on the next publish.
            self.forget(&self.full(topic));
        }
        bus_error(format_args!("could not publish to '{topic}'"), e)
    }
}

fn partition_counts(md: &Metadata) -> HashMap<String, i32> {
    md.topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect()
}

#[async_trait]
impl EventBus for KafkaBus {
    fn engine(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, msg: Message) -> Result<Position, BusError> {
        let inner = &self.inner;
        inner
            .ensure_topics(std::slice::from_ref(&msg.topic))
            .await?;
        let (topic, headers) = inner.record(&msg);
        let record = FutureRecord::to(&topic)
            .key(&msg.key)
            .payload(&msg.payload)
            .headers(headers);
        match inner
            .producer
            .send(record, Timeout::After(DELIVERY_TIMEOUT))
            .await
        {
            Ok(d) => Ok(Position {
                partition: d.partition.max(0) as u32,
                offset: d.offset.max(0) as u64,
            }),
            Err((e, _)) => Err(inner.delivery_error(&msg.topic, &e)),
        }
    }

    async fn publish_all(&self, msgs: Vec<Message>) -> Result<(), BusError> {
        let inner = &self.inner;
        let mut names: Vec<String> = msgs.iter().map(|m| m.topic.clone()).collect();
        names.sort();
        names.dedup();
        inner.ensure_topics(&names).await?;
        // Enqueue everything first (librdkafka batches it), then wait for the
        // delivery reports; the idempotent producer keeps the order per partition.
        let mut pending = Vec::with_capacity(msgs.len());
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        for m in &msgs {
            let (topic, headers) = inner.record(m);
            let mut record = FutureRecord::to(&topic)
                .key(&m.key)
                .payload(&m.payload)
                .headers(headers);
            loop {
                match inner.producer.send_result(record) {
                    Ok(f) => {
                        pending.push((m.topic.as_str(), f));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if Instant::now() < deadline =>
                    {
                        // The local queue is full: let deliveries drain it.
                        record = r;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => return Err(inner.delivery_error(&m.topic, &e)),
                }
            }
        }
        for (topic, f) in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(inner.delivery_error(topic, &e)),
                Err(_) => {
                    return Err(BusError::Other(
                        "Kafka: the producer shut down before confirming a delivery".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn subscribe_from(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let inner = self.inner.clone();
        // Subscribing to a missing topic would only be noticed at the next
        // metadata refresh, after the topic is created.
        inner.ensure_topics(topics).await?;
        if start == StartFrom::Latest {
            pin_latest(&inner, group, topics).await;
        }
        let sub = subscription::KafkaSubscription::open(inner, group, topics, start)?;
        Ok(Box::new(sub))
    }

    async fn watermarks(&self, topic: &str) -> Result<Vec<(u64, u64)>, BusError> {
        let inner = self.inner.clone();
        let full = inner.full(topic);
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        blocking(
            "reading a topic's offsets",
            REQUEST_TIMEOUT + Duration::from_secs(5),
            move || {
                let left = || deadline.saturating_duration_since(Instant::now());
                let reader = helper_consumer(&inner.settings, None)?;
                let md = reader
                    .fetch_metadata(Some(&full), left())
                    .map_err(|e| bus_error("could not read cluster metadata", &e))?;
                let count = partition_counts(&md).get(&full).copied().unwrap_or(0);
                let mut out = Vec::with_capacity(count.max(0) as usize);
                for p in 0..count {
                    let (low, high) = reader
                        .fetch_watermarks(&full, p, left())
                        .map_err(|e| bus_error("could not read a partition's offsets", &e))?;
                    out.push((low.max(0) as u64, high.max(0) as u64));
                }
                Ok(out)
            },
        )
        .await?
    }

    async fn ready(&self) -> Result<(), BusError> {
        let producer = self.inner.producer.clone();
        // One topic, not all of them: cheap on a big cluster, and enough to
        // prove that a broker answers. The topic need not exist.
        let probe = self.inner.full(topics::ALL[0]);
        let brokers = self.inner.settings.brokers.clone();
        let md = blocking(
            "the readiness check",
            READY_TIMEOUT + Duration::from_millis(500),
            move || {
                producer
                    .client()
                    .fetch_metadata(Some(&probe), READY_TIMEOUT)
            },
        )
        .await?
        .map_err(|e| {
            BusError::Unavailable(format!(
                "Kafka: no broker at {brokers} answered: {}",
                reason(&e)
            ))
        })?;
        if md.brokers().is_empty() {
            return Err(BusError::Unavailable(format!(
                "Kafka: the cluster at {} lists no brokers",
                self.inner.settings.brokers
            )));
        }
        Ok(())
    }

    async fn describe(&self) -> Result<BusOverview, BusError> {
        let inner = self.inner.clone();
        let deadline = Instant::now() + DESCRIBE_BUDGET;
        let (topics, groups) = blocking(
            "describing the cluster",
            DESCRIBE_BUDGET + Duration::from_secs(5),
            move || describe_blocking(&inner, deadline),
        )
        .await??;
        Ok(BusOverview {
            engine: "kafka".into(),
            topics,
            groups,
        })
    }
}

/// A group that starts at the latest record pins that start by committing the
/// current end offsets of partitions it has no position on yet. Without it the
/// group would resolve "latest" only once it is assigned the partitions, and
/// skip whatever was published in between; with it a restart also resumes
/// where it stopped, as the embedded engine does. Best effort: when the group
/// already has members the broker refuses the commit, and those members hold
/// positions anyway.
async fn pin_latest(inner: &Arc<Inner>, group: &str, bare: &[String]) {
    let inner2 = inner.clone();
    let group_id = inner.full(group);
    let full: Vec<String> = bare.iter().map(|t| inner.full(t)).collect();
    let res = blocking(
        "pinning the start of a new group",
        REQUEST_TIMEOUT * 3,
        move || {
            let consumer = helper_consumer(&inner2.settings, Some(&group_id))?;
            let md = consumer
                .fetch_metadata(None, REQUEST_TIMEOUT)
                .map_err(|e| bus_error("could not read cluster metadata", &e))?;
            let counts = partition_counts(&md);
            let mut tpl = TopicPartitionList::new();
            for t in &full {
                for p in 0..counts.get(t).copied().unwrap_or(0) {
                    tpl.add_partition(t, p);
                }
            }
            let committed = consumer
                .committed_offsets(tpl, REQUEST_TIMEOUT)
                .map_err(|e| bus_error("could not read committed offsets", &e))?;
            let mut ends = TopicPartitionList::new();
            for e in committed.elements() {
                if !matches!(e.offset(), Offset::Offset(_)) {
                    ends.add_partition_offset(e.topic(), e.partition(), Offset::End)
                        .map_err(|e| bus_error("bad partition", &e))?;
                }
            }
            if ends.count() == 0 {
                return Ok(0);
            }
            let ends = consumer
                .offsets_for_times(ends, REQUEST_TIMEOUT)
                .map_err(|e| bus_error("could not read end offsets", &e))?;
            consumer
                .commit(&ends, CommitMode::Sync)
                .map_err(|e| bus_error("could not commit the start offsets", &e))?;
            Ok::<usize, BusError>(ends.count())
        },
    )
    .await;
    match res {
        Ok(Ok(n)) if n > 0 => {
            tracing::debug!(
                group,
                partitions = n,
                "pinned the group's start at the end of the log"
            )
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) | Err(e) => {
            tracing::debug!(group, error = %e, "could not pin the group's start; it starts at the latest offset when assigned")
        }
    }
}

/// A short-lived consumer for offset look-ups (never subscribes, so dropping it
/// is quick and it never joins a group).
fn helper_consumer(
    settings: &KafkaSettings,
    group_id: Option<&str>,
) -> Result<BaseConsumer<LogContext>, BusError> {
    let mut cfg = base_config(settings);
    cfg.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    if let Some(g) = group_id {
        cfg.set("group.id", g);
    }
    cfg.create_with_context(LogContext::new("offsets"))
        .map_err(|e| config_error("offset reader", &e))
}

fn describe_blocking(
    inner: &Inner,
    deadline: Instant,
) -> Result<(Vec<TopicInfo>, Vec<GroupLag>), BusError> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let prefix = inner.settings.topic_prefix.as_str();
    let reader = helper_consumer(&inner.settings, None)?;
    let md = reader
        .fetch_metadata(None, left().min(REQUEST_TIMEOUT))
        .map_err(|e| bus_error("could not read cluster metadata", &e))?;
    // Ours: the prefix, and none of the broker's internal topics.
    let mut ours: Vec<(String, i32)> = partition_counts(&md)
        .into_iter()
        .filter(|(t, _)| t.starts_with(prefix) && !t.starts_with("__"))
        .collect();
    ours.sort();

    let mut all = TopicPartitionList::new();
    for (t, n) in &ours {
        for p in 0..*n {
            all.add_partition_offset(t, p, Offset::End)
                .map_err(|e| bus_error("bad partition", &e))?;
        }
    }
    // One ListOffsets request per broker rather than one per partition.
    let ends = if all.count() == 0 {
        HashMap::new()
    } else {
        reader
            .offsets_for_times(all.clone(), left().min(REQUEST_TIMEOUT))
            .map_err(|e| bus_error("could not read end offsets", &e))?
            .to_topic_map()
    };
    let end_of = |t: &str, p: i32| match ends.get(&(t.to_owned(), p)) {
        Some(Offset::Offset(o)) => (*o).max(0) as u64,
        _ => 0,
    };
    let topics: Vec<TopicInfo> = ours
        .iter()
        .map(|(t, n)| TopicInfo {
            name: inner.bare(t).unwrap_or(t).to_owned(),
            end_offsets: (0..*n).map(|p| end_of(t, p)).collect(),
        })
        .collect();

    let mut groups = Vec::new();
    if all.count() == 0 {
        return Ok((topics, groups));
    }
    let list = reader
        .fetch_group_list(None, left().min(REQUEST_TIMEOUT))
        .map_err(|e| bus_error("could not list consumer groups", &e))?;
    let mut names: Vec<String> = list
        .groups()
        .iter()
        .filter(|g| matches!(g.protocol_type(), "consumer" | ""))
        .map(|g| g.name().to_owned())
        .filter(|g| g.starts_with(prefix))
        .collect();
    names.sort();
    drop(reader);
    for group_id in names {
        if left().is_zero() {
            tracing::warn!("describing Kafka consumer groups took too long; the rest are left out");
            break;
        }
        let consumer = helper_consumer(&inner.settings, Some(&group_id))?;
        let committed = match consumer.committed_offsets(all.clone(), left().min(REQUEST_TIMEOUT)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(group = %group_id, error = %reason(&e), "could not read a group's committed offsets");
                continue;
            }
        };
        let group = inner.bare(&group_id).unwrap_or(&group_id).to_owned();
        for e in committed.elements() {
            if let Offset::Offset(c) = e.offset() {
                let committed = c.max(0) as u64;
                let end = end_of(e.topic(), e.partition());
                groups.push(GroupLag {
                    group: group.clone(),
                    topic: inner.bare(e.topic()).unwrap_or(e.topic()).to_owned(),
                    partition: e.partition().max(0) as u32,
                    committed,
                    lag: end.saturating_sub(committed),
                });
            }
        }
    }
    groups
        .sort_by(|a, b| (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition)));
    Ok((topics, groups))
}

/// Sends librdkafka's own log lines and client errors to `tracing`, like the
/// rest of Clairon.
#[derive(Clone)]
pub(crate) struct LogContext {
    role: &'static str,
}

impl LogContext {
    fn new(role: &'static str) -> Self {
        LogContext { role }
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        log_line(self.role, level, fac, line);
    }

    fn error(&self, error: KafkaError, reason_text: &str) {
        client_error(self.role, &error, reason_text);
    }
}

impl ConsumerContext for LogContext {}

fn log_line(role: &str, level: RDKafkaLogLevel, fac: &str, line: &str) {
    match level {
        // librdkafka reports passing conditions (a broker restarting) at error
        // level; it retries them itself, so they are warnings for us.
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", client = role, facility = fac, "{line}")
        }
        RDKafkaLogLevel::Notice => {
            tracing::info!(target: "librdkafka", client = role, facility = fac, "{line}")
        }
        RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", client = role, facility = fac, "{line}")
        }
    }
}

fn client_error(role: &str, error: &KafkaError, reason_text: &str) {
    tracing::warn!(target: "librdkafka", client = role, error = %reason(error), "{reason_text}");
}
