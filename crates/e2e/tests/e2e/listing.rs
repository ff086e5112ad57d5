use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    helpers::{expect_problem, items, json_of, uuid_field, Options, Svc, TestApp},
    sms::SmsSink,
};

#[tokio::test]
async fn a_batch_is_accepted_whole_or_not_at_all() {
    let sink = SmsSink::start().await;
    let app = TestApp::spawn(Options::new().sms(&sink)).await;
    let user = app.register_user().await;
    let admin = app.admin_token().await;
    let url = app.url(Svc::Events, "/api/events/notifications/batch");
    let sms = |title: &str| json!({"userId": user.id, "type": "SMS", "title": title, "message": "batch", "recipient": "+15550009999"});

    // One invalid entry: nothing is published.
    let rejected_id = Uuid::new_v4();
    let mut first = sms("Never sent");
    first["notificationId"] = json!(rejected_id);
    let bad = json!({"notifications": [first, sms("")]});
    let resp = app
        .client()
        .post(&url)
        .bearer_auth(&admin)
        .json(&bad)
        .send()
        .await
        .expect("batch");
    let problem = expect_problem(
        resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a batch with an empty title",
    )
    .await;
    assert!(
        problem["errors"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["field"].as_str().is_some_and(|f| f.contains("title")))),
        "the problem names the bad entry's field: {problem}"
    );

    let good = json!({"notifications": [sms("One"), sms("Two"), sms("Three")]});
    let resp = app
        .client()
        .post(&url)
        .bearer_auth(&admin)
        .json(&good)
        .send()
        .await
        .expect("batch");
    let (status, answer) = json_of(resp).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let ids: Vec<Uuid> = answer["notificationIds"]
        .as_array()
        .unwrap_or_else(|| panic!("no notificationIds: {answer}"))
        .iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .expect("a UUID")
        })
        .collect();
    assert_eq!(ids.len(), 3, "{answer}");
    for id in &ids {
        sink.wait_for(*id).await;
        app.wait_until_sent(*id).await;
    }
    // The batch went out after the rejected one, on the same user's partition.
    assert!(
        sink.requests_for(rejected_id).is_empty(),
        "a rejected batch published {rejected_id}"
    );
    let (status, _) = json_of(app.get_notification(&admin, rejected_id).await).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a rejected batch created {rejected_id}"
    );
}

#[tokio::test]
async fn notification_lists_page_with_a_cursor_and_can_be_marked_read() {
    let app = TestApp::spawn(Options::new()).await;
    let user = app.register_user().await;
    let mut mine = Vec::new();
    for i in 0..5 {
        let id = app
            .trigger_notification(&json!({"userId": user.id, "type": "PUSH", "title": format!("N{i}"), "message": "page me"}))
            .await;
        app.wait_until_sent(id).await;
        mine.push(id.to_string());
    }

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let query = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".to_owned(),
        };
        let page = app.list_notifications(&user.token, &query).await;
        let list = items(&page);
        assert!(list.len() <= 2, "limit=2 gave {}: {page}", list.len());
        seen.extend(
            list.iter()
                .filter_map(|n| n["notificationId"].as_str().map(str::to_owned)),
        );
        match &page["nextCursor"] {
            Value::String(c) => cursor = Some(c.clone()),
            Value::Null => break,
            other => panic!("nextCursor must be a string or null, got {other}"),
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "paging repeated entries: {seen:?}"
    );
    assert!(
        mine.iter().all(|id| unique.contains(id)),
        "paging missed some of {mine:?}: {seen:?}"
    );

    let bad = app
        .client()
        .get(app.url(Svc::Notifications, "/api/notifications?limit=201"))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("GET");
    expect_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "limit=201").await;

    let first = Uuid::parse_str(&mine[0]).expect("a UUID");
    let resp = app
        .client()
        .post(app.url(
            Svc::Notifications,
            &format!("/api/notifications/{first}/read"),
        ))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("POST read");
    let (status, n) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK, "{n}");
    assert_eq!(uuid_field(&n, "notificationId"), first);
    assert!(n["readAt"].is_string(), "marked read: {n}");
}
