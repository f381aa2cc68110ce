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
