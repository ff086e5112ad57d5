//! Logout across processes: the users process records the revocation, and the
//! processes without the users service (which never open its tables) learn of
//! it from the `token-revoked` topic.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio_tungstenite::{connect_async, tungstenite, tungstenite::client::IntoClientRequest};

use super::cluster::{Cluster, ClusterOptions};
use crate::helpers::eventually;

/// How soon another process must refuse a logged-out token.
const PROPAGATION: Duration = Duration::from_secs(5);

async fn status(c: &Cluster, url: String, token: &str) -> Result<StatusCode, String> {
    c.client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status())
        .map_err(|e| e.to_string())
}

/// The HTTP status the web process answers a WebSocket upgrade with.
async fn ws_status(c: &Cluster, token: &str) -> Result<StatusCode, String> {
    let host = c.web("").trim_start_matches("http://").to_owned();
    let req = format!("ws://{host}/ws?token={token}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    match connect_async(req).await {
        Ok((_socket, resp)) => Ok(resp.status()),
        Err(tungstenite::Error::Http(resp)) => Ok(resp.status()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logout_on_the_users_process_is_refused_by_the_other_processes_within_seconds() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let user = c.register_user().await;
    let other_session = c.login(&user.email, &user.password).await;
    let notifications = || c.url("notifications-1", "/api/notifications");
    let through_web = || c.web("/api/notifications");

    assert_eq!(
        status(&c, notifications(), &user.token).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(
        status(&c, through_web(), &user.token).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(
        ws_status(&c, &user.token).await,
        Ok(StatusCode::SWITCHING_PROTOCOLS)
    );

    let r = c
        .client()
        .post(c.url("users", "/api/users/logout"))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let logged_out = Instant::now();
    // The users process itself refuses it at once.
    assert_eq!(
        status(&c, c.url("users", "/api/users/me"), &user.token).await,
        Ok(StatusCode::UNAUTHORIZED)
    );

    let refused = |got: Result<StatusCode, String>| match got {
        Ok(StatusCode::UNAUTHORIZED) => Ok(()),
        other => Err(format!("answered {other:?}")),
    };
    eventually(
        "the notification process to refuse the revoked token",
        PROPAGATION,
        async || refused(status(&c, notifications(), &user.token).await),
    )
    .await;
    eventually(
        "the web gateway to refuse the revoked token",
        PROPAGATION,
        async || refused(status(&c, through_web(), &user.token).await),
    )
    .await;
    eventually(
        "the web process to refuse the revoked token on /ws",
        PROPAGATION,
        async || refused(ws_status(&c, &user.token).await),
    )
    .await;
    assert!(
        logged_out.elapsed() < PROPAGATION,
        "took {:?}",
        logged_out.elapsed()
    );

    // Only that token: the user's other session still works everywhere.
    assert_eq!(
        status(&c, notifications(), &other_session).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(
        status(&c, through_web(), &other_session).await,
        Ok(StatusCode::OK)
    );

    // A process started after the logout knows it from replaying the topic,
    // as soon as it is ready.
    c.stop("notifications-1").await;
    c.start_proc("notifications-1").await;
    assert_eq!(
        status(&c, notifications(), &user.token).await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        status(&c, notifications(), &other_session).await,
        Ok(StatusCode::OK)
    );
}
