//! SPEC §3.2: every way in, and every refusal before the upgrade.

use serde_json::json;
use tidings_token::{Audience, unix_now};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

#[tokio::test]
async fn connected_message_has_every_field() {
    let gw = TestGateway::start().await;
    let mut c = Client::connect(&gw.ws_url(&format!("token={}", gw.token("acme")))).await.unwrap();
    let hello = c.next_json().await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["workspace_id"], "acme");
    assert_eq!(hello["user_id"], "user-1");
    assert_eq!(hello["server"], "gw-test");
    assert_eq!(hello["heartbeat_ms"], 25000);
    assert!(hello["connection_id"].as_str().unwrap().len() >= 16);
    assert!(hello["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(hello.get("recovered").is_none(), "recovered only with since");
}

#[tokio::test]
async fn token_from_authorization_header_and_from_first_message() {
    let gw = TestGateway::start().await;
    let mut request = gw.ws_url("").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", gw.token("acme")).parse().unwrap());
    let mut c = Client::connect_request(request).await.unwrap();
    assert_eq!(c.next_json().await["type"], "connected");

    let mut c = Client::connect(&gw.ws_url("workspace_id=acme")).await.unwrap();
    c.send_json(json!({"type": "auth", "token": gw.token("acme")})).await;
    let hello = c.next_json().await;
    assert_eq!((hello["type"].as_str(), hello["workspace_id"].as_str()), (Some("connected"), Some("acme")));
    c.assert_alive().await;
}

#[tokio::test]
async fn first_message_auth_refusals_close_1008() {
    let gw = TestGateway::start_with(|c| c.auth_timeout = std::time::Duration::from_millis(300)).await;
    // A bad token in the auth message.
    let mut c = Client::connect(&gw.ws_url("")).await.unwrap();
    c.send_json(json!({"type": "auth", "token": "garbage"})).await;
    assert_eq!(c.read_until_close().await.1, Some(1008));
    // Something other than auth first.
    let mut c = Client::connect(&gw.ws_url("")).await.unwrap();
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.read_until_close().await.1, Some(1008));
    // Nothing at all before the deadline.
    let mut c = Client::connect(&gw.ws_url("")).await.unwrap();
    let (frames, code) = c.read_until_close().await;
    assert_eq!((frames.len(), code), (0, Some(1008)));
    // A token for another workspace than the one asked for.
    let mut c = Client::connect(&gw.ws_url("workspace_id=other")).await.unwrap();
    c.send_json(json!({"type": "auth", "token": gw.token("acme")})).await;
    assert_eq!(c.read_until_close().await.1, Some(1008));
}

async fn refused(gw: &TestGateway, query: &str) -> Refused {
    match Client::connect(&gw.ws_url(query)).await {
        Ok(_) => panic!("{query} should be refused"),
        Err(r) => r,
    }
}

#[tokio::test]
async fn every_401() {
    let gw = TestGateway::start_with(|c| {
        c.jwt_issuer = Some(ISSUER.into());
        c.jwt_audience = Some(AUDIENCE.into());
    })
    .await;
    let good = || issued_claims("acme", "u");
    let mut expired = good();
    expired.exp = unix_now() - 60;
    let mut early = good();
    early.nbf = Some(unix_now() + 600);
    let mut wrong_iss = good();
    wrong_iss.iss = Some("evil".into());
    let mut wrong_aud = good();
    wrong_aud.aud = Some(Audience::One("other".into()));
    let other_secret = tidings_token::sign_hs256("not-the-secret", &good()).unwrap();
    let cases = [
        ("not.a.jwt".to_string(), "token_invalid"),
        (other_secret, "token_bad_signature"),
        (sign(&expired), "token_expired"),
        (sign(&early), "token_not_yet_valid"),
        (sign(&wrong_iss), "token_wrong_issuer"),
        (sign(&wrong_aud), "token_wrong_audience"),
    ];
    for (token, code) in cases {
        let r = refused(&gw, &format!("token={token}")).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some(code)), "{r:?}");
        assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
    }
    // The good token still works after all those refusals.
    let mut c = Client::connect(&gw.ws_url(&format!("token={}", sign(&good())))).await.unwrap();
    assert_eq!(c.next_json().await["type"], "connected");
}

#[tokio::test]
async fn every_403() {
    let gw = TestGateway::start_with(|c| c.allowed_origins = Some(vec!["https://dash.example".into()])).await;
    let r = refused(&gw, &format!("token={}&workspace_id=other", gw.token("acme"))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("workspace_forbidden")));

    let mut request = gw.ws_url(&format!("token={}", gw.token("acme"))).into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    let r = Client::connect_request(request).await.err().expect("bad origin refused");
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("origin_forbidden")));

    let mut request = gw.ws_url(&format!("token={}", gw.token("acme"))).into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://dash.example".parse().unwrap());
    assert!(Client::connect_request(request).await.is_ok(), "allowed origin passes");
}

#[tokio::test]
async fn workspaces_claim_grants_a_list_and_star() {
    let gw = TestGateway::start().await;
    let mut c = claims("a", "u");
    c.workspace_id = None;
    c.workspaces = Some(vec!["b".into(), "c".into()]);
    let token = sign(&c);
    assert!(Client::connect(&gw.ws_url(&format!("token={token}&workspace_id=c"))).await.is_ok());
    assert_eq!(refused(&gw, &format!("token={token}&workspace_id=d")).await.status, 403);
    let r = refused(&gw, &format!("token={token}")).await;
    assert_eq!(r.status, 400, "no workspace in URL nor token: {r:?}");
    c.workspaces = Some(vec!["*".into()]);
    assert!(Client::connect(&gw.ws_url(&format!("token={}&workspace_id=anything", sign(&c)))).await.is_ok());
}

#[tokio::test]
async fn every_400() {
    let gw = TestGateway::start().await;
    let t = gw.token("acme");
    for query in [
        format!("token={t}&since=yesterday"),
        format!("token={t}&workspace_id=bad%20ws"),
        format!("token={t}&event_types=Bad%20Type"),
        format!("token={t}&entity_refs=not-a-ref"),
        format!("token={t}&batch=maybe"),
    ] {
        let r = refused(&gw, &query).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("bad_request")), "{query}: {r:?}");
    }
}

#[tokio::test]
async fn caps_answer_503_and_429_and_free_up_on_disconnect() {
    let gw = TestGateway::start_with(|c| c.max_connections = 2).await;
    let _a = gw.client("acme", "").await;
    let b = gw.client("acme", "").await;
    let r = refused(&gw, &format!("token={}", gw.token("acme"))).await;
    assert_eq!((r.status, r.retry_after.is_some()), (503, true));
    drop(b);
    gw.wait_for_connections(1).await;
    wait_until(|| gw.node.admit("probe").is_ok()).await;
    gw.client("acme", "").await.assert_alive().await;

    let gw = TestGateway::start_with(|c| c.max_connections_per_user = 1).await;
    let mut first = gw.client("acme", "").await;
    let r = refused(&gw, &format!("token={}", gw.token("acme"))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (429, Some("too_many_connections")));
    let mut other_user = Client::connect(&gw.ws_url(&format!("token={}", gw.token_for("acme", "user-2")))).await.unwrap();
    assert_eq!(other_user.next_json().await["type"], "connected", "the cap is per user");
    first.assert_alive().await;
}
