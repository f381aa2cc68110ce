//! The bounded queue between fan-out and one connection's writer.
//!
//! Fan-out pushes without waiting; the writer pops. When a client falls behind,
//! the queue first conflates (a newer `metrics_update`/`health_update` replaces an
//! older queued one of the same entity), then drops new events and leaves a
//! `lagged` marker where they would have been, and once a client has lost more
//! than a whole queue since it last caught up, the queue condemns it (close 4009).
//! Control replies and recovery replays bypass the bound: they are limited by the
//! client's message rate and the history size instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::extract::ws::Utf8Bytes;
use tidings_protocol::EventId;
use tidings_protocol::codes::close;
use tidings_protocol::payloads::is_conflatable;
use tokio::sync::Notify;

/// An event encoded once, shared by every connection it goes to.
#[derive(Debug)]
pub struct PreparedEvent {
    pub event_type: String,
    pub entity_ref: Option<String>,
    pub id: Option<EventId>,
    /// When it was published, for the delivery latency histogram.
    pub published_at: Option<SystemTime>,
    pub text: Utf8Bytes,
}

/// What the writer sends next.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Event(Arc<PreparedEvent>),
    /// A server message (reply, error, `connected`).
    Control(Utf8Bytes),
    /// This many events were dropped here.
    Lagged(u64),
    /// Close with this code and reason; nothing follows.
    Close(u16, &'static str),
}

#[derive(Debug)]
enum Slot {
    /// `replay` events come from history and may be older than what was sent.
    Event {
        event: Arc<PreparedEvent>,
        replay: bool,
    },
    Control(Utf8Bytes),
    Lagged(u64),
    /// A close that waits for what was queued before it.
    Close(u16, &'static str),
}

/// Result of a push, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    Conflated,
    Dropped,
    /// Dropped, and the client is now closed with 4009.
    Condemned,
    /// The connection is closing; nothing was queued.
    Closed,
}

#[derive(Debug, Default)]
struct Lane {
    slots: VecDeque<Slot>,
    /// Event slots in `slots`: what the capacity bounds.
    events: usize,
}

#[derive(Debug, Default)]
struct Inner {
    main: Lane,
    /// While recovery reads history, live events wait here.
    held: Option<Lane>,
    dropped_since_caught_up: u64,
    closing: Option<(u16, &'static str)>,
    /// A close is queued behind earlier replies; nothing more is accepted.
    close_queued: bool,
    /// Newest durable id handed to the writer.
    last_sent: Option<EventId>,
}

/// One connection's outgoing queue.
#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    /// A std mutex: pushes and pops are a few pointer moves and never await.
    inner: Mutex<Inner>,
    notify: Notify,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::new(Inner::default()), notify: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a live event from fan-out. Never waits.
    pub fn push_event(&self, event: Arc<PreparedEvent>) -> Pushed {
        let mut inner = self.lock();
        if inner.closing.is_some() || inner.close_queued {
            return Pushed::Closed;
        }
        let capacity = self.capacity;
        let state = &mut *inner;
        let lane = state.held.as_mut().unwrap_or(&mut state.main);
        let outcome = if lane.events < capacity {
            lane.slots.push_back(Slot::Event { event, replay: false });
            lane.events += 1;
            Pushed::Queued
        } else if let removed @ 1.. = conflate(lane, &event) {
            lane.slots.push_back(Slot::Event { event, replay: false });
            lane.events = lane.events + 1 - removed;
            Pushed::Conflated
        } else {
            match lane.slots.back_mut() {
                Some(Slot::Lagged(n)) => *n += 1,
                _ => lane.slots.push_back(Slot::Lagged(1)),
            }
            state.dropped_since_caught_up += 1;
            if state.dropped_since_caught_up > capacity as u64 {
                state.closing = Some((close::TOO_SLOW, "too slow"));
                Pushed::Condemned
            } else {
                Pushed::Dropped
            }
        };
        drop(inner);
        self.notify.notify_one();
        outcome
    }

