//! Redis key and channel names of SPEC §4, standalone and cluster (hash-tagged) forms.

/// Names of one workspace's Redis keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceKeys {
    /// Pub/sub channel carrying every event of the workspace.
    pub channel: String,
    /// Stream of recent durable events.
    pub events: String,
    /// Hash of the latest `metrics_update` / `health_update` per `entity_ref`.
    pub latest: String,
}

impl WorkspaceKeys {
    /// `cluster` puts the id in a hash tag so all three keys share one slot.
    pub fn new(workspace_id: &str, cluster: bool) -> Self {
        let base = if cluster { format!("workspace:{{{workspace_id}}}") } else { format!("workspace:{workspace_id}") };
        Self { events: format!("{base}:events"), latest: format!("{base}:latest"), channel: base }
    }
}

/// Key marking a revoked token until its `exp`.
pub fn revoked(jti: &str) -> String {
    format!("tidings:revoked:{jti}")
}

/// Checks a token id before it names a key: 1–256 visible ASCII characters.
pub fn validate_jti(jti: &str) -> Result<(), String> {
    if (1..=256).contains(&jti.len()) && jti.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("jti must be 1 to 256 visible ASCII characters".into())
    }
}

/// Channel on which revoked `jti`s are announced.
pub const REVOCATIONS_CHANNEL: &str = "tidings:revocations";

/// Hash of source object → catalog entity ref (e.g. GitHub repository →
/// Backstage component), learned from catalog events. A Tidings addition to SPEC §4.
pub fn entity_links(source: &str) -> String {
    format!("tidings:entity-links:{source}")
}

/// Key remembering a webhook delivery for 24 h.
pub fn dedup(source: &str, delivery: &str) -> String {
    format!("tidings:dedup:{source}:{delivery}")
}

/// The delivery key as the publish script uses it: on a Redis Cluster it
/// carries the workspace's hash tag (`tidings:dedup:{<id>}:<source>:<delivery>`),
/// so the claim and the events it publishes live in one slot and one script
/// can write both. A Tidings deviation from SPEC §4, cluster mode only.
pub fn dedup_in(workspace_id: &str, source: &str, delivery: &str, cluster: bool) -> String {
    if cluster { format!("tidings:dedup:{{{workspace_id}}}:{source}:{delivery}") } else { dedup(source, delivery) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        let k = WorkspaceKeys::new("acme", false);
        assert_eq!(
            (k.channel.as_str(), k.events.as_str(), k.latest.as_str()),
            ("workspace:acme", "workspace:acme:events", "workspace:acme:latest")
        );
        let k = WorkspaceKeys::new("acme", true);
        assert_eq!(
            (k.channel.as_str(), k.events.as_str(), k.latest.as_str()),
            ("workspace:{acme}", "workspace:{acme}:events", "workspace:{acme}:latest")
        );
        assert_eq!(revoked("j1"), "tidings:revoked:j1");
        assert!(validate_jti("4f1c-a9").is_ok());
        assert!(validate_jti("").is_err() && validate_jti("has space").is_err() && validate_jti(&"x".repeat(257)).is_err());
        assert_eq!(dedup("github", "d-1"), "tidings:dedup:github:d-1");
        assert_eq!(dedup_in("acme", "github", "d-1", false), "tidings:dedup:github:d-1");
        assert_eq!(dedup_in("acme", "github", "d-1", true), "tidings:dedup:{acme}:github:d-1");
    }
}
