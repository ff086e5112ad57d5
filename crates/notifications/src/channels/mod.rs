//! Delivery channels behind one trait. Each gets the notification id to pass
//! to its provider as an idempotency key (email Message-ID, SMS header), so a
//! send repeated after a crash can be recognised downstream.

mod email;
mod push;
mod sms;

use async_trait::async_trait;
use clairon_events::{NotificationType, Timestamp};
use uuid::Uuid;

pub use email::{EmailChannel, SmtpSettings};
pub use push::PushChannel;
pub use sms::{SmsChannel, SmsSettings};

/// One message on its way to a provider.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub notification_id: Uuid,
    pub user_id: Uuid,
    pub kind: NotificationType,
    pub title: String,
    pub message: String,
    /// Email address, phone number, or the user id for PUSH.
    pub recipient: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The provider accepted it.
    Sent,
    /// No provider is configured: the message is only stored.
    Captured,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelError {
    /// Worth retrying: provider unreachable, busy, or a temporary refusal.
    #[error("{0}")]
    Transient(String),
    /// Will fail again the same way: bad address, refused for good.
    #[error("{0}")]
    Permanent(String),
}

#[async_trait]
pub trait Channel: Send + Sync + 'static {
    async fn send(&self, msg: &Outgoing) -> Result<Delivery, ChannelError>;
}

/// Stands in for a channel with no provider configured: keeps the demo working
/// without ever claiming a message was sent.
pub struct Capture;

#[async_trait]
impl Channel for Capture {
    async fn send(&self, _msg: &Outgoing) -> Result<Delivery, ChannelError> {
        Ok(Delivery::Captured)
    }
}

/// The three channels, by notification type.
pub struct Channels {
    pub email: Box<dyn Channel>,
    pub sms: Box<dyn Channel>,
    pub push: Box<dyn Channel>,
}

impl Channels {
    pub fn for_type(&self, kind: NotificationType) -> &dyn Channel {
        match kind {
            NotificationType::Email => &*self.email,
            NotificationType::Sms => &*self.sms,
            NotificationType::Push => &*self.push,
        }
    }
}