    /// Queues a server message; control replies are never dropped.
    pub fn push_control(&self, text: impl Into<Utf8Bytes>) {
        let mut inner = self.lock();
        if inner.closing.is_none() && !inner.close_queued {
            inner.main.slots.push_back(Slot::Control(text.into()));
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// From now until [`Outbox::release`], live events wait aside so that a
    /// history replay can go first.
    pub fn hold(&self) {
        let mut inner = self.lock();
        if inner.held.is_none() {
            inner.held = Some(Lane::default());
        }
    }

    /// Queues `replay` (history, oldest first), then the live events held since
    /// [`Outbox::hold`], and resumes normal queueing.
    pub fn release(&self, replay: Vec<Arc<PreparedEvent>>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for event in replay {
            inner.main.slots.push_back(Slot::Event { event, replay: true });
            inner.main.events += 1;
        }
        if let Some(held) = inner.held.take() {
            inner.main.events += held.events;
            inner.main.slots.extend(held.slots);
        }
        self.notify.notify_one();
    }

    /// Ends the connection with `code`: the writer sends that close next, and
    /// anything still queued is discarded. The first close wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut inner = self.lock();
        if inner.closing.is_none() {
            inner.closing = Some((code, reason));
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// Ends the connection with `code` once everything queued so far is sent
    /// (e.g. the `rate_limited` errors before a 4008).
    pub fn close_after_queued(&self, code: u16, reason: &'static str) {
        let mut inner = self.lock();
        if inner.closing.is_none() && !inner.close_queued {
            inner.close_queued = true;
            if let Some(held) = inner.held.take() {
                inner.main.events += held.events;
                inner.main.slots.extend(held.slots);
            }
            inner.main.slots.push_back(Slot::Close(code, reason));
        }
        drop(inner);
        self.notify.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        let inner = self.lock();
        inner.closing.is_some() || inner.close_queued
    }

    /// Events dropped since the client last caught up.
    pub fn dropped_pending(&self) -> u64 {
        self.lock().dropped_since_caught_up
    }

    /// Newest durable id handed to the writer so far.
    pub fn last_sent(&self) -> Option<EventId> {
        self.lock().last_sent
    }

    /// Next item to send, waiting until there is one.
    pub async fn pop(&self) -> Outgoing {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.try_pop() {
                return item;
            }
            notified.await;
        }
    }

    /// Up to `max` consecutive events ready now (for `batch=1` frames); stops at
    /// the first non-event so replies keep their place.
    pub fn pop_more_events(&self, max: usize, into: &mut Vec<Arc<PreparedEvent>>) {
        let mut inner = self.lock();
        while into.len() < max && inner.closing.is_none() {
            match inner.main.slots.front() {
                Some(Slot::Event { .. }) => {}
                _ => break,
            }
            match self.take_front(&mut inner) {
                Some(Outgoing::Event(e)) => into.push(e),
                Some(_) | None => break,
            }
        }
    }

    fn try_pop(&self) -> Option<Outgoing> {
        let mut inner = self.lock();
        if let Some((code, reason)) = inner.closing {
            return Some(Outgoing::Close(code, reason));
        }
        self.take_front(&mut inner)
    }

    fn take_front(&self, inner: &mut Inner) -> Option<Outgoing> {
        loop {
            let slot = inner.main.slots.pop_front()?;
            if inner.main.slots.is_empty() {
                inner.dropped_since_caught_up = 0;
            }
            match slot {
                Slot::Control(text) => return Some(Outgoing::Control(text)),
                Slot::Lagged(n) => return Some(Outgoing::Lagged(n)),
                Slot::Close(code, reason) => return Some(Outgoing::Close(code, reason)),
                Slot::Event { event, replay } => {
                    inner.main.events = inner.main.events.saturating_sub(1);
                    if let Some(id) = event.id {
                        // At most once per connection, in id order: a live event
                        // already covered by what was sent (e.g. by a replay) is skipped.
                        if !replay && inner.last_sent.is_some_and(|last| id <= last) {
                            continue;
                        }
                        inner.last_sent = Some(inner.last_sent.map_or(id, |last| last.max(id)));
                    }
                    return Some(Outgoing::Event(event));
                }
            }
        }
    }
}

/// Removes every queued live event that `event` supersedes (same conflatable
/// type and entity), so that `event` can take a place at the back, keeping id
/// order. Returns how many were removed.
fn conflate(lane: &mut Lane, event: &PreparedEvent) -> usize {
    let Some(entity_ref) = event.entity_ref.as_deref().filter(|_| is_conflatable(&event.event_type)) else {
        return 0;
    };
    let before = lane.slots.len();
    lane.slots.retain(|slot| match slot {
        Slot::Event { event: queued, replay: false } => {
            !(queued.event_type == event.event_type && queued.entity_ref.as_deref() == Some(entity_ref))
        }
        _ => true,
    });
    before - lane.slots.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event_type: &str, entity: Option<&str>, id: u64) -> Arc<PreparedEvent> {
        Arc::new(PreparedEvent {
            event_type: event_type.into(),
            entity_ref: entity.map(String::from),
            id: Some(EventId::new(id, 0)),
            published_at: None,
            text: format!("{id}").into(),
        })
    }

    fn drain(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(item) = outbox.try_pop() {
            out.push(match item {
                Outgoing::Event(e) => e.text.to_string(),
                Outgoing::Control(t) => format!("ctl:{t}"),
                Outgoing::Lagged(n) => format!("lagged:{n}"),
                Outgoing::Close(code, _) => {
                    out.push(format!("close:{code}"));
                    break;
                }
            });
        }
        out
    }

    #[test]
    fn drops_beyond_capacity_leave_one_lagged_marker_at_the_gap() {
        let outbox = Outbox::new(2);
        for id in 1..=4 {
            outbox.push_event(ev("t", None, id));
        }
        outbox.push_control("reply");
        assert_eq!(drain(&outbox), ["1", "2", "lagged:2", "ctl:reply"]);
        assert_eq!(outbox.push_event(ev("t", None, 5)), Pushed::Queued, "caught up: room again");
        assert_eq!(drain(&outbox), ["5"]);
    }

    #[test]
    fn conflation_replaces_the_older_metrics_of_the_same_entity_first() {
        let outbox = Outbox::new(2);
        outbox.push_event(ev("metrics_update", Some("host:default/a"), 1));
        outbox.push_event(ev("deployment_update", Some("host:default/a"), 2));
        assert_eq!(outbox.push_event(ev("metrics_update", Some("host:default/a"), 3)), Pushed::Conflated);
        assert_eq!(outbox.push_event(ev("metrics_update", Some("host:default/b"), 4)), Pushed::Dropped);
        assert_eq!(drain(&outbox), ["2", "3", "lagged:1"]);
        let outbox = Outbox::new(3);
        for id in 1..=3 {
            outbox.push_event(ev("health_update", Some("host:default/a"), id));
        }
        assert_eq!(outbox.push_event(ev("health_update", Some("host:default/a"), 4)), Pushed::Conflated);
        assert_eq!(outbox.push_event(ev("alert", None, 5)), Pushed::Queued, "conflation freed room");
        assert_eq!(drain(&outbox), ["4", "5"]);
    }

    #[test]
    fn a_client_that_stays_behind_is_condemned_with_4009() {
        let outbox = Outbox::new(3);
        let outcomes: Vec<Pushed> = (1..=7).map(|id| outbox.push_event(ev("t", None, id))).collect();
        assert_eq!(outcomes[..3], [Pushed::Queued; 3]);
        assert_eq!(outcomes[3..6], [Pushed::Dropped; 3]);
        assert_eq!(outcomes[6], Pushed::Condemned);
        assert_eq!(drain(&outbox), ["close:4009"]);
        assert_eq!(outbox.push_event(ev("t", None, 8)), Pushed::Closed);
    }

    #[test]
    fn replay_goes_before_held_live_events_without_duplicates() {
        let outbox = Outbox::new(10);
        outbox.hold();
        outbox.push_event(ev("t", None, 3)); // live, also part of the replay
        outbox.push_event(ev("t", None, 4));
        outbox.push_control("connected");
        outbox.release(vec![ev("t", None, 2), ev("t", None, 3)]);
        assert_eq!(drain(&outbox), ["ctl:connected", "2", "3", "4"]);
        assert_eq!(outbox.last_sent(), Some(EventId::new(4, 0)));
        outbox.push_event(ev("t", None, 4));
        assert_eq!(drain(&outbox), Vec::<String>::new(), "an id already sent is not sent again");
    }

    #[test]
    fn a_queued_close_waits_for_earlier_replies() {
        let outbox = Outbox::new(10);
        outbox.push_control("error");
        outbox.close_after_queued(close::RATE_LIMITED, "too many messages");
        assert_eq!(outbox.push_event(ev("t", None, 1)), Pushed::Closed);
        assert_eq!(drain(&outbox), ["ctl:error", "close:4008"]);
    }

    #[test]
    fn close_wins_over_queued_items() {
        let outbox = Outbox::new(10);
        outbox.push_event(ev("t", None, 1));
        outbox.close(close::DRAINING, "draining");
        outbox.close(close::NORMAL, "later");
        assert_eq!(drain(&outbox), ["close:1012"]);
    }
}
