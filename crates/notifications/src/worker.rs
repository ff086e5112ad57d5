//! The consumer side: one record in, at most one send out.

use async_trait::async_trait;
use clairon_bus::{
    consumer::{HandleError, Handler, SPAN_TARGET},
    Record,
};
use clairon_events::{
    decode, headers, EventType, NotificationStatus, NotificationTriggered, NotificationType,
    UserRegistered,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    channels::{ChannelError, Delivery, Outgoing},
    repo::{self, Claim, DeadLetter, NewNotification},
    Notifications,
};

/// The welcome email's id derives from the user, so a redelivered
/// `UserRegistered` maps to the same notification and is not sent twice.
pub fn welcome_id(user_id: Uuid) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("clairon:welcome:{user_id}").as_bytes(),
    )
}

fn traceparent(r: &Record) -> Option<String> {
    r.header(headers::TRACEPARENT).map(str::to_owned)
}

fn retry(e: anyhow::Error) -> HandleError {
    HandleError::Retry(format!("{e:#}"))
}

impl Notifications {
    fn parse(&self, r: &Record) -> Result<NewNotification, HandleError> {
        let kind = r
            .header(headers::EVENT_TYPE)
            .and_then(EventType::parse)
            .or_else(|| EventType::for_topic(&r.topic));
        match kind {
            Some(EventType::NotificationTriggered) => {
                let ev: NotificationTriggered = decode(&r.payload).map_err(HandleError::Reject)?;
                Ok(NewNotification {
                    notification_id: ev.notification_id,
                    user_id: ev.user_id,
                    kind: ev.kind,
                    title: ev.title,
                    message: ev.message,
                    recipient: ev.recipient,
                    created_at: ev.timestamp,
                    traceparent: traceparent(r),
                })
            }
            Some(EventType::UserRegistered) => {
                let ev: UserRegistered = decode(&r.payload).map_err(HandleError::Reject)?;
                Ok(NewNotification {
                    notification_id: welcome_id(ev.user_id),
                    user_id: ev.user_id,
                    kind: NotificationType::Email,
                    title: "Welcome to Clairon".into(),
                    message: format!(
                        "Hello {},\n\nyour Clairon account {} is ready. Notifications sent to you will arrive here, by SMS and in the web app.\n",
                        ev.first_name, ev.email
                    ),
                    recipient: Some(ev.email),
                    created_at: ev.timestamp,
                    traceparent: traceparent(r),
                })
            }
            other => Err(HandleError::Reject(format!(
                "the notification service does not handle {} records",
                other.map(|t| t.as_str()).unwrap_or("unknown")
            ))),
        }
    }

    /// Finds where to send when the event named no recipient.
    async fn resolve(&self, n: &NewNotification) -> Result<String, HandleError> {
        if n.kind == NotificationType::Push {
            return Ok(n.user_id.to_string());
        }
        let contact = self
            .directory
            .contact(n.user_id)
            .await
            .map_err(retry)?
            .ok_or_else(|| {
                HandleError::Reject(format!(
                    "no recipient given and user {} is unknown",
                    n.user_id
                ))
            })?;
        match n.kind {
            NotificationType::Email => Ok(contact.email),
            _ => contact.phone_number.ok_or_else(|| {
                HandleError::Reject(format!(
                    "no recipient given and user {} has no phone number",
                    n.user_id
                ))
            }),
        }
    }

