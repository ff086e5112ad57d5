//! The Kafka engine against a real broker.
//!
//! Needs `CLAIRON_TEST_KAFKA_BROKERS` (host:port); `eval "$(scripts/infra.sh up)"`
//! starts a local single-node broker and exports it. Without it every test
//! fails and says so: these tests are never skipped. Each test works under
//! its own topic (and group) prefix, so tests never see each other's records,
//! and deletes its topics and groups when it passes (a failed test leaves them
//! to look at; the prefix is printed).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use clairon_bus::{
    consumer::{self, ConsumerSpec, HandleError, Handler, RetryPolicy},
    kafka::{
        testing::{self, TestTopics},
        KafkaBus, KafkaSettings,
    },
    BusError, EventBus, Message, Record, StartFrom, Subscription,
};
use clairon_events::{headers, topics};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

/// A test's own corner of the cluster; its topics and groups go with it.
struct Env {
    topics: TestTopics,
}

impl Env {
    fn new() -> Self {
        // RUST_LOG=clairon_bus=debug,librdkafka=debug shows what the engine does.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        Env {
            topics: TestTopics::new(),
        }
    }

    fn settings(&self, partitions: i32) -> KafkaSettings {
        KafkaSettings {
            topic_prefix: self.topics.prefix.clone(),
            client_id: "clairon-test".into(),
            partitions,
            ..KafkaSettings::new(self.topics.brokers.clone())
        }
    }

    fn bus(&self, partitions: i32) -> KafkaBus {
        KafkaBus::connect(self.settings(partitions)).expect("connect")
    }
}

