//! Results: one JSON line each (for scripts and BENCHMARKS.md) and a human line.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Latency percentiles in milliseconds.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| (h.value_at_quantile(q) as f64 / 1000.0 * 100.0).round() / 100.0;
    if h.is_empty() {
        return json!(null);
    }
    json!({ "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": (h.max() as f64 / 10.0).round() / 100.0, "samples": h.len() })
}

pub fn emit(result: &Value) {
    println!("{result}");
    eprintln!("{}", human(result));
}

fn human(r: &Value) -> String {
    let mut parts = Vec::new();
    if let Value::Object(map) = r {
        for (k, v) in map {
            match v {
                Value::Object(inner) => {
                    let inner: Vec<String> = inner.iter().map(|(k2, v2)| format!("{k2}={v2}")).collect();
                    parts.push(format!("{k}[{}]", inner.join(" ")));
                }
                _ => parts.push(format!("{k}={v}")),
            }
        }
    }
    parts.join("  ")
}
