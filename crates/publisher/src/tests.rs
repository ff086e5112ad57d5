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
use clairon_store::Database;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;

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
    svc: Arc<Publisher>,
    router: Router,
    bus: Arc<dyn EventBus>,
    auth: Arc<AuthContext>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&format!("sqlite://{}/p.db", dir.path().display()), 4)
        .await
        .unwrap();
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
    let svc = Publisher::start(&deps, db).await.unwrap();
    Fixture {
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

#[tokio::test]
async fn only_admins_and_services_may_publish() {
    let f = fixture().await;
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

#[tokio::test]
async fn accepted_notifications_reach_the_bus_in_the_specified_shape() {
    let f = fixture().await;
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

#[tokio::test]
async fn idempotency_key_returns_the_first_answer_and_publishes_once() {
    let f = fixture().await;
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

#[tokio::test]
async fn invalid_input_names_the_field() {
    let f = fixture().await;
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

#[tokio::test]
async fn batches_and_user_actions_are_published() {
    let f = fixture().await;
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
