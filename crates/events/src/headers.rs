//! Metadata header names. They are lower-case ASCII so they survive any transport.

pub const EVENT_ID: &str = "clairon-event-id";
pub const EVENT_TYPE: &str = "clairon-event-type";
pub const SCHEMA_VERSION: &str = "clairon-schema-version";
/// W3C trace context of the request that caused the event.
pub const TRACEPARENT: &str = "traceparent";
/// 1 for the first delivery, incremented on every retry.
pub const ATTEMPT: &str = "clairon-attempt";
/// Epoch milliseconds before which a retry record must not be handled.
pub const NOT_BEFORE: &str = "clairon-not-before";
pub const ORIGINAL_TOPIC: &str = "clairon-original-topic";
pub const ORIGINAL_PARTITION: &str = "clairon-original-partition";
pub const ORIGINAL_OFFSET: &str = "clairon-original-offset";
/// The consumer group whose handling failed.
pub const CONSUMER_GROUP: &str = "clairon-consumer-group";
/// Why the last handling failed.
pub const ERROR: &str = "clairon-error";

pub fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sets a header, replacing any earlier value.
pub fn set(headers: &mut Vec<(String, String)>, name: &str, value: impl Into<String>) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    headers.push((name.to_owned(), value.into()));
}
