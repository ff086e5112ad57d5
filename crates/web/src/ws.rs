//! `/ws`: a user's live PUSH notifications and, for administrators, the live
//! event feed.
//!
//! The token comes, in this order, from `Authorization: Bearer`, from the
//! `Sec-WebSocket-Protocol` header (`clairon.bearer, <token>`: what browsers
//! use, since they cannot set headers on a WebSocket and a token in the URL
//! would end up in logs and history; the server answers `clairon.bearer`), or
//! from `?token=` for existing non-browser clients ([`hide_query_token`] takes
//! it out of the URL before any request logging sees it).
//!
//! Every socket gets its user's PUSH frames `{notificationId, type: "PUSH",
//! title, message, createdAt}`, first those no socket took while none was
//! open. An administrator's socket then gets a `SNAPSHOT` frame and the feed
//! (see [`crate::feed`]); an administrator may also send
//! `{"type":"WATCH","what":"monitoring"}` to get a `MONITORING` frame (the
//! body of `GET /api/monitoring`) every few seconds.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_trait::async_trait;
use axum::{
    extract::{
        ws::{Message, WebSocket},
        Query, Request, State, WebSocketUpgrade,
    },
    http::{header, request::Parts, uri::PathAndQuery, HeaderValue, Uri},
    response::Response,
};
use clairon_auth::Role;
use clairon_bus::{
    consumer::{HandleError, Handler},
    Record,
};
use clairon_events::{decode, PushRequested};
use clairon_http::{auth, ApiError};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{hub::SocketRole, AppState, Web};

const PING_EVERY: Duration = Duration::from_secs(15);
/// How often a watching monitoring page gets fresh health and bus figures.
const MONITOR_EVERY: Duration = Duration::from_secs(3);
/// The subprotocol a browser names, with its token as the second entry.
pub const BEARER_PROTOCOL: &str = "clairon.bearer";

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

/// A `?token=` taken out of the URL by [`hide_query_token`].
#[derive(Clone)]
struct QueryToken(String);

/// Moves `/ws?token=…` into a request extension and leaves `/ws` as the URI, so
/// request logging and tracing layers wrapped inside this one never see the token.
pub async fn hide_query_token(mut req: Request) -> Request {
    if req.uri().path() == "/ws" && req.uri().query().is_some() {
        let token = Query::<WsQuery>::try_from_uri(req.uri())
            .ok()
            .and_then(|q| q.0.token);
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::from_static("/ws"));
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        if let Some(t) = token {
            req.extensions_mut().insert(QueryToken(t));
        }
    }
    req
}

/// The token a browser passes as `Sec-WebSocket-Protocol: clairon.bearer, <token>`.
fn protocol_token(parts: &Parts) -> Option<String> {
    let offered: Vec<&str> = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if !offered.contains(&BEARER_PROTOCOL) {
        return None;
    }
    offered
        .into_iter()
        .find(|p| *p != BEARER_PROTOCOL)
        .map(str::to_owned)
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
    let token = auth::bearer(&parts)
        .map(str::to_owned)
        .or_else(|| protocol_token(&parts))
        .or_else(|| parts.extensions.get::<QueryToken>().map(|t| t.0.clone()))
        .or(q.token)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "Authentication required: pass the token as `Authorization: Bearer`, as the \
                 `clairon.bearer` WebSocket subprotocol, or as `?token=`."
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
    let role = if claims.role == Role::Admin {
        SocketRole::Admin
    } else {
        SocketRole::User
    };
    let web = state.web.clone();
    let mut res = ws
        .max_message_size(64 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .on_upgrade(move |socket| {
            let tasks = web.tasks.clone();
            tasks.track_future(serve(web, user, role, socket))
        });
    // Echo the subprotocol the browser offered its token with; a browser closes a
    // socket whose handshake answers none of the protocols it asked for.
    if protocol_token(&parts).is_some() {
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(BEARER_PROTOCOL),
        );
    }
    Ok(res)
}

async fn serve(web: Arc<Web>, user: Uuid, role: SocketRole, mut socket: WebSocket) {
    // Register before reading the inbox so a push arriving meanwhile is not missed.
    let (_registration, mut rx) = web.hub.register(user, role);
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
    if role == SocketRole::Admin {
        let snapshot = web.feed.snapshot_frame();
        if socket
            .send(Message::Text(snapshot.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    // MONITORING frames of a watching admin page come from a task of this socket.
    let (monitor_tx, mut monitor_rx) = mpsc::channel::<Arc<str>>(2);
    let mut watching = false;
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
            Some(f) = monitor_rx.recv() => {
                if socket.send(Message::Text(f.to_string().into())).await.is_err() {
                    return;
                }
            }
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
                Some(Ok(Message::Text(t))) => {
                    awaiting_pong = false;
                    if role == SocketRole::Admin && !watching && wants_monitoring(t.as_str()) {
                        watching = true;
                        let (web, tx) = (web.clone(), monitor_tx.clone());
                        web.tasks.clone().spawn(watch_monitoring(web, tx));
                    }
                }
                Some(Ok(_)) => awaiting_pong = false,
            },
        }
    }
}

fn wants_monitoring(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|v| v["type"] == "WATCH" && v["what"] == "monitoring")
        .unwrap_or(false)
}

/// Sends a `MONITORING` frame now and every few seconds, until the socket ends.
async fn watch_monitoring(web: Arc<Web>, tx: mpsc::Sender<Arc<str>>) {
    loop {
        let mut body = crate::monitoring::overview(&web).await;
        body["type"] = json!("MONITORING");
        if tx.send(body.to_string().into()).await.is_err() {
            return;
        }
        tokio::select! {
            _ = web.cancel.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep(MONITOR_EVERY) => {}
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
            if let Err(e) = self.web.inbox.delivered(&[p.notification_id]).await {
                // Not fatal: the push stays "undelivered" and is sent again on reconnect.
                tracing::warn!(notification_id = %p.notification_id, error = %format!("{e:#}"), "could not record a delivered push");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request as HttpRequest;

    fn parts(protocols: &str) -> Parts {
        HttpRequest::builder()
            .uri("/ws")
            .header(header::SEC_WEBSOCKET_PROTOCOL, protocols)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn the_token_comes_from_the_bearer_subprotocol() {
        assert_eq!(
            protocol_token(&parts("clairon.bearer, a.b.c")).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            protocol_token(&parts("a.b.c,clairon.bearer")).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(protocol_token(&parts("chat, a.b.c")), None);
        assert_eq!(protocol_token(&parts("clairon.bearer")), None);
    }

    #[tokio::test]
    async fn the_query_token_is_taken_out_of_the_uri() {
        let req = HttpRequest::builder()
            .uri("/ws?token=secret.jwt.value&x=1")
            .body(axum::body::Body::empty())
            .unwrap();
        let req = hide_query_token(req).await;
        assert_eq!(req.uri().to_string(), "/ws");
        assert_eq!(
            req.extensions().get::<QueryToken>().map(|t| t.0.as_str()),
            Some("secret.jwt.value")
        );
        let other = HttpRequest::builder()
            .uri("/api/logs?q=token")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(
            hide_query_token(other).await.uri().to_string(),
            "/api/logs?q=token"
        );
    }

    #[test]
    fn only_a_watch_message_starts_monitoring() {
        assert!(wants_monitoring(r#"{"type":"WATCH","what":"monitoring"}"#));
        assert!(!wants_monitoring(r#"{"type":"WATCH","what":"other"}"#));
        assert!(!wants_monitoring("hello"));
    }
}
