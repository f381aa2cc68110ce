//! GitLab webhooks: every fixture through the source module, and the HTTP edge.

use crate::support;

use std::path::PathBuf;
use std::sync::Arc;

use crate::support::Seen;
use serde_json::{Value, json};
use tidings_broker::{Broker, MemoryBroker};
use tidings_publisher::PublisherConfig;
use tidings_publisher::routes::Routes;
use tidings_publisher::webhooks::{Parsed, gitlab};

const TOKEN: &str = "my-shared-secret";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gitlab")
}

fn headers(file: &str) -> Value {
    let d: Value = serde_json::from_slice(&std::fs::read(dir().join("_deliveries.json")).unwrap()).unwrap();
    d["deliveries"][file]["headers"].clone()
}

fn parsed(file: &str) -> (Option<String>, Value) {
    let h = headers(file);
    gitlab::verify(TOKEN, h["X-Gitlab-Token"].as_str()).unwrap();
    match gitlab::parse(h["X-Gitlab-Event"].as_str().unwrap(), &std::fs::read(dir().join(file)).unwrap()).unwrap() {
        Parsed::Events { subject, events } => (subject.gitlab_project, json!({"type": events[0].event_type, "data": events[0].data})),
        other => panic!("{file}: {other:?}"),
    }
}

#[test]
fn every_fixture_maps_to_the_expected_event() {
    for file in ["pipeline_hook.docs.json", "go-gitlab.pipeline.json"] {
        let (project, e) = parsed(file);
        assert_eq!(project.as_deref(), Some("gitlab-org/gitlab-test"), "{file}");
        let p = &e["data"]["pipeline"];
        assert_eq!(
            (e["type"].as_str(), p["provider"].as_str(), p["status"].as_str(), p["ref"].as_str()),
            (Some("pipeline_update"), Some("gitlab"), Some("success"), Some("master")),
            "{file}"
        );
        assert_eq!(p["id"], "31");
        assert!(p["commit"].as_str().unwrap().starts_with("bcbb5ec3"));
        assert_eq!(
            (p["started_at"].as_str(), p["finished_at"].as_str()),
            (Some("2016-08-12T15:23:28.000Z"), Some("2016-08-12T15:26:29.000Z")),
            "{file}"
        );
        assert!(p["url"].as_str().unwrap().ends_with("/gitlab-org/gitlab-test/-/pipelines/31"), "built when missing: {file}");
    }

    let (project, e) = parsed("go-gitlab.job.json");
    assert_eq!(project.as_deref(), Some("jsmithy2/release-tools-fake"), "from repository.homepage");
    let p = &e["data"]["pipeline"];
    assert_eq!((p["name"].as_str(), p["status"].as_str(), p["ref"].as_str()), (Some("auto_deploy:start"), Some("success"), Some("main")));
    assert_eq!(p["url"], "https://gitlab.com/jsmithy2/release-tools-fake/-/jobs/3580121225");
    assert_eq!((p["started_at"].as_str(), p["finished_at"].as_str()), (Some("2023-01-10T13:50:05.000Z"), Some("2023-01-10T13:50:54.000Z")));

    for file in ["job_hook.docs.json", "go-gitlab.build.json"] {
        let (project, e) = parsed(file);
        assert_eq!(project.as_deref(), Some("gitlab-org/gitlab-test"), "{file}");
        assert_eq!(
            (e["data"]["pipeline"]["status"].as_str(), e["data"]["pipeline"]["id"].as_str()),
            (Some("queued"), Some("1977")),
            "{file}: created → queued"
        );
        assert!(e["data"]["pipeline"].get("started_at").is_none(), "{file}: not started");
    }

    for file in ["deployment_hook.docs.json", "go-gitlab.deployment.json"] {
        let (project, e) = parsed(file);
        assert_eq!(project.as_deref(), Some("root/test-deployment-webhooks"), "{file}");
        let d = &e["data"]["deployment"];
        assert_eq!(
            (e["type"].as_str(), d["status"].as_str(), d["environment"].as_str(), d["id"].as_str()),
            (Some("deployment_update"), Some("success"), Some("staging"), Some("15")),
            "{file}"
        );
        assert_eq!(d["commit"], "279484c09fbe69ededfced8c1bb6e6d24616b468", "{file}: full SHA from commit_url");
        assert_eq!(
            (d["start_time"].as_str(), d["end_time"].as_str()),
            (Some("2021-04-28T19:50:00.000Z"), Some("2021-04-28T19:50:00.000Z")),
            "{file}"
        );
        assert_eq!(d["url"], "http://10.126.0.2:3000/root/test-deployment-webhooks/-/jobs/796");
    }
    let (_, e) = parsed("go-gitlab.deployment.json");
    assert_eq!(e["data"]["deployment"]["version"], "1.0.0", "ref when present");

    let h = headers("go-gitlab.push.json");
    let push = gitlab::parse(h["X-Gitlab-Event"].as_str().unwrap(), &std::fs::read(dir().join("go-gitlab.push.json")).unwrap()).unwrap();
    assert!(matches!(push, Parsed::Ignored { .. }), "push hooks are not mapped");
}

#[test]
fn the_token_is_checked() {
    assert!(gitlab::verify(TOKEN, Some(TOKEN)).is_ok());
    for bad in [None, Some(""), Some("my-shared-secreT"), Some("my-shared-secret ")] {
        assert!(gitlab::verify(TOKEN, bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn deliveries_over_http_once_and_only_with_the_token() {
    let broker = Arc::new(MemoryBroker::new(100));
    let seen = Arc::new(Seen::default());
    broker.set_handler(seen.clone());
    broker.subscribe("platform").await.unwrap();
    let routes = Routes::parse("[[route]]\ngitlab_project = \"root/*\"\nworkspace = \"platform\"\n").unwrap();
    let config = PublisherConfig { gitlab_token: Some(TOKEN.into()), routes, ..PublisherConfig::new("t") };
    let base = support::start(config, broker).await;

    let send = |token: &'static str, file: &'static str| {
        let base = base.clone();
        async move {
            let mut req = reqwest::Client::new().post(format!("{base}/webhooks/gitlab")).body(std::fs::read(dir().join(file)).unwrap());
            for (k, v) in headers(file).as_object().unwrap() {
                let v = if k == "X-Gitlab-Token" { token } else { v.as_str().unwrap() };
                req = req.header(k.as_str(), v);
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(send("wrong", "deployment_hook.docs.json").await.0, 401);
    let (status, body) = send(TOKEN, "deployment_hook.docs.json").await;
    assert_eq!((status, &body["published"]), (202, &json!(1)), "{body}");
    assert_eq!(send(TOKEN, "deployment_hook.docs.json").await, (200, json!({"duplicate": true})), "same Idempotency-Key");
    assert_eq!(send(TOKEN, "pipeline_hook.docs.json").await.1, json!({"published": 0, "reason": "no route"}));
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0]["workspace_id"].as_str(), seen[0]["entity_ref"].as_str()),
        (Some("platform"), Some("component:default/test-deployment-webhooks"))
    );
}
