//! With `CLAIRON_OTLP_ENDPOINT` set, the binary exports its spans over
//! OTLP/HTTP: one notification's request, its handling off the bus and its
//! send all arrive in the caller's trace, flushed at graceful shutdown. Calls
//! from one process to another (the web gateway, contact look-ups) continue it.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::HeaderMap, routing::post, Router};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SECRET: &str = "an-otlp-test-secret-of-at-least-32-bytes";

/// What the test collector received: content type and body of each POST /v1/traces.
type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let r = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| async move {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            r.lock().unwrap().push((ct, body));
            // An empty ExportTraceServiceResponse.
            ([("content-type", "application/x-protobuf")], Bytes::new())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

/// The binary with a clean environment of its own.
fn clairon(data: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clairon"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CLAIRON_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CLAIRON_DATA_DIR", data)
        .env("CLAIRON_JWT_SECRET", SECRET)
        .env("CLAIRON_LOG", "info,sqlx=warn");
    cmd
}

/// Ends the server if the test fails midway.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_otlp_collector_in_the_callers_trace() {
    let deadline = Instant::now() + Duration::from_secs(90);
    let (endpoint, received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let token = clairon(dir.path())
        .args(["token", "--subject", "otlp-test", "--role", "ADMIN"])
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

    let mut cmd = clairon(dir.path());
    cmd.env("CLAIRON_OTLP_ENDPOINT", &endpoint)
        .env("CLAIRON_OTLP_SERVICE_NAME", "clairon-otlp-test")
        // Nothing leaves on the timer: what arrives was sent by the shutdown flush.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .env("CLAIRON_SHUTDOWN_GRACE_SECS", "10");
    for var in ["USERS", "NOTIFICATIONS", "EVENTS", "LOGS", "WEB"] {
        cmd.env(format!("CLAIRON_{var}_ADDR"), "127.0.0.1:0");
    }
    let log_path = dir.path().join("stderr.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let (server, urls) = serve(cmd, &log_path, &["events", "notifications"], deadline);
    let (events, notifications) = (&urls["events"], &urls["notifications"]);
    let http = reqwest::Client::new();
    let res = http
        .post(format!(
            "{events}/api/events/notifications?token=secret-in-the-query"
        ))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({
            "userId": "0190a8a0-0000-7000-8000-000000000001",
            "type": "EMAIL",
            "title": "Traced",
            "message": "Follow me",
            "recipient": "someone@example.com",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);

    let id = res.json::<serde_json::Value>().await.unwrap()["notificationId"]
        .as_str()
        .unwrap()
        .to_owned();

    // Handled once the notification is stored as CAPTURED (no SMTP server configured).
    loop {
        let res = http
            .get(format!("{notifications}/api/notifications/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            let body: serde_json::Value = res.json().await.unwrap();
            if body["status"] == "CAPTURED" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the notification was not handled:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        received.lock().unwrap().is_empty(),
        "exported before shutdown"
    );

    // Graceful shutdown flushes the buffered spans.
    stop(server, &log_path, deadline).await;

    let received = received.lock().unwrap().clone();
    assert!(!received.is_empty(), "no spans arrived:\n{}", log());
    assert!(received
        .iter()
        .all(|(ct, _)| ct == "application/x-protobuf"));
    let all: Vec<u8> = received.iter().flat_map(|(_, b)| b.to_vec()).collect();
    for name in [
        "clairon-otlp-test",
        "POST /api/events/notifications",
        "handle notification-triggered",
        "send EMAIL",
    ] {
        assert!(contains(&all, name.as_bytes()) > 0, "no `{name}` exported");
    }
    assert_eq!(
        contains(&all, b"secret-in-the-query"),
        0,
        "the query string was exported"
    );
    // Request, handling and send (and more: audit, status event) share the caller's trace id.
    let trace: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        contains(&all, &trace) >= 3,
        "the spans are not in the caller's trace"
    );
}

/// Starts `cmd` (its stderr into `log`) and waits until each of `services`
/// says where it listens; their base URLs by name.
fn serve(
    mut cmd: Command,
    log: &std::path::Path,
    services: &[&str],
    deadline: Instant,
) -> (Running, HashMap<String, String>) {
    let stderr = std::fs::File::create(log).unwrap();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut urls = HashMap::new();
    while !services.iter().all(|s| urls.contains_key(*s)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "{services:?} did not start:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
        if let Some((name, url)) = line
            .strip_prefix("clairon: ")
            .and_then(|l| l.split_once(" listening on "))
        {
            urls.insert(name.to_owned(), url.to_owned());
        }
    }
    (server, urls)
}

/// SIGTERM, then waits for a clean exit (which flushes the spans).
async fn stop(mut server: Running, log: &std::path::Path, deadline: Instant) {
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "{status:?}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// One exported span, as far as this test looks.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    trace_state: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The spans of an OTLP `ExportTraceServiceRequest`.
fn spans(body: &[u8]) -> Vec<Exported> {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value,
    };
    use prost::Message;

    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Exported {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                trace_state: span.trace_state,
            });
        }
    }
    out
}

