//! The in-memory broker: one process, no Redis. It keeps the same promises as
//! the Redis layout (ids like stream entry ids, bounded history, latest state,
//! delivery in id order), so `tidings dev` behaves like production.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, ready};
use tidings_protocol::payloads::is_conflatable;
use tidings_protocol::{Event, EventId};

use crate::{Broker, BrokerError, DeliveryStore, HistoryPage, LatestEvent, MessageHandler, StoredEvent};

#[derive(Default)]
struct WorkspaceLog {
    events: VecDeque<StoredEvent>,
    last_id: EventId,
    /// Newest id trimmed away; `since` below it cannot be recovered.
    last_trimmed: Option<EventId>,
    /// entity_ref → event type → latest JSON.
    latest: BTreeMap<String, BTreeMap<String, Bytes>>,
}

#[derive(Default)]
struct State {
    logs: HashMap<String, WorkspaceLog>,
    subscribed: HashSet<String>,
    revoked: HashSet<String>,
    /// Webhook delivery keys and when they expire.
    deliveries: HashMap<String, std::time::Instant>,
    /// (source, key) → entity ref.
    links: HashMap<(String, String), String>,
}

/// An in-process broker with bounded history per workspace.
pub struct MemoryBroker {
    history_size: usize,
    /// A std mutex: every critical section is short and never awaits. Delivery
    /// happens while it is held so that delivery order equals id order.
    state: Mutex<State>,
    handler: OnceLock<Arc<dyn MessageHandler>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").field("history_size", &self.history_size).finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl MemoryBroker {
    /// Keeps the newest `history_size` events of each workspace.
    pub fn new(history_size: usize) -> Self {
        Self { history_size: history_size.max(1), state: Mutex::new(State::default()), handler: OnceLock::new() }
    }

    /// Sets where subscribed messages go. One handler per broker (one gateway per
    /// process); a second call is ignored and returns false.
    pub fn set_handler(&self, handler: Arc<dyn MessageHandler>) -> bool {
        // In one process, "connected" holds from the start.
        handler.on_connection(true);
        self.handler.set(handler).is_ok()
    }

    /// Revokes a token id, as `SET tidings:revoked:<jti>` plus `PUBLISH
    /// tidings:revocations <jti>` do on Redis (no expiry: a dev process is short-lived).
    pub fn revoke_now(&self, jti: &str) {
        self.lock().revoked.insert(jti.to_string());
        if let Some(h) = self.handler.get() {
            h.on_revoked(jti);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deliver(&self, state: &State, workspace_id: &str, payload: Bytes) {
        if state.subscribed.contains(workspace_id)
            && let Some(h) = self.handler.get()
        {
            h.on_message(workspace_id, payload);
        }
    }

    fn publish_now(&self, event: Event) -> Event {
        let mut state = self.lock();
        self.publish_locked(&mut state, event)
    }

    fn publish_locked(&self, state: &mut State, mut event: Event) -> Event {
        let log = state.logs.entry(event.workspace_id.clone()).or_default();
        let id = log.last_id.next_after(now_ms());
        log.last_id = id;
        event.id = Some(id);
        let json = Bytes::from(event.to_json());
        log.events.push_back(StoredEvent { id, json: json.clone() });
        while log.events.len() > self.history_size {
            if let Some(old) = log.events.pop_front() {
                log.last_trimmed = Some(old.id);
            }
        }
        if let Some(entity_ref) = event.entity_ref.as_ref().filter(|_| is_conflatable(&event.event_type)) {
            log.latest.entry(entity_ref.clone()).or_default().insert(event.event_type.clone(), json.clone());
        }
        self.deliver(state, &event.workspace_id, json);
        event
    }

    fn history_now(&self, workspace_id: &str, since: Option<EventId>, limit: usize) -> HistoryPage {
        let state = self.lock();
        let Some(log) = state.logs.get(workspace_id) else {
            // An id of a workspace this broker never held came from an earlier
            // process (e.g. `tidings dev` restarted): what followed it is lost.
            return HistoryPage { recovered: since.is_none_or(|s| s == EventId::ZERO), ..HistoryPage::default() };
        };
        let last_id = log.events.back().map(|e| e.id);
        match since {
            None => {
                let skip = log.events.len().saturating_sub(limit);
                HistoryPage { events: log.events.iter().skip(skip).cloned().collect(), recovered: true, more: false, last_id }
            }
            Some(since) => {
                let start = log.events.partition_point(|e| e.id <= since);
                let events: Vec<StoredEvent> = log.events.iter().skip(start).take(limit).cloned().collect();
                let more = log.events.len() - start > events.len();
                let recovered = since <= log.last_id && log.last_trimmed.is_none_or(|trimmed| since >= trimmed);
                HistoryPage { events, recovered, more, last_id }
            }
        }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<Event, BrokerError>> {
        ready(Ok(self.publish_now(event))).boxed()
    }

    fn publish_live(&self, event: Event) -> BoxFuture<'_, Result<(), BrokerError>> {
        let state = self.lock();
        self.deliver(&state, &event.workspace_id, Bytes::from(event.to_json()));
        ready(Ok(())).boxed()
    }

    fn subscribe<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.lock().subscribed.insert(workspace_id.to_string());
        ready(Ok(())).boxed()
    }

    fn unsubscribe<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        let still_read = self.handler.get().is_some_and(|h| h.has_readers(workspace_id));
        if !still_read {
            self.lock().subscribed.remove(workspace_id);
        }
        ready(Ok(())).boxed()
    }

