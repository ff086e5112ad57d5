//! Per-user registry of open sockets. Each socket has a bounded queue; a send
//! never waits on a slow client: a full queue drops that client (it reconnects
//! and gets what it missed from the inbox, or a fresh dashboard snapshot) and
//! is counted.
//!
//! The hub knows each socket's role: PUSH frames go to the sockets of the user
//! they are for, the live event feed ([`Hub::send_admins`]) to administrators'
//! sockets only.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::mpsc;
use uuid::Uuid;

/// Queue of a user's socket: PUSH frames only, a few at a time.
const QUEUE: usize = 256;
/// Queue of an administrator's socket, which also carries every event of the bus.
const ADMIN_QUEUE: usize = 2048;

/// Who holds a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRole {
    User,
    Admin,
}

/// The queue a socket's writer task drains.
type Queue = mpsc::Sender<Arc<str>>;

#[derive(Clone)]
struct Socket {
    id: u64,
    role: SocketRole,
    tx: Queue,
}

#[derive(Default)]
pub struct Hub {
    conns: Mutex<HashMap<Uuid, Vec<Socket>>>,
    /// Administrators' sockets by socket id, with their user.
    admins: Mutex<HashMap<u64, (Uuid, Queue)>>,
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
    pub fn register(
        self: &Arc<Self>,
        user: Uuid,
        role: SocketRole,
    ) -> (Registration, mpsc::Receiver<Arc<str>>) {
        let (tx, rx) = mpsc::channel(match role {
            SocketRole::User => QUEUE,
            SocketRole::Admin => ADMIN_QUEUE,
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.conns.lock() {
            c.entry(user).or_default().push(Socket {
                id,
                role,
                tx: tx.clone(),
            });
        }
        if role == SocketRole::Admin {
            if let Ok(mut a) = self.admins.lock() {
                a.insert(id, (user, tx));
            }
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
        if let Ok(mut a) = self.admins.lock() {
            a.remove(&id);
        }
        if let Ok(mut c) = self.conns.lock() {
            if let Some(list) = c.get_mut(&user) {
                let before = list.len();
                list.retain(|s| s.id != id);
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
        let sockets: Vec<Socket> = match self.conns.lock() {
            Ok(c) => c.get(&user).cloned().unwrap_or_default(),
            Err(_) => return 0,
        };
        sockets
            .into_iter()
            .filter(|s| self.offer(user, s.id, &s.tx, &frame))
            .count()
    }

    /// Queues `frame` on every administrator's socket; returns how many took it.
    pub fn send_admins(&self, frame: Arc<str>) -> usize {
        let sockets: Vec<(u64, Uuid, Queue)> = match self.admins.lock() {
            Ok(a) => a
                .iter()
                .map(|(id, (user, tx))| (*id, *user, tx.clone()))
                .collect(),
            Err(_) => return 0,
        };
        sockets
            .into_iter()
            .filter(|(id, user, tx)| self.offer(*user, *id, tx, &frame))
            .count()
    }

    fn offer(&self, user: Uuid, id: u64, tx: &Queue, frame: &Arc<str>) -> bool {
        match tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("clairon_ws_slow_clients_dropped_total").increment(1);
                tracing::info!(%user, "dropping a socket whose queue is full");
                self.remove(user, id);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.remove(user, id);
                false
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.conns
            .lock()
            .map(|c| c.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Open administrator sockets.
    pub fn admin_connections(&self) -> usize {
        self.admins.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// The role of each open socket of `user`, for tests and diagnostics.
    pub fn roles_of(&self, user: Uuid) -> Vec<SocketRole> {
        self.conns
            .lock()
            .map(|c| {
                c.get(&user)
                    .map(|l| l.iter().map(|s| s.role).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admin_frames_reach_admin_sockets_only() {
        let hub = Arc::new(Hub::default());
        let (alice, root) = (Uuid::new_v4(), Uuid::new_v4());
        let (_ra, mut user_rx) = hub.register(alice, SocketRole::User);
        let (_rb, mut admin_rx) = hub.register(root, SocketRole::Admin);
        assert_eq!(hub.send_admins(Arc::from("event")), 1);
        assert_eq!(&*admin_rx.recv().await.unwrap(), "event");
        assert!(user_rx.try_recv().is_err());
        // PUSH frames still go to their user, whatever the role.
        assert_eq!(hub.send(root, Arc::from("push")), 1);
        assert_eq!(&*admin_rx.recv().await.unwrap(), "push");
        assert_eq!(hub.roles_of(root), vec![SocketRole::Admin]);
    }

    #[tokio::test]
    async fn closing_an_admin_socket_unregisters_it() {
        let hub = Arc::new(Hub::default());
        let root = Uuid::new_v4();
        let (reg, rx) = hub.register(root, SocketRole::Admin);
        assert_eq!(hub.admin_connections(), 1);
        drop(rx);
        assert_eq!(hub.send_admins(Arc::from("x")), 0);
        assert_eq!(hub.admin_connections(), 0);
        drop(reg);
        assert_eq!(hub.connections(), 0);
    }

    #[tokio::test]
    async fn a_full_admin_queue_drops_that_socket_only() {
        let hub = Arc::new(Hub::default());
        let (slow, fast) = (Uuid::new_v4(), Uuid::new_v4());
        let (_r1, _slow_rx) = hub.register(slow, SocketRole::Admin);
        let (_r2, mut fast_rx) = hub.register(fast, SocketRole::Admin);
        for _ in 0..ADMIN_QUEUE {
            hub.send_admins(Arc::from("e"));
            fast_rx.recv().await.unwrap();
        }
        assert_eq!(hub.send_admins(Arc::from("e")), 1);
        assert_eq!(hub.admin_connections(), 1);
    }
}
