use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    helpers::{unique_phone, Options, TestApp, TIMEOUT},
    sms::SmsSink,
    smtp::SmtpSink,
    ws::{self, TokenIn},
};

#[tokio::test]
async fn email_notification_reaches_the_smtp_server_and_is_sent() {
    let smtp = SmtpSink::start().await;
    let app = TestApp::spawn(Options::new().smtp(&smtp)).await;
    let user = app.register_user().await;

    // No recipient: the address comes from the user's profile.
    let id = app
        .trigger_notification(&json!({
            "userId": user.id,
            "type": "EMAIL",
            "title": "Your invoice is ready",
            "message": "Invoice 42 is ready to download.",
        }))
        .await;

    let mail = smtp
        .wait_for(
            "the notification email",
            |m| m.message_id().contains(&id.to_string()),
            TIMEOUT,
        )
        .await;
    assert!(
        mail.is_to(&user.email),
        "sent To {:?}, not {}",
        mail.header("To"),
        user.email
    );
    assert!(
        mail.subject().contains("Your invoice is ready"),
        "subject {:?}",
        mail.subject()
    );

    let n = app.wait_until_sent(id).await;
    assert_eq!(n["type"], "EMAIL", "{n}");
    assert_eq!(n["userId"], user.id.to_string(), "{n}");
    assert!(
        n["deliveredAt"].is_string(),
        "a SENT notification has deliveredAt: {n}"
    );
    let history = n["history"].as_array().expect("a history");
    assert!(
        history.iter().any(|h| h["status"] == "SENT"),
        "the history records SENT: {n}"
    );
}

#[tokio::test]
async fn sms_notification_reaches_the_provider_with_its_idempotency_key() {
    let sms = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sms).sms_token("provider-token-123")).await;
    let user = app.register_user().await;
    let to = unique_phone();

    let id = app
        .trigger_notification(&json!({
            "userId": user.id,
            "type": "SMS",
            "title": "Code",
            "message": "Your code is 123456",
            "recipient": to,
        }))
        .await;

    let req = sms.wait_for(id).await;
    assert_eq!(
        req.header("Idempotency-Key"),
        Some(id.to_string().as_str()),
        "{:?}",
        req.headers
    );
    assert!(
        req.header("Content-Type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        req.headers
    );
    assert_eq!(
        req.header("Authorization"),
        Some("Bearer provider-token-123"),
        "CLAIRON_SMS_TOKEN is sent as a bearer token"
    );
    assert_eq!(req.body["notificationId"], id.to_string(), "{}", req.body);
    assert_eq!(req.body["to"], to.as_str(), "{}", req.body);
    assert_eq!(req.body["title"], "Code", "{}", req.body);
    assert_eq!(req.body["message"], "Your code is 123456", "{}", req.body);

    let n = app.wait_until_sent(id).await;
    assert_eq!(n["recipient"], to.as_str(), "{n}");
}

#[tokio::test]
async fn sms_without_recipient_goes_to_the_users_phone() {
    let sms = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sms)).await;
    let user = app.register_user().await;
    let phone = user.phone.clone().expect("the user has a phone number");

    let id = app
        .trigger_notification(&json!({
            "userId": user.id,
            "type": "SMS",
            "title": "Hello",
            "message": "To the number on your profile",
        }))
        .await;

    let req = sms.wait_for(id).await;
    assert_eq!(req.body["to"], phone.as_str(), "{}", req.body);
    app.wait_until_sent(id).await;
}

#[tokio::test]
async fn push_reaches_an_open_websocket() {
    let app = TestApp::spawn(Options::new()).await;
    let user = app.register_user().await;
    let mut socket = ws::connect(&app, &user.token, TokenIn::Query).await;

    let id = app
        .trigger_notification(&json!({
            "userId": user.id,
            "type": "PUSH",
            "title": "Live",
            "message": "You are connected",
        }))
        .await;

    let (frame, _) = ws::wait_for_push(&mut socket, id, TIMEOUT).await;
    assert_eq!(frame["type"], "PUSH", "{frame}");
    assert_eq!(frame["title"], "Live", "{frame}");
    assert_eq!(frame["message"], "You are connected", "{frame}");
    assert!(frame["createdAt"].is_string(), "{frame}");
    app.wait_until_sent(id).await;
    let delivered = |n: &Value| n["status"] == "SENT" && n["deliveredAt"].is_string();
    app.wait_for_notification(id, "record its delivery on the socket", delivered, TIMEOUT)
        .await;
}

#[tokio::test]
async fn push_sent_while_offline_arrives_on_the_next_connection_only() {
    let app = TestApp::spawn(Options::new()).await;
    let user = app.register_user().await;
    let other = app.register_user().await;

    let push = |title: &'static str, to: Uuid| {
        let app = &app;
        async move {
            app.trigger_notification(&json!({
                "userId": to,
                "type": "PUSH",
                "title": title,
                "message": "Sent while you were away",
            }))
            .await
        }
    };

    // Nobody is connected: the push waits in the user's inbox.
    let offline = push("Offline", user.id).await;
    app.wait_until_sent(offline).await;

    // Another user's socket never sees it.
    let mut stranger = ws::connect(&app, &other.token, TokenIn::Header).await;

    let mut socket = ws::connect(&app, &user.token, TokenIn::Header).await;
    let (frame, _) = ws::wait_for_push(&mut socket, offline, TIMEOUT).await;
    assert_eq!(frame["title"], "Offline", "{frame}");
    drop(socket);
    let delivered = |n: &Value| n["deliveredAt"].is_string();
    app.wait_for_notification(offline, "record its delivery", delivered, TIMEOUT)
        .await;

    // Delivered once: the next connection gets only what is new.
    let mut socket = ws::connect(&app, &user.token, TokenIn::Query).await;
    let live = push("Live", user.id).await;
    let (_, before) = ws::wait_for_push(&mut socket, live, TIMEOUT).await;
    assert!(
        before
            .iter()
            .all(|f| f["notificationId"] != offline.to_string()),
        "the offline push was delivered again on a later connection: {before:?}"
    );

    // Another user's socket sees its own push first, none of this user's.
    let marker = push("Yours", other.id).await;
    let (_, before) = ws::wait_for_push(&mut stranger, marker, TIMEOUT).await;
    let mine = [offline.to_string(), live.to_string()];
    assert!(
        before
            .iter()
            .all(|f| !mine.iter().any(|id| f["notificationId"] == id.as_str())),
        "another user's socket got this user's pushes: {before:?}"
    );
}
