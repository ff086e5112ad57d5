//! `GET /api/logs` and `GET /api/logs/stats`, administrators only.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{rejection::QueryRejection, FromRef, Query, State},
    routing::get,
    Json, Router,
};
use clairon_auth::AuthContext;
use clairon_events::{EventType, Timestamp};
use clairon_http::{
    auth::AdminOnly,
    paging::{self, Cursor, Page},
    problem::Problem,
    ApiError, ApiResult, FieldError,
};
use clairon_store::{opt_text, text};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{any::AnyRow, Row};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::{entry::UNKNOWN_TYPE, Audit};

const MINUTE_MS: i64 = 60_000;
const DEFAULT_STATS_WINDOW_MS: i64 = 60 * MINUTE_MS;
const MAX_STATS_WINDOW_MS: i64 = 7 * 24 * 60 * MINUTE_MS;
const MAX_QUERY_CHARS: usize = 200;
/// The LIKE escape character. Not a backslash: MySQL reads `'\\'` as one
/// character and SQLite as two, while `!` means the same to both.
const LIKE_ESCAPE: char = '!';

#[derive(Clone)]
struct AppState(Arc<Audit>);

impl FromRef<AppState> for Arc<AuthContext> {
    fn from_ref(s: &AppState) -> Self {
        s.0.auth.clone()
    }
}

