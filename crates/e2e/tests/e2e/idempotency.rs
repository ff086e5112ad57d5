use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    helpers::{
        expect_problem, json_of, unique_phone, uuid_field, Options, TestApp, TestUser, TIMEOUT,
    },
    sms::SmsSink,
    smtp::SmtpSink,
};

fn sms(user: &TestUser, to: &str, title: &str) -> Value {
    json!({
        "userId": user.id,
        "type": "SMS",
        "title": title,
        "message": "Exactly once, please",
        "recipient": to,
    })
}

/// A notification to the same user after the ones under test. Events of one user
/// share a partition key, so once this one is delivered, the earlier ones
/// (duplicates included) have been handled: no fixed sleep needed.
async fn sms_marker(app: &TestApp, sink: &SmsSink, user: &TestUser) {
    let id = app
        .trigger_notification(&sms(user, &unique_phone(), "Marker"))
        .await;
    sink.wait_for(id).await;
}

#[tokio::test]
async fn a_redelivered_notification_event_is_delivered_once() {
    let smtp = SmtpSink::start().await;
    let sink = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().smtp(&smtp).sms(&sink)).await;
    let user = app.register_user().await;

    // The same notificationId published twice (no Idempotency-Key): two events.
    let sms_id = Uuid::new_v4();
    let mut sms_body = sms(&user, &unique_phone(), "Once");
    sms_body["notificationId"] = json!(sms_id);
    let email_id = Uuid::new_v4();
    let email_body = json!({
        "notificationId": email_id,
        "userId": user.id,
        "type": "EMAIL",
        "title": "Once by email",
        "message": "Exactly once, please",
    });
    for body in [&sms_body, &sms_body, &email_body, &email_body] {
        let id = app.trigger_notification(body).await;
        assert_eq!(
            id.to_string(),
            body["notificationId"],
            "the answer keeps the given notificationId"
        );
    }

    sms_marker(&app, &sink, &user).await;
    let email_marker = app
        .trigger_notification(&json!({
            "userId": user.id, "type": "EMAIL", "title": "Marker", "message": "after the duplicates",
        }))
        .await;
    smtp.wait_for(
        "the marker email",
        |m| m.message_id().contains(&email_marker.to_string()),
        TIMEOUT,
    )
    .await;
    app.wait_until_sent(sms_id).await;
    app.wait_until_sent(email_id).await;

    let sent = sink.requests_for(sms_id);
    assert_eq!(
        sent.len(),
        1,
        "the SMS provider got {} requests for {sms_id}: {sent:?}",
        sent.len()
    );
    let emails = smtp.count(|m| m.message_id().contains(&email_id.to_string()));
    assert_eq!(
        emails, 1,
        "the SMTP server got {emails} emails for {email_id}"
    );
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_answer_and_delivers_once() {
    let sink = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sink)).await;
    let user = app.register_user().await;
    let admin = app.admin_token().await;
    let to = unique_phone();
    let body = sms(&user, &to, "Keyed");
    let key = format!("order-{}", Uuid::new_v4());

    let (first_status, first) = json_of(app.trigger(&admin, &body, Some(&key)).await).await;
    assert_eq!(first_status, StatusCode::ACCEPTED, "{first}");
    let (second_status, second) = json_of(app.trigger(&admin, &body, Some(&key)).await).await;
    assert_eq!(second_status, StatusCode::ACCEPTED, "{second}");
    let id = uuid_field(&first, "notificationId");
    assert_eq!(
        uuid_field(&second, "notificationId"),
        id,
        "a repeat returns the first answer"
    );

    // The same key with another body is refused.
    let other = sms(&user, &to, "Another body");
    expect_problem(
        app.trigger(&admin, &other, Some(&key)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the same Idempotency-Key with another body",
    )
    .await;

    sms_marker(&app, &sink, &user).await;
    app.wait_until_sent(id).await;
    let to_recipient: Vec<_> = sink
        .requests()
        .into_iter()
        .filter(|r| r.body["to"] == to.as_str())
        .collect();
    assert_eq!(
        to_recipient.len(),
        1,
        "one keyed request must deliver once, got {to_recipient:?}"
    );
}
