//! Test support: a fresh, empty database on either backend, so that every
//! crate runs its repository tests on SQLite and on MySQL/MariaDB alike.
//!
//! - SQLite: a file in a temporary folder, removed with the [`TestDatabase`].
//! - MySQL: the server and account named by `CLAIRON_TEST_MYSQL_URL` (for
//!   example `mysql://clairon:clairon@127.0.0.1:3306/clairon`, which
//!   `eval "$(scripts/infra.sh up)"` exports). The account must be allowed to
//!   create databases named `clairon_test_%`. Each test gets its own database,
//!   `clairon_test_<unix seconds>_<random>`, dropped when its [`TestDatabase`]
//!   is dropped; one left behind by a killed run is dropped by a later run
//!   once it is an hour old.
//!
//! Without `CLAIRON_TEST_MYSQL_URL` a MySQL test fails (it is never skipped)
//! with a message saying how to start the server.
//!
//! [`both_backends!`](crate::both_backends) turns `async fn name(backend: Backend)`
//! test bodies into `name::sqlite` and `name::mysql` tests.

use std::{
    hash::{BuildHasher, Hasher},
    ops::Deref,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use sqlx::{AnyConnection, Connection, Executor};

use crate::{Backend, Database};

/// The variable naming the MySQL/MariaDB server the tests use.
pub const MYSQL_URL_VAR: &str = "CLAIRON_TEST_MYSQL_URL";
/// Prefix of the databases the tests create.
pub const DATABASE_PREFIX: &str = "clairon_test_";
/// Test databases older than this are dropped by the next run.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Generates, for each name, a module holding two tests, `sqlite` and `mysql`,
/// that call `async fn name(backend: clairon_store::Backend)` of the enclosing
/// module with each backend: `cargo test mysql` runs the MySQL half.
///
/// ```text
/// async fn stores_things(backend: Backend) { /* … */ }
/// clairon_store::both_backends!(stores_things);
/// ```
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[::tokio::test]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }

                #[::tokio::test]
                async fn mysql() {
                    super::$name($crate::Backend::MySql).await
                }
            }
        )+
    };
}

/// A fresh database; derefs to [`Database`]. Dropping it removes the database.
pub struct TestDatabase {
    pub db: Database,
    /// What [`TestDatabase::connect_again`] connects to.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// Server URL and name of the MySQL database to drop.
    mysql: Option<(String, String)>,
}

impl Deref for TestDatabase {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

impl TestDatabase {
    /// Another pool on the same database, as a second process would have.
    pub async fn connect_again(&self, max_connections: u32) -> Database {
        Database::connect(&self.url, max_connections)
            .await
            .unwrap_or_else(|e| panic!("connecting again to the test database: {e:#}"))
    }
}

/// An empty database on `backend` with a pool of 4 connections. Panics when it
/// cannot be had (for MySQL: when `CLAIRON_TEST_MYSQL_URL` is unset or the
/// server is unreachable), so a test never passes without its backend.
pub async fn fresh_database(backend: Backend) -> TestDatabase {
    fresh_database_with(backend, 4).await
}

pub async fn fresh_database_with(backend: Backend, max_connections: u32) -> TestDatabase {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("creating a temporary folder");
            let url = format!("sqlite://{}/test.db", dir.path().display());
            let db = Database::connect(&url, max_connections)
                .await
                .unwrap_or_else(|e| panic!("opening {url}: {e:#}"));
            TestDatabase {
                db,
                url,
                _dir: Some(dir),
                mysql: None,
            }
        }
        Backend::MySql => {
            let server = mysql_url().replacen("mariadb:", "mysql:", 1);
            let name = format!("{DATABASE_PREFIX}{}_{:016x}", unix_secs(), random());
            let mut admin = admin_connection(&server).await;
            drop_stale_databases(&mut admin).await;
            admin
                .execute(&*format!("CREATE DATABASE `{name}`"))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "creating the test database {name} on {}: {e}. The account needs \
                         the right to create databases named {DATABASE_PREFIX}%",
                        crate::redact(&server)
                    )
                });
            let _ = admin.close().await;
            let url = url_with_database(&server, &name);
            let db = Database::connect(&url, max_connections)
                .await
                .unwrap_or_else(|e| panic!("connecting to {}: {e:#}", crate::redact(&url)));
            TestDatabase {
                db,
                url,
                _dir: None,
                mysql: Some((server, name)),
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server, name)) = self.mysql.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which must not be blocked on:
        // the database is dropped from a thread of its own, waited for here.
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut conn) = AnyConnection::connect(&server).await else {
                    return;
                };
                // The test's pool may still be in a transaction (a background
                // task stopped mid-way when the test ended), which would hold
                // its tables: end the database's sessions first.
                let _ = conn.execute("SET SESSION lock_wait_timeout = 5").await;
                let sessions: Vec<i64> = sqlx::query_scalar(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
                )
                .bind(&name)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                for id in sessions {
                    let _ = conn.execute(&*format!("KILL {id}")).await;
                }
                let _ = conn
                    .execute(&*format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await;
                let _ = conn.close().await;
            });
        });
        let _ = dropper.join();
    }
}

fn mysql_url() -> String {
    match std::env::var(MYSQL_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => panic!(
            "{MYSQL_URL_VAR} is not set, so this MySQL/MariaDB test cannot run. Start the \
             test server from the workspace root with `eval \"$(scripts/infra.sh up)\"`, \
             which exports {MYSQL_URL_VAR}, then run the tests again from that shell \
             (or set {MYSQL_URL_VAR}=mysql://user:password@host:port/database yourself)."
        ),
    }
}

async fn admin_connection(server: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(server).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach the MySQL/MariaDB test server at {} ({MYSQL_URL_VAR}): {e}. \
             Is it running? Start it with `eval \"$(scripts/infra.sh up)\"`.",
            crate::redact(server)
        )
    })
}

/// Drops test databases left by runs that were killed, once per process.
async fn drop_stale_databases(admin: &mut AnyConnection) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(rows) = sqlx::query(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ? ESCAPE '!'",
    )
    .bind(format!("{}%", DATABASE_PREFIX.replace('_', "!_")))
    .fetch_all(&mut *admin)
    .await
    else {
        return;
    };
    let cutoff = unix_secs().saturating_sub(STALE_AFTER.as_secs());
    for row in rows {
        let Ok(name) = crate::text(&row, 0) else {
            continue;
        };
        let created = name
            .strip_prefix(DATABASE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|c| c < cutoff) {
            let _ = admin
                .execute(&*format!("DROP DATABASE IF EXISTS `{name}`"))
                .await;
        }
    }
}

/// `url` with its database (the path) replaced by `name`, query kept.
fn url_with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Distinct per call and per process, without a random-number dependency.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            url_with_database("mysql://u:p@127.0.0.1:3306/clairon", "x"),
            "mysql://u:p@127.0.0.1:3306/x"
        );
        assert_eq!(
            url_with_database("mysql://u:p@h/clairon?ssl-mode=disabled", "x"),
            "mysql://u:p@h/x?ssl-mode=disabled"
        );
        assert_eq!(url_with_database("mysql://h:3306", "x"), "mysql://h:3306/x");
    }
}
