//! Shared by the publisher's integration tests: a subscriber that records what
//! was published, and the publish API served on a real port-0 listener.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use tidings_broker::{Broker, DeliveryStore, MessageHandler};
use tidings_publisher::{Publisher, PublisherConfig, PublisherMetrics, Readiness};

/// Every message published on the workspaces it is subscribed to.
#[derive(Default)]
pub struct Seen(pub Mutex<Vec<Value>>);

impl MessageHandler for Seen {
    fn on_message(&self, _: &str, payload: Bytes) {
        self.0.lock().unwrap().push(serde_json::from_slice(&payload).unwrap());
    }
    // The tests subscribe by hand and never lose their broker connection, so
    // there is nothing for a reconnect to re-derive.
    fn workspaces(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Serves the publish API and webhooks of `config` on `store`; returns the base URL.
pub async fn start<S: Broker + DeliveryStore>(config: PublisherConfig, store: Arc<S>) -> String {
    start_with(config, store.clone(), store).await
}

/// [`start`] with a delivery store of its own (a test double).
pub async fn start_with(config: PublisherConfig, broker: Arc<dyn Broker>, deliveries: Arc<dyn DeliveryStore>) -> String {
    let metrics = PublisherMetrics::register(&prometheus::Registry::new()).unwrap();
    let app = tidings_publisher::api_router(Publisher::with_stores(config, broker, deliveries, metrics, Readiness::Broker));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}
