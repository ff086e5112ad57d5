use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    helpers::{
        eventually, items, json_of, unique_phone, uuid_field, Options, Svc, TestApp, TestUser,
        TIMEOUT,
    },
    sms::SmsSink,
};

fn sms_to(user: &TestUser, to: &str, title: &str) -> Value {
    json!({
        "userId": user.id,
        "type": "SMS",
        "title": title,
        "message": "Dead-letter test",
        "recipient": to,
    })
}

fn statuses(n: &Value) -> Vec<String> {
    n["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["status"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_dead_lettered(app: &TestApp, id: Uuid) -> Value {
    let id = id.to_string();
    wait_dead_letter(app, &format!("{id} in the dead-letter list"), |d| {
        d.to_string().contains(&id)
    })
    .await
}

/// The first dead letter `matches` picks, once it is listed.
async fn wait_dead_letter(app: &TestApp, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    eventually(what, TIMEOUT, async || {
        let (status, page) = app
            .get_as_admin(
                Svc::Notifications,
                "/api/notifications/dead-letters?limit=200",
            )
            .await;
        if status != StatusCode::OK {
            return Err(format!("{status}: {page}"));
        }
        items(&page)
            .iter()
            .find(|d| matches(d))
            .cloned()
            .ok_or_else(|| page.to_string())
    })
    .await
}

#[tokio::test]
async fn a_poison_notification_is_dead_lettered_while_the_next_one_is_sent() {
    let sink = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sink).retries(2, 100, 500)).await;
    let user = app.register_user().await;
    let poison_to = unique_phone();
    sink.answer_for(&poison_to, StatusCode::INTERNAL_SERVER_ERROR);

    let poison = app
        .trigger_notification(&sms_to(&user, &poison_to, "Poison"))
        .await;
    let good = app
        .trigger_notification(&sms_to(&user, &unique_phone(), "Good"))
        .await;

    sink.wait_for(good).await;
    app.wait_until_sent(good).await;
    let dead = app.wait_for_status(poison, |s| s == "DEAD", TIMEOUT).await;
    assert!(
        dead["lastError"].is_string(),
        "a DEAD notification says why: {dead}"
    );
    assert_eq!(dead["attempts"], 2, "CLAIRON_RETRY_MAX_ATTEMPTS=2: {dead}");
    let history = statuses(&dead);
    assert!(
        history.contains(&"FAILED".to_owned()),
        "the history records the failed attempt: {dead}"
    );
    assert_eq!(history.last().map(String::as_str), Some("DEAD"), "{dead}");

    let tries = sink.requests_for(poison);
    assert_eq!(
        tries.len(),
        2,
        "CLAIRON_RETRY_MAX_ATTEMPTS=2 means two calls to the provider, got {}",
        tries.len()
    );
    wait_dead_lettered(&app, poison).await;

    // A plain user may not read the dead-letter list.
    let resp = app
        .client()
        .get(app.url(Svc::Notifications, "/api/notifications/dead-letters"))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("GET dead-letters");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn provider_errors_are_retried_until_the_sms_is_sent() {
    let sink = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sink).retries(4, 100, 500)).await;
    let user = app.register_user().await;
    sink.fail_next(2);

    let id = app
        .trigger_notification(&sms_to(&user, &unique_phone(), "Flaky"))
        .await;
    sink.wait_for(id).await;
    let sent = app.wait_until_sent(id).await;

    let tries = sink.requests_for(id);
    assert_eq!(tries.len(), 3, "two 500s then a 200: {tries:?}");
    assert!(
        tries
            .iter()
            .all(|r| r.header("Idempotency-Key") == Some(id.to_string().as_str())),
        "every retry carries the same Idempotency-Key: {tries:?}"
    );
    assert_eq!(sent["attempts"], 3, "{sent}");
    assert!(statuses(&sent).contains(&"FAILED".to_owned()), "{sent}");
}

#[tokio::test]
async fn a_client_error_from_the_provider_is_dead_at_once() {
    let sink = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sink).retries(4, 100, 500)).await;
    let user = app.register_user().await;
    let bad_to = unique_phone();
    sink.answer_for(&bad_to, StatusCode::BAD_REQUEST);

    let id = app
        .trigger_notification(&sms_to(&user, &bad_to, "Rejected"))
        .await;
    app.wait_for_status(id, |s| s == "DEAD", TIMEOUT).await;
    assert_eq!(sink.requests_for(id).len(), 1, "a 400 is not retried");
    wait_dead_lettered(&app, id).await;
}

