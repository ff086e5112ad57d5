//! The administrators' live feed: every event of the main topics and their
//! dead-letter topics, read by a per-replica consumer group from the latest
//! offset, fanned out as one compact `EVENT` frame per record to the admin
//! sockets, and summed into the dashboard's figures.
//!
//! Frames (JSON text):
//! - `EVENT` `{type, eventId, eventType, topic, userId, at, deadLetter, error?, payload}`
//!   for each record;
//! - `SNAPSHOT` `{type, stats, perSecond, tail}` once, when an admin socket opens;
//! - `STATS` `{type, ...stats}` at most once a second while the figures change.
//!
//! The figures count what this replica has seen since it started.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use clairon_bus::{
    consumer::{HandleError, Handler},
    Record,
};
use clairon_events::{headers, topics, EventType, Timestamp};
use serde_json::{json, Value};

use crate::hub::Hub;

/// Events kept for a new dashboard's live tail.
const TAIL: usize = 50;
/// Seconds of per-type event counts kept for a new dashboard's rate chart.
const RATE_WINDOW_SECS: i64 = 120;
/// Delivery latencies kept for the latency chart and percentiles.
const LATENCIES: usize = 300;
/// Notifications whose last status is remembered, to move them between status counts.
const TRACKED: usize = 100_000;
/// A payload larger than this is replaced by a note in frames.
const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Series name of records read from a dead-letter topic.
pub const DEAD_LETTER_SERIES: &str = "DeadLettered";

/// The topics the feed reads: every main topic and its dead-letter topic.
pub fn feed_topics() -> Vec<String> {
    topics::ALL
        .iter()
        .map(|t| t.to_string())
        .chain(topics::ALL.iter().map(|t| topics::dead_letter(t)))
        .collect()
}

#[derive(Default)]
pub struct Feed {
    state: Mutex<FeedState>,
}

struct FeedState {
    since: Timestamp,
    /// Bumped on every change, so the ticker sends STATS only when something moved.
    version: u64,
    totals: BTreeMap<String, u64>,
    /// Per-second counts by series, oldest first: (epoch second, counts).
    per_second: VecDeque<(i64, BTreeMap<String, u64>)>,
    /// Current status counts by (channel, status).
    statuses: BTreeMap<(String, String), i64>,
    /// notificationId → (channel, last status), oldest first for eviction.
    last_status: HashMap<String, (String, String)>,
    tracked_order: VecDeque<String>,
    /// (at, milliseconds, channel) of recent deliveries.
    latencies: VecDeque<(String, i64, String)>,
    tail: VecDeque<Arc<str>>,
}

impl Default for FeedState {
    fn default() -> Self {
        FeedState {
            since: Timestamp::now(),
            version: 0,
            totals: BTreeMap::new(),
            per_second: VecDeque::new(),
            statuses: BTreeMap::new(),
            last_status: HashMap::new(),
            tracked_order: VecDeque::new(),
            latencies: VecDeque::new(),
            tail: VecDeque::new(),
        }
    }
}

/// What the feed makes of one record.
pub struct FeedEvent {
    pub series: String,
    pub frame: Arc<str>,
    payload: Value,
    event_type: String,
    at_ms: i64,
}

/// Builds the `EVENT` frame of a record.
pub fn event_of(r: &Record) -> FeedEvent {
    let dead_letter = topics::is_dead_letter(&r.topic);
    let event_type = r
        .header(headers::EVENT_TYPE)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .or_else(|| EventType::for_topic(&r.topic).map(|t| t.as_str().to_owned()))
        .unwrap_or_else(|| "Unknown".to_owned());
    let payload: Value = serde_json::from_slice(&r.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.payload).into_owned()));
    let user_id = payload
        .get("userId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| r.key.clone());
    let at = Timestamp::from_millis(r.timestamp_ms);
    let shown = if r.payload.len() > MAX_PAYLOAD_BYTES {
        json!({ "truncated": true, "bytes": r.payload.len() })
    } else {
        payload.clone()
    };
    let mut frame = json!({
        "type": "EVENT",
        "eventId": r.event_id(),
        "eventType": event_type,
        "topic": r.topic,
        "userId": user_id,
        "at": at,
        "deadLetter": dead_letter,
        "payload": shown,
    });
    if let Some(e) = r.header(headers::ERROR) {
        frame["error"] = Value::String(e.to_owned());
    }
    FeedEvent {
        series: if dead_letter {
            DEAD_LETTER_SERIES.to_owned()
        } else {
            event_type.clone()
        },
        frame: frame.to_string().into(),
        payload,
        event_type,
        at_ms: r.timestamp_ms,
    }
}

