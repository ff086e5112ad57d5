use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use tokio::{sync::Notify, time::Instant};
use uuid::Uuid;

use crate::{
    helpers::{json_of, unique_phone, Options, Svc, TestApp},
    sms::SmsSink,
};

/// Polls every id (as admin) until each is SENT or DEAD; panics listing the rest.
async fn wait_all_final(app: &TestApp, ids: &[Uuid], timeout: Duration) -> BTreeMap<Uuid, String> {
    let admin = app.admin_token().await;
    let deadline = Instant::now() + timeout;
    let mut done = BTreeMap::new();
    let mut pending: Vec<Uuid> = ids.to_vec();
    loop {
        let results: Vec<(Uuid, String)> = futures::stream::iter(pending.iter().copied())
            .map(|id| {
                let admin = &admin;
                async move {
                    let (status, body) = json_of(app.get_notification(admin, id).await).await;
                    let state = match body["status"].as_str() {
                        Some(s) if status == StatusCode::OK => s.to_owned(),
                        _ => format!("HTTP {status}"),
                    };
                    (id, state)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        pending.clear();
        let mut last = BTreeMap::new();
        for (id, state) in results {
            if state == "SENT" || state == "DEAD" {
                done.insert(id, state);
            } else {
                pending.push(id);
                last.insert(id, state);
            }
        }
        if pending.is_empty() {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted notifications are not SENT or DEAD after {timeout:?}: {last:?}",
            pending.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_accepted_notification() {
    const TOTAL: usize = 200;
    const KILL_AFTER: usize = 60;

    let sink = SmsSink::start().await;
    let mut app = TestApp::spawn(Options::new().sms(&sink)).await;
    let user = app.register_user().await;
    let admin = app.admin_token().await;
    let url = app.url(Svc::Events, "/api/events/notifications");
    let client = app.client().clone();

    let accepted_count = Arc::new(AtomicUsize::new(0));
    let kill_now = Arc::new(Notify::new());
    let firing = tokio::spawn({
        let accepted_count = accepted_count.clone();
        let kill_now = kill_now.clone();
        async move {
            futures::stream::iter(0..TOTAL)
                .map(|i| {
                    let (client, url, admin) = (client.clone(), url.clone(), admin.clone());
                    let (accepted_count, kill_now) = (accepted_count.clone(), kill_now.clone());
                    let id = Uuid::new_v4();
                    let body = json!({
                        "notificationId": id,
                        "userId": user.id,
                        "type": "SMS",
                        "title": format!("Burst {i}"),
                        "message": "Survive the crash",
                        "recipient": unique_phone(),
                    });
                    async move {
                        let resp = client
                            .post(&url)
                            .bearer_auth(&admin)
                            .json(&body)
                            .timeout(Duration::from_secs(15))
                            .send()
                            .await;
                        match resp {
                            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                                if accepted_count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                                    kill_now.notify_one();
                                }
                                Some(id)
                            }
                            _ => None,
                        }
                    }
                })
                .buffer_unordered(16)
                .filter_map(std::future::ready)
                .collect::<Vec<Uuid>>()
                .await
        }
    });

    tokio::time::timeout(Duration::from_secs(60), kill_now.notified())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "only {} of {TOTAL} notifications were accepted within 60 s",
                accepted_count.load(Ordering::SeqCst)
            )
        });
    app.kill9();
    let delivered_before_kill = sink.requests().len();
    let accepted = firing.await.expect("the firing task");
    assert!(
        accepted.len() >= KILL_AFTER && accepted.len() < TOTAL,
        "the kill was meant to land mid-stream: {} of {TOTAL} accepted",
        accepted.len()
    );
    println!(
        "{} of {TOTAL} accepted before SIGKILL, {delivered_before_kill} SMS delivered by then",
        accepted.len()
    );

    app.restart().await;
    let states = wait_all_final(&app, &accepted, Duration::from_secs(90)).await;
    let dead: Vec<_> = states.iter().filter(|(_, s)| *s == "DEAD").collect();
    println!(
        "after restart: {} SENT, {} DEAD",
        states.len() - dead.len(),
        dead.len()
    );

    let missing: Vec<Uuid> = accepted
        .iter()
        .copied()
        .filter(|id| sink.requests_for(*id).is_empty())
        .collect();
    assert!(
        missing.is_empty(),
        "{} accepted notifications never reached the SMS provider: {missing:?}",
        missing.len()
    );
}

#[tokio::test]
async fn sigterm_drains_and_the_state_survives_a_restart() {
    let sink = SmsSink::start().await;
    let mut app = TestApp::spawn(Options::new().sms(&sink)).await;
    let user = app.register_user().await;

    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            app.trigger_notification(&json!({
                "userId": user.id,
                "type": "SMS",
                "title": format!("Before shutdown {i}"),
                "message": "Survive the restart",
                "recipient": unique_phone(),
            }))
            .await,
        );
    }

    let status = app.stop().await;
    assert!(
        status.success(),
        "SIGTERM should end clairon cleanly, got {status}"
    );
    app.restart().await;

    for id in &ids {
        app.wait_until_sent(*id).await;
        assert!(
            !sink.requests_for(*id).is_empty(),
            "{id} never reached the SMS provider"
        );
    }
    // Users and their tokens survive too.
    let me = app
        .client()
        .get(app.url(Svc::Users, "/api/users/me"))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("GET /api/users/me");
    let (status, body) = json_of(me).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the token issued before the restart: {body}"
    );
    assert_eq!(body["userId"], user.id.to_string(), "{body}");
    app.login(&user.email, &user.password).await;
}
