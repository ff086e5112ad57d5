//! The revocation list behind logout, kept in `users_revoked_tokens` so it
//! survives restarts and is shared by every process on the same database.
//!
//! Every authenticated request of every service asks it, so answers come from
//! memory: the cache holds the revoked ids that have not expired and re-reads the
//! table at most once per [`SYNC_EVERY_MS`] to pick up revocations made by other
//! processes. A revocation made in this process is in the cache at once.
//!
//! Only a process that runs the users service reads it; the others learn of
//! logouts from the `token-revoked` topic ([`crate::BusRevocations`]).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use anyhow::Context;
use async_trait::async_trait;
use clairon_auth::Revocations;
use clairon_store::{is_unique_violation, migrate, now_ms, text, Database};
use sqlx::{AnyConnection, Row};

/// How stale the view of other processes' revocations may get.
pub(crate) const SYNC_EVERY_MS: i64 = 1_000;
const PRUNE_EVERY_MS: i64 = 10 * 60_000;
/// Rows outlive their token's `exp` by this much, because token validation
/// accepts a few seconds of clock skew past `exp`.
pub(crate) const GRACE_MS: i64 = 60_000;

pub struct SqlRevocations {
    db: Database,
    /// Revoked token id → when its token expires (epoch ms).
    cache: Mutex<HashMap<String, i64>>,
    /// When the cache last read the table (epoch ms).
    pub(crate) synced_at: AtomicI64,
    pruned_at: AtomicI64,
    /// One table read at a time; concurrent callers wait for it and reuse it.
    sync_lock: tokio::sync::Mutex<()>,
}

impl SqlRevocations {
    /// Applies the users migrations (idempotent) and loads the revoked ids.
    pub async fn open(db: Database) -> anyhow::Result<Arc<Self>> {
        migrate(&db, crate::SERVICE, &crate::migrations()).await?;
        let r = Arc::new(SqlRevocations {
            db,
            cache: Mutex::new(HashMap::new()),
            synced_at: AtomicI64::new(0),
            pruned_at: AtomicI64::new(0),
            sync_lock: tokio::sync::Mutex::new(()),
        });
        r.sync().await?;
        Ok(r)
    }

    fn cached(&self, jti: &str) -> bool {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(jti)
    }

    async fn sync_if_stale(&self) -> anyhow::Result<()> {
        if now_ms() - self.synced_at.load(Ordering::Acquire) < SYNC_EVERY_MS {
            return Ok(());
        }
        let _guard = self.sync_lock.lock().await;
        // Another caller may have read the table while this one waited.
        if now_ms() - self.synced_at.load(Ordering::Acquire) < SYNC_EVERY_MS {
            return Ok(());
        }
        self.sync().await
    }

    async fn sync(&self) -> anyhow::Result<()> {
        let now = now_ms();
        if now - self.pruned_at.load(Ordering::Acquire) >= PRUNE_EVERY_MS {
            // Pruning is housekeeping: a failure must not fail authentication.
            match self.prune(now).await {
                Ok(n) => {
                    self.pruned_at.store(now, Ordering::Release);
                    if n > 0 {
                        tracing::debug!(rows = n, "pruned expired token revocations");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "pruning token revocations failed")
                }
            }
        }
        let rows =
            sqlx::query("SELECT jti, expires_at FROM users_revoked_tokens WHERE expires_at > ?")
                .bind(now - GRACE_MS)
                .fetch_all(&self.db.pool)
                .await
                .context("reading revoked tokens")?;
        let mut fresh = Vec::with_capacity(rows.len());
        for row in &rows {
            fresh.push((text(row, 0)?, row.try_get::<i64, _>(1)?));
        }
        {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            // Merge rather than replace: a revocation cached while the query ran
            // may not be in its result.
            cache.retain(|_, exp| *exp > now - GRACE_MS);
            cache.extend(fresh);
        }
        // `now` was taken before the query, so anything committed after it
        // started is read again next time.
        self.synced_at.store(now, Ordering::Release);
        Ok(())
    }

    /// Deletes rows whose tokens can no longer be used anyway.
    pub(crate) async fn prune(&self, now: i64) -> anyhow::Result<u64> {
        let done = sqlx::query("DELETE FROM users_revoked_tokens WHERE expires_at <= ?")
            .bind(now - GRACE_MS)
            .execute(&self.db.pool)
            .await
            .context("deleting expired token revocations")?;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, exp| *exp > now - GRACE_MS);
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl Revocations for SqlRevocations {
    async fn is_revoked(&self, jti: &str) -> anyhow::Result<bool> {
        if self.cached(jti) {
            return Ok(true);
        }
        self.sync_if_stale().await?;
        Ok(self.cached(jti))
    }

    /// `expires_at` is the token's `exp` claim, in epoch seconds. Idempotent:
    /// logout writes the row in its own transaction, then calls this so the
    /// revocation counts at once in this process.
    async fn revoke(&self, jti: &str, expires_at: i64) -> anyhow::Result<()> {
        let expires_ms = expires_at.saturating_mul(1000);
        let mut conn = self.db.pool.acquire().await?;
        insert(&mut conn, jti, expires_ms)
            .await
            .context("recording a token revocation")?;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(jti.to_owned(), expires_ms);
        Ok(())
    }
}

/// Writes a revocation row; `false` when the token was revoked already (a
/// repeated or concurrent logout).
pub(crate) async fn insert(
    conn: &mut AnyConnection,
    jti: &str,
    expires_ms: i64,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query("INSERT INTO users_revoked_tokens (jti, expires_at) VALUES (?, ?)")
        .bind(jti)
        .bind(expires_ms)
        .execute(conn)
        .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e),
    }
}
