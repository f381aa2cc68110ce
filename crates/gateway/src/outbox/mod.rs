//! The bounded queue between fan-out and one connection's writer.
//!
//! Everything a connection is sent waits here — live events, control replies,
//! `history` answers, recovery replays — and the queue is bounded by **bytes**
//! over all of it (`TIDINGS_CLIENT_QUEUE_BYTES`). Fan-out pushes without
//! waiting; the writer pops. When a client falls behind, the queue first
//! conflates (a newer `metrics_update`/`health_update` replaces an older queued
//! one of the same entity), then drops new events and leaves a `lagged` marker
//! where they would have been; once a client has lost more than a whole queue
//! since it last caught up, or a reply does not fit, the queue condemns it
//! (close 4009). A replay waits for room instead ([`Outbox::push_replay`]), so
//! history is read page by page and never materialised whole.
//!
//! A WebSocket whose writer is waiting on an empty queue is written to
//! directly: [`Outbox::push_event`] hands the event's pre-built frame to the
//! connection's [`DirectWriter`] (its socket), which takes it whole, in part
//! (the writer is then woken to finish it before anything else), or not at
//! all (it is queued as usual). Order holds because the fan-out writes
//! directly only while nothing is queued and the writer has nothing in hand.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tidings_protocol::EventId;
use tidings_protocol::codes::close;
use tidings_protocol::payloads::is_conflatable;
use tokio::sync::Notify;

/// What a queued item costs beyond its text (the slot, the `Arc`, the deque).
const SLOT_OVERHEAD: usize = 64;

/// An event encoded once, shared by every connection it goes to.
#[derive(Debug)]
pub struct PreparedEvent {
    pub event_type: String,
    pub entity_ref: Option<String>,
    pub id: Option<EventId>,
    /// When it was published, for the delivery latency histogram.
    pub published_at: Option<SystemTime>,
    pub text: Utf8Bytes,
    /// Its fan-out span, when the event is traced and traces are exported.
    pub trace: Option<Arc<crate::trace::DeliveryTrace>>,
    /// Its complete WebSocket frame, built by the first direct write.
    pub frame: OnceLock<Bytes>,
}

impl PreparedEvent {
    /// The event as one unmasked WebSocket text frame: the same bytes for
    /// every connection it is written to.
    pub fn ws_frame(&self) -> &Bytes {
        self.frame.get_or_init(|| crate::ws::text_frame(self.text.as_bytes()))
    }
}

/// What a [`DirectWriter`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectWrite {
    /// Written whole.
    Whole,
    /// Written in part, this many bytes left; the rest is written before
    /// anything else, at the writer's next flush.
    Partial(usize),
    /// Not written (the socket is full, or someone else is mid-frame).
    Busy,
}

/// Writes frames to a connection's socket without waiting, for the fan-out.
pub trait DirectWriter: Send + Sync + fmt::Debug {
    /// The events' [`PreparedEvent::ws_frame`]s, in order, in one write.
    fn try_write_frames(&self, events: &[Arc<PreparedEvent>]) -> DirectWrite;
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
    /// Flush: the rest of a frame written in part by the fan-out is waiting.
    Flush,
}

/// Queue capacity a connection keeps once it has caught up.
const KEPT_SLOTS: usize = 16;

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
    /// A direct write left this many bytes for the writer to finish.
    Flush(usize),
}

impl Slot {
    fn cost(&self) -> usize {
        SLOT_OVERHEAD
            + match self {
                Slot::Event { event, .. } => event.text.len(),
                Slot::Control(text) => text.len(),
                // The rest of a frame counts until it is written: it is a copy.
                Slot::Flush(left) => *left,
                Slot::Lagged(_) | Slot::Close(..) => 0,
            }
    }
}

/// Result of a push, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Written to the socket by the fan-out itself: delivered.
    Written,
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
}

#[derive(Debug, Default)]
struct Inner {
    main: Lane,
    /// While a replay reads history, live events wait here.
    held: Option<Lane>,
    /// Bytes queued in both lanes: what the capacity bounds.
    bytes: usize,
    dropped_since_caught_up: u64,
    dropped_bytes_since_caught_up: usize,
    /// Newest durable event dropped from the held lane for room, and how many
    /// were; the replay that is running reads them from history.
    held_dropped: Option<EventId>,
    held_dropped_count: u64,
    closing: Option<(u16, &'static str)>,
    /// A close is queued behind earlier replies; nothing more is accepted.
    close_queued: bool,
    /// Newest durable id handed to the writer.
    last_sent: Option<EventId>,
    /// A replay waits for room: the writer's pops wake it. Without one waiting
    /// a pop notifies nobody, so it does not take `room`'s lock each time.
    room_wanted: bool,
    /// The writer found the queue empty and holds nothing it has not written:
    /// the fan-out may write to the socket itself.
    writer_waiting: bool,
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.closing.is_some() || self.close_queued
    }

