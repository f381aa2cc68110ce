//! Logs and traces: the `tracing` subscriber every binary installs, and, when
//! the standard `OTEL_*` variables ask for it, an OpenTelemetry exporter over
//! OTLP/HTTP. Also the W3C `traceparent` glue that carries one trace from a
//! webhook through the event's `trace` field and Redis to the gateway's
//! fan-out, so the gateway and the publisher never touch OpenTelemetry types.
//!
//! Only the spans named in [`EXPORTED_SPANS`] are exported; the per-connection
//! span (hours long, one per socket) exists for log lines only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The spans that make up a delivery's trace, from webhook to socket.
pub const EXPORTED_SPANS: &[&str] = &["webhook", "publish", "broker.receive", "fanout", "deliver"];

/// Set once an exporter is installed: the gateway's hot path checks it before
/// building any span, so a gateway without tracing pays one relaxed load per event.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Is an OpenTelemetry exporter installed in this process?
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ExportPlan {
    Off,
    Otlp,
    /// Asked for something this build cannot do; said once at start-up.
    Unsupported(String),
}

fn export_plan(var: impl Fn(&str) -> Option<String>) -> ExportPlan {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return ExportPlan::Off;
    }
    match set("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if v == "none" => return ExportPlan::Off,
        Some(v) if v != "otlp" => return ExportPlan::Unsupported(format!("OTEL_TRACES_EXPORTER={v} (only otlp)")),
        _ => {}
    }
    if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() {
        return ExportPlan::Off;
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref().map(str::trim) {
        None | Some("http/protobuf") | Some("http/json") => ExportPlan::Otlp,
        Some(other) => ExportPlan::Unsupported(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} (this build speaks http/protobuf and http/json; point it at the collector's 4318 port)"
        )),
    }
}

