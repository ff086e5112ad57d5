use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    helpers::{expect_problem, items, json_of, unique_email, Options, Svc, TestApp},
    ws::{self, TokenIn},
};

/// Sends a request with an optional bearer token and optional JSON body.
async fn call(
    app: &TestApp,
    method: Method,
    svc: Svc,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut req = app.client().request(method.clone(), app.url(svc, path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn some_notification(user_id: Uuid) -> Value {
    json!({"userId": user_id, "type": "PUSH", "title": "Hi", "message": "Just checking"})
}

#[tokio::test]
async fn users_see_only_their_own_notifications() {
    let app = TestApp::spawn(Options::new()).await;
    let alice = app.register_user().await;
    let bob = app.register_user().await;
    let for_alice = app.trigger_notification(&some_notification(alice.id)).await;
    let for_bob = app.trigger_notification(&some_notification(bob.id)).await;
    app.wait_until_sent(for_alice).await;
    app.wait_until_sent(for_bob).await;

    let (status, own) = json_of(app.get_notification(&alice.token, for_alice).await).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the owner reads their notification: {own}"
    );

    let resp = app.get_notification(&bob.token, for_alice).await;
    let status = resp.status();
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN,
        "another user reading Alice's notification got {status}"
    );
    let path = format!("/api/notifications/{for_alice}/read");
    let status = call(
        &app,
        Method::POST,
        Svc::Notifications,
        &path,
        Some(&bob.token),
        None,
    )
    .await
    .status();
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN,
        "another user marking Alice's notification read got {status}"
    );

    let cases = [
        (&alice, for_alice, &bob, for_bob),
        (&bob, for_bob, &alice, for_alice),
    ];
    for (user, mine, other, theirs) in cases {
        // Their own list holds their notification and nobody else's.
        let page = app.list_notifications(&user.token, "limit=200").await;
        let list = items(&page);
        assert!(
            list.iter().all(|n| n["userId"] == user.id.to_string()),
            "{} sees someone else's notifications: {page}",
            user.email
        );
        assert!(
            list.iter().any(|n| n["notificationId"] == mine.to_string()),
            "{page}"
        );
        assert!(
            list.iter()
                .all(|n| n["notificationId"] != theirs.to_string()),
            "{page}"
        );

        // Asking for the other user's is refused or still shows only their own.
        let query = format!("/api/notifications?limit=200&userId={}", other.id);
        let resp = call(
            &app,
            Method::GET,
            Svc::Notifications,
            &query,
            Some(&user.token),
            None,
        )
        .await;
        let (status, page) = json_of(resp).await;
        if status != StatusCode::FORBIDDEN {
            assert_eq!(status, StatusCode::OK, "{query}: {page}");
            assert!(
                items(&page)
                    .iter()
                    .all(|n| n["userId"] == user.id.to_string()),
                "{} listed another user's notifications with {query}: {page}",
                user.email
            );
        }
    }
}

