//! The embedded engine: a durable, partitioned append-only log in a SQLite file.
//!
//! Records are rows keyed by (topic, partition, offset); consumer groups keep
//! their committed offsets in the same file. With WAL journaling a record is on
//! disk before `publish` returns, so it survives `kill -9`. Waiting consumers are
//! woken in-process by a change counter and poll the file otherwise, which also
//! lets a second process on the same data directory read the log.

use std::{
    collections::HashMap,
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Row, SqlitePool,
};
use tokio::sync::watch;

use crate::{
    consumer::now_ms, partition_for, BusError, BusOverview, EventBus, GroupLag, Message, Position,
    Record, StartFrom, Subscription, TopicInfo,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bus_topics (
    topic TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bus_records (
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    off INTEGER NOT NULL,
    msg_key TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (topic, part, off)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bus_offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    next_off INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, part)
) WITHOUT ROWID;
";

pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    default_partitions: u32,
    /// Partition counts of known topics.
    topics: Mutex<HashMap<String, u32>>,
    /// One writer at a time in this process; SQLite serialises other processes.
    write: tokio::sync::Mutex<()>,
    changes: watch::Sender<u64>,
}

impl EmbeddedBus {
    /// Opens (creating if needed) the log at `path`. New topics get `partitions`
    /// partitions; existing topics keep theirs.
    pub async fn open(path: &Path, partitions: u32) -> Result<Self, BusError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| BusError::Other(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        let mut topics = HashMap::new();
        for row in sqlx::query("SELECT topic, partitions FROM bus_topics")
            .fetch_all(&pool)
            .await?
        {
            topics.insert(row.get::<String, _>(0), row.get::<i64, _>(1) as u32);
        }
        Ok(EmbeddedBus {
            inner: Arc::new(Inner {
                pool,
                default_partitions: partitions.max(1),
                topics: Mutex::new(topics),
                write: tokio::sync::Mutex::new(()),
                changes: watch::Sender::new(0),
            }),
        })
    }

    /// Deletes records older than `retention`; returns how many.
    pub async fn prune(&self, retention: Duration) -> Result<u64, BusError> {
        let cutoff = now_ms() - retention.as_millis() as i64;
        let _w = self.inner.write.lock().await;
        let r = sqlx::query("DELETE FROM bus_records WHERE ts < ?")
            .bind(cutoff)
            .execute(&self.inner.pool)
            .await?;
        Ok(r.rows_affected())
    }
}

impl Inner {
    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        if let Some(p) = self.topics.lock().ok().and_then(|t| t.get(topic).copied()) {
            return Ok(p);
        }
        sqlx::query("INSERT INTO bus_topics (topic, partitions) VALUES (?, ?) ON CONFLICT(topic) DO NOTHING")
            .bind(topic)
            .bind(self.default_partitions as i64)
            .execute(&self.pool)
            .await?;
        let p: i64 = sqlx::query_scalar("SELECT partitions FROM bus_topics WHERE topic = ?")
            .bind(topic)
            .fetch_one(&self.pool)
            .await?;
        if let Ok(mut t) = self.topics.lock() {
            t.insert(topic.to_owned(), p as u32);
        }
        Ok(p as u32)
    }

    async fn end_offset(&self, topic: &str, part: u32) -> Result<u64, BusError> {
        let end: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(off) + 1, 0) FROM bus_records WHERE topic = ? AND part = ?",
        )
        .bind(topic)
        .bind(part as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(end as u64)
    }

    async fn append(&self, msgs: Vec<Message>) -> Result<Vec<Position>, BusError> {
        let mut parts = Vec::with_capacity(msgs.len());
        for m in &msgs {
            parts.push(partition_for(&m.key, self.partitions(&m.topic).await?));
        }
        let _w = self.write.lock().await;
        // IMMEDIATE takes the write lock up front: a deferred transaction that read
        // first could not upgrade after another connection's commit (SQLITE_BUSY).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::with_capacity(msgs.len());
        let ts = now_ms();
        for (m, part) in msgs.into_iter().zip(parts) {
            let off: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(off) + 1, 0) FROM bus_records WHERE topic = ? AND part = ?",
            )
            .bind(&m.topic)
            .bind(part as i64)
            .fetch_one(&mut *tx)
            .await?;
            let headers =
                serde_json::to_string(&m.headers).map_err(|e| BusError::Other(e.to_string()))?;
            sqlx::query("INSERT INTO bus_records (topic, part, off, msg_key, headers, payload, ts) VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(&m.topic)
                .bind(part as i64)
                .bind(off)
                .bind(&m.key)
                .bind(headers)
                .bind(&m.payload)
                .bind(ts)
                .execute(&mut *tx)
                .await?;
            out.push(Position {
                partition: part,
                offset: off as u64,
            });
        }
        tx.commit().await?;
        self.changes.send_modify(|c| *c = c.wrapping_add(1));
        Ok(out)
    }
}

