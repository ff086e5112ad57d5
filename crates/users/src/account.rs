//! The `users_accounts` table. Queries are portable across SQLite and MySQL
//! through `sqlx::Any`, so rows are decoded as text (with the store's
//! [`text`]/[`opt_text`]) and `i64` only and converted here.

use anyhow::Context;
use clairon_auth::Role;
use clairon_store::{opt_text, text};
use sqlx::{any::AnyRow, Any, AnyConnection, Executor, Row};
use uuid::Uuid;

/// Columns read by [`Account::from_row`], in its order.
pub(crate) const COLUMNS: &str =
    "user_id, email, first_name, last_name, phone_number, role, created_at, updated_at";

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Account {
    pub user_id: Uuid,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub phone_number: Option<String>,
    pub role: Role,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Account {
    pub fn from_row(row: &AnyRow) -> anyhow::Result<Account> {
        let id = text(row, 0)?;
        let role = text(row, 5)?;
        Ok(Account {
            user_id: Uuid::parse_str(&id)
                .with_context(|| format!("stored user id `{id}` is not a UUID"))?,
            email: text(row, 1)?,
            first_name: text(row, 2)?,
            last_name: text(row, 3)?,
            phone_number: opt_text(row, 4)?,
            role: Role::parse(&role)
                .with_context(|| format!("stored role `{role}` of user {id} is unknown"))?,
            created_at: row.try_get(6)?,
            updated_at: row.try_get(7)?,
        })
    }
}

/// A new account, with its password already hashed.
pub(crate) struct NewAccount<'a> {
    pub account: &'a Account,
    pub email_lower: &'a str,
    pub password_hash: &'a str,
}

/// Inserts an account; a taken email surfaces as a unique violation on
/// `email_lower`, which callers turn into a conflict.
pub(crate) async fn insert(conn: &mut AnyConnection, new: &NewAccount<'_>) -> sqlx::Result<()> {
    let a = new.account;
    sqlx::query(
        "INSERT INTO users_accounts (user_id, email, email_lower, password_hash, first_name, last_name, \
         phone_number, role, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(a.user_id.to_string())
    .bind(&a.email)
    .bind(new.email_lower)
    .bind(new.password_hash)
    .bind(&a.first_name)
    .bind(&a.last_name)
    .bind(a.phone_number.clone())
    .bind(a.role.as_str())
    .bind(a.created_at)
    .bind(a.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn find<'c, E>(exec: E, user_id: Uuid) -> anyhow::Result<Option<Account>>
where
    E: Executor<'c, Database = Any>,
{
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM users_accounts WHERE user_id = ?"
    ))
    .bind(user_id.to_string())
    .fetch_optional(exec)
    .await
    .context("reading an account")?;
    row.as_ref().map(Account::from_row).transpose()
}

/// What login needs to check a password.
pub(crate) struct Credentials {
    pub user_id: Uuid,
    pub password_hash: String,
    pub role: Role,
}

pub(crate) async fn credentials<'c, E>(
    exec: E,
    email_lower: &str,
) -> anyhow::Result<Option<Credentials>>
where
    E: Executor<'c, Database = Any>,
{
    let Some(row) = sqlx::query(
        "SELECT user_id, password_hash, role FROM users_accounts WHERE email_lower = ?",
    )
    .bind(email_lower)
    .fetch_optional(exec)
    .await
    .context("reading credentials")?
    else {
        return Ok(None);
    };
    let id = text(&row, 0)?;
    let role = text(&row, 2)?;
    Ok(Some(Credentials {
        user_id: Uuid::parse_str(&id)
            .with_context(|| format!("stored user id `{id}` is not a UUID"))?,
        password_hash: text(&row, 1)?,
        role: Role::parse(&role)
            .with_context(|| format!("stored role `{role}` of user {id} is unknown"))?,
    }))
}
