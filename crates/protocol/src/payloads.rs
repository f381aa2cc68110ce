//! Typed `data` payloads of the well-known event types (SPEC §2). The gateway
//! forwards any type; the publisher validates the `data` of these ones.
//!
//! Payloads keep unknown fields (`extra`) where the spec shows `…`, so producers
//! can add detail without a protocol change.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
}

/// `entity_update`: a catalog entity changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityUpdate {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub change_type: ChangeType,
    #[serde(default)]
    pub entity: Value,
}

/// `metrics_update`: `cpu` and `memory` are percentages; `storage` and `network`
/// are either a single number or per-mount / per-interface detail (host metrics
/// send [`HostStorage`] and [`HostNetwork`] lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub cpu: f64,
    pub memory: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsUpdate {
    pub metrics: Metrics,
}

/// One mounted file system, as host metrics report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStorage {
    pub mount: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub used_percent: f64,
}

/// One network interface, as host metrics report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostNetwork {
    pub interface: String,
    pub rx_bytes_per_sec: f64,
    pub tx_bytes_per_sec: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Queued,
    InProgress,
    Success,
    Failed,
    Cancelled,
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub version: String,
    pub environment: String,
    pub status: DeploymentStatus,
    pub start_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// `deployment_update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentUpdate {
    pub deployment: Deployment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub level: Level,
    pub message: String,
    pub timestamp: String,
}

/// `health_update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthUpdate {
    pub health: Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineStatus {
    Queued,
    InProgress,
    Success,
    Failed,
    Cancelled,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: String,
    pub name: String,
    /// `github`, `gitlab`, or any other CI system's name.
    pub provider: String,
    pub status: PipelineStatus,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// `pipeline_update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineUpdate {
    pub pipeline: Pipeline,
}

/// `event_created`, `event_update`, `event_deleted`: `{id, status?, …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordChange {
    pub id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `execution_started`, `execution_completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub agent_id: String,
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_seconds: Option<f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Medium,
    High,
    Critical,
}

/// `alert`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    #[serde(rename = "type")]
    pub alert_type: String,
    pub message: String,
    pub priority: Priority,
}

/// `log_entry`, and each entry of a `log_batch`. `level` is free text
/// (`debug`, `info`, `warn`, …) as log sources differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub task_id: String,
    pub level: String,
    pub message: String,
    pub timestamp: String,
}

/// `log_batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogBatch {
    pub task_id: String,
    pub entries: Vec<LogEntry>,
}

/// `notification`. `level` is free text (`info`, `success`, `warning`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub title: String,
    pub message: String,
    pub level: String,
}

/// `task_update`: `{task_id, status, …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskUpdate {
    pub task_id: String,
    pub status: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The well-known event types.
pub const WELL_KNOWN_TYPES: &[&str] = &[
    "entity_update",
    "metrics_update",
    "deployment_update",
    "health_update",
    "pipeline_update",
    "event_created",
    "event_update",
    "event_deleted",
    "execution_started",
    "execution_completed",
    "alert",
    "log_entry",
    "log_batch",
    "notification",
    "task_update",
];

/// Types whose older pending events a slow client may skip in favour of newer
/// ones for the same `entity_ref` (SPEC §3.3 conflation).
pub fn is_conflatable(event_type: &str) -> bool {
    matches!(event_type, "metrics_update" | "health_update")
}

fn check<'a, T: Deserialize<'a>>(data: &'a Value) -> Result<(), String> {
    T::deserialize(data).map(|_| ()).map_err(|e| e.to_string())
}

