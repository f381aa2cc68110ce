//! Client tokens (SPEC §3.2): the claims Tidings reads, what they grant, and
//! HS256 signing for `tidings token`, `tidings dev` and the tests. This is the
//! contract both sides share; verifying a token (keys, algorithms, issuer,
//! audience) is the gateway's (`tidings_gateway::auth`).

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

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
    /// A token of user `sub` for one workspace, issued now and valid for `ttl`.
    pub fn for_workspace(workspace_id: &str, sub: &str, ttl: Duration) -> Self {
        let now = unix_now();
        Self {
            sub: sub.to_string(),
            exp: now.saturating_add(ttl.as_secs()),
            nbf: None,
            iat: Some(now),
            jti: None,
            iss: None,
            aud: None,
            workspace_id: Some(workspace_id.to_string()),
            workspaces: None,
        }
    }

    /// May this token read `workspace_id`?
    pub fn allows(&self, workspace_id: &str) -> bool {
        self.workspace_id.as_deref() == Some(workspace_id)
            || self.workspaces.as_ref().is_some_and(|list| list.iter().any(|w| w == "*" || w == workspace_id))
    }

    /// Signed with the shared secret a gateway holds as `TIDINGS_JWT_SECRET`.
    pub fn sign_hs256(&self, secret: &str) -> Result<String, jsonwebtoken::errors::Error> {
        sign_hs256(secret, self)
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

    #[test]
    fn workspace_grants() {
        let mut c = Claims::for_workspace("acme", "u1", Duration::from_secs(60));
        assert!(c.allows("acme") && !c.allows("other"));
        c.workspaces = Some(vec!["b".into()]);
        assert!(c.allows("b") && !c.allows("c"));
        c.workspaces = Some(vec!["*".into()]);
        assert!(c.allows("anything"));
    }

    #[test]
    fn a_workspace_token_is_issued_now_and_names_only_what_is_set() {
        let now = unix_now();
        let c = Claims::for_workspace("acme", "u1", Duration::from_secs(60));
        assert!(c.iat.is_some_and(|iat| iat >= now) && c.exp >= now + 60);
        let json = serde_json::to_value(&c).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["exp", "iat", "sub", "workspace_id"]);
        assert_eq!(c.sign_hs256("s").unwrap().split('.').count(), 3);
    }
}