async fn bounded<F: Future>(secs: u64, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

fn msg(topic: &str, key: &str, body: &str) -> Message {
    Message {
        topic: topic.into(),
        key: key.into(),
        headers: vec![
            (headers::EVENT_ID.into(), format!("{key}-{body}")),
            (headers::ATTEMPT.into(), "1".into()),
            ("x-note".into(), "héllo, wörld".into()),
        ],
        payload: body.as_bytes().to_vec(),
    }
}

fn body(r: &Record) -> String {
    String::from_utf8_lossy(&r.payload).into_owned()
}

/// Polls until `n` records arrived (or `within` passed), then waits a little
/// longer to catch extra ones.
async fn read(sub: &mut Box<dyn Subscription>, n: usize, within: Duration) -> Vec<Record> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    while all.len() < n && Instant::now() < deadline {
        all.extend(
            sub.poll(100, Duration::from_millis(250))
                .await
                .expect("poll"),
        );
    }
    all.extend(
        sub.poll(100, Duration::from_millis(300))
            .await
            .expect("poll"),
    );
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_keeps_per_key_order_and_metadata() {
    let env = Env::new();
    bounded(90, async {
        let bus = env.bus(3);
        let started = consumer::now_ms();
        let mut latencies = Vec::new();
        let mut positions: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
        for i in 0..60 {
            let key = format!("k{}", i % 5);
            let t = Instant::now();
            let pos = bus
                .publish(msg("orders", &key, &i.to_string()))
                .await
                .expect("publish");
            latencies.push(t.elapsed());
            positions.entry(key).or_default().push((pos.partition, pos.offset));
        }
        // One key, one partition, growing offsets.
        for (key, ps) in &positions {
            assert!(ps.iter().all(|(p, _)| *p == ps[0].0), "{key} changed partition");
            assert!(ps.windows(2).all(|w| w[0].1 < w[1].1), "{key} offsets not increasing");
        }
        let batch: Vec<Message> = (60..260)
            .map(|i| msg("orders", &format!("k{}", i % 5), &i.to_string()))
            .collect();
        let t = Instant::now();
        bus.publish_all(batch).await.expect("publish_all");
        let batch_time = t.elapsed();
        // The first publish also creates the topic: leave it out of the figures.
        let mut steady: Vec<Duration> = latencies[1..].to_vec();
        steady.sort();
        eprintln!(
            "publish latency (acks=all, linger 5 ms): p50 {:?}, p99 {:?}, max {:?}; first publish (creates the topic) {:?}; publish_all of 200: {:?}",
            percentile(&steady, 0.5),
            percentile(&steady, 0.99),
            steady[steady.len() - 1],
            latencies[0],
            batch_time
        );

        let mut sub = bus.subscribe("reader", &["orders".into()]).await.expect("subscribe");
        let recs = read(&mut sub, 260, Duration::from_secs(45)).await;
        assert_eq!(recs.len(), 260, "every record once");
        for k in 0..5 {
            let key = format!("k{k}");
            let mine: Vec<&Record> = recs.iter().filter(|r| r.key == key).collect();
            let seen: Vec<u32> = mine.iter().map(|r| body(r).parse().unwrap()).collect();
            let mut sorted = seen.clone();
            sorted.sort();
            assert_eq!(seen, sorted, "key {key} out of order");
            assert!(mine.iter().all(|r| r.partition == positions[&key][0].0));
        }
        let first = recs.iter().find(|r| body(r) == "0").expect("record 0");
        assert_eq!(first.topic, "orders", "consumers see bare topic names");
        assert_eq!((first.partition, first.offset), positions["k0"][0]);
        assert_eq!(first.header("x-note"), Some("héllo, wörld"));
        assert_eq!(first.event_id(), "k0-0");
        assert_eq!(first.attempt(), 1);
        assert!(
            first.timestamp_ms >= started - 1_000 && first.timestamp_ms <= consumer::now_ms(),
            "timestamp {} not in the test's time",
            first.timestamp_ms
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_resume_and_describe_reports_lag() {
    let env = Env::new();
    bounded(90, async {
        let bus = env.bus(1);
        for i in 0..5 {
            bus.publish(msg("t", "k", &i.to_string())).await.unwrap();
        }
        {
            let mut sub = bus.subscribe("g", &["t".into()]).await.unwrap();
            let recs = read(&mut sub, 5, Duration::from_secs(30)).await;
            assert_eq!(
                recs.iter().map(|r| r.offset).collect::<Vec<_>>(),
                vec![0, 1, 2, 3, 4]
            );
            sub.commit("t", 0, 3).await.expect("commit");
        }
        let overview = bus.describe().await.expect("describe");
        assert_eq!(overview.engine, "kafka");
        let t = overview
            .topics
            .iter()
            .find(|t| t.name == "t")
            .expect("topic t listed");
        assert_eq!(t.end_offsets, vec![5]);
        let lag = overview
            .groups
            .iter()
            .find(|g| g.group == "g" && g.topic == "t" && g.partition == 0)
            .expect("group g listed");
        assert_eq!((lag.committed, lag.lag), (3, 2));

        let mut sub = bus.subscribe("g", &["t".into()]).await.unwrap();
        let recs = read(&mut sub, 2, Duration::from_secs(30)).await;
        assert_eq!(
            recs.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![3, 4],
            "a new subscription resumes at the committed offset"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_replays_and_is_committed() {
    let env = Env::new();
    bounded(90, async {
        let bus = env.bus(1);
        for i in 0..5 {
            bus.publish(msg("t", "k", &i.to_string())).await.unwrap();
        }
        {
            let mut sub = bus.subscribe("g", &["t".into()]).await.unwrap();
            let recs = read(&mut sub, 5, Duration::from_secs(30)).await;
            assert_eq!(recs.len(), 5);
            sub.commit("t", 0, 5).await.unwrap();
            sub.seek("t", 0, 2).await.expect("seek");
            let again = read(&mut sub, 3, Duration::from_secs(15)).await;
            assert_eq!(
                again.iter().map(|r| r.offset).collect::<Vec<_>>(),
                vec![2, 3, 4]
            );
            // Seeking a partition this member does not have is ignored.
            sub.seek("t", 7, 0)
                .await
                .expect("seek on an unknown partition");
        }
        let mut sub = bus.subscribe("g", &["t".into()]).await.unwrap();
        let recs = read(&mut sub, 3, Duration::from_secs(30)).await;
        assert_eq!(
            recs.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![2, 3, 4],
            "the seek position was committed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_skips_history_and_resumes_after_restart() {
    let env = Env::new();
    bounded(90, async {
        let bus = env.bus(2);
        for i in 0..4 {
            bus.publish(msg("t", &format!("k{i}"), &format!("old{i}")))
                .await
                .unwrap();
        }
        {
            let mut sub = bus
                .subscribe_from("g", &["t".into()], StartFrom::Latest)
                .await
                .unwrap();
            // Published right after subscribing, before the group has even formed.
            for i in 0..2 {
                bus.publish(msg("t", &format!("k{i}"), &format!("new{i}")))
                    .await
                    .unwrap();
            }
            let recs = read(&mut sub, 2, Duration::from_secs(30)).await;
            let mut bodies: Vec<String> = recs.iter().map(body).collect();
            bodies.sort();
            assert_eq!(bodies, vec!["new0", "new1"], "history is skipped");
            // Nothing committed: the records are still due after a restart.
        }
        bus.publish(msg("t", "k3", "while-down")).await.unwrap();
        let mut sub = bus
            .subscribe_from("g", &["t".into()], StartFrom::Latest)
            .await
            .unwrap();
        let recs = read(&mut sub, 3, Duration::from_secs(30)).await;
        let mut bodies: Vec<String> = recs.iter().map(body).collect();
        bodies.sort();
        assert_eq!(
            bodies,
            vec!["new0", "new1", "while-down"],
            "a restarted group resumes where it started, not at the new end"
        );
    })
    .await;
}

#[derive(Default)]
struct Recorder {
    handled: Mutex<Vec<(Record, Instant)>>,
    dead: Mutex<Vec<(String, Instant)>>,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        self.handled
            .lock()
            .unwrap()
            .push((record.clone(), Instant::now()));
        match record.key.as_str() {
            "poison" => Err(HandleError::Retry("provider down".into())),
            "junk" => Err(HandleError::Reject("unparseable payload".into())),
            _ => Ok(()),
        }
    }

    async fn dead_lettered(&self, record: &Record, _reason: &str) -> anyhow::Result<()> {
        self.dead
            .lock()
            .unwrap()
            .push((record.key.clone(), Instant::now()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_policy_retries_then_dead_letters_while_other_keys_flow() {
    let env = Env::new();
    bounded(120, async {
        let bus: Arc<dyn EventBus> = Arc::new(env.bus(3));
        bus.publish(msg("orders", "poison", "p")).await.unwrap();
        bus.publish(msg("orders", "junk", "{not json"))
            .await
            .unwrap();
        for i in 0..30 {
            bus.publish(msg("orders", &format!("g{}", i % 10), &i.to_string()))
                .await
                .unwrap();
        }
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(300),
            max_backoff: Duration::from_secs(1),
        };
        let recorder = Arc::new(Recorder::default());
        let cancel = CancellationToken::new();
        // No init_topics: the retry topics are created when first used.
        let run = tokio::spawn(consumer::run(
            bus.clone(),
            ConsumerSpec::new("svc", &["orders"], policy),
            recorder.clone(),
            cancel.clone(),
        ));

        let mut dlt = bus
            .subscribe("dlt-reader", &[topics::dead_letter("orders")])
            .await
            .unwrap();
        let dead = read(&mut dlt, 2, Duration::from_secs(60)).await;
        assert_eq!(
            dead.len(),
            2,
            "poison and junk dead-lettered, once each: {dead:?}"
        );

        let handled = recorder.handled.lock().unwrap().clone();
        let goods: HashSet<String> = handled
            .iter()
            .filter(|(r, _)| r.key.starts_with('g'))
            .map(|(r, _)| r.event_id())
            .collect();
        assert_eq!(goods.len(), 30, "every other record handled");
        let poison: Vec<&(Record, Instant)> =
            handled.iter().filter(|(r, _)| r.key == "poison").collect();
        assert_eq!(
            poison
                .iter()
                .map(|(r, _)| (r.topic.as_str(), r.attempt()))
                .collect::<Vec<_>>(),
            vec![
                ("orders", 1),
                ("orders-retry-svc-1", 2),
                ("orders-retry-svc-2", 3)
            ]
        );
        assert!(
            poison[1].1 - poison[0].1 >= Duration::from_millis(250),
            "the retry waited for its backoff"
        );
        let last_good = handled
            .iter()
            .filter(|(r, _)| r.key.starts_with('g'))
            .map(|(_, at)| *at)
            .max()
            .unwrap();
        let poison_dead = recorder
            .dead
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _)| k == "poison")
            .map(|(_, at)| *at)
            .expect("dead_lettered hook called for poison");
        assert!(
            last_good < poison_dead,
            "other keys did not wait for the failing one"
        );

        let first = &poison[0].0;
        let p = dead
            .iter()
            .find(|r| r.key == "poison")
            .expect("poison in -dlt");
        assert_eq!(p.topic, "orders-dlt");
        assert_eq!(p.header(headers::ATTEMPT), Some("3"));
        assert_eq!(p.header(headers::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(
            p.header(headers::ORIGINAL_PARTITION),
            Some(first.partition.to_string().as_str())
        );
        assert_eq!(
            p.header(headers::ORIGINAL_OFFSET),
            Some(first.offset.to_string().as_str())
        );
        assert_eq!(p.header(headers::ERROR), Some("provider down"));
        assert_eq!(p.header(headers::CONSUMER_GROUP), Some("svc"));
        assert_eq!(p.header(headers::NOT_BEFORE), None);
        assert_eq!(p.event_id(), "poison-p");
        assert_eq!(body(p), "p");

        let j = dead.iter().find(|r| r.key == "junk").expect("junk in -dlt");
        assert_eq!(j.attempt(), 1);
        assert_eq!(j.header(headers::ERROR), Some("unparseable payload"));
        assert_eq!(j.header(headers::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(body(j), "{not json");
        assert_eq!(
            handled.iter().filter(|(r, _)| r.key == "junk").count(),
            1,
            "a rejected record is not retried"
        );

        cancel.cancel();
        bounded(30, run).await.unwrap().unwrap();

        // Created on demand, with the source topic's partition count; every
        // record of the main topic committed.
        let overview = bus.describe().await.unwrap();
        for t in ["orders-retry-svc-1", "orders-retry-svc-2", "orders-dlt"] {
            let info = overview
                .topics
                .iter()
                .find(|i| i.name == t)
                .unwrap_or_else(|| panic!("{t} missing"));
            assert_eq!(info.end_offsets.len(), 3, "{t} partitions");
        }
        let lag: u64 = overview
            .groups
            .iter()
            .filter(|g| g.group == "svc" && g.topic == "orders")
            .map(|g| g.lag)
            .sum();
        assert_eq!(
            lag, 0,
            "group svc committed everything: {:?}",
            overview.groups
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_topics_is_idempotent_and_copies_partition_counts() {
    let env = Env::new();
    bounded(90, async {
        // A source topic that already exists with 4 partitions.
        env.bus(4)
            .publish(msg(topics::USER_ACTION_PERFORMED, "k", "x"))
            .await
            .unwrap();
        let groups: &[(&str, &[&str])] = &[
            (
                "svc",
                &[topics::USER_ACTION_PERFORMED, topics::NOTIFICATION_PUSH],
            ),
            // A group reading a dead-letter topic gets no retry or dead-letter
            // topics for it: the runner never forwards from one.
            ("audit", &["custom", "custom-dlt"]),
        ];
        // Two replicas starting at once: "already exists" is success.
        let (a, b) = (env.bus(2), env.bus(2));
        let (ra, rb) = tokio::join!(a.init_topics(groups, 3), b.init_topics(groups, 3));
        let mut created: Vec<String> = ra
            .expect("first")
            .into_iter()
            .chain(rb.expect("second"))
            .collect();
        created.sort();
        created.dedup();
        let mut expected: Vec<String> = Vec::new();
        for t in topics::ALL.iter().copied().chain(["custom"]) {
            if t != topics::USER_ACTION_PERFORMED {
                expected.push(t.to_owned());
            }
            expected.push(topics::dead_letter(t));
        }
        for (g, ts) in groups {
            for t in ts.iter().filter(|t| !topics::is_dead_letter(t)) {
                expected.extend((1..3).map(|n| topics::retry(t, g, n)));
            }
        }
        expected.sort();
        assert_eq!(created, expected);

        assert_eq!(
            a.init_topics(groups, 3).await.expect("again"),
            Vec::<String>::new()
        );
        assert_eq!(
            env.bus(2)
                .init_topics(groups, 3)
                .await
                .expect("from a new process"),
            Vec::<String>::new()
        );

        let overview = a.describe().await.unwrap();
        let parts: BTreeMap<&str, usize> = overview
            .topics
            .iter()
            .map(|t| (t.name.as_str(), t.end_offsets.len()))
            .collect();
        let uap = topics::USER_ACTION_PERFORMED;
        for t in [
            uap.to_owned(),
            topics::dead_letter(uap),
            topics::retry(uap, "svc", 1),
            topics::retry(uap, "svc", 2),
        ] {
            assert_eq!(parts.get(t.as_str()), Some(&4), "{t}: {parts:?}");
        }
        for t in [
            topics::NOTIFICATION_PUSH.to_owned(),
            topics::dead_letter(topics::NOTIFICATION_PUSH),
            topics::retry(topics::NOTIFICATION_PUSH, "svc", 2),
            "custom-retry-audit-1".to_owned(),
        ] {
            assert_eq!(parts.get(t.as_str()), Some(&2), "{t}: {parts:?}");
        }
        assert_eq!(
            parts.len(),
            expected.len() + 1,
            "only this test's topics: {parts:?}"
        );
    })
    .await;
}

#[derive(Default)]
struct Shared {
    by: Mutex<Vec<(&'static str, String, u32)>>,
}

struct Member {
    name: &'static str,
    shared: Arc<Shared>,
}

#[async_trait]
impl Handler for Member {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        self.shared
            .by
            .lock()
            .unwrap()
            .push((self.name, record.event_id(), record.partition));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_partitions_and_every_record_is_handled() {
    let env = Env::new();
    bounded(120, async {
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        let cancel_a = cancel.child_token();
        let policy = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let start = |name: &'static str, cancel: CancellationToken| {
            // Each member its own client, as two replicas would have.
            let bus: Arc<dyn EventBus> = Arc::new(env.bus(4));
            tokio::spawn(consumer::run(
                bus,
                ConsumerSpec::new("workers", &["jobs"], policy.clone()),
                Arc::new(Member {
                    name,
                    shared: shared.clone(),
                }),
                cancel.clone(),
            ))
        };
        let publisher = env.bus(4);
        let wave = |from: usize| -> Vec<Message> {
            (from..from + 100)
                .map(|i| msg("jobs", &format!("key{}", i % 40), &i.to_string()))
                .collect()
        };
        publisher.publish_all(wave(0)).await.unwrap();
        let a = start("a", cancel_a.clone());
        let handled = || {
            shared
                .by
                .lock()
                .unwrap()
                .iter()
                .map(|(_, id, _)| id.clone())
                .collect::<HashSet<String>>()
        };
        while handled().len() < 100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let b = start("b", cancel.clone());
        // Keep publishing while the group rebalances.
        let mut next = 100;
        let t = Instant::now();
        let mut b_started = None;
        while next < 300 || b_started.is_none() {
            // The rebalance waits for the first member's next heartbeat (a
            // third of the session timeout), then takes two rounds.
            assert!(
                t.elapsed() < Duration::from_secs(40),
                "the second member got nothing"
            );
            publisher.publish_all(wave(next)).await.unwrap();
            next += 100;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if b_started.is_none() && shared.by.lock().unwrap().iter().any(|(m, _, _)| *m == "b") {
                b_started = Some(t.elapsed());
            }
        }
        eprintln!("second member handled its first record within {b_started:?}");
        while handled().len() < next {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let by = shared.by.lock().unwrap().clone();
        let parts = |m: &str| -> HashSet<u32> {
            by.iter()
                .filter(|(n, _, _)| *n == m)
                .map(|(_, _, p)| *p)
                .collect()
        };
        eprintln!(
            "handled {} times for {} records; partitions seen by a: {:?}, by b: {:?}",
            by.len(),
            next,
            parts("a"),
            parts("b")
        );
        assert!(!parts("b").is_empty(), "the second member got partitions");
        let late_a: HashSet<u32> = by
            .iter()
            .skip_while(|(n, _, _)| *n != "b")
            .filter(|(n, _, _)| *n == "a")
            .map(|(_, _, p)| *p)
            .collect();
        assert!(!late_a.is_empty(), "the first member kept some partitions");

        // Every record is eventually committed by whoever owns its partition.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = publisher.describe().await.unwrap();
            let lags: Vec<(u32, u64)> = o
                .groups
                .iter()
                .filter(|g| g.group == "workers" && g.topic == "jobs")
                .map(|g| (g.partition, g.lag))
                .collect();
            if lags.len() == 4 && lags.iter().all(|(_, l)| *l == 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "group lag did not reach 0: {lags:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        // The first member leaves: the second takes over everything.
        cancel_a.cancel();
        bounded(30, a).await.unwrap().unwrap();
        let before = next;
        publisher.publish_all(wave(next)).await.unwrap();
        next += 100;
        let deadline = Instant::now() + Duration::from_secs(30);
        while handled().len() < next {
            assert!(
                Instant::now() < deadline,
                "records published after the first member left were not all handled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after: HashSet<u32> = shared
            .by
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, id, _)| {
                id.rsplit('-').next().and_then(|n| n.parse::<usize>().ok()) >= Some(before)
            })
            .map(|(m, _, p)| {
                assert_eq!(*m, "b", "only the remaining member handles new records");
                *p
            })
            .collect();
        assert_eq!(
            after.len(),
            4,
            "the remaining member owns every partition: {after:?}"
        );
        cancel.cancel();
        bounded(30, b).await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_seek_after_revocation_are_harmless() {
    let env = Env::new();
    bounded(90, async {
        let bus = env.bus(2);
        let mut parts = HashSet::new();
        for i in 0..20 {
            let pos = bus
                .publish(msg("t", &format!("k{i}"), &i.to_string()))
                .await
                .unwrap();
            parts.insert(pos.partition);
        }
        assert_eq!(parts.len(), 2, "records on both partitions");
        let mut first = bus.subscribe("g", &["t".into()]).await.unwrap();
        assert_eq!(
            read(&mut first, 20, Duration::from_secs(30)).await.len(),
            20
        );

        // A second member joins; the first keeps polling so it serves the revocation.
        let mut second = bus.subscribe("g", &["t".into()]).await.unwrap();
        let joined = tokio::spawn(async move {
            loop {
                let recs = second.poll(100, Duration::from_millis(200)).await.unwrap();
                if !recs.is_empty() {
                    return (second, recs);
                }
            }
        });
        while !joined.is_finished() {
            assert!(first
                .poll(100, Duration::from_millis(200))
                .await
                .unwrap()
                .is_empty());
        }
        let (_second, recs) = joined.await.unwrap();
        let moved = recs[0].partition;
        assert!(
            recs.iter().all(|r| r.partition == moved),
            "one partition moved"
        );
        assert_eq!(
            recs[0].offset, 0,
            "nothing was committed: the new owner starts over"
        );

        // The old owner's late commit and seek are accepted and change nothing.
        first
            .commit("t", moved, 10)
            .await
            .expect("late commit is not an error");
        first
            .seek("t", moved, 0)
            .await
            .expect("late seek is not an error");
        let overview = bus.describe().await.unwrap();
        assert!(
            !overview
                .groups
                .iter()
                .any(|g| g.group == "g" && g.partition == moved),
            "the revoked partition's position was left to its new owner: {:?}",
            overview.groups
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_and_fails_fast_without_a_broker() {
    let env = Env::new();
    bounded(30, async {
        env.bus(1)
            .ready()
            .await
            .expect("ready against the test broker");

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The listener is closed again: nothing answers on that port.
        let bus = KafkaBus::connect(KafkaSettings::new(format!("127.0.0.1:{port}"))).unwrap();
        let t = Instant::now();
        let err = bus.ready().await.expect_err("no broker there");
        let took = t.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
        eprintln!("ready() against a closed port failed in {took:?}: {err}");
    })
    .await;
}

const CHILD_ENV: &str = "CLAIRON_KAFKA_TEST_CHILD_PREFIX";

/// Not a test on its own: the consumer process that
/// `static_member_resumes_quickly_after_kill_9` starts and kills. Returns at
/// once unless started that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_child() {
    let Ok(prefix) = std::env::var(CHILD_ENV) else {
        return;
    };
    let settings = KafkaSettings {
        topic_prefix: prefix,
        instance_id: Some("member-1".into()),
        ..KafkaSettings::new(testing::brokers())
    };
    let bus = KafkaBus::connect(settings).unwrap();
    let mut sub = bus.subscribe("g", &["t".into()]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let recs = sub.poll(100, Duration::from_millis(200)).await.unwrap();
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        for r in &recs {
            println!("@@handled {}", body(r));
            next.insert(r.partition, r.offset + 1);
        }
        for (p, o) in next {
            sub.commit("t", p, o).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_resumes_quickly_after_kill_9() {
    let env = Env::new();
    bounded(120, async {
        let bus = env.bus(2);
        let spawn = || {
            tokio::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "static_member_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &env.topics.prefix)
                .env(testing::BROKERS_VAR, &env.topics.brokers)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start the child consumer")
        };
        async fn wait_for(child: &mut tokio::process::Child, want: &[String]) {
            let out = child.stdout.as_mut().expect("piped stdout");
            let mut lines = tokio::io::BufReader::new(out).lines();
            let mut missing: HashSet<&String> = want.iter().collect();
            while !missing.is_empty() {
                let line = lines
                    .next_line()
                    .await
                    .expect("read child output")
                    .expect("child exited early");
                if let Some((_, got)) = line.split_once("@@handled ") {
                    missing.retain(|w| w.as_str() != got.trim());
                }
            }
        }
        let first: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
        for b in &first {
            bus.publish(msg("t", b, b)).await.unwrap();
        }
        let mut child = spawn();
        wait_for(&mut child, &first).await;
        child.kill().await.expect("SIGKILL the child");

        let second: Vec<String> = (0..6).map(|i| format!("b{i}")).collect();
        for b in &second {
            bus.publish(msg("t", b, b)).await.unwrap();
        }
        let t = Instant::now();
        let mut child = spawn();
        wait_for(&mut child, &second).await;
        let took = t.elapsed();
        child.kill().await.expect("SIGKILL the child");
        eprintln!("restarted static member handled new records {took:?} after start");
        assert!(took < Duration::from_secs(15), "took {took:?}");
    })
    .await;
}