#[tokio::test]
async fn plain_users_cannot_publish_events_or_read_admin_data() {
    let app = TestApp::spawn(Options::new()).await;
    let user = app.register_user().await;
    let t = Some(user.token.as_str());

    let body = some_notification(user.id);
    let checks: [(Method, Svc, &str, Option<&Value>); 5] = [
        (
            Method::POST,
            Svc::Events,
            "/api/events/notifications",
            Some(&body),
        ),
        (Method::GET, Svc::Logs, "/api/logs", None),
        (Method::GET, Svc::Logs, "/api/logs/stats", None),
        (Method::GET, Svc::Users, "/api/users", None),
        (
            Method::GET,
            Svc::Notifications,
            "/api/notifications/dead-letters",
            None,
        ),
    ];
    for (method, svc, path, body) in checks {
        let what = format!("{method} {path} as a USER");
        expect_problem(
            call(&app, method, svc, path, t, body).await,
            StatusCode::FORBIDDEN,
            &what,
        )
        .await;
    }
    // The same user may read themselves.
    let resp = call(&app, Method::GET, Svc::Users, "/api/users/me", t, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn missing_tampered_forged_and_revoked_tokens_get_401() {
    let app = TestApp::spawn(Options::new()).await;
    let user = app.register_user().await;

    let protected: [(Method, Svc, &str); 4] = [
        (Method::GET, Svc::Users, "/api/users/me"),
        (Method::GET, Svc::Notifications, "/api/notifications"),
        (Method::GET, Svc::Logs, "/api/logs"),
        (Method::POST, Svc::Events, "/api/events/notifications"),
    ];
    let body = some_notification(user.id);
    for (method, svc, path) in &protected {
        let b = (*method == Method::POST).then_some(&body);
        let what = format!("{method} {path} without a token");
        expect_problem(
            call(&app, method.clone(), *svc, path, None, b).await,
            StatusCode::UNAUTHORIZED,
            &what,
        )
        .await;
    }

    let me = |token: String| {
        let app = &app;
        async move {
            call(
                app,
                Method::GET,
                Svc::Users,
                "/api/users/me",
                Some(&token),
                None,
            )
            .await
        }
    };
    assert_eq!(me(user.token.clone()).await.status(), StatusCode::OK);

    // One character flipped in the middle of the signature.
    let mut parts: Vec<String> = user.token.split('.').map(str::to_owned).collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {}", user.token);
    let sig = &mut parts[2];
    let mid = sig.len() / 2;
    let flipped = if &sig[mid..=mid] == "A" { "B" } else { "A" };
    sig.replace_range(mid..=mid, flipped);
    expect_problem(
        me(parts.join(".")).await,
        StatusCode::UNAUTHORIZED,
        "a tampered signature",
    )
    .await;

    // An ADMIN payload carrying the USER token's signature.
    let admin_like = app.mint_token("ADMIN", &user.id.to_string(), 600);
    let forged = format!(
        "{}.{}.{}",
        admin_like.split('.').next().unwrap_or_default(),
        admin_like.split('.').nth(1).unwrap_or_default(),
        user.token.split('.').nth(2).unwrap_or_default()
    );
    let resp = call(
        &app,
        Method::GET,
        Svc::Logs,
        "/api/logs",
        Some(&forged),
        None,
    )
    .await;
    expect_problem(
        resp,
        StatusCode::UNAUTHORIZED,
        "an ADMIN payload with a USER signature",
    )
    .await;

    // A well-formed token signed with another secret.
    let other_secret = "another-secret-that-is-long-enough-0123456789";
    let foreign =
        app.mint_token_with_secret("ADMIN", &user.id.to_string(), 600, Some(other_secret));
    let resp = call(
        &app,
        Method::GET,
        Svc::Logs,
        "/api/logs",
        Some(&foreign),
        None,
    )
    .await;
    expect_problem(
        resp,
        StatusCode::UNAUTHORIZED,
        "a token signed with another secret",
    )
    .await;

    expect_problem(
        me("not-a-jwt".into()).await,
        StatusCode::UNAUTHORIZED,
        "garbage",
    )
    .await;
    assert_eq!(
        ws::try_connect(&app, None, TokenIn::Query).await.err(),
        Some(StatusCode::UNAUTHORIZED),
        "/ws without a token"
    );

    // Wrong password and unknown email look the same.
    expect_problem(
        app.login_response(&user.email, "wrong password!").await,
        StatusCode::UNAUTHORIZED,
        "a wrong password",
    )
    .await;
    expect_problem(
        app.login_response(&unique_email(), "whatever123").await,
        StatusCode::UNAUTHORIZED,
        "an unknown email",
    )
    .await;

    // Logout revokes the token, here and on the WebSocket; a new login works.
    let resp = call(
        &app,
        Method::POST,
        Svc::Users,
        "/api/users/logout",
        Some(&user.token),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "logout");
    expect_problem(
        me(user.token.clone()).await,
        StatusCode::UNAUTHORIZED,
        "a token used after logout",
    )
    .await;
    assert_eq!(
        ws::try_connect(&app, Some(&user.token), TokenIn::Query)
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED),
        "/ws with a revoked token"
    );
    let fresh = app.login(&user.email, &user.password).await;
    assert_eq!(
        me(fresh).await.status(),
        StatusCode::OK,
        "a new login after logout"
    );
}

#[tokio::test]
async fn an_expired_token_gets_401() {
    let app = TestApp::spawn(Options::new()).await;
    let user = app.register_user().await;
    let short = app.mint_token("USER", &user.id.to_string(), 1);
    let me = async || {
        app.client()
            .get(app.url(Svc::Users, "/api/users/me"))
            .bearer_auth(&short)
            .send()
            .await
            .expect("GET /api/users/me")
    };
    assert_eq!(
        me().await.status(),
        StatusCode::OK,
        "a freshly minted token works"
    );
    // A 1 s lifetime plus the verifier's 5 s leeway.
    tokio::time::sleep(Duration::from_secs(7)).await;
    expect_problem(me().await, StatusCode::UNAUTHORIZED, "an expired token").await;
}

#[tokio::test]
async fn registering_a_taken_email_in_another_case_is_a_conflict() {
    let app = TestApp::spawn(Options::new()).await;
    let local = format!("Grace.{}", Uuid::new_v4().simple());
    let register = |email: String| {
        let app = &app;
        async move {
            app.register(&json!({
                "email": email, "password": "correct horse battery", "firstName": "Grace", "lastName": "Hopper",
            }))
            .await
        }
    };
    assert_eq!(
        register(format!("{local}@Example.com")).await.status(),
        StatusCode::CREATED
    );
    expect_problem(
        register(format!("{}@EXAMPLE.COM", local.to_lowercase())).await,
        StatusCode::CONFLICT,
        "the same email in another case",
    )
    .await;
}

#[tokio::test]
async fn bad_bodies_get_problem_details() {
    let app = TestApp::spawn(Options::new()).await;
    let url = app.url(Svc::Users, "/api/users/register");

    // Over 1 MiB.
    let big = json!({
        "email": unique_email(), "password": "correct horse battery",
        "firstName": "x".repeat(1024 * 1024 + 10), "lastName": "Big",
    });
    // A connection of its own: the server answers before reading the whole
    // body and then closes, which a pooled connection would meet as a broken
    // pipe on the next request.
    let once = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client");
    let resp = once
        .post(&url)
        .json(&big)
        .send()
        .await
        .expect("an oversized POST");
    expect_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "a body over 1 MiB").await;

    let resp = app
        .client()
        .post(&url)
        .header("Content-Type", "application/json")
        .body(r#"{"email": "a@b.c", "password": "#)
        .send()
        .await
        .expect("a malformed POST");
    expect_problem(resp, StatusCode::BAD_REQUEST, "malformed JSON").await;

    let cases = [
        (
            json!({"email": unique_email(), "firstName": "No", "lastName": "Password"}),
            "password",
        ),
        (
            json!({"email": "not-an-email", "password": "correct horse battery", "firstName": "A", "lastName": "B"}),
            "email",
        ),
        (
            json!({"email": unique_email(), "password": "short", "firstName": "A", "lastName": "B"}),
            "password",
        ),
        (
            json!({"email": unique_email(), "password": "correct horse battery", "firstName": "A", "lastName": "B", "phoneNumber": "12"}),
            "phoneNumber",
        ),
    ];
    for (body, field) in cases {
        let what = format!("registering {body}");
        let problem = expect_problem(
            app.register(&body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            &what,
        )
        .await;
        let named = problem["errors"]
            .as_array()
            .is_some_and(|errors| errors.iter().any(|e| e["field"] == field));
        assert!(
            named,
            "{what}: the problem should name `{field}` in `errors`: {problem}"
        );
    }

    // An unknown address is a problem too.
    let resp = app
        .client()
        .get(app.url(Svc::Users, "/api/nothing-here"))
        .send()
        .await
        .expect("GET");
    expect_problem(resp, StatusCode::NOT_FOUND, "an unknown path").await;
}
