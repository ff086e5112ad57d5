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
use clairon_store::{
    both_backends,
    testing::{fresh_database, TestDatabase},
    Backend,
};
use uuid::Uuid;

use crate::{
    channels::{Capture, Channel, ChannelError, Channels, Delivery, Outgoing},
    repo, Contact, Notifications, UserDirectory,
};

both_backends!(
    a_redelivered_event_sends_once,
    a_failed_send_is_retried_then_dead_lettered_with_history,
    welcome_email_is_captured_without_smtp_and_idempotent_per_user,
    an_unparseable_record_is_rejected_and_kept_as_a_dead_letter,
    oversized_values_from_the_bus_are_stored,
    every_query_runs_on_both_backends,
    another_process_claim_defers_delivery_until_it_ends_or_runs_out,
    a_late_dead_letter_neither_undoes_a_send_nor_replays_it,
);

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

/// Fails every send with a very long provider answer.
struct Verbose;

#[async_trait]
impl Channel for Verbose {
    async fn send(&self, _: &Outgoing) -> Result<Delivery, ChannelError> {
        Err(ChannelError::Transient("🎉".repeat(20_000)))
    }
}

/// Keeps the database and the bus folder for the test's duration.
struct Guard {
    _db: TestDatabase,
    _dir: tempfile::TempDir,
}

async fn service(
    backend: Backend,
    sms_fail_first: usize,
) -> (Guard, Arc<Notifications>, Arc<AtomicUsize>) {
    service_with(backend, sms_fail_first, Box::new(Capture)).await
}

async fn service_with(
    backend: Backend,
    sms_fail_first: usize,
    push: Box<dyn Channel>,
) -> (Guard, Arc<Notifications>, Arc<AtomicUsize>) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(backend).await;
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
        push,
    };
    let svc = Notifications::start(
        &deps,
        db.db.clone(),
        channels,
        Arc::new(Directory),
        "this-process".into(),
    )
    .await
    .unwrap();
    (Guard { _db: db, _dir: dir }, svc, sent)
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

/// What the consumer stores for `ev`.
fn as_new(ev: &NotificationTriggered) -> repo::NewNotification {
    repo::NewNotification {
        notification_id: ev.notification_id,
        user_id: ev.user_id,
        kind: ev.kind,
        title: ev.title.clone(),
        message: ev.message.clone(),
        recipient: ev.recipient.clone(),
        created_at: ev.timestamp,
        traceparent: None,
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

async fn a_redelivered_event_sends_once(backend: Backend) {
    let (_d, svc, sent) = service(backend, 0).await;
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

/// Another replica is mid-send (its claim is in the shared database): this one
/// neither sends nor skips, it asks for another round; once the other has
/// recorded its outcome there is nothing left to send, and a claim whose
/// holder died runs out.
async fn another_process_claim_defers_delivery_until_it_ends_or_runs_out(backend: Backend) {
    let (_d, svc, sent) = service(backend, 0).await;
    let other = "another-process";

    let ev = sms();
    let env = Envelope::new(&ev, None);
    assert_eq!(
        repo::claim(&svc.db, &as_new(&ev), other).await.unwrap(),
        repo::Claim::Claimed(None)
    );
    match svc.handle(&record(&env, 1)).await {
        Err(HandleError::Defer(why)) => assert!(why.contains("another process"), "{why}"),
        other => panic!("expected a deferral while another process holds the claim: {other:?}"),
    }
    assert_eq!(sent.load(Ordering::SeqCst), 0);
    // The other process's send succeeded.
    repo::record_outcome(
        &svc.db,
        &svc.outbox,
        &as_new(&ev),
        clairon_events::NotificationStatus::Sent,
        1,
        ev.recipient.as_deref(),
        None,
    )
    .await
    .unwrap();
    svc.handle(&record(&env, 2)).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 0);

    // The holder died mid-send: once its claim has run out, this one sends.
    let ev = sms();
    let env = Envelope::new(&ev, None);
    repo::claim(&svc.db, &as_new(&ev), other).await.unwrap();
    assert!(svc.handle(&record(&env, 1)).await.is_err());
    sqlx::query("UPDATE notif_notifications SET claimed_until = ? WHERE notification_id = ?")
        .bind(clairon_store::now_ms() - 1)
        .bind(ev.notification_id.to_string())
        .execute(&svc.db.pool)
        .await
        .unwrap();
    svc.handle(&record(&env, 2)).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    // The outcome released the claim: the other process sees it done.
    assert_eq!(
        repo::claim(&svc.db, &as_new(&ev), other).await.unwrap(),
        repo::Claim::Done(clairon_events::NotificationStatus::Sent)
    );

    // A released claim lets the next handler in at once.
    let ev = sms();
    let env = Envelope::new(&ev, None);
    repo::claim(&svc.db, &as_new(&ev), other).await.unwrap();
    repo::release(&svc.db, ev.notification_id, other)
        .await
        .unwrap();
    svc.handle(&record(&env, 1)).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 2);

    // This process's own claim from before a crash (same owner name after
    // the restart) does not hold it back.
    let ev = sms();
    let env = Envelope::new(&ev, None);
    repo::claim(&svc.db, &as_new(&ev), "this-process")
        .await
        .unwrap();
    svc.handle(&record(&env, 1)).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 3);
}

