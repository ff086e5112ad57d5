//! What one bus record becomes in the audit table. Pure: no I/O, so every rule
//! (ids, types, times, oversize payloads) is testable without a database.

use clairon_bus::Record;
use clairon_events::{headers, topics, EventType, Timestamp};
use serde_json::{Map, Value};

/// Stored for records without a recognisable type.
pub const UNKNOWN_TYPE: &str = "Unknown";

// Column widths of the table: values are cut to fit, because MySQL in strict
// mode refuses longer ones and the audit must never refuse a record.
const EVENT_ID_CHARS: usize = 128;
const TOPIC_CHARS: usize = 255;
const USER_ID_CHARS: usize = 64;
const ERROR_CHARS: usize = 4000;
/// `msg_key` is a TEXT column: 64 KiB on MySQL.
const KEY_BYTES: usize = 65_535;
/// Payloads above this are stored as a note plus their start; MySQL's
/// MEDIUMTEXT holds 16 MiB and JSON escaping can grow text up to sixfold.
const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;
const TRUNCATED_HEAD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub event_id: String,
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    pub event_type: String,
    pub dead_letter: bool,
    pub error: Option<String>,
    pub key: String,
    pub user_id: Option<String>,
    /// JSON text: the payload itself, or a JSON string when it is not JSON.
    pub payload: String,
    /// JSON object text, header name → value.
    pub headers: String,
    pub occurred_at: i64,
}

impl Entry {
    pub fn from_record(r: &Record) -> Entry {
        let dead_letter = topics::is_dead_letter(&r.topic);
        let on_retry_topic = !dead_letter && topics::base_topic(&r.topic) != r.topic;
        let original_position = || {
            let topic = r.header(headers::ORIGINAL_TOPIC)?;
            let partition = r.header(headers::ORIGINAL_PARTITION)?.parse::<i64>().ok()?;
            let offset = r.header(headers::ORIGINAL_OFFSET)?.parse::<i64>().ok()?;
            Some((topic.to_owned(), partition, offset))
        };

        // Retry topics are shared by every consumer group of a topic, so a record
        // met there is a copy of one from the main topic: filing it under the
        // original position makes it collide with (or stand in for) that row.
        let (topic, partition, offset) = match original_position() {
            Some(orig) if on_retry_topic => orig,
            _ => (r.topic.clone(), i64::from(r.partition), r.offset as i64),
        };

        // Without an id header, name the event by where it was first written, so
        // its retry and dead-letter copies carry the same id as the original.
        let event_id = match (r.header(headers::EVENT_ID), original_position()) {
            (Some(id), _) if !id.is_empty() => id.to_owned(),
            (_, Some((t, p, o))) => format!("{t}:{p}:{o}"),
            _ => r.event_id(),
        };

        let event_type = r
            .header(headers::EVENT_TYPE)
            .and_then(EventType::parse)
            .or_else(|| EventType::for_topic(&r.topic))
            .map(|t| t.as_str())
            .unwrap_or(UNKNOWN_TYPE);

        let parsed: Option<Value> = serde_json::from_slice(&r.payload).ok();
        let fields = parsed.as_ref().and_then(Value::as_object);
        let user_id = fields
            .and_then(|o| o.get("userId"))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty())
            .or_else(|| (!r.key.is_empty()).then(|| r.key.clone()));
        let occurred_at = fields
            .and_then(|o| o.get("timestamp").or_else(|| o.get("createdAt")))
            .and_then(Value::as_str)
            .and_then(|s| Timestamp::parse(s).ok())
            .map(|t| t.millis())
            .unwrap_or(r.timestamp_ms);

        let text = String::from_utf8_lossy(&r.payload);
        let payload = if r.payload.len() > MAX_PAYLOAD_BYTES {
            let head = cut_bytes(&text, TRUNCATED_HEAD_BYTES);
            Value::String(format!(
                "{head}… [truncated: {} bytes in all]",
                r.payload.len()
            ))
            .to_string()
        } else if parsed.is_some() {
            // Kept as sent, so the stored text is exactly what was on the bus.
            text.into_owned()
        } else {
            Value::String(text.into_owned()).to_string()
        };

        let mut hs = Map::new();
        for (k, v) in &r.headers {
            // Later values win, as in `headers::find`.
            hs.insert(k.clone(), Value::String(v.clone()));
        }

