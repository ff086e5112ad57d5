use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use clairon_bus::{
    embedded::EmbeddedBus, BusError, BusOverview, EventBus, Message, Position, StartFrom,
    Subscription,
};
use clairon_events::{Envelope, NotificationTriggered, NotificationType, Timestamp};
use tokio::sync::oneshot;

use super::*;
use crate::testing::fresh_database;

both_backends!(
    migrations_apply_once_per_service,
    concurrent_migrations_apply_once,
    portable_sql_behaves_the_same,
    text_columns_decode_on_both_backends,
    outbox_rows_reach_the_bus_only_when_committed,
    two_relays_publish_every_row_once_in_order,
    outbox_gauges_follow_the_backlog,
);

async fn migrations_apply_once_per_service(backend: Backend) {
    let db = fresh_database(backend).await;
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
    assert!(is_unique_violation(&dup), "{dup}");
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM clairon_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(versions, 2);

    // A failing migration is not recorded, and the next run retries it.
    let broken = [
        m[0].clone(),
        Migration::portable(
            2,
            "broken",
            "CREATE TABLE a_more (id VARCHAR(36) PRIMARY KEY; ",
        ),
    ];
    assert!(migrate(&db, "a", &broken).await.is_err());
    let fixed = [
        m[0].clone(),
        Migration::portable(
            2,
            "fixed",
            "CREATE TABLE a_more (id VARCHAR(36) PRIMARY KEY)",
        ),
    ];
    migrate(&db, "a", &fixed).await.unwrap();
    sqlx::query("INSERT INTO a_more (id) VALUES ('y')")
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_sqlite_folder_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sub/app.db", dir.path().display());
    let db = Database::connect(&url, 2).await.unwrap();
    db.ping().await.unwrap();
    assert!(dir.path().join("sub/app.db").exists());
}

/// Replicas starting together on one database each run the same migrations.
async fn concurrent_migrations_apply_once(backend: Backend) {
    let first = fresh_database(backend).await;
    let second = first.connect_again(2).await;
    let ms = vec![
        Migration::portable(
            1,
            "one",
            "CREATE TABLE c_one (id VARCHAR(36) NOT NULL PRIMARY KEY); \
             CREATE INDEX c_one_id ON c_one (id)",
        ),
        Migration::portable(
            2,
            "two",
            "CREATE TABLE c_two (id VARCHAR(36) NOT NULL PRIMARY KEY)",
        ),
    ];
    let (a, b) = tokio::join!(migrate(&first, "c", &ms), migrate(&second, "c", &ms));
    a.unwrap();
    b.unwrap();
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM clairon_migrations WHERE service = 'c' ORDER BY version",
    )
    .fetch_all(&first.pool)
    .await
    .unwrap();
    assert_eq!(versions, [1, 2]);
}

