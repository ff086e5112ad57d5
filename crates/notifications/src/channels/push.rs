use std::sync::Arc;

use async_trait::async_trait;
use clairon_bus::EventBus;
use clairon_events::{Envelope, PushRequested};

use super::{Channel, ChannelError, Delivery, Outgoing};

/// PUSH: hands the message to every web replica through the bus; each writes
/// it to the user's sockets it holds, and a user with no open socket gets it on
/// the next connection (the notification stays undelivered until then).
pub struct PushChannel {
    bus: Arc<dyn EventBus>,
}

impl PushChannel {
    pub fn new(bus: Arc<dyn EventBus>) -> Self {
        PushChannel { bus }
    }
}

#[async_trait]
impl Channel for PushChannel {
    async fn send(&self, msg: &Outgoing) -> Result<Delivery, ChannelError> {
        let ev = PushRequested {
            notification_id: msg.notification_id,
            user_id: msg.user_id,
            title: msg.title.clone(),
            message: msg.message.clone(),
            created_at: msg.created_at,
        };
        // The web replicas handle it as a child of this send.
        let tp = clairon_http::trace::current_traceparent();
        let env = Envelope::new(&ev, tp.as_deref());
        let topic = env.topic.clone();
        self.bus
            .publish(env)
            .await
            .map_err(|e| ChannelError::Transient(format!("push fan-out unavailable: {e}")))?;
        metrics::counter!("clairon_bus_published_total", "topic" => topic).increment(1);
        Ok(Delivery::Sent)
    }
}
