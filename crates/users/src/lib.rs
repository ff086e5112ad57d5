//! The users service: registration, login and logout, profiles, the
//! administrators' view of accounts, and the token revocation list every
//! service authenticates against.
//!
//! Events (`UserRegistered`, `UserActionPerformed`, `TokenRevoked`) are written to the
//! `users_outbox` table in the transaction that causes them and published by the
//! outbox relay, so an answered request always produces its event.

mod account;
mod api;
mod bus_revocations;
mod revocations;
mod validate;

use std::sync::Arc;

use anyhow::Context;
use clairon_auth::Claims;
use clairon_auth::{AuthContext, Role};
use clairon_events::{
    ActionType, Envelope, Timestamp, TokenRevoked, UserActionPerformed, UserRegistered,
};
use clairon_http::{paging::Cursor, ApiError, ApiResult, ServiceDeps};
use clairon_store::{is_unique_violation, migrate, now_ms, outbox::Outbox, Database, Migration};
use uuid::Uuid;

use account::{Account, NewAccount};
pub use bus_revocations::BusRevocations;
pub use revocations::SqlRevocations;

/// Name under which the migrations are recorded.
const SERVICE: &str = "users";
const OUTBOX_TABLE: &str = "users_outbox";
const DEFAULT_ADMIN_EMAIL: &str = "admin@clairon.local";
const GENERATED_PASSWORD_LEN: usize = 20;

/// The administrator created when the database has none.
#[derive(Clone, Default)]
pub struct AdminBootstrap {
    pub email: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for AdminBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminBootstrap")
            .field("email", &self.email)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where to reach a user, for the notification service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserContact {
    pub email: String,
    pub phone_number: Option<String>,
    pub first_name: String,
}

pub struct Users {
    db: Database,
    outbox: Arc<Outbox>,
    auth: Arc<AuthContext>,
}

/// The users service schema, including its outbox.
pub fn migrations() -> Vec<Migration> {
    vec![
        Migration {
            version: 1,
            description: "accounts",
            sqlite: ACCOUNTS_DDL.replace("{email_lower}", "VARCHAR(254) NOT NULL").into(),
            // A binary collation keeps the unique key exact: the default MySQL
            // collations would also treat accented and plain letters as equal.
            mysql: ACCOUNTS_DDL
                .replace("{email_lower}", "VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL")
                .into(),
        },
        Migration::portable(
            2,
            "revoked tokens",
            "CREATE TABLE users_revoked_tokens (jti VARCHAR(64) NOT NULL PRIMARY KEY, expires_at BIGINT NOT NULL); \
             CREATE INDEX users_revoked_tokens_expires ON users_revoked_tokens (expires_at)",
        ),
        Outbox::new(OUTBOX_TABLE).migration(3),
    ]
}

const ACCOUNTS_DDL: &str = "CREATE TABLE users_accounts (\
     user_id VARCHAR(36) NOT NULL PRIMARY KEY, \
     email VARCHAR(254) NOT NULL, \
     email_lower {email_lower}, \
     password_hash VARCHAR(255) NOT NULL, \
     first_name VARCHAR(100) NOT NULL, \
     last_name VARCHAR(100) NOT NULL, \
     phone_number VARCHAR(16) NULL, \
     role VARCHAR(16) NOT NULL, \
     created_at BIGINT NOT NULL, \
     updated_at BIGINT NOT NULL); \
     CREATE UNIQUE INDEX users_accounts_email_lower ON users_accounts (email_lower); \
     CREATE INDEX users_accounts_created ON users_accounts (created_at, user_id); \
     CREATE INDEX users_accounts_role ON users_accounts (role)";

/// An account with a password that passed the rules, ready to be stored.
pub(crate) struct NewUser {
    pub email: validate::Email,
    pub password: String,
    pub first_name: String,
    pub last_name: String,
    pub phone_number: Option<String>,
}

/// Checked profile changes; `None` leaves a field as it is.
pub(crate) struct ProfileUpdate {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// `Some(None)` removes the phone number.
    pub phone_number: Option<Option<String>>,
    pub password: Option<String>,
}

/// The administrator [`Users::ensure_admin`] created.
#[derive(Debug)]
pub(crate) struct CreatedAdmin {
    pub email: String,
    /// Set when the password was generated rather than configured.
    pub generated_password: Option<String>,
}

impl Users {
    /// Runs migrations, ensures the bootstrap admin, spawns the outbox relay on
    /// `deps.tasks` (stops on `deps.cancel`).
    pub async fn start(
        deps: &ServiceDeps,
        db: Database,
        admin: AdminBootstrap,
    ) -> anyhow::Result<Arc<Self>> {
        let users = Self::open(deps, db, admin).await?;
        deps.tasks.spawn(users.outbox.clone().run_relay(
            users.db.clone(),
            deps.bus.clone(),
            deps.cancel.clone(),
        ));
        Ok(users)
    }

