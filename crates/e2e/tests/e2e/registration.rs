use reqwest::StatusCode;
use serde_json::json;

use crate::{
    helpers::{eventually, items, json_of, unique_email, Options, TestApp, TIMEOUT},
    smtp::SmtpSink,
};

#[tokio::test]
async fn registration_sends_a_welcome_email_to_the_new_user() {
    let smtp = SmtpSink::start().await;
    let app = TestApp::spawn(Options::new().smtp(&smtp)).await;

    let email = unique_email();
    let resp = app
        .register(&json!({
            "email": email,
            "password": "correct horse battery",
            "firstName": "Ada",
            "lastName": "Lovelace",
            "phoneNumber": "+15550001111",
        }))
        .await;
    let (status, user) = json_of(resp).await;
    assert_eq!(status, StatusCode::CREATED, "registration: {user}");
    assert_eq!(
        user["email"].as_str().map(str::to_lowercase),
        Some(email.clone()),
        "{user}"
    );
    assert_eq!(user["role"], "USER", "{user}");
    assert_eq!(user["firstName"], "Ada", "{user}");
    assert_eq!(user["phoneNumber"], "+15550001111", "{user}");
    let user_id = user["userId"].as_str().expect("a userId").to_owned();
    let fields = user.as_object().expect("a User object");
    assert!(
        fields
            .keys()
            .all(|k| !k.to_lowercase().contains("password"))
            && !user.to_string().contains("$argon2"),
        "the User answer leaks password material: {user}"
    );

    let mail = smtp
        .wait_for("the welcome email", |m| m.is_to(&email), TIMEOUT)
        .await;
    assert!(
        mail.subject().contains("Welcome"),
        "the welcome email's subject is {:?}",
        mail.subject()
    );

    // The welcome email is one of the user's own notifications: listed, SENT,
    // and its id is in the email's Message-ID.
    let token = app.login(&email, "correct horse battery").await;
    let welcome = eventually(
        "the welcome notification to be listed as SENT",
        TIMEOUT,
        async || {
            let page = app.list_notifications(&token, "").await;
            items(&page)
                .iter()
                .find(|n| n["type"] == "EMAIL" && n["status"] == "SENT")
                .cloned()
                .ok_or_else(|| page.to_string())
        },
    )
    .await;
    assert_eq!(welcome["userId"], user_id.as_str(), "{welcome}");
    let id = welcome["notificationId"]
        .as_str()
        .expect("a notificationId");
    assert!(
        mail.message_id().contains(id),
        "the welcome email's Message-ID {:?} does not contain its notification id {id}",
        mail.message_id()
    );
}
