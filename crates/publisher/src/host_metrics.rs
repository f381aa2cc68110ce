//! Host metrics (sysinfo): cpu %, memory %, storage per mount, process count and
//! bytes per second per network interface, published as `metrics_update` for
//! `host:default/<hostname>` every interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sysinfo::{Disks, Networks, ProcessesToUpdate, System};
use tidings_broker::Broker;
use tidings_protocol::Event;
use tidings_protocol::payloads::{HostNetwork, HostStorage, Metrics, MetricsUpdate};
use tokio_util::sync::CancellationToken;

/// Where and how often host metrics are published: the options of
/// `tidings-publisher` and `tidings dev`, flattened into each.
#[derive(Debug, Clone, clap::Args)]
pub struct HostMetricsArgs {
    /// Workspace that receives host metrics (tidings-publisher: unset = host
    /// metrics off; tidings dev: `dev` when unset).
    #[arg(long, env = "TIDINGS_METRICS_WORKSPACE")]
    pub metrics_workspace: Option<String>,
    /// Host metrics period in milliseconds.
    #[arg(long, env = "TIDINGS_METRICS_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub metrics_interval_ms: u64,
}

impl HostMetricsArgs {
    /// The workspace, or `default` when none is set; an error names the option.
    pub fn workspace_or(&self, default: Option<&str>) -> Result<Option<String>, String> {
        let Some(workspace) = self.metrics_workspace.as_deref().or(default) else { return Ok(None) };
        tidings_protocol::event::validate_workspace_id(workspace).map_err(|e| format!("TIDINGS_METRICS_WORKSPACE: {e}"))?;
        Ok(Some(workspace.to_string()))
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.metrics_interval_ms)
    }
}

/// Keeps the sysinfo handles between samples (CPU usage and network rates are
/// differences between two refreshes).
pub struct HostSampler {
    system: System,
    disks: Disks,
    networks: Networks,
    last: Instant,
    hostname: String,
}

impl std::fmt::Debug for HostSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSampler").field("hostname", &self.hostname).finish_non_exhaustive()
    }
}

/// Why host metrics cannot be read here.
#[derive(Debug, thiserror::Error)]
#[error("host metrics unavailable: {0}")]
pub struct SamplerError(String);

impl HostSampler {
    pub fn new() -> Result<Self, SamplerError> {
        let err = |e: sysinfo::Error| SamplerError(e.to_string());
        let mut system = System::new().map_err(err)?;
        system.refresh_cpu_usage();
        system.refresh_memory();
        let hostname = System::host_name().ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into());
        Ok(Self {
            system,
            disks: Disks::new_with_refreshed_list().map_err(err)?,
            networks: Networks::new_with_refreshed_list().map_err(err)?,
            last: Instant::now(),
            hostname,
        })
    }

    /// `host:default/<hostname>`, lower-cased as entity refs are stored.
    pub fn entity_ref(&self) -> String {
        format!("host:default/{}", self.hostname.to_lowercase())
    }

    /// Reads every figure, rates over the time since the previous sample.
    pub fn sample(&mut self) -> MetricsUpdate {
        let elapsed = self.last.elapsed().as_secs_f64().max(0.001);
        self.last = Instant::now();
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let processes = self.system.refresh_processes(ProcessesToUpdate::All, true) as u64;
        self.disks.refresh(true);
        self.networks.refresh(true);

        let total = self.system.total_memory().max(1) as f64;
        let memory = 100.0 * self.system.used_memory() as f64 / total;
        let storage: Vec<HostStorage> = self
            .disks
            .iter()
            .filter(|d| d.total_space() > 0)
            .map(|d| {
                let total = d.total_space();
                let used = total.saturating_sub(d.available_space());
                HostStorage {
                    mount: d.mount_point().to_string_lossy().into_owned(),
                    total_bytes: total,
                    used_bytes: used,
                    used_percent: round2(100.0 * used as f64 / total as f64),
                }
            })
            .collect();
        let mut network: Vec<HostNetwork> = self
            .networks
            .iter()
            .map(|(name, data)| HostNetwork {
                interface: name.to_string_lossy().into_owned(),
                rx_bytes_per_sec: round2(data.received() as f64 / elapsed),
                tx_bytes_per_sec: round2(data.transmitted() as f64 / elapsed),
            })
            .collect();
        network.sort_by(|a, b| a.interface.cmp(&b.interface));
        MetricsUpdate {
            metrics: Metrics {
                cpu: round2(f64::from(self.system.global_cpu_usage())),
                memory: round2(memory),
                requests: None,
                errors: None,
                response_time: None,
                storage: serde_json::to_value(storage).ok(),
                processes: Some(processes),
                network: serde_json::to_value(network).ok(),
            },
        }
    }

    /// One `metrics_update` event for `workspace_id`.
    pub fn event(&mut self, workspace_id: &str) -> Event {
        let data = serde_json::to_value(self.sample()).unwrap_or_default();
        let mut event = Event::new("metrics_update", workspace_id, data);
        event.entity_ref = Some(self.entity_ref());
        event.timestamp = Some(tidings_protocol::timestamp::now_rfc3339());
        event
    }
}