    /// [`Users::start`] without the relay, so tests can relay by hand.
    pub(crate) async fn open(
        deps: &ServiceDeps,
        db: Database,
        admin: AdminBootstrap,
    ) -> anyhow::Result<Arc<Self>> {
        let users = Self::prepare(deps, db).await?;
        if let Some(created) = users.ensure_admin(admin).await? {
            // Printed rather than logged: the generated password must reach the
            // operator once and never end up in log storage.
            match &created.generated_password {
                Some(pw) => println!(
                    "clairon: created administrator {} with password {pw} (shown once; change it)",
                    created.email
                ),
                None => println!("clairon: created administrator {}", created.email),
            }
        }
        // The decoy hash is computed on first use; doing it now keeps the first
        // unknown-email login as slow as the others.
        tokio::task::spawn_blocking(|| {
            clairon_auth::decoy_hash();
        })
        .await
        .context("preparing the decoy password hash")?;
        Ok(users)
    }

    pub(crate) async fn prepare(deps: &ServiceDeps, db: Database) -> anyhow::Result<Arc<Self>> {
        migrate(&db, SERVICE, &migrations()).await?;
        Ok(Arc::new(Users {
            db,
            outbox: Outbox::new(OUTBOX_TABLE),
            auth: deps.auth.clone(),
        }))
    }

    /// Routes with full paths (`/api/users/...`), state applied.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        api::router(self.clone())
    }

    pub fn openapi() -> utoipa::openapi::OpenApi {
        api::openapi()
    }

    /// Contact details for the notification service; `None` when unknown.
    pub async fn contact(&self, user_id: Uuid) -> anyhow::Result<Option<UserContact>> {
        Ok(account::find(&self.db.pool, user_id)
            .await?
            .map(|a| UserContact {
                email: a.email,
                phone_number: a.phone_number,
                first_name: a.first_name,
            }))
    }

    /// Creates an administrator when there is none. Several processes may start
    /// at once on one database: the loser of the race finds the winner's admin.
    pub(crate) async fn ensure_admin(
        &self,
        admin: AdminBootstrap,
    ) -> anyhow::Result<Option<CreatedAdmin>> {
        if self.has_admin().await? {
            return Ok(None);
        }
        let given = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let email = given(admin.email).unwrap_or_else(|| DEFAULT_ADMIN_EMAIL.to_owned());
        let email = validate::email(&email)
            .map_err(|reason| anyhow::anyhow!("the administrator email `{email}` {reason}"))?;
        let (password, generated) = match given(admin.password) {
            Some(pw) => {
                validate::password(&pw)
                    .map_err(|reason| anyhow::anyhow!("the administrator password {reason}"))?;
                (pw, false)
            }
            None => (clairon_auth::random_secret(GENERATED_PASSWORD_LEN), true),
        };
        let new = NewUser {
            email,
            password: password.clone(),
            first_name: "Clairon".into(),
            last_name: "Administrator".into(),
            phone_number: None,
        };
        match self.create_account(new, Role::Admin, None).await {
            Ok(account) => Ok(Some(CreatedAdmin {
                email: account.email,
                generated_password: generated.then_some(password),
            })),
            Err(ApiError::Conflict(_)) if self.has_admin().await? => Ok(None),
            Err(ApiError::Conflict(_)) => anyhow::bail!(
                "cannot create the administrator: a non-administrator account already uses its email; \
                 configure another administrator email"
            ),
            Err(ApiError::Internal(e)) => Err(e.context("creating the administrator")),
            Err(other) => Err(anyhow::anyhow!("creating the administrator: {other}")),
        }
    }

