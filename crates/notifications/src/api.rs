use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    Json,
};
use clairon_events::{headers, Envelope, NotificationStatus, NotificationType};
use clairon_http::{
    auth::{AdminOnly, Authenticated, ServiceCaller},
    paging::{self, Cursor, Page},
    problem::Problem,
    ApiError, ApiResult,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::{
    repo::{self, DeadLetterView, HistoryEntry, ListFilter, NotificationView},
    Notifications,
};

#[derive(OpenApi)]
#[openapi(
    paths(list, get_one, mark_read, dead_letters, replay, push_pending, push_delivered),
    components(schemas(PushDelivered, NotificationView, NotificationDetail, HistoryEntry, NotificationPage, DeadLetterView, DeadLetterPage, Problem)),
    tags((name = "notifications", description = "Notification service"))
)]
pub struct ApiDoc;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Admins only: whose notifications (a user always sees their own).
    user_id: Option<String>,
    /// PENDING, SENT, CAPTURED, FAILED or DEAD.
    status: Option<String>,
    /// EMAIL, SMS or PUSH.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPage {
    items: Vec<NotificationView>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationDetail {
    #[serde(flatten)]
    notification: NotificationView,
    history: Vec<HistoryEntry>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    items: Vec<DeadLetterView>,
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

/// List notifications, newest first.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications", params(ListQuery),
    responses((status = 200, body = NotificationPage), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(svc): State<Arc<Notifications>>,
    Authenticated(claims): Authenticated,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<NotificationPage>> {
    let limit = paging::limit(q.limit)?;
    let user_id = if claims.is_admin() {
        match q.user_id {
            Some(u) => Some(parse_uuid("userId", &u)?.to_string()),
            None => None,
        }
    } else {
        let own = claims.sub.clone();
        if let Some(u) = q.user_id.filter(|u| !u.eq_ignore_ascii_case(&own)) {
            let _ = u;
            return Err(ApiError::Forbidden(
                "You can only list your own notifications.".into(),
            ));
        }
        Some(own)
    };
    let status = q
        .status
        .map(|s| {
            NotificationStatus::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    "must be one of PENDING, SENT, CAPTURED, FAILED, DEAD",
                )
            })
        })
        .transpose()?;
    let kind = q
        .kind
        .map(|s| {
            NotificationType::parse(&s.to_ascii_uppercase())
                .ok_or_else(|| ApiError::invalid("type", "must be one of EMAIL, SMS, PUSH"))
        })
        .transpose()?;
    let after = paging::cursor(q.cursor.as_deref())?.map(|c| (c.time_ms, c.id));
    let filter = ListFilter {
        user_id,
        status,
        kind,
        after,
    };
    // One row more than asked tells whether another page follows.
    let rows = repo::list(&svc.db, &filter, limit + 1).await?;
    let Page { items, next_cursor } = paging::page(rows, limit, |n| Cursor {
        time_ms: n.created_ms,
        id: n.notification_id.clone(),
    });
    Ok(Json(NotificationPage { items, next_cursor }))
}

fn parse_uuid(field: &str, s: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| ApiError::invalid(field, "must be a UUID"))
}

/// Loads a notification the caller may see. Others' notifications answer 404,
/// so their existence does not leak.
async fn visible(
    svc: &Notifications,
    claims: &clairon_auth::Claims,
    id: &str,
) -> ApiResult<NotificationView> {
    let id = parse_uuid("id", id)?.to_string();
    let n = repo::get(&svc.db, &id).await?;
    match n {
        Some(n) if claims.is_admin() || n.user_id == claims.sub => Ok(n),
        _ => Err(ApiError::NotFound("No such notification.".into())),
    }
}