    fn fits(&self, capacity: usize, cost: usize) -> bool {
        self.bytes + cost <= capacity
    }

    fn condemn(&mut self) {
        if self.closing.is_none() {
            self.closing = Some((close::TOO_SLOW, "too slow"));
        }
    }

    fn unhold(&mut self) {
        if let Some(held) = self.held.take() {
            self.main.slots.extend(held.slots);
        }
        self.held_dropped = None;
        self.held_dropped_count = 0;
    }
}

/// One connection's outgoing queue.
#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    /// A std mutex: pushes and pops are a few pointer moves and never await.
    inner: Mutex<Inner>,
    /// Wakes the writer: something was queued, or the connection closes.
    notify: Notify,
    /// Wakes a waiting replay: room was made, or the connection closes.
    room: Notify,
    /// The socket, for direct writes (WebSockets without `batch` only).
    direct: OnceLock<Arc<dyn DirectWriter>>,
}

impl Outbox {
    /// A queue of at most `capacity_bytes` (the one item that does not fit in
    /// an empty queue is still accepted, so any single reply can be sent).
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity: capacity_bytes.max(1),
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            room: Notify::new(),
            direct: OnceLock::new(),
        }
    }

    /// From now on the fan-out may write events straight to `writer` while
    /// the connection's writer waits with nothing queued. Set once.
    pub fn write_directly_to(&self, writer: Arc<dyn DirectWriter>) {
        let _ = self.direct.set(writer);
    }

    /// Writes `events` to the socket when nothing is queued ahead of them and
    /// the writer is idle; false when they must be queued instead.
    fn try_write_directly(&self, inner: &mut Inner, events: &[Arc<PreparedEvent>]) -> bool {
        if !inner.writer_waiting || inner.held.is_some() || !inner.main.slots.is_empty() {
            return false;
        }
        // What a partial write leaves is held under the same bound as the queue.
        let cost: usize = events.iter().map(|e| SLOT_OVERHEAD + e.ws_frame().len()).sum();
        if !inner.fits(self.capacity, cost) {
            return false;
        }
        let Some(direct) = self.direct.get() else { return false };
        // Traced events are written by the writer, inside their delivery
        // span; one already covered by what was sent is skipped at its pop.
        let mut last_sent = inner.last_sent;
        for event in events {
            if event.trace.is_some() {
                return false;
            }
            if let Some(id) = event.id {
                if last_sent.is_some_and(|last| id <= last) {
                    return false;
                }
                last_sent = Some(id);
            }
        }
        match direct.try_write_frames(events) {
            DirectWrite::Busy => return false,
            DirectWrite::Whole => {}
            DirectWrite::Partial(left) => {
                // Everything after this frame waits behind the writer's flush.
                let slot = Slot::Flush(left);
                inner.bytes += slot.cost();
                inner.main.slots.push_back(slot);
                inner.writer_waiting = false;
            }
        }
        inner.last_sent = last_sent;
        true
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a live event from fan-out (or writes it). Never waits.
    pub fn push_event(&self, event: Arc<PreparedEvent>) -> Pushed {
        let mut pushed = Pushed::Closed;
        self.push_events(std::slice::from_ref(&event), |_, p| pushed = p);
        pushed
    }

    /// Queues live events that arrived together, in order, or writes them to
    /// the socket in one write; `outcome` hears what became of each. Never waits.
    pub fn push_events(&self, events: &[Arc<PreparedEvent>], mut outcome: impl FnMut(&PreparedEvent, Pushed)) {
        let mut inner = self.lock();
        if !inner.is_closed() && self.try_write_directly(&mut inner, events) {
            // A frame written in part waits for the writer's flush.
            let flush = !inner.writer_waiting;
            drop(inner);
            if flush {
                self.notify.notify_one();
            }
            events.iter().for_each(|e| outcome(e, Pushed::Written));
            return;
        }
        for event in events {
            outcome(event, self.queue_event(&mut inner, event.clone()));
        }
        drop(inner);
        self.notify.notify_one();
    }

    fn queue_event(&self, inner: &mut Inner, event: Arc<PreparedEvent>) -> Pushed {
        if inner.is_closed() {
            return Pushed::Closed;
        }
        let capacity = self.capacity;
        let slot = Slot::Event { event, replay: false };
        let cost = slot.cost();
        let state = inner;
        let holding = state.held.is_some();
        let lane = state.held.as_mut().unwrap_or(&mut state.main);
        if state.bytes + cost <= capacity || state.bytes == 0 {
            lane.slots.push_back(slot);
            state.bytes += cost;
            Pushed::Queued
        } else if let Some(freed) = conflate(lane, &slot) {
            // The newer value replaces the older ones (it may overshoot the
            // bound by its own size: the older ones were as large).
            lane.slots.push_back(slot);
            state.bytes = (state.bytes + cost).saturating_sub(freed);
            Pushed::Conflated
        } else if let (true, Slot::Event { event, .. }) = (holding, &slot)
            && let Some(id) = event.id
        {
            // A replay is running and will read this one from history.
            state.held_dropped = Some(state.held_dropped.map_or(id, |d| d.max(id)));
            state.held_dropped_count += 1;
            Pushed::Queued
        } else {
            match lane.slots.back_mut() {
                Some(Slot::Lagged(n)) => *n += 1,
                _ => {
                    lane.slots.push_back(Slot::Lagged(1));
                    state.bytes += SLOT_OVERHEAD;
                }
            }
            state.dropped_since_caught_up += 1;
            state.dropped_bytes_since_caught_up += cost;
            if state.dropped_bytes_since_caught_up > capacity {
                state.condemn();
                Pushed::Condemned
            } else {
                Pushed::Dropped
            }
        }
    }

    /// Queues a server message. A reply is never dropped: one that does not
    /// fit condemns the client (4009) instead, as a client that asks and never
    /// reads must not grow the gateway's memory.
    pub fn push_control(&self, text: impl Into<Utf8Bytes>) {
        let slot = Slot::Control(text.into());
        let cost = slot.cost();
        let mut inner = self.lock();
        if !inner.is_closed() {
            if inner.fits(self.capacity, cost) || inner.bytes == 0 {
                inner.main.slots.push_back(slot);
                inner.bytes += cost;
            } else {
                inner.condemn();
            }
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// From now until [`Outbox::try_release`], live events wait aside so that a
    /// replay can go first. Events queued but not yet sent go aside too: the
    /// replay re-reads them from history in order.
    pub fn hold(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.held.is_some() {
            return;
        }
        let mut held = Lane::default();
        let mut kept = VecDeque::with_capacity(inner.main.slots.len());
        for slot in inner.main.slots.drain(..) {
            match slot {
                Slot::Event { replay: false, .. } => held.slots.push_back(slot),
                other => kept.push_back(other),
            }
        }
        inner.main.slots = kept;
        inner.held = Some(held);
    }

    /// Queues one replayed event, waiting while the queue is full (the writer
    /// makes room as it sends). False once the connection is closing.
    pub async fn push_replay(&self, event: Arc<PreparedEvent>) -> bool {
        let slot = Slot::Event { event, replay: true };
        let cost = slot.cost();
        let mut slot = Some(slot);
        loop {
            let room = self.room.notified();
            {
                let mut inner = self.lock();
                if inner.is_closed() {
                    return false;
                }
                if inner.fits(self.capacity, cost) || inner.bytes == 0 {
                    if let Some(slot) = slot.take() {
                        inner.main.slots.push_back(slot);
                    }
                    inner.bytes += cost;
                    drop(inner);
                    self.notify.notify_one();
                    return true;
                }
                inner.room_wanted = true;
            }
            room.await;
        }
    }

    /// Ends a replay that went up to `replayed_to`: queues the held live events
    /// after it and resumes normal queueing. False, and still holding, when
    /// live events newer than `replayed_to` had to be dropped for room: the
    /// caller replays on from `replayed_to` and tries again.
    pub fn try_release(&self, replayed_to: EventId) -> bool {
        let mut inner = self.lock();
        if let Some(dropped) = inner.held_dropped
            && dropped > replayed_to
        {
            inner.held_dropped = None;
            return false;
        }
        inner.unhold();
        drop(inner);
        self.notify.notify_one();
        true
    }

    /// Ends a hold whose replay did not happen (history unreadable): the held
    /// live events follow, and events dropped from the held lane for room are
    /// reported with a `lagged` marker, as no replay will bring them.
    pub fn release_without_replay(&self) {
        let mut inner = self.lock();
        let dropped = inner.held_dropped_count;
        inner.unhold();
        if dropped > 0 {
            inner.main.slots.push_back(Slot::Lagged(dropped));
            inner.bytes += SLOT_OVERHEAD;
            inner.dropped_since_caught_up += dropped;
        }
        drop(inner);
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
        self.room.notify_waiters();
    }

    /// Ends the connection with `code` once everything queued so far is sent
    /// (e.g. the `rate_limited` errors before a 4008).
    pub fn close_after_queued(&self, code: u16, reason: &'static str) {
        let mut inner = self.lock();
        if !inner.is_closed() {
            inner.close_queued = true;
            inner.unhold();
            inner.main.slots.push_back(Slot::Close(code, reason));
        }
        drop(inner);
        self.notify.notify_one();
        self.room.notify_waiters();
    }

    pub fn is_closing(&self) -> bool {
        self.lock().is_closed()
    }

    /// Resolves once [`Outbox::close`] was called (for the writer only: it
    /// shares the writer's wake-ups).
    pub async fn closed(&self) {
        loop {
            let notified = self.notify.notified();
            if self.lock().closing.is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Events dropped since the client last caught up.
    pub fn dropped_pending(&self) -> u64 {
        self.lock().dropped_since_caught_up
    }

    /// Bytes queued now, for tests and diagnostics.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Newest durable id handed to the writer so far.
    pub fn last_sent(&self) -> Option<EventId> {
        self.lock().last_sent
    }

    /// Next item to send, waiting until there is one. While it waits, the
    /// fan-out may write to the socket itself ([`Outbox::write_directly_to`]):
    /// the caller must have written everything it popped before.
    pub async fn pop(&self) -> Outgoing {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.next(true) {
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

    /// The next item if one is ready now (the writer drains a backlog with it).
    pub fn try_pop(&self) -> Option<Outgoing> {
        self.next(false)
    }

    /// The next item; with none, the writer counts as waiting if `waiting`.
    fn next(&self, waiting: bool) -> Option<Outgoing> {
        let mut inner = self.lock();
        let item = match inner.closing {
            Some((code, reason)) => Some(Outgoing::Close(code, reason)),
            None => self.take_front(&mut inner),
        };
        inner.writer_waiting = waiting && item.is_none();
        item
    }

    fn take_front(&self, inner: &mut Inner) -> Option<Outgoing> {
        loop {
            let slot = inner.main.slots.pop_front()?;
            inner.bytes = inner.bytes.saturating_sub(slot.cost());
            if inner.main.slots.is_empty() {
                inner.dropped_since_caught_up = 0;
                inner.dropped_bytes_since_caught_up = 0;
                // Caught up after a burst: give back what the backlog grew.
                inner.main.slots.shrink_to(KEPT_SLOTS);
            }
            if inner.room_wanted {
                inner.room_wanted = false;
                self.room.notify_waiters();
            }
            match slot {
                Slot::Control(text) => return Some(Outgoing::Control(text)),
                Slot::Lagged(n) => return Some(Outgoing::Lagged(n)),
                Slot::Close(code, reason) => return Some(Outgoing::Close(code, reason)),
                Slot::Flush(_) => return Some(Outgoing::Flush),
                Slot::Event { event, replay } => {
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

/// Removes every queued live event that `slot`'s event supersedes (same
/// conflatable type and entity), so that it can take a place at the back,
/// keeping id order. Returns the bytes freed, or None when nothing was removed.
fn conflate(lane: &mut Lane, slot: &Slot) -> Option<usize> {
    let Slot::Event { event, .. } = slot else { return None };
    let entity_ref = event.entity_ref.as_deref().filter(|_| is_conflatable(&event.event_type))?;
    let mut freed = 0;
    lane.slots.retain(|slot| match slot {
        Slot::Event { event: queued, replay: false }
            if queued.event_type == event.event_type && queued.entity_ref.as_deref() == Some(entity_ref) =>
        {
            freed += slot.cost();
            false
        }
        _ => true,
    });
    (freed > 0).then_some(freed)
}

#[cfg(test)]
mod tests;
