use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use clairon_events::headers;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::consumer::{self, ConsumerSpec, HandleError, Handler, RetryPolicy};

fn msg(topic: &str, key: &str, body: &str) -> Message {
    Message {
        topic: topic.into(),
        key: key.into(),
        headers: vec![(headers::EVENT_ID.into(), format!("{key}-{body}"))],
        payload: body.as_bytes().to_vec(),
    }
}

async fn drain(sub: &mut Box<dyn Subscription>) -> Vec<Record> {
    let mut all = Vec::new();
    loop {
        let got = sub.poll(100, Duration::from_millis(50)).await.unwrap();
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

/// A fresh log with `partitions` per topic, in a folder kept as long as the guard.
async fn fresh_bus(partitions: u32) -> (tempfile::TempDir, Arc<dyn EventBus>) {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus.db"), partitions)
        .await
        .unwrap();
    (dir, Arc::new(bus))
}

/// The shared consumer runner for `group` over `topics`, until the token fires.
fn run_consumer(
    bus: &Arc<dyn EventBus>,
    group: &str,
    topics: &[&str],
    policy: RetryPolicy,
    handler: Arc<dyn Handler>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        bus.clone(),
        ConsumerSpec::new(group, topics, policy),
        handler,
        cancel.clone(),
    ));
    (cancel, task)
}

#[tokio::test]
async fn keeps_per_key_order_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    {
        let bus = EmbeddedBus::open(&path, 4).await.unwrap();
        for i in 0..20 {
            bus.publish(msg("t", &format!("k{}", i % 3), &i.to_string()))
                .await
                .unwrap();
        }
    }
    let bus = EmbeddedBus::open(&path, 4).await.unwrap();
    let mut sub = bus.subscribe("g", &["t".into()]).await.unwrap();
    let recs = drain(&mut sub).await;
    assert_eq!(recs.len(), 20);
    for k in 0..3 {
        let seen: Vec<u32> = recs
            .iter()
            .filter(|r| r.key == format!("k{k}"))
            .map(|r| std::str::from_utf8(&r.payload).unwrap().parse().unwrap())
            .collect();
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "key k{k} out of order");
        assert!(recs
            .iter()
            .filter(|r| r.key == format!("k{k}"))
            .all(|r| r.partition
                == recs
                    .iter()
                    .find(|x| x.key == format!("k{k}"))
                    .unwrap()
                    .partition));
    }
}

#[tokio::test]
async fn committed_offsets_resume_and_seek_replays() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus.db"), 1)
        .await
        .unwrap();
    for i in 0..5 {
        bus.publish(msg("t", "k", &i.to_string())).await.unwrap();
    }
    let mut sub = bus.subscribe("g", &["t".into()]).await.unwrap();
    let recs = drain(&mut sub).await;
    assert_eq!(recs.len(), 5);
    sub.commit("t", 0, 3).await.unwrap();
    drop(sub);

    let mut sub = bus.subscribe("g", &["t".into()]).await.unwrap();
    let again = drain(&mut sub).await;
    assert_eq!(
        again.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![3, 4]
    );

    sub.seek("t", 0, 1).await.unwrap();
    let replay = drain(&mut sub).await;
    assert_eq!(
        replay.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    // Another group starts from the earliest record.
    let mut other = bus.subscribe("h", &["t".into()]).await.unwrap();
    assert_eq!(drain(&mut other).await.len(), 5);
}

/// Fails every record whose payload starts with "bad", rejects "poison", records the rest.
struct Flaky {
    handled: Mutex<Vec<String>>,
    attempts: AtomicU32,
    dead: Mutex<Vec<(String, String)>>,
}

#[async_trait::async_trait]
impl Handler for Flaky {
    async fn handle(&self, r: &Record) -> Result<(), HandleError> {
        let body = String::from_utf8_lossy(&r.payload).to_string();
        if body.starts_with("bad") {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            return Err(HandleError::Retry(format!("provider down for {body}")));
        }
        if body == "poison" {
            return Err(HandleError::Reject("unparseable payload".into()));
        }
        self.handled.lock().unwrap().push(body);
        Ok(())
    }

