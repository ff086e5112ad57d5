//! The core flows, with each service in its own process on Kafka and MariaDB.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::{connect_async, tungstenite::client::IntoClientRequest};

use super::cluster::{Cluster, ClusterOptions};
use crate::{helpers::TIMEOUT, sms::SmsSink, smtp::SmtpSink};

#[tokio::test(flavor = "multi_thread")]
async fn registration_email_sms_push_and_audit_work_across_five_processes() {
    let smtp = SmtpSink::start().await;
    let sms = SmsSink::start().await;
    let c = Cluster::start(ClusterOptions {
        sms_url: Some(sms.url()),
        smtp_url: Some(smtp.url()),
        ..Default::default()
    })
    .await;

    // Registration through the web gateway → welcome email from the notification process.
    let user = c.register_user().await;
    let welcome = smtp
        .wait_for(
            "the welcome email",
            |m| m.is_to(&user.email) && m.subject().contains("Welcome"),
            TIMEOUT,
        )
        .await;
    assert!(welcome.message_id().contains('@'));

    // SMS without a recipient: the notification process asks the users process.
    let sms_id = c
        .try_trigger(
            &json!({"userId": user.id, "type": "SMS", "title": "Hi", "message": "over Kafka"}),
        )
        .await
        .expect("the SMS was accepted");
    let got = sms.wait_for(sms_id).await;
    assert_eq!(got.body["to"], user.phone.clone().unwrap());

    // PUSH reaches a socket held by the web process.
    let host = c.web("").trim_start_matches("http://").to_owned();
    let req = format!("ws://{host}/ws?token={}", user.token)
        .into_client_request()
        .expect("a request");
    let (mut socket, _) = connect_async(req).await.expect("the WebSocket opens");
    let frame = super::cluster::push_until_live(&c, &mut socket, user.id, "Live").await;
    assert_eq!(frame["title"], "Live");

    // The audit process saw the registration and the delivery outcomes.
    let token = c.admin_token().await;
    crate::helpers::eventually(
        "the audit log to hold the user's events",
        TIMEOUT,
        async || {
            let r = c
                .client()
                .get(c.web(&format!("/api/logs?userId={}&limit=100", user.id)))
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            let types: Vec<String> = body["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["eventType"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for want in [
                "UserRegistered",
                "NotificationTriggered",
                "NotificationStatusChanged",
                "UserActionPerformed",
            ] {
                if !types.iter().any(|t| t == want) {
                    return Err(format!("no {want} yet: {types:?}"));
                }
            }
            Ok(())
        },
    )
    .await;

    // Readiness reflects the database and Kafka.
    let ready: serde_json::Value = c
        .client()
        .get(c.url("notifications-1", "/health/ready"))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["checks"]["busEngine"], "kafka");
    assert_eq!(ready["status"], "UP");
    let _ = Duration::ZERO;
}
