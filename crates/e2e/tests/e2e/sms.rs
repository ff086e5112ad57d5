//! A real HTTP SMS provider on a loopback port: records every POST and answers
//! what the test asked for (200 by default).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    Json, Router,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::eventually;

/// One POST the provider received, and what it answered.
#[derive(Debug, Clone)]
pub struct SmsRequest {
    pub headers: HeaderMap,
    pub body: Value,
    pub answered: StatusCode,
}

impl SmsRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn notification_id(&self) -> Option<Uuid> {
        self.body["notificationId"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
    }

    /// Whether this request carries `id`, by Idempotency-Key or by body.
    pub fn is_for(&self, id: Uuid) -> bool {
        self.notification_id() == Some(id)
            || self.header("Idempotency-Key") == Some(id.to_string().as_str())
    }
}

#[derive(Default)]
struct Sink {
    received: Mutex<Vec<SmsRequest>>,
    /// How many of the next requests get a 500.
    fail_next: AtomicUsize,
    /// Fixed answers for given recipients (`to`).
    by_recipient: Mutex<Vec<(String, StatusCode)>>,
}

pub struct SmsSink {
    addr: SocketAddr,
    sink: Arc<Sink>,
    server: tokio::task::JoinHandle<()>,
}

impl SmsSink {
    pub async fn start() -> SmsSink {
        let sink = Arc::new(Sink::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the SMS sink");
        let addr = listener.local_addr().expect("the SMS sink's address");
        let app = Router::new().fallback(receive).with_state(sink.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the SMS sink serves");
        });
        SmsSink { addr, sink, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}/sms", self.addr)
    }

    /// The next `n` requests (whatever their recipient) are answered 500.
    pub fn fail_next(&self, n: usize) {
        self.sink.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every request to `recipient` is answered `status`.
    pub fn answer_for(&self, recipient: &str, status: StatusCode) {
        self.sink
            .by_recipient
            .lock()
            .expect("sink lock")
            .push((recipient.to_owned(), status));
    }

    /// Forgets every failure asked for: from now on every request gets 200.
    pub fn accept_all(&self) {
        self.sink.fail_next.store(0, Ordering::SeqCst);
        self.sink.by_recipient.lock().expect("sink lock").clear();
    }

    pub fn requests(&self) -> Vec<SmsRequest> {
        self.sink.received.lock().expect("sink lock").clone()
    }

    /// Every request for this notification, accepted or not.
    pub fn requests_for(&self, id: Uuid) -> Vec<SmsRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_for(id))
            .collect()
    }

    /// Waits until the provider has accepted (2xx) a request for `id`.
    pub async fn wait_for(&self, id: Uuid) -> SmsRequest {
        self.wait_for_within(id, crate::helpers::TIMEOUT).await
    }

    pub async fn wait_for_within(&self, id: Uuid, timeout: Duration) -> SmsRequest {
        eventually(
            &format!("the SMS provider to accept notification {id}"),
            timeout,
            async || {
                let all = self.requests();
                all.iter()
                    .find(|r| r.is_for(id) && r.answered.is_success())
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "{} request(s) received, {} for this id",
                            all.len(),
                            all.iter().filter(|r| r.is_for(id)).count()
                        )
                    })
            },
        )
        .await
    }
}

impl Drop for SmsSink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(sink): State<Arc<Sink>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let body: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    let fixed = sink
        .by_recipient
        .lock()
        .expect("sink lock")
        .iter()
        .find(|(r, _)| *r == to)
        .map(|(_, s)| *s);
    let answered = fixed.unwrap_or_else(|| {
        let failing = sink
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    });
    sink.received.lock().expect("sink lock").push(SmsRequest {
        headers,
        body,
        answered,
    });
    let answer = if answered.is_success() {
        json!({"messageId": Uuid::new_v4()})
    } else {
        json!({"error": "the test asked for this failure"})
    };
    (answered, Json(answer))
}
