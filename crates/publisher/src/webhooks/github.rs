//! GitHub webhooks: `X-Hub-Signature-256` over the raw body, then
//! `workflow_run`, `workflow_job`, `check_run` → `pipeline_update`;
//! `deployment`, `deployment_status` → `deployment_update`; `push` → `notification`;
//! `ping` → acknowledged.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Draft, Parsed, WebhookError, hex_decode, json_field as field, json_required as required};
use crate::routes::Subject;

/// Checks `sha256=<hex>` against HMAC-SHA256(secret, body), in constant time.
pub fn verify(secret: &str, signature_header: Option<&str>, body: &[u8]) -> Result<(), WebhookError> {
    let header = signature_header.ok_or_else(|| WebhookError::Unauthorized("missing X-Hub-Signature-256".into()))?;
    let hex =
        header.strip_prefix("sha256=").ok_or_else(|| WebhookError::Unauthorized("X-Hub-Signature-256 must start with sha256=".into()))?;
    let expected = hex_decode(hex).ok_or_else(|| WebhookError::Unauthorized("X-Hub-Signature-256 is not hex".into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| WebhookError::Unauthorized("unusable secret".into()))?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| WebhookError::Unauthorized("signature does not match".into()))
}

/// GitHub run/job/check status and conclusion → the spec's pipeline status.
pub fn pipeline_status(status: Option<&str>, conclusion: Option<&str>) -> &'static str {
    match status {
        Some("completed") => match conclusion {
            Some("success") | Some("neutral") => "success",
            Some("cancelled") | Some("stale") => "cancelled",
            Some("skipped") => "skipped",
            Some("action_required") => "queued",
            _ => "failed", // failure, timed_out, startup_failure, or missing
        },
        Some("in_progress") => "in_progress",
        _ => "queued", // queued, requested, waiting, pending
    }
}

/// GitHub deployment status state → the spec's deployment status.
pub fn deployment_status(state: &str) -> &'static str {
    match state {
        "in_progress" => "in_progress",
        "success" => "success",
        "failure" | "error" => "failed",
        "inactive" => "cancelled",
        _ => "queued", // pending, queued, waiting
    }
}

fn pipeline(
    payload: &Value,
    object: &str,
    name: String,
    git_ref: Option<String>,
    started: Option<String>,
    finished: Option<String>,
) -> Result<Draft, WebhookError> {
    let o = &payload[object];
    let status = pipeline_status(o["status"].as_str(), o["conclusion"].as_str());
    let mut p = json!({
        "id": required(payload, &[object, "id"])?,
        "name": name,
        "provider": "github",
        "status": status,
        "ref": git_ref.unwrap_or_default(),
        "commit": required(payload, &[object, "head_sha"])?,
        "url": required(payload, &[object, "html_url"])?,
    });
    if let Some(s) = started {
        p["started_at"] = json!(s);
    }
    if let Some(f) = finished.filter(|_| o["status"] == "completed") {
        p["finished_at"] = json!(f);
    }
    Ok(Draft { event_type: "pipeline_update", data: json!({ "pipeline": p }) })
}