/// Checks `data` against the typed payload of a well-known type; any other type passes.
pub fn validate_data(event_type: &str, data: &Value) -> Result<(), String> {
    match event_type {
        "entity_update" => check::<EntityUpdate>(data),
        "metrics_update" => check::<MetricsUpdate>(data),
        "deployment_update" => check::<DeploymentUpdate>(data),
        "health_update" => check::<HealthUpdate>(data),
        "pipeline_update" => check::<PipelineUpdate>(data),
        "event_created" | "event_update" | "event_deleted" => check::<RecordChange>(data),
        "execution_started" | "execution_completed" => check::<Execution>(data),
        "alert" => check::<Alert>(data),
        "log_entry" => check::<LogEntry>(data),
        "log_batch" => check::<LogBatch>(data),
        "notification" => check::<Notification>(data),
        "task_update" => check::<TaskUpdate>(data),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One valid example per well-known type: it validates, and the typed form
    /// serialises back to the same JSON.
    #[test]
    fn every_well_known_type_round_trips() {
        let examples = [
            (
                "entity_update",
                json!({"kind":"Component","namespace":"default","name":"checkout","change_type":"updated","entity":{"metadata":{"name":"checkout"}}}),
            ),
            (
                "metrics_update",
                json!({"metrics":{"cpu":12.5,"memory":40.0,"processes":210,"storage":[{"mount":"/","total_bytes":100,"used_bytes":50,"used_percent":50.0}],"network":[{"interface":"eth0","rx_bytes_per_sec":1.0,"tx_bytes_per_sec":2.0}]}}),
            ),
            (
                "deployment_update",
                json!({"deployment":{"id":"deploy-123","version":"v1.2.3","environment":"production","status":"rolled_back","start_time":"2026-11-24T11:59:00Z","end_time":"2026-11-24T12:09:00Z","url":"https://ci/1","commit":"abc"}}),
            ),
            ("health_update", json!({"health":{"level":"warning","message":"slow","timestamp":"2026-11-24T12:00:00Z"}})),
            (
                "pipeline_update",
                json!({"pipeline":{"id":"1","name":"ci","provider":"gitlab","status":"skipped","ref":"main","commit":"abc","url":"https://ci/p/1","started_at":"2026-11-24T12:00:00Z"}}),
            ),
            ("event_created", json!({"id":"e1","status":"open","title":"incident"})),
            ("event_update", json!({"id":7})),
            ("event_deleted", json!({"id":"e1"})),
            ("execution_started", json!({"agent_id":"a","run_id":"r","user_id":"u","node":"n1"})),
            ("execution_completed", json!({"agent_id":"a","run_id":"r","success":true,"runtime_seconds":1.5})),
            ("alert", json!({"type":"disk","message":"full","priority":"critical"})),
            ("log_entry", json!({"task_id":"t","level":"info","message":"hi","timestamp":"2026-11-24T12:00:00Z"})),
            (
                "log_batch",
                json!({"task_id":"t","entries":[{"task_id":"t","level":"warn","message":"a","timestamp":"2026-11-24T12:00:00Z"}]}),
            ),
            ("notification", json!({"title":"Deployed","message":"v1","level":"info"})),
            ("task_update", json!({"task_id":"t","status":"done","progress":100})),
        ];
        assert_eq!(examples.len(), WELL_KNOWN_TYPES.len());
        for (t, data) in examples {
            validate_data(t, &data).unwrap_or_else(|e| panic!("{t}: {e}"));
            let back = match t {
                "entity_update" => serde_json::to_value(EntityUpdate::deserialize(&data).unwrap()),
                "metrics_update" => serde_json::to_value(MetricsUpdate::deserialize(&data).unwrap()),
                "deployment_update" => serde_json::to_value(DeploymentUpdate::deserialize(&data).unwrap()),
                "health_update" => serde_json::to_value(HealthUpdate::deserialize(&data).unwrap()),
                "pipeline_update" => serde_json::to_value(PipelineUpdate::deserialize(&data).unwrap()),
                "event_created" | "event_update" | "event_deleted" => serde_json::to_value(RecordChange::deserialize(&data).unwrap()),
                "execution_started" | "execution_completed" => serde_json::to_value(Execution::deserialize(&data).unwrap()),
                "alert" => serde_json::to_value(Alert::deserialize(&data).unwrap()),
                "log_entry" => serde_json::to_value(LogEntry::deserialize(&data).unwrap()),
                "log_batch" => serde_json::to_value(LogBatch::deserialize(&data).unwrap()),
                "notification" => serde_json::to_value(Notification::deserialize(&data).unwrap()),
                "task_update" => serde_json::to_value(TaskUpdate::deserialize(&data).unwrap()),
                other => unreachable!("{other}"),
            }
            .unwrap();
            assert_eq!(back, data, "{t} round trip");
        }
    }

    #[test]
    fn wrong_payloads_are_refused_with_a_reason() {
        let cases = [
            ("metrics_update", json!({"metrics":{"cpu":1}})),
            ("deployment_update", json!({"deployment":{"id":"1","version":"v","environment":"p","status":"exploded","start_time":"t"}})),
            ("health_update", json!({"health":{"level":"fatal","message":"m","timestamp":"t"}})),
            ("pipeline_update", json!({"pipeline":{}})),
            ("entity_update", json!({"kind":"c","namespace":"d","name":"n","change_type":"moved"})),
            ("alert", json!("string")),
            ("event_created", json!({"status":"no id"})),
        ];
        for (t, data) in cases {
            let err = validate_data(t, &data).expect_err(t);
            assert!(!err.is_empty());
        }
        validate_data("my.custom:type", &json!([1, 2])).unwrap();
    }

    #[test]
    fn conflatable_types() {
        assert!(is_conflatable("metrics_update") && is_conflatable("health_update"));
        assert!(!is_conflatable("deployment_update"));
    }
}
