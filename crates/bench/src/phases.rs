//! The measured phases: probe, ingest, drain and latency.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::bail;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use tokio::time::{sleep, sleep_until, Instant};

use crate::{
    api::{self, accepted_id, error_kind, push_body, Api},
    collector::{Collector, Titles},
    progress,
    report::{Ingest, Latency, Pushes},
    stats::{histogram, ms, record, round3, summary_ms},
    Args,
};

/// Quiet period that ends the drain after the ingest phase.
const QUIET: Duration = Duration::from_secs(2);
/// Longest wait for the probe push.
const PROBE_WAIT: Duration = Duration::from_secs(15);

pub struct Ctx<'a> {
    pub args: &'a Args,
    pub api: &'a Api,
    pub admin_token: &'a str,
    pub user_id: &'a str,
    pub titles: Arc<Titles>,
    pub collector: &'a Collector,
}

impl Ctx<'_> {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.args.request_timeout_secs)
    }
}

/// One push end to end before measuring anything: fails when the trigger is
/// refused, warns when the push does not arrive. Returns its delivery time in ms.
pub async fn probe(ctx: &Ctx<'_>) -> anyhow::Result<Option<f64>> {
    let sent = Instant::now();
    let resp = ctx
        .api
        .http
        .post(ctx.api.trigger_url.clone())
        .bearer_auth(ctx.admin_token)
        .json(&push_body(ctx.user_id, &ctx.titles.probe(), "probe"))
        .send()
        .await?;
    let status = resp.status();
    if status != StatusCode::ACCEPTED {
        let body = resp.text().await.unwrap_or_default();
        bail!("POST /api/events/notifications answered {status}: {body}");
    }
    let deadline = sent + PROBE_WAIT;
    loop {
        if let Some(at) = ctx.collector.state().probe {
            let delivery = ms(at.saturating_duration_since(sent));
            progress!("probe push delivered in {delivery} ms");
            return Ok(Some(delivery));
        }
        if Instant::now() >= deadline {
            progress!(
                "warning: the probe push did not arrive on the WebSocket within {} s; \
                 delivery figures will likely be zero",
                PROBE_WAIT.as_secs()
            );
            return Ok(None);
        }
        sleep(Duration::from_millis(10)).await;
    }
}

pub struct IngestOut {
    pub report: Ingest,
    pub started: Instant,
}

#[derive(Default)]
struct WorkerOut {
    requests: u64,
    accepted: u64,
    errors: BTreeMap<String, u64>,
    hist: Option<Histogram<u64>>,
}

/// Phase 1: `concurrency` closed-loop workers, each on its own keep-alive
/// connection, trigger PUSH notifications until the time is up.
pub async fn ingest(ctx: &Ctx<'_>) -> anyhow::Result<IngestOut> {
    let args = ctx.args;
    let workers = args.concurrency;
    progress!("ingest: {workers} workers for {} s", args.ingest_secs);
    let client = api::client(ctx.timeout(), workers as usize)?;
    let done = Arc::new(AtomicU64::new(0));
    let token: Arc<str> = ctx.admin_token.into();
    let user: Arc<str> = ctx.user_id.into();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.ingest_secs);

    let mut handles = Vec::with_capacity(workers as usize);
    for w in 0..workers {
        let (client, url, token, user, titles, done) = (
            client.clone(),
            ctx.api.trigger_url.clone(),
            token.clone(),
            user.clone(),
            ctx.titles.clone(),
            done.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut out = WorkerOut::default();
            let mut hist = histogram();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let body = push_body(&user, &titles.ingest(w, n), "ingest phase");
                n += 1;
                let t0 = Instant::now();
                let res = client
                    .post(url.clone())
                    .bearer_auth(&*token)
                    .json(&body)
                    .send()
                    .await;
                out.requests += 1;
                match res {
                    Ok(resp) => {
                        let status = resp.status();
                        // Read the whole answer so the connection is reused.
                        let read = resp.bytes().await;
                        let elapsed = t0.elapsed();
                        if read.is_err() {
                            *out.errors.entry("transport".into()).or_default() += 1;
                        } else if status == StatusCode::ACCEPTED {
                            out.accepted += 1;
                            record(&mut hist, elapsed);
                        } else {
                            *out.errors.entry(status.as_u16().to_string()).or_default() += 1;
                        }
                    }
                    Err(e) => {
                        *out.errors.entry(error_kind(&e)).or_default() += 1;
                        // Do not spin on a refused connection.
                        sleep(Duration::from_millis(10)).await;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            out.hist = Some(hist);
            out
        }));
    }

    let all = futures::future::join_all(handles);
    tokio::pin!(all);
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let results = loop {
        tokio::select! {
            r = &mut all => break r,
            _ = tick.tick() => {
                let received = ctx.collector.state().ingest_titles.len();
                progress!(
                    "ingest: {:>5.1} s  {} requests  {} pushes received",
                    start.elapsed().as_secs_f64(),
                    done.load(Ordering::Relaxed),
                    received
                );
            }
        }
    };
    let elapsed = start.elapsed().as_secs_f64();

    let mut hist = histogram();
    let (mut requests, mut accepted) = (0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in results {
        let out = r?;
        requests += out.requests;
        accepted += out.accepted;
        for (k, v) in out.errors {
            *errors.entry(k).or_default() += v;
        }
        if let Some(h) = out.hist {
            hist.add(&h)?;
        }
    }
    let throughput = round3(accepted as f64 / elapsed);
    progress!("ingest: {requests} requests, {accepted} accepted, {throughput} req/s");
    Ok(IngestOut {
        report: Ingest {
            duration_secs: round3(elapsed),
            concurrency: workers,
            requests,
            accepted,
            errors: requests - accepted,
            errors_by_kind: errors,
            throughput_rps: throughput,
            latency_ms: summary_ms(&hist),
            pushes: None,
        },
        started: start,
    })
}

