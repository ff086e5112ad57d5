use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eventually, items, Options, Svc, TestApp, TIMEOUT};

/// Polls `GET /api/logs?{query}` (as admin) until an entry satisfies `pred`.
async fn wait_for_log(app: &TestApp, query: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    eventually(
        &format!("an audit entry for `{query}`"),
        TIMEOUT,
        async || {
            let (status, page) = app
                .get_as_admin(Svc::Logs, &format!("/api/logs?{query}"))
                .await;
            if status != StatusCode::OK {
                return Err(format!("{status}: {page}"));
            }
            let found: Vec<Value> = items(&page).iter().filter(|e| pred(e)).cloned().collect();
            if found.is_empty() {
                Err(page.to_string())
            } else {
                Ok(found)
            }
        },
    )
    .await
}

#[tokio::test]
async fn registrations_and_notification_status_changes_are_audited() {
    let app = TestApp::spawn(Options::new()).await;
    let user = app.register_user().await;
    let uid = user.id.to_string();

    let registered = wait_for_log(
        &app,
        &format!("eventType=UserRegistered&userId={uid}"),
        |e| e["userId"] == uid.as_str() || e["payload"]["userId"] == uid.as_str(),
    )
    .await;
    let entry = &registered[0];
    assert_eq!(entry["eventType"], "UserRegistered", "{entry}");
    assert_eq!(entry["payload"]["email"], user.email.as_str(), "{entry}");
    assert!(
        entry["eventId"].is_string() && entry["occurredAt"].is_string(),
        "{entry}"
    );

    let id = app
        .trigger_notification(&json!({
            "userId": user.id, "type": "PUSH", "title": "Audited", "message": "Look me up",
        }))
        .await;
    app.wait_until_sent(id).await;

    let changes = wait_for_log(
        &app,
        &format!("eventType=NotificationStatusChanged&userId={uid}&limit=200"),
        |e| e["payload"]["notificationId"] == id.to_string() && e["payload"]["status"] == "SENT",
    )
    .await;
    assert!(
        changes
            .iter()
            .all(|e| e["eventType"] == "NotificationStatusChanged"),
        "{changes:?}"
    );

    // The filter filters: no other event type comes back.
    let (_, page) = app
        .get_as_admin(Svc::Logs, "/api/logs?eventType=UserRegistered&limit=200")
        .await;
    assert!(
        items(&page)
            .iter()
            .all(|e| e["eventType"] == "UserRegistered"),
        "{page}"
    );
}