#[tokio::test]
async fn an_sms_for_a_user_without_a_phone_number_does_not_block_the_next_one() {
    let sink = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sink).retries(2, 100, 500)).await;
    let user = app.register_user_with(None).await;
    let admin = app.admin_token().await;

    let unreachable = json!({
        "userId": user.id,
        "type": "SMS",
        "title": "Nowhere to go",
        "message": "No recipient and no phone number",
    });
    let (status, answer) = json_of(app.trigger(&admin, &unreachable, None).await).await;
    // Refusing it up front is fine; accepting it means it must end DEAD.
    let unreachable_id = match status {
        StatusCode::UNPROCESSABLE_ENTITY => None,
        StatusCode::ACCEPTED => Some(uuid_field(&answer, "notificationId")),
        other => panic!("an SMS with no reachable recipient answered {other}: {answer}"),
    };

    let good = app
        .trigger_notification(&sms_to(&user, &unique_phone(), "Good"))
        .await;
    app.wait_until_sent(good).await;
    if let Some(id) = unreachable_id {
        let dead = app.wait_for_status(id, |s| s == "DEAD", TIMEOUT).await;
        assert!(dead["lastError"].is_string(), "{dead}");
        assert!(
            sink.requests_for(id).is_empty(),
            "nothing can be sent without a number"
        );
        wait_dead_lettered(&app, id).await;
    }
}

#[tokio::test]
async fn a_replayed_dead_letter_is_delivered_once_the_provider_recovers() {
    let sink = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sink).retries(2, 100, 500)).await;
    let user = app.register_user().await;
    let to = unique_phone();
    sink.answer_for(&to, StatusCode::SERVICE_UNAVAILABLE);

    let id = app
        .trigger_notification(&sms_to(&user, &to, "Replay me"))
        .await;
    app.wait_for_status(id, |s| s == "DEAD", TIMEOUT).await;
    let letter = wait_dead_lettered(&app, id).await;
    let letter_id = letter["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a dead letter has an `id`: {letter}"))
        .to_owned();

    sink.accept_all();
    let admin = app.admin_token().await;
    let replay = |token: String| {
        let (app, letter_id) = (&app, &letter_id);
        async move {
            app.client()
                .post(app.url(
                    Svc::Notifications,
                    &format!("/api/notifications/dead-letters/{letter_id}/replay"),
                ))
                .bearer_auth(token)
                .send()
                .await
                .expect("POST replay")
        }
    };
    assert_eq!(
        replay(user.token.clone()).await.status(),
        StatusCode::FORBIDDEN,
        "only an admin replays"
    );
    assert_eq!(replay(admin.clone()).await.status(), StatusCode::ACCEPTED);

    sink.wait_for(id).await;
    app.wait_until_sent(id).await;
    assert_eq!(
        replay(admin).await.status(),
        StatusCode::CONFLICT,
        "a dead letter is replayed once"
    );
}

/// A record nobody can parse, written straight into the embedded event log by
/// another process (as a producer with a bug would): dead-lettered with its
/// reason, and the user's next notification is still delivered.
#[tokio::test]
async fn an_unparseable_record_on_the_log_is_dead_lettered_and_the_consumer_keeps_going() {
    use clairon_bus::{embedded::EmbeddedBus, EventBus, Message};

    let sink = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sink)).await;
    let user = app.register_user().await;
    let bus = EmbeddedBus::open(&app.data_dir().join("bus.db"), 8)
        .await
        .expect("opening the app's event log");
    bus.publish(Message {
        topic: clairon_events::topics::NOTIFICATION_TRIGGERED.to_owned(),
        key: user.id.to_string(),
        headers: vec![],
        payload: b"{\"this is\": not json".to_vec(),
    })
    .await
    .expect("appending a poison record");

    let id = app
        .trigger_notification(&sms_to(&user, &unique_phone(), "after the poison"))
        .await;
    sink.wait_for(id).await;

    let poison = wait_dead_letter(&app, "the poison record in the dead-letter list", |d| {
        d["payload"]
            .as_str()
            .is_some_and(|p| p.contains("not json"))
    })
    .await;
    assert!(
        poison["reason"]
            .as_str()
            .is_some_and(|r| r.contains("invalid")),
        "the reason is kept: {poison}"
    );
    assert!(poison["notificationId"].is_null());
}
