//! What every Clairon HTTP service shares.

pub mod auth;
pub mod health;
pub mod json;
pub mod layers;
pub mod metrics;
pub mod paging;
pub mod problem;
pub mod trace;

use std::sync::Arc;

use clairon_auth::AuthContext;
use clairon_bus::{consumer::RetryPolicy, EventBus};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use json::ApiJson;
pub use problem::{ApiError, ApiResult, FieldError};

/// The platform pieces a service is started with.
#[derive(Clone)]
pub struct ServiceDeps {
    pub bus: Arc<dyn EventBus>,
    pub auth: Arc<AuthContext>,
    /// Fires on shutdown: intake stops, in-flight work finishes.
    pub cancel: CancellationToken,
    /// Background tasks (consumers, relays) to wait for on shutdown.
    pub tasks: TaskTracker,
    pub retry: RetryPolicy,
}