/// The SQL habits the services rely on, checked on the backend itself.
async fn portable_sql_behaves_the_same(backend: Backend) {
    let db = fresh_database(backend).await;
    migrate(
        &db,
        "p",
        &[Migration::portable(
            1,
            "things",
            "CREATE TABLE p_things (id VARCHAR(36) NOT NULL PRIMARY KEY, name VARCHAR(8) NOT NULL, \
             body {long_text} NOT NULL, note TEXT NULL, n BIGINT NOT NULL, maybe BIGINT NULL, at BIGINT NOT NULL); \
             CREATE UNIQUE INDEX p_things_name ON p_things (name); \
             CREATE INDEX p_things_at ON p_things (at, id)",
        )],
    )
    .await
    .unwrap();
    let insert = |id: &'static str, name: &'static str, n: i64, maybe: Option<i64>| {
        sqlx::query(
            "INSERT INTO p_things (id, name, body, note, n, maybe, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(format!("body of {name} 50%_off"))
        .bind(None::<String>)
        .bind(n)
        .bind(maybe)
        .bind(n * 10)
    };
    insert("1", "abc", 1, None).execute(&db.pool).await.unwrap();
    insert("2", "b", 2, Some(7))
        .execute(&db.pool)
        .await
        .unwrap();
    // Text is compared byte for byte: case and accents make names distinct.
    insert("3", "ABC", 3, None).execute(&db.pool).await.unwrap();
    insert("4", "abç", 4, None).execute(&db.pool).await.unwrap();
    let dup = insert("5", "abc", 5, None)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(is_unique_violation(&dup), "{dup}");

    // A value longer than its column is refused, never cut.
    let long = sqlx::query(
        "INSERT INTO p_things (id, name, body, n, at) VALUES ('6', 'ninechars', 'x', 6, 60)",
    )
    .execute(&db.pool)
    .await;
    match backend {
        Backend::MySql => assert!(long.is_err(), "strict mode refuses it"),
        // SQLite does not enforce VARCHAR lengths: the services check lengths
        // before writing, so both behave the same for them.
        Backend::Sqlite => assert!(long.is_ok()),
    }
    sqlx::query("DELETE FROM p_things WHERE id = '6'")
        .execute(&db.pool)
        .await
        .unwrap();

    let row = sqlx::query(
        "SELECT COUNT(*) AS c, MAX(n) AS m, MAX(at) - (MAX(at) % 7) AS b, COUNT(maybe) AS cm FROM p_things",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.try_get::<i64, _>("c").unwrap(), 4);
    assert_eq!(row.try_get::<i64, _>("m").unwrap(), 4);
    assert_eq!(row.try_get::<i64, _>("b").unwrap(), 35);
    assert_eq!(row.try_get::<i64, _>("cm").unwrap(), 1);
    let maybes: Vec<Option<i64>> = sqlx::query_scalar("SELECT maybe FROM p_things ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(maybes, [None, Some(7), None, None]);
    let grouped = sqlx::query(
        "SELECT n - (n % 2) AS bucket, COUNT(*) AS c FROM p_things GROUP BY n - (n % 2) ORDER BY bucket",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let grouped: Vec<(i64, i64)> = grouped
        .iter()
        .map(|r| (r.try_get("bucket").unwrap(), r.try_get("c").unwrap()))
        .collect();
    assert_eq!(grouped, [(0, 1), (2, 2), (4, 1)]);

    // Byte order, as on SQLite: upper case before lower case.
    let names: Vec<String> = sqlx::query("SELECT name FROM p_things ORDER BY name")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| text(r, "name").unwrap())
        .collect();
    assert_eq!(names, ["ABC", "abc", "abç", "b"]);

    // LIKE with an explicit escape character that means the same to both.
    let like = |pattern: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT id FROM p_things WHERE LOWER(body) LIKE ? ESCAPE '!' ORDER BY id",
            )
            .bind(pattern)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(like("%50!%!_off").await, ["1", "2", "3", "4"]);
    assert_eq!(like("%of abc %").await, ["1", "3"]);
    assert!(like("%50!%!_!_off").await.is_empty());
    assert!(like("%\\%").await.is_empty());

    // Keyset paging on (at, id) with LIMIT bound as a parameter.
    let page: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM p_things WHERE at < ? OR (at = ? AND id < ?) ORDER BY at DESC, id DESC LIMIT ?",
    )
    .bind(30i64)
    .bind(30i64)
    .bind("3")
    .bind(1i64)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(page, ["2"]);
}

async fn text_columns_decode_on_both_backends(backend: Backend) {
    let db = fresh_database(backend).await;
    migrate(
        &db,
        "t",
        &[Migration::portable(
            1,
            "texts",
            "CREATE TABLE t_texts (id VARCHAR(36) NOT NULL PRIMARY KEY, short_text TEXT NOT NULL, \
             long_text {long_text} NOT NULL, maybe TEXT NULL)",
        )],
    )
    .await
    .unwrap();
    let big = "é🎉".repeat(20_000);
    sqlx::query("INSERT INTO t_texts (id, short_text, long_text, maybe) VALUES (?, ?, ?, ?)")
        .bind("a")
        .bind("héllo")
        .bind(&big)
        .bind(None::<String>)
        .execute(&db.pool)
        .await
        .unwrap();
    let row = sqlx::query("SELECT id, short_text, long_text, maybe FROM t_texts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    if backend == Backend::MySql {
        // The trap `text` works around.
        assert!(row.try_get::<String, _>("short_text").is_err());
    }
    assert_eq!(text(&row, "id").unwrap(), "a");
    assert_eq!(text(&row, "short_text").unwrap(), "héllo");
    assert_eq!(text(&row, 2).unwrap(), big);
    assert_eq!(opt_text(&row, "maybe").unwrap(), None);
    assert_eq!(
        opt_text(&row, "short_text").unwrap().as_deref(),
        Some("héllo")
    );
    assert!(text(&row, "maybe").is_err(), "NULL is not text");
    assert!(text(&row, "nope").is_err());
}

fn triggered() -> NotificationTriggered {
    NotificationTriggered {
        notification_id: uuid::Uuid::new_v4(),
        user_id: uuid::Uuid::new_v4(),
        kind: NotificationType::Email,
        title: "t".into(),
        message: "m".into(),
        recipient: None,
        timestamp: Timestamp::now(),
    }
}

