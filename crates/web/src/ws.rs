//! `/ws`: a user's live PUSH notifications.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_trait::async_trait;
use axum::{
    extract::{
        ws::{Message, WebSocket},
        Query, State, WebSocketUpgrade,
    },
    http::request::Parts,
    response::Response,
};
use clairon_bus::{
    consumer::{HandleError, Handler},
    Record,
};
use clairon_events::{decode, PushRequested};
use clairon_http::{auth, ApiError};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::{AppState, Web};

const PING_EVERY: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

fn frame(p: &PushRequested) -> Arc<str> {
    json!({
        "notificationId": p.notification_id,
        "type": "PUSH",
        "title": p.title,
        "message": p.message,
        "createdAt": p.created_at,
    })
    .to_string()
    .into()
}

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Query(q): Query<WsQuery>,
    parts: Parts,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Browsers cannot set headers on a WebSocket, hence the query parameter.
    let token = auth::bearer(&parts)
        .map(str::to_owned)
        .or(q.token)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "Authentication required: pass the token as `?token=` or `Authorization: Bearer`."
                    .into(),
            )
        })?;
    let claims = state
        .auth
        .authenticate(&token)
        .await
        .map_err(auth::token_error)?;
    let user = claims.user_id().ok_or_else(|| {
        ApiError::Forbidden("Only user accounts receive PUSH notifications.".into())
    })?;
    let web = state.web.clone();
    Ok(ws
        .max_message_size(64 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .on_upgrade(move |socket| {
            let tasks = web.tasks.clone();
            tasks.track_future(serve(web, user, socket))
        }))
}

async fn serve(web: Arc<Web>, user: Uuid, mut socket: WebSocket) {
    // Register before reading the inbox so a push arriving meanwhile is not missed.
    let (_registration, mut rx) = web.hub.register(user);
    let mut sent_from_inbox = HashSet::new();
    match web.inbox.pending(user).await {
        Ok(pending) => {
            let mut ids = Vec::new();
            for p in &pending {
                if socket
                    .send(Message::Text(frame(p).to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
                ids.push(p.notification_id);
                sent_from_inbox.insert(p.notification_id.to_string());
            }
            if let Err(e) = web.inbox.delivered(&ids).await {
                tracing::warn!(%user, error = %format!("{e:#}"), "could not record delivered pushes");
            }
        }
        Err(e) => tracing::warn!(%user, error = %format!("{e:#}"), "could not read pending pushes"),
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            _ = web.cancel.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            f = rx.recv() => match f {
                Some(f) => {
                    if !sent_from_inbox.is_empty() && already_sent(&f, &sent_from_inbox) {
                        continue;
                    }
                    if socket.send(Message::Text(f.to_string().into())).await.is_err() {
                        return;
                    }
                }
                // Dropped by the hub (queue full): the client reconnects and catches up.
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    return;
                }
                awaiting_pong = true;
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            m = socket.recv() => match m {
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => awaiting_pong = false,
            },
        }
    }
}

fn already_sent(frame: &str, ids: &HashSet<String>) -> bool {
    serde_json::from_str::<serde_json::Value>(frame)
        .ok()
        .and_then(|v| v["notificationId"].as_str().map(|s| ids.contains(s)))
        .unwrap_or(false)
}

pub(crate) struct PushHandler {
    pub web: Arc<Web>,
}

#[async_trait]
impl Handler for PushHandler {
    async fn handle(&self, r: &Record) -> Result<(), HandleError> {
        let p: PushRequested = decode(&r.payload).map_err(HandleError::Reject)?;
        if self.web.hub.send(p.user_id, frame(&p)) > 0 {
            metrics::counter!("clairon_push_delivered_total").increment(1);
            self.web
                .inbox
                .delivered(&[p.notification_id])
                .await
                .map_err(|e| HandleError::Retry(format!("{e:#}")))?;
        }
        Ok(())
    }
}
