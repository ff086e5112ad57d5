//! Storage seam: one [`Database`] type over SQLite (the embedded default) and
//! MySQL/MariaDB, chosen by URL. Repository code is written once against
//! `sqlx::Any` with `?` placeholders, BIGINT epoch-millisecond times and VARCHAR
//! ids, which both dialects run unchanged; the few DDL differences live in each
//! [`Migration`]'s two variants.

pub mod outbox;

use std::{borrow::Cow, time::Duration};

use anyhow::Context;
use sqlx::{any::AnyPoolOptions, AnyPool, Executor};

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

/// One schema change of a service, in both dialects.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sqlite: Cow<'static, str>,
    pub mysql: Cow<'static, str>,
}

impl Migration {
    /// A change written identically for both backends.
    pub fn portable(version: i64, description: &'static str, sql: &'static str) -> Self {
        Migration {
            version,
            description,
            sqlite: Cow::Borrowed(sql),
            mysql: Cow::Borrowed(sql),
        }
    }
}

/// Applies `service`'s migrations not yet applied, in version order. Each
/// service records its own versions, so services sharing one database never
/// see each other's history.
pub async fn migrate(db: &Database, service: &str, migrations: &[Migration]) -> anyhow::Result<()> {
    db.pool
        .execute(
            "CREATE TABLE IF NOT EXISTS clairon_migrations (\
             service VARCHAR(64) NOT NULL, version BIGINT NOT NULL, description VARCHAR(255) NOT NULL, \
             applied_at BIGINT NOT NULL, PRIMARY KEY (service, version))",
        )
        .await
        .context("creating the migrations table")?;
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM clairon_migrations WHERE service = ?")
            .bind(service)
            .fetch_all(&db.pool)
            .await?;
    let mut todo: Vec<&Migration> = migrations
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .collect();
    todo.sort_by_key(|m| m.version);
    for m in todo {
        let sql = match db.backend {
            Backend::Sqlite => &m.sqlite,
            Backend::MySql => &m.mysql,
        };
        // MySQL commits DDL implicitly, so statements run one by one and the
        // version is recorded last: a failed migration is retried whole.
        for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            db.pool.execute(stmt).await.with_context(|| {
                format!(
                    "{service} migration {} ({}) failed on: {stmt}",
                    m.version, m.description
                )
            })?;
        }
        sqlx::query("INSERT INTO clairon_migrations (service, version, description, applied_at) VALUES (?, ?, ?, ?)")
            .bind(service)
            .bind(m.version)
            .bind(m.description)
            .bind(now_ms())
            .execute(&db.pool)
            .await?;
        tracing::info!(
            service,
            version = m.version,
            description = m.description,
            "migration applied"
        );
    }
    Ok(())
}

/// Whether the error is a unique-key violation, so callers map a race on a
/// unique column to a 409 instead of checking first.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub fn now_ms() -> i64 {
    clairon_bus::consumer::now_ms()
}

#[cfg(test)]
mod tests;
