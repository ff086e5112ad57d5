//! The event bus seam.
//!
//! [`EventBus`] is what every service sees: publish a record, open a
//! [`Subscription`] as a member of a consumer group, commit what was handled.
//! [`consumer::run`] builds the delivery policy on top of it — per-partition
//! order, retries on `<topic>-retry-<n>` topics with exponential backoff (so a
//! failing key never blocks the others) and dead letters on `<topic>-dlt` — so
//! every engine gets the same semantics. Engines: [`embedded::EmbeddedBus`], a
//! durable log in a local SQLite file; Kafka lives behind the same trait.

pub mod consumer;
pub mod embedded;
pub mod kafka;

use std::time::Duration;

use async_trait::async_trait;
pub use clairon_events::Envelope as Message;

/// A record as read from the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    /// When the record was appended, epoch milliseconds.
    pub timestamp_ms: i64,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        clairon_events::headers::find(&self.headers, name)
    }

    /// 1 for a first delivery.
    pub fn attempt(&self) -> u32 {
        self.header(clairon_events::headers::ATTEMPT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// The event id header, or a position-derived id for records written without one.
    pub fn event_id(&self) -> String {
        match self.header(clairon_events::headers::EVENT_ID) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => format!("{}:{}:{}", self.topic, self.partition, self.offset),
        }
    }
}

/// Where a published record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    #[error("event bus error: {0}")]
    Other(String),
}

impl From<sqlx::Error> for BusError {
    fn from(e: sqlx::Error) -> Self {
        BusError::Unavailable(e.to_string())
    }
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// The engine's name, for logs and readiness output.
    fn engine(&self) -> &'static str;

    /// Appends a record to `msg.topic`, partitioned by its key. Returns once the
    /// record is durable.
    async fn publish(&self, msg: Message) -> Result<Position, BusError>;

    /// Appends several records; their order is kept per key.
    async fn publish_all(&self, msgs: Vec<Message>) -> Result<(), BusError> {
        for m in msgs {
            self.publish(m).await?;
        }
        Ok(())
    }

    /// Joins consumer group `group` for `topics`; a partition without a committed
    /// offset starts at `start`.
    async fn subscribe_from(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, BusError>;

    /// Joins a consumer group that starts at the earliest record.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.subscribe_from(group, topics, StartFrom::Earliest)
            .await
    }

    /// `(first, end)` offsets of each partition of `topic`, by partition number:
    /// the first record the log still holds (equal to `end` when retention left
    /// none) and the next offset to be written. Empty for a topic that does not
    /// exist. Lets a reader that replays a whole topic know when it has caught up.
    async fn watermarks(&self, topic: &str) -> Result<Vec<(u64, u64)>, BusError> {
        let overview = self.describe().await?;
        Ok(overview
            .topics
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.end_offsets.into_iter().map(|e| (0, e)).collect())
            .unwrap_or_default())
    }

    /// Fails when the engine cannot currently take writes.
    async fn ready(&self) -> Result<(), BusError>;

    /// Topics, partitions, end offsets and each consumer group's lag, for monitoring.
    async fn describe(&self) -> Result<BusOverview, BusError>;
}

/// Where a consumer group with no committed offset begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Everything the log still holds (durable consumers).
    #[default]
    Earliest,
    /// Only what is appended from now on (per-replica fan-out such as PUSH).
    Latest,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BusOverview {
    pub engine: String,
    pub topics: Vec<TopicInfo>,
    pub groups: Vec<GroupLag>,
}

impl BusOverview {
    /// The names of the topics that hold at least one record.
    pub fn topics_with_records(&self) -> Vec<&str> {
        self.topics
            .iter()
            .filter(|t| t.end_offsets.iter().any(|&o| o > 0))
            .map(|t| t.name.as_str())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicInfo {
    pub name: String,
    /// End offset (next offset to be written) of each partition, by partition number.
    pub end_offsets: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub committed: u64,
    /// Records appended but not yet handled by the group.
    pub lag: u64,
}

#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` records from the assigned partitions, in offset order per
    /// partition, waiting at most `wait` when none are available.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError>;

    /// Commits the group's position: `next_offset` is the first record not yet handled.
    async fn commit(
        &mut self,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), BusError>;

    /// Moves the group's position on a partition, e.g. to replay from an offset.
    /// Takes effect for the next poll and is committed.
    async fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), BusError>;
}

/// Stable hash used to map keys to partitions (FNV-1a: same result on every
/// platform and every release, so a key never changes partition).
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}
