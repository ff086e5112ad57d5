use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use clairon_auth::{AuthContext, Revocations, Tokens};
use clairon_bus::{
    consumer::{HandleError, Handler},
    embedded::EmbeddedBus,
    EventBus, Record,
};
use clairon_events::{
    Envelope, NotificationTriggered, NotificationType, Timestamp, UserRegistered,
};
use clairon_http::ServiceDeps;
use clairon_store::Database;
use uuid::Uuid;

use crate::{
    channels::{Capture, Channel, ChannelError, Channels, Delivery, Outgoing},
    repo, Contact, Notifications, UserDirectory,
};

struct NoRevocations;

#[async_trait]
impl Revocations for NoRevocations {
    async fn is_revoked(&self, _: &str) -> anyhow::Result<bool> {
        Ok(false)
    }
    async fn revoke(&self, _: &str, _: i64) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Counts sends; fails the first `fail_first` of them.
struct Counting {
    sent: Arc<AtomicUsize>,
    fail_first: usize,
}

#[async_trait]
impl Channel for Counting {
    async fn send(&self, _: &Outgoing) -> Result<Delivery, ChannelError> {
        let n = self.sent.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            return Err(ChannelError::Transient("gateway down".into()));
        }
        Ok(Delivery::Sent)
    }
}

struct Directory;

#[async_trait]
impl UserDirectory for Directory {
    async fn contact(&self, _: Uuid) -> anyhow::Result<Option<Contact>> {
        Ok(Some(Contact {
            email: "known@example.com".into(),
            phone_number: None,
            first_name: "Known".into(),
        }))
    }
}

async fn service(
    sms_fail_first: usize,
) -> (tempfile::TempDir, Arc<Notifications>, Arc<AtomicUsize>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&format!("sqlite://{}/n.db", dir.path().display()), 4)
        .await
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(
        EmbeddedBus::open(&dir.path().join("bus.db"), 2)
            .await
            .unwrap(),
    );
    let deps = ServiceDeps {
        bus,
        auth: Arc::new(AuthContext {
            tokens: Tokens::new(&[3u8; 32], Duration::from_secs(60)).unwrap(),
            revocations: Arc::new(NoRevocations),
        }),
        cancel: tokio_util::sync::CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        retry: Default::default(),
    };
    // Stopped consumer: tests drive the handler directly.
    deps.cancel.cancel();
    let sent = Arc::new(AtomicUsize::new(0));
    let channels = Channels {
        email: Box::new(Capture),
        sms: Box::new(Counting {
            sent: sent.clone(),
            fail_first: sms_fail_first,
        }),
        push: Box::new(Capture),
    };
    let svc = Notifications::start(&deps, db, channels, Arc::new(Directory))
        .await
        .unwrap();
    (dir, svc, sent)
}

fn record(env: &Envelope, attempt: u32) -> Record {
    let mut headers = env.headers.clone();
    clairon_events::headers::set(
        &mut headers,
        clairon_events::headers::ATTEMPT,
        attempt.to_string(),
    );
    Record {
        topic: env.topic.clone(),
        partition: 0,
        offset: 0,
        key: env.key.clone(),
        headers,
        payload: env.payload.clone(),
        timestamp_ms: 0,
    }
}

fn sms() -> NotificationTriggered {
    NotificationTriggered {
        notification_id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        kind: NotificationType::Sms,
        title: "t".into(),
        message: "m".into(),
        recipient: Some("+33600000000".into()),
        timestamp: Timestamp::now(),
    }
}

#[tokio::test]
async fn a_redelivered_event_sends_once() {
    let (_d, svc, sent) = service(0).await;
    let ev = sms();
    let env = Envelope::new(&ev, None);
    svc.handle(&record(&env, 1)).await.unwrap();
    svc.handle(&record(&env, 1)).await.unwrap();
    // Same notification id under a new event id: still one send.
    svc.handle(&record(&Envelope::new(&ev, None), 1))
        .await
        .unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    let n = repo::get(&svc.db, &ev.notification_id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.status, "SENT");
}

#[tokio::test]
async fn a_failed_send_is_retried_then_dead_lettered_with_history() {
    let (_d, svc, sent) = service(usize::MAX).await;
    let ev = sms();
    let env = Envelope::new(&ev, None);
    assert!(matches!(
        svc.handle(&record(&env, 1)).await,
        Err(HandleError::Retry(_))
    ));
    let n = repo::get(&svc.db, &ev.notification_id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n.status.as_str(), n.attempts), ("FAILED", 1));
    assert!(matches!(
        svc.handle(&record(&env, 2)).await,
        Err(HandleError::Retry(_))
    ));
    svc.dead_lettered(&record(&env, 2), "gateway down")
        .await
        .unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 2);
    let n = repo::get(&svc.db, &ev.notification_id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.status, "DEAD");
    let statuses: Vec<String> = repo::history_of(&svc.db, &n.notification_id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.status)
        .collect();
    assert_eq!(statuses, ["PENDING", "FAILED", "FAILED", "DEAD"]);
    // A dead notification is not sent again by a late redelivery.
    svc.handle(&record(&env, 1)).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 2);
    assert_eq!(
        repo::dead_letters(&svc.db, None, 10).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn welcome_email_is_captured_without_smtp_and_idempotent_per_user() {
    let (_d, svc, _) = service(0).await;
    let ev = UserRegistered {
        user_id: Uuid::new_v4(),
        email: "new@example.com".into(),
        first_name: "New".into(),
        last_name: "User".into(),
        timestamp: Timestamp::now(),
    };
    let env = Envelope::new(&ev, None);
    svc.handle(&record(&env, 1)).await.unwrap();
    svc.handle(&record(&Envelope::new(&ev, None), 1))
        .await
        .unwrap();
    let id = crate::worker::welcome_id(ev.user_id).to_string();
    let n = repo::get(&svc.db, &id).await.unwrap().unwrap();
    assert_eq!(n.status, "CAPTURED");
    assert_eq!(n.recipient.as_deref(), Some("new@example.com"));
    let all = repo::list(&svc.db, &Default::default(), 10).await.unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn an_unparseable_record_is_rejected_and_kept_as_a_dead_letter() {
    let (_d, svc, _) = service(0).await;
    let mut env = Envelope::new(&sms(), None);
    env.payload = b"{not json".to_vec();
    let r = record(&env, 1);
    assert!(matches!(svc.handle(&r).await, Err(HandleError::Reject(_))));
    svc.dead_lettered(&r, "invalid payload").await.unwrap();
    let dl = repo::dead_letters(&svc.db, None, 10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].payload, serde_json::Value::String("{not json".into()));
    assert!(dl[0].notification_id.is_none());
}
