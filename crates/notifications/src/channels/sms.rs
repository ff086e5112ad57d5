use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::json;

use super::{Channel, ChannelError, Delivery, Outgoing};

#[derive(Debug, Clone)]
pub struct SmsSettings {
    pub url: String,
    pub token: Option<String>,
}

/// SMS through an HTTP gateway: `POST {url}` with
/// `{"notificationId", "to", "title", "message"}` and `Idempotency-Key: <notificationId>`.
pub struct SmsChannel {
    http: reqwest::Client,
    settings: SmsSettings,
}

impl SmsChannel {
    pub fn new(settings: SmsSettings) -> anyhow::Result<Self> {
        reqwest::Url::parse(&settings.url)
            .map_err(|e| anyhow::anyhow!("CLAIRON_SMS_URL `{}` is not a URL: {e}", settings.url))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(SmsChannel { http, settings })
    }
}

#[async_trait]
impl Channel for SmsChannel {
    async fn send(&self, msg: &Outgoing) -> Result<Delivery, ChannelError> {
        let mut req = self
            .http
            .post(&self.settings.url)
            .header("Idempotency-Key", msg.notification_id.to_string())
            .json(&json!({
                "notificationId": msg.notification_id,
                "to": msg.recipient,
                "title": msg.title,
                "message": msg.message,
            }));
        if let Some(t) = &self.settings.token {
            req = req.bearer_auth(t);
        }
        // The gateway's own spans, if it traces, continue this send.
        if let Some(tp) = clairon_http::trace::current_traceparent() {
            req = req.header("traceparent", tp);
        }
        let res = req
            .send()
            .await
            .map_err(|e| ChannelError::Transient(format!("SMS gateway unreachable: {e}")))?;
        let status = res.status();
        if status.is_success() {
            return Ok(Delivery::Sent);
        }
        let body: String = res
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        let reason = format!("SMS gateway answered {status}: {body}");
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Err(ChannelError::Transient(reason))
        } else {
            Err(ChannelError::Permanent(reason))
        }
    }
}
