use std::{collections::BTreeSet, sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{header, HeaderMap, Method, Request, StatusCode},
    Router,
};
use clairon_auth::{AuthContext, Revocations, Tokens};
use clairon_bus::{consumer::RetryPolicy, embedded::EmbeddedBus, EventBus, Record};
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

both_backends!(
    registration_answers_the_user_and_publishes_user_registered_through_the_outbox,
    an_email_is_taken_whatever_its_case,
    invalid_registrations_name_every_bad_field,
    login_gives_a_token_and_one_answer_for_every_failure,
    logout_revokes_only_that_token_and_survives_a_restart,
    revocations_made_elsewhere_are_seen_after_the_next_sync,
    expired_revocations_are_pruned,
    profile_updates_change_fields_and_report_only_their_names,
    only_administrators_list_and_read_accounts,
    the_bootstrap_administrator_is_created_once,
    a_configured_administrator_must_follow_the_rules,
    start_relays_in_the_background_and_stops_on_cancel,
    contact_details_for_notifications,
    values_at_their_limits_are_stored,
);

const ADMIN_EMAIL: &str = "root@example.org";
const ADMIN_PASSWORD: &str = "admin password 1";
const TOKEN_TTL: Duration = Duration::from_secs(900);

struct Harness {
    /// Keeps the bus files alive.
    _tmp: tempfile::TempDir,
    /// Keeps the database alive.
    _db: TestDatabase,
    db: Database,
    bus: Arc<EmbeddedBus>,
    deps: ServiceDeps,
    revocations: Arc<SqlRevocations>,
    users: Arc<Users>,
    app: Router,
}

async fn platform(
    backend: Backend,
    tmp: &tempfile::TempDir,
) -> (
    TestDatabase,
    Arc<EmbeddedBus>,
    Arc<SqlRevocations>,
    ServiceDeps,
) {
    let db = fresh_database(backend).await;
    let bus = Arc::new(
        EmbeddedBus::open(&tmp.path().join("bus.db"), 4)
            .await
            .unwrap(),
    );
    let revocations = SqlRevocations::open(db.db.clone()).await.unwrap();
    let deps = ServiceDeps {
        bus: bus.clone(),
        auth: Arc::new(AuthContext {
            tokens: Tokens::new(&[7u8; 32], TOKEN_TTL).unwrap(),
            revocations: revocations.clone(),
        }),
        cancel: CancellationToken::new(),
        tasks: TaskTracker::new(),
        retry: RetryPolicy::default(),
    };
    (db, bus, revocations, deps)
}

fn configured_admin() -> AdminBootstrap {
    AdminBootstrap {
        email: Some(ADMIN_EMAIL.into()),
        password: Some(ADMIN_PASSWORD.into()),
    }
}

