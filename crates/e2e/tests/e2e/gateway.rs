use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{json_of, unique_email, uuid_field, Options, Svc, TestApp};

/// The web listener serves the same `/api/...` paths as the services.
#[tokio::test]
async fn the_web_gateway_serves_the_whole_api() {
    let app = TestApp::spawn(Options::new()).await;
    let web = |path: &str| app.url(Svc::Web, path);
    let client = app.client();

    let email = unique_email();
    let resp = client
        .post(web("/api/users/register"))
        .json(&json!({"email": email, "password": "correct horse battery", "firstName": "Web", "lastName": "User"}))
        .send()
        .await
        .expect("register through the gateway");
    let (status, user) = json_of(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let user_id = uuid_field(&user, "userId");

    let resp = client
        .post(web("/api/users/login"))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .expect("login through the gateway");
    let (status, login) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let token = login["accessToken"]
        .as_str()
        .expect("an accessToken")
        .to_owned();

    let (status, me) = json_of(
        client
            .get(web("/api/users/me"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(uuid_field(&me, "userId"), user_id);

    // Publish and read back through the gateway too.
    let admin = app.admin_token().await;
    let resp = client
        .post(web("/api/events/notifications"))
        .bearer_auth(&admin)
        .json(&json!({"userId": user_id, "type": "PUSH", "title": "Via web", "message": "Gateway"}))
        .send()
        .await
        .expect("publish through the gateway");
    let (status, answer) = json_of(resp).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = uuid_field(&answer, "notificationId");
    app.wait_until_sent(id).await;

    let path = format!("/api/notifications/{id}");
    let (status, n) = json_of(
        client
            .get(web(&path))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{n}");
    assert_eq!(n["status"], "SENT", "{n}");

    let (status, logs) = json_of(
        client
            .get(web("/api/logs?eventType=UserRegistered"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("logs"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{logs}");
}
