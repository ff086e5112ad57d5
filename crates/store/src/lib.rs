//! Storage seam: one [`Database`] type over SQLite (the embedded default) and
//! MySQL/MariaDB, chosen by URL. Repository code is written once against
//! `sqlx::Any` with `?` placeholders, BIGINT epoch-millisecond times and VARCHAR
//! ids, which both dialects run unchanged; the few DDL differences live in each
//! [`Migration`]'s two variants.
//!
//! Portability rules the repositories follow (each one was a failure on MySQL):
//! - Read text columns with [`text`] / [`opt_text`], never `try_get::<String>`:
//!   through `sqlx::Any`, MySQL hands TEXT/MEDIUMTEXT columns over as bytes.
//! - Integers are BIGINT and read as `i64`; `COUNT(*)`, `MAX` and `+`/`-`/`%`
//!   of BIGINTs stay BIGINT on both. `SUM`/`AVG` and DECIMAL are not supported
//!   by `Any` on MySQL, nor is TINYINT.
//! - No RETURNING, no upserts, no UUID type; `?` placeholders; reserved words
//!   (`key`, `offset`, `partition`, …) are not used as column names.
//! - Every string must fit its column: MySQL refuses longer values (strict
//!   `sql_mode`, enforced by [`Database::connect`]). TEXT holds 64 KiB *bytes*
//!   on MySQL; use `{long_text}` (see [`Migration::portable`]) for more.
//! - MySQL tables are InnoDB, utf8mb4 with a binary collation (added by
//!   [`migrate`]), so text compares and sorts byte for byte as on SQLite.
//! - Index keys stay under 3072 bytes: a utf8mb4 VARCHAR(n) takes 4n.

pub mod outbox;
pub mod testing;

use std::{borrow::Cow, time::Duration};

use anyhow::Context;
use sqlx::{
    any::{AnyPoolOptions, AnyRow},
    AnyConnection, AnyPool, Connection, Executor, Row,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
}

#[derive(Clone, Debug)]
pub struct Database {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl Database {
    /// Connects to `url` (`sqlite://path` or `mysql://user:pass@host/db`). A SQLite
    /// file and its folder are created when missing.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Backend::MySql
        } else {
            anyhow::bail!(
                "unsupported database URL scheme in `{}`: use sqlite:// or mysql://",
                redact(url)
            );
        };
        let mut url = url.replacen("mariadb:", "mysql:", 1);
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned();
            if let Some(dir) = std::path::Path::new(&path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating database folder {}", dir.display()))?;
                }
            }
            if !url.contains('?') {
                url.push_str("?mode=rwc");
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never block the writer and a commit is on disk
                        // before it returns, which is what kill -9 needs.
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
                        )
                        .await?;
                    } else {
                        // The same rules whatever the server's defaults: a value
                        // too long for its column is an error, never cut
                        // silently, and GROUP BY is as strict as MySQL 8's.
                        conn.execute(
                            "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, \
                             ',STRICT_TRANS_TABLES,ONLY_FULL_GROUP_BY')",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {}", redact(&url)))?;
        Ok(Database { pool, backend })
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Picks the statement written for this backend.
    pub fn dialect<'a>(&self, sqlite: &'a str, mysql: &'a str) -> &'a str {
        match self.backend {
            Backend::Sqlite => sqlite,
            Backend::MySql => mysql,
        }
    }
}

/// Hides the password of a database URL for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Stands, in a [`Migration::portable`] statement, for a text column that may
/// outgrow MySQL's TEXT (64 KiB): TEXT on SQLite, MEDIUMTEXT (16 MiB) on MySQL.
pub const LONG_TEXT: &str = "{long_text}";

/// Table options [`migrate`] gives every MySQL table created without options
/// of its own: binary collation so that text compares, sorts and is unique
/// byte for byte as on SQLite (the default collations ignore case and accents),
/// utf8mb4 so that any Unicode fits, InnoDB for transactions and row locks.
pub const MYSQL_TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// One schema change of a service, in both dialects.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sqlite: Cow<'static, str>,
    pub mysql: Cow<'static, str>,
}

impl Migration {
    /// A change written identically for both backends, except that
    /// [`LONG_TEXT`] (`{long_text}`) becomes TEXT on SQLite and MEDIUMTEXT on MySQL.
    pub fn portable(version: i64, description: &'static str, sql: &'static str) -> Self {
        let (sqlite, mysql) = if sql.contains(LONG_TEXT) {
            (
                Cow::Owned(sql.replace(LONG_TEXT, "TEXT")),
                Cow::Owned(sql.replace(LONG_TEXT, "MEDIUMTEXT")),
            )
        } else {
            (Cow::Borrowed(sql), Cow::Borrowed(sql))
        };
        Migration {
            version,
            description,
            sqlite,
            mysql,
        }
    }
}

/// A MySQL `CREATE TABLE` without table options gets [`MYSQL_TABLE_OPTIONS`].
fn with_table_options(stmt: &str) -> Cow<'_, str> {
    let is_create_table = stmt
        .get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("CREATE TABLE"));
    // `CREATE TABLE t (…)` ends with its column list; anything after it is
    // options of its own (and `… LIKE` / `… AS SELECT` are left alone).
    let ends_with_columns = stmt.trim_end().ends_with(')');
    if is_create_table && ends_with_columns {
        Cow::Owned(format!("{stmt} {MYSQL_TABLE_OPTIONS}"))
    } else {
        Cow::Borrowed(stmt)
    }
}

