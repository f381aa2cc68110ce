//! `tidings publish`: one durable event from the shell, over the publish API.

use anyhow::Context;
use serde_json::Value;
use tidings_protocol::Event;

use crate::UsageError;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[arg(long)]
    pub workspace: String,
    /// Event type, e.g. `deployment_update`.
    #[arg(long = "type")]
    pub event_type: String,
    /// `kind:namespace/name`.
    #[arg(long)]
    pub entity_ref: Option<String>,
    /// The event's `data`, as JSON.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// Base URL of a publisher (or of `tidings dev`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token of the publish API.
    #[arg(long, env = "TIDINGS_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,
    // With a Redis URL, the event goes straight to Redis (the durable
    // script) instead of over HTTP.
    #[command(flatten)]
    pub redis: tidings_broker::options::RedisArgs,
    #[command(flatten)]
    pub history: tidings_broker::options::HistoryArgs,
}

/// The durable publish through Redis; fails fast when Redis does not answer.
async fn publish_to_redis(args: &PublishArgs, url: &str, event: Event) -> anyhow::Result<String> {
    use tidings_broker::{Broker, PublishOnly, RedisBroker};
    let broker = RedisBroker::connect(args.redis.config(url, args.history.events()), std::sync::Arc::new(PublishOnly))
        .map_err(|e| UsageError(format!("TIDINGS_REDIS_URL: {e}")))?;
    let stored = broker.publish(event).await;
    broker.close().await;
    let stored = stored.context("publishing to Redis")?;
    Ok(stored.id.map(|id| id.to_string()).unwrap_or_default())
}

/// The event the options describe, validated.
pub fn build_event(args: &PublishArgs) -> Result<Event, UsageError> {
    let data: Value = serde_json::from_str(&args.data).map_err(|e| UsageError(format!("--data is not JSON: {e}")))?;
    let mut event = Event::new(args.event_type.clone(), args.workspace.clone(), data);
    event.entity_ref = args.entity_ref.clone();
    event.timestamp = Some(tidings_protocol::timestamp::now_rfc3339());
    event.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(event)
}

pub fn main(args: PublishArgs) -> anyhow::Result<()> {
    let event = build_event(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Some(url) = args.redis.redis_url.as_deref() {
        let id = runtime.block_on(publish_to_redis(&args, url, event))?;
        println!("{id}");
        return Ok(());
    }
    let token = args.publish_token.clone().ok_or_else(|| UsageError("TIDINGS_PUBLISH_TOKEN (or --publish-token) is required".into()))?;
    let url = format!("{}/v1/workspaces/{}/events", args.url.trim_end_matches('/'), event.workspace_id);
    let (status, body) = runtime.block_on(async {
        let response =
            reqwest::Client::new().post(&url).bearer_auth(token).json(&event).send().await.with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::Ok((status, body))
    })?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {}", body["error"]["message"].as_str().unwrap_or("no message"));
    }
    let id = body["ids"][0].as_str().context("the answer carried no id")?;
    println!("{id}");
    Ok(())
}