/// Flushes and stops the exporter when dropped (at the end of `main`, after
/// the runtime, so the last spans of a drain are sent).
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("exporting", &self.provider.is_some()).finish()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// Starts logging to stderr as `text` or `json` (`RUST_LOG` filters, default
/// `info`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
/// one) is set, trace export. `service` is the default `service.name`;
/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` override it.
///
/// Call it before the tokio runtime starts and keep the guard to the end.
pub fn init(service: &'static str, log_format: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // JSON lines name the span they were logged in and its parents, with their
    // fields: the connection id, and the trace id inside a traced span.
    let fmt = if log_format == "json" { fmt.json().with_current_span(true).with_span_list(true).boxed() } else { fmt.boxed() };
    let plan = export_plan(|name| std::env::var(name).ok());
    let (provider, otel) = match &plan {
        ExportPlan::Otlp => match build_provider(service) {
            Ok(provider) => {
                let tracer = provider.tracer(service);
                let only_delivery_spans =
                    tracing_subscriber::filter::filter_fn(|meta| !meta.is_span() || EXPORTED_SPANS.contains(&meta.name()));
                let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_delivery_spans);
                (Some(provider), Some(layer))
            }
            Err(e) => {
                eprintln!("{service}: trace export disabled: {e}");
                (None, None)
            }
        },
        _ => (None, None),
    };
    let installed = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init().is_ok();
    if installed && provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    if let ExportPlan::Unsupported(what) = plan {
        tracing::warn!("trace export disabled: {what}");
    }
    Telemetry { provider: if installed { provider } else { None } }
}

fn build_provider(service: &'static str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // The exporter reads the endpoint, protocol, headers and timeout from the
    // standard variables itself; the provider reads the sampler and batch settings.
    let exporter = QuietExporter::new(opentelemetry_otlp::SpanExporter::builder().with_http().build()?);
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder().with_resource(resource.build()).with_batch_exporter(exporter).build())
}

/// How often an export that keeps failing is reported again.
const EXPORT_FAILURE_REPEAT: Duration = Duration::from_secs(300);

/// The OTLP exporter, reporting a collector outage once (and every five
/// minutes while it lasts) and its end, instead of the SDK's error line per
/// batch, which would repeat every few seconds for as long as it is down.
#[derive(Debug)]
struct QuietExporter {
    inner: opentelemetry_otlp::SpanExporter,
    health: std::sync::Mutex<ExportHealth>,
}

#[derive(Debug, Default)]
struct ExportHealth {
    failed_batches: u64,
    last_report: Option<std::time::Instant>,
}

impl QuietExporter {
    fn new(inner: opentelemetry_otlp::SpanExporter) -> Self {
        Self { inner, health: std::sync::Mutex::new(ExportHealth::default()) }
    }

    fn record(&self, result: &opentelemetry_sdk::error::OTelSdkResult) {
        let report = self.health.lock().unwrap_or_else(|p| p.into_inner()).note(result.is_ok(), std::time::Instant::now());
        match (report, result) {
            (Some(Report::Recovered(failed_batches)), _) => tracing::info!(failed_batches, "trace export works again"),
            (Some(Report::Failing(failed_batches)), Err(e)) => {
                tracing::warn!(error = %e, failed_batches, "trace export failing; spans are dropped until the collector answers")
            }
            _ => {}
        }
    }
}

/// What to say about an export's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    /// Failing, with this many batches lost so far.
    Failing(u64),
    /// Working again after this many lost batches.
    Recovered(u64),
}

impl ExportHealth {
    fn note(&mut self, ok: bool, now: std::time::Instant) -> Option<Report> {
        if ok {
            let lost = std::mem::take(self).failed_batches;
            return (lost > 0).then_some(Report::Recovered(lost));
        }
        self.failed_batches += 1;
        let due = self.last_report.is_none_or(|at| now.duration_since(at) >= EXPORT_FAILURE_REPEAT);
        due.then(|| {
            self.last_report = Some(now);
            Report::Failing(self.failed_batches)
        })
    }
}

impl opentelemetry_sdk::trace::SpanExporter for QuietExporter {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.record(&result);
        // Reported above; the SDK would log it again, once per batch.
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Makes `span` a child of the W3C `traceparent`, then writes its trace id
/// into the span's `trace_id` field (declare it `trace_id = tracing::field::Empty`)
/// so that log lines inside carry it. A malformed value is ignored: the span
/// starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if !tracing_enabled() {
        return;
    }
    if let Some(traceparent) = traceparent {
        let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    record_trace_id(span);
}

/// Writes the span's trace id into its `trace_id` field, if it is traced.
pub fn record_trace_id(span: &tracing::Span) {
    if !tracing_enabled() {
        return;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

/// The W3C `traceparent` naming `span` as the parent, for an event's `trace`
/// field; `None` when nothing is exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !tracing_enabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{EXPORT_FAILURE_REPEAT, ExportHealth, ExportPlan, Report, export_plan};

    fn plan(vars: &[(&str, &str)]) -> ExportPlan {
        export_plan(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn a_collector_outage_is_reported_once_every_five_minutes_and_its_end_once() {
        let mut health = ExportHealth::default();
        let t0 = std::time::Instant::now();
        assert_eq!(health.note(true, t0), None, "all well: nothing to say");
        assert_eq!(health.note(false, t0), Some(Report::Failing(1)));
        for n in 1..100 {
            assert_eq!(health.note(false, t0 + Duration::from_secs(n)), None, "not again within five minutes");
        }
        assert_eq!(health.note(false, t0 + EXPORT_FAILURE_REPEAT), Some(Report::Failing(101)));
        assert_eq!(health.note(true, t0 + EXPORT_FAILURE_REPEAT), Some(Report::Recovered(101)));
        assert_eq!(health.note(true, t0 + EXPORT_FAILURE_REPEAT), None);
        assert_eq!(health.note(false, t0 + EXPORT_FAILURE_REPEAT), Some(Report::Failing(1)), "a new outage is said at once");
    }

    #[test]
    fn the_standard_variables_decide_whether_traces_are_exported() {
        assert_eq!(plan(&[]), ExportPlan::Off, "nothing set");
        assert_eq!(plan(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]), ExportPlan::Otlp);
        assert_eq!(plan(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]), ExportPlan::Otlp);
        assert_eq!(plan(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]), ExportPlan::Off, "empty is unset");
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(plan(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]), ExportPlan::Off);
        assert_eq!(plan(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]), ExportPlan::Off);
        assert_eq!(plan(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]), ExportPlan::Otlp);
        assert!(matches!(plan(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]), ExportPlan::Unsupported(m) if m.contains("grpc")));
        assert!(matches!(plan(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]), ExportPlan::Unsupported(m) if m.contains("zipkin")));
    }
}
