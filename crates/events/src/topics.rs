//! Topic names. Retry and dead-letter topics derive from the topic they serve:
//! `<topic>-retry-<group>-<n>` holds the records whose n-th attempt failed in
//! consumer group `<group>` (one set per group, so one group's retries are never
//! re-handled by another group reading the same topic); `<topic>-dlt` holds the
//! records no group will retry again, with the group named in a header.

pub const USER_REGISTERED: &str = "user-registered";
pub const NOTIFICATION_TRIGGERED: &str = "notification-triggered";
pub const USER_ACTION_PERFORMED: &str = "user-action-performed";
pub const NOTIFICATION_STATUS: &str = "notification-status";
pub const NOTIFICATION_PUSH: &str = "notification-push";
/// Logouts, read in full by every process that authenticates requests but does
/// not run the users service. Its retention must outlive the longest token.
pub const TOKEN_REVOKED: &str = "token-revoked";

pub const ALL: [&str; 6] = [
    USER_REGISTERED,
    NOTIFICATION_TRIGGERED,
    USER_ACTION_PERFORMED,
    NOTIFICATION_STATUS,
    NOTIFICATION_PUSH,
    TOKEN_REVOKED,
];

const DLT_SUFFIX: &str = "-dlt";

pub fn retry(topic: &str, group: &str, level: u32) -> String {
    format!("{topic}-retry-{group}-{level}")
}

pub fn dead_letter(topic: &str) -> String {
    format!("{topic}{DLT_SUFFIX}")
}

pub fn is_dead_letter(topic: &str) -> bool {
    topic.ends_with(DLT_SUFFIX)
}

/// The topic a retry or dead-letter topic derives from (itself for a main topic).
pub fn base_topic(topic: &str) -> &str {
    if let Some(base) = topic.strip_suffix(DLT_SUFFIX) {
        return base;
    }
    match topic.find("-retry-") {
        Some(idx) if topic.ends_with(|c: char| c.is_ascii_digit()) => &topic[..idx],
        _ => topic,
    }
}