/// After the ingest phase: keeps counting its pushes until every accepted one
/// arrived, the socket was quiet for 2 s, or the cap is reached.
pub async fn drain(ctx: &Ctx<'_>, accepted: u64, ingest_start: Instant) -> Pushes {
    let start = Instant::now();
    let cap = start + Duration::from_secs(ctx.args.drain_cap_secs);
    let during_phase = ctx.collector.state().ingest_titles.len() as u64;
    progress!("drain: {during_phase} of {accepted} pushes received so far");
    let mut next_print = start + Duration::from_secs(1);
    let (received, duplicates, last_ingest, end) = loop {
        let (received, duplicates, last, last_ingest, closed) = {
            let s = ctx.collector.state();
            (
                s.ingest_titles.len() as u64,
                s.ingest_duplicates,
                s.last_frame,
                s.last_ingest_frame,
                s.closed.is_some(),
            )
        };
        let now = Instant::now();
        let quiet_since = last.map_or(start, |l| l.max(start));
        let end = if received >= accepted {
            Some("complete")
        } else if closed {
            Some("socketClosed")
        } else if now.saturating_duration_since(quiet_since) >= QUIET {
            Some("quiet")
        } else if now >= cap {
            Some("cap")
        } else {
            None
        };
        if let Some(end) = end {
            break (received, duplicates, last_ingest, end);
        }
        if now >= next_print {
            progress!("drain: {received} of {accepted} pushes received");
            next_print += Duration::from_secs(1);
        }
        sleep(Duration::from_millis(20)).await;
    };
    let secs = round3(start.elapsed().as_secs_f64());
    progress!("drain: {received} of {accepted} pushes received ({end} after {secs} s)");
    if end == "cap" {
        progress!(
            "warning: pushes of the ingest phase are still arriving; \
             the latency phase will queue behind them"
        );
    }
    let delivery_secs = last_ingest
        .map(|t| t.saturating_duration_since(ingest_start).as_secs_f64())
        .unwrap_or(0.0);
    Pushes {
        accepted,
        received,
        received_during_phase: during_phase,
        undelivered: accepted.saturating_sub(received),
        duplicates,
        delivery_rate: if delivery_secs > 0.0 {
            round3(received as f64 / delivery_secs)
        } else {
            0.0
        },
        drain_secs: secs,
        drain_end: end,
    }
}

struct Sent {
    seq: u64,
    sent_at: Instant,
    /// Start of the request minus its scheduled instant.
    lag: Duration,
    /// Time to the HTTP answer.
    answer: Duration,
    /// `Ok(notificationId from the 202)` or the error kind.
    outcome: Result<Option<String>, String>,
}