    async fn dead_lettered(&self, r: &Record, reason: &str) -> anyhow::Result<()> {
        self.dead.lock().unwrap().push((
            String::from_utf8_lossy(&r.payload).to_string(),
            reason.to_owned(),
        ));
        Ok(())
    }
}

#[tokio::test]
async fn retries_with_backoff_then_dead_letters_without_blocking_other_keys() {
    let (_dir, bus) = fresh_bus(2).await;
    let handler = Arc::new(Flaky {
        handled: Mutex::new(Vec::new()),
        attempts: AtomicU32::new(0),
        dead: Mutex::new(Vec::new()),
    });
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
    };
    let (cancel, task) = run_consumer(&bus, "g", &["t"], policy, handler.clone());
    let started = std::time::Instant::now();
    bus.publish(msg("t", "same-key", "bad-1")).await.unwrap();
    bus.publish(msg("t", "same-key", "good-after-bad"))
        .await
        .unwrap();
    bus.publish(msg("t", "other", "poison")).await.unwrap();
    bus.publish(msg("t", "other", "good-after-poison"))
        .await
        .unwrap();

    // Good records flow at once, even behind a failing record of the same key.
    for _ in 0..50 {
        if handler.handled.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handler.handled.lock().unwrap().len(), 2);
    assert!(started.elapsed() < Duration::from_millis(600));

    for _ in 0..100 {
        if handler.dead.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = handler.dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead
        .iter()
        .any(|(b, why)| b == "poison" && why.contains("unparseable")));
    assert!(dead
        .iter()
        .any(|(b, why)| b == "bad-1" && why.contains("provider down")));
    assert_eq!(handler.attempts.load(Ordering::SeqCst), 3);
    // Two backoffs: 200 ms then 400 ms.
    assert!(started.elapsed() >= Duration::from_millis(600));

    let mut dlt = bus.subscribe("inspect", &["t-dlt".into()]).await.unwrap();
    let recs = drain(&mut dlt).await;
    assert_eq!(recs.len(), 2);
    let bad = recs.iter().find(|r| r.payload == b"bad-1").unwrap();
    assert_eq!(bad.header(headers::ATTEMPT), Some("3"));
    assert_eq!(bad.header(headers::ORIGINAL_TOPIC), Some("t"));
    assert!(bad
        .header(headers::ERROR)
        .unwrap()
        .contains("provider down"));
    assert_eq!(bad.header(headers::EVENT_ID), Some("same-key-bad-1"));

    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// Fails a record's first `fail_first` attempts, then keeps it; rejects "poison".
struct DeadLetterReader {
    fail_first: u32,
    attempts: AtomicU32,
    kept: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Handler for DeadLetterReader {
    async fn handle(&self, r: &Record) -> Result<(), HandleError> {
        let body = String::from_utf8_lossy(&r.payload).to_string();
        if body == "poison" {
            return Err(HandleError::Reject("not storable".into()));
        }
        if self.attempts.fetch_add(1, Ordering::SeqCst) < self.fail_first {
            return Err(HandleError::Retry("database down".into()));
        }
        self.kept.lock().unwrap().push(body);
        Ok(())
    }
}

#[tokio::test]
async fn a_dead_letter_topic_is_retried_in_place_and_never_forwarded() {
    let (_dir, bus) = fresh_bus(1).await;
    let handler = Arc::new(DeadLetterReader {
        fail_first: 2,
        attempts: AtomicU32::new(0),
        kept: Mutex::new(Vec::new()),
    });
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
    };
    let (cancel, task) = run_consumer(&bus, "audit", &["t-dlt"], policy, handler.clone());
    let mut dead = msg("t-dlt", "k", "first");
    dead.headers
        .push((headers::ORIGINAL_TOPIC.into(), "t".into()));
    bus.publish(dead).await.unwrap();
    bus.publish(msg("t-dlt", "k", "poison")).await.unwrap();
    bus.publish(msg("t-dlt", "k", "second")).await.unwrap();

