//! Bearer tokens: HS256 JWTs whose `sub` is the user id — the only source of identity — checked
//! against the gateway's [`TokenRules`] (expiry, not-before, issuer, audience, lifetime).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine_core::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Token claims, as [`TokenKeys::issue`] writes them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The issuer ([`TokenRules::issuer`], when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The audience ([`TokenRules::audience`], when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// What a verified token says: its user and when it stops being valid (the gateway closes the
/// socket then, with code 4401).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedToken {
    /// The token's user.
    pub user: UserId,
    /// Its `exp`, plus the leeway.
    pub expires_at: SystemTime,
}

/// The claims the gateway checks beyond the signature and `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenRules {
    /// Required `iss` (`None`: not checked).
    pub issuer: Option<String>,
    /// Required `aud` (`None`: a token carrying an `aud` claim is refused, as the JWT rules
    /// ask; set it to accept an identity provider's tokens).
    pub audience: Option<String>,
    /// Longest accepted lifetime: `exp - iat`, or `exp - now` for a token without `iat`.
    pub max_lifetime: Duration,
    /// Clock difference tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

impl Default for TokenRules {
    /// No issuer or audience, a 24-hour maximum lifetime, 5 seconds of leeway.
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            max_lifetime: Duration::from_secs(24 * 3600),
            leeway: Duration::from_secs(5),
        }
    }
}

/// Why a token was refused (answered with HTTP 401; the body is the message, which never
/// repeats the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token where the gateway looks for one.
    #[error("missing bearer token (send `Authorization: Bearer <token>`, the subprotocol `bearer.<token>` beside `engine-gateway.v1`, or a `?ticket=` from POST /ws/ticket)")]
    Missing,
    /// The token's `exp` has passed.
    #[error("the token has expired; get a new one")]
    Expired,
    /// The token's `nbf` is still ahead.
    #[error("the token is not valid yet (nbf); check the issuer's clock")]
    NotYetValid,
    /// The token's `iss` is not the configured issuer.
    #[error("the token's issuer (iss) is not the one this gateway accepts")]
    WrongIssuer,
    /// The token's `aud` is not the configured audience, or it has one and none is configured.
    #[error(
        "the token's audience (aud) is not accepted (the operator sets it with --jwt-audience)"
    )]
    WrongAudience,
    /// The token lives longer than the configured maximum.
    #[error("the token lives {lifetime_secs} s, longer than the {max_secs} s this gateway accepts; issue a shorter one")]
    LifetimeTooLong {
        /// Its lifetime in seconds.
        lifetime_secs: u64,
        /// The maximum in seconds.
        max_secs: u64,
    },
    /// The token is malformed, wrongly signed or lacks a required claim.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's subject is not a valid user id.
    #[error("invalid user id in token: {0}")]
    BadSubject(String),
    /// A token in the query string while the gateway does not accept it there.
    #[error("tokens in the query string are refused (proxies log them): send `Authorization: Bearer <token>`, the subprotocol `bearer.<token>`, or a ticket from POST /ws/ticket")]
    QueryTokenOff,
    /// A one-time ticket that is unknown, already used or expired.
    #[error("unknown or expired ticket; get a new one from POST /ws/ticket")]
    BadTicket,
}

/// The claims read when verifying (`aud` and `iss` are checked by the JWT library on the raw
/// claims, so an `aud` array is fine).
#[derive(Deserialize)]
struct Decoded {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
}

