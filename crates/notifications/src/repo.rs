//! The service's tables (all `notif_`-prefixed) and the queries on them,
//! written once for SQLite and MySQL.
//!
//! Text is read with [`text`]/[`opt_text`] (MySQL hands TEXT over as bytes),
//! and values that come from the bus are cut to their column before they are
//! written, since MySQL refuses longer ones and a record must always be stored.

use clairon_events::{
    Envelope, NotificationStatus, NotificationStatusChanged, NotificationType, PushRequested,
    Timestamp,
};
use clairon_store::{
    is_unique_violation, now_ms, opt_text, outbox::Outbox, text, Database, Migration,
};
use serde::Serialize;
use sqlx::{any::AnyRow, AnyConnection, Row};
use uuid::Uuid;

pub const OUTBOX: &str = "notif_outbox";

// Column widths, in characters.
const TITLE_CHARS: usize = 255;
const RECIPIENT_CHARS: usize = 320;
const TOPIC_CHARS: usize = 255;
/// Errors and reasons are TEXT: 64 KiB on MySQL, 4 bytes per character at most.
const REASON_CHARS: usize = 4_000;

/// `s` cut to at most `max` characters.
fn fit(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub fn migrations() -> Vec<Migration> {
    vec![
        Outbox::new(OUTBOX).migration(1),
        Migration::portable(
            2,
            "notifications and history",
            "CREATE TABLE notif_notifications (\
                notification_id VARCHAR(36) NOT NULL PRIMARY KEY, user_id VARCHAR(36) NOT NULL, \
                kind VARCHAR(8) NOT NULL, title VARCHAR(255) NOT NULL, message {long_text} NOT NULL, \
                recipient VARCHAR(320) NULL, status VARCHAR(16) NOT NULL, attempts BIGINT NOT NULL, \
                last_error TEXT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
                read_at BIGINT NULL, delivered_at BIGINT NULL);\
             CREATE INDEX notif_notifications_user ON notif_notifications (user_id, created_at);\
             CREATE INDEX notif_notifications_created ON notif_notifications (created_at);\
             CREATE INDEX notif_notifications_status ON notif_notifications (status, created_at);\
             CREATE TABLE notif_history (\
                id VARCHAR(36) NOT NULL PRIMARY KEY, notification_id VARCHAR(36) NOT NULL, \
                status VARCHAR(16) NOT NULL, attempt BIGINT NOT NULL, reason TEXT NULL, at BIGINT NOT NULL);\
             CREATE INDEX notif_history_notification ON notif_history (notification_id, at)",
        ),
        Migration::portable(
            3,
            "dead letters",
            "CREATE TABLE notif_dead_letters (\
                id VARCHAR(36) NOT NULL PRIMARY KEY, topic VARCHAR(255) NOT NULL, \
                record_partition BIGINT NOT NULL, record_offset BIGINT NOT NULL, msg_key TEXT NOT NULL, \
                headers {long_text} NOT NULL, payload {long_text} NOT NULL, reason TEXT NOT NULL, attempts BIGINT NOT NULL, \
                notification_id VARCHAR(36) NULL, created_at BIGINT NOT NULL, replayed_at BIGINT NULL);\
             CREATE INDEX notif_dead_letters_created ON notif_dead_letters (created_at)",
        ),
        // One statement on MySQL, where DDL is not transactional: a half-applied
        // change would fail every later start. SQLite adds one column per ALTER,
        // inside the migration's transaction.
        Migration {
            version: 4,
            description: "delivery claims",
            sqlite: "ALTER TABLE notif_notifications ADD COLUMN claimed_by VARCHAR(64) NULL;\
                     ALTER TABLE notif_notifications ADD COLUMN claimed_until BIGINT NULL"
                .into(),
            mysql: "ALTER TABLE notif_notifications ADD COLUMN claimed_by VARCHAR(64) NULL, \
                    ADD COLUMN claimed_until BIGINT NULL"
                .into(),
        },
    ]
}

