use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{Request, StatusCode},
    Router,
};
use clairon_auth::{AuthContext, Revocations, Role, Tokens};
use clairon_bus::{embedded::EmbeddedBus, EventBus};
use clairon_events::headers;
use clairon_http::ServiceDeps;
use clairon_store::{
    both_backends,
    testing::{fresh_database, TestDatabase},
    Backend,
};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;

both_backends!(
    only_admins_and_services_may_publish,
    accepted_notifications_reach_the_bus_in_the_specified_shape,
    idempotency_key_returns_the_first_answer_and_publishes_once,
    invalid_input_names_the_field,
    batches_and_user_actions_are_published,
    concurrent_repeats_of_a_key_publish_once,
    values_at_their_limits_are_stored,
    long_principals_still_get_idempotency,
    events_carry_the_requests_trace,
);

struct NoRevocations;

#[async_trait::async_trait]
impl Revocations for NoRevocations {
    async fn is_revoked(&self, _: &str) -> anyhow::Result<bool> {
        Ok(false)
    }
    async fn revoke(&self, _: &str, _: i64) -> anyhow::Result<()> {
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    _db: TestDatabase,
    svc: Arc<Publisher>,
    router: Router,
    bus: Arc<dyn EventBus>,
    auth: Arc<AuthContext>,
}

async fn fixture(backend: Backend) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(backend).await;
    let bus: Arc<dyn EventBus> = Arc::new(
        EmbeddedBus::open(&dir.path().join("bus.db"), 2)
            .await
            .unwrap(),
    );
    let auth = Arc::new(AuthContext {
        tokens: Tokens::new(&[1u8; 32], Duration::from_secs(60)).unwrap(),
        revocations: Arc::new(NoRevocations),
    });
    let deps = ServiceDeps {
        bus: bus.clone(),
        auth: auth.clone(),
        cancel: tokio_util::sync::CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        retry: Default::default(),
    };
    let svc = Publisher::start(&deps, db.db.clone()).await.unwrap();
    Fixture {
        _db: db,
        router: svc.router(),
        svc,
        bus,
        auth,
        _dir: dir,
    }
}

