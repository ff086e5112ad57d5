//! Nothing accepted is lost when a process, the broker or the database goes down.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::cluster::{infra_sh, Cluster, ClusterOptions};
use crate::sms::SmsSink;

/// Fires SMS notifications at `per_sec` for `secs` seconds, concurrently and
/// on schedule (open loop); returns the ids of the accepted ones.
pub async fn load(c: &Cluster, user: Uuid, per_sec: u64, secs: u64) -> Vec<Uuid> {
    let start = tokio::time::Instant::now();
    let n = per_sec * secs;
    let sends = (0..n).map(|i| async move {
        tokio::time::sleep_until(start + Duration::from_millis(i * 1000 / per_sec)).await;
        let body =
            json!({"userId": user, "type": "SMS", "title": format!("load {i}"), "message": "m"});
        c.try_trigger(&body).await
    });
    futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Every id reached the SMS provider exactly once (accepted answers counted).
pub fn assert_sent_once(sms: &SmsSink, ids: &[Uuid]) {
    for id in ids {
        let accepted = sms
            .requests_for(*id)
            .iter()
            .filter(|r| r.answered.is_success())
            .count();
        assert_eq!(
            accepted, 1,
            "notification {id} reached the SMS provider {accepted} times"
        );
    }
}

/// Every id ends SENT and reached the SMS provider.
async fn assert_all_sent(c: &Cluster, sms: &SmsSink, ids: &[Uuid], within: Duration) {
    c.wait_all_sent(ids, within).await;
    for id in ids {
        assert!(
            sms.requests_for(*id)
                .iter()
                .any(|r| r.answered.is_success()),
            "accepted notification {id} never reached the SMS provider"
        );
    }
}

/// Five processes sending SMS to `sms`; `exclusive` for a test that stops
/// the shared broker or database.
async fn sms_cluster(sms: &SmsSink, exclusive: bool) -> Cluster {
    Cluster::start(ClusterOptions {
        sms_url: Some(sms.url()),
        exclusive,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_notification_process_under_load_loses_nothing() {
    let sms = SmsSink::start().await;
    let c = sms_cluster(&sms, false).await;
    let user = c.register_user().await;
    let first = load(&c, user.id, 40, 3).await;
    c.kill9("notifications-1");
    let during = load(&c, user.id, 40, 2).await;
    c.start_proc("notifications-1").await;
    let after = load(&c, user.id, 40, 1).await;
    let all: Vec<Uuid> = first.into_iter().chain(during).chain(after).collect();
    assert!(all.len() > 150, "only {} requests were accepted", all.len());
    assert_all_sent(&c, &sms, &all, Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_accepted_while_kafka_is_down_are_published_when_it_returns() {
    let sms = SmsSink::start().await;
    let c = sms_cluster(&sms, true).await;
    let user = c.register_user().await;
    let before = load(&c, user.id, 20, 2).await;
    infra_sh("kafka-stop");
    let stopped = tokio::time::Instant::now();
    // Requests keep being accepted: the outbox holds their events.
    let during = load(&c, user.id, 10, 20).await;
    infra_sh("kafka-start");
    assert!(stopped.elapsed() >= Duration::from_secs(20));
    assert!(
        during.len() >= 150,
        "only {} requests accepted while Kafka was down",
        during.len()
    );
    let all: Vec<Uuid> = before.into_iter().chain(during).collect();
    assert_all_sent(&c, &sms, &all, Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_recover_from_a_database_restart_without_restarting() {
    let sms = SmsSink::start().await;
    let c = sms_cluster(&sms, true).await;
    let user = c.register_user().await;
    let before = load(&c, user.id, 20, 2).await;
    infra_sh("mysql-stop");
    // Requests fail while the database is down (no 2xx without a commit)…
    let during = load(&c, user.id, 10, 3).await;
    infra_sh("mysql-start");
    // …and succeed again once it is back, without restarting any process.
    let mut after = Vec::new();
    crate::helpers::eventually(
        "the publisher to accept requests again",
        Duration::from_secs(60),
        async || match c
            .try_trigger(
                &json!({"userId": user.id, "type": "SMS", "title": "after", "message": "m"}),
            )
            .await
        {
            Some(id) => {
                after.push(id);
                Ok(())
            }
            None => Err("not accepted yet".to_owned()),
        },
    )
    .await;
    after.extend(load(&c, user.id, 20, 2).await);
    let all: Vec<Uuid> = before.into_iter().chain(during).chain(after).collect();
    assert_all_sent(&c, &sms, &all, Duration::from_secs(120)).await;
    for name in ["users", "events", "logs", "notifications-1", "web"] {
        let r = c
            .client()
            .get(c.url(name, "/health/ready"))
            .send()
            .await
            .expect("ready");
        assert_eq!(
            r.status(),
            200,
            "{name} is not ready after the database came back"
        );
    }
}
