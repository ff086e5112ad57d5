use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{Event, EventType, Timestamp};

/// Emitted when a user registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistered {
    pub user_id: Uuid,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub timestamp: Timestamp,
}

impl Event for UserRegistered {
    const TYPE: EventType = EventType::UserRegistered;
    fn key(&self) -> String {
        self.user_id.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum NotificationType {
    Email,
    Sms,
    Push,
}

impl NotificationType {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationType::Email => "EMAIL",
            NotificationType::Sms => "SMS",
            NotificationType::Push => "PUSH",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "EMAIL" => Some(Self::Email),
            "SMS" => Some(Self::Sms),
            "PUSH" => Some(Self::Push),
            _ => None,
        }
    }
}

/// Emitted to have a notification delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationTriggered {
    pub notification_id: Uuid,
    pub user_id: Uuid,
    #[serde(rename = "type")]
    pub kind: NotificationType,
    pub title: String,
    pub message: String,
    /// Email address or phone number; the notification service looks it up from the
    /// user's profile when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    pub timestamp: Timestamp,
}

impl Event for NotificationTriggered {
    const TYPE: EventType = EventType::NotificationTriggered;
    fn key(&self) -> String {
        self.user_id.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionType {
    Login,
    Logout,
    UpdateProfile,
}

/// Emitted when a user does something worth auditing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserActionPerformed {
    pub user_id: Uuid,
    pub action_type: ActionType,
    pub action_details: String,
    pub timestamp: Timestamp,
}

impl Event for UserActionPerformed {
    const TYPE: EventType = EventType::UserActionPerformed;
    fn key(&self) -> String {
        self.user_id.to_string()
    }
}

/// Where a notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum NotificationStatus {
    /// Accepted, not yet delivered.
    Pending,
    /// Accepted by the provider (SMTP server, SMS gateway, a live socket or the push inbox).
    Sent,
    /// No provider is configured for the channel: the message is stored, not sent.
    Captured,
    /// The last attempt failed; another will follow.
    Failed,
    /// No further attempt will be made.
    Dead,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "PENDING",
            NotificationStatus::Sent => "SENT",
            NotificationStatus::Captured => "CAPTURED",
            NotificationStatus::Failed => "FAILED",
            NotificationStatus::Dead => "DEAD",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Sent,
            Self::Captured,
            Self::Failed,
            Self::Dead,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// Whether no further delivery will happen on its own.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Sent | Self::Captured | Self::Dead)
    }
}

/// Emitted on every delivery outcome, so the audit log and the dashboard see them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatusChanged {
    pub notification_id: Uuid,
    pub user_id: Uuid,
    #[serde(rename = "type")]
    pub kind: NotificationType,
    pub status: NotificationStatus,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the notification was triggered, so consumers can measure delivery latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_at: Option<Timestamp>,
    pub timestamp: Timestamp,
}

impl Event for NotificationStatusChanged {
    const TYPE: EventType = EventType::NotificationStatusChanged;
    fn key(&self) -> String {
        self.user_id.to_string()
    }
}

/// A PUSH notification on its way to the user's open sockets. Every web replica
/// reads every one and writes it to the sockets it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushRequested {
    pub notification_id: Uuid,
    pub user_id: Uuid,
    pub title: String,
    pub message: String,
    pub created_at: Timestamp,
}

impl Event for PushRequested {
    const TYPE: EventType = EventType::PushRequested;
    fn key(&self) -> String {
        self.user_id.to_string()
    }
}

/// A logout: the token with this id is refused until it expires. Carries the
/// token's id only, never the token itself, so the topic grants nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRevoked {
    /// The token's `jti` claim.
    pub token_id: String,
    /// The token's subject: a user id, or a service name for a service token.
    pub user_id: String,
    /// The token's `exp`: after it the revocation no longer matters.
    pub expires_at: Timestamp,
}

impl Event for TokenRevoked {
    const TYPE: EventType = EventType::TokenRevoked;
    fn key(&self) -> String {
        self.user_id.clone()
    }
}