        Entry {
            event_id: cut_chars(&event_id, EVENT_ID_CHARS),
            topic: cut_chars(&topic, TOPIC_CHARS),
            partition,
            offset,
            event_type: event_type.to_owned(),
            dead_letter,
            error: if dead_letter {
                r.header(headers::ERROR).map(|e| cut_chars(e, ERROR_CHARS))
            } else {
                None
            },
            key: cut_bytes(&r.key, KEY_BYTES).to_owned(),
            user_id: user_id.map(|u| cut_chars(&u, USER_ID_CHARS)),
            payload,
            headers: Value::Object(hs).to_string(),
            occurred_at,
        }
    }
}

fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

fn cut_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, headers: &[(&str, &str)], payload: &[u8]) -> Record {
        Record {
            topic: topic.into(),
            partition: 2,
            offset: 7,
            key: "k1".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload: payload.to_vec(),
            timestamp_ms: 1_000,
        }
    }

    #[test]
    fn type_user_and_time_come_from_headers_payload_or_topic() {
        let e = Entry::from_record(&record(
            "user-registered",
            &[(headers::EVENT_ID, "e1")],
            br#"{"userId":"u1","timestamp":"2026-01-01T10:00:00Z"}"#,
        ));
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.event_type, "UserRegistered");
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert_eq!(
            e.occurred_at,
            Timestamp::parse("2026-01-01T10:00:00Z").unwrap().millis()
        );
        assert!(!e.dead_letter && e.error.is_none());

        let e = Entry::from_record(&record("elsewhere", &[], b"\xffnot json"));
        assert_eq!(e.event_id, "elsewhere:2:7");
        assert_eq!(e.event_type, UNKNOWN_TYPE);
        assert_eq!(e.user_id.as_deref(), Some("k1"));
        assert_eq!(e.occurred_at, 1_000);
        assert_eq!(
            serde_json::from_str::<Value>(&e.payload).unwrap(),
            Value::String("\u{fffd}not json".into())
        );
    }

    #[test]
    fn retry_copies_file_under_the_original_position() {
        let hs = [
            (headers::ORIGINAL_TOPIC, "notification-push"),
            (headers::ORIGINAL_PARTITION, "1"),
            (headers::ORIGINAL_OFFSET, "3"),
            (headers::ERROR, "boom"),
        ];
        let e = Entry::from_record(&record("notification-push-retry-1", &hs, b"{}"));
        assert_eq!(
            (e.topic.as_str(), e.partition, e.offset),
            ("notification-push", 1, 3)
        );
        assert_eq!(e.event_id, "notification-push:1:3");
        assert!(!e.dead_letter && e.error.is_none());

        let e = Entry::from_record(&record("notification-push-dlt", &hs, b"{}"));
        assert_eq!(
            (e.topic.as_str(), e.partition, e.offset),
            ("notification-push-dlt", 2, 7)
        );
        assert_eq!(e.event_id, "notification-push:1:3");
        assert_eq!(e.event_type, "PushRequested");
        assert!(e.dead_letter);
        assert_eq!(e.error.as_deref(), Some("boom"));
    }

    #[test]
    fn oversized_values_are_cut_to_fit() {
        let big = vec![b'a'; MAX_PAYLOAD_BYTES + 1];
        let long_id = "x".repeat(500);
        let e = Entry::from_record(&record(
            "user-registered",
            &[(headers::EVENT_ID, &long_id)],
            &big,
        ));
        assert_eq!(e.event_id.len(), EVENT_ID_CHARS);
        let mut long_key = record("user-registered", &[], b"{}");
        long_key.key = "é".repeat(KEY_BYTES);
        let cut = Entry::from_record(&long_key).key;
        assert!(cut.len() <= KEY_BYTES && cut.len() > KEY_BYTES - 2);
        let Value::String(s) = serde_json::from_str::<Value>(&e.payload).unwrap() else {
            panic!("a truncated payload is a JSON string")
        };
        assert!(s.len() < TRUNCATED_HEAD_BYTES + 100 && s.contains("truncated"));
        assert_eq!(cut_bytes("héllo", 2), "h");
        assert_eq!(cut_chars("héllo", 2), "hé");
    }
}
