//! Security refusals against real gateway processes on a real Redis: keys
//! bound to their algorithms (PEM and JWKS), `alg: none` and algorithm
//! confusion, key rotation, and revocation by `jti` across gateways.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tidings_testkit::{ServerProcess, TestRedis, http_status};
use tidings_token::{Audience, Claims, unix_now};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

type Gateway = ServerProcess;

fn gateway(redis: &TestRedis, env: &[(&str, String)]) -> Gateway {
    gateway_logging_to(redis, env, None)
}

fn gateway_logging_to(redis: &TestRedis, env: &[(&str, String)], log: Option<&Path>) -> Gateway {
    let mut all = vec![("TIDINGS_REDIS_URL", redis.url()), ("RUST_LOG", if log.is_some() { "trace" } else { "warn" }.to_string())];
    all.extend(env.iter().cloned());
    ServerProcess::start("tidings-gateway", &all, log)
}

/// `(status, error code)` of a refused upgrade, or `(101, "")` when connected.
async fn try_connect(gw: &Gateway, token: &str) -> (u16, String) {
    let url = format!("ws://127.0.0.1:{}/ws?token={token}&workspace_id=acme", gw.port);
    match tokio_tungstenite::connect_async(&url).await {
        Ok(_) => (101, String::new()),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body: Value = r.body().as_ref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or(Value::Null);
            (r.status().as_u16(), body["error"]["code"].as_str().unwrap_or("").to_string())
        }
        Err(e) => panic!("{e}"),
    }
}

fn claims() -> Claims {
    Claims {
        sub: "u".into(),
        exp: unix_now() + 600,
        nbf: None,
        iat: None,
        jti: None,
        iss: Some("idp".into()),
        aud: Some(Audience::One("tidings".into())),
        workspace_id: Some("acme".into()),
        workspaces: None,
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A fresh key pair: (private PEM, public PEM path).
fn keypair(dir: &Path, name: &str, genpkey: &[&str]) -> (Vec<u8>, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend(["-out", private.to_str().unwrap()]);
    openssl(&args);
    openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    (std::fs::read(&private).unwrap(), public)
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Claims, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn encoding_key(alg: Algorithm, pem: &[u8]) -> EncodingKey {
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => EncodingKey::from_rsa_pem(pem).unwrap(),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem).unwrap(),
        _ => EncodingKey::from_ed_pem(pem).unwrap(),
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned token: `{"alg":"none"}`.
fn alg_none(claims: &Claims) -> String {
    format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(serde_json::to_string(claims).unwrap().as_bytes()))
}

#[tokio::test]
async fn pem_keys_accept_only_their_own_algorithm_and_claims() {
    let redis = TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("rsa", vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], vec![Algorithm::RS256, Algorithm::RS512]),
        ("ec256", vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], vec![Algorithm::ES256]),
        ("ec384", vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"], vec![Algorithm::ES384]),
        ("ed", vec!["-algorithm", "ED25519"], vec![Algorithm::EdDSA]),
    ];
    let (other_private, _) = keypair(dir.path(), "other-rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    for (name, genpkey, algorithms) in cases {
        let (private, public) = keypair(dir.path(), name, &genpkey);
        let gw = gateway(
            &redis,
            &[
                ("TIDINGS_JWT_PUBLIC_KEY_FILE", public.display().to_string()),
                ("TIDINGS_JWT_ISSUER", "idp".into()),
                ("TIDINGS_JWT_AUDIENCE", "tidings".into()),
            ],
        );
        for alg in &algorithms {
            let token = sign(*alg, &encoding_key(*alg, &private), &claims(), None);
            assert_eq!(try_connect(&gw, &token).await, (101, String::new()), "{name} {alg:?}");
        }
        let alg = algorithms[0];
        let key = encoding_key(alg, &private);
        let mut expired = claims();
        expired.exp = unix_now() - 60;
        let mut early = claims();
        early.nbf = Some(unix_now() + 600);
        let mut wrong_iss = claims();
        wrong_iss.iss = Some("evil".into());
        let mut wrong_aud = claims();
        wrong_aud.aud = Some(Audience::One("other".into()));
        let public_pem = std::fs::read(&public).unwrap();
        let refusals = [
            (sign(alg, &key, &expired, None), "token_expired"),
            (sign(alg, &key, &early, None), "token_not_yet_valid"),
            (sign(alg, &key, &wrong_iss, None), "token_wrong_issuer"),
            (sign(alg, &key, &wrong_aud, None), "token_wrong_audience"),
            (alg_none(&claims()), "token_invalid"),
            // Algorithm confusion: HS256 keyed with the public key the gateway trusts.
            (sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), &claims(), None), "token_invalid"),
            // The right algorithm family, but another key.
            (
                sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(&other_private).unwrap(), &claims(), None),
                if name == "rsa" { "token_bad_signature" } else { "token_invalid" },
            ),
        ];
        for (token, code) in refusals {
            assert_eq!(try_connect(&gw, &token).await, (401, code.to_string()), "{name}: {code}");
        }
    }
}

