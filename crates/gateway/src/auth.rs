//! Client token verification (HS256 JWT) and what a token grants.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::{Deserialize, Serialize};
use tidings_protocol::codes::error;

use crate::config::GatewayConfig;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// `aud` is a string or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims Tidings reads (SPEC §3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// The one workspace the token reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Further workspaces it may read; `"*"` = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspaces: Option<Vec<String>>,
}

impl Claims {
    /// May this token read `workspace_id`?
    pub fn allows(&self, workspace_id: &str) -> bool {
        self.workspace_id.as_deref() == Some(workspace_id)
            || self.workspaces.as_ref().is_some_and(|list| list.iter().any(|w| w == "*" || w == workspace_id))
    }
}

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
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
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
        }
    }
}

/// Verifies tokens with the configured key; the algorithm comes from the key,
/// never from the token header.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(config: &GatewayConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.jwt_issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Self { key: DecodingKey::from_secret(config.jwt_secret.as_bytes()), validation }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        decode::<Claims>(token, &self.key, &self.validation).map(|d| d.claims).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidAlgorithm => AuthError::Malformed("algorithm not accepted".into()),
            other => AuthError::Malformed(format!("{other:?}")),
        })
    }
}

/// Signs HS256 tokens: `tidings token`, `tidings dev` and the tests.
pub fn sign_hs256(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn verifies_and_maps_each_failure() {
        let mut config = GatewayConfig::new("s3cret");
        let v = Verifier::new(&config);
        let good = sign_hs256("s3cret", &claims(60)).unwrap();
        assert_eq!(v.verify(&good).unwrap().sub, "u1");
        assert_eq!(v.verify(&sign_hs256("other", &claims(60)).unwrap()), Err(AuthError::BadSignature));
        assert_eq!(v.verify(&sign_hs256("s3cret", &claims(-60)).unwrap()), Err(AuthError::Expired));
        let mut early = claims(600);
        early.nbf = Some(unix_now() + 300);
        assert_eq!(v.verify(&sign_hs256("s3cret", &early).unwrap()), Err(AuthError::NotYetValid));
        assert!(matches!(v.verify("a.b.c"), Err(AuthError::Malformed(_))));
        assert_eq!(v.verify(""), Err(AuthError::Missing));

        config.jwt_issuer = Some("idp".into());
        config.jwt_audience = Some("tidings".into());
        let v = Verifier::new(&config);
        let mut c = claims(60);
        c.iss = Some("idp".into());
        c.aud = Some(Audience::Many(vec!["x".into(), "tidings".into()]));
        assert!(v.verify(&sign_hs256("s3cret", &c).unwrap()).is_ok());
        c.iss = Some("evil".into());
        assert_eq!(v.verify(&sign_hs256("s3cret", &c).unwrap()), Err(AuthError::WrongIssuer));
        c.iss = Some("idp".into());
        c.aud = Some(Audience::One("other".into()));
        assert_eq!(v.verify(&sign_hs256("s3cret", &c).unwrap()), Err(AuthError::WrongAudience));
    }

    #[test]
    fn workspace_grants() {
        let mut c = claims(60);
        assert!(c.allows("acme") && !c.allows("other"));
        c.workspaces = Some(vec!["b".into()]);
        assert!(c.allows("b") && !c.allows("c"));
        c.workspaces = Some(vec!["*".into()]);
        assert!(c.allows("anything"));
    }
}
