//! Authentication primitives: argon2id password hashes, HS256-signed JWT access
//! tokens carrying a role, and the revocation seam logout writes to.

use std::{sync::Arc, time::Duration};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token allows. `SERVICE` is for machine callers (other services, scripts):
/// it may publish events but has no user account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    Admin,
    User,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "ADMIN",
            Role::User => "USER",
            Role::Service => "SERVICE",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_uppercase().as_str() {
            "ADMIN" => Some(Role::Admin),
            "USER" => Some(Role::User),
            "SERVICE" => Some(Role::Service),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, or the service name for a service token.
    pub sub: String,
    pub role: Role,
    /// Token id, the handle logout revokes.
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

impl Claims {
    pub fn user_id(&self) -> Option<uuid::Uuid> {
        uuid::Uuid::parse_str(&self.sub).ok()
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid")]
    Invalid,
    #[error("the token has been revoked")]
    Revoked,
}

pub struct IssuedToken {
    pub token: String,
    pub claims: Claims,
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl Tokens {
    pub const MIN_SECRET_LEN: usize = 32;

    pub fn new(secret: &[u8], ttl: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= Self::MIN_SECRET_LEN,
            "the token signing secret must be at least {} bytes",
            Self::MIN_SECRET_LEN
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, sub: &str, role: Role) -> anyhow::Result<IssuedToken> {
        self.issue_for(sub, role, self.ttl)
    }

    pub fn issue_for(&self, sub: &str, role: Role, ttl: Duration) -> anyhow::Result<IssuedToken> {
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            exp: now + ttl.as_secs() as i64,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken { token, claims })
    }

    /// Checks signature and expiry (revocation is the caller's second step).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// Where revoked token ids are kept until their token would have expired anyway.
#[async_trait]
pub trait Revocations: Send + Sync + 'static {
    async fn is_revoked(&self, jti: &str) -> anyhow::Result<bool>;
    async fn revoke(&self, jti: &str, expires_at: i64) -> anyhow::Result<()>;
}

/// Everything needed to authenticate a request.
pub struct AuthContext {
    pub tokens: Tokens,
    pub revocations: Arc<dyn Revocations>,
}

impl AuthContext {
    pub async fn authenticate(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = self.tokens.verify(token)?;
        match self.revocations.is_revoked(&claims.jti).await {
            Ok(false) => Ok(claims),
            Ok(true) => Err(TokenError::Revoked),
            // Fail closed: a token we cannot check is not accepted.
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// Hashes a password with argon2id and a random salt (PHC string). CPU-heavy:
/// call it from a blocking task.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}

/// Checks a password against a PHC hash; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the account does not exist, so an unknown
/// email costs the same time as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password never matches").unwrap_or_default())
}

/// A random secret of `len` URL-safe characters (passwords, signing keys).
pub fn random_secret(len: usize) -> String {
    use rand::{distributions::Alphanumeric, Rng};
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify_and_differ_per_salt() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("wrong", &a));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering_and_expiry() {
        let t = Tokens::new(&[7u8; 32], Duration::from_secs(60)).unwrap();
        let issued = t.issue("u1", Role::User).unwrap();
        assert_eq!(t.verify(&issued.token).unwrap().role, Role::User);

        let mut parts: Vec<String> = issued.token.split('.').map(str::to_owned).collect();
        // Forge a payload claiming ADMIN with the original signature.
        let forged = t.issue("u1", Role::Admin).unwrap();
        parts[1] = forged.token.split('.').nth(1).unwrap().to_owned();
        assert_eq!(t.verify(&parts.join(".")), Err(TokenError::Invalid));

        let other = Tokens::new(&[8u8; 32], Duration::from_secs(60)).unwrap();
        assert_eq!(other.verify(&issued.token), Err(TokenError::Invalid));

        let mut expired = t.issue("u1", Role::User).unwrap().claims;
        expired.exp = unix_now() - 60;
        let tok = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .unwrap();
        assert_eq!(t.verify(&tok), Err(TokenError::Expired));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Tokens::new(b"short", Duration::from_secs(1)).is_err());
    }
}