    async fn has_admin(&self) -> anyhow::Result<bool> {
        let row = sqlx::query("SELECT user_id FROM users_accounts WHERE role = ? LIMIT 1")
            .bind(Role::Admin.as_str())
            .fetch_optional(&self.db.pool)
            .await
            .context("looking for an administrator")?;
        Ok(row.is_some())
    }

    /// Stores an account and its `UserRegistered` event in one transaction.
    /// A taken email (any case) is a [`ApiError::Conflict`].
    pub(crate) async fn create_account(
        &self,
        new: NewUser,
        role: Role,
        traceparent: Option<&str>,
    ) -> ApiResult<Account> {
        let password_hash = hash_password(new.password).await?;
        let now = now_ms();
        let account = Account {
            // Time-ordered ids keep inserts local in the primary key index.
            user_id: Uuid::now_v7(),
            email: new.email.display,
            first_name: new.first_name,
            last_name: new.last_name,
            phone_number: new.phone_number,
            role,
            created_at: now,
            updated_at: now,
        };
        let event = UserRegistered {
            user_id: account.user_id,
            email: account.email.clone(),
            first_name: account.first_name.clone(),
            last_name: account.last_name.clone(),
            timestamp: Timestamp::from_millis(now),
        };
        let mut tx = self.db.pool.begin().await?;
        let row = NewAccount {
            account: &account,
            email_lower: &new.email.lower,
            password_hash: &password_hash,
        };
        if let Err(e) = account::insert(&mut tx, &row).await {
            return Err(if is_unique_violation(&e) {
                ApiError::Conflict("An account with this email already exists.".into())
            } else {
                e.into()
            });
        }
        self.outbox
            .enqueue(&mut tx, &Envelope::new(&event, traceparent))
            .await?;
        tx.commit().await?;
        self.outbox.committed();
        Ok(account)
    }

    /// Revokes the token: the revocation row, its `TokenRevoked` event (how
    /// processes without the users service learn of it) and, for a user's
    /// token, the `UserActionPerformed` logout event, in one transaction so
    /// that none goes without the others.
    pub(crate) async fn logout(&self, claims: &Claims, traceparent: Option<&str>) -> ApiResult<()> {
        let expires_ms = claims.exp.saturating_mul(1000);
        let mut tx = self.db.pool.begin().await?;
        if revocations::insert(&mut tx, &claims.jti, expires_ms).await? {
            let revoked = TokenRevoked {
                token_id: claims.jti.clone(),
                user_id: claims.sub.clone(),
                expires_at: Timestamp::from_millis(expires_ms),
            };
            self.outbox
                .enqueue(&mut tx, &Envelope::new(&revoked, traceparent))
                .await?;
            if let Some(user_id) = claims.user_id() {
                let action = UserActionPerformed {
                    user_id,
                    action_type: ActionType::Logout,
                    action_details: "Logged out".into(),
                    timestamp: Timestamp::now(),
                };
                self.outbox
                    .enqueue(&mut tx, &Envelope::new(&action, traceparent))
                    .await?;
            }
            tx.commit().await?;
            self.outbox.committed();
        }
        // The row is there now (ours or a concurrent logout's); this makes the
        // revocation count at once in this process rather than at the next
        // cache refresh.
        self.auth
            .revocations
            .revoke(&claims.jti, claims.exp)
            .await?;
        Ok(())
    }

    /// Records a user action; the action writes nothing else, so the
    /// transaction holds just the outbox row.
    pub(crate) async fn record_action(
        &self,
        user_id: Uuid,
        action: ActionType,
        details: String,
        traceparent: Option<&str>,
    ) -> ApiResult<()> {
        let event = UserActionPerformed {
            user_id,
            action_type: action,
            action_details: details,
            timestamp: Timestamp::now(),
        };
        let mut tx = self.db.pool.begin().await?;
        self.outbox
            .enqueue(&mut tx, &Envelope::new(&event, traceparent))
            .await?;
        tx.commit().await?;
        self.outbox.committed();
        Ok(())
    }
}