/// Phase 2: open loop at a fixed offered rate; every send is its own task and
/// the schedule never waits for answers. Each push is matched to its
/// WebSocket frame by the sequence number in its title.
pub async fn latency(ctx: &Ctx<'_>) -> anyhow::Result<Latency> {
    let args = ctx.args;
    let rate = u64::from(args.rate);
    let total = rate * args.latency_secs;
    progress!(
        "latency: {rate}/s for {} s ({total} pushes)",
        args.latency_secs
    );
    let token: Arc<str> = ctx.admin_token.into();
    let start = Instant::now();
    let mut next_print = start + Duration::from_secs(1);
    let mut handles = Vec::with_capacity(total as usize);
    for seq in 0..total {
        let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
        sleep_until(due).await;
        let client = ctx.api.http.clone();
        let url = ctx.api.trigger_url.clone();
        let token = token.clone();
        let body = push_body(ctx.user_id, &ctx.titles.latency(seq), "latency phase");
        handles.push(tokio::spawn(async move {
            let sent_at = Instant::now();
            let res = client
                .post(url)
                .bearer_auth(&*token)
                .json(&body)
                .send()
                .await;
            let outcome = match res {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => Ok(accepted_id(resp).await),
                Ok(resp) => {
                    let status = resp.status();
                    let _ = resp.bytes().await;
                    Err(status.as_u16().to_string())
                }
                Err(e) => Err(error_kind(&e)),
            };
            Sent {
                seq,
                sent_at,
                lag: sent_at.saturating_duration_since(due),
                answer: sent_at.elapsed(),
                outcome,
            }
        }));
        if Instant::now() >= next_print {
            let delivered = ctx.collector.state().latency.len();
            progress!(
                "latency: {:>5.1} s  {} sent  {delivered} delivered",
                start.elapsed().as_secs_f64(),
                seq + 1
            );
            next_print += Duration::from_secs(1);
        }
    }
    let window_end = Instant::now().max(start + Duration::from_secs(args.latency_secs));
    sleep_until(window_end).await;
    let window = (window_end - start).as_secs_f64();

    let mut sends = Vec::with_capacity(handles.len());
    for h in handles {
        sends.push(h.await?);
    }
    let accepted: Vec<&Sent> = sends.iter().filter(|s| s.outcome.is_ok()).collect();

    // Give late pushes `loss_wait_secs` after the phase.
    let deadline = window_end + Duration::from_secs(args.loss_wait_secs);
    loop {
        let finished = {
            let s = ctx.collector.state();
            s.closed.is_some() || accepted.iter().all(|a| s.latency.contains_key(&a.seq))
        };
        if finished || Instant::now() >= deadline {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }

    let mut delivery = histogram();
    let mut http = histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut max_lag = Duration::ZERO;
    for s in &sends {
        max_lag = max_lag.max(s.lag);
        match &s.outcome {
            Ok(_) => record(&mut http, s.answer),
            Err(kind) => *errors.entry(kind.clone()).or_default() += 1,
        }
    }
    let (mut delivered, mut mismatches) = (0u64, 0u64);
    let duplicates = {
        let state = ctx.collector.state();
        for a in &accepted {
            let Some(r) = state.latency.get(&a.seq) else {
                continue;
            };
            if r.at > deadline {
                continue;
            }
            delivered += 1;
            record(&mut delivery, r.at.saturating_duration_since(a.sent_at));
            if let (Ok(Some(want)), Some(got)) = (&a.outcome, &r.notification_id) {
                if want != got {
                    mismatches += 1;
                }
            }
        }
        state.latency_duplicates
    };
    let accepted_n = accepted.len() as u64;
    let lost = accepted_n - delivered;
    let summary = summary_ms(&delivery);
    progress!(
        "latency: {delivered} of {accepted_n} delivered, {lost} lost, p50 {:?} ms, p99 {:?} ms",
        summary.p50.unwrap_or(f64::NAN),
        summary.p99.unwrap_or(f64::NAN)
    );
    Ok(Latency {
        offered_rate: rate,
        duration_secs: round3(window),
        sent: total,
        accepted: accepted_n,
        send_errors: total - accepted_n,
        errors_by_kind: errors,
        achieved_rate: round3(total as f64 / window),
        max_schedule_lag_ms: ms(max_lag),
        delivered,
        lost,
        duplicates,
        id_mismatches: mismatches,
        latency_ms: summary,
        http_latency_ms: summary_ms(&http),
    })
}
