use std::{collections::HashSet, sync::Arc, time::Duration};

use async_trait::async_trait;
use axum::{
    body::Body,
    http::{header::AUTHORIZATION, Request, StatusCode},
    Router,
};
use clairon_auth::{AuthContext, Revocations, Role, Tokens};
use clairon_bus::{consumer::RetryPolicy, embedded::EmbeddedBus, EventBus, Message, Record};
use clairon_events::{headers, Envelope, Timestamp, UserRegistered};
use clairon_http::ServiceDeps;
use clairon_store::{
    both_backends,
    testing::{fresh_database, TestDatabase},
    Backend,
};
use serde_json::{json, Value};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use super::*;

struct NothingRevoked;

#[async_trait]
impl Revocations for NothingRevoked {
    async fn is_revoked(&self, _jti: &str) -> anyhow::Result<bool> {
        Ok(false)
    }
    async fn revoke(&self, _jti: &str, _expires_at: i64) -> anyhow::Result<()> {
        Ok(())
    }
}

both_backends!(
    a_record_delivered_twice_is_stored_once,
    dead_letters_are_stored_with_their_reason,
    payloads_that_are_not_json_are_kept_as_text,
    filters_narrow_the_log_and_pages_cover_it_exactly_once,
    bad_parameters_are_422_naming_the_field,
    stats_count_per_minute_and_type,
    only_administrators_read_the_log,
    the_consumer_stores_what_is_published,
    a_dead_letter_outlasts_a_brief_database_outage,
    oversized_records_are_stored,
);

fn auth_context() -> Arc<AuthContext> {
    Arc::new(AuthContext {
        tokens: Tokens::new(&[9u8; 32], Duration::from_secs(3600)).unwrap(),
        revocations: Arc::new(NothingRevoked),
    })
}

struct Fixture {
    _db: TestDatabase,
    audit: Arc<Audit>,
    app: Router,
    admin: String,
}

async fn fixture(backend: Backend) -> Fixture {
    let db = fresh_database(backend).await;
    clairon_store::migrate(&db, SERVICE, &migrations())
        .await
        .unwrap();
    let auth = auth_context();
    let admin = auth.tokens.issue("admin-1", Role::Admin).unwrap().token;
    let audit = Arc::new(Audit {
        db: db.db.clone(),
        auth,
    });
    let app = audit.router();
    Fixture {
        _db: db,
        audit,
        app,
        admin,
    }
}

async fn get(app: &Router, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body)
}

fn rec(topic: &str, offset: u64, key: &str, hs: &[(&str, &str)], payload: &[u8]) -> Record {
    Record {
        topic: topic.into(),
        partition: 0,
        offset,
        key: key.into(),
        headers: hs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        payload: payload.to_vec(),
        timestamp_ms: 1_700_000_000_000,
    }
}

fn ms(s: &str) -> i64 {
    Timestamp::parse(s).unwrap().millis()
}

fn at(millis: i64) -> String {
    Timestamp::from_millis(millis).to_string()
}

