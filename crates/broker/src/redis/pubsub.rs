//! The single-server pub/sub task: one connection that subscribes every
//! workspace with local readers, is probed with `PING`, and after a loss
//! reconnects with capped, jittered backoff and replays what each stream
//! received meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use redis::aio::PubSubStream;
use tidings_protocol::keys::{REVOCATIONS_CHANNEL, WorkspaceKeys};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::commands::{COMMAND_TIMEOUT, unavailable};
use super::subscriptions::{BACKOFF_MAX, BACKOFF_MIN, MAX_READ_TOGETHER, ReadTogether, Shared, Subscriber, jittered, workspace_of};
use crate::BrokerError;

pub(super) async fn pubsub_loop(client: redis::Client, shared: std::sync::Weak<Shared>) {
    let mut backoff = BACKOFF_MIN;
    let mut lost_once = false;
    loop {
        let Some(state) = shared.upgrade() else { return };
        match connect_pubsub(&client, &state, lost_once).await {
            Ok((stream, session)) => {
                backoff = BACKOFF_MIN;
                let probe = state.pubsub_probe;
                drop(state);
                read_until_lost(stream, &shared, probe, &session).await;
                let Some(state) = shared.upgrade() else { return };
                state.set_connected(false);
                let mut guard = state.pubsub.lock().await;
                guard.sink = None;
                guard.subscribed.clear();
                drop(guard);
                tracing::warn!("redis pub/sub connection lost; reconnecting");
                lost_once = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub connect failed");
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Opens the pub/sub connection, subscribes every workspace the handler has
/// readers of, and after a loss replays what each stream received meanwhile.
async fn connect_pubsub(
    client: &redis::Client,
    shared: &Arc<Shared>,
    replay: bool,
) -> Result<(PubSubStream, CancellationToken), BrokerError> {
    let pubsub = timeout(COMMAND_TIMEOUT, client.get_async_pubsub()).await.map_err(unavailable)?.map_err(unavailable)?;
    let (sink, stream) = pubsub.split();
    let mut sink = Subscriber::Single(sink);
    sink.subscribe(REVOCATIONS_CHANNEL).await?;
    let mut state = shared.pubsub.lock().await;
    let wanted = shared.derive_subscriptions().await?;
    for workspace_id in &wanted {
        sink.subscribe(&WorkspaceKeys::new(workspace_id, false).channel).await?;
    }
    if replay {
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        for workspace_id in &wanted {
            shared.replay_missed(workspace_id).await?;
        }
        shared.handler.on_reconnect();
    }
    state.subscribed = wanted.into_iter().collect();
    state.sink = Some(sink);
    state.session = CancellationToken::new();
    shared.set_connected(true);
    tracing::info!(workspaces = state.subscribed.len(), "redis pub/sub connected");
    Ok((stream, state.session.clone()))
}

/// A `PING` answer on a pub/sub connection: `PONG` (RESP3, or before any
/// SUBSCRIBE) or, once subscribed under RESP2, the array `["pong", ""]`.
fn is_pong(reply: &redis::Value) -> bool {
    use redis::Value;
    let pong = |v: &Value| match v {
        Value::SimpleString(s) => s.eq_ignore_ascii_case("pong"),
        Value::BulkString(b) => b.eq_ignore_ascii_case(b"pong"),
        _ => false,
    };
    match reply {
        Value::Array(items) => items.first().is_some_and(pong),
        other => pong(other),
    }
}

async fn read_until_lost(mut stream: PubSubStream, shared: &std::sync::Weak<Shared>, probe_every: Duration, session: &CancellationToken) {
    let mut probe = tokio::time::interval(probe_every);
    probe.tick().await;
    loop {
        tokio::select! {
            _ = session.cancelled() => return,
            msg = stream.next() => {
                let Some(msg) = msg else { return };
                let Some(state) = shared.upgrade() else { return };
                // What else is already read goes with it: a backlog becomes
                // one write per client instead of one per event.
                let mut together = ReadTogether::default();
                let (mut next, mut read) = (Some(msg), 1);
                while let Some(msg) = next.take() {
                    if msg.get_channel_name() == REVOCATIONS_CHANNEL {
                        together.hand_over(&state);
                        state.handler.on_revoked(&String::from_utf8_lossy(msg.get_payload_bytes()));
                    } else if let Some(workspace_id) = workspace_of(msg.get_channel_name()) {
                        together.push(&state, workspace_id, Bytes::copy_from_slice(msg.get_payload_bytes()));
                    }
                    if read < MAX_READ_TOGETHER {
                        next = stream.next().now_or_never().flatten();
                        read += 1;
                    }
                }
                together.hand_over(&state);
            }
            _ = probe.tick() => {
                let Some(state) = shared.upgrade() else { return };
                let mut guard = state.pubsub.lock().await;
                if let Some(Subscriber::Single(sink)) = guard.sink.as_mut() {
                    match timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(reply)) if is_pong(&reply) => {}
                        Ok(Ok(reply)) => {
                            tracing::warn!(?reply, "redis pub/sub probe got an unexpected answer");
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "redis pub/sub probe failed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!("redis pub/sub probe timed out");
                            return;
                        }
                    }
                }
            }
        }
    }
}