/// A copy that only ever met another replica's claim runs out of attempts
/// after that replica sent: the notification stays SENT, and replaying the
/// dead letter sends nothing more.
async fn a_late_dead_letter_neither_undoes_a_send_nor_replays_it(backend: Backend) {
    let (_d, svc, sent) = service(backend, 0).await;
    let ev = sms();
    let env = Envelope::new(&ev, None);
    svc.handle(&record(&env, 1)).await.unwrap();
    svc.dead_lettered(&record(&env, 3), "claimed by another process")
        .await
        .unwrap();
    let id = ev.notification_id.to_string();
    let status = || async { repo::get(&svc.db, &id).await.unwrap().unwrap().status };
    assert_eq!(status().await, "SENT");
    let history: Vec<String> = repo::history_of(&svc.db, &id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.status)
        .collect();
    assert_eq!(history, ["PENDING", "SENT"]);

    let dead = repo::dead_letters(&svc.db, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "the record itself is kept");
    let stored = repo::dead_letter_by_id(&svc.db, &dead[0].id)
        .await
        .unwrap()
        .unwrap();
    let replayed = Envelope {
        topic: stored.topic.clone(),
        key: stored.key.clone(),
        headers: stored.headers.clone(),
        payload: stored.payload.clone().into_bytes(),
    };
    assert!(
        repo::replay(&svc.db, &svc.outbox, &dead[0].id, &stored, &replayed)
            .await
            .unwrap()
    );
    assert_eq!(status().await, "SENT");
    svc.handle(&record(&replayed, 1)).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 1);
}