    fn history<'a>(
        &'a self,
        workspace_id: &'a str,
        since: Option<EventId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        ready(Ok(self.history_now(workspace_id, since, limit))).boxed()
    }

    fn latest<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<Vec<LatestEvent>, BrokerError>> {
        let state = self.lock();
        let latest = state
            .logs
            .get(workspace_id)
            .map(|log| {
                log.latest
                    .iter()
                    .flat_map(|(entity_ref, by_type)| {
                        by_type.iter().map(move |(event_type, json)| LatestEvent {
                            entity_ref: entity_ref.clone(),
                            event_type: event_type.clone(),
                            json: json.clone(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        ready(Ok(latest)).boxed()
    }

    fn is_ready(&self) -> BoxFuture<'_, bool> {
        ready(true).boxed()
    }

    fn is_revoked<'a>(&'a self, jti: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        ready(Ok(self.lock().revoked.contains(jti))).boxed()
    }

    fn revoke<'a>(&'a self, jti: &'a str, _exp: Option<u64>) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.revoke_now(jti);
        ready(Ok(())).boxed()
    }
}

impl DeliveryStore for MemoryBroker {
    fn publish_once<'a>(
        &'a self,
        claim: &'a crate::DeliveryClaim,
        events: Vec<Event>,
    ) -> BoxFuture<'a, Result<crate::PublishedOnce, BrokerError>> {
        if events.windows(2).any(|w| w[0].workspace_id != w[1].workspace_id) {
            return ready(Err(BrokerError::Protocol("the events of one delivery must share a workspace".into()))).boxed();
        }
        let now = std::time::Instant::now();
        let mut state = self.lock();
        state.deliveries.retain(|_, expires| *expires > now);
        let key = tidings_protocol::keys::dedup(&claim.source, &claim.delivery);
        if state.deliveries.contains_key(&key) {
            return ready(Ok(crate::PublishedOnce::Duplicate)).boxed();
        }
        state.deliveries.insert(key, now + std::time::Duration::from_secs(crate::DEDUP_TTL_SECS));
        let stored = events.into_iter().map(|e| self.publish_locked(&mut state, e)).collect();
        ready(Ok(crate::PublishedOnce::Published(stored))).boxed()
    }

    fn link_entity<'a>(&'a self, source: &'a str, key: &'a str, entity_ref: Option<&'a str>) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut state = self.lock();
        let k = (source.to_string(), key.to_string());
        match entity_ref {
            Some(r) => state.links.insert(k, r.to_string()),
            None => state.links.remove(&k),
        };
        ready(Ok(())).boxed()
    }

    fn linked_entity<'a>(&'a self, source: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<String>, BrokerError>> {
        ready(Ok(self.lock().links.get(&(source.to_string(), key.to_string())).cloned())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, Bytes)>>);

    impl MessageHandler for Collect {
        fn on_message(&self, workspace_id: &str, payload: Bytes) {
            self.0.lock().unwrap().push((workspace_id.to_string(), payload));
        }

        fn workspaces(&self) -> Vec<String> {
            Vec::new()
        }
    }

    fn event(ws: &str, n: u64) -> Event {
        Event::new("t", ws, json!({ "n": n }))
    }

    #[tokio::test]
    async fn ids_increase_and_only_subscribed_workspaces_are_delivered() {
        let broker = MemoryBroker::new(100);
        let seen = Arc::new(Collect::default());
        assert!(broker.set_handler(seen.clone()));
        broker.subscribe("a").await.unwrap();
        let mut last = EventId::ZERO;
        for n in 0..50 {
            let e = broker.publish(event(if n % 2 == 0 { "a" } else { "b" }, n)).await.unwrap();
            let id = e.id.unwrap();
            if n % 2 == 0 {
                assert!(id > last);
                last = id;
            }
        }
        let seen = seen.0.lock().unwrap();
        assert_eq!(seen.len(), 25);
        assert!(seen.iter().all(|(ws, json)| ws == "a" && serde_json::from_slice::<Event>(json).unwrap().workspace_id == "a"));
    }

    #[tokio::test]
    async fn history_pages_and_detects_trimming() {
        let broker = MemoryBroker::new(5);
        let mut ids = Vec::new();
        for n in 0..8 {
            ids.push(broker.publish(event("w", n)).await.unwrap().id.unwrap());
        }
        let page = broker.history("w", None, 3).await.unwrap();
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[5..8]);
        assert!(page.recovered);

        let page = broker.history("w", Some(ids[2]), 2).await.unwrap();
        assert!(page.recovered, "ids[2] was the last trimmed, everything after it is kept");
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[3..5]);
        assert!(page.more);

        let page = broker.history("w", Some(ids[1]), 100).await.unwrap();
        assert!(!page.recovered, "ids[2] after ids[1] is gone");
        assert_eq!(page.events.len(), 5);
        assert!(!page.more);
        assert_eq!(page.last_id, Some(ids[7]));

        let empty = broker.history("nobody", Some(EventId::new(1, 0)), 10).await.unwrap();
        assert!(!empty.recovered && empty.events.is_empty(), "an id from a log this broker never held cannot be recovered");
        assert!(broker.history("nobody", Some(EventId::ZERO), 10).await.unwrap().recovered);
        let ahead = broker.history("w", Some(EventId::new(ids[7].ms + 1, 0)), 10).await.unwrap();
        assert!(!ahead.recovered, "an id newer than anything stored was lost");
    }

    #[tokio::test]
    async fn latest_keeps_the_newest_metrics_and_health_per_entity() {
        let broker = MemoryBroker::new(10);
        for cpu in [1.0, 2.0] {
            let mut e = Event::new("metrics_update", "w", json!({"metrics": {"cpu": cpu, "memory": 1.0}}));
            e.entity_ref = Some("host:default/a".into());
            broker.publish(e).await.unwrap();
        }
        let mut h = Event::new("health_update", "w", json!({"health": {"level": "info", "message": "ok", "timestamp": "t"}}));
        h.entity_ref = Some("host:default/a".into());
        broker.publish(h).await.unwrap();
        let mut other = Event::new("deployment_update", "w", json!({}));
        other.entity_ref = Some("host:default/a".into());
        broker.publish(other).await.unwrap();

        let latest = broker.latest("w").await.unwrap();
        assert_eq!(latest.len(), 2);
        let metrics: Event = serde_json::from_slice(&latest.iter().find(|l| l.event_type == "metrics_update").unwrap().json).unwrap();
        assert_eq!(metrics.data["metrics"]["cpu"], 2.0);
    }

    #[tokio::test]
    async fn live_events_are_delivered_but_not_stored() {
        let broker = MemoryBroker::new(10);
        let seen = Arc::new(Collect::default());
        broker.set_handler(seen.clone());
        broker.subscribe("w").await.unwrap();
        broker.publish_live(event("w", 1)).await.unwrap();
        assert_eq!(seen.0.lock().unwrap().len(), 1);
        assert!(broker.history("w", None, 10).await.unwrap().events.is_empty());
        broker.unsubscribe("w").await.unwrap();
        broker.publish_live(event("w", 2)).await.unwrap();
        assert_eq!(seen.0.lock().unwrap().len(), 1, "nothing after unsubscribe");
    }
}
