//! The Redis Cluster pub/sub task: sharded pub/sub (`SSUBSCRIBE`) on one
//! cluster connection, a replay at every subscription confirmation, and a
//! re-opened connection when the slot owners change (a crashed master's
//! replica promoted), which the connection does not follow by itself.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tidings_protocol::keys::{REVOCATIONS_CHANNEL, WorkspaceKeys};
use tokio::time::timeout;

use super::commands::{COMMAND_TIMEOUT, unavailable};
use super::subscriptions::{BACKOFF_MAX, BACKOFF_MIN, MAX_READ_TOGETHER, Shared, Subscriber, jittered, resubscribe, workspace_of};
use crate::BrokerError;

/// Cluster mode: one cluster connection carries every SSUBSCRIBE; the library
/// follows slot moves and failovers and re-subscribes by itself. Each repeated
/// `ssubscribe` confirmation for a channel means it was re-established, so the
/// workspace's stream is replayed from the newest id delivered.
pub(super) async fn cluster_pubsub_loop(
    client: redis::cluster::ClusterClient,
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    shared: std::sync::Weak<Shared>,
) {
    let mut confirmed: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let Some(topology) = cluster_connect(&client, &shared).await else { return };
        if !cluster_read_pushes(&mut pushes, &shared, &mut confirmed, topology).await {
            return;
        }
        // The topology changed under us: open a new connection from a fresh slot map.
        if let Some(state) = shared.upgrade() {
            state.set_connected(false);
            let mut guard = state.pubsub.lock().await;
            guard.sink = None;
            guard.subscribed.clear();
        }
    }
}

