//! Client token verification (HS256 secret, PEM public key or JWKS, the
//! algorithm always bound to the key) and what a token grants.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use tidings_protocol::codes::error;
use tidings_token::Claims;

use crate::config::GatewayConfig;
use crate::keys::{BoundKey, KeyError, KeySource, bind_pem};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// Why a token was refused. All map to 401 before the upgrade, 1008 after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: pass token=, an Authorization: Bearer header, or an auth message")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer is missing or not accepted")]
    WrongIssuer,
    #[error("token audience is missing or not accepted")]
    WrongAudience,
    #[error("the token's kid is not among the identity provider's keys")]
    UnknownKey,
    #[error("the token was revoked")]
    Revoked,
}

impl AuthError {
    /// The error code of SPEC-style JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => error::TOKEN_MISSING,
            AuthError::Malformed(_) => error::TOKEN_INVALID,
            AuthError::BadSignature => error::TOKEN_BAD_SIGNATURE,
            AuthError::Expired => error::TOKEN_EXPIRED,
            AuthError::NotYetValid => error::TOKEN_NOT_YET_VALID,
            AuthError::WrongIssuer => error::TOKEN_WRONG_ISSUER,
            AuthError::WrongAudience => error::TOKEN_WRONG_AUDIENCE,
            AuthError::UnknownKey => error::TOKEN_BAD_SIGNATURE,
            AuthError::Revoked => error::TOKEN_REVOKED,
        }
    }
}

enum Keys {
    Static(BoundKey),
    Jwks(crate::jwks::JwksCache),
}

/// Verifies tokens with the configured key source.
pub struct Verifier {
    keys: Keys,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(config: &GatewayConfig) -> Result<Self, KeyError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely right
        // when present: jsonwebtoken checks `iss`/`aud` only if the token has them.
        let mut required = vec!["exp", "sub"];
        required.extend(config.jwt_issuer.as_ref().map(|_| "iss"));
        required.extend(config.jwt_audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &config.jwt_issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let keys = match &config.jwt_keys {
            KeySource::Secret(secret) if secret.is_empty() => return Err(KeyError("the HS256 secret is empty".into())),
            KeySource::Secret(secret) => {
                Keys::Static(BoundKey { key: DecodingKey::from_secret(secret.as_bytes()), algorithms: vec![Algorithm::HS256] })
            }
            KeySource::PublicKeyPem(pem) => {
                let (key, algorithms) = bind_pem(pem)?;
                Keys::Static(BoundKey { key, algorithms })
            }
            KeySource::JwksUrl(url) => Keys::Jwks(crate::jwks::JwksCache::new(url.clone(), config.jwks_refresh_interval)?),
        };
        Ok(Self { keys, validation })
    }

    /// Loads JWKS keys ahead of the first token (a no-op for static keys).
    pub async fn warm_up(&self) {
        if let Keys::Jwks(cache) = &self.keys {
            cache.refresh().await;
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let bound = match &self.keys {
            Keys::Static(bound) => bound.clone(),
            Keys::Jwks(cache) => {
                let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(format!("{:?}", e.kind())))?;
                let kid = header.kid.ok_or_else(|| AuthError::Malformed("the token has no kid".into()))?;
                cache.key(&kid).await.ok_or(AuthError::UnknownKey)?
            }
        };
        let mut validation = self.validation.clone();
        validation.algorithms = bound.algorithms;
        decode_with(token, &bound.key, &validation)
    }
}

fn decode_with(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    use jsonwebtoken::errors::ErrorKind;
    decode::<Claims>(token, key, validation).map(|d| d.claims).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::Malformed(format!("the token has no {claim:?} claim")),
        ErrorKind::InvalidAlgorithm => AuthError::Malformed("the token's algorithm does not match the configured key".into()),
        other => AuthError::Malformed(format!("{other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_token::{Audience, sign_hs256, unix_now};

    fn claims(exp_in: i64) -> Claims {
        Claims {
            sub: "u1".into(),
            exp: (unix_now() as i64 + exp_in) as u64,
            nbf: None,
            iat: None,
            jti: None,
            iss: None,
            aud: None,
            workspace_id: Some("acme".into()),
            workspaces: None,
        }
    }

    #[tokio::test]
    async fn verifies_and_maps_each_failure() {
        let mut config = GatewayConfig::new("s3cret");
        let v = Verifier::new(&config).unwrap();
        let good = sign_hs256("s3cret", &claims(60)).unwrap();
        assert_eq!(v.verify(&good).await.unwrap().sub, "u1");
        assert_eq!(v.verify(&sign_hs256("other", &claims(60)).unwrap()).await, Err(AuthError::BadSignature));
        assert_eq!(v.verify(&sign_hs256("s3cret", &claims(-60)).unwrap()).await, Err(AuthError::Expired));
        let mut early = claims(600);
        early.nbf = Some(unix_now() + 300);
        assert_eq!(v.verify(&sign_hs256("s3cret", &early).unwrap()).await, Err(AuthError::NotYetValid));
        assert!(matches!(v.verify("a.b.c").await, Err(AuthError::Malformed(_))));
        assert_eq!(v.verify("").await, Err(AuthError::Missing));

        config.jwt_issuer = Some("idp".into());
        config.jwt_audience = Some("tidings".into());
        let v = Verifier::new(&config).unwrap();
        let mut c = claims(60);
        c.iss = Some("idp".into());
        c.aud = Some(Audience::Many(vec!["x".into(), "tidings".into()]));
        assert!(v.verify(&sign_hs256("s3cret", &c).unwrap()).await.is_ok());
        c.iss = Some("evil".into());
        assert_eq!(v.verify(&sign_hs256("s3cret", &c).unwrap()).await, Err(AuthError::WrongIssuer));
        c.iss = Some("idp".into());
        c.aud = Some(Audience::One("other".into()));
        assert_eq!(v.verify(&sign_hs256("s3cret", &c).unwrap()).await, Err(AuthError::WrongAudience));
        // Absent is as wrong as different, once configured.
        c.aud = None;
        assert_eq!(v.verify(&sign_hs256("s3cret", &c).unwrap()).await, Err(AuthError::WrongAudience));
        c.aud = Some(Audience::One("tidings".into()));
        c.iss = None;
        assert_eq!(v.verify(&sign_hs256("s3cret", &c).unwrap()).await, Err(AuthError::WrongIssuer));
    }
}