/// One notification with its status history.
#[utoipa::path(get, path = "/api/notifications/{id}", tag = "notifications",
    params(("id" = String, Path, description = "notificationId")),
    responses((status = 200, body = NotificationDetail), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub(crate) async fn get_one(
    State(svc): State<Arc<Notifications>>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<NotificationDetail>> {
    let notification = visible(&svc, &claims, &id).await?;
    let history = repo::history_of(&svc.db, &notification.notification_id).await?;
    Ok(Json(NotificationDetail {
        notification,
        history,
    }))
}

/// Mark a notification as read.
#[utoipa::path(post, path = "/api/notifications/{id}/read", tag = "notifications",
    params(("id" = String, Path, description = "notificationId")),
    responses((status = 200, body = NotificationView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub(crate) async fn mark_read(
    State(svc): State<Arc<Notifications>>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> ApiResult<Json<NotificationView>> {
    let n = visible(&svc, &claims, &id).await?;
    repo::mark_read(&svc.db, &n.notification_id).await?;
    let n = repo::get(&svc.db, &n.notification_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such notification.".into()))?;
    Ok(Json(n))
}

/// Dead-lettered records of the notification consumer, newest first.
#[utoipa::path(get, path = "/api/notifications/dead-letters", tag = "notifications", params(PageQuery),
    responses((status = 200, body = DeadLetterPage), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub(crate) async fn dead_letters(
    State(svc): State<Arc<Notifications>>,
    AdminOnly(_admin): AdminOnly,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<DeadLetterPage>> {
    let limit = paging::limit(q.limit)?;
    let after = paging::cursor(q.cursor.as_deref())?.map(|c| (c.time_ms, c.id));
    let rows = repo::dead_letters(&svc.db, after, limit + 1).await?;
    let Page { items, next_cursor } = paging::page(rows, limit, |d| Cursor {
        time_ms: d.created_ms,
        id: d.id.clone(),
    });
    Ok(Json(DeadLetterPage { items, next_cursor }))
}

/// Put a dead letter back on its topic for another round of attempts.
#[utoipa::path(post, path = "/api/notifications/dead-letters/{id}/replay", tag = "notifications",
    params(("id" = String, Path, description = "dead letter id")),
    responses((status = 202), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub(crate) async fn replay(
    State(svc): State<Arc<Notifications>>,
    AdminOnly(_admin): AdminOnly,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let dl = repo::dead_letter_by_id(&svc.db, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such dead letter.".into()))?;
    if dl.replayed {
        return Err(ApiError::Conflict(
            "This dead letter has already been replayed.".into(),
        ));
    }
    // A fresh delivery: new event id and attempt count, same payload and key.
    let mut hs: Vec<(String, String)> = dl
        .headers
        .iter()
        .filter(|(k, _)| {
            [
                headers::EVENT_TYPE,
                headers::SCHEMA_VERSION,
                headers::TRACEPARENT,
            ]
            .iter()
            .any(|h| k.eq_ignore_ascii_case(h))
        })
        .cloned()
        .collect();
    headers::set(&mut hs, headers::EVENT_ID, Uuid::now_v7().to_string());
    headers::set(&mut hs, headers::ATTEMPT, "1");
    let env = Envelope {
        topic: dl.topic.clone(),
        key: dl.key.clone(),
        headers: hs,
        payload: dl.payload.clone().into_bytes(),
    };
    if !repo::replay(&svc.db, &svc.outbox, &id, &dl, &env).await? {
        return Err(ApiError::Conflict(
            "This dead letter has already been replayed.".into(),
        ));
    }
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PendingQuery {
    user_id: String,
}

/// PUSH notifications of a user that no socket has taken yet (for the web
/// service when it runs in another process).
#[utoipa::path(get, path = "/api/notifications/push/pending", tag = "notifications", params(PendingQuery),
    responses((status = 200, body = [clairon_events::PushRequested]), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub(crate) async fn push_pending(
    State(svc): State<Arc<Notifications>>,
    ServiceCaller(_caller): ServiceCaller,
    Query(q): Query<PendingQuery>,
) -> ApiResult<Json<Vec<clairon_events::PushRequested>>> {
    let user = parse_uuid("userId", &q.user_id)?;
    Ok(Json(svc.pending_pushes(user, 500).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushDelivered {
    pub notification_ids: Vec<Uuid>,
}

/// Records that PUSH notifications reached a socket of their user.
#[utoipa::path(post, path = "/api/notifications/push/delivered", tag = "notifications", request_body = PushDelivered,
    responses((status = 204), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub(crate) async fn push_delivered(
    State(svc): State<Arc<Notifications>>,
    ServiceCaller(_caller): ServiceCaller,
    clairon_http::ApiJson(body): clairon_http::ApiJson<PushDelivered>,
) -> ApiResult<StatusCode> {
    if body.notification_ids.len() > 1000 {
        return Err(ApiError::invalid(
            "notificationIds",
            "at most 1000 at a time",
        ));
    }
    svc.mark_pushes_delivered(&body.notification_ids).await?;
    Ok(StatusCode::NO_CONTENT)
}
