//! The few public API calls the bench needs, all through the web gateway.

use std::time::Duration;

use anyhow::bail;
use reqwest::{Client, Response, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;

#[derive(Clone)]
pub struct Api {
    pub http: Client,
    pub base: Url,
    /// `POST /api/events/notifications`.
    pub trigger_url: Url,
}

pub struct Session {
    pub token: String,
    pub user_id: String,
    pub role: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginAnswer {
    access_token: String,
    user_id: serde_json::Value,
    #[serde(default)]
    role: String,
}

/// An HTTP/1.1 keep-alive client for loopback targets (no proxy, no Nagle).
pub fn client(timeout: Duration, pool: usize) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()?)
}

impl Api {
    pub fn new(base: Url, timeout: Duration, pool: usize) -> anyhow::Result<Api> {
        Ok(Api {
            http: client(timeout, pool)?,
            trigger_url: base.join("api/events/notifications")?,
            base,
        })
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Session> {
        let resp = self
            .http
            .post(self.base.join("api/users/login")?)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await?;
        let answer: LoginAnswer = expect(resp, StatusCode::OK).await?.json().await?;
        let user_id = match answer.user_id {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        Ok(Session {
            token: answer.access_token,
            user_id,
            role: answer.role,
        })
    }

    pub async fn register(&self, email: &str, password: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(self.base.join("api/users/register")?)
            .json(&json!({
                "email": email,
                "password": password,
                "firstName": "Bench",
                "lastName": "User",
            }))
            .send()
            .await?;
        expect(resp, StatusCode::CREATED).await?;
        Ok(())
    }

    /// `ws://…/ws?token=…` on the gateway.
    pub fn ws_url(&self, token: &str) -> anyhow::Result<Url> {
        let mut url = self.base.join("ws")?;
        let scheme = if self.base.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        url.set_scheme(scheme)
            .map_err(|()| anyhow::anyhow!("cannot build a WebSocket URL from {}", self.base))?;
        url.query_pairs_mut().append_pair("token", token);
        Ok(url)
    }
}

/// The body of one PUSH notification for `user_id`.
pub fn push_body(user_id: &str, title: &str, message: &str) -> serde_json::Value {
    json!({ "userId": user_id, "type": "PUSH", "title": title, "message": message })
}

/// Short label for a transport error, used as a key of `errorsByKind`.
pub fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn expect(resp: Response, want: StatusCode) -> anyhow::Result<Response> {
    let status = resp.status();
    if status == want {
        return Ok(resp);
    }
    let url = resp.url().path().to_string();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(500).collect();
    bail!("{url}: expected {want}, got {status}: {body}")
}

/// Reads a 202 answer's `notificationId`, if any.
pub async fn accepted_id(resp: Response) -> Option<String> {
    let v: serde_json::Value = resp.json().await.ok()?;
    v.get("notificationId")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_carries_the_token() {
        let api = Api::new(
            Url::parse("http://127.0.0.1:8085/").unwrap(),
            Duration::from_secs(1),
            1,
        )
        .unwrap();
        assert_eq!(
            api.ws_url("a.b.c").unwrap().as_str(),
            "ws://127.0.0.1:8085/ws?token=a.b.c"
        );
    }
}