async fn outbox_rows_reach_the_bus_only_when_committed(backend: Backend) {
    let db = fresh_database(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus.db"), 2)
        .await
        .unwrap();
    let outbox = outbox::Outbox::new("t_outbox");
    migrate(&db, "t", &[outbox.migration(1)]).await.unwrap();
    let ev = triggered();
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

async fn outbox_gauges_follow_the_backlog(backend: Backend) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    // Current-thread runtime: the relay records on this thread.
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let value = |name: &str, label: &str| -> Option<f64> {
        let prefix = format!("{name}{{{label}}} ");
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
    };
    let db = fresh_database(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus.db"), 2)
        .await
        .unwrap();
    let outbox = outbox::Outbox::new("g_outbox");
    migrate(&db, "g", &[outbox.migration(1)]).await.unwrap();
    assert_eq!(outbox.relay_once(&db, &bus).await.unwrap(), 0);
    let table = r#"table="g_outbox""#;
    assert_eq!(value("clairon_outbox_backlog", table), Some(0.0));
    assert_eq!(value("clairon_outbox_oldest_age_seconds", table), Some(0.0));

    let mut tx = db.pool.begin().await.unwrap();
    for _ in 0..3 {
        outbox
            .enqueue(&mut tx, &Envelope::new(&triggered(), None))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    // The oldest row has waited a minute.
    sqlx::query("UPDATE g_outbox SET created_at = created_at - 60000 WHERE id = (SELECT MIN(id) FROM (SELECT id FROM g_outbox) x)")
        .execute(&db.pool)
        .await
        .unwrap();
    // The pass measures what it found, then publishes it.
    assert_eq!(outbox.relay_once(&db, &bus).await.unwrap(), 3);
    assert_eq!(value("clairon_outbox_backlog", table), Some(3.0));
    let age = value("clairon_outbox_oldest_age_seconds", table).unwrap();
    assert!((59.0..120.0).contains(&age), "{age}");
    assert_eq!(
        value(
            "clairon_bus_published_total",
            r#"topic="notification-triggered""#
        ),
        Some(3.0)
    );
    assert_eq!(outbox.relay_once(&db, &bus).await.unwrap(), 0);
    assert_eq!(value("clairon_outbox_backlog", table), Some(0.0));
    assert_eq!(value("clairon_outbox_oldest_age_seconds", table), Some(0.0));
}

/// A bus whose next `publish_all`, once armed, says it started and then waits
/// to be let go.
struct GatedBus {
    inner: Arc<dyn EventBus>,
    gate: std::sync::Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl GatedBus {
    fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (started_tx, started) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        *self.gate.lock().unwrap() = Some((started_tx, go_rx));
        (started, go)
    }
}

#[async_trait]
impl EventBus for GatedBus {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    async fn publish(&self, msg: Message) -> Result<Position, BusError> {
        self.inner.publish(msg).await
    }
    async fn publish_all(&self, msgs: Vec<Message>) -> Result<(), BusError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some((started, go)) = gate {
            let _ = started.send(());
            let _ = go.await;
        }
        self.inner.publish_all(msgs).await
    }
    async fn subscribe_from(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.subscribe_from(group, topics, start).await
    }
    async fn ready(&self) -> Result<(), BusError> {
        self.inner.ready().await
    }
    async fn describe(&self) -> Result<BusOverview, BusError> {
        self.inner.describe().await
    }
}

/// Two replicas of a service, each with its own pool and relay, drain one
/// outbox at the same time while requests keep adding rows: every row reaches
/// the bus once, and each key's rows in the order they were written.
async fn two_relays_publish_every_row_once_in_order(backend: Backend) {
    const KEYS: usize = 7;
    const ROWS: usize = 700;
    const BATCH: i64 = 25;
    let db = fresh_database(backend).await;
    let other_db = db.connect_again(4).await;
    let dir = tempfile::tempdir().unwrap();
    let gated = Arc::new(GatedBus {
        inner: Arc::new(
            EmbeddedBus::open(&dir.path().join("bus.db"), 3)
                .await
                .unwrap(),
        ),
        gate: std::sync::Mutex::new(None),
    });
    let bus: Arc<dyn EventBus> = gated.clone();
    let table = "r_outbox";
    // Small batches, so that the relays take turns many times.
    let (one, two) = (
        outbox::Outbox::with_batch(table, BATCH),
        outbox::Outbox::with_batch(table, BATCH),
    );
    migrate(&db, "r", &[one.migration(1)]).await.unwrap();

    let envelope = |seq: usize| Envelope {
        topic: "relay-order".into(),
        key: format!("key-{}", seq % KEYS),
        headers: vec![("seq".into(), seq.to_string())],
        payload: format!("{{\"seq\":{seq}}}").into_bytes(),
    };
    let write = |from: usize, to: usize| {
        let (pool, one) = (db.pool.clone(), one.clone());
        async move {
            for chunk_start in (from..to).step_by(50) {
                let mut tx = pool.begin().await.unwrap();
                for seq in chunk_start..(chunk_start + 50).min(to) {
                    one.enqueue(&mut tx, &envelope(seq)).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
    };
    write(0, ROWS / 2).await;

    // The first relay stops in the middle of its pass, holding its rows; the
    // second one waits for them instead of publishing them too, then takes
    // the next batch once the first has committed.
    let (started, go) = gated.arm();
    let first = tokio::spawn({
        let (one, db, bus) = (one.clone(), db.db.clone(), bus.clone());
        async move { one.relay_once(&db, &*bus).await.unwrap() }
    });
    started.await.unwrap();
    let second = tokio::spawn({
        let (two, db, bus) = (two.clone(), other_db.clone(), bus.clone());
        async move { two.relay_once(&db, &*bus).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "the second relay waits for the first"
    );
    go.send(()).unwrap();
    assert_eq!(first.await.unwrap(), BATCH as usize);
    assert_eq!(second.await.unwrap(), BATCH as usize);

    // Then both run freely while rows keep coming.
    let drain = |outbox: Arc<outbox::Outbox>, db: Database, bus: Arc<dyn EventBus>| async move {
        let mut published = 0;
        let mut idle = 0;
        // The writer may still be adding rows: stop after a few empty passes.
        while idle < 3 {
            match outbox.relay_once(&db, &*bus).await.unwrap() {
                0 => {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n => {
                    idle = 0;
                    published += n;
                }
            }
        }
        published
    };
    let (_, a, b) = tokio::join!(
        write(ROWS / 2, ROWS),
        tokio::spawn(drain(two.clone(), other_db.clone(), bus.clone())),
        drain(one.clone(), db.db.clone(), bus.clone()),
    );
    let mut published = 2 * BATCH as usize + a.unwrap() + b;
    let mut total = ROWS;

    if backend == Backend::MySql {
        // READ COMMITTED takes no gap locks: the request path keeps writing
        // while a relay that read to the end of the table holds its rows.
        // (SQLite has one writer at a time: there, writes wait for the relay.)
        write(total, total + 5).await;
        let (started, go) = gated.arm();
        let first = tokio::spawn({
            let (one, db, bus) = (one.clone(), db.db.clone(), bus.clone());
            async move { one.relay_once(&db, &*bus).await.unwrap() }
        });
        started.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), write(total + 5, total + 10))
            .await
            .expect("an insert waited for the relay's locks");
        go.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 5);
        assert_eq!(one.relay_once(&db, &*bus).await.unwrap(), 5);
        published += 10;
        total += 10;
    }
    assert_eq!(published, total);
    let left: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);

    let mut sub = bus
        .subscribe("check", &["relay-order".into()])
        .await
        .unwrap();
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    loop {
        let recs = sub.poll(500, Duration::from_millis(100)).await.unwrap();
        if recs.is_empty() {
            break;
        }
        for r in recs {
            let seq: usize = r.header("seq").unwrap().parse().unwrap();
            by_key.entry(r.key.clone()).or_default().push(seq);
        }
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, seqs) in &by_key {
        let expected: Vec<usize> = (0..total)
            .filter(|s| format!("key-{}", s % KEYS) == *key)
            .collect();
        assert_eq!(seqs, &expected, "records of {key}: once each, in order");
    }
}

#[test]
fn redacts_passwords() {
    assert_eq!(
        redact("mysql://app:s3cret@db:3306/x"),
        "mysql://app:***@db:3306/x"
    );
    assert_eq!(redact("sqlite://data/a.db"), "sqlite://data/a.db");
}

#[test]
fn mysql_tables_get_their_options_unless_given() {
    assert_eq!(
        with_table_options("CREATE TABLE t (id BIGINT)"),
        format!("CREATE TABLE t (id BIGINT) {MYSQL_TABLE_OPTIONS}")
    );
    assert_eq!(
        with_table_options("create table t (id BIGINT) ENGINE=MyISAM"),
        "create table t (id BIGINT) ENGINE=MyISAM"
    );
    assert_eq!(
        with_table_options("CREATE INDEX i ON t (id)"),
        "CREATE INDEX i ON t (id)"
    );
    assert_eq!(
        with_table_options("CREATE TABLE t2 LIKE t"),
        "CREATE TABLE t2 LIKE t"
    );
    let m = Migration::portable(1, "d", "CREATE TABLE t (b {long_text} NOT NULL)");
    assert_eq!(m.sqlite, "CREATE TABLE t (b TEXT NOT NULL)");
    assert_eq!(m.mysql, "CREATE TABLE t (b MEDIUMTEXT NOT NULL)");
}