    async fn deliver(&self, n: &NewNotification, attempt: u32) -> Result<(), HandleError> {
        let Some(_claim) = InFlight::claim(self, n.notification_id) else {
            return Err(HandleError::Defer(format!(
                "notification {} is being delivered by another handler",
                n.notification_id
            )));
        };
        let stored_recipient = match repo::claim(&self.db, n, &self.owner).await.map_err(retry)? {
            Claim::Claimed(recipient) => recipient,
            Claim::Done(_) => {
                metrics::counter!("clairon_notifications_duplicates_total").increment(1);
                tracing::debug!(notification_id = %n.notification_id, %attempt, "already handled; not sending again");
                return Ok(());
            }
            Claim::Busy => {
                return Err(HandleError::Defer(format!(
                    "notification {} is being delivered by another process",
                    n.notification_id
                )))
            }
        };
        let recipient = match n.recipient.clone().or(stored_recipient) {
            Some(r) => r,
            None => match self.resolve(n).await {
                Ok(r) => r,
                Err(e) => {
                    // Nothing was sent: let whoever handles it next go ahead.
                    if let Err(release) =
                        repo::release(&self.db, n.notification_id, &self.owner).await
                    {
                        tracing::warn!(notification_id = %n.notification_id, error = %format!("{release:#}"), "releasing a delivery claim failed; it runs out by itself");
                    }
                    return Err(e);
                }
            },
        };
        let out = Outgoing {
            notification_id: n.notification_id,
            user_id: n.user_id,
            kind: n.kind,
            title: n.title.clone(),
            message: n.message.clone(),
            recipient: recipient.clone(),
            created_at: n.created_at,
        };
        // The provider call, a child of the record's `handle` span.
        let span = tracing::debug_span!(
            target: SPAN_TARGET,
            "send",
            otel.name = %format!("send {}", n.kind.as_str()),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            clairon.notification_id = %n.notification_id,
            clairon.channel = n.kind.as_str(),
            clairon.attempt = attempt,
            clairon.delivery = tracing::field::Empty,
        );
        let result = self
            .channels
            .for_type(n.kind)
            .send(&out)
            .instrument(span.clone())
            .await;
        span.record(
            "clairon.delivery",
            match &result {
                Ok(Delivery::Sent) => "sent",
                Ok(Delivery::Captured) => "captured",
                Err(ChannelError::Transient(_)) => "transient_failure",
                Err(ChannelError::Permanent(_)) => "permanent_failure",
            },
        );
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        drop(span);
        let (status, reason, err) = match result {
            Ok(Delivery::Sent) => (NotificationStatus::Sent, None, None),
            Ok(Delivery::Captured) => (NotificationStatus::Captured, None, None),
            Err(ChannelError::Transient(e)) => (
                NotificationStatus::Failed,
                Some(e.clone()),
                Some(HandleError::Retry(e)),
            ),
            Err(ChannelError::Permanent(e)) => (
                NotificationStatus::Failed,
                Some(e.clone()),
                Some(HandleError::Reject(e)),
            ),
        };
        repo::record_outcome(
            &self.db,
            &self.outbox,
            n,
            status,
            attempt,
            Some(&recipient),
            reason.as_deref(),
        )
        .await
        .map_err(retry)?;
        if status == NotificationStatus::Sent {
            // Trigger → provider acceptance, the latency users feel.
            let secs = (clairon_store::now_ms() - n.created_at.millis()).max(0) as f64 / 1000.0;
            metrics::histogram!("clairon_delivery_latency_seconds", "type" => n.kind.as_str())
                .record(secs);
        }
        match err {
            None => Ok(()),
            Some(e) => {
                tracing::info!(notification_id = %n.notification_id, %attempt, error = %e, "delivery failed");
                Err(e)
            }
        }
    }
}

/// Marks a notification as being delivered until dropped.
struct InFlight<'a> {
    svc: &'a Notifications,
    id: Uuid,
}

impl<'a> InFlight<'a> {
    fn claim(svc: &'a Notifications, id: Uuid) -> Option<Self> {
        // Build the guard only after the lock is released: its Drop takes the lock.
        let claimed = svc.in_flight.lock().ok()?.insert(id);
        if claimed {
            Some(InFlight { svc, id })
        } else {
            None
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.svc.in_flight.lock() {
            set.remove(&self.id);
        }
    }
}

#[async_trait]
impl Handler for Notifications {
    async fn handle(&self, r: &Record) -> Result<(), HandleError> {
        let n = self.parse(r)?;
        self.deliver(&n, r.attempt()).await
    }

    async fn dead_lettered(&self, r: &Record, reason: &str) -> anyhow::Result<()> {
        let n = self.parse(r).ok();
        let payload = String::from_utf8_lossy(&r.payload).into_owned();
        let topic = r
            .header(headers::ORIGINAL_TOPIC)
            .unwrap_or(clairon_events::topics::base_topic(&r.topic));
        let partition = r
            .header(headers::ORIGINAL_PARTITION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(r.partition);
        let offset = r
            .header(headers::ORIGINAL_OFFSET)
            .and_then(|v| v.parse().ok())
            .unwrap_or(r.offset);
        repo::dead_letter(
            &self.db,
            &self.outbox,
            DeadLetter {
                topic,
                partition,
                offset,
                key: &r.key,
                headers: serde_json::to_string(&r.headers)?,
                payload,
                reason,
                attempts: r.attempt(),
            },
            n.as_ref(),
        )
        .await
    }
}