/// How long a delivery claim holds other processes off: longer than a
/// contact look-up and any channel's send (15 s for SMTP, 10 s for SMS, 30 s
/// for a PUSH published on Kafka) and the outcome's write. Only a process that
/// dies mid-send and does not come back makes another wait this long; the
/// waiting copy is deferred, which uses up no attempt.
pub const CLAIM_LEASE_MS: i64 = 60_000;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    pub notification_id: String,
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    pub recipient: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub read_at: Option<String>,
    pub delivered_at: Option<String>,
    #[serde(skip)]
    pub created_ms: i64,
}

fn ts(ms: i64) -> String {
    Timestamp::from_millis(ms).to_string()
}

const COLUMNS: &str =
    "notification_id, user_id, kind, title, message, recipient, status, attempts, \
                       last_error, created_at, updated_at, read_at, delivered_at";

fn view(row: &AnyRow) -> sqlx::Result<NotificationView> {
    let created: i64 = row.try_get("created_at")?;
    Ok(NotificationView {
        notification_id: text(row, "notification_id")?,
        user_id: text(row, "user_id")?,
        kind: text(row, "kind")?,
        title: text(row, "title")?,
        message: text(row, "message")?,
        recipient: opt_text(row, "recipient")?,
        status: text(row, "status")?,
        attempts: row.try_get("attempts")?,
        last_error: opt_text(row, "last_error")?,
        created_at: ts(created),
        updated_at: ts(row.try_get("updated_at")?),
        read_at: row.try_get::<Option<i64>, _>("read_at")?.map(ts),
        delivered_at: row.try_get::<Option<i64>, _>("delivered_at")?.map(ts),
        created_ms: created,
    })
}

/// A notification as the worker needs it.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub notification_id: Uuid,
    pub user_id: Uuid,
    pub kind: NotificationType,
    pub title: String,
    pub message: String,
    pub recipient: Option<String>,
    pub created_at: Timestamp,
    /// W3C trace context of the event that asked for it, for the status events
    /// it causes when no traced span is open.
    pub traceparent: Option<String>,
}

/// What [`claim`] found.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// This process delivers it now; the recipient stored with it, if any.
    Claimed(Option<String>),
    /// Sent, captured or dead already: nothing to send.
    Done(NotificationStatus),
    /// Another process is delivering it and its claim has not run out.
    Busy,
}