    for _ in 0..200 {
        if handler.kept.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Two failures waited out in place, the rejected one skipped, order kept.
    assert_eq!(*handler.kept.lock().unwrap(), ["first", "second"]);
    assert_eq!(handler.attempts.load(Ordering::SeqCst), 4);
    cancel.cancel();
    task.await.unwrap().unwrap();

    // Nothing was forwarded: no retry topic of either name, no dead letter of
    // the dead-letter topic, nothing back on the original's dead-letter topic.
    let overview = bus.describe().await.unwrap();
    assert_eq!(overview.topics_with_records(), ["t-dlt"], "{overview:?}");
    assert_eq!(
        overview
            .topics
            .iter()
            .find(|t| t.name == "t-dlt")
            .unwrap()
            .end_offsets,
        [3]
    );
}

/// Defers a record `defer_first` times, noting the attempt count it carries.
struct Deferring {
    defer_first: u32,
    calls: AtomicU32,
    attempts_seen: Mutex<Vec<u32>>,
    dead: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Handler for Deferring {
    async fn handle(&self, r: &Record) -> Result<(), HandleError> {
        self.attempts_seen.lock().unwrap().push(r.attempt());
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.defer_first {
            return Err(HandleError::Defer("someone else is on it".into()));
        }
        Ok(())
    }

    async fn dead_lettered(&self, r: &Record, _reason: &str) -> anyhow::Result<()> {
        self.dead
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&r.payload).to_string());
        Ok(())
    }
}

#[tokio::test]
async fn a_deferred_record_comes_back_without_using_up_attempts() {
    let (_dir, bus) = fresh_bus(1).await;
    let handler = Arc::new(Deferring {
        defer_first: 5,
        calls: AtomicU32::new(0),
        attempts_seen: Mutex::new(Vec::new()),
        dead: Mutex::new(Vec::new()),
    });
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(40),
    };
    let (cancel, task) = run_consumer(&bus, "g", &["t"], policy, handler.clone());
    bus.publish(msg("t", "k", "busy")).await.unwrap();
    for _ in 0..200 {
        if handler.calls.load(Ordering::SeqCst) > 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    task.await.unwrap().unwrap();

    // Deferred more times than there are attempts, handled in the end, never
    // dead-lettered, and every delivery still counts as the first attempt.
    assert_eq!(handler.calls.load(Ordering::SeqCst), 6);
    assert!(handler.dead.lock().unwrap().is_empty());
    assert_eq!(*handler.attempts_seen.lock().unwrap(), [1; 6]);
    // Each deferral went to the last retry level (its delay is that level's).
    let overview = bus.describe().await.unwrap();
    let last_level = overview
        .topics
        .iter()
        .find(|t| t.name == "t-retry-g-2")
        .expect("the last retry level");
    assert_eq!(last_level.end_offsets, [5]);
}

#[test]
fn backoff_doubles_and_caps() {
    let p = RetryPolicy {
        max_attempts: 10,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(5),
    };
    assert_eq!(p.backoff(1), Duration::from_secs(1));
    assert_eq!(p.backoff(2), Duration::from_secs(2));
    assert_eq!(p.backoff(3), Duration::from_secs(4));
    assert_eq!(p.backoff(4), Duration::from_secs(5));
}

#[tokio::test]
async fn latest_groups_skip_history_and_describe_reports_lag() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus.db"), 1)
        .await
        .unwrap();
    for i in 0..3 {
        bus.publish(msg("t", "k", &i.to_string())).await.unwrap();
    }
    let mut late = bus
        .subscribe_from("late", &["t".into()], StartFrom::Latest)
        .await
        .unwrap();
    assert!(drain(&mut late).await.is_empty());
    bus.publish(msg("t", "k", "3")).await.unwrap();
    let got = drain(&mut late).await;
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![3]);

    let overview = bus.describe().await.unwrap();
    assert_eq!(overview.topics[0].end_offsets, vec![4]);
    let lag = overview.groups.iter().find(|g| g.group == "late").unwrap();
    // Offset 3 was read but not committed.
    assert_eq!((lag.committed, lag.lag), (3, 1));
}
