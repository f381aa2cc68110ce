//! JWKS key cache: keys fetched from the identity provider's endpoint, looked
//! up by `kid`, refreshed when an unknown `kid` shows up — at most once per
//! refresh interval, so a flood of tokens with made-up `kid`s cannot hammer the
//! provider. Rotated keys are picked up without a restart.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::keys::{BoundKey, KeyError};

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    /// A std RwLock: lookups are map reads; a refresh swaps the whole map.
    keys: RwLock<HashMap<String, BoundKey>>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

impl JwksCache {
    pub fn new(url: String, min_interval: Duration) -> Result<Self, KeyError> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(KeyError(format!("TIDINGS_JWKS_URL must be an http(s) URL, got {url:?}")));
        }
        let client = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build().map_err(|e| KeyError(e.to_string()))?;
        Ok(Self { url, client, keys: RwLock::new(HashMap::new()), last_refresh: tokio::sync::Mutex::new(None), min_interval })
    }

    fn get(&self, kid: &str) -> Option<BoundKey> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).get(kid).cloned()
    }

    /// The key with this `kid`, refreshing the set once if it is unknown and the
    /// last refresh is older than the minimum interval.
    pub async fn key(&self, kid: &str) -> Option<BoundKey> {
        if let Some(key) = self.get(kid) {
            return Some(key);
        }
        {
            let mut last = self.last_refresh.lock().await;
            // Another task may have refreshed while this one waited.
            if let Some(key) = self.get(kid) {
                return Some(key);
            }
            if last.is_some_and(|t| t.elapsed() < self.min_interval) {
                return None;
            }
            *last = Some(Instant::now());
            self.fetch().await;
        }
        self.get(kid)
    }

    /// Fetches the key set now (at start-up).
    pub async fn refresh(&self) {
        *self.last_refresh.lock().await = Some(Instant::now());
        self.fetch().await;
    }

    async fn fetch(&self) {
        let set = match self.client.get(&self.url).send().await.and_then(|r| r.error_for_status()) {
            Ok(response) => match response.json::<JwkSet>().await {
                Ok(set) => set,
                Err(e) => return tracing::warn!(url = %self.url, error = %e, "JWKS is not a key set"),
            },
            Err(e) => return tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed"),
        };
        let keys: HashMap<String, BoundKey> =
            set.keys.iter().filter_map(|jwk| Some((jwk.common.key_id.clone()?, bind_jwk(jwk)?))).collect();
        tracing::info!(url = %self.url, keys = keys.len(), "JWKS loaded");
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }
}

/// A JWK as a key bound to its algorithms. Symmetric (`oct`) keys are refused:
/// a JWKS is public, so an HMAC key there would let anyone sign tokens.
pub(crate) fn bind_jwk(jwk: &Jwk) -> Option<BoundKey> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
        _ => return None,
    };
    // A key that names its algorithm is held to exactly that one.
    let algorithms = match jwk.common.key_algorithm.map(Algorithm::try_from) {
        Some(Ok(alg)) if by_type.contains(&alg) => vec![alg],
        Some(_) => return None,
        None => by_type,
    };
    Some(BoundKey { key: DecodingKey::from_jwk(jwk).ok()?, algorithms })
}
