//! Rolling restart rehearsal: two replicas of every service; each process is
//! restarted in turn (SIGTERM, start, wait until ready) under load. Clients
//! retry once on the other replica, as a load balancer would; nothing accepted
//! may be lost, no request may fail twice, nothing may be sent twice.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use serde_json::json;
use uuid::Uuid;

use super::{
    cluster::{Cluster, ClusterOptions},
    faults::assert_sent_once,
};
use crate::sms::SmsSink;

#[tokio::test(flavor = "multi_thread")]
async fn restarting_every_process_in_turn_under_load_loses_nothing() {
    let sms = SmsSink::start().await;
    let c = Cluster::start(ClusterOptions {
        sms_url: Some(sms.url()),
        replicas: 2,
        // Each notification replica looks contacts up in one users process (a
        // Service would balance in a cluster): the retries must outlast that
        // process's restart (~9 s of backoff in all).
        max_attempts: 8,
        ..Default::default()
    })
    .await;
    let user = c.register_user().await;
    let done = AtomicBool::new(false);
    let failed = AtomicUsize::new(0);

    let load = async {
        let mut ids = Vec::new();
        let mut n = 0u64;
        while !done.load(Ordering::SeqCst) {
            n += 1;
            let body = json!({"userId": user.id, "type": "SMS", "title": format!("rolling {n}"), "message": "m"});
            let (first, second) = if n.is_multiple_of(2) {
                ("events", "events-2")
            } else {
                ("events-2", "events")
            };
            match c.try_trigger_via(first, &body).await {
                Some(id) => ids.push(id),
                None => match c.try_trigger_via(second, &body).await {
                    Some(id) => ids.push(id),
                    None => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                },
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ids
    };
    let roll = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let order = [
            "users-2",
            "users",
            "events-2",
            "events",
            "logs-2",
            "logs",
            "notifications-2",
            "notifications-1",
            "web-2",
            "web",
        ];
        for name in order {
            c.stop(name).await;
            c.start_proc(name).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        done.store(true, Ordering::SeqCst);
    };
    let (ids, ()) = tokio::join!(load, roll);
    let ids: Vec<Uuid> = ids;
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed on both replicas"
    );
    assert!(ids.len() > 100, "only {} requests accepted", ids.len());
    c.wait_all_sent(&ids, Duration::from_secs(120)).await;
    assert_sent_once(&sms, &ids);
}
