//! Reads the bench user's WebSocket for the whole run and records every frame
//! (receive instant taken as soon as the frame is read), keyed by the title the
//! bench put in the notification.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures::StreamExt;
use serde_json::Value;
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle, time::Instant};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

use crate::report::WebSocket;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Titles the bench sends; `tag` is unique to the run.
pub struct Titles {
    probe: String,
    ingest: String,
    latency: String,
}

impl Titles {
    pub fn new(tag: &str) -> Titles {
        Titles {
            probe: format!("bench-probe {tag}"),
            ingest: format!("bench-ingest {tag} "),
            latency: format!("bench-latency {tag} #"),
        }
    }

    pub fn probe(&self) -> String {
        self.probe.clone()
    }

    pub fn ingest(&self, worker: u32, n: u64) -> String {
        format!("{}w{worker} #{n}", self.ingest)
    }

    pub fn latency(&self, seq: u64) -> String {
        format!("{}{seq}", self.latency)
    }
}

/// First receipt of a latency-phase frame.
#[derive(Clone)]
pub struct Receipt {
    pub at: Instant,
    pub notification_id: Option<String>,
}

#[derive(Default)]
pub struct State {
    /// Every data frame, including unparsable and foreign ones.
    pub frames: u64,
    pub last_frame: Option<Instant>,
    pub probe: Option<Instant>,
    /// Distinct ingest-phase titles received.
    pub ingest_titles: HashSet<String>,
    pub ingest_duplicates: u64,
    pub last_ingest_frame: Option<Instant>,
    /// Latency-phase receipts by sequence number.
    pub latency: HashMap<u64, Receipt>,
    pub latency_duplicates: u64,
    /// JSON frames whose title is not one of this run's.
    pub other_frames: u64,
    pub unparsable: u64,
    /// Why the socket ended, when it ended before the bench stopped it.
    pub closed: Option<String>,
}

pub struct Collector {
    state: Arc<Mutex<State>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Collector {
    pub fn spawn(ws: Ws, tag: &str) -> Collector {
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(read(ws, Titles::new(tag), state.clone(), stop_rx));
        Collector { state, stop, task }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the socket and returns a summary of what it carried.
    pub async fn stop(self) -> WebSocket {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        WebSocket {
            frames: s.frames,
            other_frames: s.other_frames,
            unparsable: s.unparsable,
            closed_early: s.closed.clone(),
        }
    }
}

async fn read(
    mut ws: Ws,
    titles: Titles,
    state: Arc<Mutex<State>>,
    mut stop: oneshot::Receiver<()>,
) {
    let closed = loop {
        tokio::select! {
            _ = &mut stop => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                break None;
            }
            msg = ws.next() => {
                let at = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => record(&state, &titles, text.as_str(), at),
                    Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                        Ok(text) => record(&state, &titles, text, at),
                        Err(_) => lock(&state).unparsable += 1,
                    },
                    Some(Ok(Message::Close(frame))) => {
                        break Some(match frame {
                            Some(f) => format!("closed by the server: {} {}", f.code, f.reason),
                            None => "closed by the server".to_string(),
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(format!("WebSocket error: {e}")),
                    None => break Some("WebSocket stream ended".to_string()),
                }
            }
        }
    };
    if let Some(reason) = closed {
        crate::progress!("warning: {reason}");
        lock(&state).closed = Some(reason);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn record(state: &Mutex<State>, titles: &Titles, text: &str, at: Instant) {
    let frame: Option<Value> = serde_json::from_str(text).ok();
    let mut s = lock(state);
    s.frames += 1;
    s.last_frame = Some(at);
    let Some(frame) = frame else {
        s.unparsable += 1;
        return;
    };
    let title = frame.get("title").and_then(Value::as_str).unwrap_or("");
    if let Some(seq) = title
        .strip_prefix(titles.latency.as_str())
        .and_then(|n| n.parse::<u64>().ok())
    {
        let s = &mut *s;
        match s.latency.entry(seq) {
            Entry::Occupied(_) => s.latency_duplicates += 1,
            Entry::Vacant(slot) => {
                let notification_id = frame
                    .get("notificationId")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                slot.insert(Receipt {
                    at,
                    notification_id,
                });
            }
        }
    } else if title.starts_with(titles.ingest.as_str()) {
        if s.ingest_titles.insert(title.to_string()) {
            s.last_ingest_frame = Some(at);
        } else {
            s.ingest_duplicates += 1;
        }
    } else if title == titles.probe {
        s.probe.get_or_insert(at);
    } else {
        s.other_frames += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_are_sorted_by_title() {
        let titles = Titles::new("t1");
        let state = Mutex::new(State::default());
        let now = Instant::now();
        let frame = |title: String| {
            json!({"notificationId": "n1", "type": "PUSH", "title": title, "message": "m"})
                .to_string()
        };
        record(&state, &titles, &frame(titles.latency(7)), now);
        record(&state, &titles, &frame(titles.latency(7)), now);
        record(&state, &titles, &frame(titles.ingest(3, 1)), now);
        record(&state, &titles, &frame(titles.probe()), now);
        record(
            &state,
            &titles,
            &frame("bench-latency other #1".into()),
            now,
        );
        record(&state, &titles, "not json", now);
        let s = lock(&state);
        assert_eq!(s.frames, 6);
        assert_eq!(s.latency.len(), 1);
        assert_eq!(s.latency[&7].notification_id.as_deref(), Some("n1"));
        assert_eq!(s.latency_duplicates, 1);
        assert_eq!(s.ingest_titles.len(), 1);
        assert!(s.probe.is_some());
        assert_eq!(s.other_frames, 1);
        assert_eq!(s.unparsable, 1);
    }
}
