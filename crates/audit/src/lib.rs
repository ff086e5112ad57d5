//! The logging/audit service: reads every record of every main and dead-letter
//! topic, stores each (event id, topic) once, and lets administrators search the
//! log (`GET /api/logs`) and count it per minute (`GET /api/logs/stats`).
//!
//! SQL is written once for SQLite and MySQL/MariaDB through `sqlx::Any`: `?`
//! placeholders, BIGINT epoch-millisecond times, no RETURNING and no upserts.
//! Redeliveries are absorbed by a unique index rather than a read-then-write.

mod api;
mod entry;

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use clairon_auth::AuthContext;
use clairon_bus::{
    consumer::{self, ConsumerSpec, HandleError, Handler},
    Record,
};
use clairon_events::topics;
use clairon_http::ServiceDeps;
use clairon_store::{is_unique_violation, Database, Migration};

/// Consumer group and migration namespace.
const SERVICE: &str = "audit";
/// The audit consumer group.
pub const CONSUMER_GROUP: &str = SERVICE;

pub struct Audit {
    db: Database,
    auth: Arc<AuthContext>,
}

impl Audit {
    /// Runs migrations, spawns the consumer (group "audit") on deps.tasks, stopping on deps.cancel.
    pub async fn start(deps: &ServiceDeps, db: Database) -> anyhow::Result<Arc<Self>> {
        clairon_store::migrate(&db, SERVICE, &migrations()).await?;
        let audit = Arc::new(Audit {
            db,
            auth: deps.auth.clone(),
        });
        let topics = consumed_topics();
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let spec = ConsumerSpec::new(SERVICE, &topic_refs, deps.retry.clone());
        let handler: Arc<dyn Handler> = Arc::new(Consumer {
            audit: audit.clone(),
        });
        let (bus, cancel) = (deps.bus.clone(), deps.cancel.clone());
        deps.tasks.spawn(async move {
            if let Err(e) = consumer::run(bus, spec, handler, cancel).await {
                tracing::error!(error = %format!("{e:#}"), "audit consumer stopped");
            }
        });
        Ok(audit)
    }

    /// Full paths `/api/logs…`, administrators only.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        api::router(self.clone())
    }

    pub fn openapi() -> utoipa::openapi::OpenApi {
        api::openapi()
    }

    /// Handles one record (what the consumer calls); public so tests can drive it directly.
    /// Returns whether it was newly stored (false for a redelivery).
    pub async fn record(&self, r: &Record) -> anyhow::Result<bool> {
        let e = entry::Entry::from_record(r);
        let res = sqlx::query(
            "INSERT INTO audit_events (id, event_id, topic, record_partition, record_offset, event_type, \
             dead_letter, error, msg_key, user_id, payload, headers, occurred_at, recorded_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&e.event_id)
        .bind(&e.topic)
        .bind(e.partition)
        .bind(e.offset)
        .bind(&e.event_type)
        .bind(i64::from(e.dead_letter))
        .bind(e.error.as_deref())
        .bind(&e.key)
        .bind(e.user_id.as_deref())
        .bind(&e.payload)
        .bind(&e.headers)
        .bind(e.occurred_at)
        .bind(clairon_store::now_ms())
        .execute(&self.db.pool)
        .await;
        let stored = match res {
            Ok(_) => true,
            Err(err) if is_unique_violation(&err) => false,
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("storing event {} from {}", e.event_id, r.topic))
            }
        };
        let outcome = if stored { "stored" } else { "duplicate" };
        metrics::counter!("clairon_audit_records_total", "outcome" => outcome).increment(1);
        Ok(stored)
    }
}

/// The five main topics and their dead-letter topics. Retry topics are not
/// listed: the consumer reads its own retry levels for these topics.
fn consumed_topics() -> Vec<String> {
    topics::ALL
        .iter()
        .map(|t| t.to_string())
        .chain(topics::ALL.iter().map(|t| topics::dead_letter(t)))
        .collect()
}

struct Consumer {
    audit: Arc<Audit>,
}

#[async_trait]
impl Handler for Consumer {
    /// Only the database can fail here; anything else about a record is stored
    /// as is. A failed dead letter is delivered again in place by the runner.
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        match self.audit.record(record).await {
            Ok(_) => Ok(()),
            Err(e) => Err(HandleError::Retry(format!("{e:#}"))),
        }
    }
}

pub fn migrations() -> Vec<Migration> {
    // MySQL's TEXT stops at 64 KiB, hence `{long_text}` (MEDIUMTEXT there) for
    // payload and headers. `partition` and `offset` are reserved words in
    // MySQL, hence the prefixes. Every column is as wide as `entry` allows.
    vec![Migration::portable(
        1,
        "audit events",
        "CREATE TABLE audit_events (\
            id VARCHAR(36) NOT NULL PRIMARY KEY, \
            event_id VARCHAR(128) NOT NULL, \
            topic VARCHAR(255) NOT NULL, \
            record_partition BIGINT NOT NULL, \
            record_offset BIGINT NOT NULL, \
            event_type VARCHAR(64) NOT NULL, \
            dead_letter BIGINT NOT NULL, \
            error TEXT NULL, \
            msg_key TEXT NOT NULL, \
            user_id VARCHAR(64) NULL, \
            payload {long_text} NOT NULL, \
            headers {long_text} NOT NULL, \
            occurred_at BIGINT NOT NULL, \
            recorded_at BIGINT NOT NULL); \
         CREATE UNIQUE INDEX audit_events_event_topic ON audit_events (event_id, topic); \
         CREATE INDEX audit_events_occurred ON audit_events (occurred_at, id); \
         CREATE INDEX audit_events_type ON audit_events (event_type, occurred_at, id); \
         CREATE INDEX audit_events_user ON audit_events (user_id, occurred_at, id)",
    )]
}

#[cfg(test)]
mod tests;