impl Feed {
    /// Adds an event to the figures and the tail.
    pub fn record(&self, ev: &FeedEvent) {
        let Ok(mut s) = self.state.lock() else { return };
        s.version += 1;
        *s.totals.entry(ev.series.clone()).or_default() += 1;
        let second = ev.at_ms.div_euclid(1000);
        match s.per_second.back_mut() {
            Some((sec, counts)) if *sec == second => {
                *counts.entry(ev.series.clone()).or_default() += 1
            }
            _ => {
                // Records of one second may arrive out of order across partitions:
                // count a late one in its own second when it is still kept.
                if let Some((_, counts)) = s.per_second.iter_mut().find(|(sec, _)| *sec == second) {
                    *counts.entry(ev.series.clone()).or_default() += 1;
                } else if s.per_second.back().is_none_or(|(sec, _)| *sec < second) {
                    s.per_second
                        .push_back((second, BTreeMap::from([(ev.series.clone(), 1)])));
                }
            }
        }
        while s
            .per_second
            .front()
            .is_some_and(|(sec, _)| *sec <= second - RATE_WINDOW_SECS)
        {
            s.per_second.pop_front();
        }
        if ev.series != DEAD_LETTER_SERIES {
            match ev.event_type.as_str() {
                "NotificationTriggered" => {
                    // Trigger and status events travel on different topics, read
                    // concurrently: a status may come first, and then wins.
                    if let (Some(id), Some(kind)) = (
                        ev.payload.get("notificationId").and_then(Value::as_str),
                        ev.payload.get("type").and_then(Value::as_str),
                    ) {
                        if !s.last_status.contains_key(id) {
                            s.set_status(id, kind, "PENDING");
                        }
                    }
                }
                "NotificationStatusChanged" => s.status_changed(&ev.payload),
                _ => {}
            }
        }
        s.tail.push_back(ev.frame.clone());
        while s.tail.len() > TAIL {
            s.tail.pop_front();
        }
    }

    pub fn version(&self) -> u64 {
        self.state.lock().map(|s| s.version).unwrap_or(0)
    }

    /// The `STATS` frame.
    pub fn stats_frame(&self) -> Arc<str> {
        let Ok(s) = self.state.lock() else {
            return Arc::from("{}");
        };
        let mut v = s.stats();
        v["type"] = json!("STATS");
        v.to_string().into()
    }

    /// The `SNAPSHOT` frame a new admin socket starts with.
    pub fn snapshot_frame(&self) -> Arc<str> {
        let Ok(s) = self.state.lock() else {
            return Arc::from("{}");
        };
        let per_second: Vec<Value> = s
            .per_second
            .iter()
            .map(|(sec, counts)| json!({ "second": sec, "counts": counts }))
            .collect();
        let tail: Vec<Value> = s
            .tail
            .iter()
            .filter_map(|f| serde_json::from_str(f).ok())
            .collect();
        json!({
            "type": "SNAPSHOT",
            "stats": s.stats(),
            "perSecond": per_second,
            "tail": tail,
        })
        .to_string()
        .into()
    }
}

impl FeedState {
    fn status_changed(&mut self, p: &Value) {
        let (Some(id), Some(kind), Some(status)) = (
            p.get("notificationId").and_then(Value::as_str),
            p.get("type").and_then(Value::as_str),
            p.get("status").and_then(Value::as_str),
        ) else {
            return;
        };
        self.set_status(id, kind, status);
        if matches!(status, "SENT" | "CAPTURED") {
            let at = p.get("timestamp").and_then(Value::as_str);
            let triggered = p.get("triggeredAt").and_then(Value::as_str);
            if let (Some(at), Some(triggered)) = (at, triggered) {
                if let (Ok(a), Ok(t)) = (Timestamp::parse(at), Timestamp::parse(triggered)) {
                    let ms = (a.millis() - t.millis()).max(0);
                    self.latencies
                        .push_back((at.to_owned(), ms, kind.to_owned()));
                    while self.latencies.len() > LATENCIES {
                        self.latencies.pop_front();
                    }
                }
            }
        }
    }

