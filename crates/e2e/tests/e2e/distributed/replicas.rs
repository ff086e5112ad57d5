//! Two notification replicas in one consumer group share the partitions; a
//! rebalance in the middle of the load sends nothing twice.

use std::time::Duration;

use super::{
    cluster::{Cluster, ClusterOptions},
    faults::{assert_sent_once, load},
};
use crate::sms::SmsSink;

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_and_a_rebalance_mid_load_send_each_notification_once() {
    let sms = SmsSink::start().await;
    let c = Cluster::start(ClusterOptions {
        sms_url: Some(sms.url()),
        notification_replicas: 2,
        ..Default::default()
    })
    .await;
    // Several users, so the keys spread over the partitions of both replicas.
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(c.register_user().await);
    }
    let mut ids = Vec::new();
    for u in &users {
        ids.extend(load(&c, u.id, 25, 1).await);
    }
    // Graceful leave: the other replica takes every partition over.
    c.stop("notifications-2").await;
    for u in &users {
        ids.extend(load(&c, u.id, 25, 1).await);
    }
    // And back: partitions are shared again.
    c.start_proc("notifications-2").await;
    for u in &users {
        ids.extend(load(&c, u.id, 25, 1).await);
    }
    c.wait_all_sent(&ids, Duration::from_secs(90)).await;
    assert_sent_once(&sms, &ids);
}