impl Fixture {
    fn token(&self, role: Role) -> String {
        self.auth.tokens.issue("caller", role).unwrap().token
    }

    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut req = Request::post(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let res = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn published(&self, topic: &str) -> Vec<clairon_bus::Record> {
        while self
            .svc
            .outbox
            .relay_once(&self.svc.db, &*self.bus)
            .await
            .unwrap()
            > 0
        {}
        let mut sub = self.bus.subscribe("t", &[topic.to_owned()]).await.unwrap();
        sub.poll(100, Duration::from_millis(50)).await.unwrap()
    }
}

fn sample() -> Value {
    json!({"userId": uuid::Uuid::new_v4(), "type": "EMAIL", "title": "Hello", "message": "World", "recipient": "a@b.c"})
}

async fn only_admins_and_services_may_publish(backend: Backend) {
    let f = fixture(backend).await;
    let (s, body) = f
        .post("/api/events/notifications", None, None, sample())
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let user = f.token(Role::User);
    let (s, _) = f
        .post("/api/events/notifications", Some(&user), None, sample())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let svc = f.token(Role::Service);
    let (s, _) = f
        .post("/api/events/notifications", Some(&svc), None, sample())
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(f.published("notification-triggered").await.len() == 1);
}

async fn accepted_notifications_reach_the_bus_in_the_specified_shape(backend: Backend) {
    let f = fixture(backend).await;
    let admin = f.token(Role::Admin);
    let mut body = sample();
    body["timestamp"] = json!("2024-01-01T10:00:00");
    let (s, answer) = f
        .post(
            "/api/events/notifications",
            Some(&admin),
            None,
            body.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let recs = f.published("notification-triggered").await;
    assert_eq!(recs.len(), 1);
    let payload: Value = serde_json::from_slice(&recs[0].payload).unwrap();
    assert_eq!(payload["notificationId"], answer["notificationId"]);
    assert_eq!(payload["userId"], body["userId"]);
    assert_eq!(payload["type"], "EMAIL");
    assert_eq!(payload["timestamp"], "2024-01-01T10:00:00.000Z");
    assert_eq!(recs[0].key, body["userId"].as_str().unwrap());
    assert_eq!(
        recs[0].header(headers::EVENT_TYPE),
        Some("NotificationTriggered")
    );
    assert!(recs[0]
        .header(headers::TRACEPARENT)
        .unwrap()
        .starts_with("00-"));
}

async fn idempotency_key_returns_the_first_answer_and_publishes_once(backend: Backend) {
    let f = fixture(backend).await;
    let admin = f.token(Role::Admin);
    let body = sample();
    let (s1, a1) = f
        .post(
            "/api/events/notifications",
            Some(&admin),
            Some("k-1"),
            body.clone(),
        )
        .await;
    let (s2, a2) = f
        .post(
            "/api/events/notifications",
            Some(&admin),
            Some("k-1"),
            body.clone(),
        )
        .await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(a1, a2);
    assert_eq!(f.published("notification-triggered").await.len(), 1);

    let (s3, problem) = f
        .post(
            "/api/events/notifications",
            Some(&admin),
            Some("k-1"),
            sample(),
        )
        .await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
}

async fn invalid_input_names_the_field(backend: Backend) {
    let f = fixture(backend).await;
    let admin = f.token(Role::Admin);
    let (s, p) = f
        .post(
            "/api/events/notifications",
            Some(&admin),
            None,
            json!({"userId": "nope", "type": "EMAIL", "title": "t", "message": "m"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["errors"][0]["field"], "userId");
    let (s, p) = f
        .post(
            "/api/events/notifications",
            Some(&admin),
            None,
            json!({"userId": uuid::Uuid::new_v4(), "type": "FAX", "title": "t", "message": "m"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["errors"][0]["field"], "type");
    let mut bad = sample();
    bad["title"] = json!("  ");
    let (s, p) = f
        .post(
            "/api/events/notifications/batch",
            Some(&admin),
            None,
            json!({"notifications": [sample(), bad]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["errors"][0]["field"], "notifications[1].title");
    assert!(f.published("notification-triggered").await.is_empty());
}

async fn batches_and_user_actions_are_published(backend: Backend) {
    let f = fixture(backend).await;
    let admin = f.token(Role::Admin);
    let (s, a) = f
        .post(
            "/api/events/notifications/batch",
            Some(&admin),
            None,
            json!({"notifications": [sample(), sample(), sample()]}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(a["notificationIds"].as_array().unwrap().len(), 3);
    assert_eq!(f.published("notification-triggered").await.len(), 3);

    let (s, a) = f
        .post(
            "/api/events/user-actions",
            Some(&admin),
            None,
            json!({"userId": uuid::Uuid::new_v4(), "actionType": "LOGIN", "actionDetails": "from the API"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let recs = f.published("user-action-performed").await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].header(headers::EVENT_ID), a["eventId"].as_str());
}

async fn concurrent_repeats_of_a_key_publish_once(backend: Backend) {
    let f = fixture(backend).await;
    let admin = f.token(Role::Admin);
    let body = sample();
    let call = || {
        f.post(
            "/api/events/notifications",
            Some(&admin),
            Some("same-key"),
            body.clone(),
        )
    };
    let (a, b, c) = tokio::join!(call(), call(), call());
    let answers = [a, b, c];
    for (status, answer) in &answers {
        // A repeat racing the first either waits for it (MySQL row lock) and
        // replays its answer, or is told to retry while it is in flight.
        assert!(
            *status == StatusCode::ACCEPTED || *status == StatusCode::CONFLICT,
            "{status}: {answer}"
        );
    }
    let accepted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .map(|(_, a)| a)
        .collect();
    assert!(!accepted.is_empty());
    assert!(accepted.iter().all(|a| *a == accepted[0]));
    assert_eq!(f.published("notification-triggered").await.len(), 1);

    // Keys belong to their caller and are compared exactly (case included).
    let other = f.auth.tokens.issue("another", Role::Service).unwrap().token;
    for (token, key) in [(&other, "same-key"), (&admin, "SAME-KEY")] {
        let (s, a) = f
            .post(
                "/api/events/notifications",
                Some(token),
                Some(key),
                sample(),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{key}: {a}");
    }
}

/// The longest values validation lets through fit their columns, in
/// four-byte characters too.
async fn values_at_their_limits_are_stored(backend: Backend) {
    let f = fixture(backend).await;
    let admin = f.token(Role::Admin);
    let mut body = sample();
    body["title"] = json!("🎉".repeat(200));
    body["message"] = json!("🎉".repeat(10_000));
    body["recipient"] = json!("r".repeat(320));
    let key = "k".repeat(255);
    let (s, a) = f
        .post(
            "/api/events/notifications",
            Some(&admin),
            Some(&key),
            body.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    let (s, again) = f
        .post("/api/events/notifications", Some(&admin), Some(&key), body)
        .await;
    assert_eq!((s, &again), (StatusCode::ACCEPTED, &a));
    let recs = f.published("notification-triggered").await;
    assert_eq!(recs.len(), 1);
    let payload: Value = serde_json::from_slice(&recs[0].payload).unwrap();
    assert_eq!(payload["message"].as_str().unwrap().chars().count(), 10_000);

    // The largest batch: its stored answer holds 500 ids.
    let batch: Vec<Value> = (0..500).map(|_| sample()).collect();
    let call = |k: &'static str| {
        f.post(
            "/api/events/notifications/batch",
            Some(&admin),
            Some(k),
            json!({ "notifications": batch }),
        )
    };
    let (s, first) = call("batch").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(first["notificationIds"].as_array().unwrap().len(), 500);
    assert_eq!(call("batch").await, (StatusCode::ACCEPTED, first));
}

async fn long_principals_still_get_idempotency(backend: Backend) {
    let f = fixture(backend).await;
    let long = f
        .auth
        .tokens
        .issue(&"s".repeat(300), Role::Service)
        .unwrap()
        .token;
    let body = sample();
    let (s1, a1) = f
        .post(
            "/api/events/notifications",
            Some(&long),
            Some("k"),
            body.clone(),
        )
        .await;
    let (s2, a2) = f
        .post("/api/events/notifications", Some(&long), Some("k"), body)
        .await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(a1, a2);
    assert_eq!(f.published("notification-triggered").await.len(), 1);
}

/// The emitted event's `traceparent` continues the incoming request's trace:
/// with tracing on, as a child of the request span; with it off, the caller's
/// context as sent.
async fn events_carry_the_requests_trace(backend: Backend) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let f = fixture(backend).await;
    let admin = f.token(Role::Admin);
    // The layers every listener gets, request span included.
    let app = clairon_http::layers::apply("events", f.router.clone());
    let send = |app: Router, path: &'static str, body: Value| {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {admin}"))
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .body(Body::from(body.to_string()))
            .unwrap();
        async move { app.oneshot(req).await.unwrap().status() }
    };
    let trace_of = |r: &clairon_bus::Record| {
        let tp = r.header(headers::TRACEPARENT).unwrap().to_owned();
        let parts: Vec<String> = tp.split('-').map(str::to_owned).collect();
        assert_eq!(parts.len(), 4, "{tp}");
        (parts[1].clone(), parts[2].clone())
    };

    // Tracing off (no OpenTelemetry layer): the caller's context, unchanged.
    let s = send(app.clone(), "/api/events/notifications", sample()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let recs = f.published("notification-triggered").await;
    assert_eq!(trace_of(&recs[0]), (TRACE.to_owned(), PARENT.to_owned()));

    // Tracing on: same trace, parent = the request's own span.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // Keep two dispatchers registered: with one, tracing-core rates a call site
    // that a concurrent test (no subscriber) reaches first by that thread's
    // default alone, which disables it on every thread.
    let _other = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let default = tracing::subscriber::set_default(subscriber);
    let s = send(app.clone(), "/api/events/notifications", sample()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let s = send(
        app.clone(),
        "/api/events/user-actions",
        json!({"userId": uuid::Uuid::new_v4(), "actionType": "LOGIN", "actionDetails": "x"}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    drop(default);
    // Both events so far (partitions are read in any order): the one sent with
    // tracing off names the caller's span, the other the request span.
    let recs = f.published("notification-triggered").await;
    assert_eq!(recs.len(), 2);
    let ids: Vec<(String, String)> = recs.iter().map(trace_of).collect();
    assert!(ids.iter().all(|(trace, _)| trace == TRACE), "{ids:?}");
    assert_eq!(
        ids.iter().filter(|(_, span)| span == PARENT).count(),
        1,
        "the traced event's parent is the request span: {ids:?}"
    );
    let recs = f.published("user-action-performed").await;
    let (trace, span) = trace_of(&recs[0]);
    assert_eq!(trace, TRACE);
    assert_ne!(span, PARENT);
}
