//! Bearer tokens: HS256 JWTs whose `sub` is the user id — the only source of identity.

use engine_core::UserId;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Token claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused (answered with HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in the `Authorization: Bearer` header or the `token` query parameter.
    #[error("missing bearer token (send `Authorization: Bearer <token>` or `?token=<token>`)")]
    Missing,
    /// The token is malformed, wrongly signed or expired.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's subject is not a valid user id.
    #[error("invalid user id in token: {0}")]
    BadSubject(String),
}

/// Signs and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Keys from a shared secret.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A token for `user`, valid for `ttl_secs`.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] if signing fails.
    pub fn issue(&self, user: &UserId, ttl_secs: u64) -> Result<String, AuthError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: user.to_string(),
            exp: now + ttl_secs,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Verifies `token` and returns its user.
    ///
    /// # Errors
    /// [`AuthError`] for malformed, wrongly signed or expired tokens and invalid user ids.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let data = decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        UserId::new(&data.claims.sub).map_err(|e| AuthError::BadSubject(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_and_refusals() {
        let keys = TokenKeys::new(b"secret-one");
        let alice = UserId::new("alice").unwrap();
        let t = keys.issue(&alice, 60).unwrap();
        assert_eq!(keys.verify(&t).unwrap(), alice);
        let other = TokenKeys::new(b"secret-two");
        assert!(matches!(other.verify(&t), Err(AuthError::Invalid(_))));
        assert!(matches!(
            keys.verify("not.a.token"),
            Err(AuthError::Invalid(_))
        ));
        let expired = encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                exp: 1,
            },
            &EncodingKey::from_secret(b"secret-one"),
        )
        .unwrap();
        assert!(matches!(keys.verify(&expired), Err(AuthError::Invalid(_))));
        let placeholder = encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "test".into(),
                exp: u64::MAX / 2,
            },
            &EncodingKey::from_secret(b"secret-one"),
        )
        .unwrap();
        assert!(matches!(
            keys.verify(&placeholder),
            Err(AuthError::BadSubject(_))
        ));
    }
}
