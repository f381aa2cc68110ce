//! Verification keys: where they come from ([`KeySource`]), a key bound to
//! the algorithms it may verify ([`BoundKey`]: decided by the key, never by a
//! token's header), and PEM public keys by type. Used by the configuration,
//! the verifier ([`crate::auth`]) and the JWKS cache ([`crate::jwks`]).

use jsonwebtoken::{Algorithm, DecodingKey};

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
