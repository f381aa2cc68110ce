//! The benchmark's events: built with a sequence number and a microsecond
//! timestamp, published by bare `PUBLISH` on the workspace channel (SPEC §4's
//! live-only path, the same for Tidings and every peer), and scanned on
//! receipt for exactly those two fields without a JSON parser.

use std::time::{SystemTime, UNIX_EPOCH};

/// The JSON of event `seq` of `workspace`, padded to about `size` bytes.
pub fn event_json(workspace: &str, seq: u64, size: usize) -> String {
    let now = time::OffsetDateTime::now_utc();
    let timestamp = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    );
    let base = format!(r#"{{"type":"bench","workspace_id":"{workspace}","timestamp":"{timestamp}","data":{{"seq":{seq},"pad":""}}}}"#);
    let pad = size.saturating_sub(base.len());
    format!(
        r#"{{"type":"bench","workspace_id":"{workspace}","timestamp":"{timestamp}","data":{{"seq":{seq},"pad":"{}"}}}}"#,
        "x".repeat(pad)
    )
}

/// Every `"seq":N` in a frame (one event, or a `batch` of them).
pub fn seqs(frame: &[u8], mut each: impl FnMut(u64)) {
    const KEY: &[u8] = b"\"seq\":";
    let mut i = 0;
    while let Some(at) = find(&frame[i..], KEY) {
        let mut j = i + at + KEY.len();
        let mut n = 0u64;
        let start = j;
        while j < frame.len() && frame[j].is_ascii_digit() {
            n = n * 10 + u64::from(frame[j] - b'0');
            j += 1;
        }
        if j > start {
            each(n);
        }
        i = j;
    }
}

/// Microseconds since the epoch of the frame's first `"timestamp":"…"`.
pub fn first_timestamp_micros(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"timestamp\":\"";
    let at = find(frame, KEY)? + KEY.len();
    let end = at + frame[at..].iter().position(|b| *b == b'"')?;
    let text = std::str::from_utf8(&frame[at..end]).ok()?;
    let t = tidings_protocol::timestamp::parse_rfc3339(text)?;
    u64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `"id":"<ms>-<seq>"` of a frame's first event, as a comparable pair.
pub fn first_id(frame: &[u8]) -> Option<(u64, u64)> {
    const KEY: &[u8] = b"\"id\":\"";
    let at = find(frame, KEY)? + KEY.len();
    let end = at + frame[at..].iter().position(|b| *b == b'"')?;
    let (ms, seq) = std::str::from_utf8(&frame[at..end]).ok()?.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_through_the_scanners() {
        let e = event_json("w1", 42, 200);
        assert!((195..=205).contains(&e.len()), "{}", e.len());
        let mut got = Vec::new();
        seqs(e.as_bytes(), |n| got.push(n));
        assert_eq!(got, [42]);
        let ts = first_timestamp_micros(e.as_bytes()).expect("a timestamp");
        assert!(now_micros().abs_diff(ts) < 5_000_000);
        let batch = format!(r#"{{"type":"batch","events":[{},{}]}}"#, event_json("w", 1, 0), event_json("w", 2, 0));
        let mut got = Vec::new();
        seqs(batch.as_bytes(), |n| got.push(n));
        assert_eq!(got, [1, 2]);
        serde_json::from_str::<serde_json::Value>(&e).expect("valid JSON");
        assert_eq!(first_id(br#"{"type":"t","id":"1764000000000-7","data":{}}"#), Some((1_764_000_000_000, 7)));
        assert_eq!(first_id(e.as_bytes()), None, "live-only events have no id");
    }
}