/// Maps one delivery. `event` is the `X-GitHub-Event` header.
pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, WebhookError> {
    if event == "ping" {
        return Ok(Parsed::Ping);
    }
    let payload: Value = serde_json::from_slice(body).map_err(|e| WebhookError::BadRequest(format!("body is not JSON: {e}")))?;
    if !payload.is_object() {
        return Err(WebhookError::BadRequest("body is not a JSON object".into()));
    }
    let subject = Subject { repository: field(&payload, &["repository", "full_name"]), ..Subject::default() };
    let draft = match event {
        "workflow_run" => {
            let r = &payload["workflow_run"];
            // No completed_at on runs: updated_at is the finish time once completed.
            // Runs may carry an empty name; the workflow's name, then the title, stand in.
            let name = [field(r, &["name"]), field(&payload, &["workflow", "name"]), field(r, &["display_title"])]
                .into_iter()
                .flatten()
                .find(|n| !n.is_empty())
                .unwrap_or_else(|| "workflow run".into());
            pipeline(&payload, "workflow_run", name, field(r, &["head_branch"]), field(r, &["run_started_at"]), field(r, &["updated_at"]))?
        }
        "workflow_job" => {
            let j = &payload["workflow_job"];
            let name = match field(j, &["workflow_name"]) {
                Some(workflow) => format!("{workflow} / {}", required(&payload, &["workflow_job", "name"])?),
                None => required(&payload, &["workflow_job", "name"])?,
            };
            pipeline(&payload, "workflow_job", name, field(j, &["head_branch"]), field(j, &["started_at"]), field(j, &["completed_at"]))?
        }
        "check_run" => {
            let c = &payload["check_run"];
            pipeline(
                &payload,
                "check_run",
                required(&payload, &["check_run", "name"])?,
                field(c, &["check_suite", "head_branch"]),
                field(c, &["started_at"]),
                field(c, &["completed_at"]),
            )?
        }
        "deployment" => {
            let d = &payload["deployment"];
            let mut dep = json!({
                "id": required(&payload, &["deployment", "id"])?,
                "version": required(&payload, &["deployment", "ref"])?,
                "environment": required(&payload, &["deployment", "environment"])?,
                "status": "queued",
                "start_time": required(&payload, &["deployment", "created_at"])?,
                "commit": required(&payload, &["deployment", "sha"])?,
            });
            if let Some(url) = field(&payload, &["workflow_run", "html_url"]).or_else(|| field(d, &["url"])) {
                dep["url"] = json!(url);
            }
            Draft { event_type: "deployment_update", data: json!({ "deployment": dep }) }
        }
        "deployment_status" => {
            let s = &payload["deployment_status"];
            let state = required(&payload, &["deployment_status", "state"])?;
            let status = deployment_status(&state);
            let mut dep = json!({
                "id": required(&payload, &["deployment", "id"])?,
                "version": required(&payload, &["deployment", "ref"])?,
                "environment": field(s, &["environment"]).or_else(|| field(&payload, &["deployment", "environment"])).unwrap_or_default(),
                "status": status,
                "start_time": required(&payload, &["deployment", "created_at"])?,
                "commit": required(&payload, &["deployment", "sha"])?,
            });
            if matches!(status, "success" | "failed" | "cancelled") {
                dep["end_time"] = json!(required(&payload, &["deployment_status", "created_at"])?);
            }
            // The status's own links first; else the repository's deployments page.
            let url = ["log_url", "target_url", "environment_url"]
                .iter()
                .find_map(|k| field(s, &[k]).filter(|u| !u.is_empty()))
                .or_else(|| field(&payload, &["repository", "html_url"]).map(|r| format!("{r}/deployments")));
            if let Some(url) = url {
                dep["url"] = json!(url);
            }
            Draft { event_type: "deployment_update", data: json!({ "deployment": dep }) }
        }
        "push" => {
            let repo = subject.repository.clone().unwrap_or_default();
            let git_ref = required(&payload, &["ref"])?;
            let short = git_ref.trim_start_matches("refs/heads/").trim_start_matches("refs/tags/");
            let who =
                field(&payload, &["pusher", "name"]).or_else(|| field(&payload, &["sender", "login"])).unwrap_or_else(|| "someone".into());
            let message = if payload["deleted"] == true {
                format!("{who} deleted {short}")
            } else {
                let n = payload["commits"].as_array().map_or(0, Vec::len);
                format!("{who} pushed {n} commit{} to {short}", if n == 1 { "" } else { "s" })
            };
            Draft { event_type: "notification", data: json!({ "title": format!("Push to {repo}"), "message": message, "level": "info" }) }
        }
        other => return Ok(Parsed::Ignored { kind: other.to_string() }),
    };
    Ok(Parsed::Events { subject, events: vec![draft] })
}
