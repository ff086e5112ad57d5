//! A WebSocket client for the web listener's `/ws`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{client::IntoClientRequest, http::StatusCode, Error, Message},
    MaybeTlsStream, WebSocketStream,
};
use uuid::Uuid;

use crate::helpers::{Svc, TestApp};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How the token travels.
#[derive(Debug, Clone, Copy)]
pub enum TokenIn {
    Query,
    Header,
}

/// Opens `/ws`; `Err` carries the HTTP status of a refused handshake.
pub async fn try_connect(
    app: &TestApp,
    token: Option<&str>,
    how: TokenIn,
) -> Result<Socket, StatusCode> {
    let host = app.host(Svc::Web);
    let url = match (token, how) {
        (Some(t), TokenIn::Query) => format!("ws://{host}/ws?token={t}"),
        _ => format!("ws://{host}/ws"),
    };
    let mut request = url.into_client_request().expect("a WebSocket request");
    if let (Some(t), TokenIn::Header) = (token, how) {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {t}").parse().expect("a header value"),
        );
    }
    match tokio::time::timeout(Duration::from_secs(10), connect_async(request)).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(Error::Http(resp))) => Err(resp.status()),
        Ok(Err(e)) => panic!("WebSocket connection to {host} failed: {e}"),
        Err(_) => panic!("WebSocket handshake with {host} timed out"),
    }
}

pub async fn connect(app: &TestApp, token: &str, how: TokenIn) -> Socket {
    try_connect(app, Some(token), how)
        .await
        .unwrap_or_else(|status| panic!("the WebSocket handshake was refused with {status}"))
}

/// Reads frames until a JSON text frame arrives; `None` when `timeout` passes first.
pub async fn next_json(socket: &mut Socket, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("the server closed the WebSocket"),
            Ok(Some(Err(e))) => panic!("WebSocket error: {e}"),
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => {
                return Some(
                    serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("a non-JSON text frame ({e}): {text}")),
                )
            }
            Message::Close(frame) => panic!("the server closed the WebSocket: {frame:?}"),
            _ => continue,
        }
    }
}

/// Reads frames until the push for `id` arrives; returns it and the frames seen before it.
pub async fn wait_for_push(
    socket: &mut Socket,
    id: Uuid,
    timeout: Duration,
) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + timeout;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = next_json(socket, left).await else {
            panic!("no push for {id} within {timeout:?}; frames seen: {before:?}");
        };
        if frame["notificationId"] == id.to_string() {
            return (frame, before);
        }
        before.push(frame);
    }
}