#[async_trait]
impl EventBus for EmbeddedBus {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, msg: Message) -> Result<Position, BusError> {
        let mut pos = self.inner.append(vec![msg]).await?;
        pos.pop()
            .ok_or_else(|| BusError::Other("nothing appended".into()))
    }

    async fn publish_all(&self, msgs: Vec<Message>) -> Result<(), BusError> {
        if !msgs.is_empty() {
            self.inner.append(msgs).await?;
        }
        Ok(())
    }

    async fn subscribe_from(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let mut sub = EmbeddedSubscription {
            inner: self.inner.clone(),
            group: group.to_owned(),
            positions: Vec::new(),
            changes: self.inner.changes.subscribe(),
        };
        for topic in topics {
            for part in 0..self.inner.partitions(topic).await? {
                let committed: Option<i64> = sqlx::query_scalar(
                    "SELECT next_off FROM bus_offsets WHERE grp = ? AND topic = ? AND part = ?",
                )
                .bind(group)
                .bind(topic)
                .bind(part as i64)
                .fetch_optional(&self.inner.pool)
                .await?;
                let pos = match (committed, start) {
                    (Some(c), _) => c as u64,
                    (None, StartFrom::Earliest) => 0,
                    (None, StartFrom::Latest) => {
                        let end = self.inner.end_offset(topic, part).await?;
                        // Pin the start so a restart does not skip ahead again.
                        sub.commit(topic, part, end).await?;
                        end
                    }
                };
                sub.positions.push((topic.clone(), part, pos));
            }
        }
        Ok(Box::new(sub))
    }

    async fn watermarks(&self, topic: &str) -> Result<Vec<(u64, u64)>, BusError> {
        let parts: Option<i64> =
            sqlx::query_scalar("SELECT partitions FROM bus_topics WHERE topic = ?")
                .bind(topic)
                .fetch_optional(&self.inner.pool)
                .await?;
        let mut out = Vec::new();
        for part in 0..parts.unwrap_or(0) {
            let (first, end): (Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT MIN(off), MAX(off) + 1 FROM bus_records WHERE topic = ? AND part = ?",
            )
            .bind(topic)
            .bind(part)
            .fetch_one(&self.inner.pool)
            .await?;
            let end = end.unwrap_or(0) as u64;
            out.push((first.map_or(end, |f| f as u64), end));
        }
        Ok(out)
    }

    async fn ready(&self) -> Result<(), BusError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    async fn describe(&self) -> Result<BusOverview, BusError> {
        let mut topics: Vec<TopicInfo> = Vec::new();
        let rows = sqlx::query("SELECT topic, partitions FROM bus_topics ORDER BY topic")
            .fetch_all(&self.inner.pool)
            .await?;
        for row in rows {
            let name: String = row.get(0);
            let parts: i64 = row.get(1);
            let mut end_offsets = Vec::with_capacity(parts as usize);
            for p in 0..parts as u32 {
                end_offsets.push(self.inner.end_offset(&name, p).await?);
            }
            topics.push(TopicInfo { name, end_offsets });
        }
        let mut groups = Vec::new();
        for row in sqlx::query(
            "SELECT grp, topic, part, next_off FROM bus_offsets ORDER BY grp, topic, part",
        )
        .fetch_all(&self.inner.pool)
        .await?
        {
            let topic: String = row.get(1);
            let partition = row.get::<i64, _>(2) as u32;
            let committed = row.get::<i64, _>(3) as u64;
            let end = topics
                .iter()
                .find(|t| t.name == topic)
                .and_then(|t| t.end_offsets.get(partition as usize).copied())
                .unwrap_or(committed);
            groups.push(GroupLag {
                group: row.get(0),
                topic,
                partition,
                committed,
                lag: end.saturating_sub(committed),
            });
        }
        Ok(BusOverview {
            engine: "embedded".into(),
            topics,
            groups,
        })
    }
}

struct EmbeddedSubscription {
    inner: Arc<Inner>,
    group: String,
    /// (topic, partition, next offset to read)
    positions: Vec<(String, u32, u64)>,
    changes: watch::Receiver<u64>,
}

impl EmbeddedSubscription {
    async fn fetch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        let per_part = (max / self.positions.len().max(1)).max(16) as i64;
        let mut out = Vec::new();
        for (topic, part, pos) in self.positions.iter_mut() {
            if out.len() >= max {
                break;
            }
            let rows = sqlx::query(
                "SELECT off, msg_key, headers, payload, ts FROM bus_records \
                 WHERE topic = ? AND part = ? AND off >= ? ORDER BY off LIMIT ?",
            )
            .bind(&*topic)
            .bind(*part as i64)
            .bind(*pos as i64)
            .bind(per_part)
            .fetch_all(&self.inner.pool)
            .await?;
            for row in rows {
                let off = row.get::<i64, _>(0) as u64;
                let headers: Vec<(String, String)> =
                    serde_json::from_str(&row.get::<String, _>(2)).unwrap_or_default();
                out.push(Record {
                    topic: topic.clone(),
                    partition: *part,
                    offset: off,
                    key: row.get(1),
                    headers,
                    payload: row.get(3),
                    timestamp_ms: row.get(4),
                });
                *pos = off + 1;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.changes.borrow_and_update();
            let recs = self.fetch(max).await?;
            if !recs.is_empty() {
                return Ok(recs);
            }
            // Woken by an in-process publish; the timeout covers other processes.
            let step = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_millis(200));
            if step.is_zero() {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout(step, self.changes.changed()).await;
        }
    }

    async fn commit(
        &mut self,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), BusError> {
        sqlx::query(
            "INSERT INTO bus_offsets (grp, topic, part, next_off) VALUES (?, ?, ?, ?) \
             ON CONFLICT(grp, topic, part) DO UPDATE SET next_off = excluded.next_off",
        )
        .bind(&self.group)
        .bind(topic)
        .bind(partition as i64)
        .bind(next_offset as i64)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    async fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), BusError> {
        if let Some(p) = self
            .positions
            .iter_mut()
            .find(|(t, p, _)| t == topic && *p == partition)
        {
            p.2 = offset;
        }
        self.commit(topic, partition, offset).await
    }
}

#[cfg(test)]
mod tests;
