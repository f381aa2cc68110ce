//! The connection's writer: drains the outbox, coalescing what is queued into
//! one flush per wake-up, sends the heartbeat ping and the close frame.

use std::sync::Arc;

use axum::extract::ws::Message;
use futures_util::SinkExt;
use tidings_protocol::ServerMessage;
use tidings_protocol::codes::close;
use tidings_protocol::messages::encode_batch;
use tokio::time::{Instant, timeout};

use super::frames::{FrameSink, MAX_BATCH, SLOW_CLOSE_GRACE, send_close};
use super::join::Done;
use crate::hub::Connection;
use crate::node::Node;
use crate::outbox::{Outgoing, PreparedEvent};

/// Most frames written per wake-up before one flush: enough to turn a backlog
/// into one `write(2)`, few enough that a reply is never held back long.
const MAX_COALESCE: usize = 256;
/// Bytes of frames gathered before they are written even without a flush. The
/// write buffer keeps its largest size for the connection's life, so this is
/// also what a connection that once saw a burst holds (64 KiB cost 54 KB per
/// connection after a burst for no measurable CPU gain over 16 KiB).
pub(super) const WRITE_COALESCE_BYTES: usize = 16 * 1024;

/// The connection's writer: pops what is queued, encodes nothing (event frames
/// are shared, encoded once in the hub), and writes everything already waiting
/// with one flush, so a backlog costs one syscall per wake-up instead of one per
/// event. Stalled writes are ended by the socket's write deadline
/// ([`crate::deadline`]), so no timer is armed per send.
pub(super) async fn write_loop(node: Arc<Node>, conn: Arc<Connection>, mut sink: impl FrameSink, batch: bool, done: Done) {
    // One timer per connection, at half the heartbeat: every tick checks the
    // client's liveness (the reader marks what it receives), every other
    // tick sends the ping.
    let heartbeat = node.config.heartbeat;
    let mut tick = tokio::time::interval_at(Instant::now() + heartbeat / 2, heartbeat / 2);
    let mut odd_tick = false;
    // Resolved once: a label lookup per delivery is a hash and a lock.
    let delivered = node.metrics.messages_delivered.with_label_values(&[conn.transport.label()]);
    let mut frames: Vec<Message> = Vec::new();
    let mut events: Vec<Arc<PreparedEvent>> = Vec::new();
    loop {
        frames.clear();
        events.clear();
        // Freed before waiting: an idle connection holds no scratch space
        // (one allocation per wake-up costs less than 1 % of a delivery).
        frames.shrink_to(0);
        events.shrink_to(0);
        let first = tokio::select! {
            () = done.cancelled() => break,
            _ = tick.tick() => {
                if conn.silent_for() > heartbeat * 2 {
                    tracing::debug!(connection_id = %conn.connection_id, "no sign of life for two heartbeats; dropping");
                    break;
                }
                odd_tick = !odd_tick;
                if odd_tick {
                    continue;
                }
                None
            }
            item = conn.outbox.pop() => Some(item),
        };
        let mut close = None;
        // A frame the fan-out wrote in part waits for this flush.
        let mut flush = false;
        match first {
            None => frames.push(Message::Ping(Default::default())),
            Some(Outgoing::Flush) => flush = true,
            Some(item) => close = collect(item, batch, &conn, &mut frames, &mut events),
        }
        while close.is_none() && frames.len() < MAX_COALESCE {
            match conn.outbox.try_pop() {
                None => break,
                Some(Outgoing::Flush) => flush = true,
                Some(item) => close = collect(item, batch, &conn, &mut frames, &mut events),
            }
        }
        if !frames.is_empty() || flush {
            // Open while the frames are written; only traced events have them.
            let delivering: Vec<tracing::Span> =
                events.iter().filter_map(|e| e.trace.as_ref()?.deliver_span(&conn.connection_id)).collect();
            let write = async {
                for frame in frames.drain(..) {
                    sink.feed(frame).await?;
                }
                sink.flush().await
            };
            let written = tokio::select! {
                // Biased: a write that completes at once never touches the outbox.
                biased;
                written = write => written.is_ok(),
                // Closed (e.g. condemned 4009) while the write to a client that
                // does not read is stuck: give the frames up, send the close.
                () = conn.outbox.closed() => continue,
            };
            drop(delivering);
            if !written {
                break;
            }
            if !events.is_empty() {
                delivered.inc_by(events.len() as u64);
                // One clock read per write, not per event.
                let now = std::time::SystemTime::now();
                for published_at in events.iter().filter_map(|e| e.published_at) {
                    if let Ok(latency) = now.duration_since(published_at) {
                        node.metrics.delivery_latency.observe(latency.as_secs_f64());
                    }
                }
            }
        }
        if let Some((code, reason)) = close {
            // Boxed: its timers would otherwise be part of every connection's state.
            Box::pin(send_final_close(&node, &conn, &mut sink, code, reason)).await;
            break;
        }
    }
    done.cancel();
    // Nothing sends any more: wake a replay waiting for room, and refuse pushes.
    conn.outbox.close(close::NORMAL, "");
}

/// Sends the close frame, after telling a client closed 4009 what it lost.
async fn send_final_close(node: &Node, conn: &Connection, sink: &mut impl FrameSink, code: u16, reason: &'static str) {
    node.metrics.connections_closed.with_label_values(&[&code.to_string()]).inc();
    let dropped = conn.outbox.dropped_pending();
    if code == close::TOO_SLOW && dropped > 0 {
        // What it lost, for a client that reads again before the close.
        let _ = timeout(SLOW_CLOSE_GRACE, sink.send(Message::Text(ServerMessage::Lagged { dropped }.to_json().into()))).await;
    }
    send_close(sink, code, reason).await;
}

/// Turns one queued item into frames; `Some` for a close, which ends the round.
fn collect(
    item: Outgoing,
    batch: bool,
    conn: &Connection,
    frames: &mut Vec<Message>,
    events: &mut Vec<Arc<PreparedEvent>>,
) -> Option<(u16, &'static str)> {
    match item {
        Outgoing::Event(event) if batch => {
            let first = events.len();
            events.push(event);
            conn.outbox.pop_more_events(MAX_BATCH, events);
            frames.push(Message::Text(encode_batch(events[first..].iter().map(|e| e.text.as_str())).into()));
        }
        Outgoing::Event(event) => {
            frames.push(Message::Text(event.text.clone()));
            events.push(event);
        }
        Outgoing::Control(text) => frames.push(Message::Text(text)),
        Outgoing::Lagged(dropped) => frames.push(Message::Text(ServerMessage::Lagged { dropped }.to_json().into())),
        Outgoing::Close(code, reason) => return Some((code, reason)),
        // Taken by the caller.
        Outgoing::Flush => {}
    }
    None
}
