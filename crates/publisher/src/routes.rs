//! Webhook routing (`TIDINGS_ROUTES_FILE`, TOML): which workspace receives a
//! source's events, and which `entity_ref` they carry. Rules match in order.
//!
//! ```toml
//! [[route]]
//! repository = "acme/*"                    # GitHub repository (glob: `*` matches any run)
//! # or: gitlab_project = "platform/*"       # GitLab project path
//! # or: backstage_entity = "component:default/*"  # Backstage entity ref
//! # or: argocd_app = "guestbook*"           # Argo CD application name
//! workspace = "acme"
//! entity_ref = "component:default/{name}" # {owner}, {name}, {repository}; default as shown
//! ```

use serde::Deserialize;

/// What a webhook is about, for matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// `owner/name` of a GitHub repository.
    pub repository: Option<String>,
    /// `group/…/name` path of a GitLab project.
    pub gitlab_project: Option<String>,
    /// The ref of a Backstage entity (`component:default/checkout`).
    pub backstage_entity: Option<String>,
    /// The name of an Argo CD application.
    pub argocd_app: Option<String>,
}

/// Where a webhook's events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub workspace_id: String,
    pub entity_ref: Option<String>,
    /// True when the rule set `entity_ref` itself; else a catalog link may replace the default.
    pub explicit_entity_ref: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    repository: Option<String>,
    gitlab_project: Option<String>,
    backstage_entity: Option<String>,
    argocd_app: Option<String>,
    workspace: String,
    entity_ref: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    route: Vec<Rule>,
}

/// The parsed rules.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    rules: Vec<Rule>,
}

/// Why a routes file was refused; the message names the place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routes file: {0}")]
pub struct RoutesError(pub String);

const DEFAULT_ENTITY_REF: &str = "component:default/{name}";

impl Routes {
    pub fn parse(text: &str) -> Result<Self, RoutesError> {
        let file: File = toml::from_str(text).map_err(|e| RoutesError(e.to_string()))?;
        for (i, rule) in file.route.iter().enumerate() {
            let at = |m: String| RoutesError(format!("route {} (workspace {:?}): {m}", i + 1, rule.workspace));
            tidings_protocol::event::validate_workspace_id(&rule.workspace).map_err(|e| at(e.to_string()))?;
            if rule.repository.is_none() && rule.gitlab_project.is_none() && rule.backstage_entity.is_none() && rule.argocd_app.is_none() {
                return Err(at("a route needs a matcher (repository, gitlab_project, backstage_entity or argocd_app)".into()));
            }
            if let Some(template) = &rule.entity_ref {
                let probe = expand(template, "owner", "name");
                tidings_protocol::event::normalize_entity_ref(&probe).map_err(|e| at(format!("entity_ref: {e}")))?;
            }
        }
        Ok(Self { rules: file.route })
    }

    pub fn load(path: &std::path::Path) -> Result<Self, RoutesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RoutesError(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| RoutesError(format!("{}: {}", path.display(), e.0)))
    }

    /// The destination of the first matching rule; `override_workspace`
    /// (`?workspace_id=`) wins over the rule's workspace, and routes alone.
    pub fn route(&self, subject: &Subject, override_workspace: Option<&str>) -> Option<Destination> {
        let matches = |pattern: &Option<String>, value: &Option<String>| match (pattern, value) {
            (Some(pattern), Some(value)) => glob_match(&pattern.to_lowercase(), &value.to_lowercase()),
            _ => false,
        };
        let rule = self.rules.iter().find(|r| {
            matches(&r.repository, &subject.repository)
                || matches(&r.gitlab_project, &subject.gitlab_project)
                || matches(&r.backstage_entity, &subject.backstage_entity)
                || matches(&r.argocd_app, &subject.argocd_app)
        });
        // A Backstage entity is its own ref; an Argo CD app fills `{name}`.
        let argocd = subject.argocd_app.as_ref().map(|app| format!("argocd/{app}"));
        let templated = subject.repository.as_deref().or(subject.gitlab_project.as_deref()).or(argocd.as_deref()).and_then(|repo| {
            // GitLab paths may nest groups: the owner is everything before the last segment.
            let (owner, name) = repo.rsplit_once('/')?;
            let template = rule.and_then(|r| r.entity_ref.as_deref()).unwrap_or(DEFAULT_ENTITY_REF);
            tidings_protocol::event::normalize_entity_ref(&expand(template, owner, name)).ok()
        });
        let entity_ref = subject.backstage_entity.clone().or(templated);
        let workspace_id = override_workspace.map(String::from).or_else(|| rule.map(|r| r.workspace.clone()))?;
        let explicit_entity_ref = rule.is_some_and(|r| r.entity_ref.is_some());
        Some(Destination { workspace_id, entity_ref, explicit_entity_ref })
    }
}

fn expand(template: &str, owner: &str, name: &str) -> String {
    template.replace("{repository}", &format!("{owner}/{name}")).replace("{owner}", owner).replace("{name}", name)
}

/// `*` matches any run of characters (including none); everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("acme/*", "acme/checkout"));
        assert!(glob_match("*/checkout", "acme/checkout"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(glob_match("acme/checkout", "acme/checkout"));
        assert!(!glob_match("acme/*", "other/checkout"));
        assert!(!glob_match("a*b*c", "ac"));
    }

    #[test]
    fn first_matching_rule_wins_and_the_override_decides_the_workspace() {
        let routes = Routes::parse(
            r#"
            [[route]]
            repository = "acme/payments-*"
            workspace = "payments"
            entity_ref = "component:payments/{name}"
            [[route]]
            repository = "Acme/*"
            workspace = "acme"
            "#,
        )
        .unwrap();
        let subject = |r: &str| Subject { repository: Some(r.into()), ..Subject::default() };
        assert_eq!(
            routes.route(&subject("acme/payments-api"), None),
            Some(Destination {
                workspace_id: "payments".into(),
                entity_ref: Some("component:payments/payments-api".into()),
                explicit_entity_ref: true
            })
        );
        assert_eq!(
            routes.route(&subject("acme/Checkout"), None),
            Some(Destination {
                workspace_id: "acme".into(),
                entity_ref: Some("component:default/checkout".into()),
                explicit_entity_ref: false
            })
        );
        assert_eq!(routes.route(&subject("other/x"), None), None);
        assert_eq!(routes.route(&subject("other/x"), Some("manual")).unwrap().workspace_id, "manual");
    }

    #[test]
    fn bad_files_are_refused_with_the_place() {
        let cases = [
            ("[[route]]\nworkspace = \"bad ws\"\nrepository = \"a/*\"", "route 1"),
            ("[[route]]\nworkspace = \"w\"", "needs a matcher"),
            ("[[route]]\nworkspace = \"w\"\nrepository = \"a/*\"\nentity_ref = \"nope\"", "entity_ref"),
            ("[[route]]\nworkspace = \"w\"\nrepo = \"a/*\"", "unknown field"),
            ("[[route]\nworkspace = 1", "line"),
        ];
        for (text, want) in cases {
            let err = Routes::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
