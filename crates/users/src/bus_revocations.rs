//! The revocation list of a process that does not run the users service: it
//! must not touch `users_` tables, so it learns of logouts from the
//! `token-revoked` topic the users service publishes through its outbox.
//!
//! At start it replays the whole topic (the topic's retention outlives every
//! token, so that is every revocation still in force) and returns only once it
//! has caught up; then a background task keeps reading. It never commits an
//! offset: its consumer group is unique to the process start, so every start
//! replays the topic again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use clairon_auth::Revocations;
use clairon_bus::{EventBus, Record, StartFrom, Subscription};
use clairon_events::{decode, topics, TokenRevoked};
use clairon_store::now_ms;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::revocations::GRACE_MS;

const BATCH: usize = 500;
/// How long one background poll waits: bounds how late a revocation arrives
/// (beside the outbox relay's own delay) and how late cancellation is seen.
const POLL_WAIT: Duration = Duration::from_millis(250);
const PRUNE_EVERY_MS: i64 = 60_000;

pub struct BusRevocations {
    /// Revoked token id → when its token expires (epoch ms).
    revoked: Mutex<HashMap<String, i64>>,
}

impl BusRevocations {
    /// Joins `group` (which must be unique to this process start), reads
    /// `token-revoked` from its earliest record up to the end it had when
    /// called, within `catch_up`, then keeps reading on `tasks` until `cancel`.
    /// Fails when the bus cannot be read in time: serving without the list
    /// would accept tokens that were logged out.
    pub async fn start(
        bus: Arc<dyn EventBus>,
        group: &str,
        catch_up: Duration,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> anyhow::Result<Arc<Self>> {
        let this = Arc::new(BusRevocations {
            revoked: Mutex::new(HashMap::new()),
        });
        // The last error met while retrying, to say why the wait ran out.
        let last_error = Mutex::new(None);
        let sub = tokio::time::timeout(catch_up, this.catch_up(bus, group, &last_error))
            .await
            .map_err(|_| {
                let why = last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .unwrap_or_else(|| "is the event bus reachable?".into());
                anyhow::anyhow!(
                    "could not read the token revocations (topic `{}`) within {} s: {why}",
                    topics::TOKEN_REVOKED,
                    catch_up.as_secs()
                )
            })??;
        let me = this.clone();
        tasks.spawn(async move { me.follow(sub, cancel).await });
        Ok(this)
    }

    async fn catch_up(
        &self,
        bus: Arc<dyn EventBus>,
        group: &str,
        last_error: &Mutex<Option<String>>,
    ) -> anyhow::Result<Box<dyn Subscription>> {
        let failed = |e: clairon_bus::BusError| {
            tracing::debug!(error = %e, "reading the token revocations; retrying");
            *last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
        };
        let topic = topics::TOKEN_REVOKED.to_owned();
        let mut sub = bus
            .subscribe_from(group, std::slice::from_ref(&topic), StartFrom::Earliest)
            .await
            .context("subscribing to the token revocations")?;
        // Read after subscribing: subscribing creates the topic when missing.
        // A topic created a moment ago may have no partition leader yet, so
        // errors are retried; the caller's time limit bounds the wait.
        let marks = loop {
            match bus.watermarks(&topic).await {
                Ok(marks) => break marks,
                Err(e) => {
                    failed(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        // Partitions still to read up to (exclusive) their end offset.
        let mut behind: HashMap<u32, u64> = marks
            .iter()
            .enumerate()
            .filter(|(_, (first, end))| first < end)
            .map(|(p, (_, end))| (p as u32, *end))
            .collect();
        while !behind.is_empty() {
            let records = match sub.poll(BATCH, POLL_WAIT).await {
                Ok(records) => records,
                Err(e) => {
                    failed(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            for r in &records {
                if behind
                    .get(&r.partition)
                    .is_some_and(|end| r.offset + 1 >= *end)
                {
                    behind.remove(&r.partition);
                }
            }
            self.apply(&records);
        }
        self.prune(now_ms());
        tracing::debug!(
            revoked = self.tracked(),
            "token revocations read from the bus"
        );
        Ok(sub)
    }

    async fn follow(&self, mut sub: Box<dyn Subscription>, cancel: CancellationToken) {
        let mut pruned_at = now_ms();
        loop {
            let polled = tokio::select! {
                _ = cancel.cancelled() => return,
                polled = sub.poll(BATCH, POLL_WAIT) => polled,
            };
            match polled {
                Ok(records) => self.apply(&records),
                Err(e) => {
                    // The engine reconnects on its own; try again shortly.
                    tracing::warn!(error = %e, "reading token revocations failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            let now = now_ms();
            if now - pruned_at >= PRUNE_EVERY_MS {
                self.prune(now);
                pruned_at = now;
            }
        }
    }

    fn apply(&self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        let keep_after = now_ms() - GRACE_MS;
        let mut revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        for r in records {
            match decode::<TokenRevoked>(&r.payload) {
                Ok(ev) if ev.expires_at.millis() > keep_after => {
                    revoked.insert(ev.token_id, ev.expires_at.millis());
                }
                // Its token is refused as expired anyway.
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    partition = r.partition,
                    offset = r.offset,
                    error = %e,
                    "skipping an unreadable token revocation"
                ),
            }
        }
    }

    /// Forgets revocations whose tokens can no longer be used anyway (token
    /// validation accepts a little clock skew past `exp`, hence the grace).
    pub(crate) fn prune(&self, now: i64) {
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, exp| *exp > now - GRACE_MS);
    }

    /// How many revocations are held.
    pub fn tracked(&self) -> usize {
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[async_trait]
impl Revocations for BusRevocations {
    async fn is_revoked(&self, jti: &str) -> anyhow::Result<bool> {
        Ok(self
            .revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(jti))
    }

    /// Only remembers it in this process: the users service is the one that
    /// records and publishes revocations, and it uses [`crate::SqlRevocations`].
    async fn revoke(&self, jti: &str, expires_at: i64) -> anyhow::Result<()> {
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(jti.to_owned(), expires_at.saturating_mul(1000));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
