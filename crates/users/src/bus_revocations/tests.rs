use std::{sync::Arc, time::Duration};

use clairon_auth::Revocations;
use clairon_bus::{embedded::EmbeddedBus, EventBus};
use clairon_events::{Envelope, Timestamp, TokenRevoked};
use clairon_store::now_ms;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::BusRevocations;
use crate::revocations::GRACE_MS;

async fn revoke_on(bus: &EmbeddedBus, jti: &str, expires_ms: i64) {
    let ev = TokenRevoked {
        token_id: jti.into(),
        user_id: format!("user-of-{jti}"),
        expires_at: Timestamp::from_millis(expires_ms),
    };
    bus.publish(Envelope::new(&ev, None)).await.unwrap();
}

#[tokio::test]
async fn replays_the_topic_at_start_then_follows_it_and_drops_expired_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Arc::new(
        EmbeddedBus::open(&tmp.path().join("bus.db"), 4)
            .await
            .unwrap(),
    );
    let now = now_ms();
    let later = now + 600_000;
    // Several keys, so that the replay has to reach the end of several partitions.
    for i in 0..20 {
        revoke_on(&bus, &format!("before-{i}"), later).await;
    }
    revoke_on(&bus, "long-expired", now - GRACE_MS - 5_000).await;

    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
    let r = BusRevocations::start(
        bus.clone(),
        "revocations-test",
        Duration::from_secs(10),
        cancel.clone(),
        &tasks,
    )
    .await
    .unwrap();
    // Known as soon as start returns, with no waiting.
    for i in 0..20 {
        assert!(
            r.is_revoked(&format!("before-{i}")).await.unwrap(),
            "before-{i}"
        );
    }
    assert!(!r.is_revoked("long-expired").await.unwrap());
    assert!(!r.is_revoked("never-revoked").await.unwrap());
    assert_eq!(r.tracked(), 20);

    // Published after start: known within a second.
    revoke_on(&bus, "after", later).await;
    let published = tokio::time::Instant::now();
    while !r.is_revoked("after").await.unwrap() {
        assert!(
            published.elapsed() < Duration::from_secs(1),
            "a revocation published after start took more than a second to arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Entries whose tokens have expired (past the skew grace) are dropped.
    revoke_on(&bus, "soon", now + 1_000).await;
    let published = tokio::time::Instant::now();
    while !r.is_revoked("soon").await.unwrap() {
        assert!(published.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.prune(now + 1_000 + GRACE_MS + 1);
    assert!(!r.is_revoked("soon").await.unwrap());
    assert!(r.is_revoked("after").await.unwrap());
    r.prune(later + GRACE_MS + 1);
    assert_eq!(r.tracked(), 0);

    cancel.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(2), tasks.wait())
        .await
        .expect("the reader stops on cancel");
    // No offset was committed: the next start replays the topic again.
    let overview = bus.describe().await.unwrap();
    assert!(
        overview
            .groups
            .iter()
            .all(|g| g.group != "revocations-test"),
        "{:?}",
        overview.groups
    );
}

#[tokio::test]
async fn an_empty_or_missing_topic_does_not_hold_up_start() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Arc::new(
        EmbeddedBus::open(&tmp.path().join("bus.db"), 2)
            .await
            .unwrap(),
    );
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
    let r = BusRevocations::start(
        bus.clone(),
        "revocations-empty",
        Duration::from_secs(5),
        cancel.clone(),
        &tasks,
    )
    .await
    .unwrap();
    assert_eq!(r.tracked(), 0);
    revoke_on(&bus, "first", now_ms() + 60_000).await;
    let published = tokio::time::Instant::now();
    while !r.is_revoked("first").await.unwrap() {
        assert!(published.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
}
