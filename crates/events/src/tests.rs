use super::*;
use serde_json::json;

#[test]
fn user_registered_has_the_specified_shape() {
    let v = json!({
        "userId": "7b0c9c1e-8a55-4a4e-9b7a-1f4f3c2d1e00",
        "email": "user@example.com",
        "firstName": "John",
        "lastName": "Doe",
        "timestamp": "2024-01-01T10:00:00"
    });
    let ev: UserRegistered = serde_json::from_value(v).unwrap();
    let back = serde_json::to_value(&ev).unwrap();
    assert_eq!(
        back,
        json!({
            "userId": "7b0c9c1e-8a55-4a4e-9b7a-1f4f3c2d1e00",
            "email": "user@example.com",
            "firstName": "John",
            "lastName": "Doe",
            "timestamp": "2024-01-01T10:00:00.000Z"
        })
    );
}

#[test]
fn notification_triggered_round_trips_with_type_and_recipient() {
    let v = json!({
        "notificationId": "0d5b1c7a-1111-4a4e-9b7a-1f4f3c2d1e00",
        "userId": "7b0c9c1e-8a55-4a4e-9b7a-1f4f3c2d1e00",
        "type": "SMS",
        "title": "Titre",
        "message": "Message",
        "recipient": "+33600000000",
        "timestamp": "2024-01-01T12:00:00+02:00"
    });
    let ev: NotificationTriggered = serde_json::from_value(v).unwrap();
    assert_eq!(ev.kind, NotificationType::Sms);
    let back = serde_json::to_value(&ev).unwrap();
    assert_eq!(back["type"], "SMS");
    assert_eq!(back["recipient"], "+33600000000");
    // Offsets are accepted and emitted as UTC.
    assert_eq!(back["timestamp"], "2024-01-01T10:00:00.000Z");
    let keys: Vec<_> = back.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "message",
            "notificationId",
            "recipient",
            "timestamp",
            "title",
            "type",
            "userId"
        ]
    );
}

#[test]
fn user_action_uses_upper_snake_case_actions() {
    let ev = UserActionPerformed {
        user_id: uuid::Uuid::nil(),
        action_type: ActionType::UpdateProfile,
        action_details: "changed name".into(),
        timestamp: Timestamp::from_millis(0),
    };
    let v = serde_json::to_value(&ev).unwrap();
    assert_eq!(v["actionType"], "UPDATE_PROFILE");
    assert_eq!(v["actionDetails"], "changed name");
    assert!(serde_json::from_value::<UserActionPerformed>(json!({
        "userId": uuid::Uuid::nil(), "actionType": "DANCE", "actionDetails": "", "timestamp": "2024-01-01T10:00:00"
    }))
    .is_err());
}

#[test]
fn bad_timestamps_are_rejected_with_a_readable_reason() {
    let err = Timestamp::parse("yesterday").unwrap_err();
    assert!(err.contains("yesterday"), "{err}");
    assert!(Timestamp::parse("2024-01-01T10:00:00.123456").is_ok());
}

#[test]
fn envelope_carries_metadata_in_headers_not_payload() {
    let ev = PushRequested {
        notification_id: uuid::Uuid::nil(),
        user_id: uuid::Uuid::nil(),
        title: "t".into(),
        message: "m".into(),
        created_at: Timestamp::now(),
    };
    let env = Envelope::new(&ev, Some("00-abc-def-01"));
    assert_eq!(env.topic, topics::NOTIFICATION_PUSH);
    assert_eq!(env.header(headers::EVENT_TYPE), Some("PushRequested"));
    assert_eq!(env.header(headers::ATTEMPT), Some("1"));
    assert_eq!(env.header(headers::TRACEPARENT), Some("00-abc-def-01"));
    let payload: serde_json::Value = serde_json::from_slice(&env.payload).unwrap();
    assert!(payload.get("eventId").is_none());
}

#[test]
fn derived_topics_map_back_to_their_base() {
    assert_eq!(
        topics::base_topic(&topics::retry("notification-triggered", "notifications", 3)),
        "notification-triggered"
    );
    assert_eq!(
        topics::base_topic("notification-triggered-dlt"),
        "notification-triggered"
    );
    assert_eq!(topics::base_topic("user-registered"), "user-registered");
    assert_eq!(
        EventType::for_topic(&topics::dead_letter(topics::USER_REGISTERED)),
        Some(EventType::UserRegistered)
    );
}

#[test]
fn token_revoked_is_camel_case_on_its_own_topic() {
    let ev = TokenRevoked {
        token_id: "jti-1".into(),
        user_id: "7b0c9c1e-8a55-4a4e-9b7a-1f4f3c2d1e00".into(),
        expires_at: Timestamp::from_millis(1_704_103_200_000),
    };
    let env = Envelope::new(&ev, None);
    assert_eq!(env.topic, topics::TOKEN_REVOKED);
    assert_eq!(env.header(headers::EVENT_TYPE), Some("TokenRevoked"));
    let v: serde_json::Value = serde_json::from_slice(&env.payload).unwrap();
    assert_eq!(
        v,
        json!({
            "tokenId": "jti-1",
            "userId": "7b0c9c1e-8a55-4a4e-9b7a-1f4f3c2d1e00",
            "expiresAt": "2024-01-01T10:00:00.000Z"
        })
    );
    assert_eq!(
        EventType::for_topic(topics::TOKEN_REVOKED),
        Some(EventType::TokenRevoked)
    );
    assert_eq!(decode::<TokenRevoked>(&env.payload).unwrap(), ev);
}
