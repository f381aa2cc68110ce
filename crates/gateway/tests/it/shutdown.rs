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