    fn set_status(&mut self, id: &str, channel: &str, status: &str) {
        let key = (channel.to_owned(), status.to_owned());
        match self.last_status.get_mut(id) {
            Some(prev) => {
                if *prev == key {
                    return;
                }
                if let Some(n) = self.statuses.get_mut(prev) {
                    *n -= 1;
                }
                *prev = key.clone();
            }
            None => {
                self.last_status.insert(id.to_owned(), key.clone());
                self.tracked_order.push_back(id.to_owned());
                // A forgotten notification stays counted in its last status.
                while self.tracked_order.len() > TRACKED {
                    if let Some(old) = self.tracked_order.pop_front() {
                        self.last_status.remove(&old);
                    }
                }
            }
        }
        *self.statuses.entry(key).or_default() += 1;
    }

    fn stats(&self) -> Value {
        let statuses: Vec<Value> = self
            .statuses
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|((channel, status), n)| json!({"channel": channel, "status": status, "count": n}))
            .collect();
        let mut sorted: Vec<i64> = self.latencies.iter().map(|(_, ms, _)| *ms).collect();
        sorted.sort_unstable();
        let pct = |p: f64| -> Value {
            if sorted.is_empty() {
                return Value::Null;
            }
            let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
            json!(sorted[idx.min(sorted.len() - 1)])
        };
        let recent: Vec<Value> = self
            .latencies
            .iter()
            .map(|(at, ms, ch)| json!({"at": at, "ms": ms, "channel": ch}))
            .collect();
        json!({
            "since": self.since,
            "totals": self.totals,
            "statuses": statuses,
            "latency": {
                "count": sorted.len(),
                "p50": pct(0.5),
                "p95": pct(0.95),
                "max": sorted.last(),
                "recent": recent,
            },
        })
    }
}

/// The feed's bus handler: never fails, so nothing of it is retried or dead-lettered.
pub struct FeedHandler {
    pub feed: Arc<Feed>,
    pub hub: Arc<Hub>,
}

#[async_trait]
impl Handler for FeedHandler {
    async fn handle(&self, r: &Record) -> Result<(), HandleError> {
        let ev = event_of(r);
        self.feed.record(&ev);
        if self.hub.admin_connections() > 0 {
            self.hub.send_admins(ev.frame);
        }
        Ok(())
    }
}