async fn history(
    conn: &mut AnyConnection,
    id: Uuid,
    status: NotificationStatus,
    attempt: u32,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO notif_history (id, notification_id, status, attempt, reason, at) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(Uuid::now_v7().to_string())
        .bind(id.to_string())
        .bind(status.as_str())
        .bind(i64::from(attempt))
        .bind(reason.map(|r| fit(r, REASON_CHARS)))
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores a notification as PENDING, claimed by `owner`, unless it exists; an
/// existing one is claimed when it is still to be sent and nobody else holds
/// it. The claim is what keeps two processes (a partition moving between
/// replicas mid-delivery, a retry copy beside a redelivered original) from
/// sending the same notification at once; [`record_outcome`] releases it.
pub async fn claim(db: &Database, n: &NewNotification, owner: &str) -> anyhow::Result<Claim> {
    let mut tx = db.pool.begin().await?;
    let now = now_ms();
    let res = sqlx::query(
        "INSERT INTO notif_notifications (notification_id, user_id, kind, title, message, recipient, status, attempts, created_at, updated_at, claimed_by, claimed_until) \
         VALUES (?, ?, ?, ?, ?, ?, 'PENDING', 0, ?, ?, ?, ?)",
    )
    .bind(n.notification_id.to_string())
    .bind(n.user_id.to_string())
    .bind(n.kind.as_str())
    .bind(fit(&n.title, TITLE_CHARS))
    .bind(&n.message)
    .bind(n.recipient.as_deref().map(|r| fit(r, RECIPIENT_CHARS)))
    .bind(n.created_at.millis())
    .bind(now)
    .bind(owner)
    .bind(now + CLAIM_LEASE_MS)
    .execute(&mut *tx)
    .await;
    match res {
        Ok(_) => {
            history(
                &mut tx,
                n.notification_id,
                NotificationStatus::Pending,
                0,
                None,
            )
            .await?;
            tx.commit().await?;
            Ok(Claim::Claimed(None))
        }
        Err(e) if is_unique_violation(&e) => {
            tx.rollback().await?;
            let claimed = sqlx::query(
                "UPDATE notif_notifications SET claimed_by = ?, claimed_until = ? \
                 WHERE notification_id = ? AND status IN ('PENDING', 'FAILED') \
                 AND (claimed_until IS NULL OR claimed_until < ? OR claimed_by = ?)",
            )
            .bind(owner)
            .bind(now + CLAIM_LEASE_MS)
            .bind(n.notification_id.to_string())
            .bind(now)
            .bind(owner)
            .execute(&db.pool)
            .await?
            .rows_affected()
                > 0;
            let row = sqlx::query(
                "SELECT status, recipient FROM notif_notifications WHERE notification_id = ?",
            )
            .bind(n.notification_id.to_string())
            .fetch_one(&db.pool)
            .await?;
            let status = text(&row, 0)?;
            let status = NotificationStatus::parse(&status)
                .ok_or_else(|| anyhow::anyhow!("unknown stored status {status}"))?;
            Ok(match (claimed, status.is_final()) {
                (true, _) => Claim::Claimed(opt_text(&row, 1)?),
                (false, true) => Claim::Done(status),
                (false, false) => Claim::Busy,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Gives a claim up before any send was tried (the recipient could not be
/// resolved yet), so another process need not wait for it to run out.
pub async fn release(db: &Database, id: Uuid, owner: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE notif_notifications SET claimed_by = NULL, claimed_until = NULL \
         WHERE notification_id = ? AND claimed_by = ?",
    )
    .bind(id.to_string())
    .bind(owner)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The trace context of a status event: the current span's (the handling of
/// the record), else the triggering event's.
fn status_traceparent(n: &NewNotification) -> Option<String> {
    clairon_http::trace::current_traceparent().or_else(|| n.traceparent.clone())
}

/// Records a delivery outcome and its status event in one transaction.
#[allow(clippy::too_many_arguments)]
pub async fn record_outcome(
    db: &Database,
    outbox: &Outbox,
    n: &NewNotification,
    status: NotificationStatus,
    attempt: u32,
    recipient: Option<&str>,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let reason = reason.map(|r| fit(r, REASON_CHARS));
    let mut tx = db.pool.begin().await?;
    sqlx::query(
        "UPDATE notif_notifications SET status = ?, attempts = ?, last_error = ?, updated_at = ?, \
         recipient = COALESCE(?, recipient), delivered_at = COALESCE(?, delivered_at), \
         claimed_by = NULL, claimed_until = NULL WHERE notification_id = ?",
    )
    .bind(status.as_str())
    .bind(i64::from(attempt))
    .bind(reason)
    .bind(now_ms())
    .bind(recipient.map(|r| fit(r, RECIPIENT_CHARS)))
    // EMAIL and SMS are delivered when the provider accepts them; PUSH when a
    // socket of the user takes it (recorded by the web service).
    .bind((status == NotificationStatus::Sent && n.kind != NotificationType::Push).then(now_ms))
    .bind(n.notification_id.to_string())
    .execute(&mut *tx)
    .await?;
    history(&mut tx, n.notification_id, status, attempt, reason).await?;
    let ev = NotificationStatusChanged {
        notification_id: n.notification_id,
        user_id: n.user_id,
        kind: n.kind,
        status,
        attempt,
        reason: reason.map(str::to_owned),
        triggered_at: Some(n.created_at),
        timestamp: Timestamp::now(),
    };
    let tp = status_traceparent(n);
    outbox
        .enqueue(&mut tx, &Envelope::new(&ev, tp.as_deref()))
        .await?;
    tx.commit().await?;
    outbox.committed();
    metrics::counter!("clairon_notifications_total", "type" => n.kind.as_str(), "status" => status.as_str())
        .increment(1);
    Ok(())
}

pub struct DeadLetter<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub key: &'a str,
    pub headers: String,
    pub payload: String,
    pub reason: &'a str,
    pub attempts: u32,
}

/// Keeps a dead-lettered record for the admin API and, when it is a known
/// notification, marks it DEAD with its status event.
pub async fn dead_letter(
    db: &Database,
    outbox: &Outbox,
    dl: DeadLetter<'_>,
    notification: Option<&NewNotification>,
) -> anyhow::Result<()> {
    let reason = fit(dl.reason, REASON_CHARS);
    let mut tx = db.pool.begin().await?;
    sqlx::query(
        "INSERT INTO notif_dead_letters (id, topic, record_partition, record_offset, msg_key, headers, payload, reason, attempts, notification_id, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(fit(dl.topic, TOPIC_CHARS))
    .bind(i64::from(dl.partition))
    .bind(dl.offset as i64)
    .bind(dl.key)
    .bind(&dl.headers)
    .bind(&dl.payload)
    .bind(reason)
    .bind(i64::from(dl.attempts))
    .bind(notification.map(|n| n.notification_id.to_string()))
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    if let Some(n) = notification {
        // A notification another replica sent meanwhile (this copy only met its
        // claim) stays SENT, and its claim, if any, stays with its holder.
        let known = sqlx::query("UPDATE notif_notifications SET status = 'DEAD', last_error = ?, attempts = ?, updated_at = ? WHERE notification_id = ? AND status NOT IN ('SENT', 'CAPTURED')")
            .bind(reason)
            .bind(i64::from(dl.attempts))
            .bind(now_ms())
            .bind(n.notification_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        let delivered = !known
            && sqlx::query("SELECT 1 FROM notif_notifications WHERE notification_id = ?")
                .bind(n.notification_id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        if known {
            history(
                &mut tx,
                n.notification_id,
                NotificationStatus::Dead,
                dl.attempts,
                Some(reason),
            )
            .await?;
        }
        // Announced unless delivered: a notification never stored (rejected
        // before that) is dead all the same.
        if delivered {
            tx.commit().await?;
            return Ok(());
        }
        let ev = NotificationStatusChanged {
            notification_id: n.notification_id,
            user_id: n.user_id,
            kind: n.kind,
            status: NotificationStatus::Dead,
            attempt: dl.attempts,
            reason: Some(reason.to_owned()),
            triggered_at: Some(n.created_at),
            timestamp: Timestamp::now(),
        };
        let tp = status_traceparent(n);
        outbox
            .enqueue(&mut tx, &Envelope::new(&ev, tp.as_deref()))
            .await?;
        metrics::counter!("clairon_notifications_total", "type" => n.kind.as_str(), "status" => "DEAD").increment(1);
    }
    tx.commit().await?;
    outbox.committed();
    Ok(())
}

pub async fn get(db: &Database, id: &str) -> anyhow::Result<Option<NotificationView>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM notif_notifications WHERE notification_id = ?"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(view).transpose()?)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub status: String,
    pub attempt: i64,
    pub reason: Option<String>,
    pub at: String,
}

pub async fn history_of(db: &Database, id: &str) -> anyhow::Result<Vec<HistoryEntry>> {
    let rows = sqlx::query("SELECT status, attempt, reason, at FROM notif_history WHERE notification_id = ? ORDER BY at, id")
        .bind(id)
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(HistoryEntry {
                status: text(r, 0)?,
                attempt: r.try_get(1)?,
                reason: opt_text(r, 2)?,
                at: ts(r.try_get(3)?),
            })
        })
        .collect()
}

#[derive(Default)]
pub struct ListFilter {
    pub user_id: Option<String>,
    pub status: Option<NotificationStatus>,
    pub kind: Option<NotificationType>,
    /// (created_at, notification_id) of the last item of the previous page.
    pub after: Option<(i64, String)>,
}

/// Newest first, keyset-paged on (created_at, notification_id).
pub async fn list(
    db: &Database,
    f: &ListFilter,
    limit: i64,
) -> anyhow::Result<Vec<NotificationView>> {
    let mut sql = format!("SELECT {COLUMNS} FROM notif_notifications WHERE 1 = 1");
    if f.user_id.is_some() {
        sql.push_str(" AND user_id = ?");
    }
    if f.status.is_some() {
        sql.push_str(" AND status = ?");
    }
    if f.kind.is_some() {
        sql.push_str(" AND kind = ?");
    }
    if f.after.is_some() {
        sql.push_str(" AND (created_at < ? OR (created_at = ? AND notification_id < ?))");
    }
    sql.push_str(" ORDER BY created_at DESC, notification_id DESC LIMIT ?");
    let mut q = sqlx::query(&sql);
    if let Some(u) = &f.user_id {
        q = q.bind(u);
    }
    if let Some(s) = f.status {
        q = q.bind(s.as_str());
    }
    if let Some(k) = f.kind {
        q = q.bind(k.as_str());
    }
    if let Some((t, id)) = &f.after {
        q = q.bind(*t).bind(*t).bind(id);
    }
    let rows = q.bind(limit).fetch_all(&db.pool).await?;
    Ok(rows.iter().map(view).collect::<sqlx::Result<_>>()?)
}

pub async fn mark_read(db: &Database, id: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE notif_notifications SET read_at = ?, updated_at = ? WHERE notification_id = ? AND read_at IS NULL")
        .bind(now_ms())
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn pending_pushes(
    db: &Database,
    user: Uuid,
    limit: i64,
) -> anyhow::Result<Vec<PushRequested>> {
    let rows = sqlx::query(
        "SELECT notification_id, title, message, created_at FROM notif_notifications \
         WHERE user_id = ? AND kind = 'PUSH' AND status = 'SENT' AND delivered_at IS NULL \
         ORDER BY created_at, notification_id LIMIT ?",
    )
    .bind(user.to_string())
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PushRequested {
                notification_id: Uuid::parse_str(&text(r, 0)?)?,
                user_id: user,
                title: text(r, 1)?,
                message: text(r, 2)?,
                created_at: Timestamp::from_millis(r.try_get(3)?),
            })
        })
        .collect()
}

pub async fn mark_delivered(db: &Database, ids: &[Uuid]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let marks = vec!["?"; ids.len()].join(", ");
    let sql = format!(
        "UPDATE notif_notifications SET delivered_at = ? WHERE delivered_at IS NULL AND notification_id IN ({marks})"
    );
    let mut q = sqlx::query(&sql).bind(now_ms());
    for id in ids {
        q = q.bind(id.to_string());
    }
    q.execute(&db.pool).await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    pub id: String,
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    pub key: String,
    pub notification_id: Option<String>,
    pub reason: String,
    pub attempts: i64,
    /// The original payload, as JSON when it parses, else as text.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    #[schema(value_type = Object)]
    pub headers: serde_json::Value,
    pub created_at: String,
    pub replayed_at: Option<String>,
    #[serde(skip)]
    pub created_ms: i64,
}

const DL_COLUMNS: &str = "id, topic, record_partition, record_offset, msg_key, headers, payload, reason, attempts, notification_id, created_at, replayed_at";

fn dl_view(r: &AnyRow) -> anyhow::Result<DeadLetterView> {
    let payload = text(r, "payload")?;
    let headers = text(r, "headers")?;
    let created: i64 = r.try_get("created_at")?;
    let headers: Vec<(String, String)> = serde_json::from_str(&headers).unwrap_or_default();
    Ok(DeadLetterView {
        id: text(r, "id")?,
        topic: text(r, "topic")?,
        partition: r.try_get("record_partition")?,
        offset: r.try_get("record_offset")?,
        key: text(r, "msg_key")?,
        notification_id: opt_text(r, "notification_id")?,
        reason: text(r, "reason")?,
        attempts: r.try_get("attempts")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        headers: serde_json::Value::Object(
            headers
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        ),
        created_at: ts(created),
        replayed_at: r.try_get::<Option<i64>, _>("replayed_at")?.map(ts),
        created_ms: created,
    })
}

pub async fn dead_letters(
    db: &Database,
    after: Option<(i64, String)>,
    limit: i64,
) -> anyhow::Result<Vec<DeadLetterView>> {
    let rows = match &after {
        None => {
            sqlx::query(&format!("SELECT {DL_COLUMNS} FROM notif_dead_letters ORDER BY created_at DESC, id DESC LIMIT ?"))
                .bind(limit)
                .fetch_all(&db.pool)
                .await?
        }
        Some((t, id)) => {
            sqlx::query(&format!(
                "SELECT {DL_COLUMNS} FROM notif_dead_letters WHERE created_at < ? OR (created_at = ? AND id < ?) \
                 ORDER BY created_at DESC, id DESC LIMIT ?"
            ))
            .bind(*t)
            .bind(*t)
            .bind(id)
            .bind(limit)
            .fetch_all(&db.pool)
            .await?
        }
    };
    rows.iter().map(dl_view).collect()
}

pub struct StoredDeadLetter {
    pub topic: String,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub payload: String,
    pub notification_id: Option<String>,
    pub replayed: bool,
}

pub async fn dead_letter_by_id(
    db: &Database,
    id: &str,
) -> anyhow::Result<Option<StoredDeadLetter>> {
    let row = sqlx::query("SELECT topic, msg_key, headers, payload, notification_id, replayed_at FROM notif_dead_letters WHERE id = ?")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    let Some(r) = row else { return Ok(None) };
    let headers = text(&r, 2)?;
    Ok(Some(StoredDeadLetter {
        topic: text(&r, 0)?,
        key: text(&r, 1)?,
        headers: serde_json::from_str(&headers).unwrap_or_default(),
        payload: text(&r, 3)?,
        notification_id: opt_text(&r, 4)?,
        replayed: r.try_get::<Option<i64>, _>(5)?.is_some(),
    }))
}

/// Puts a dead letter back on its topic: the notification returns to PENDING
/// (so the redelivery is not skipped as already handled) and the record is
/// republished through the outbox, all in one transaction.
pub async fn replay(
    db: &Database,
    outbox: &Outbox,
    id: &str,
    dl: &StoredDeadLetter,
    env: &Envelope,
) -> anyhow::Result<bool> {
    let mut tx = db.pool.begin().await?;
    let claimed = sqlx::query(
        "UPDATE notif_dead_letters SET replayed_at = ? WHERE id = ? AND replayed_at IS NULL",
    )
    .bind(now_ms())
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if !claimed {
        tx.rollback().await?;
        return Ok(false);
    }
    if let Some(nid) = &dl.notification_id {
        // Only a notification that was not delivered goes back to PENDING; the
        // republished record of a delivered one is then skipped as done.
        let reopened = sqlx::query("UPDATE notif_notifications SET status = 'PENDING', updated_at = ? WHERE notification_id = ? AND status IN ('DEAD', 'FAILED')")
            .bind(now_ms())
            .bind(nid)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if let Some(uuid) = Uuid::parse_str(nid).ok().filter(|_| reopened) {
            history(
                &mut tx,
                uuid,
                NotificationStatus::Pending,
                0,
                Some("replayed from the dead-letter queue"),
            )
            .await?;
        }
    }
    outbox.enqueue(&mut tx, env).await?;
    tx.commit().await?;
    outbox.committed();
    Ok(true)
}