fn round2(x: f64) -> f64 {
    if x.is_finite() { (x * 100.0).round() / 100.0 } else { 0.0 }
}

/// A source of host-metrics events. Sampling blocks (sysinfo reads /proc and
/// /sys), so [`run_with`] calls it on the blocking pool, never on a runtime worker.
pub trait Sample: Send + 'static {
    fn sample_event(&mut self, workspace_id: &str) -> Event;
}

impl Sample for HostSampler {
    fn sample_event(&mut self, workspace_id: &str) -> Event {
        self.event(workspace_id)
    }
}

/// Publishes host metrics to `workspace_id` every `interval` until `stop`.
pub async fn run(broker: Arc<dyn Broker>, workspace_id: String, interval: Duration, stop: CancellationToken) {
    // Building the sampler lists disks and interfaces: blocking as well.
    let sampler = match tokio::task::spawn_blocking(HostSampler::new).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "host metrics disabled");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "host metrics disabled: the sampler could not be built");
            return;
        }
    };
    run_with(sampler, broker, workspace_id, interval, stop).await;
}

/// The loop of [`run`] over any [`Sample`]; each sample runs on the blocking pool.
pub async fn run_with(
    mut sampler: impl Sample,
    broker: Arc<dyn Broker>,
    workspace_id: String,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first sample needs a previous CPU reading
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let workspace = workspace_id.clone();
        let sampled = tokio::task::spawn_blocking(move || {
            let event = sampler.sample_event(&workspace);
            (sampler, event)
        })
        .await;
        let event = match sampled {
            Ok((back, event)) => {
                sampler = back;
                event
            }
            Err(e) => {
                tracing::warn!(error = %e, "host metrics sampling failed; host metrics stop");
                return;
            }
        };
        if let Err(e) = broker.publish(event).await {
            tracing::warn!(error = %e, "publishing host metrics failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_a_valid_metrics_update_of_this_host() {
        let mut sampler = HostSampler::new().unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let mut event = sampler.event("dev");
        event.validate().unwrap();
        let m = &event.data["metrics"];
        assert!((0.0..=100.0).contains(&m["cpu"].as_f64().unwrap()));
        assert!(m["memory"].as_f64().unwrap() > 0.0, "a running machine uses some memory");
        assert!(m["processes"].as_u64().unwrap() > 0, "at least this test runs");
        assert!(m["storage"].as_array().unwrap().iter().any(|d| d["total_bytes"].as_u64().unwrap() > 0));
        assert!(m["network"].as_array().unwrap().iter().any(|n| n["interface"] == "lo"), "loopback is always there on Linux");
        assert!(event.entity_ref.unwrap().starts_with("host:default/"));
    }

    /// A sampler as slow as sysinfo on a busy host, that counts its samples.
    struct Slow(Arc<std::sync::atomic::AtomicUsize>);

    impl Sample for Slow {
        fn sample_event(&mut self, workspace_id: &str) -> Event {
            std::thread::sleep(Duration::from_millis(600));
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Event::new("metrics_update", workspace_id, serde_json::json!({"metrics": {"cpu": 1.0, "memory": 1.0}}))
        }
    }

    /// On a one-thread runtime, a sample that blocks must not stall other tasks:
    /// a 10 ms ticker keeps ticking while two slow samples run.
    #[tokio::test(flavor = "current_thread")]
    async fn sampling_runs_off_the_runtime_worker() {
        let samples = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let broker = Arc::new(tidings_broker::MemoryBroker::new(10));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_with(Slow(samples.clone()), broker, "dev".into(), Duration::from_millis(100), stop.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        let mut last = std::time::Instant::now();
        let mut worst = Duration::ZERO;
        while samples.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "two samples within the deadline");
            ticker.tick().await;
            worst = worst.max(last.elapsed());
            last = std::time::Instant::now();
        }
        stop.cancel();
        task.await.unwrap();
        assert!(worst < Duration::from_millis(300), "the runtime stalled {worst:?} while sampling");
    }
}