/// Connects, subscribes revocations and every workspace the handler reads,
/// and returns the slot owners it subscribed under (`None`: the broker is gone).
async fn cluster_connect(client: &redis::cluster::ClusterClient, shared: &std::sync::Weak<Shared>) -> Option<Vec<(i64, i64, i64)>> {
    let mut backoff = BACKOFF_MIN;
    loop {
        let state = shared.upgrade()?;
        let topology = slot_owners(&state).await.unwrap_or_default();
        match timeout(COMMAND_TIMEOUT, client.get_async_connection()).await {
            Ok(Ok(conn)) => {
                let mut sink = Subscriber::Cluster(conn);
                let mut guard = state.pubsub.lock().await;
                let mut failed = false;
                if let Subscriber::Cluster(conn) = &mut sink
                    && let Err(e) = timeout(COMMAND_TIMEOUT, conn.subscribe(REVOCATIONS_CHANNEL))
                        .await
                        .map_err(unavailable)
                        .and_then(|r| r.map_err(unavailable))
                {
                    tracing::warn!(error = %e, "subscribing to revocations failed");
                    failed = true;
                }
                let wanted = match state.derive_subscriptions().await {
                    Ok(wanted) => wanted,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading stream positions failed");
                        failed = true;
                        Vec::new()
                    }
                };
                for workspace_id in &wanted {
                    if let Err(e) = sink.subscribe(&WorkspaceKeys::new(workspace_id, true).channel).await {
                        tracing::warn!(error = %e, "cluster ssubscribe failed");
                        failed = true;
                        break;
                    }
                }
                if !failed {
                    guard.subscribed = wanted.into_iter().collect();
                    guard.sink = Some(sink);
                    state.set_connected(true);
                    drop(guard);
                    tracing::info!("redis cluster pub/sub connected");
                    return Some(topology);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, retry_in = ?backoff, "redis cluster connect failed"),
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "redis cluster connect timed out"),
        }
        drop(state);
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Who serves each slot range: `(start, end, master port)`, from CLUSTER SLOTS.
async fn slot_owners(state: &Shared) -> Result<Vec<(i64, i64, i64)>, BrokerError> {
    let slots: Vec<redis::Value> = state.commands.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
    let mut owners: Vec<(i64, i64, i64)> = slots
        .iter()
        .filter_map(|range| {
            let redis::Value::Array(fields) = range else { return None };
            let start = redis::from_redis_value_ref::<i64>(fields.first()?).ok()?;
            let end = redis::from_redis_value_ref::<i64>(fields.get(1)?).ok()?;
            let redis::Value::Array(master) = fields.get(2)? else { return None };
            let port = redis::from_redis_value_ref::<i64>(master.get(1)?).ok()?;
            Some((start, end, port))
        })
        .collect();
    owners.sort_unstable();
    Ok(owners)
}

/// Handles pushes until the cluster's slot owners differ from `topology`
/// (a master died and its replica took over, which the connection does not
/// follow by itself: it keeps dialling the dead node); `false` when the broker is gone.
async fn cluster_read_pushes(
    pushes: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    shared: &std::sync::Weak<Shared>,
    confirmed: &mut std::collections::HashSet<String>,
    topology: Vec<(i64, i64, i64)>,
) -> bool {
    let Some(probe_every) = shared.upgrade().map(|s| s.pubsub_probe) else { return false };
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + probe_every, probe_every);
    // A push read ahead while gathering messages read together.
    let mut ahead: Option<redis::PushInfo> = None;
    loop {
        let push = if let Some(push) = ahead.take() {
            Some(push)
        } else {
            tokio::select! {
                push = pushes.recv() => push,
                _ = probe.tick() => {
                    let Some(state) = shared.upgrade() else { return false };
                    match slot_owners(&state).await {
                        Ok(now) if !now.is_empty() && now != topology => {
                            tracing::warn!("redis cluster topology changed; re-opening pub/sub");
                            return true;
                        }
                        _ => continue,
                    }
                }
            }
        };
        let Some(push) = push else { return false };
        let Some(state) = shared.upgrade() else { return false };
        let channel = push.data.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        match push.kind {
            redis::PushKind::SMessage | redis::PushKind::Message => {
                let (Some(channel), Some(payload)) = (channel, push.data.get(1)) else { continue };
                if channel == REVOCATIONS_CHANNEL {
                    if let Ok(jti) = redis::from_redis_value_ref::<String>(payload) {
                        state.handler.on_revoked(&jti);
                    }
                    continue;
                }
                let Some(workspace_id) = workspace_of(&channel) else { continue };
                let Ok(bytes) = redis::from_redis_value_ref::<Vec<u8>>(payload) else { continue };
                // Messages of the same workspace already waiting go with it.
                let mut payloads = vec![Bytes::from(bytes)];
                while payloads.len() < MAX_READ_TOGETHER {
                    let Ok(next) = pushes.try_recv() else { break };
                    match message_of(&next) {
                        Some((next_channel, bytes)) if next_channel == channel => payloads.push(Bytes::from(bytes)),
                        _ => {
                            ahead = Some(next);
                            break;
                        }
                    }
                }
                state.deliver_many(workspace_id, payloads);
            }
            redis::PushKind::SSubscribe => {
                let Some(channel) = channel else { continue };
                let Some(workspace_id) = workspace_of(&channel).map(String::from) else { continue };
                let again = !confirmed.insert(channel.clone());
                if again {
                    // Re-subscribed after a disconnect, failover or slot move.
                    state.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                // Replay from the recorded position at every confirmation: a
                // first one covers what was published between reading the
                // position and the subscription taking (which may have needed
                // retries), a repeated one what the shard missed. Inline, so the
                // older replayed events go before the live ones that queue up in
                // the push channel meanwhile. The cluster may still be settling,
                // so retry until it answers.
                let mut backoff = BACKOFF_MIN;
                while let Err(e) = state.replay_missed(&workspace_id).await {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cluster replay failed");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                if again {
                    state.handler.on_reconnect();
                }
            }
            redis::PushKind::SUnsubscribe => {
                let Some(channel) = channel else { continue };
                let still_wanted = state.pubsub.lock().await.subscribed.iter().any(|w| WorkspaceKeys::new(w, true).channel == channel);
                if still_wanted {
                    // The server dropped us: the slot moved or its master became a
                    // replica. Subscribe again where the slot lives now; the
                    // confirmation triggers the replay above.
                    tracing::info!(channel, "shard channel moved; re-subscribing");
                    state.spawn(resubscribe(shared.clone(), channel));
                } else {
                    confirmed.remove(&channel);
                }
            }
            _ => {}
        }
    }
}

/// The channel and payload of a pushed message; None for any other push.
fn message_of(push: &redis::PushInfo) -> Option<(String, Vec<u8>)> {
    if !matches!(push.kind, redis::PushKind::SMessage | redis::PushKind::Message) {
        return None;
    }
    let channel = redis::from_redis_value_ref::<String>(push.data.first()?).ok()?;
    let payload = redis::from_redis_value_ref::<Vec<u8>>(push.data.get(1)?).ok()?;
    Some((channel, payload))
}
