//! The wire contract shared by every Clairon service.
//!
//! Payload JSON is exactly the shape of the platform specification (camelCase field
//! names, upper-case enum values). Everything that is not part of that shape — event
//! id, type, schema version, trace context, attempt count — travels beside the
//! payload as message headers, so a producer written against the bare specification
//! interoperates: a record without headers is still understood from its topic.

pub mod headers;
mod payloads;
mod time;
pub mod topics;

pub use payloads::*;
pub use time::Timestamp;

use serde::{de::DeserializeOwned, Serialize};

/// Current schema version of every payload in this crate.
pub const SCHEMA_VERSION: u32 = 1;

/// The kinds of event that travel on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    UserRegistered,
    NotificationTriggered,
    UserActionPerformed,
    NotificationStatusChanged,
    PushRequested,
    TokenRevoked,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::UserRegistered,
        EventType::NotificationTriggered,
        EventType::UserActionPerformed,
        EventType::NotificationStatusChanged,
        EventType::PushRequested,
        EventType::TokenRevoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserRegistered => "UserRegistered",
            EventType::NotificationTriggered => "NotificationTriggered",
            EventType::UserActionPerformed => "UserActionPerformed",
            EventType::NotificationStatusChanged => "NotificationStatusChanged",
            EventType::PushRequested => "PushRequested",
            EventType::TokenRevoked => "TokenRevoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The topic (without prefix) that carries this event type.
    pub fn topic(self) -> &'static str {
        match self {
            EventType::UserRegistered => topics::USER_REGISTERED,
            EventType::NotificationTriggered => topics::NOTIFICATION_TRIGGERED,
            EventType::UserActionPerformed => topics::USER_ACTION_PERFORMED,
            EventType::NotificationStatusChanged => topics::NOTIFICATION_STATUS,
            EventType::PushRequested => topics::NOTIFICATION_PUSH,
            EventType::TokenRevoked => topics::TOKEN_REVOKED,
        }
    }

    /// The event type a topic carries, for records that arrive without headers.
    pub fn for_topic(topic: &str) -> Option<Self> {
        let base = topics::base_topic(topic);
        Self::ALL.into_iter().find(|t| t.topic() == base)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payload that is published as an event.
pub trait Event: Serialize + DeserializeOwned {
    const TYPE: EventType;
    /// The partitioning key: the user the event is about, so one user's events keep
    /// their order.
    fn key(&self) -> String;
}

/// An event ready to be written to an outbox or a bus: topic, key, headers, payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub topic: String,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Envelope {
    /// Wraps an event with fresh metadata. `traceparent` carries the W3C trace context
    /// of the request that caused it, when there is one.
    pub fn new<E: Event>(event: &E, traceparent: Option<&str>) -> Self {
        Self::with_id(event, uuid::Uuid::now_v7(), traceparent)
    }

    pub fn with_id<E: Event>(event: &E, event_id: uuid::Uuid, traceparent: Option<&str>) -> Self {
        let mut headers = vec![
            (headers::EVENT_ID.to_owned(), event_id.to_string()),
            (headers::EVENT_TYPE.to_owned(), E::TYPE.as_str().to_owned()),
            (
                headers::SCHEMA_VERSION.to_owned(),
                SCHEMA_VERSION.to_string(),
            ),
            (headers::ATTEMPT.to_owned(), "1".to_owned()),
        ];
        if let Some(tp) = traceparent {
            headers.push((headers::TRACEPARENT.to_owned(), tp.to_owned()));
        }
        Envelope {
            topic: E::TYPE.topic().to_owned(),
            key: event.key(),
            headers,
            // Serializing our own plain structs cannot fail.
            payload: serde_json::to_vec(event).unwrap_or_default(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        headers::find(&self.headers, name)
    }
}

/// Decodes a payload of a known type, with a message that says what is wrong.
pub fn decode<E: Event>(payload: &[u8]) -> Result<E, String> {
    serde_json::from_slice(payload).map_err(|e| format!("invalid {} payload: {e}", E::TYPE))
}

#[cfg(test)]
mod tests;
