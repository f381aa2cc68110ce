//! The gateway's Prometheus metric families (SPEC §6).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Registered once per process; cheap to clone handles out of.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    pub connections_open: IntGaugeVec,
    pub connections_accepted: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub messages_delivered: IntCounterVec,
    pub events_dropped: IntCounterVec,
    pub events_conflated: IntCounterVec,
    pub delivery_latency: Histogram,
    pub broker_messages: IntCounter,
    pub broker_reconnects: IntCounter,
    pub broker_connected: IntGauge,
    pub subscribed_workspaces: IntGauge,
    pub client_messages: IntCounterVec,
}

/// Close codes a gateway sends (SPEC §3.4), listed at zero from the start.
const CLOSE_CODES: [u16; 12] = {
    use tidings_protocol::codes::close::*;
    [
        NORMAL,
        PROTOCOL_ERROR,
        INVALID_PAYLOAD,
        POLICY,
        MESSAGE_TOO_BIG,
        INTERNAL,
        DRAINING,
        TRY_AGAIN_LATER,
        TOKEN_EXPIRED,
        FORBIDDEN,
        RATE_LIMITED,
        TOO_SLOW,
    ]
};

/// The `type` label values of `tidings_client_messages_total`.
const CLIENT_MESSAGE_KINDS: [&str; 11] = [
    "subscribe",
    "unsubscribe",
    "update_filter",
    "ping",
    "request_metrics",
    "request_history",
    "auth",
    "binary",
    "rate_limited",
    "unknown",
    "invalid",
];

impl GatewayMetrics {
    /// Registers every family, with the common label values at zero so that
    /// dashboards and alerts see the series before the first event.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::register_families(registry)?;
        for transport in ["websocket", "sse"] {
            metrics.connections_open.with_label_values(&[transport]);
            metrics.connections_accepted.with_label_values(&[transport]);
            metrics.messages_delivered.with_label_values(&[transport]);
        }
        for reason in ["bad_request", "unauthorized", "forbidden", "max_connections_per_user", "unavailable", "auth_message"] {
            metrics.connections_refused.with_label_values(&[reason]);
        }
        for reason in ["slow_client", "invalid"] {
            metrics.events_dropped.with_label_values(&[reason]);
        }
        metrics.events_conflated.with_label_values(&["slow_client"]);
        for code in CLOSE_CODES {
            metrics.connections_closed.with_label_values(&[&code.to_string()]);
        }
        for kind in CLIENT_MESSAGE_KINDS {
            metrics.client_messages.with_label_values(&[kind]);
        }
        Ok(metrics)
    }

    fn register_families(registry: &Registry) -> prometheus::Result<Self> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> prometheus::Result<C> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let counter_vec = |name: &str, help: &str, label: &str| IntCounterVec::new(Opts::new(name, help), &[label]);
        Ok(Self {
            connections_open: reg(
                registry,
                IntGaugeVec::new(Opts::new("tidings_connections_open", "Open client connections."), &["transport"])?,
            )?,
            connections_accepted: reg(
                registry,
                counter_vec("tidings_connections_accepted_total", "Client connections accepted.", "transport")?,
            )?,
            connections_refused: reg(
                registry,
                counter_vec("tidings_connections_refused_total", "Client connections refused, by reason.", "reason")?,
            )?,
            connections_closed: reg(
                registry,
                counter_vec("tidings_connections_closed_total", "Client connections closed by the gateway, by close code.", "code")?,
            )?,
            messages_delivered: reg(registry, counter_vec("tidings_messages_delivered_total", "Events written to clients.", "transport")?)?,
            events_dropped: reg(registry, counter_vec("tidings_events_dropped_total", "Events not delivered, by reason.", "reason")?)?,
            events_conflated: reg(
                registry,
                counter_vec(
                    "tidings_events_conflated_total",
                    "Queued events replaced by a newer one of the same entity, by reason.",
                    "reason",
                )?,
            )?,
            delivery_latency: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("tidings_delivery_latency_seconds", "From the event timestamp to the write to the client.")
                        .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                )?,
            )?,
            broker_messages: reg(
                registry,
                IntCounter::new("tidings_broker_messages_received_total", "Messages received from the broker.")?,
            )?,
            broker_reconnects: reg(registry, IntCounter::new("tidings_broker_reconnects_total", "Reconnections to the broker.")?)?,
            broker_connected: reg(
                registry,
                IntGauge::new("tidings_broker_connected", "1 while the broker's pub/sub connection is up, else 0.")?,
            )?,
            subscribed_workspaces: reg(
                registry,
                IntGauge::new(
                    "tidings_subscribed_workspaces",
                    "Workspaces with local readers; the broker subscriptions follow them (unsubscribing a few seconds after the last reader leaves).",
                )?,
            )?,
            client_messages: reg(
                registry,
                counter_vec("tidings_client_messages_total", "Messages received from clients, by type.", "type")?,
            )?,
        })
    }
}