/// Signs and verifies tokens with one HS256 secret under one set of [`TokenRules`].
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    rules: TokenRules,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("secret", &"<redacted>")
            .field("rules", &self.rules)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenKeys {
    /// Keys from a shared secret, with the default [`TokenRules`].
    pub fn new(secret: &[u8]) -> Self {
        Self::with_rules(secret, TokenRules::default())
    }

    /// Keys from a shared secret, checking tokens against `rules`.
    pub fn with_rules(secret: &[u8], rules: TokenRules) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            rules,
        }
    }

    /// The rules tokens are checked against.
    pub fn rules(&self) -> &TokenRules {
        &self.rules
    }

    /// A token for `user`, valid for `ttl_secs` from now, carrying the configured issuer and
    /// audience (so that this gateway accepts it if `ttl_secs` is within the maximum lifetime).
    ///
    /// # Errors
    /// [`AuthError::Invalid`] if signing fails.
    pub fn issue(&self, user: &UserId, ttl_secs: u64) -> Result<String, AuthError> {
        let now = now_secs();
        let claims = Claims {
            sub: user.to_string(),
            exp: now + ttl_secs,
            iat: Some(now),
            nbf: Some(now),
            iss: self.rules.issuer.clone(),
            aud: self.rules.audience.clone(),
        };
        self.sign(&claims)
    }

    /// Signs `claims` as they are (tests and auth services that set every claim).
    ///
    /// # Errors
    /// [`AuthError::Invalid`] if signing fails.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Verifies `token` and returns its user.
    ///
    /// # Errors
    /// [`AuthError`] for malformed, wrongly signed, expired, not yet valid, too long-lived
    /// tokens, a wrong issuer or audience, and invalid user ids.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_token(token).map(|v| v.user)
    }

    /// Verifies `token` and returns its user and the moment it expires.
    ///
    /// # Errors
    /// As [`verify`](Self::verify).
    pub fn verify_token(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let rules = &self.rules;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = rules.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Without a configured audience, the library refuses any token that carries one.
        if let Some(aud) = &rules.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        if let Some(iss) = &rules.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let data =
            decode::<Decoded>(token, &self.decoding, &validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        let now = now_secs();
        let leeway = rules.leeway.as_secs();
        let max = rules.max_lifetime.as_secs();
        let lifetime = match claims.iat {
            Some(iat) if iat > now + leeway => return Err(AuthError::NotYetValid),
            Some(iat) => claims.exp.saturating_sub(iat),
            None => claims.exp.saturating_sub(now),
        };
        if lifetime > max + leeway {
            return Err(AuthError::LifetimeTooLong {
                lifetime_secs: lifetime,
                max_secs: max,
            });
        }
        let user = UserId::new(&claims.sub).map_err(|e| AuthError::BadSubject(e.to_string()))?;
        Ok(VerifiedToken {
            user,
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp.saturating_add(leeway)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp,
            iat: None,
            nbf: None,
            iss: None,
            aud: None,
        }
    }

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
        let expired = keys.sign(&claims("alice", 1)).unwrap();
        assert_eq!(keys.verify(&expired), Err(AuthError::Expired));
        let placeholder = keys.sign(&claims("test", now_secs() + 60)).unwrap();
        assert!(matches!(
            keys.verify(&placeholder),
            Err(AuthError::BadSubject(_))
        ));
    }

    /// A table of tokens and the rules they meet: (what, rules, claims, accepted?).
    #[test]
    fn claims_against_rules() {
        let now = now_secs();
        let strict = TokenRules {
            issuer: Some("https://id.example".into()),
            audience: Some("engine".into()),
            max_lifetime: Duration::from_secs(3600),
            leeway: Duration::from_secs(5),
        };
        let plain = TokenRules::default();
        let full = |f: &dyn Fn(&mut Claims)| {
            let mut c = Claims {
                sub: "alice".into(),
                exp: now + 600,
                iat: Some(now),
                nbf: Some(now),
                iss: Some("https://id.example".into()),
                aud: Some("engine".into()),
            };
            f(&mut c);
            c
        };
        let cases: Vec<(&str, &TokenRules, Claims, Result<(), AuthError>)> = vec![
            ("all claims right", &strict, full(&|_| {}), Ok(())),
            (
                "no iat, within the maximum lifetime",
                &strict,
                full(&|c| c.iat = None),
                Ok(()),
            ),
            (
                "another audience",
                &strict,
                full(&|c| c.aud = Some("other".into())),
                Err(AuthError::WrongAudience),
            ),
            (
                "no audience when one is required",
                &strict,
                full(&|c| c.aud = None),
                Err(AuthError::Invalid(String::new())),
            ),
            (
                "an audience none is configured for",
                &plain,
                full(&|c| c.iss = None),
                Err(AuthError::WrongAudience),
            ),
            (
                "another issuer",
                &strict,
                full(&|c| c.iss = Some("https://evil.example".into())),
                Err(AuthError::WrongIssuer),
            ),
            (
                "no issuer when one is required",
                &strict,
                full(&|c| c.iss = None),
                Err(AuthError::Invalid(String::new())),
            ),
            (
                "not before, in a minute",
                &strict,
                full(&|c| c.nbf = Some(now + 60)),
                Err(AuthError::NotYetValid),
            ),
            (
                "not before, within the leeway",
                &strict,
                full(&|c| c.nbf = Some(now + 3)),
                Ok(()),
            ),
            (
                "expired within the leeway",
                &strict,
                full(&|c| c.exp = now - 2),
                Ok(()),
            ),
            (
                "expired past the leeway",
                &strict,
                full(&|c| c.exp = now - 30),
                Err(AuthError::Expired),
            ),
            (
                "issued in the future",
                &strict,
                full(&|c| c.iat = Some(now + 120)),
                Err(AuthError::NotYetValid),
            ),
            (
                "a two-hour token against a one-hour maximum",
                &strict,
                full(&|c| c.exp = now + 7200),
                Err(AuthError::LifetimeTooLong {
                    lifetime_secs: 7200,
                    max_secs: 3600,
                }),
            ),
            (
                "a long token without iat",
                &strict,
                full(&|c| {
                    c.iat = None;
                    c.exp = now + 7200;
                }),
                Err(AuthError::LifetimeTooLong {
                    lifetime_secs: 7200,
                    max_secs: 3600,
                }),
            ),
        ];
        for (what, rules, claims, expected) in cases {
            let keys = TokenKeys::with_rules(b"secret", rules.clone());
            let token = keys.sign(&claims).unwrap();
            let got = keys.verify(&token).map(|_| ());
            match (&got, &expected) {
                (Err(AuthError::Invalid(_)), Err(AuthError::Invalid(_))) => {}
                _ => assert_eq!(got, expected, "{what}"),
            }
        }
    }

    #[test]
    fn an_identity_providers_aud_array_is_accepted_when_it_names_the_audience() {
        #[derive(Serialize)]
        struct Idp {
            sub: &'static str,
            exp: u64,
            aud: [&'static str; 2],
        }
        let rules = TokenRules {
            audience: Some("engine".into()),
            ..TokenRules::default()
        };
        let keys = TokenKeys::with_rules(b"secret", rules);
        let token = encode(
            &Header::new(Algorithm::HS256),
            &Idp {
                sub: "alice",
                exp: now_secs() + 60,
                aud: ["account", "engine"],
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(keys.verify(&token).unwrap().as_str(), "alice");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let keys = TokenKeys::new(b"super-secret-value-of-32-bytes!!");
        let text = format!("{keys:?}");
        assert!(!text.contains("super-secret"), "{text}");
    }
}