/// Sends a `STATS` frame to the admin sockets at most once a second, when the
/// figures changed.
pub async fn tick_stats(
    feed: Arc<Feed>,
    hub: Arc<Hub>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let version = feed.version();
        if version != sent && hub.admin_connections() > 0 {
            hub.send_admins(feed.stats_frame());
            sent = version;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, event_type: Option<&str>, payload: Value, ts: i64) -> Record {
        let mut headers = vec![(headers::EVENT_ID.to_owned(), "e1".to_owned())];
        if let Some(t) = event_type {
            headers.push((headers::EVENT_TYPE.to_owned(), t.to_owned()));
        }
        Record {
            topic: topic.into(),
            partition: 0,
            offset: 7,
            key: "key-user".into(),
            headers,
            payload: payload.to_string().into_bytes(),
            timestamp_ms: ts,
        }
    }

    #[test]
    fn an_event_frame_names_type_topic_user_and_payload() {
        let r = record(
            topics::USER_REGISTERED,
            None,
            json!({"userId": "u1", "email": "a@b.c"}),
            1_700_000_000_000,
        );
        let ev = event_of(&r);
        let f: Value = serde_json::from_str(&ev.frame).unwrap();
        assert_eq!(f["type"], "EVENT");
        assert_eq!(f["eventType"], "UserRegistered");
        assert_eq!(f["topic"], "user-registered");
        assert_eq!(f["userId"], "u1");
        assert_eq!(f["eventId"], "e1");
        assert_eq!(f["deadLetter"], false);
        assert_eq!(f["payload"]["email"], "a@b.c");
        assert_eq!(f["at"], "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn dead_letters_form_their_own_series_and_carry_the_reason() {
        let mut r = record(
            &topics::dead_letter(topics::NOTIFICATION_TRIGGERED),
            Some("NotificationTriggered"),
            json!({"userId": "u1"}),
            0,
        );
        r.headers
            .push((headers::ERROR.to_owned(), "SMS gateway answered 500".into()));
        let ev = event_of(&r);
        assert_eq!(ev.series, DEAD_LETTER_SERIES);
        let f: Value = serde_json::from_str(&ev.frame).unwrap();
        assert_eq!(f["deadLetter"], true);
        assert_eq!(f["error"], "SMS gateway answered 500");
    }

    #[test]
    fn big_and_non_json_payloads_are_shown_safely() {
        let mut r = record(topics::USER_REGISTERED, None, json!({}), 0);
        r.payload = b"not json".to_vec();
        let f: Value = serde_json::from_str(&event_of(&r).frame).unwrap();
        assert_eq!(f["payload"], "not json");
        assert_eq!(f["userId"], "key-user");
        r.payload = vec![b'x'; MAX_PAYLOAD_BYTES + 1];
        let f: Value = serde_json::from_str(&event_of(&r).frame).unwrap();
        assert_eq!(f["payload"]["truncated"], true);
    }

    #[test]
    fn statuses_move_with_each_notification_and_latency_is_measured() {
        let feed = Feed::default();
        let trig = record(
            topics::NOTIFICATION_TRIGGERED,
            Some("NotificationTriggered"),
            json!({"notificationId": "n1", "userId": "u", "type": "SMS"}),
            1_000,
        );
        feed.record(&event_of(&trig));
        let changed = |status: &str| {
            record(
                topics::NOTIFICATION_STATUS,
                Some("NotificationStatusChanged"),
                json!({"notificationId": "n1", "userId": "u", "type": "SMS", "status": status,
                       "attempt": 1, "triggeredAt": "2024-01-01T10:00:00.000Z",
                       "timestamp": "2024-01-01T10:00:00.250Z"}),
                1_500,
            )
        };
        feed.record(&event_of(&changed("FAILED")));
        feed.record(&event_of(&changed("SENT")));
        let stats: Value = serde_json::from_str(&feed.stats_frame()).unwrap();
        assert_eq!(
            stats["statuses"],
            json!([{"channel": "SMS", "status": "SENT", "count": 1}])
        );
        assert_eq!(stats["totals"]["NotificationStatusChanged"], 2);
        assert_eq!(stats["totals"]["NotificationTriggered"], 1);
        assert_eq!(stats["latency"]["p50"], 250);
        assert_eq!(stats["latency"]["count"], 1);
        let snap: Value = serde_json::from_str(&feed.snapshot_frame()).unwrap();
        assert_eq!(snap["type"], "SNAPSHOT");
        assert_eq!(snap["tail"].as_array().unwrap().len(), 3);
        assert_eq!(snap["perSecond"][0]["second"], 1);
        assert_eq!(
            snap["perSecond"][0]["counts"]["NotificationStatusChanged"],
            2
        );
        assert_eq!(snap["perSecond"][0]["counts"]["NotificationTriggered"], 1);
    }

    #[test]
    fn a_status_read_before_its_trigger_is_kept() {
        let feed = Feed::default();
        let status = record(
            topics::NOTIFICATION_STATUS,
            Some("NotificationStatusChanged"),
            json!({"notificationId": "n2", "userId": "u", "type": "EMAIL", "status": "CAPTURED",
                   "attempt": 1, "timestamp": "2024-01-01T10:00:00.000Z"}),
            2_000,
        );
        let trig = record(
            topics::NOTIFICATION_TRIGGERED,
            Some("NotificationTriggered"),
            json!({"notificationId": "n2", "userId": "u", "type": "EMAIL"}),
            1_900,
        );
        feed.record(&event_of(&status));
        feed.record(&event_of(&trig));
        let stats: Value = serde_json::from_str(&feed.stats_frame()).unwrap();
        assert_eq!(
            stats["statuses"],
            json!([{"channel": "EMAIL", "status": "CAPTURED", "count": 1}])
        );
    }

    #[test]
    fn the_tail_and_rate_window_stay_bounded() {
        let feed = Feed::default();
        for i in 0..(TAIL as i64 + 10) {
            let r = record(
                topics::USER_ACTION_PERFORMED,
                None,
                json!({"userId": "u"}),
                i * 10_000,
            );
            feed.record(&event_of(&r));
        }
        let snap: Value = serde_json::from_str(&feed.snapshot_frame()).unwrap();
        assert_eq!(snap["tail"].as_array().unwrap().len(), TAIL);
        let kept = snap["perSecond"].as_array().unwrap().len() as i64;
        assert!(kept <= RATE_WINDOW_SECS / 10 + 1, "{kept}");
    }

    #[test]
    fn every_main_topic_and_its_dead_letter_topic_is_read() {
        let t = feed_topics();
        assert_eq!(t.len(), topics::ALL.len() * 2);
        assert!(t.contains(&"notification-triggered-dlt".to_owned()));
    }
}
