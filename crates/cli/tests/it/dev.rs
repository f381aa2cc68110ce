//! `tidings` as a newcomer runs it: the real binary, real sockets, real signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

struct Dev {
    child: Child,
    base: String,
    token: String,
    publish_token: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tidings dev` on a free port and reads what it prints.
fn start_dev(extra: &[&str]) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["dev", "--listen", "127.0.0.1:0", "--metrics-interval-ms", "200", "--drain-secs", "1"])
        .args(extra)
        .env_remove("TIDINGS_JWT_SECRET")
        .env_remove("TIDINGS_PUBLISH_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut token, mut publish_token) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first() {
            Some(&"Dashboard") => base = words[1].split("/#").next().map(String::from),
            Some(&"Token") => token = Some(words[1].to_string()),
            Some(&"Publish") => {
                let bearer = line.split("Bearer ").nth(1).unwrap();
                publish_token = Some(bearer.split('\'').next().unwrap().to_string());
            }
            _ => {}
        }
        if base.is_some() && token.is_some() && publish_token.is_some() {
            break;
        }
    }
    // Keep reading so the child never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Dev {
        child,
        base: base.expect("dashboard URL printed"),
        token: token.expect("token printed"),
        publish_token: publish_token.expect("curl line printed"),
    }
}

async fn next_json(ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return Some(json!({"closed": frame.map(|f| u16::from(f.code))})),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_newcomer_sees_host_metrics_and_a_curl_publish_then_sigterm_drains() {
    let mut dev = start_dev(&[]);
    let ws_url = format!("{}/ws?token={}", dev.base.replacen("http", "ws", 1), dev.token);
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let hello = next_json(&mut ws).await.unwrap();
    assert_eq!((hello["type"].as_str(), hello["workspace_id"].as_str()), (Some("connected"), Some("dev")));

    // Host metrics arrive by themselves.
    let metrics = loop {
        let e = next_json(&mut ws).await.unwrap();
        if e["type"] == "metrics_update" {
            break e;
        }
    };
    assert!(metrics["entity_ref"].as_str().unwrap().starts_with("host:default/"));
    assert!(metrics["data"]["metrics"]["cpu"].is_number() && metrics["data"]["metrics"]["memory"].is_number());
    assert!(metrics["id"].is_string());

    // The printed curl line's request, through the same listener.
    let body = json!({"type":"notification","data":{"title":"Hello","message":"from curl","level":"info"}});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/workspaces/dev/events", dev.base))
        .bearer_auth(&dev.publish_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["ids"][0].as_str().unwrap().to_string();
    let note = loop {
        let e = next_json(&mut ws).await.unwrap();
        if e["type"] == "notification" {
            break e;
        }
    };
    assert_eq!((note["id"].as_str(), &note["data"]), (Some(id.as_str()), &body["data"]));

    // A wrong publish token publishes nothing and the socket stays healthy.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/workspaces/dev/events", dev.base))
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // SIGTERM: the client is closed with 1012 and the process exits 0.
    let status = Command::new("kill").args(["-TERM", &dev.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let closed = loop {
        let e = next_json(&mut ws).await.expect("a close frame, not a dropped socket");
        if let Some(code) = e.get("closed") {
            break code.clone();
        }
        assert_ne!(e["type"], "notification", "nothing else was published");
    };
    assert_eq!(closed, 1012);
    let child = &mut dev.child;
    let exit = tidings_testkit::retry("tidings dev to exit after SIGTERM", WAIT, || std::future::ready(child.try_wait().unwrap())).await;
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn tidings_publish_and_token_work_against_dev() {
    let dev = start_dev(&["--jwt-secret", "known-secret"]);
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "publish",
            "--workspace",
            "dev",
            "--type",
            "deployment_update",
            "--entity-ref",
            "component:default/checkout",
            "--url",
            &dev.base,
        ])
        .args([
            "--data",
            r#"{"deployment":{"id":"d1","version":"v1","environment":"prod","status":"success","start_time":"2026-11-24T12:00:00Z"}}"#,
        ])
        .env("TIDINGS_PUBLISH_TOKEN", &dev.publish_token)
        .env_remove("TIDINGS_REDIS_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(id.parse::<tidings_protocol::EventId>().is_ok(), "{id:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["token", "--workspace", "dev", "--ttl", "5m"])
        .env("TIDINGS_JWT_SECRET", "known-secret")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r =
        reqwest::Client::new().get(format!("{}/v1/workspaces/dev/events?limit=1000", dev.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["events"].as_array().unwrap().iter().any(|e| e["id"] == id.as_str() && e["data"]["deployment"]["status"] == "success"));
}

#[tokio::test]
async fn the_dashboard_is_on_in_dev_and_can_be_turned_off() {
    let on = start_dev(&[]);
    let page = reqwest::get(format!("{}/", on.base)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("assets/dashboard/app.js"));
    let off = start_dev(&["--dashboard", "false"]);
    assert_eq!(reqwest::get(format!("{}/", off.base)).await.unwrap().status(), 404);
    // The rest of dev is unchanged without the page.
    let r = reqwest::Client::new().get(format!("{}/v1/workspaces/dev/events", off.base)).bearer_auth(&off.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn bad_options_exit_2_with_one_line_before_binding() {
    let cases: [&[&str]; 11] = [
        &["dev", "--dashboard", "maybe", "--listen", "127.0.0.1:0"],
        &["dev", "--routes-file", "/nonexistent/routes.toml", "--listen", "127.0.0.1:0"],
        &["dev", "--jwt-secret", "s", "--jwks-url", "https://idp.example/jwks", "--listen", "127.0.0.1:0"],
        &["dev", "--no-such-option"],
        &["dev", "--history-size", "0"],
        &["dev", "--listen", "not-an-address"],
        &["dev", "--metrics-workspace", "bad ws", "--listen", "127.0.0.1:0"],
        &["token", "--workspace", "w", "--ttl", "forever"],
        &["revoke", "--jti", "has space", "--redis-url", "redis://127.0.0.1:1"],
        &["revoke", "--jti", "j-1"],
        &["revoke", "--jti", "j-1", "--exp", "soon", "--redis-url", "redis://127.0.0.1:1"],
    ];
    for args in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(args)
            .env_remove("TIDINGS_JWT_SECRET")
            .env_remove("TIDINGS_REDIS_URL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, got {stderr}");
        assert!(stderr.starts_with("tidings: "), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "nothing printed as if started: {args:?}");
    }
    let out =
        Command::new(env!("CARGO_BIN_EXE_tidings")).args(["token", "--workspace", "w"]).env_remove("TIDINGS_JWT_SECRET").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a missing secret is a usage error");
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    let dev = start_dev(&[]);
    // Touch the families that only appear once used.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/workspaces/dev/events", dev.base))
        .bearer_auth(&dev.publish_token)
        .json(&json!({"type": "probe"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let text = reqwest::get(format!("{}/metrics", dev.base)).await.unwrap().text().await.unwrap();
    for family in ["tidings_events_published_total", "tidings_process_resident_memory_bytes", "tidings_connections_open"] {
        assert!(text.contains(family), "{family} missing");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus; scripts/test installs it)");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}");
}

#[tokio::test]
async fn oversized_and_malformed_publishes_are_refused_and_publish_nothing() {
    let dev = start_dev(&[]);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/workspaces/dev/events", dev.base);
    // Just over the 1 MiB limit: small enough to sit in the socket buffers, so the
    // early 413 is read rather than racing the upload.
    let huge = json!({"type": "big", "data": "x".repeat(1024 * 1024 + 1024)});
    let cases: [(reqwest::RequestBuilder, u16); 5] = [
        (http.post(&url).bearer_auth(&dev.publish_token).json(&huge), 413),
        (http.post(&url).bearer_auth(&dev.publish_token).body("{not json"), 400),
        (http.post(&url).bearer_auth(&dev.publish_token).json(&json!({"type": "Bad Type"})), 400),
        (http.post(&url).bearer_auth(&dev.publish_token).json(&json!([{"type": "ok"}, {"type": "metrics_update", "data": {}}])), 400),
        (http.post(&url).json(&json!({"type": "ok"})), 401),
    ];
    for (request, status) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{status}: {body}");
    }
    // Nothing of the above was stored: the history holds only what follows.
    let ok = http.post(&url).bearer_auth(&dev.publish_token).json(&json!({"type": "ok"})).send().await.unwrap();
    assert_eq!(ok.status(), 202);
    let token = dev.token.clone();
    let page: Value = http.get(format!("{url}?limit=1000")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    let types: Vec<&str> =
        page["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).filter(|t| *t != "metrics_update").collect();
    assert_eq!(types, ["ok"]);
}

#[tokio::test]
async fn each_webhook_is_enabled_by_its_own_option() {
    // Only GitLab and Argo CD configured: those answer 401 to a wrong credential,
    // the other two are 404 (disabled).
    let dev = start_dev(&["--gitlab-webhook-token", "gl", "--argocd-webhook-token", "cd"]);
    let http = reqwest::Client::new();
    let status = |source: &'static str| {
        let req = http.post(format!("{}/webhooks/{source}", dev.base)).header("x-gitlab-token", "wrong").bearer_auth("wrong").body("{}");
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("gitlab").await, 401);
    assert_eq!(status("argocd").await, 401);
    assert_eq!(status("github").await, 404);
    assert_eq!(status("backstage").await, 404);
}
