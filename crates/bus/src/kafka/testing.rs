//! Test support: a corner of a real Kafka cluster per test.
//!
//! The broker is named by `CLAIRON_TEST_KAFKA_BROKERS` (`eval "$(scripts/infra.sh up)"`
//! exports it). Each [`TestTopics`] is a topic and consumer-group prefix,
//! `ctest-<unix seconds>-<random>-`, whose topics and groups are deleted when
//! it is dropped; a failed test keeps them to look at (the prefix is printed),
//! and a later run deletes them once they are an hour old. A broker's state
//! outlives test runs, and thousands of forgotten partitions are enough to
//! exhaust its heap.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    ClientConfig,
};

/// The variable naming the brokers the tests use.
pub const BROKERS_VAR: &str = "CLAIRON_TEST_KAFKA_BROKERS";
/// Every test prefix starts with this.
pub const PREFIX_TAG: &str = "ctest-";
/// Test topics and groups older than this are deleted by the next run.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// The test brokers; panics with the way to start them when unset, so a test
/// never passes without its broker.
pub fn brokers() -> String {
    match std::env::var(BROKERS_VAR) {
        Ok(b) if !b.trim().is_empty() => b.trim().to_owned(),
        _ => panic!(
            "{BROKERS_VAR} is not set: this test needs a real Kafka broker. Start one from \
             the repository root with `eval \"$(scripts/infra.sh up)\"` (it exports \
             {BROKERS_VAR}) and run the tests again."
        ),
    }
}

/// A test's topic and group prefix; dropping it deletes what it named.
pub struct TestTopics {
    pub brokers: String,
    /// Give it to `KafkaSettings::topic_prefix` (or `CLAIRON_KAFKA_TOPIC_PREFIX`).
    pub prefix: String,
}

impl TestTopics {
    pub fn new() -> Self {
        let brokers = brokers();
        sweep_stale(&brokers);
        let random = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("{PREFIX_TAG}{}-{}-", unix_secs(), &random[..12]);
        eprintln!("Kafka topic prefix {prefix}");
        TestTopics { brokers, prefix }
    }
}

impl Default for TestTopics {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestTopics {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "left Kafka topics and groups with prefix {} in place",
                self.prefix
            );
            return;
        }
        delete_prefix(&self.brokers, &self.prefix);
    }
}

/// Best effort: deletes the topics and consumer groups whose wire name starts
/// with `prefix` (a throwaway environment's, such as a benchmark run's).
pub fn delete_prefix(brokers: &str, prefix: &str) {
    let prefix = prefix.to_owned();
    delete_where(brokers, move |name| name.starts_with(&prefix));
}

/// Deletes, once per process, test topics and groups older than [`STALE_AFTER`].
fn sweep_stale(brokers: &str) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let cutoff = unix_secs().saturating_sub(STALE_AFTER.as_secs());
    delete_where(brokers, move |name| {
        name.strip_prefix(PREFIX_TAG)
            .and_then(|rest| rest.split('-').next())
            .and_then(|secs| secs.parse::<u64>().ok())
            .is_some_and(|created| created < cutoff)
    });
}

/// Best effort: deletes the topics and consumer groups whose wire name `doomed`
/// picks. Runs on a thread of its own, as it blocks and may be called from a
/// test's runtime.
fn delete_where(brokers: &str, doomed: impl Fn(&str) -> bool + Send + 'static) {
    let brokers = brokers.to_owned();
    let worker = std::thread::spawn(move || {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &brokers);
        let (Ok(admin), Ok(reader)) = (
            cfg.create::<AdminClient<DefaultClientContext>>(),
            cfg.create::<BaseConsumer>(),
        ) else {
            return;
        };
        let t = Duration::from_secs(10);
        let opts = AdminOptions::new()
            .request_timeout(Some(t))
            .operation_timeout(Some(t));
        if let Ok(md) = reader.fetch_metadata(None, t) {
            let names: BTreeSet<&str> = md
                .topics()
                .iter()
                .map(|t| t.name())
                .filter(|n| doomed(n))
                .collect();
            let names: Vec<&str> = names.into_iter().collect();
            for chunk in names.chunks(200) {
                let _ = futures::executor::block_on(admin.delete_topics(chunk, &opts));
            }
        }
        if let Ok(groups) = reader.fetch_group_list(None, t) {
            let names: Vec<&str> = groups
                .groups()
                .iter()
                .map(|g| g.name())
                .filter(|n| doomed(n))
                .collect();
            for chunk in names.chunks(200) {
                let _ = futures::executor::block_on(admin.delete_groups(chunk, &opts));
            }
        }
    });
    let _ = worker.join();
}

fn unix_secs() -> u64 {
    (crate::consumer::now_ms() / 1000).max(0) as u64
}