pub fn router(audit: Arc<Audit>) -> Router {
    Router::new()
        .route("/api/logs", get(list_logs))
        .route("/api/logs/stats", get(log_stats))
        .with_state(AppState(audit))
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Clairon audit log"),
    paths(list_logs, log_stats),
    components(schemas(LogPage, LogItem, Stats, Bucket, Problem, FieldError)),
    modifiers(&BearerAuth),
    tags((name = "audit", description = "Every event that crossed the bus, for administrators"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Query parameters arrive as text so that a bad value is a 422 naming its field.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// One of the event types, or `Unknown`.
    event_type: Option<String>,
    /// The user the event is about (payload `userId`, else the record key).
    user_id: Option<String>,
    /// Earliest occurrence time, inclusive (RFC 3339).
    from: Option<String>,
    /// Latest occurrence time, exclusive (RFC 3339).
    to: Option<String>,
    /// Case-insensitive text the payload contains.
    q: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct StatsParams {
    /// Window start, inclusive (default: an hour before `to`).
    from: Option<String>,
    /// Window end, exclusive (default: now). At most 7 days after `from`.
    to: Option<String>,
    /// Count only this event type.
    event_type: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct LogItem {
    event_id: String,
    event_type: String,
    topic: String,
    partition: i64,
    offset: i64,
    key: String,
    user_id: Option<String>,
    /// The payload as sent; a JSON string when it was not JSON.
    payload: Value,
    headers: BTreeMap<String, String>,
    dead_letter: bool,
    /// Why the record was dead-lettered.
    error: Option<String>,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct LogPage {
    items: Vec<LogItem>,
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Stats {
    buckets: Vec<Bucket>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Bucket {
    /// Start of the minute.
    minute: Timestamp,
    event_type: String,
    count: i64,
}

#[utoipa::path(
    get,
    path = "/api/logs",
    tag = "audit",
    params(LogParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Newest first", body = LogPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_logs(
    _admin: AdminOnly,
    State(AppState(audit)): State<AppState>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> ApiResult<Json<LogPage>> {
    let Query(p) = params.map_err(bad_query)?;
    let mut errors = Vec::new();
    let event_type = collect(&mut errors, event_type(given(&p.event_type)));
    let from = collect(&mut errors, time("from", given(&p.from)));
    let to = collect(&mut errors, time("to", given(&p.to)));
    let limit = collect(&mut errors, limit(given(&p.limit)));
    let cursor = collect(
        &mut errors,
        paging::cursor(given(&p.cursor)).map_err(field_errors),
    );
    let q = given(&p.q);
    if q.is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS) {
        errors.push(FieldError::new(
            "q",
            format!("must be at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    if let (Some(Some(f)), Some(Some(t))) = (from, to) {
        if f > t {
            errors.push(FieldError::new("to", "must not be before `from`"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let (event_type, from, to, limit, cursor) = (
        event_type.flatten(),
        from.flatten(),
        to.flatten(),
        limit.unwrap_or(paging::DEFAULT_LIMIT),
        cursor.flatten(),
    );

    let mut sql = String::from(
        "SELECT id, event_id, topic, record_partition, record_offset, event_type, dead_letter, error, \
         msg_key, user_id, payload, headers, occurred_at, recorded_at FROM audit_events WHERE 1 = 1",
    );
    let mut args = Vec::new();
    if let Some(t) = event_type {
        sql.push_str(" AND event_type = ?");
        args.push(Arg::Text(t));
    }
    if let Some(u) = given(&p.user_id) {
        sql.push_str(" AND user_id = ?");
        args.push(Arg::Text(u.to_owned()));
    }
    if let Some(f) = from {
        sql.push_str(" AND occurred_at >= ?");
        args.push(Arg::Int(f));
    }
    if let Some(t) = to {
        sql.push_str(" AND occurred_at < ?");
        args.push(Arg::Int(t));
    }
    if let Some(q) = q {
        sql.push_str(&format!(
            " AND LOWER(payload) LIKE ? ESCAPE '{LIKE_ESCAPE}'"
        ));
        args.push(Arg::Text(contains_pattern(q)));
    }
    if let Some(c) = cursor {
        sql.push_str(" AND (occurred_at < ? OR (occurred_at = ? AND id < ?))");
        args.extend([Arg::Int(c.time_ms), Arg::Int(c.time_ms), Arg::Text(c.id)]);
    }
    // One extra row says whether another page follows.
    sql.push_str(" ORDER BY occurred_at DESC, id DESC LIMIT ?");
    args.push(Arg::Int(limit + 1));

    let rows = bind(sqlx::query(&sql), args)
        .fetch_all(&audit.db.pool)
        .await?;
    let rows = rows.iter().map(item).collect::<Result<Vec<_>, _>>()?;
    let Page { items, next_cursor } = paging::page(rows, limit, |(item, id)| Cursor {
        time_ms: item.occurred_at.millis(),
        id: id.clone(),
    });
    Ok(Json(LogPage {
        items: items.into_iter().map(|(item, _)| item).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/api/logs/stats",
    tag = "audit",
    params(StatsParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Counts per minute and event type, by minute then type", body = Stats),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is not valid or the window exceeds 7 days", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn log_stats(
    _admin: AdminOnly,
    State(AppState(audit)): State<AppState>,
    params: Result<Query<StatsParams>, QueryRejection>,
) -> ApiResult<Json<Stats>> {
    let Query(p) = params.map_err(bad_query)?;
    let mut errors = Vec::new();
    let event_type = collect(&mut errors, event_type(given(&p.event_type)));
    let from = collect(&mut errors, time("from", given(&p.from)));
    let to = collect(&mut errors, time("to", given(&p.to)));
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let to = to.flatten().unwrap_or_else(clairon_store::now_ms);
    let from = from.flatten().unwrap_or(to - DEFAULT_STATS_WINDOW_MS);
    if from > to {
        return Err(ApiError::invalid("to", "must not be before `from`"));
    }
    if to - from > MAX_STATS_WINDOW_MS {
        return Err(ApiError::invalid(
            "from",
            "the window from `from` to `to` must not exceed 7 days",
        ));
    }

    // Integer arithmetic gives the minute on both backends, which share no
    // date functions.
    let mut sql = String::from(
        "SELECT occurred_at - (occurred_at % 60000) AS bucket, event_type, COUNT(*) AS n \
         FROM audit_events WHERE occurred_at >= ? AND occurred_at < ?",
    );
    let mut args = vec![Arg::Int(from), Arg::Int(to)];
    if let Some(t) = event_type.flatten() {
        sql.push_str(" AND event_type = ?");
        args.push(Arg::Text(t));
    }
    sql.push_str(
        " GROUP BY occurred_at - (occurred_at % 60000), event_type ORDER BY bucket, event_type",
    );

    let rows = bind(sqlx::query(&sql), args)
        .fetch_all(&audit.db.pool)
        .await?;
    let mut buckets = Vec::with_capacity(rows.len());
    for row in &rows {
        buckets.push(Bucket {
            minute: Timestamp::from_millis(row.try_get::<i64, _>("bucket")?),
            event_type: text(row, "event_type")?,
            count: row.try_get("n")?,
        });
    }
    // Collations may order names differently per backend; byte order is the contract.
    buckets.sort_by(|a, b| (a.minute, &a.event_type).cmp(&(b.minute, &b.event_type)));
    Ok(Json(Stats { buckets }))
}

/// A row as an item, plus its row id for the cursor.
fn item(row: &AnyRow) -> Result<(LogItem, String), sqlx::Error> {
    let need = |col: &str| text(row, col);
    let payload = need("payload")?;
    let headers = need("headers")?;
    let item = LogItem {
        event_id: need("event_id")?,
        event_type: need("event_type")?,
        topic: need("topic")?,
        partition: row.try_get("record_partition")?,
        offset: row.try_get("record_offset")?,
        key: need("msg_key")?,
        user_id: opt_text(row, "user_id")?,
        // Stored by `record` as JSON; should a row hold anything else, show its text.
        payload: serde_json::from_str(&payload).unwrap_or(Value::String(payload)),
        headers: serde_json::from_str(&headers).unwrap_or_default(),
        dead_letter: row.try_get::<i64, _>("dead_letter")? != 0,
        error: opt_text(row, "error")?,
        occurred_at: Timestamp::from_millis(row.try_get("occurred_at")?),
        recorded_at: Timestamp::from_millis(row.try_get("recorded_at")?),
    };
    Ok((item, need("id")?))
}

enum Arg {
    Int(i64),
    Text(String),
}

fn bind<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: Vec<Arg>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
        };
    }
    q
}

/// `%text%` for LIKE, lower-cased, with the wildcards of the user's text escaped.
fn contains_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.to_lowercase().chars() {
        if c == LIKE_ESCAPE || c == '%' || c == '_' {
            p.push(LIKE_ESCAPE);
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A parameter's value, with an empty one (`?userId=`) read as absent.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Keeps a value, or adds its errors to the list so that all are reported at once.
fn collect<T>(errors: &mut Vec<FieldError>, r: Result<T, Vec<FieldError>>) -> Option<T> {
    r.map_err(|mut e| errors.append(&mut e)).ok()
}

fn field_errors(e: ApiError) -> Vec<FieldError> {
    match e {
        ApiError::Invalid(errors) => errors,
        other => vec![FieldError::new("query", other.to_string())],
    }
}

fn event_type(v: Option<&str>) -> Result<Option<String>, Vec<FieldError>> {
    match v {
        None => Ok(None),
        Some(t) if t == UNKNOWN_TYPE || EventType::parse(t).is_some() => Ok(Some(t.to_owned())),
        Some(t) => {
            let valid: Vec<&str> = EventType::ALL
                .iter()
                .map(|e| e.as_str())
                .chain([UNKNOWN_TYPE])
                .collect();
            Err(vec![FieldError::new(
                "eventType",
                format!(
                    "`{t}` is not an event type; use one of {}",
                    valid.join(", ")
                ),
            )])
        }
    }
}

fn time(field: &str, v: Option<&str>) -> Result<Option<i64>, Vec<FieldError>> {
    v.map(|s| Timestamp::parse(s).map(|t| t.millis()))
        .transpose()
        .map_err(|reason| vec![FieldError::new(field, reason)])
}

fn limit(v: Option<&str>) -> Result<i64, Vec<FieldError>> {
    let n = v.map(|s| s.parse::<i64>()).transpose().map_err(|_| {
        vec![FieldError::new(
            "limit",
            format!("must be a whole number from 1 to {}", paging::MAX_LIMIT),
        )]
    })?;
    paging::limit(n).map_err(field_errors)
}

fn bad_query(rej: QueryRejection) -> ApiError {
    ApiError::BadRequest {
        detail: format!("The query string is not valid: {}", rej.body_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_wildcards_are_escaped() {
        assert_eq!(contains_pattern("50%_Off!"), "%50!%!_off!!%");
    }

    #[test]
    fn openapi_lists_both_paths() {
        let doc = openapi();
        assert!(doc.paths.paths.contains_key("/api/logs"));
        assert!(doc.paths.paths.contains_key("/api/logs/stats"));
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.contains("\"eventType\"") && json.contains("nextCursor"));
    }
}