/// A JWKS endpoint whose key set the test changes, counting fetches.
struct Jwks {
    url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server() -> Jwks {
    let keys = Arc::new(Mutex::new(json!({"keys": []})));
    let hits = Arc::new(AtomicUsize::new(0));
    let (k, h) = (keys.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (k, h) = (k.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                axum::Json(k.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Jwks { url, keys, hits }
}

/// An Ed25519 key as a JWK with `kid`: its raw public key is the last 32 bytes of the SPKI DER.
fn ed_jwk(dir: &Path, kid: &str) -> (EncodingKey, Value) {
    let (private, public) = keypair(dir, kid, &["-algorithm", "ED25519"]);
    let der = dir.join(format!("{kid}.der"));
    openssl(&["pkey", "-pubin", "-in", public.to_str().unwrap(), "-outform", "DER", "-out", der.to_str().unwrap()]);
    let der = std::fs::read(der).unwrap();
    let x = b64url(&der[der.len() - 32..]);
    (EncodingKey::from_ed_pem(&private).unwrap(), json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig"}))
}

#[tokio::test]
async fn jwks_keys_rotate_without_restart_and_unknown_kids_cannot_hammer_the_provider() {
    let redis = TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let jwks = jwks_server().await;
    let (key_a, jwk_a) = ed_jwk(dir.path(), "a");
    let (key_b, jwk_b) = ed_jwk(dir.path(), "b");
    *jwks.keys.lock().unwrap() = json!({ "keys": [jwk_a.clone()] });
    let gw = gateway(
        &redis,
        &[
            ("TIDINGS_JWKS_URL", jwks.url.clone()),
            ("TIDINGS_JWKS_MIN_REFRESH_SECS", "1".into()),
            ("TIDINGS_JWT_ISSUER", "idp".into()),
            ("TIDINGS_JWT_AUDIENCE", "tidings".into()),
        ],
    );
    let token_a = sign(Algorithm::EdDSA, &key_a, &claims(), Some("a"));
    let token_b = sign(Algorithm::EdDSA, &key_b, &claims(), Some("b"));
    assert_eq!(try_connect(&gw, &token_a).await.0, 101);
    assert_eq!(try_connect(&gw, &token_b).await, (401, "token_bad_signature".to_string()), "kid b unknown");
    assert_eq!(try_connect(&gw, &sign(Algorithm::EdDSA, &key_a, &claims(), None)).await, (401, "token_invalid".to_string()), "no kid");

    // A flood of unknown kids within one refresh interval costs at most one fetch.
    let before = jwks.hits.load(Ordering::SeqCst);
    let started = Instant::now();
    for i in 0..40 {
        let token = sign(Algorithm::EdDSA, &key_b, &claims(), Some(&format!("bogus-{i}")));
        assert_eq!(try_connect(&gw, &token).await.0, 401);
    }
    let fetched = jwks.hits.load(Ordering::SeqCst) - before;
    let allowed = 1 + started.elapsed().as_secs() as usize;
    assert!(fetched <= allowed, "{fetched} JWKS fetches for 40 unknown kids in {:?}", started.elapsed());

    // Rotation: b appears, a goes away; no restart.
    *jwks.keys.lock().unwrap() = json!({ "keys": [jwk_b] });
    tidings_testkit::retry("the rotated key b to be accepted", WAIT, || async {
        (try_connect(&gw, &token_b).await.0 == 101).then_some(())
    })
    .await;
    assert_eq!(try_connect(&gw, &token_a).await.0, 401, "the removed key a no longer verifies");
}

/// Reads until the close frame and returns its code.
async fn close_code(ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn revoking_a_jti_closes_it_on_every_gateway_and_refuses_it_after() {
    // Before: nothing in Tidings wrote the revocation keys; this test wrote them by hand.
    let redis = TestRedis::start();
    let secret = [("TIDINGS_JWT_SECRET", "revocation-secret".to_string())];
    let gw1 = gateway(&redis, &secret);
    let gw2 = gateway(&redis, &secret);
    let publisher = ServerProcess::start(
        "tidings-publisher",
        &[("TIDINGS_REDIS_URL", redis.url()), ("TIDINGS_PUBLISH_TOKEN", "revoker".to_string()), ("RUST_LOG", "warn".to_string())],
        None,
    );
    let token = |jti: &str| {
        let mut c = claims();
        c.iss = None;
        c.aud = None;
        c.jti = Some(jti.into());
        tidings_token::sign_hs256("revocation-secret", &c).unwrap()
    };
    let connect = |gw: &Gateway, t: String| {
        let url = format!("ws://127.0.0.1:{}/ws?token={t}", gw.port);
        async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            let hello = ws.next().await.unwrap().unwrap();
            assert!(hello.to_text().unwrap().contains("connected"));
            ws
        }
    };
    let mut other = connect(&gw1, token("j-2")).await;

    // 1. `tidings revoke` on the shared Redis.
    let mut doomed = [connect(&gw1, token("j-1")).await, connect(&gw2, token("j-1")).await];
    let exp = (unix_now() + 3600).to_string();
    let revoked_at = Instant::now();
    let out = Command::new(tidings_testkit::workspace_binary("tidings"))
        .args(["revoke", "--jti", "j-1", "--exp", &exp])
        .env("TIDINGS_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "tidings revoke: {}", String::from_utf8_lossy(&out.stderr));
    for ws in &mut doomed {
        assert_eq!(close_code(ws).await, Some(4003));
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(5), "closed right away: {:?}", revoked_at.elapsed());
    assert_eq!(try_connect(&gw2, &token("j-1")).await, (401, "token_revoked".to_string()));
    let ttl: u64 = redis.cli(&["TTL", "tidings:revoked:j-1"]).parse().unwrap();
    assert!((3600..=3660).contains(&ttl), "kept until the token's exp and a minute, TTL {ttl}");

    // 2. The publisher's POST /v1/revocations, and what it refuses.
    let mut doomed = [connect(&gw1, token("j-3")).await, connect(&gw2, token("j-3")).await];
    let http = reqwest::Client::new();
    let revoke = |bearer: &'static str, body: String| {
        http.post(format!("{}/v1/revocations", publisher.base()))
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (bearer, body, status) in [
        ("wrong", json!({"jti": "j-3"}).to_string(), 401),
        ("revoker", "not json".to_string(), 400),
        ("revoker", json!({"jti": ""}).to_string(), 400),
        ("revoker", json!({"jti": "has space"}).to_string(), 400),
        ("revoker", json!({"jti": "j-3", "exp": "soon"}).to_string(), 400),
    ] {
        let r = revoke(bearer, body.clone()).await.unwrap();
        assert_eq!(r.status(), status, "{body}");
        let error: Value = r.json().await.unwrap();
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    }
    assert_eq!(redis.cli(&["EXISTS", "tidings:revoked:j-3"]), "0", "refused requests revoke nothing");
    let r = revoke("revoker", json!({"jti": "j-3", "exp": unix_now() + 600}).to_string()).await.unwrap();
    assert_eq!(r.status(), 202);
    for ws in &mut doomed {
        assert_eq!(close_code(ws).await, Some(4003));
    }
    assert_eq!(try_connect(&gw1, &token("j-3")).await, (401, "token_revoked".to_string()));

    other.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
    let pong = loop {
        match other.next().await.unwrap().unwrap() {
            Message::Text(t) => break t,
            _ => continue,
        }
    };
    assert!(pong.contains("pong"), "another token's connection is untouched");
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let redis = TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let gw = gateway_logging_to(&redis, &[("TIDINGS_JWT_SECRET", "log-secret".to_string())], Some(&log));
    let mut c = claims();
    c.iss = None;
    c.aud = None;
    let good = tidings_token::sign_hs256("log-secret", &c).unwrap();
    let bad = tidings_token::sign_hs256("wrong-secret", &c).unwrap();
    assert_eq!(try_connect(&gw, &good).await.0, 101);
    assert_eq!(try_connect(&gw, &bad).await.0, 401);
    let sse = format!("http://127.0.0.1:{}/v1/workspaces/acme/events/stream?token={bad}", gw.port);
    assert_eq!(http_status(&sse), Some(401));
    drop(gw); // flushes and closes the log
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.is_empty(), "trace logging produced output");
    for (name, token) in [("good", &good), ("bad", &bad)] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "the {name} token's signature appears in the log");
    }
    assert!(!text.contains("log-secret"), "the secret appears in the log");
}

/// Sends a frame and reads until the close frame; returns its code.
async fn close_code_after(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn limits_and_refusals_on_a_real_gateway() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let redis = TestRedis::start();
    let gw = gateway(
        &redis,
        &[
            ("TIDINGS_JWT_SECRET", "limits-secret".to_string()),
            ("TIDINGS_ALLOWED_ORIGINS", "https://dash.example".to_string()),
            ("TIDINGS_CLIENT_RATE", "5".to_string()),
            ("TIDINGS_MAX_CONNECTIONS_PER_USER", "2".to_string()),
            ("TIDINGS_MAX_MESSAGE_BYTES", "1024".to_string()),
        ],
    );
    let mut c = claims();
    c.iss = None;
    c.aud = None;
    let token = tidings_token::sign_hs256("limits-secret", &c).unwrap();
    let url = |extra: &str| format!("ws://127.0.0.1:{}/ws?token={token}{extra}", gw.port);

    // Foreign workspace, bad origin.
    assert_eq!(
        try_connect(&gw, &tidings_token::sign_hs256("limits-secret", &Claims { workspace_id: Some("other".into()), ..c.clone() }).unwrap())
            .await,
        (403, "workspace_forbidden".into())
    );
    let mut request = url("").into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("bad origin accepted: {other:?}"),
    }

    // Per-user cap: two connections, the third is 429.
    let (mut first, _) = tokio_tungstenite::connect_async(url("")).await.unwrap();
    let (mut second, _) = tokio_tungstenite::connect_async(url("")).await.unwrap();
    match tokio_tungstenite::connect_async(url("")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 429);
            assert!(r.headers().contains_key("retry-after"));
        }
        other => panic!("third connection accepted: {other:?}"),
    }

    // Oversized frame: 1009 for that connection only.
    first.send(Message::Text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4096)).into())).await.unwrap();
    assert_eq!(close_code_after(&mut first).await, Some(1009));

    // Message flood: rate_limited errors, then 4008.
    for _ in 0..40 {
        second.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
    }
    let mut rate_limited = false;
    let code = loop {
        match tokio::time::timeout(WAIT, second.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => rate_limited |= t.contains("rate_limited"),
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert!(rate_limited);
    assert_eq!(code, Some(4008));

    // First-message authentication that never comes: 1008 after the 5 s deadline.
    let (mut silent, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws?workspace_id=acme", gw.port)).await.unwrap();
    let started = Instant::now();
    assert_eq!(close_code_after(&mut silent).await, Some(1008));
    assert!(started.elapsed() >= Duration::from_secs(4), "closed at the deadline, not before");
}