async fn a_record_delivered_twice_is_stored_once(backend: Backend) {
    let f = fixture(backend).await;
    let payload = json!({"userId": "u-1", "email": "a@b.c", "timestamp": "2026-01-01T10:00:00Z"});
    let r = rec(
        "user-registered",
        3,
        "u-1",
        &[
            (headers::EVENT_ID, "ev-1"),
            (headers::EVENT_TYPE, "UserRegistered"),
        ],
        payload.to_string().as_bytes(),
    );
    assert!(f.audit.record(&r).await.unwrap());
    assert!(!f.audit.record(&r).await.unwrap());
    // Another group's retry copy of the same record is the same event.
    let mut retry = r.clone();
    retry.topic = "user-registered-retry-1".into();
    retry.offset = 0;
    retry.headers.extend([
        (
            headers::ORIGINAL_TOPIC.to_owned(),
            "user-registered".to_owned(),
        ),
        (headers::ORIGINAL_PARTITION.to_owned(), "0".to_owned()),
        (headers::ORIGINAL_OFFSET.to_owned(), "3".to_owned()),
    ]);
    assert!(!f.audit.record(&retry).await.unwrap());

    let (status, body) = get(&f.app, "/api/logs", Some(&f.admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert_eq!(body["nextCursor"], Value::Null);
    let item = &body["items"][0];
    assert_eq!(item["eventId"], "ev-1");
    assert_eq!(item["eventType"], "UserRegistered");
    assert_eq!(item["topic"], "user-registered");
    assert_eq!(item["partition"], 0);
    assert_eq!(item["offset"], 3);
    assert_eq!(item["key"], "u-1");
    assert_eq!(item["userId"], "u-1");
    assert_eq!(item["payload"], payload);
    assert_eq!(item["headers"][headers::EVENT_ID], "ev-1");
    assert_eq!(item["deadLetter"], false);
    assert_eq!(item["error"], Value::Null);
    assert_eq!(item["occurredAt"], "2026-01-01T10:00:00.000Z");
    assert!(item["recordedAt"].is_string());
}

async fn dead_letters_are_stored_with_their_reason(backend: Backend) {
    let f = fixture(backend).await;
    let payload = br#"{"userId":"u-2","title":"t","timestamp":"2026-01-01T10:00:00Z"}"#;
    let hs = [
        (headers::EVENT_ID, "ev-2"),
        (headers::EVENT_TYPE, "NotificationTriggered"),
    ];
    assert!(f
        .audit
        .record(&rec("notification-triggered", 0, "u-2", &hs, payload))
        .await
        .unwrap());
    let mut dlt_hs = hs.to_vec();
    dlt_hs.push((headers::ERROR, "provider down"));
    let dlt = rec("notification-triggered-dlt", 0, "u-2", &dlt_hs, payload);
    assert!(f.audit.record(&dlt).await.unwrap());
    assert!(!f.audit.record(&dlt).await.unwrap());

    let (_, body) = get(&f.app, "/api/logs", Some(&f.admin)).await;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let dead = items.iter().find(|i| i["deadLetter"] == true).unwrap();
    assert_eq!(dead["topic"], "notification-triggered-dlt");
    assert_eq!(dead["eventId"], "ev-2");
    assert_eq!(dead["eventType"], "NotificationTriggered");
    assert_eq!(dead["error"], "provider down");
    let live = items.iter().find(|i| i["deadLetter"] == false).unwrap();
    assert_eq!(live["error"], Value::Null);
}

async fn payloads_that_are_not_json_are_kept_as_text(backend: Backend) {
    let f = fixture(backend).await;
    let r = rec("user-action-performed", 5, "u-3", &[], b"plain \xfftext");
    assert!(f.audit.record(&r).await.unwrap());
    assert!(!f.audit.record(&r).await.unwrap());
    let (_, body) = get(&f.app, "/api/logs", Some(&f.admin)).await;
    let item = &body["items"][0];
    assert_eq!(item["payload"], "plain \u{fffd}text");
    assert_eq!(item["eventId"], "user-action-performed:0:5");
    assert_eq!(item["eventType"], "UserActionPerformed");
    assert_eq!(item["userId"], "u-3");
    assert_eq!(item["occurredAt"], at(1_700_000_000_000));
    assert_eq!(item["headers"], json!({}));
}

/// 30 records: even ones UserRegistered, odd ones NotificationTriggered, users
/// u0–u2, two per minute from 10:00 (so times tie), a few with search bait.
async fn seed(audit: &Audit) -> i64 {
    let t0 = ms("2026-01-01T10:00:00Z");
    for i in 0..30u64 {
        let (topic, kind) = if i % 2 == 0 {
            ("user-registered", "UserRegistered")
        } else {
            ("notification-triggered", "NotificationTriggered")
        };
        let title = match i {
            7 => "50% off".to_owned(),
            8 => "500 off".to_owned(),
            9 => "50_ off".to_owned(),
            10 => "Hello WORLD".to_owned(),
            _ => format!("item {i}"),
        };
        let payload = json!({
            "userId": format!("u{}", i % 3),
            "title": title,
            "timestamp": at(t0 + (i as i64 / 2) * 60_000),
        });
        let id = format!("ev-{i}");
        let r = rec(
            topic,
            i,
            "key",
            &[(headers::EVENT_ID, &id), (headers::EVENT_TYPE, kind)],
            payload.to_string().as_bytes(),
        );
        assert!(audit.record(&r).await.unwrap());
    }
    t0
}

async fn all_pages(app: &Router, token: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/logs?{query}&cursor={c}"),
            None => format!("/api/logs?{query}"),
        };
        let (status, body) = get(app, &uri, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        items.extend(body["items"].as_array().unwrap().iter().cloned());
        match body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["eventId"].as_str().unwrap().to_owned())
        .collect()
}

async fn filters_narrow_the_log_and_pages_cover_it_exactly_once(backend: Backend) {
    let f = fixture(backend).await;
    let t0 = seed(&f.audit).await;

    let items = all_pages(&f.app, &f.admin, "limit=7").await;
    assert_eq!(items.len(), 30);
    assert_eq!(ids(&items).into_iter().collect::<HashSet<_>>().len(), 30);
    let times: Vec<i64> = items
        .iter()
        .map(|i| ms(i["occurredAt"].as_str().unwrap()))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");

    let users = all_pages(&f.app, &f.admin, "eventType=UserRegistered&limit=4").await;
    assert_eq!(users.len(), 15);
    assert!(users.iter().all(|i| i["eventType"] == "UserRegistered"));

    let u1 = all_pages(&f.app, &f.admin, "userId=u1&limit=3").await;
    assert_eq!(u1.len(), 10);
    assert!(u1.iter().all(|i| i["userId"] == "u1"));

    let both = all_pages(
        &f.app,
        &f.admin,
        "userId=u1&eventType=NotificationTriggered",
    )
    .await;
    assert_eq!(both.len(), 5);

    // Minutes 2, 3 and 4 hold records 4 to 9; `to` is exclusive.
    let range = format!("from={}&to={}", at(t0 + 2 * 60_000), at(t0 + 5 * 60_000));
    let mut in_range = ids(&all_pages(&f.app, &f.admin, &range).await);
    in_range.sort();
    assert_eq!(in_range, ["ev-4", "ev-5", "ev-6", "ev-7", "ev-8", "ev-9"]);

    // Wildcards in the search text are literal; case does not matter.
    assert_eq!(ids(&all_pages(&f.app, &f.admin, "q=50%25").await), ["ev-7"]);
    assert_eq!(ids(&all_pages(&f.app, &f.admin, "q=50_").await), ["ev-9"]);
    assert_eq!(
        ids(&all_pages(&f.app, &f.admin, "q=world").await),
        ["ev-10"]
    );
    assert_eq!(
        ids(&all_pages(&f.app, &f.admin, "q=hello%20WORLD&userId=u1").await),
        ["ev-10"]
    );
    assert!(all_pages(&f.app, &f.admin, "q=nothing-like-this")
        .await
        .is_empty());
}

async fn bad_parameters_are_422_naming_the_field(backend: Backend) {
    let f = fixture(backend).await;
    let cases = [
        ("/api/logs?eventType=Bogus", "eventType"),
        ("/api/logs?from=yesterday", "from"),
        ("/api/logs?to=2026-13-01T00:00:00Z", "to"),
        ("/api/logs?limit=0", "limit"),
        ("/api/logs?limit=ten", "limit"),
        ("/api/logs?cursor=%25%25%25", "cursor"),
        (
            "/api/logs?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "to",
        ),
        ("/api/logs/stats?eventType=Bogus", "eventType"),
        ("/api/logs/stats?from=soon", "from"),
        (
            "/api/logs/stats?from=2026-01-01T00:00:00Z&to=2026-01-08T00:00:01Z",
            "from",
        ),
    ];
    for (uri, field) in cases {
        let (status, body) = get(&f.app, uri, Some(&f.admin)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{uri}: {body}");
    }
    let (_, body) = get(&f.app, "/api/logs?eventType=Bogus", Some(&f.admin)).await;
    let reason = body["errors"][0]["reason"].as_str().unwrap();
    for t in [
        "UserRegistered",
        "NotificationTriggered",
        "UserActionPerformed",
        "NotificationStatusChanged",
        "PushRequested",
        "TokenRevoked",
    ] {
        assert!(reason.contains(t), "{reason}");
    }
    // A week exactly is allowed.
    let (status, _) = get(
        &f.app,
        "/api/logs/stats?from=2026-01-01T00:00:00Z&to=2026-01-08T00:00:00Z",
        Some(&f.admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

async fn stats_count_per_minute_and_type(backend: Backend) {
    let f = fixture(backend).await;
    let t0 = ms("2026-01-01T10:00:00Z");
    let events = [
        ("user-registered", t0 + 10_000),
        ("user-registered", t0 + 59_999),
        ("notification-triggered", t0 + 30_000),
        ("user-registered", t0 + 60_000),
        ("notification-triggered", t0 + 3_600_000),
    ];
    for (i, (topic, t)) in events.iter().enumerate() {
        let payload = json!({"userId": "u", "timestamp": at(*t)}).to_string();
        let r = rec(topic, i as u64, "u", &[], payload.as_bytes());
        assert!(f.audit.record(&r).await.unwrap());
    }
    let window = format!("from={}&to={}", at(t0), at(t0 + 5 * 60_000));
    let (status, body) = get(&f.app, &format!("/api/logs/stats?{window}"), Some(&f.admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["buckets"],
        json!([
            {"minute": "2026-01-01T10:00:00.000Z", "eventType": "NotificationTriggered", "count": 1},
            {"minute": "2026-01-01T10:00:00.000Z", "eventType": "UserRegistered", "count": 2},
            {"minute": "2026-01-01T10:01:00.000Z", "eventType": "UserRegistered", "count": 1},
        ])
    );
    let (_, body) = get(
        &f.app,
        &format!("/api/logs/stats?{window}&eventType=NotificationTriggered"),
        Some(&f.admin),
    )
    .await;
    assert_eq!(body["buckets"].as_array().unwrap().len(), 1);

    // Without a window: the last hour, where a record stamped now falls.
    let (_, body) = get(&f.app, "/api/logs/stats", Some(&f.admin)).await;
    assert!(body["buckets"].as_array().unwrap().is_empty(), "{body}");
    let mut fresh = rec("user-action-performed", 0, "u", &[], b"{}");
    fresh.timestamp_ms = clairon_store::now_ms() - 1_000;
    assert!(f.audit.record(&fresh).await.unwrap());
    let (_, body) = get(&f.app, "/api/logs/stats", Some(&f.admin)).await;
    assert_eq!(body["buckets"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["buckets"][0]["eventType"], "UserActionPerformed");
}

async fn only_administrators_read_the_log(backend: Backend) {
    let f = fixture(backend).await;
    let user = f.audit.auth.tokens.issue("u-9", Role::User).unwrap().token;
    let service = f
        .audit
        .auth
        .tokens
        .issue("svc", Role::Service)
        .unwrap()
        .token;
    for path in ["/api/logs", "/api/logs/stats"] {
        assert_eq!(get(&f.app, path, None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            get(&f.app, path, Some("not-a-token")).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&f.app, path, Some(&user)).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get(&f.app, path, Some(&service)).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(get(&f.app, path, Some(&f.admin)).await.0, StatusCode::OK);
    }
    // Authentication comes before parameter checks, so nothing leaks to strangers.
    assert_eq!(
        get(&f.app, "/api/logs?eventType=Bogus", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn the_consumer_stores_what_is_published(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(
        EmbeddedBus::open(&dir.path().join("bus.db"), 2)
            .await
            .unwrap(),
    );
    let db = fresh_database(backend).await;
    let auth = auth_context();
    let admin = auth.tokens.issue("admin-1", Role::Admin).unwrap().token;
    let deps = ServiceDeps {
        bus: bus.clone(),
        auth,
        cancel: CancellationToken::new(),
        tasks: TaskTracker::new(),
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
        },
    };
    let audit = Audit::start(&deps, db.db.clone()).await.unwrap();
    let app = audit.router();

    let event = UserRegistered {
        user_id: uuid::Uuid::new_v4(),
        email: "ada@example.com".into(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        timestamp: Timestamp::now(),
    };
    let env = Envelope::new(&event, None);
    let event_id = env.header(headers::EVENT_ID).unwrap().to_owned();
    bus.publish(env.clone()).await.unwrap();
    bus.publish(Message {
        topic: "notification-push-dlt".into(),
        key: "k".into(),
        headers: vec![(headers::ERROR.to_owned(), "no socket".to_owned())],
        payload: b"{}".to_vec(),
    })
    .await
    .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let items = loop {
        let (_, body) = get(&app, "/api/logs", Some(&admin)).await;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 2 || tokio::time::Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(items.len(), 2, "{items:?}");
    let stored = items
        .iter()
        .find(|i| i["eventId"] == event_id.as_str())
        .unwrap();
    assert_eq!(stored["eventType"], "UserRegistered");
    assert_eq!(stored["userId"], event.user_id.to_string());
    assert_eq!(stored["payload"]["email"], "ada@example.com");
    let dead = items.iter().find(|i| i["deadLetter"] == true).unwrap();
    assert_eq!(dead["eventType"], "PushRequested");
    assert_eq!(dead["error"], "no socket");

    // A redelivery is absorbed.
    let redelivered = Record {
        topic: env.topic.clone(),
        partition: stored["partition"].as_u64().unwrap() as u32,
        offset: stored["offset"].as_u64().unwrap(),
        key: env.key.clone(),
        headers: env.headers.clone(),
        payload: env.payload.clone(),
        timestamp_ms: 0,
    };
    assert!(!audit.record(&redelivered).await.unwrap());

    deps.cancel.cancel();
    deps.tasks.close();
    tokio::time::timeout(Duration::from_secs(10), deps.tasks.wait())
        .await
        .expect("the consumer stops on cancel");
}

/// Through the shared runner: a dead letter that cannot be stored yet waits in
/// its topic (never forwarded, so never filed under its original's position)
/// and is stored once the database is back.
async fn a_dead_letter_outlasts_a_brief_database_outage(backend: Backend) {
    let f = fixture(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(
        EmbeddedBus::open(&dir.path().join("bus.db"), 1)
            .await
            .unwrap(),
    );
    let pool = f.audit.db.pool.clone();
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_away")
        .execute(&pool)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let spec = ConsumerSpec::new(
        CONSUMER_GROUP,
        &["notification-push-dlt"],
        RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        },
    );
    let handler: Arc<dyn Handler> = Arc::new(Consumer {
        audit: f.audit.clone(),
    });
    let runner = tokio::spawn(consumer::run(bus.clone(), spec, handler, cancel.clone()));
    bus.publish(Message {
        topic: "notification-push-dlt".into(),
        key: "u".into(),
        headers: vec![
            (headers::ERROR.to_owned(), "gone".to_owned()),
            (
                headers::ORIGINAL_TOPIC.to_owned(),
                "notification-push".to_owned(),
            ),
        ],
        payload: b"{}".to_vec(),
    })
    .await
    .unwrap();
    // Longer than the runner's whole retry budget would last.
    tokio::time::sleep(Duration::from_millis(700)).await;
    sqlx::query("ALTER TABLE audit_events_away RENAME TO audit_events")
        .execute(&pool)
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let items = loop {
        let (_, body) = get(&f.app, "/api/logs", Some(&f.admin)).await;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        if !items.is_empty() || tokio::time::Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["topic"], "notification-push-dlt");
    assert_eq!(items[0]["deadLetter"], true);
    cancel.cancel();
    runner.await.unwrap().unwrap();
    // Nothing went to a retry or dead-letter topic.
    let overview = bus.describe().await.unwrap();
    assert_eq!(overview.topics_with_records(), ["notification-push-dlt"]);
}

/// Every value is cut to its column, so MySQL in strict mode stores what
/// SQLite stores.
async fn oversized_records_are_stored(backend: Backend) {
    let f = fixture(backend).await;
    let long_id = "é".repeat(300);
    let reason = "🎉".repeat(10_000);
    let mut r = rec(
        "notification-triggered-dlt",
        1,
        &"k".repeat(70_000),
        &[(headers::EVENT_ID, &long_id), (headers::ERROR, &reason)],
        format!(
            "{{\"userId\":\"{}\",\"message\":\"{}\"}}",
            "u".repeat(100),
            "m".repeat(1_500_000)
        )
        .as_bytes(),
    );
    assert!(f.audit.record(&r).await.unwrap());
    // Not JSON: stored as a JSON string, escaped, up to the payload limit.
    r.offset = 2;
    r.headers[0].1 = "ev-binary".into();
    r.payload = vec![1u8; 2 * 1024 * 1024];
    assert!(f.audit.record(&r).await.unwrap());
    r.payload = vec![1u8; 2 * 1024 * 1024 + 1];
    r.headers[0].1 = "ev-binary-2".into();
    assert!(f.audit.record(&r).await.unwrap());

    let (status, body) = get(&f.app, "/api/logs?limit=10", Some(&f.admin)).await;
    assert_eq!(status, StatusCode::OK);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let first = items
        .iter()
        .find(|i| i["eventId"].as_str().unwrap().starts_with('é'))
        .unwrap();
    assert_eq!(first["eventId"].as_str().unwrap().chars().count(), 128);
    assert_eq!(first["userId"].as_str().unwrap().len(), 64);
    assert_eq!(first["key"].as_str().unwrap().len(), 65_535);
    assert_eq!(first["error"].as_str().unwrap().chars().count(), 4000);
    assert_eq!(
        first["payload"]["message"].as_str().unwrap().len(),
        1_500_000
    );
    let binary = items.iter().find(|i| i["eventId"] == "ev-binary").unwrap();
    assert_eq!(binary["payload"].as_str().unwrap().len(), 2 * 1024 * 1024);
}
