//! What the servers under test cost: CPU time and resident memory of their
//! processes, read from `/proc/<pid>` (Linux), summed over the given pids.

/// User + system CPU seconds of `pids` so far.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|pid| process_cpu(*pid)).sum()
}

/// Resident set of `pids` now, in bytes.
pub fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|pid| process_rss(*pid)).sum()
}

fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// USER_HZ: 100 on every Linux this runs on (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    std::env::var("TIDINGS_BENCH_CLK_TCK").ok().and_then(|v| v.parse().ok()).unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_and_memory() {
        let me = [std::process::id()];
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(&me) >= 0.0);
        assert!(rss_bytes(&me) > 1024 * 1024);
        assert_eq!(rss_bytes(&[u32::MAX]), 0, "a missing process counts nothing");
    }
}
