//! A client that stops reading while 20,000 events are published (scenario
//! 5): the gateway's memory stays bounded, the slow client is told (`lagged`,
//! then 4009), and a healthy client of the same workspace keeps its latency.

use std::time::Duration;

use futures_util::StreamExt;
use tidings_chaos::{Publishing, Recorder, Stack, WAIT, client, percentile, rss_bytes, stream_ids, token};
use tidings_testkit::{TestRedis, eventually};
use tokio_tungstenite::tungstenite::Message;

const EVENTS: usize = 20_000;
/// Filler per event: 20,000 of them are ~40 MB, ten times the client queue.
const PAD: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_a_client_that_stops_reading_is_cut_off_without_hurting_its_neighbour() {
    let _quiet = tidings_chaos::alone().await;
    let stack = Stack::start(TestRedis::start());
    let healthy = Recorder::start(client(&stack.gateway_ws(0), "s5")).await;
    let url = format!("{}/ws?token={}", stack.gateway_ws(0), token("s5"));
    let (mut slow, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Its `connected` is read; from here on nothing is, and its socket fills.
    let first = tokio::time::timeout(WAIT, slow.next()).await.unwrap().unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("connected"));
    let pid = stack.gateway_pid(0).unwrap();
    let rss_before = rss_bytes(pid);

    let publishing = Publishing::padded(&stack.redis.url(), "s5", Duration::from_micros(500), PAD);
    let closed_4009 = || async { tidings_chaos::metric(&stack.gateway_url(0), r#"tidings_connections_closed_total{code="4009"}"#).await };
    let mut rss_peak = rss_before;
    tidings_testkit::retry("the slow client closed 4009", Duration::from_secs(120), || {
        rss_peak = rss_peak.max(rss_bytes(pid));
        async { (closed_4009().await == Some(1.0)).then_some(()) }
    })
    .await;
    // Cut off: from here it reads again, as a frozen tab that wakes up would,
    // and finds what was left for it: events, `lagged`, then the 4009.
    let slow_reader = tokio::spawn(async move {
        let (mut frames, mut lagged, mut close) = (0, false, None);
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, slow.next()).await {
            frames += 1;
            match frame {
                Message::Text(text) if text.contains(r#""type":"lagged""#) => lagged = true,
                Message::Close(frame) => {
                    close = frame.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
        (frames, lagged, close)
    });
    eventually("20,000 events published", Duration::from_secs(120), || {
        rss_peak = rss_peak.max(rss_bytes(pid));
        stack.redis.cli(&["XLEN", &tidings_protocol::keys::WorkspaceKeys::new("s5", false).events]).parse::<usize>().unwrap_or(0) >= EVENTS
    })
    .await;
    publishing.stop().await;
    // History keeps the newest 10,000; the healthy client got everything as it came.
    let kept = stream_ids(&stack.redis, "s5");
    let seen = healthy.wait_for_all(&kept).await;
    rss_peak = rss_peak.max(rss_bytes(pid));
    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!("s5: gateway RSS {} → peak {} MiB while {} events went by", rss_before >> 20, rss_peak >> 20, seen.ids.len());
    // One client queue (4 MiB) plus the writer's buffers, not 40 MB of events.
    assert!(growth < 24 << 20, "gateway memory bounded: grew {} MiB", growth >> 20);

    let mut latencies = seen.latencies.clone();
    let p99 = percentile(&mut latencies, 99.0);
    eprintln!("s5: healthy client p50 {:?} p99 {p99:?} over {} events", percentile(&mut latencies, 50.0), latencies.len());
    assert!(p99 < Duration::from_millis(50), "a slow neighbour does not slow the healthy client: p99 {p99:?}");
    assert!(seen.outages.is_empty() && seen.lagged == 0, "the healthy client was never cut off nor lagged");

    let (frames, lagged, close) = slow_reader.await.unwrap();
    eprintln!("s5: the slow client read {frames} frames, lagged {lagged}, close {close:?}");
    assert_eq!(close, Some(4009), "the slow client learns why it was cut off (lagged seen: {lagged})");
    assert!(frames < EVENTS, "it did not get everything published meanwhile");
    healthy.close().await;
}
