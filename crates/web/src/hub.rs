//! Per-user registry of open sockets. Each socket has a bounded queue; a send
//! never waits on a slow client: a full queue drops that client (it reconnects
//! and gets what it missed from the inbox) and is counted.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::mpsc;
use uuid::Uuid;

const QUEUE: usize = 256;

/// A socket's id and the queue its writer task drains.
type Socket = (u64, mpsc::Sender<Arc<str>>);

#[derive(Default)]
pub struct Hub {
    conns: Mutex<HashMap<Uuid, Vec<Socket>>>,
    next_id: AtomicU64,
}

/// Removes its socket from the hub when dropped, however the socket task ends.
pub struct Registration {
    hub: Arc<Hub>,
    user: Uuid,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(self.user, self.id);
    }
}

impl Hub {
    pub fn register(self: &Arc<Self>, user: Uuid) -> (Registration, mpsc::Receiver<Arc<str>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.conns.lock() {
            c.entry(user).or_default().push((id, tx));
        }
        metrics::gauge!("clairon_ws_connections").increment(1.0);
        (
            Registration {
                hub: self.clone(),
                user,
                id,
            },
            rx,
        )
    }

    fn remove(&self, user: Uuid, id: u64) {
        if let Ok(mut c) = self.conns.lock() {
            if let Some(list) = c.get_mut(&user) {
                let before = list.len();
                list.retain(|(i, _)| *i != id);
                if list.len() < before {
                    metrics::gauge!("clairon_ws_connections").decrement(1.0);
                }
                if list.is_empty() {
                    c.remove(&user);
                }
            }
        }
    }

    /// Queues `frame` on every socket of `user`; returns how many took it.
    pub fn send(&self, user: Uuid, frame: Arc<str>) -> usize {
        // Copy the senders out so no lock is held while queueing.
        let senders: Vec<Socket> = match self.conns.lock() {
            Ok(c) => c.get(&user).cloned().unwrap_or_default(),
            Err(_) => return 0,
        };
        let mut delivered = 0;
        for (id, tx) in senders {
            match tx.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("clairon_ws_slow_clients_dropped_total").increment(1);
                    tracing::info!(%user, "dropping a socket whose queue is full");
                    self.remove(user, id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.remove(user, id),
            }
        }
        delivered
    }

    pub fn connections(&self) -> usize {
        self.conns
            .lock()
            .map(|c| c.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}
