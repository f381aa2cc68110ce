//! The spans of one traced event's way through the gateway: `broker.receive`
//! (a child of the publisher's span, from the event's `trace` field), then
//! `fanout`, which stays open until the last recipient's copy is written or
//! dropped, then `deliver` for the first few recipients' socket writes.
//!
//! Nothing here runs unless trace export is on and the event carries a
//! `traceparent`: an untraced event costs one relaxed load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tracing::Span;
use tracing::field::Empty;

/// `deliver` spans per event: enough to see a delivery's timing in a trace
/// without one span per socket for an event that reaches 100,000 of them
/// (`fanout` carries the recipient count).
pub const DELIVER_SPANS_PER_EVENT: u32 = 8;

/// The fan-out span of one event, shared by every queued copy of it.
#[derive(Debug)]
pub struct DeliveryTrace {
    fanout: Span,
    deliver_budget: AtomicU32,
}

impl DeliveryTrace {
    /// A `deliver` span for this recipient's write, while the budget lasts.
    pub fn deliver_span(&self, connection_id: &str) -> Option<Span> {
        self.deliver_budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).ok()?;
        Some(tracing::info_span!(parent: &self.fanout, "deliver", connection_id))
    }
}

/// The spans of a received event that carries `traceparent`, when traces are
/// exported: `broker.receive` (enter it for the fan-out) and the
/// [`DeliveryTrace`] its copies carry.
pub fn received(workspace_id: &str, event_type: &str, traceparent: Option<&str>) -> Option<(Span, Arc<DeliveryTrace>)> {
    let traceparent = traceparent?;
    if !tidings_process::telemetry::tracing_enabled() {
        return None;
    }
    let receive = tracing::info_span!("broker.receive", workspace_id, event_type, trace_id = Empty);
    tidings_process::telemetry::continue_trace(&receive, Some(traceparent));
    let fanout = tracing::info_span!(parent: &receive, "fanout", workspace_id, recipients = Empty, trace_id = Empty);
    Some((receive, Arc::new(DeliveryTrace { fanout, deliver_budget: AtomicU32::new(DELIVER_SPANS_PER_EVENT) })))
}

impl DeliveryTrace {
    /// Records how many connections the event was queued for.
    pub fn record_recipients(&self, recipients: usize) {
        self.fanout.record("recipients", recipients);
    }
}
