//! Transactional outbox: a service writes its domain rows and the events they
//! cause in one transaction; the relay publishes committed rows to the bus, in id
//! order, and deletes them once the bus holds them. A 2xx therefore means the
//! event will be published, even if the process dies right after answering.
//! Publishing is at-least-once (a crash between publish and delete repeats a
//! row), which consumers absorb by event id.
//!
//! Several relays may serve one table (replicas of a service, or processes on
//! one SQLite file): a pass is one transaction that locks the rows it
//! publishes and deletes them before committing, so a row is published by one
//! relay only and batches reach the bus in id order.

use std::{borrow::Cow, collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context;
use clairon_bus::{EventBus, Message};
use clairon_events::Envelope;
use sqlx::{AnyConnection, Connection, Executor, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{now_ms, text, Backend, Database, Migration};

const BATCH: i64 = 500;

pub struct Outbox {
    table: String,
    /// Rows published per pass.
    batch: i64,
    wake: Notify,
    /// One relay pass at a time in this process, so two callers never publish
    /// the same rows.
    relaying: tokio::sync::Mutex<()>,
}

impl Outbox {
    /// `table` is owned by one service, e.g. `users_outbox`.
    pub fn new(table: &str) -> Arc<Self> {
        Self::with_batch(table, BATCH)
    }

    pub(crate) fn with_batch(table: &str, batch: i64) -> Arc<Self> {
        Arc::new(Outbox {
            table: table.to_owned(),
            batch,
            wake: Notify::new(),
            relaying: tokio::sync::Mutex::new(()),
        })
    }

    pub fn migration(&self, version: i64) -> Migration {
        let t = &self.table;
        Migration {
            version,
            description: "outbox",
            sqlite: Cow::Owned(format!(
                "CREATE TABLE {t} (id INTEGER PRIMARY KEY AUTOINCREMENT, topic VARCHAR(255) NOT NULL, \
                 msg_key VARCHAR(255) NOT NULL, headers TEXT NOT NULL, payload TEXT NOT NULL, created_at BIGINT NOT NULL)"
            )),
            mysql: Cow::Owned(format!(
                "CREATE TABLE {t} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, topic VARCHAR(255) NOT NULL, \
                 msg_key TEXT NOT NULL, headers TEXT NOT NULL, payload MEDIUMTEXT NOT NULL, created_at BIGINT NOT NULL)"
            )),
        }
    }

    /// Adds an event to the transaction `conn` is in. Call [`Outbox::committed`]
    /// after the commit so the relay publishes without waiting for its tick.
    pub async fn enqueue(&self, conn: &mut AnyConnection, env: &Envelope) -> sqlx::Result<()> {
        let headers = serde_json::to_string(&env.headers).unwrap_or_else(|_| "[]".into());
        let payload = String::from_utf8_lossy(&env.payload);
        sqlx::query(&format!(
            "INSERT INTO {} (topic, msg_key, headers, payload, created_at) VALUES (?, ?, ?, ?, ?)",
            self.table
        ))
        .bind(&env.topic)
        .bind(&env.key)
        .bind(headers)
        .bind(payload.as_ref())
        .bind(now_ms())
        .execute(conn)
        .await?;
        Ok(())
    }

    pub fn committed(&self) {
        self.wake.notify_one();
    }

    /// Publishes one batch of committed rows; returns how many.
    ///
    /// The pass is one transaction holding the rows it publishes: on MySQL a
    /// `SELECT … FOR UPDATE` under READ COMMITTED (record locks only, so inserts
    /// on the request path never wait for it), on SQLite the write lock taken
    /// by `BEGIN IMMEDIATE`. A second relay waits for the first to commit its
    /// deletions and then sees only the rows left, so no row is published
    /// twice and batches go out in id order.
    pub async fn relay_once(&self, db: &Database, bus: &dyn EventBus) -> anyhow::Result<usize> {
        let _one = self.relaying.lock().await;
        let t = &self.table;
        // Nothing committed: no transaction, so an idle relay never takes the
        // SQLite write lock.
        if !self.measure(db).await? {
            return Ok(0);
        }
        let mut conn = db.pool.acquire().await.context("reading the outbox")?;
        let mut tx = match db.backend {
            Backend::Sqlite => Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await,
            // Applies to the next transaction of this session only.
            Backend::MySql => match conn
                .execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .await
            {
                Ok(_) => Connection::begin(&mut *conn).await,
                Err(e) => Err(e),
            },
        }
        .context("starting the outbox transaction")?;
        let lock = db.dialect("", " FOR UPDATE");
        let rows = sqlx::query(&format!(
            "SELECT id, topic, msg_key, headers, payload FROM {t} ORDER BY id LIMIT {}{lock}",
            self.batch
        ))
        .fetch_all(&mut *tx)
        .await
        .context("reading the outbox")?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut msgs = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.try_get::<i64, _>(0)?);
            msgs.push(Message {
                topic: text(row, 1)?,
                key: text(row, 2)?,
                headers: serde_json::from_str(&text(row, 3)?).unwrap_or_default(),
                payload: text(row, 4)?.into_bytes(),
            });
        }
        // On failure the transaction rolls back when dropped: the rows stay.
        let mut per_topic: BTreeMap<String, u64> = BTreeMap::new();
        for m in &msgs {
            *per_topic.entry(m.topic.clone()).or_default() += 1;
        }
        bus.publish_all(msgs)
            .await
            .context("publishing outbox rows")?;
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        sqlx::query(&format!("DELETE FROM {t} WHERE id IN ({list})"))
            .execute(&mut *tx)
            .await
            .context("deleting published outbox rows")?;
        tx.commit()
            .await
            .context("committing published outbox rows")?;
        metrics::counter!("clairon_outbox_published_total", "table" => self.table.clone())
            .increment(ids.len() as u64);
        for (topic, n) in per_topic {
            metrics::counter!("clairon_bus_published_total", "topic" => topic).increment(n);
        }
        Ok(ids.len())
    }

    /// Sets `clairon_outbox_oldest_age_seconds` and `clairon_outbox_backlog`
    /// for this table; returns whether it holds any row.
    ///
    /// Two primary-key look-ups, whatever the backlog: the oldest row is the
    /// lowest id (ids and `created_at` both grow with insertion, and the relay
    /// deletes in id order), and the backlog is the span of ids still present,
    /// exact but for ids that rolled-back inserts skipped.
    async fn measure(&self, db: &Database) -> anyhow::Result<bool> {
        let t = &self.table;
        let oldest = sqlx::query(&format!(
            "SELECT id, created_at, (SELECT MAX(id) FROM {t}) FROM {t} ORDER BY id LIMIT 1"
        ))
        .fetch_optional(&db.pool)
        .await
        .context("reading the outbox")?;
        let (age_ms, backlog) = match &oldest {
            Some(row) => {
                let first: i64 = row.try_get(0)?;
                let created_at: i64 = row.try_get(1)?;
                let last: i64 = row.try_get(2)?;
                ((now_ms() - created_at).max(0), (last - first + 1).max(1))
            }
            None => (0, 0),
        };
        metrics::gauge!("clairon_outbox_oldest_age_seconds", "table" => t.clone())
            .set(age_ms as f64 / 1000.0);
        metrics::gauge!("clairon_outbox_backlog", "table" => t.clone()).set(backlog as f64);
        Ok(oldest.is_some())
    }

    /// Publishes committed rows until `cancel` fires, then drains what it can.
    pub async fn run_relay(
        self: Arc<Self>,
        db: Database,
        bus: Arc<dyn EventBus>,
        cancel: CancellationToken,
    ) {
        let mut failures = 0u32;
        loop {
            match self.relay_once(&db, &*bus).await {
                Ok(n) if n > 0 => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures = (failures + 1).min(6);
                    tracing::warn!(table = %self.table, error = %format!("{e:#}"), "outbox relay failed; will retry");
                }
            }
            if cancel.is_cancelled() {
                return;
            }
            let wait = if failures == 0 {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(100 * 2u64.pow(failures))
            };
            tokio::select! {
                _ = self.wake.notified(), if failures == 0 => {}
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }
}
