use std::time::Duration;

use async_trait::async_trait;
use lettre::{
    message::{header::ContentType, Mailbox},
    transport::smtp::authentication::Credentials,
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

use super::{Channel, ChannelError, Delivery, Outgoing};

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// `smtp://host:port` (plain, or `?tls=required` / `?tls=opportunistic` for
    /// STARTTLS) or `smtps://host:port` (implicit TLS); credentials may be in the URL.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
}

/// EMAIL over SMTP. The Message-ID carries the notification id.
pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    domain: String,
}

impl EmailChannel {
    pub fn new(s: &SmtpSettings) -> anyhow::Result<Self> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&s.url)
            .map_err(|e| anyhow::anyhow!("CLAIRON_SMTP_URL is not a valid SMTP URL: {e}"))?
            .timeout(Some(Duration::from_secs(15)));
        if let (Some(u), Some(p)) = (&s.username, &s.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("CLAIRON_SMTP_FROM `{}` is not a mailbox: {e}", s.from))?;
        let domain = from.email.domain().to_owned();
        Ok(EmailChannel {
            transport: builder.build(),
            from,
            domain,
        })
    }
}

#[async_trait]
impl Channel for EmailChannel {
    async fn send(&self, msg: &Outgoing) -> Result<Delivery, ChannelError> {
        let to: Mailbox = msg.recipient.parse().map_err(|e| {
            ChannelError::Permanent(format!("`{}` is not an email address: {e}", msg.recipient))
        })?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(msg.title.clone())
            .message_id(Some(format!("<{}@{}>", msg.notification_id, self.domain)))
            .header(ContentType::TEXT_PLAIN)
            .body(msg.message.clone())
            .map_err(|e| ChannelError::Permanent(format!("cannot build the email: {e}")))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(Delivery::Sent),
            Err(e) if e.is_permanent() => {
                Err(ChannelError::Permanent(format!("SMTP server refused: {e}")))
            }
            Err(e) => Err(ChannelError::Transient(format!(
                "SMTP delivery failed: {e}"
            ))),
        }
    }
}