/// Applies `service`'s migrations not yet applied, in version order. Each
/// service records its own versions, so services sharing one database never
/// see each other's history.
///
/// Several processes may migrate one database at once (replicas starting
/// together): on MySQL they take turns on a named lock, on SQLite each
/// migration runs in an immediate (write-locked) transaction. Either way a
/// migration is applied once.
pub async fn migrate(db: &Database, service: &str, migrations: &[Migration]) -> anyhow::Result<()> {
    let mut conn = db.pool.acquire().await?;
    let create = "CREATE TABLE IF NOT EXISTS clairon_migrations (\
         service VARCHAR(64) NOT NULL, version BIGINT NOT NULL, description VARCHAR(255) NOT NULL, \
         applied_at BIGINT NOT NULL, PRIMARY KEY (service, version))";
    let create = match db.backend {
        Backend::Sqlite => Cow::Borrowed(create),
        Backend::MySql => with_table_options(create),
    };
    conn.execute(&*create)
        .await
        .context("creating the migrations table")?;
    // Read without a lock first, so that a start with nothing to do takes none.
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM clairon_migrations WHERE service = ?")
            .bind(service)
            .fetch_all(&mut *conn)
            .await?;
    let mut todo: Vec<&Migration> = migrations
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    todo.sort_by_key(|m| m.version);
    match db.backend {
        Backend::Sqlite => {
            for m in todo {
                let mut tx = Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
                    .await
                    .context("locking the database for a migration")?;
                apply(&mut tx, db.backend, service, m).await?;
                tx.commit().await?;
            }
            Ok(())
        }
        Backend::MySql => {
            // Named locks belong to the server, hence the database's name in it
            // (hashed: lock names stop at 64 characters).
            const LOCK: &str = "CONCAT('clairon_migrate_', MD5(DATABASE()))";
            let got: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({LOCK}, 120)"))
                .fetch_one(&mut *conn)
                .await
                .context("taking the migration lock")?;
            if got != Some(1) {
                anyhow::bail!("timed out waiting for another process to finish migrating");
            }
            let mut result = Ok(());
            for m in todo {
                // MySQL commits DDL implicitly, so statements run one by one
                // and the version is recorded last: a failed migration is
                // retried whole.
                result = apply(&mut conn, db.backend, service, m).await;
                if result.is_err() {
                    break;
                }
            }
            let released = sqlx::query(&format!("SELECT RELEASE_LOCK({LOCK})"))
                .fetch_one(&mut *conn)
                .await;
            if released.is_err() {
                // The lock lives as long as the session: end it.
                conn.close_on_drop();
            }
            result
        }
    }
}

/// Runs one migration unless it was recorded meanwhile (read under the lock).
async fn apply(
    conn: &mut AnyConnection,
    backend: Backend,
    service: &str,
    m: &Migration,
) -> anyhow::Result<()> {
    let done: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM clairon_migrations WHERE service = ? AND version = ?",
    )
    .bind(service)
    .bind(m.version)
    .fetch_optional(&mut *conn)
    .await?;
    if done.is_some() {
        return Ok(());
    }
    let sql = match backend {
        Backend::Sqlite => &m.sqlite,
        Backend::MySql => &m.mysql,
    };
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let stmt = match backend {
            Backend::Sqlite => Cow::Borrowed(stmt),
            Backend::MySql => with_table_options(stmt),
        };
        conn.execute(&*stmt).await.with_context(|| {
            format!(
                "{service} migration {} ({}) failed on: {stmt}",
                m.version, m.description
            )
        })?;
    }
    sqlx::query(
        "INSERT INTO clairon_migrations (service, version, description, applied_at) VALUES (?, ?, ?, ?)",
    )
    .bind(service)
    .bind(m.version)
    .bind(m.description)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    tracing::info!(
        service,
        version = m.version,
        description = m.description,
        "migration applied"
    );
    Ok(())
}

/// Whether the error is a unique-key violation, so callers map a race on a
/// unique column to a 409 instead of checking first. SQLite's UNIQUE
/// constraint error and MySQL's 1062 (duplicate entry) both qualify.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Reads a NOT NULL text column on either backend. Through `sqlx::Any`, MySQL
/// reports TEXT/MEDIUMTEXT columns as BLOB (sqlx 0.8), so they arrive as bytes
/// there, while SQLite text and VARCHAR columns arrive as text. Use this (or
/// [`opt_text`]) for every text column: `try_get::<String>` fails on MySQL.
pub fn text<I>(row: &AnyRow, col: I) -> sqlx::Result<String>
where
    I: sqlx::ColumnIndex<AnyRow> + Copy,
{
    match row.try_get::<String, _>(col) {
        Err(sqlx::Error::ColumnDecode { .. }) => Ok(from_bytes(row.try_get(col)?)),
        other => other,
    }
}

/// [`text`] for a NULLable column.
pub fn opt_text<I>(row: &AnyRow, col: I) -> sqlx::Result<Option<String>>
where
    I: sqlx::ColumnIndex<AnyRow> + Copy,
{
    match row.try_get::<Option<String>, _>(col) {
        Err(sqlx::Error::ColumnDecode { .. }) => {
            Ok(row.try_get::<Option<Vec<u8>>, _>(col)?.map(from_bytes))
        }
        other => other,
    }
}

fn from_bytes(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

pub fn now_ms() -> i64 {
    clairon_bus::consumer::now_ms()
}

#[cfg(test)]
mod tests;