/// With the web gateway and the notification service in one process and the
/// users service in another, the calls between them carry the trace context:
/// client → gateway span → users service span, and the handling of a
/// notification → the users service span of its contact look-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_to_service_calls_continue_the_trace() {
    const VIA_GATEWAY: &str = "0af7651916cd43dd8448eb211c80319c";
    const CLIENT_SPAN: &str = "b7ad6b7169203331";
    const LOOKED_UP: &str = "5b8efff798038103d269b633813fc60c";
    let deadline = Instant::now() + Duration::from_secs(120);
    let (endpoint, received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let (users_log, rest_log) = (dir.path().join("users.log"), dir.path().join("rest.log"));

    let token = clairon(dir.path())
        .args(["token", "--subject", "otlp-test", "--role", "ADMIN"])
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

    // Both share the data folder, so the embedded event log too.
    let traced = |services: &str, name: &str| {
        let mut cmd = clairon(dir.path());
        cmd.env("CLAIRON_OTLP_ENDPOINT", &endpoint)
            .env("CLAIRON_OTLP_SERVICE_NAME", name)
            .env("CLAIRON_SERVICES", services)
            .env("CLAIRON_SHUTDOWN_GRACE_SECS", "10");
        for var in ["USERS", "NOTIFICATIONS", "EVENTS", "LOGS", "WEB"] {
            cmd.env(format!("CLAIRON_{var}_ADDR"), "127.0.0.1:0");
        }
        cmd
    };
    let (users_proc, urls) = serve(
        traced("users", "otlp-users"),
        &users_log,
        &["users"],
        deadline,
    );
    let mut rest = traced("web,notifications,events,logs", "otlp-rest");
    rest.env("CLAIRON_USERS_URL", &urls["users"]);
    let (rest_proc, urls) = serve(
        rest,
        &rest_log,
        &["web", "notifications", "events"],
        deadline,
    );
    let logs = || {
        format!(
            "users:\n{}\nthe rest:\n{}",
            std::fs::read_to_string(&users_log).unwrap_or_default(),
            std::fs::read_to_string(&rest_log).unwrap_or_default()
        )
    };
    let http = reqwest::Client::new();

    // Through the gateway to the users service in the other process.
    let res = http
        .post(format!("{}/api/users/register", urls["web"]))
        .header("traceparent", format!("00-{VIA_GATEWAY}-{CLIENT_SPAN}-01"))
        .header("tracestate", "client=kept")
        .json(&serde_json::json!({
            "email": "traced@example.com",
            "password": "a-long-enough-password",
            "firstName": "Traced",
            "lastName": "User",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", logs());
    let user: serde_json::Value = res.json().await.unwrap();
    let user_id = user["userId"].as_str().unwrap().to_owned();

    // No recipient: handling it looks the contact up in the users service.
    let res = http
        .post(format!("{}/api/events/notifications", urls["events"]))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{LOOKED_UP}-{CLIENT_SPAN}-01"))
        .json(&serde_json::json!({
            "userId": user_id,
            "type": "EMAIL",
            "title": "Traced",
            "message": "Find me",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{}", logs());
    let id = res.json::<serde_json::Value>().await.unwrap()["notificationId"]
        .as_str()
        .unwrap()
        .to_owned();
    loop {
        let res = http
            .get(format!("{}/api/notifications/{id}", urls["notifications"]))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            let body: serde_json::Value = res.json().await.unwrap();
            if body["status"] == "CAPTURED" {
                assert_eq!(body["recipient"], "traced@example.com");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the notification was not handled:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stop(rest_proc, &rest_log, deadline).await;
    stop(users_proc, &users_log, deadline).await;

    let all: Vec<Exported> = received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, body)| spans(body))
        .collect();
    let find = |service: &str, name: &str, trace: &str| {
        all.iter()
            .find(|s| s.service == service && s.name == name && s.trace_id == trace)
            .unwrap_or_else(|| panic!("no `{name}` of {service} in trace {trace}: {all:#?}"))
    };

    // client → gateway → users service, one continuous chain.
    let gateway = find("otlp-rest", "POST /api/users/{*rest}", VIA_GATEWAY);
    assert_eq!(gateway.parent_span_id, CLIENT_SPAN);
    let register = find("otlp-users", "POST /api/users/register", VIA_GATEWAY);
    assert_eq!(
        register.parent_span_id, gateway.span_id,
        "the users service's span is not the gateway span's child"
    );
    assert_eq!(register.trace_state, "client=kept");

    // handling in one process → its contact look-up in the other.
    let contact = find("otlp-users", "GET /api/users/{userId}/contact", LOOKED_UP);
    let caller = all
        .iter()
        .find(|s| s.span_id == contact.parent_span_id)
        .unwrap_or_else(|| panic!("the contact look-up has no exported parent: {all:#?}"));
    assert_eq!(caller.service, "otlp-rest");
    assert_eq!(caller.name, "handle notification-triggered");
    assert_eq!(caller.trace_id, LOOKED_UP);
}
