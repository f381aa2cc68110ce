//! The publisher's Prometheus metric families (SPEC §6).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use tidings_protocol::payloads::WELL_KNOWN_TYPES;

/// The `type` label of events whose type is not one of SPEC §2's well-known ones.
pub const OTHER_TYPE: &str = "other";

#[derive(Debug, Clone)]
pub struct PublisherMetrics {
    /// By type, bounded: count through [`PublisherMetrics::count_published`].
    events_published: IntCounterVec,
    pub publish_latency: Histogram,
    pub publish_requests: IntCounterVec,
    pub webhooks: IntCounterVec,
}

/// The `result` label values of `tidings_webhooks_total`.
const WEBHOOK_RESULTS: [&str; 8] = ["published", "duplicate", "ping", "ignored", "no_route", "invalid", "unauthorized", "unavailable"];

impl PublisherMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let events_published = IntCounterVec::new(Opts::new("tidings_events_published_total", "Events published, by type."), &["type"])?;
        let publish_latency = Histogram::with_opts(
            HistogramOpts::new("tidings_publish_duration_seconds", "Time to store and publish one event on the broker.")
                .buckets(vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )?;
        let publish_requests =
            IntCounterVec::new(Opts::new("tidings_publish_requests_total", "HTTP publish requests, by result."), &["result"])?;
        registry.register(Box::new(events_published.clone()))?;
        registry.register(Box::new(publish_latency.clone()))?;
        registry.register(Box::new(publish_requests.clone()))?;
        let webhooks =
            IntCounterVec::new(Opts::new("tidings_webhooks_total", "Webhook deliveries, by source and result."), &["source", "result"])?;
        registry.register(Box::new(webhooks.clone()))?;
        // Every series at zero from the start, so dashboards and alerts see them.
        for event_type in WELL_KNOWN_TYPES.iter().chain([&OTHER_TYPE]) {
            events_published.with_label_values(&[event_type]);
        }
        for result in ["accepted", "unauthorized", "invalid", "unavailable"] {
            publish_requests.with_label_values(&[result]);
        }
        for source in ["github", "gitlab", "backstage", "argocd"] {
            for result in WEBHOOK_RESULTS {
                webhooks.with_label_values(&[source, result]);
            }
        }
        Ok(Self { events_published, publish_latency, publish_requests, webhooks })
    }

    /// Counts one published event. Clients choose event types freely, so the
    /// label is the type only when it is well-known, else `other`: one series
    /// per type of the catalogue, never one per client whim.
    pub fn count_published(&self, event_type: &str) {
        let label = if WELL_KNOWN_TYPES.contains(&event_type) { event_type } else { OTHER_TYPE };
        self.events_published.with_label_values(&[label]).inc();
    }
}
