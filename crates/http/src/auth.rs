//! Extractors that state an endpoint's access rule in its signature:
//! [`Authenticated`] (any valid token), [`AdminOnly`], [`Publisher`] (admin or
//! service token). Tokens come from `Authorization: Bearer …`.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};
use clairon_auth::{AuthContext, Claims, Role, TokenError};

use crate::problem::ApiError;

/// The caller's verified claims.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn token_error(e: TokenError) -> ApiError {
    ApiError::Unauthorized(match e {
        TokenError::Expired => "Your session has expired; log in again.".into(),
        TokenError::Revoked => "This token has been revoked; log in again.".into(),
        TokenError::Invalid => "The access token is not valid.".into(),
    })
}

impl<S> FromRequestParts<S> for Authenticated
where
    Arc<AuthContext>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ctx = Arc::<AuthContext>::from_ref(state);
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized(
                "Authentication required: send `Authorization: Bearer <token>`.".into(),
            )
        })?;
        ctx.authenticate(token)
            .await
            .map(Authenticated)
            .map_err(token_error)
    }
}

/// Defines an extractor that admits only the given roles; the others get 403
/// with `$message`.
macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, [$($role:ident),+], $message:literal) => {
        $(#[$doc])*
        pub struct $name(pub Claims);

        impl<S> FromRequestParts<S> for $name
        where
            Arc<AuthContext>: FromRef<S>,
            S: Send + Sync,
        {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
                let Authenticated(c) = Authenticated::from_request_parts(parts, state).await?;
                if !matches!(c.role, $(Role::$role)|+) {
                    return Err(ApiError::Forbidden($message.into()));
                }
                Ok($name(c))
            }
        }
    };
}

role_extractor!(
    /// An administrator.
    AdminOnly,
    [Admin],
    "This needs an administrator account."
);

role_extractor!(
    /// An administrator or a service token: who may publish events.
    Publisher,
    [Admin, Service],
    "Publishing events needs an administrator or a service token."
);

role_extractor!(
    /// Another Clairon service (SERVICE token) or an administrator: for the
    /// internal look-ups one service makes of another in a distributed run.
    ServiceCaller,
    [Admin, Service],
    "This is for Clairon services and administrators."
);
