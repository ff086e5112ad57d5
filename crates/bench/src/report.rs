//! The JSON document printed on stdout (field order as declared).

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Serialize)]
pub struct Report {
    /// From `--label`.
    pub mode: String,
    pub machine: Machine,
    pub setup: Setup,
    /// `null` when skipped (`--ingest-secs 0`).
    pub ingest: Option<Ingest>,
    /// `null` when skipped (`--latency-secs 0`).
    pub latency: Option<Latency>,
    pub websocket: WebSocket,
}

#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Setup {
    /// Trigger → WebSocket time of the single probe push (`null` if it never came).
    pub probe_delivery_ms: Option<f64>,
}

/// Latency percentiles in milliseconds; all `null` when nothing was recorded.
#[derive(Serialize, Default)]
pub struct Summary {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingest {
    pub duration_secs: f64,
    pub concurrency: u32,
    pub requests: u64,
    pub accepted: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Accepted (202) requests per second.
    pub throughput_rps: f64,
    pub latency_ms: Summary,
    pub pushes: Option<Pushes>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pushes {
    pub accepted: u64,
    pub received: u64,
    pub received_during_phase: u64,
    pub undelivered: u64,
    pub duplicates: u64,
    /// Received pushes per second, from the start of the ingest phase to the
    /// last ingest push read.
    pub delivery_rate: f64,
    pub drain_secs: f64,
    /// `complete`, `quiet`, `cap` or `socketClosed`.
    pub drain_end: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub offered_rate: u64,
    pub duration_secs: f64,
    pub sent: u64,
    pub accepted: u64,
    pub send_errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub achieved_rate: f64,
    pub max_schedule_lag_ms: f64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub id_mismatches: u64,
    /// Trigger → WebSocket delivery.
    pub latency_ms: Summary,
    /// Trigger → 202 answer.
    pub http_latency_ms: Summary,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebSocket {
    pub frames: u64,
    pub other_frames: u64,
    pub unparsable: u64,
    pub closed_early: Option<String>,
}
