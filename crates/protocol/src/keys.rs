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
        assert_eq!(dedup("github", "d-1"), "tidings:dedup:github:d-1");
    }
}
