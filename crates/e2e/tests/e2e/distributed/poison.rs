//! A record no consumer can read goes to the dead-letter topic and the
//! partition keeps flowing.

use std::time::Duration;

use clairon_bus::{kafka::KafkaBus, kafka::KafkaSettings, EventBus, Message};
use clairon_events::topics;
use serde_json::json;

use super::cluster::{Cluster, ClusterOptions};
use tokio_tungstenite::{connect_async, tungstenite::client::IntoClientRequest};

use crate::sms::SmsSink;

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_on_every_consumed_topic_are_dead_lettered_and_flow_continues() {
    let sms = SmsSink::start().await;
    let c = Cluster::start(ClusterOptions {
        sms_url: Some(sms.url()),
        ..Default::default()
    })
    .await;
    let user = c.register_user().await;
    let mut settings = KafkaSettings::new(c.brokers.clone());
    settings.topic_prefix = c.prefix.clone();
    let bus = KafkaBus::connect(settings).expect("a Kafka client");

    // The web replica reads pushes from the end of the log once it has joined:
    // a push round trip proves it has, so the poison push below reaches it.
    let host = c.web("").trim_start_matches("http://").to_owned();
    let req = format!("ws://{host}/ws?token={}", user.token)
        .into_client_request()
        .expect("a request");
    let (mut socket, _) = connect_async(req).await.expect("the WebSocket opens");
    super::cluster::push_until_live(&c, &mut socket, user.id, "warm-up").await;

    // Same key as the user's real traffic, so a stall would block what follows.
    for topic in [
        topics::USER_REGISTERED,
        topics::NOTIFICATION_TRIGGERED,
        topics::NOTIFICATION_PUSH,
    ] {
        bus.publish(Message {
            topic: topic.to_owned(),
            key: user.id.to_string(),
            headers: vec![],
            payload: b"\x00not json at all".to_vec(),
        })
        .await
        .expect("publishing a poison record");
    }
    // Traffic behind the poison still flows.
    let id = c
        .try_trigger(
            &json!({"userId": user.id, "type": "SMS", "title": "after poison", "message": "m"}),
        )
        .await
        .expect("accepted");
    sms.wait_for(id).await;

    // Each poison record is in its topic's dead-letter topic, with the reason.
    let dlts: Vec<String> = [
        topics::USER_REGISTERED,
        topics::NOTIFICATION_TRIGGERED,
        topics::NOTIFICATION_PUSH,
    ]
    .iter()
    .map(|t| topics::dead_letter(t))
    .collect();
    let mut sub = bus
        .subscribe("e2e-inspector", &dlts)
        .await
        .expect("subscribe");
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < dlts.len() && tokio::time::Instant::now() < deadline {
        for r in sub
            .poll(100, Duration::from_millis(500))
            .await
            .expect("poll")
        {
            if r.payload.starts_with(b"\x00not json") {
                assert!(
                    r.header("clairon-error").is_some_and(|e| !e.is_empty()),
                    "no reason on {r:?}"
                );
                seen.insert(r.topic.clone());
            }
        }
    }
    assert_eq!(
        seen.len(),
        dlts.len(),
        "dead-lettered on {seen:?}, expected {dlts:?}"
    );

    // The notification service lists its dead letters for the admin.
    let token = c.admin_token().await;
    let page: serde_json::Value = c
        .client()
        .get(c.web("/api/notifications/dead-letters"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("dead letters")
        .json()
        .await
        .expect("json");
    let n = page["items"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        n >= 2,
        "expected the two poison records of the notification consumer: {page}"
    );
}
