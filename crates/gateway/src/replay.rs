//! Recovery replays: the history after `since`, read page by page into one
//! connection's outbox while its live events wait aside. A replay is never
//! held in memory whole, never overtakes or duplicates live delivery, and a
//! client that stops reading during one is bounded by its queue like any other.

use std::sync::Arc;

use tidings_broker::{BrokerError, HistoryPage};
use tidings_protocol::EventId;
use tidings_protocol::codes::close;

use crate::hub::{Connection, prepare};
use crate::node::{Node, Registration};
use crate::outbox::PreparedEvent;

/// Events read from history per request.
pub const REPLAY_PAGE: usize = 500;
/// Times a replay may find that live events it must cover were dropped for
/// room meanwhile; a client that keeps falling behind its own replay is too slow.
const MAX_CATCH_UPS: usize = 8;

/// Registers `conn` with its `connected` message first in its queue. Without
/// `since`, the message is queued before the connection can receive live
/// events. With `since`, live events are held, the first history page is read
/// (it decides `recovered`), and the returned replay must be run once a writer
/// drains the queue. `connected` builds the message from `recovered`.
pub async fn join(
    node: &Arc<Node>,
    conn: &Arc<Connection>,
    since: Option<EventId>,
    connected: impl FnOnce(Option<bool>) -> String,
) -> Result<(Registration, Option<Replay>), BrokerError> {
    let Some(since) = since else {
        conn.outbox.push_control(connected(None));
        return Ok((node.register(conn).await?, None));
    };
    conn.outbox.hold();
    let registration = node.register(conn).await?;
    let replay = Replay::begin(node, &conn.workspace_id, since).await?;
    conn.outbox.push_control(connected(Some(replay.recovered())));
    Ok((registration, Some(replay)))
}

/// A replay whose first page is read.
#[derive(Debug)]
pub struct Replay {
    first: HistoryPage,
    since: EventId,
}

impl Replay {
    /// Reads the first page after `since`. The connection must be registered
    /// and its outbox holding already, so nothing published meanwhile is missed.
    pub async fn begin(node: &Node, workspace_id: &str, since: EventId) -> Result<Self, BrokerError> {
        let first = node.broker.history(workspace_id, Some(since), REPLAY_PAGE).await?;
        Ok(Self { first, since })
    }

    /// Whether every event after `since` that is still stored will follow
    /// (SPEC §3.2 `recovered`).
    pub fn recovered(&self) -> bool {
        self.first.recovered
    }

    /// Queues every event after `since` that `keep` selects, page by page,
    /// waiting for room as the writer sends; then releases the held live
    /// events. Ends early when the connection closes; a history read that
    /// fails midway closes it with 1013, so the client retries from its last id.
    pub async fn run(self, node: &Node, conn: &Connection, keep: impl Fn(&PreparedEvent) -> bool) {
        let mut next = Some(self.first);
        let mut cursor = self.since;
        let mut catch_ups = 0;
        loop {
            let page = match next.take() {
                Some(page) => page,
                None => match node.broker.history(&conn.workspace_id, Some(cursor), REPLAY_PAGE).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(connection_id = %conn.connection_id, error = %e, "history read failed during a replay");
                        conn.outbox.close(close::TRY_AGAIN_LATER, "history unavailable");
                        return;
                    }
                },
            };
            for stored in &page.events {
                cursor = stored.id;
                let Some(mut event) = prepare(&conn.workspace_id, stored.json.clone()) else { continue };
                // A replayed event's age is how far back the client resumed, not
                // delivery latency: kept out of the histogram (and its alerts).
                event.published_at = None;
                if keep(&event) && !conn.outbox.push_replay(Arc::new(event)).await {
                    return;
                }
            }
            if page.more {
                continue;
            }
            if conn.outbox.try_release(cursor) {
                return;
            }
            catch_ups += 1;
            if catch_ups >= MAX_CATCH_UPS {
                tracing::info!(connection_id = %conn.connection_id, "client fell behind its own replay, closing 4009");
                conn.outbox.close(close::TOO_SLOW, "too slow");
                return;
            }
        }
    }
}