impl Users {
    /// Writes the fields that differ from `current` and records which ones
    /// changed (names only: values may be personal or secret).
    pub(crate) async fn update_profile(
        &self,
        current: Account,
        update: ProfileUpdate,
        traceparent: Option<&str>,
    ) -> ApiResult<Account> {
        // (column, API field name, new value)
        let mut changes: Vec<(&str, &str, Option<String>)> = Vec::new();
        if let Some(v) = update.first_name.filter(|v| *v != current.first_name) {
            changes.push(("first_name", "firstName", Some(v)));
        }
        if let Some(v) = update.last_name.filter(|v| *v != current.last_name) {
            changes.push(("last_name", "lastName", Some(v)));
        }
        if let Some(v) = update.phone_number.filter(|v| *v != current.phone_number) {
            changes.push(("phone_number", "phoneNumber", v));
        }
        if let Some(pw) = update.password {
            // Always a change: comparing would cost a hash verification.
            changes.push(("password_hash", "password", Some(hash_password(pw).await?)));
        }
        if changes.is_empty() {
            return Ok(current);
        }
        // Only changed columns are written, so concurrent updates of different
        // fields do not undo each other.
        let sets: Vec<String> = changes
            .iter()
            .map(|(col, _, _)| format!("{col} = ?"))
            .collect();
        let sql = format!(
            "UPDATE users_accounts SET {}, updated_at = ? WHERE user_id = ?",
            sets.join(", ")
        );
        let fields: Vec<&str> = changes.iter().map(|(_, name, _)| *name).collect();
        let mut query = sqlx::query(&sql);
        for (_, _, value) in &changes {
            query = query.bind(value.clone());
        }
        let id = current.user_id;
        query = query.bind(now_ms()).bind(id.to_string());

        let mut tx = self.db.pool.begin().await?;
        query.execute(&mut *tx).await?;
        let account = account::find(&mut *tx, id).await?.ok_or_else(|| {
            ApiError::NotFound("The account of this token no longer exists.".into())
        })?;
        let event = UserActionPerformed {
            user_id: id,
            action_type: ActionType::UpdateProfile,
            action_details: format!("Updated {}", fields.join(", ")),
            timestamp: Timestamp::from_millis(account.updated_at),
        };
        self.outbox
            .enqueue(&mut tx, &Envelope::new(&event, traceparent))
            .await?;
        tx.commit().await?;
        self.outbox.committed();
        Ok(account)
    }

    /// Accounts newest first, after `cursor` when given.
    pub(crate) async fn list(
        &self,
        limit: i64,
        cursor: Option<&Cursor>,
    ) -> anyhow::Result<Vec<Account>> {
        // `limit` is a checked integer, so it can be part of the statement text.
        let rows = match cursor {
            None => {
                sqlx::query(&format!(
                    "SELECT {} FROM users_accounts ORDER BY created_at DESC, user_id DESC LIMIT {limit}",
                    account::COLUMNS
                ))
                .fetch_all(&self.db.pool)
                .await
            }
            Some(c) => {
                sqlx::query(&format!(
                    "SELECT {} FROM users_accounts WHERE created_at < ? OR (created_at = ? AND user_id < ?) \
                     ORDER BY created_at DESC, user_id DESC LIMIT {limit}",
                    account::COLUMNS
                ))
                .bind(c.time_ms)
                .bind(c.time_ms)
                .bind(&c.id)
                .fetch_all(&self.db.pool)
                .await
            }
        }
        .context("listing accounts")?;
        rows.iter().map(Account::from_row).collect()
    }
}

/// argon2id is deliberately slow: it runs off the async workers.
pub(crate) async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || clairon_auth::hash_password(&password))
        .await
        .context("the password hashing task failed")?
}

/// Checks `password` against `hash`, or against the decoy hash when there is no
/// account, so both cases take the same time.
pub(crate) async fn verify_password(
    password: String,
    hash: Option<String>,
) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let hash = hash
            .as_deref()
            .unwrap_or_else(|| clairon_auth::decoy_hash());
        clairon_auth::verify_password(&password, hash)
    })
    .await
    .context("the password check task failed")
}

#[cfg(test)]
mod tests;
