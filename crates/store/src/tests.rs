use std::time::Duration;

use clairon_bus::{embedded::EmbeddedBus, EventBus};
use clairon_events::{Envelope, NotificationTriggered, NotificationType, Timestamp};

use super::*;

#[tokio::test]
async fn migrations_apply_once_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sub/app.db", dir.path().display());
    let db = Database::connect(&url, 2).await.unwrap();
    let m = [Migration::portable(
        1,
        "t",
        "CREATE TABLE a_things (id VARCHAR(36) PRIMARY KEY)",
    )];
    migrate(&db, "a", &m).await.unwrap();
    migrate(&db, "a", &m).await.unwrap();
    // Another service may use the same version number.
    migrate(
        &db,
        "b",
        &[Migration::portable(
            1,
            "t",
            "CREATE TABLE b_things (id VARCHAR(36) PRIMARY KEY)",
        )],
    )
    .await
    .unwrap();
    sqlx::query("INSERT INTO a_things (id) VALUES (?)")
        .bind("x")
        .execute(&db.pool)
        .await
        .unwrap();
    let dup = sqlx::query("INSERT INTO a_things (id) VALUES (?)")
        .bind("x")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(is_unique_violation(&dup));
}

#[tokio::test]
async fn outbox_rows_reach_the_bus_only_when_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&format!("sqlite://{}/app.db", dir.path().display()), 2)
        .await
        .unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus.db"), 2)
        .await
        .unwrap();
    let outbox = outbox::Outbox::new("t_outbox");
    migrate(&db, "t", &[outbox.migration(1)]).await.unwrap();
    let ev = NotificationTriggered {
        notification_id: uuid::Uuid::new_v4(),
        user_id: uuid::Uuid::new_v4(),
        kind: NotificationType::Email,
        title: "t".into(),
        message: "m".into(),
        recipient: None,
        timestamp: Timestamp::now(),
    };
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, &Envelope::new(&ev, None))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(outbox.relay_once(&db, &bus).await.unwrap(), 0);

    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, &Envelope::new(&ev, None))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outbox.relay_once(&db, &bus).await.unwrap(), 1);
    assert_eq!(outbox.relay_once(&db, &bus).await.unwrap(), 0);

    let mut sub = bus
        .subscribe("g", &["notification-triggered".into()])
        .await
        .unwrap();
    let recs = sub.poll(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(recs.len(), 1);
    let back: NotificationTriggered = serde_json::from_slice(&recs[0].payload).unwrap();
    assert_eq!(back, ev);
    assert_eq!(recs[0].key, ev.user_id.to_string());
}

#[test]
fn redacts_passwords() {
    assert_eq!(
        redact("mysql://app:s3cret@db:3306/x"),
        "mysql://app:***@db:3306/x"
    );
    assert_eq!(redact("sqlite://data/a.db"), "sqlite://data/a.db");
}
