//! Graceful shutdown: readyz 503, new connections refused, live ones closed 1012.

use crate::support::*;

#[tokio::test]
async fn shutdown_closes_every_connection_with_1012_and_returns() {
    let mut gw = TestGateway::start_with(|c| c.drain = std::time::Duration::from_millis(500)).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(gw.client("acme", "").await);
    }
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{}/readyz", gw.base())).send().await.unwrap().status(), 200);
    gw.node.start_drain();
    let r = http.get(format!("{}/readyz", gw.base())).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let refused = Client::connect(&gw.ws_url(&format!("token={}", gw.token("acme")))).await.err().expect("refused while draining");
    assert_eq!((refused.status, refused.retry_after.is_some()), (503, true));
    for c in &mut clients {
        assert_eq!(c.read_until_close().await.1, Some(1012));
    }
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_server_pings_and_a_peer_that_answers_stays_connected() {
    use tokio_tungstenite::tungstenite::Message;
    let gw = TestGateway::start_with(|c| c.heartbeat = std::time::Duration::from_secs(1)).await;
    let mut c = gw.client("acme", "").await;
    // Reading lets tungstenite answer each ping; three pings span more than the
    // two silent intervals after which a dead peer would be dropped.
    let mut pings = 0;
    while pings < 3 {
        let frame = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws)).await.expect("a frame").expect("open").unwrap();
        if let Message::Ping(_) = frame {
            pings += 1;
        }
    }
    c.assert_alive().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_is_dropped_after_two_heartbeats() {
    let gw = TestGateway::start_with(|c| c.heartbeat = std::time::Duration::from_secs(1)).await;
    let silent = gw.client("acme", "").await; // never read again, so never pongs
    let mut healthy = gw.client("other", "").await;
    gw.wait_for_connections(2).await;
    // The healthy client keeps reading (and so answering pings) meanwhile.
    let reader = tokio::spawn(async move {
        use tokio_tungstenite::tungstenite::Message;
        let mut pings = 0;
        while pings < 4 {
            let frame =
                tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut healthy.ws)).await.expect("a frame").expect("open").unwrap();
            if let Message::Ping(_) = frame {
                pings += 1;
            }
        }
        healthy
    });
    let node = gw.node.clone();
    wait_until(move || node.hub.count("acme") == 0).await;
    let mut healthy = reader.await.unwrap();
    healthy.assert_alive().await;
    assert_eq!(gw.node.hub.count("other"), 1);
    drop(silent);
}

#[tokio::test]
async fn a_drain_reaches_every_client_in_time_with_more_clients_than_milliseconds() {
    // Before: one sleep per connection, at least a millisecond each, so 3,000
    // connections took 3 s or more of a 0.5 s drain (and past drain + 5 s the
    // rest were cut without 1012). The bound is that floor, not the drain: a
    // loaded machine delays the drain's timer too (the exact spread is the
    // unit test of `drain_schedule`).
    const CLIENTS: usize = 3000;
    let drain = std::time::Duration::from_millis(500);
    let mut gw = TestGateway::start_with(|c| {
        c.drain = drain;
        c.max_connections_per_user = CLIENTS;
    })
    .await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(gw.client("acme", "").await);
    }
    gw.wait_for_connections(CLIENTS).await;
    let readers: Vec<_> = clients.into_iter().map(|mut c| tokio::spawn(async move { c.read_until_close().await.1 })).collect();
    let conns = gw.node.hub.all();
    let started = tokio::time::Instant::now();
    gw.node.start_drain();
    // When the drain has told every connection (what it schedules), apart
    // from how long the sockets then take to carry 3,000 close frames.
    wait_until(|| conns.iter().all(|c| c.outbox.is_closing())).await;
    let took = started.elapsed();
    let floor_before = std::time::Duration::from_millis(CLIENTS as u64);
    assert!(took < floor_before, "the last connection was closed {took:?} after the drain started (drain {drain:?})");
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(1012));
    }
    gw.shutdown().await.unwrap();
}