/// A service without its background relay, so tests decide when the outbox is
/// published.
async fn harness(backend: Backend) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let (test_db, bus, revocations, deps) = platform(backend, &tmp).await;
    let db = test_db.db.clone();
    let users = Users::open(&deps, db.clone(), configured_admin())
        .await
        .unwrap();
    // Publish the administrator's registration so tests see only their own events.
    assert_eq!(users.outbox.relay_once(&db, &*bus).await.unwrap(), 1);
    let app = users.router();
    Harness {
        _tmp: tmp,
        _db: test_db,
        db,
        bus,
        deps,
        revocations,
        users,
        app,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn register(&self, email: &str, password: &str) -> Value {
        let a = self
            .call(
                Method::POST,
                "/api/users/register",
                None,
                Some(json!({"email": email, "password": password, "firstName": "Ann", "lastName": "Lee"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body
    }

    async fn login(&self, email: &str, password: &str) -> Answer {
        self.call(
            Method::POST,
            "/api/users/login",
            None,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }

    async fn token(&self, email: &str, password: &str) -> String {
        let a = self.login(email, password).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        a.body["accessToken"].as_str().unwrap().to_owned()
    }

    async fn outbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM users_outbox")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn relay(&self) -> usize {
        self.users
            .outbox
            .relay_once(&self.db, &*self.bus)
            .await
            .unwrap()
    }

    /// Every record of `topic` about `user_id`, read by a fresh consumer group.
    async fn events(&self, topic: &str, user_id: &str) -> Vec<Record> {
        read_events(&*self.bus, topic, user_id).await
    }

    async fn accounts(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM users_accounts")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

async fn read_events(bus: &dyn EventBus, topic: &str, user_id: &str) -> Vec<Record> {
    let group = Uuid::new_v4().to_string();
    let mut sub = bus.subscribe(&group, &[topic.to_owned()]).await.unwrap();
    let mut out = Vec::new();
    loop {
        let batch = sub.poll(100, Duration::from_millis(50)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        out.extend(batch.into_iter().filter(|r| r.key == user_id));
    }
    out
}

fn payload(r: &Record) -> Value {
    serde_json::from_slice(&r.payload).unwrap()
}

fn error_fields(body: &Value) -> BTreeSet<String> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {body}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

async fn registration_answers_the_user_and_publishes_user_registered_through_the_outbox(
    backend: Backend,
) {
    let h = harness(backend).await;
    let a = h
        .call(
            Method::POST,
            "/api/users/register",
            None,
            Some(json!({
                "email": " Ann@Example.com ", "password": "correct horse", "firstName": "Ann",
                "lastName": "Lee", "phoneNumber": "+33612345678", "role": "ADMIN"
            })),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let user = a.body;
    let user_id = user["userId"].as_str().unwrap().to_owned();
    assert!(Uuid::parse_str(&user_id).is_ok());
    assert_eq!(
        user,
        json!({
            "userId": user_id, "email": "Ann@Example.com", "firstName": "Ann", "lastName": "Lee",
            "phoneNumber": "+33612345678", "role": "USER",
            "createdAt": user["createdAt"], "updatedAt": user["createdAt"],
        })
    );
    assert!(Timestamp::parse(user["createdAt"].as_str().unwrap()).is_ok());

    // The event waits in the outbox until the relay runs.
    assert_eq!(h.outbox_rows().await, 1);
    assert!(h.events("user-registered", &user_id).await.is_empty());
    assert_eq!(h.relay().await, 1);
    assert_eq!(h.outbox_rows().await, 0);

    let events = h.events("user-registered", &user_id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].header("clairon-event-type"),
        Some("UserRegistered")
    );
    assert_eq!(
        payload(&events[0]),
        json!({
            "userId": user_id, "email": "Ann@Example.com", "firstName": "Ann", "lastName": "Lee",
            "timestamp": user["createdAt"],
        })
    );
}

async fn an_email_is_taken_whatever_its_case(backend: Backend) {
    let h = harness(backend).await;
    h.register("ann@example.com", "correct horse").await;
    let a = h
        .call(
            Method::POST,
            "/api/users/register",
            None,
            Some(json!({"email": "ANN@Example.COM", "password": "other password", "firstName": "A", "lastName": "B"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(a.body["status"], 409);
    assert_eq!(h.accounts().await, 2);
    assert_eq!(
        h.outbox_rows().await,
        1,
        "a refused registration emits nothing"
    );

    // Two racing registrations: the unique key lets exactly one through.
    let body = |email: &str| {
        Some(
            json!({"email": email, "password": "correct horse", "firstName": "B", "lastName": "C"}),
        )
    };
    let (x, y) = tokio::join!(
        h.call(
            Method::POST,
            "/api/users/register",
            None,
            body("bob@example.com")
        ),
        h.call(
            Method::POST,
            "/api/users/register",
            None,
            body("Bob@Example.com")
        ),
    );
    let mut statuses = [x.status.as_u16(), y.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
    assert_eq!(h.accounts().await, 3);
}

async fn invalid_registrations_name_every_bad_field(backend: Backend) {
    let h = harness(backend).await;
    let a = h
        .call(
            Method::POST,
            "/api/users/register",
            None,
            Some(json!({
                "email": "not-an-email", "password": "short", "firstName": " ",
                "lastName": "x".repeat(101), "phoneNumber": "0612345678"
            })),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(
        error_fields(&a.body),
        set(&["email", "password", "firstName", "lastName", "phoneNumber"])
    );

    let a = h
        .call(Method::POST, "/api/users/register", None, Some(json!({})))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_fields(&a.body),
        set(&["email", "password", "firstName", "lastName"])
    );
    assert!(a.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["reason"] == "is required"));

    let a = h
        .call(
            Method::POST,
            "/api/users/register",
            None,
            Some(
                json!({"email": 5, "password": "correct horse", "firstName": "A", "lastName": "B"}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_fields(&a.body), set(&["email"]));

    assert_eq!(h.accounts().await, 1, "only the administrator exists");
    assert_eq!(h.outbox_rows().await, 0);
}

async fn login_gives_a_token_and_one_answer_for_every_failure(backend: Backend) {
    let h = harness(backend).await;
    let user = h.register("ann@example.com", "correct horse").await;
    let user_id = user["userId"].as_str().unwrap();

    let ok = h.login("  ANN@example.com", "correct horse").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(ok.body["tokenType"], "Bearer");
    assert_eq!(ok.body["expiresIn"], TOKEN_TTL.as_secs());
    assert_eq!(ok.body["userId"], user_id);
    assert_eq!(ok.body["role"], "USER");
    let token = ok.body["accessToken"].as_str().unwrap();
    let me = h
        .call(Method::GET, "/api/users/me", Some(token), None)
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body, user);

    let wrong = h.login("ann@example.com", "wrong horse").await;
    let unknown = h.login("nobody@example.com", "correct horse").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.body["detail"], "Email or password is incorrect.");

    // Only the successful login is an action.
    assert_eq!(h.relay().await, 2, "registration and one login");
    let actions = h.events("user-action-performed", user_id).await;
    assert_eq!(actions.len(), 1);
    let p = payload(&actions[0]);
    assert_eq!(p["actionType"], "LOGIN");
    assert_eq!(p["userId"], user_id);
}

async fn logout_revokes_only_that_token_and_survives_a_restart(backend: Backend) {
    let h = harness(backend).await;
    let user = h.register("ann@example.com", "correct horse").await;
    let user_id = user["userId"].as_str().unwrap();
    let token = h.token("ann@example.com", "correct horse").await;
    let other = h.token("ann@example.com", "correct horse").await;

    let a = h.call(Method::POST, "/api/users/logout", None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "logout needs a token");

    let a = h
        .call(Method::POST, "/api/users/logout", Some(&token), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = h
        .call(Method::GET, "/api/users/me", Some(&token), None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.body["detail"],
        "This token has been revoked; log in again."
    );
    let a = h
        .call(Method::POST, "/api/users/logout", Some(&token), None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = h
        .call(Method::GET, "/api/users/me", Some(&other), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "another session stays valid");

    // Another process (or a restart) on the same database sees the revocation.
    let jti = h.deps.auth.tokens.verify(&token).unwrap().jti;
    let reopened = SqlRevocations::open(h.db.clone()).await.unwrap();
    assert!(reopened.is_revoked(&jti).await.unwrap());
    let other_jti = h.deps.auth.tokens.verify(&other).unwrap().jti;
    assert!(!reopened.is_revoked(&other_jti).await.unwrap());

    h.relay().await;
    let kinds: Vec<Value> = h
        .events("user-action-performed", user_id)
        .await
        .iter()
        .map(|r| payload(r)["actionType"].clone())
        .collect();
    assert_eq!(kinds, [json!("LOGIN"), json!("LOGIN"), json!("LOGOUT")]);

    // The revocation went out on its own topic, for processes without the
    // users service: the token's id and expiry, never the token itself.
    let revoked = h.events("token-revoked", user_id).await;
    assert_eq!(revoked.len(), 1, "one event for the one successful logout");
    let claims = h.deps.auth.tokens.verify(&token).unwrap();
    let p = payload(&revoked[0]);
    assert_eq!(p["tokenId"], json!(claims.jti));
    assert_eq!(p["userId"], user_id);
    assert_eq!(
        p["expiresAt"],
        json!(clairon_events::Timestamp::from_millis(claims.exp * 1000).to_string())
    );
    assert_eq!(
        revoked[0].header("clairon-event-type"),
        Some("TokenRevoked")
    );
    assert!(!String::from_utf8_lossy(&revoked[0].payload).contains(&token));
}

async fn revocations_made_elsewhere_are_seen_after_the_next_sync(backend: Backend) {
    let h = harness(backend).await;
    let elsewhere = SqlRevocations::open(h.db.clone()).await.unwrap();
    let exp = clairon_store::now_ms() / 1000 + 600;
    elsewhere.revoke("jti-1", exp).await.unwrap();
    // Force the sync a second would bring.
    h.revocations
        .synced_at
        .store(0, std::sync::atomic::Ordering::Release);
    assert!(h.revocations.is_revoked("jti-1").await.unwrap());
    assert!(!h.revocations.is_revoked("jti-2").await.unwrap());
}

async fn expired_revocations_are_pruned(backend: Backend) {
    let h = harness(backend).await;
    let now = clairon_store::now_ms();
    let r = &h.revocations;
    r.revoke("old", (now - revocations::GRACE_MS - 1_000) / 1000)
        .await
        .unwrap();
    r.revoke("new", now / 1000 + 600).await.unwrap();
    assert!(r.is_revoked("old").await.unwrap());
    assert_eq!(r.prune(now).await.unwrap(), 1);
    assert!(!r.is_revoked("old").await.unwrap());
    assert!(r.is_revoked("new").await.unwrap());
    let left: Vec<String> = sqlx::query_scalar("SELECT jti FROM users_revoked_tokens")
        .fetch_all(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(left, ["new"]);
}

async fn profile_updates_change_fields_and_report_only_their_names(backend: Backend) {
    let h = harness(backend).await;
    let reg = h
        .call(
            Method::POST,
            "/api/users/register",
            None,
            Some(
                json!({"email": "ann@example.com", "password": "correct horse", "firstName": "Ann",
                        "lastName": "Lee", "phoneNumber": "+33612345678"}),
            ),
        )
        .await;
    assert_eq!(reg.status, StatusCode::CREATED);
    let user_id = reg.body["userId"].as_str().unwrap().to_owned();
    let token = h.token("ann@example.com", "correct horse").await;
    h.relay().await;

    let bad = h
        .call(
            Method::PUT,
            "/api/users/me",
            Some(&token),
            Some(json!({"firstName": "", "phoneNumber": "12", "password": "short"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_fields(&bad.body),
        set(&["firstName", "phoneNumber", "password"])
    );

    let a = h
        .call(
            Method::PUT,
            "/api/users/me",
            Some(&token),
            Some(json!({"firstName": "Annie", "lastName": "Lee", "phoneNumber": null, "password": "new secret 42"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["firstName"], "Annie");
    assert_eq!(a.body["lastName"], "Lee");
    assert_eq!(a.body["phoneNumber"], Value::Null);
    assert_eq!(a.body["email"], "ann@example.com");
    let me = h
        .call(Method::GET, "/api/users/me", Some(&token), None)
        .await;
    assert_eq!(me.body, a.body);

    assert_eq!(
        h.login("ann@example.com", "correct horse").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.login("ann@example.com", "new secret 42").await.status,
        StatusCode::OK
    );

    // Nothing to change: no write, no event.
    let before = h.outbox_rows().await;
    let same = h
        .call(
            Method::PUT,
            "/api/users/me",
            Some(&token),
            Some(json!({"firstName": "Annie"})),
        )
        .await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.body, a.body);
    assert_eq!(h.outbox_rows().await, before);

    h.relay().await;
    let updates: Vec<Value> = h
        .events("user-action-performed", &user_id)
        .await
        .iter()
        .map(payload)
        .filter(|p| p["actionType"] == "UPDATE_PROFILE")
        .collect();
    assert_eq!(updates.len(), 1);
    let details = updates[0]["actionDetails"].as_str().unwrap();
    for name in ["firstName", "phoneNumber", "password"] {
        assert!(details.contains(name), "{details}");
    }
    for absent in ["lastName", "Annie", "new secret 42", "+33612345678"] {
        assert!(!details.contains(absent), "{details}");
    }
}

async fn only_administrators_list_and_read_accounts(backend: Backend) {
    let h = harness(backend).await;
    let mut ids = Vec::new();
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        ids.push(
            h.register(email, "correct horse").await["userId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let user = h.token("a@example.com", "correct horse").await;
    for uri in ["/api/users".to_owned(), format!("/api/users/{}", ids[1])] {
        let a = h.call(Method::GET, &uri, Some(&user), None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(a.headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            h.call(Method::GET, &uri, None, None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }

    let admin = h.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(admin.body["role"], "ADMIN");
    let admin_id = admin.body["userId"].as_str().unwrap().to_owned();
    let admin = admin.body["accessToken"].as_str().unwrap().to_owned();

    let first = h
        .call(Method::GET, "/api/users?limit=2", Some(&admin), None)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let cursor = first.body["nextCursor"].as_str().unwrap().to_owned();
    let second = h
        .call(
            Method::GET,
            &format!("/api/users?limit=2&cursor={cursor}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body["nextCursor"], Value::Null);
    let listed: Vec<&str> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second.body["items"].as_array().unwrap())
        .map(|u| u["userId"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [ids[2].as_str(), &ids[1], &ids[0], &admin_id],
        "newest first, each once"
    );

    let one = h
        .call(
            Method::GET,
            &format!("/api/users/{}", ids[1]),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["email"], "b@example.com");
    let missing = h
        .call(
            Method::GET,
            &format!("/api/users/{}", Uuid::new_v4()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let garbled = h
        .call(Method::GET, "/api/users/not-a-uuid", Some(&admin), None)
        .await;
    assert_eq!(garbled.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_fields(&garbled.body), set(&["userId"]));

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("cursor=%25%25", "cursor"),
    ] {
        let a = h
            .call(
                Method::GET,
                &format!("/api/users?{query}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(error_fields(&a.body), set(&[field]), "{query}");
    }
}

async fn the_bootstrap_administrator_is_created_once(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let (test_db, bus, revocations, deps) = platform(backend, &tmp).await;
    let db = test_db.db.clone();
    let users = Users::prepare(&deps, db.clone()).await.unwrap();

    let created = users
        .ensure_admin(AdminBootstrap::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(created.email, "admin@clairon.local");
    let password = created.generated_password.unwrap();
    assert_eq!(password.len(), 20);
    let again = users
        .ensure_admin(AdminBootstrap {
            email: Some("second@example.com".into()),
            password: None,
        })
        .await
        .unwrap();
    assert!(again.is_none());
    // A restart with a configured administrator keeps the existing one.
    let reopened = Users::open(&deps, db.clone(), configured_admin())
        .await
        .unwrap();
    let admins: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM users_accounts WHERE role = 'ADMIN'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(admins, 1);

    // The generated password is the real one, and the creation was announced.
    let h = Harness {
        app: reopened.router(),
        users: reopened,
        _tmp: tmp,
        _db: test_db,
        db,
        bus,
        revocations,
        deps,
    };
    let login = h.login("admin@clairon.local", &password).await;
    assert_eq!(login.status, StatusCode::OK);
    assert_eq!(login.body["role"], "ADMIN");
    let admin_id = login.body["userId"].as_str().unwrap().to_owned();
    h.relay().await;
    let registered = h.events("user-registered", &admin_id).await;
    assert_eq!(registered.len(), 1);
    assert_eq!(payload(&registered[0])["email"], "admin@clairon.local");
}

async fn a_configured_administrator_must_follow_the_rules(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let (db, _bus, _revocations, deps) = platform(backend, &tmp).await;
    let users = Users::prepare(&deps, db.db.clone()).await.unwrap();
    let err = users
        .ensure_admin(AdminBootstrap {
            email: None,
            password: Some("short".into()),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("password"), "{err}");
    assert!(
        !err.to_string().contains("short"),
        "the password must not be echoed: {err}"
    );
}

async fn start_relays_in_the_background_and_stops_on_cancel(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let (db, bus, _revocations, deps) = platform(backend, &tmp).await;
    let users = Users::start(&deps, db.db.clone(), configured_admin())
        .await
        .unwrap();
    let app = users.router();
    let req = Request::post("/api/users/register")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"email": "ann@example.com", "password": "correct horse", "firstName": "Ann", "lastName": "Lee"})
                .to_string(),
        ))
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    let user_id = body["userId"].as_str().unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while read_events(&*bus, "user-registered", user_id)
        .await
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    deps.cancel.cancel();
    deps.tasks.close();
    tokio::time::timeout(Duration::from_secs(10), deps.tasks.wait())
        .await
        .expect("the relay stops on cancel");
}

async fn contact_details_for_notifications(backend: Backend) {
    let h = harness(backend).await;
    let a = h
        .call(
            Method::POST,
            "/api/users/register",
            None,
            Some(
                json!({"email": "Ann@Example.com", "password": "correct horse", "firstName": "Ann",
                        "lastName": "Lee", "phoneNumber": "+33612345678"}),
            ),
        )
        .await;
    let id = Uuid::parse_str(a.body["userId"].as_str().unwrap()).unwrap();
    assert_eq!(
        h.users.contact(id).await.unwrap(),
        Some(UserContact {
            email: "Ann@Example.com".into(),
            phone_number: Some("+33612345678".into()),
            first_name: "Ann".into(),
        })
    );
    assert_eq!(h.users.contact(Uuid::new_v4()).await.unwrap(), None);
}

#[test]
fn openapi_documents_every_route_with_resolvable_schemas() {
    let doc = serde_json::to_value(Users::openapi()).unwrap();
    let paths = &doc["paths"];
    for (path, method) in [
        ("/api/users/register", "post"),
        ("/api/users/login", "post"),
        ("/api/users/logout", "post"),
        ("/api/users/me", "get"),
        ("/api/users/me", "put"),
        ("/api/users", "get"),
        ("/api/users/{userId}", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    let required = &doc["components"]["schemas"]["RegisterRequest"]["required"];
    for f in ["email", "password", "firstName", "lastName"] {
        assert!(
            required.as_array().unwrap().contains(&json!(f)),
            "{f} not required: {required}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling {r}"
        );
    }
}

/// The longest values the rules accept fit their columns, in multi-byte
/// characters too; an email differing only by accents is another account.
async fn values_at_their_limits_are_stored(backend: Backend) {
    let h = harness(backend).await;
    let local = "é".repeat(validate::EMAIL_MAX - 6);
    let email = format!("{local}@x.org");
    let name = "🎉".repeat(validate::NAME_MAX);
    let password = "🔑".repeat(validate::PASSWORD_MAX);
    let a = h
        .call(
            Method::POST,
            "/api/users/register",
            None,
            Some(
                json!({"email": email, "password": password, "firstName": name,
                        "lastName": name, "phoneNumber": "+123456789012345"}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["email"], email);
    assert_eq!(a.body["firstName"], name);
    assert_eq!(a.body["phoneNumber"], "+123456789012345");
    let token = h.token(&email.to_uppercase(), &password).await;
    let me = h
        .call(Method::GET, "/api/users/me", Some(&token), None)
        .await;
    assert_eq!(me.body, a.body);

    h.register("rene@example.com", "correct horse").await;
    h.register("rené@example.com", "correct horse").await;
    assert_eq!(h.accounts().await, 4);
}
