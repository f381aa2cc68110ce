//! GitLab webhooks: `X-Gitlab-Token` (plain shared secret, compared in
//! constant time), then Pipeline Hook and Job Hook → `pipeline_update`,
//! Deployment Hook → `deployment_update`. GitLab writes timestamps three ways;
//! all become RFC 3339 UTC.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use super::{Draft, Parsed, WebhookError, json_field as field, json_required as required};
use crate::routes::Subject;
use tidings_process::http::constant_time_eq;

pub fn verify(secret: &str, token_header: Option<&str>) -> Result<(), WebhookError> {
    match token_header {
        Some(token) if constant_time_eq(token.as_bytes(), secret.as_bytes()) => Ok(()),
        Some(_) => Err(WebhookError::Unauthorized("X-Gitlab-Token does not match".into())),
        None => Err(WebhookError::Unauthorized("missing X-Gitlab-Token".into())),
    }
}

/// `2016-08-12 15:23:28 UTC`, `2021-04-28 21:50:00 +0200` or RFC 3339 → RFC 3339 UTC.
pub fn timestamp(s: &str) -> Option<String> {
    let utc = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let offset = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]");
    let parsed = tidings_protocol::timestamp::parse_rfc3339(s)
        .or_else(|| time::PrimitiveDateTime::parse(s, utc).ok().map(|t| t.assume_utc()))
        .or_else(|| OffsetDateTime::parse(s, offset).ok())?;
    Some(tidings_protocol::timestamp::format_rfc3339(parsed))
}

/// GitLab pipeline/job status → the spec's pipeline status.
pub fn pipeline_status(status: &str) -> &'static str {
    match status {
        "running" => "in_progress",
        "success" => "success",
        "failed" => "failed",
        "canceled" | "canceling" => "cancelled",
        "skipped" => "skipped",
        _ => "queued", // created, waiting_for_resource, preparing, pending, manual, scheduled
    }
}

/// GitLab deployment status → the spec's deployment status.
pub fn deployment_status(status: &str) -> &'static str {
    match status {
        "running" => "in_progress",
        "success" => "success",
        "failed" => "failed",
        "canceled" => "cancelled",
        _ => "queued", // created, blocked
    }
}

/// The project's web URL and `group/name` path; old job payloads only have `repository.homepage`.
fn project(payload: &Value) -> (Option<String>, Option<String>) {
    let web_url = field(payload, &["project", "web_url"]).or_else(|| field(payload, &["repository", "homepage"]));
    let path = field(payload, &["project", "path_with_namespace"]).or_else(|| {
        let url = web_url.as_deref()?;
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        after_scheme.split_once('/').map(|(_, path)| path.trim_end_matches('/').to_string())
    });
    (web_url, path)
}

/// Maps one delivery. `event` is the `X-Gitlab-Event` header.
pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, WebhookError> {
    let payload: Value = serde_json::from_slice(body).map_err(|e| WebhookError::BadRequest(format!("body is not JSON: {e}")))?;
    if !payload.is_object() {
        return Err(WebhookError::BadRequest("body is not a JSON object".into()));
    }
    let (web_url, path) = project(&payload);
    let subject = Subject { gitlab_project: path, ..Subject::default() };
    let draft = match event {
        "Pipeline Hook" => {
            let o = &payload["object_attributes"];
            let id = required(&payload, &["object_attributes", "id"])?;
            let url = field(o, &["url"]).or_else(|| web_url.as_ref().map(|w| format!("{w}/-/pipelines/{id}"))).unwrap_or_default();
            let mut p = json!({
                "id": id.clone(),
                "name": field(o, &["name"]).unwrap_or_else(|| format!("pipeline #{id}")),
                "provider": "gitlab",
                "status": pipeline_status(&required(&payload, &["object_attributes", "status"])?),
                "ref": field(o, &["ref"]).unwrap_or_default(),
                "commit": required(&payload, &["object_attributes", "sha"])?,
                "url": url,
            });
            if let Some(t) = field(o, &["created_at"]).and_then(|t| timestamp(&t)) {
                p["started_at"] = json!(t);
            }
            if let Some(t) = field(o, &["finished_at"]).and_then(|t| timestamp(&t)) {
                p["finished_at"] = json!(t);
            }
            Draft { event_type: "pipeline_update", data: json!({ "pipeline": p }) }
        }
        "Job Hook" | "Build Hook" => {
            let id = required(&payload, &["build_id"])?;
            let url = web_url.as_ref().map(|w| format!("{w}/-/jobs/{id}")).unwrap_or_default();
            let mut p = json!({
                "id": id,
                "name": required(&payload, &["build_name"])?,
                "provider": "gitlab",
                "status": pipeline_status(&required(&payload, &["build_status"])?),
                "ref": field(&payload, &["ref"]).unwrap_or_default(),
                "commit": required(&payload, &["sha"])?,
                "url": url,
            });
            let when = |k: &str| field(&payload, &[&format!("{k}_iso")]).or_else(|| field(&payload, &[k])).and_then(|t| timestamp(&t));
            if let Some(t) = when("build_started_at") {
                p["started_at"] = json!(t);
            }
            if let Some(t) = when("build_finished_at") {
                p["finished_at"] = json!(t);
            }
            Draft { event_type: "pipeline_update", data: json!({ "pipeline": p }) }
        }
        "Deployment Hook" => {
            let status = deployment_status(&required(&payload, &["status"])?);
            let changed = field(&payload, &["status_changed_at"])
                .and_then(|t| timestamp(&t))
                .ok_or_else(|| WebhookError::BadRequest("missing or unreadable status_changed_at".into()))?;
            // No full SHA field: the commit URL ends with it.
            let commit = field(&payload, &["commit_url"])
                .and_then(|u| u.rsplit('/').next().map(String::from))
                .filter(|c| c.len() >= 7)
                .or_else(|| field(&payload, &["short_sha"]))
                .unwrap_or_default();
            let mut d = json!({
                "id": required(&payload, &["deployment_id"])?,
                "version": field(&payload, &["ref"]).or_else(|| field(&payload, &["short_sha"])).unwrap_or_default(),
                "environment": required(&payload, &["environment"])?,
                "status": status,
                "start_time": changed.clone(),
                "commit": commit,
            });
            if matches!(status, "success" | "failed" | "cancelled") {
                d["end_time"] = json!(changed);
            }
            if let Some(url) = field(&payload, &["deployable_url"]).or_else(|| field(&payload, &["environment_external_url"])) {
                d["url"] = json!(url);
            }
            Draft { event_type: "deployment_update", data: json!({ "deployment": d }) }
        }
        other => return Ok(Parsed::Ignored { kind: other.to_string() }),
    };
    Ok(Parsed::Events { subject, events: vec![draft] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_timestamp_forms() {
        assert_eq!(timestamp("2016-08-12 15:23:28 UTC").as_deref(), Some("2016-08-12T15:23:28.000Z"));
        assert_eq!(timestamp("2021-04-28 21:50:00 +0200").as_deref(), Some("2021-04-28T19:50:00.000Z"));
        assert_eq!(timestamp("2021-02-23T02:41:37.886Z").as_deref(), Some("2021-02-23T02:41:37.886Z"));
        assert_eq!(timestamp("yesterday"), None);
    }
}