async fn a_failed_send_is_retried_then_dead_lettered_with_history(backend: Backend) {
    let (_d, svc, sent) = service(backend, usize::MAX).await;
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

async fn welcome_email_is_captured_without_smtp_and_idempotent_per_user(backend: Backend) {
    let (_d, svc, _) = service(backend, 0).await;
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

async fn an_unparseable_record_is_rejected_and_kept_as_a_dead_letter(backend: Backend) {
    let (_d, svc, _) = service(backend, 0).await;
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

/// Events come from any producer: what does not fit a column is cut, and
/// long texts fit, so MySQL in strict mode stores what SQLite stores.
async fn oversized_values_from_the_bus_are_stored(backend: Backend) {
    let (_g, svc, _) = service_with(backend, 0, Box::new(Verbose)).await;
    let ev = NotificationTriggered {
        kind: NotificationType::Push,
        title: "é".repeat(300),
        message: "🎉".repeat(30_000),
        recipient: Some("r".repeat(400)),
        ..sms()
    };
    let mut env = Envelope::new(&ev, None);
    env.key = "k".repeat(300);
    assert!(matches!(
        svc.handle(&record(&env, 1)).await,
        Err(HandleError::Retry(_))
    ));
    let id = ev.notification_id.to_string();
    let n = repo::get(&svc.db, &id).await.unwrap().unwrap();
    assert_eq!(n.status, "FAILED");
    assert_eq!(n.title.chars().count(), 255);
    assert_eq!(n.message, ev.message);
    assert_eq!(n.recipient.unwrap().len(), 320);
    assert_eq!(n.last_error.unwrap().chars().count(), 4_000);

    svc.dead_lettered(&record(&env, 2), &"reason ".repeat(2_000))
        .await
        .unwrap();
    let n = repo::get(&svc.db, &id).await.unwrap().unwrap();
    assert_eq!((n.status.as_str(), n.attempts), ("DEAD", 2));
    // A record that is not a notification at all, with a large payload.
    let mut junk = record(&env, 2);
    junk.payload = format!("{{\"blob\":\"{}\"}}", "x".repeat(200_000)).into_bytes();
    svc.dead_lettered(&junk, "invalid payload").await.unwrap();
    let dls = repo::dead_letters(&svc.db, None, 10).await.unwrap();
    assert_eq!(dls.len(), 2);
    assert!(dls.iter().all(|d| d.key == env.key));
    let dl = dls.iter().find(|d| d.notification_id.is_some()).unwrap();
    assert_eq!(dl.reason.chars().count(), 4_000);
    let junk = dls.iter().find(|d| d.notification_id.is_none()).unwrap();
    assert_eq!(junk.payload["blob"].as_str().unwrap().len(), 200_000);
    let statuses: Vec<String> = repo::history_of(&svc.db, &id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.status)
        .collect();
    assert_eq!(statuses, ["PENDING", "FAILED", "DEAD"]);
}

/// Every repository query, run against the backend.
async fn every_query_runs_on_both_backends(backend: Backend) {
    let (_g, svc, _) = service(backend, 0).await;
    let user = Uuid::new_v4();
    let t0 = Timestamp::now().millis() - 10_000;
    let mut ids = Vec::new();
    for i in 0..5i64 {
        let kind = if i % 2 == 0 {
            NotificationType::Push
        } else {
            NotificationType::Sms
        };
        let ev = NotificationTriggered {
            user_id: user,
            kind,
            title: format!("n{i}"),
            // Two share a creation time: paging must still see each once.
            timestamp: Timestamp::from_millis(t0 + i.min(3) * 1_000),
            ..sms()
        };
        svc.handle(&record(&Envelope::new(&ev, None), 1))
            .await
            .unwrap();
        ids.push(ev.notification_id);
    }

    // Newest first, keyset-paged on (created_at, id), with filters.
    let mut filter = repo::ListFilter {
        user_id: Some(user.to_string()),
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = repo::list(&svc.db, &filter, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        filter.after = Some((last.created_ms, last.notification_id.clone()));
        seen.extend(page.into_iter().map(|n| (n.created_ms, n.notification_id)));
    }
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted);
    let pushes = repo::list(
        &svc.db,
        &repo::ListFilter {
            kind: Some(NotificationType::Push),
            status: Some(clairon_events::NotificationStatus::Captured),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    assert_eq!(pushes.len(), 3);

    // Read marks.
    let first = ids[0].to_string();
    repo::mark_read(&svc.db, &first).await.unwrap();
    let read_at = repo::get(&svc.db, &first).await.unwrap().unwrap().read_at;
    assert!(read_at.is_some());
    repo::mark_read(&svc.db, &first).await.unwrap();
    assert_eq!(
        repo::get(&svc.db, &first).await.unwrap().unwrap().read_at,
        read_at
    );
    assert!(repo::get(&svc.db, "nope").await.unwrap().is_none());

    // Pending pushes are the SENT ones not yet delivered, oldest first.
    sqlx::query("UPDATE notif_notifications SET status = 'SENT' WHERE kind = 'PUSH'")
        .execute(&svc.db.pool)
        .await
        .unwrap();
    let pending = svc.pending_pushes(user, 10).await.unwrap();
    let pending_ids: Vec<Uuid> = pending.iter().map(|p| p.notification_id).collect();
    assert_eq!(pending_ids, [ids[0], ids[2], ids[4]]);
    assert_eq!(pending[1].title, "n2");
    svc.mark_pushes_delivered(&pending_ids[..2]).await.unwrap();
    svc.mark_pushes_delivered(&[]).await.unwrap();
    let pending = svc.pending_pushes(user, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].notification_id, ids[4]);

    // Dead letters: paged, read back, replayed once.
    for i in 0..3 {
        // Stored, never delivered, then out of attempts.
        let ev = sms();
        let env = Envelope::new(&ev, None);
        repo::claim(&svc.db, &as_new(&ev), "elsewhere")
            .await
            .unwrap();
        let mut r = record(&env, 3);
        r.offset = i;
        svc.dead_lettered(&r, "gone").await.unwrap();
    }
    let all = repo::dead_letters(&svc.db, None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    let first_page = repo::dead_letters(&svc.db, None, 2).await.unwrap();
    let last = first_page.last().unwrap();
    let rest = repo::dead_letters(&svc.db, Some((last.created_ms, last.id.clone())), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert!(first_page.iter().all(|d| d.id != rest[0].id));
    let stored = repo::dead_letter_by_id(&svc.db, &rest[0].id)
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.replayed && stored.notification_id.is_some());
    assert_eq!(stored.topic, "notification-triggered");
    let env = Envelope {
        topic: stored.topic.clone(),
        key: stored.key.clone(),
        headers: stored.headers.clone(),
        payload: stored.payload.clone().into_bytes(),
    };
    assert!(
        repo::replay(&svc.db, &svc.outbox, &rest[0].id, &stored, &env)
            .await
            .unwrap()
    );
    assert!(
        !repo::replay(&svc.db, &svc.outbox, &rest[0].id, &stored, &env)
            .await
            .unwrap()
    );
    let again = repo::dead_letter_by_id(&svc.db, &rest[0].id)
        .await
        .unwrap()
        .unwrap();
    assert!(again.replayed);
    let nid = stored.notification_id.unwrap();
    let n = repo::get(&svc.db, &nid).await.unwrap().unwrap();
    assert_eq!(n.status, "PENDING");
    assert!(repo::dead_letter_by_id(&svc.db, "nope")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn two_concurrent_deliveries_of_one_notification_send_once() {
    let (_d, svc, sent) = service(Backend::Sqlite, 0).await;
    let ev = sms();
    let env = Envelope::new(&ev, None);
    let (r1, r2) = (record(&env, 1), record(&env, 2));
    let (a, b) = tokio::join!(svc.handle(&r1), svc.handle(&r2));
    // One sends; the other either finds it sent or is told to come back later.
    assert!(a.is_ok() || b.is_ok());
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    svc.handle(&record(&env, 3)).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 1);
}
