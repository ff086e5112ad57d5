//! What a service needs from another one that runs in a different process:
//! HTTP calls to its API with a short-lived SERVICE token minted here.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use clairon_auth::{Role, Tokens};
use clairon_events::PushRequested;
use clairon_notifications::{Contact, UserDirectory};
use clairon_web::PushInbox;
use reqwest::{header::HeaderMap, Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

const CALLER_TTL: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    tokens: Arc<Tokens>,
    caller: &'static str,
}

impl ServiceClient {
    pub fn new(base: &str, tokens: Arc<Tokens>, caller: &'static str) -> anyhow::Result<Self> {
        reqwest::Url::parse(base).with_context(|| format!("`{base}` is not a URL"))?;
        Ok(ServiceClient {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(10))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            tokens,
            caller,
        })
    }

    fn token(&self) -> anyhow::Result<String> {
        Ok(self
            .tokens
            .issue_for(self.caller, Role::Service, CALLER_TTL)?
            .token)
    }

    /// A call to `path` of the other service with a SERVICE token and the
    /// current span's trace context, so the callee's span joins this trace.
    fn request(&self, method: Method, path: &str) -> anyhow::Result<RequestBuilder> {
        let mut headers = HeaderMap::new();
        clairon_http::trace::inject(&mut headers);
        Ok(self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token()?)
            .headers(headers))
    }
}

/// Contact look-ups through the users service's API.
pub struct RemoteDirectory(pub ServiceClient);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContactBody {
    email: String,
    phone_number: Option<String>,
    first_name: String,
}

#[async_trait]
impl UserDirectory for RemoteDirectory {
    async fn contact(&self, user_id: Uuid) -> anyhow::Result<Option<Contact>> {
        let c = &self.0;
        let res = c
            .request(Method::GET, &format!("/api/users/{user_id}/contact"))?
            .send()
            .await
            .context("users service unreachable")?;
        match res.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let b: ContactBody = res.json().await.context("unreadable contact answer")?;
                Ok(Some(Contact {
                    email: b.email,
                    phone_number: b.phone_number,
                    first_name: b.first_name,
                }))
            }
            s => anyhow::bail!("users service answered {s} to a contact look-up"),
        }
    }
}

/// The PUSH inbox through the notification service's API.
pub struct RemoteInbox(pub ServiceClient);

#[async_trait]
impl PushInbox for RemoteInbox {
    async fn pending(&self, user: Uuid) -> anyhow::Result<Vec<PushRequested>> {
        let c = &self.0;
        let res = c
            .request(Method::GET, "/api/notifications/push/pending")?
            .query(&[("userId", user.to_string())])
            .send()
            .await
            .context("notification service unreachable")?;
        anyhow::ensure!(
            res.status().is_success(),
            "notification service answered {}",
            res.status()
        );
        Ok(res.json().await.context("unreadable pending pushes")?)
    }

    async fn delivered(&self, ids: &[Uuid]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let c = &self.0;
        let res = c
            .request(Method::POST, "/api/notifications/push/delivered")?
            .json(&json!({ "notificationIds": ids }))
            .send()
            .await
            .context("notification service unreachable")?;
        anyhow::ensure!(
            res.status().is_success(),
            "notification service answered {}",
            res.status()
        );
        Ok(())
    }
}
