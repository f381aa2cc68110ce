//! Client token verification (HS256 secret, PEM public key or JWKS, the
//! algorithm always bound to the key) and what a token grants.

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

/// Where verification keys come from (exactly one is configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// HS256 shared secret.
    Secret(String),
    /// A PEM public key (RSA, EC P-256/P-384 or Ed25519).
    PublicKeyPem(Vec<u8>),
    /// A JWKS endpoint; keys cached, refreshed on an unknown `kid`.
    JwksUrl(String),
}

/// A verification key and the algorithms it may verify: the algorithm is
/// decided by the key, never by the token's header.
#[derive(Clone)]
pub struct BoundKey {
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

/// Why the configured key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JWT key: {0}")]
pub struct KeyError(pub String);

/// The algorithms a PEM public key verifies, by its type.
pub fn bind_pem(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), KeyError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The curve fixes the algorithm: P-256 → ES256, P-384 → ES384.
        let algorithms = match ec_curve(pem) {
            Some(Curve::P256) => vec![Algorithm::ES256],
            Some(Curve::P384) => vec![Algorithm::ES384],
            None => return Err(KeyError("EC keys must be on P-256 or P-384".into())),
        };
        return Ok((key, algorithms));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, vec![Algorithm::EdDSA]));
    }
    Err(KeyError("not a PEM public key of type RSA, EC (P-256/P-384) or Ed25519".into()))
}

enum Curve {
    P256,
    P384,
}

/// The named curve of an EC public key PEM, from the OID in its DER.
fn ec_curve(pem: &[u8]) -> Option<Curve> {
    use base64::Engine as _;
    let text = std::str::from_utf8(pem).ok()?;
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()?;
    const P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
    if der.windows(P256.len()).any(|w| w == P256) {
        Some(Curve::P256)
    } else if der.windows(P384.len()).any(|w| w == P384) {
        Some(Curve::P384)
    } else {
        None
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
