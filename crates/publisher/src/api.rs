use std::sync::Arc;

use axum::{extract::State, http::HeaderMap, http::StatusCode, Json};
use clairon_events::{
    ActionType, Envelope, NotificationTriggered, NotificationType, Timestamp, UserActionPerformed,
};
use clairon_http::{
    auth::Publisher as PublisherAuth, problem::Problem, trace::event_traceparent as traceparent,
    ApiError, ApiJson, ApiResult, FieldError,
};
use clairon_store::{is_unique_violation, now_ms, text};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::Publisher;

const MAX_BATCH: usize = 500;
const MAX_TITLE: usize = 200;
const MAX_MESSAGE: usize = 10_000;
const MAX_RECIPIENT: usize = 320;
const MAX_DETAILS: usize = 2_000;
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Width of `publisher_idempotency.principal`.
const MAX_PRINCIPAL: usize = 255;

/// A notification to send. `notificationId` and `timestamp` are set by the
/// server when absent; `recipient` is looked up from the user's profile when absent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRequest {
    pub notification_id: Option<Uuid>,
    pub user_id: Uuid,
    #[serde(rename = "type")]
    pub kind: NotificationType,
    pub title: String,
    pub message: String,
    pub recipient: Option<String>,
    pub timestamp: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchRequest {
    pub notifications: Vec<NotificationRequest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserActionRequest {
    pub user_id: Uuid,
    pub action_type: ActionType,
    pub action_details: String,
    pub timestamp: Option<Timestamp>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub notification_id: Uuid,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchAccepted {
    pub notification_ids: Vec<Uuid>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionAccepted {
    pub event_id: Uuid,
}

#[derive(OpenApi)]
#[openapi(
    paths(trigger, trigger_batch, user_action),
    components(schemas(NotificationRequest, BatchRequest, UserActionRequest, Accepted, BatchAccepted, ActionAccepted, Problem)),
    tags((name = "events", description = "Event publisher"))
)]
pub struct ApiDoc;

fn check_len(errors: &mut Vec<FieldError>, field: String, value: &str, max: usize, required: bool) {
    let n = value.trim().chars().count();
    if required && n == 0 {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if value.chars().count() > max {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
}

impl NotificationRequest {
    fn validate(&self, prefix: &str, errors: &mut Vec<FieldError>) {
        check_len(
            errors,
            format!("{prefix}title"),
            &self.title,
            MAX_TITLE,
            true,
        );
        check_len(
            errors,
            format!("{prefix}message"),
            &self.message,
            MAX_MESSAGE,
            true,
        );
        if let Some(r) = &self.recipient {
            check_len(errors, format!("{prefix}recipient"), r, MAX_RECIPIENT, true);
        }
    }

    fn into_event(self) -> NotificationTriggered {
        NotificationTriggered {
            notification_id: self.notification_id.unwrap_or_else(Uuid::now_v7),
            user_id: self.user_id,
            kind: self.kind,
            title: self.title,
            message: self.message,
            recipient: self.recipient.filter(|r| !r.trim().is_empty()),
            timestamp: self.timestamp.unwrap_or_else(Timestamp::now),
        }
    }
}

/// Trigger a notification.
#[utoipa::path(
    post, path = "/api/events/notifications", tag = "events",
    request_body = NotificationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key: a repeat returns the first answer")),
    responses(
        (status = 202, body = Accepted),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn trigger(
    State(svc): State<Arc<Publisher>>,
    PublisherAuth(claims): PublisherAuth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NotificationRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut errors = Vec::new();
    req.validate("", &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let hash = request_hash("notification", &req);
    let event = req.into_event();
    let tp = traceparent(&headers);
    let env = Envelope::new(&event, Some(&tp));
    let answer = json!({ "notificationId": event.notification_id });
    svc.accept(&claims.sub, &headers, hash, vec![env], answer)
        .await
}

/// Trigger several notifications at once (all or nothing).
#[utoipa::path(
    post, path = "/api/events/notifications/batch", tag = "events",
    request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key")),
    responses((status = 202, body = BatchAccepted), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
pub(crate) async fn trigger_batch(
    State(svc): State<Arc<Publisher>>,
    PublisherAuth(claims): PublisherAuth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<BatchRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if req.notifications.is_empty() || req.notifications.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "notifications",
            format!("must hold between 1 and {MAX_BATCH} notifications"),
        ));
    }
    let mut errors = Vec::new();
    for (i, n) in req.notifications.iter().enumerate() {
        n.validate(&format!("notifications[{i}]."), &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let hash = request_hash("batch", &req);
    let tp = traceparent(&headers);
    let events: Vec<NotificationTriggered> = req
        .notifications
        .into_iter()
        .map(NotificationRequest::into_event)
        .collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.notification_id).collect();
    let envs = events.iter().map(|e| Envelope::new(e, Some(&tp))).collect();
    svc.accept(
        &claims.sub,
        &headers,
        hash,
        envs,
        json!({ "notificationIds": ids }),
    )
    .await
}

/// Record a user action.
#[utoipa::path(
    post, path = "/api/events/user-actions", tag = "events",
    request_body = UserActionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key")),
    responses((status = 202, body = ActionAccepted), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
pub(crate) async fn user_action(
    State(svc): State<Arc<Publisher>>,
    PublisherAuth(claims): PublisherAuth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UserActionRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut errors = Vec::new();
    check_len(
        &mut errors,
        "actionDetails".into(),
        &req.action_details,
        MAX_DETAILS,
        false,
    );
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let hash = request_hash("action", &req);
    let event = UserActionPerformed {
        user_id: req.user_id,
        action_type: req.action_type,
        action_details: req.action_details,
        timestamp: req.timestamp.unwrap_or_else(Timestamp::now),
    };
    let event_id = Uuid::now_v7();
    let env = Envelope::with_id(&event, event_id, Some(&traceparent(&headers)));
    svc.accept(
        &claims.sub,
        &headers,
        hash,
        vec![env],
        json!({ "eventId": event_id }),
    )
    .await
}

impl Publisher {
    /// Commits the events (and the idempotency record) in one transaction.
    async fn accept(
        &self,
        principal: &str,
        headers: &HeaderMap,
        hash: String,
        envs: Vec<Envelope>,
        answer: Value,
    ) -> ApiResult<(StatusCode, Json<Value>)> {
        let key = idempotency_key(headers)?;
        let principal = &principal_key(principal);
        let mut tx = self.db.pool.begin().await?;
        if let Some(key) = &key {
            let inserted = sqlx::query(
                "INSERT INTO publisher_idempotency (principal, idem_key, request_hash, response, created_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(principal)
            .bind(key)
            .bind(&hash)
            .bind(answer.to_string())
            .bind(now_ms())
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    tx.rollback().await?;
                    return self.replay(principal, key, &hash).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        for env in &envs {
            self.outbox.enqueue(&mut tx, env).await?;
        }
        tx.commit().await?;
        self.outbox.committed();
        Ok((StatusCode::ACCEPTED, Json(answer)))
    }

    async fn replay(
        &self,
        principal: &str,
        key: &str,
        hash: &str,
    ) -> ApiResult<(StatusCode, Json<Value>)> {
        let row = sqlx::query(
            "SELECT request_hash, response FROM publisher_idempotency WHERE principal = ? AND idem_key = ?",
        )
        .bind(principal)
        .bind(key)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some((stored_hash, response)) = row
            .map(|r| Ok::<_, sqlx::Error>((text(&r, 0)?, text(&r, 1)?)))
            .transpose()?
        else {
            return Err(ApiError::Conflict(
                "A request with this Idempotency-Key is in progress; retry.".into(),
            ));
        };
        if stored_hash != hash {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                "was already used with a different request",
            ));
        }
        let answer: Value = serde_json::from_str(&response).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("stored idempotent answer unreadable: {e}"))
        })?;
        Ok((StatusCode::ACCEPTED, Json(answer)))
    }
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key", "must be printable ASCII"))?
        .trim();
    if v.is_empty() || v.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
        ));
    }
    Ok(Some(v.to_owned()))
}

/// The caller as stored with its keys: the token subject, or its digest when
/// too long for the column.
fn principal_key(sub: &str) -> String {
    if sub.chars().count() <= MAX_PRINCIPAL {
        return sub.to_owned();
    }
    let digest: String = Sha256::digest(sub.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{digest}")
}

/// Fingerprint of what was asked, so a key reused for a different request is caught.
fn request_hash<T: Serialize>(kind: &str, req: &T) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update(serde_json::to_vec(req).unwrap_or_default());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
