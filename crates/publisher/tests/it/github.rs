//! GitHub webhooks: every fixture through the source module, field by field,
//! and the HTTP edge (signatures, redelivery, routing, bad input) on a real
//! listener with the in-memory broker.

use crate::support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::support::Seen;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tidings_broker::{Broker, DeliveryStore, MemoryBroker};
use tidings_publisher::PublisherConfig;
use tidings_publisher::routes::Routes;
use tidings_publisher::webhooks::{Parsed, github};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github")
}

fn deliveries() -> (String, Value) {
    let d: Value = serde_json::from_slice(&std::fs::read(fixture_dir().join("_deliveries.json")).unwrap()).unwrap();
    (d["secret"].as_str().unwrap().to_string(), d["deliveries"].clone())
}

fn parsed(file: &str) -> (String, Value) {
    let (secret, deliveries) = deliveries();
    let body = std::fs::read(fixture_dir().join(file)).unwrap();
    let headers = &deliveries[file]["headers"];
    github::verify(&secret, headers["X-Hub-Signature-256"].as_str(), &body).unwrap_or_else(|e| panic!("{file}: {e}"));
    match github::parse(headers["X-GitHub-Event"].as_str().unwrap(), &body).unwrap() {
        Parsed::Events { subject, events } => {
            assert_eq!(events.len(), 1);
            (subject.repository.unwrap(), json!({"type": events[0].event_type, "data": events[0].data}))
        }
        other => panic!("{file}: {other:?}"),
    }
}

/// Every fixture, and what a dashboard must see from it.
#[test]
fn every_fixture_maps_to_the_expected_event() {
    let p = |file: &str| parsed(file);
    let (repo, e) = p("workflow_run.completed.json");
    assert_eq!(repo, "octo-org/octo-repo");
    assert_eq!(e["type"], "pipeline_update");
    let pl = &e["data"]["pipeline"];
    assert_eq!(
        (&pl["id"], &pl["provider"], &pl["status"], &pl["ref"], &pl["commit"]),
        (&json!("289782451"), &json!("github"), &json!("success"), &json!("master"), &json!("3484a3fb816e0859fd6e1cea078d76385ff50625"))
    );
    assert_eq!(pl["url"], "https://github.com/octo-org/octo-repo/actions/runs/289782451");
    assert_eq!((&pl["started_at"], &pl["finished_at"]), (&json!("2020-10-05T16:33:49Z"), &json!("2020-10-05T16:33:49Z")));
    assert!(!pl["name"].as_str().unwrap().is_empty(), "an empty run name is replaced");

    for (file, status, finished) in [
        ("workflow_run.requested.json", "queued", false),
        ("workflow_run.in_progress.json", "in_progress", false),
        ("workflow_run.completed.with-pull-requests.json", "success", true),
        ("workflow_job.queued.json", "queued", false),
        ("workflow_job.queued.with-deployment.json", "queued", false),
        ("workflow_job.waiting.json", "queued", false),
        ("workflow_job.in_progress.json", "in_progress", false),
        ("workflow_job.completed.json", "success", true),
        ("workflow_job.completed.failure.json", "failed", true),
        ("check_run.completed.json", "success", true),
    ] {
        let (_, e) = p(file);
        assert_eq!(e["type"], "pipeline_update", "{file}");
        assert_eq!(e["data"]["pipeline"]["status"], status, "{file}");
        assert_eq!(e["data"]["pipeline"].get("finished_at").is_some(), finished, "{file}");
        assert!(e["data"]["pipeline"]["url"].as_str().unwrap().starts_with("https://github.com/"), "{file}");
    }
    let (_, job) = p("workflow_job.completed.failure.json");
    assert_eq!(job["data"]["pipeline"]["name"], "CodeQL / linters");
    assert_eq!(
        (&job["data"]["pipeline"]["started_at"], &job["data"]["pipeline"]["finished_at"]),
        (&json!("2021-08-05T10:34:58Z"), &json!("2021-08-05T10:38:16Z"))
    );

    let (repo, e) = p("deployment_status.created.json");
    assert_eq!(repo, "Codertocat/Hello-World");
    let d = &e["data"]["deployment"];
    assert_eq!(e["type"], "deployment_update");
    assert_eq!(
        (&d["id"], &d["version"], &d["environment"], &d["status"], &d["commit"]),
        (
            &json!("145988746"),
            &json!("master"),
            &json!("production"),
            &json!("success"),
            &json!("f95f852bd8fca8fcc58a9a2d6c842781e32a215e")
        )
    );
    assert_eq!((&d["start_time"], &d["end_time"]), (&json!("2019-05-15T15:20:53Z"), &json!("2019-05-15T15:20:55Z")));
    assert_eq!(d["url"], "https://github.com/Codertocat/Hello-World/deployments", "built when the status has no link");

    let (_, e) = p("deployment_status.created.gh-pages.json");
    assert_eq!(e["data"]["deployment"]["status"], "in_progress");
    assert!(e["data"]["deployment"].get("end_time").is_none());
    assert!(e["data"]["deployment"]["url"].as_str().is_some_and(|u| u.starts_with("https://")), "log_url used: {e}");

    for file in ["deployment.created.json", "deployment.created.gh-pages.json"] {
        let (_, e) = p(file);
        assert_eq!((e["type"].as_str(), e["data"]["deployment"]["status"].as_str()), (Some("deployment_update"), Some("queued")), "{file}");
    }

    let (_, e) = p("push.branch.json");
    assert_eq!(e["type"], "notification");
    assert_eq!(
        e["data"],
        json!({"title": "Push to Codertocat/Hello-World", "message": "Codertocat pushed 1 commit to master", "level": "info"})
    );
    let (_, e) = p("push.tag-deleted.json");
    assert_eq!(e["data"]["message"], "Codertocat deleted simple-tag");
}

#[test]
fn signatures_are_checked_on_the_raw_bytes() {
    let (secret, deliveries) = deliveries();
    let body = std::fs::read(fixture_dir().join("push.branch.json")).unwrap();
    let good = deliveries["push.branch.json"]["headers"]["X-Hub-Signature-256"].as_str().unwrap();
    assert!(github::verify(&secret, Some(good), &body).is_ok());
    let mut reformatted: Vec<u8> = serde_json::to_vec(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap();
    assert!(github::verify(&secret, Some(good), &reformatted).is_err(), "same JSON, other bytes");
    reformatted.clear();
    for bad in [None, Some("sha1=abc"), Some("sha256=zz"), Some("sha256=00")] {
        assert!(github::verify(&secret, bad, &body).is_err(), "{bad:?}");
    }
    assert!(github::verify("another secret", Some(good), &body).is_err());
    // The documented test vector.
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert!(github::verify("It's a Secret to Everybody", Some(sig), b"Hello, World!").is_ok());
}

struct Server {
    base: String,
    seen: Arc<Seen>,
}

async fn serve(routes: &str) -> Server {
    let (secret, _) = deliveries();
    let broker = Arc::new(MemoryBroker::new(100));
    let seen = Arc::new(Seen::default());
    broker.set_handler(seen.clone());
    for ws in ["acme", "hello", "manual"] {
        broker.subscribe(ws).await.unwrap();
    }
    let config =
        PublisherConfig { github_secret: Some(secret), routes: Routes::parse(routes).unwrap(), ..PublisherConfig::new("publish-token") };
    Server { base: support::start(config, broker).await, seen }
}

async fn deliver(
    server: &Server,
    file: &str,
    query: &str,
    tamper: impl FnOnce(&mut reqwest::header::HeaderMap, &mut Vec<u8>),
) -> (u16, Value) {
    let (_, deliveries) = deliveries();
    let mut body = std::fs::read(fixture_dir().join(file)).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in deliveries[file]["headers"].as_object().unwrap() {
        headers.insert(reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.as_str().unwrap().parse().unwrap());
    }
    tamper(&mut headers, &mut body);
    let r =
        reqwest::Client::new().post(format!("{}/webhooks/github{query}", server.base)).headers(headers).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

const ROUTES: &str = r#"
[[route]]
repository = "Codertocat/*"
workspace = "hello"
"#;

#[tokio::test]
async fn a_delivery_is_published_once_to_its_routed_workspace() {
    let server = serve(ROUTES).await;
    let (status, body) = deliver(&server, "deployment_status.created.json", "", |_, _| {}).await;
    assert_eq!((status, &body["published"]), (202, &json!(1)), "{body}");
    let (status, body) = deliver(&server, "deployment_status.created.json", "", |_, _| {}).await;
    assert_eq!((status, body), (200, json!({"duplicate": true})), "a redelivery publishes nothing");
    let seen = server.seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0]["workspace_id"].as_str(), seen[0]["entity_ref"].as_str()), (Some("hello"), Some("component:default/hello-world")));
    assert_eq!(seen[0]["data"]["deployment"]["status"], "success");
}

#[tokio::test]
async fn bad_deliveries_get_their_status_and_publish_nothing() {
    let server = serve(ROUTES).await;
    let cases: Vec<(&str, &str, Box<Tamper>, u16, &str)> = vec![
        (
            "push.branch.json",
            "",
            Box::new(|h, _| {
                h.insert("x-hub-signature-256", "sha256=00".parse().unwrap());
            }),
            401,
            "unauthorized",
        ),
        (
            "push.branch.json",
            "",
            Box::new(|h, _| {
                h.remove("x-hub-signature-256");
            }),
            401,
            "unauthorized",
        ),
        ("push.branch.json", "", Box::new(|_, b| b.push(b' ')), 401, "unauthorized"),
        (
            "push.branch.json",
            "",
            Box::new(|h, _| {
                h.remove("x-github-event");
            }),
            400,
            "bad_request",
        ),
        ("push.branch.json", "?workspace_id=bad%20ws", Box::new(|_, _| {}), 400, "bad_request"),
    ];
    for (file, query, tamper, status, code) in cases {
        let (got, body) = deliver(&server, file, query, tamper).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{body}");
    }
    // Malformed JSON, correctly signed.
    let (secret, _) = deliveries();
    let body = b"{not json".to_vec();
    let sig = sign(&secret, &body);
    let (got, resp) = deliver(&server, "push.branch.json", "", |h, b| {
        *b = body.clone();
        h.insert("x-hub-signature-256", sig.parse().unwrap());
    })
    .await;
    assert_eq!((got, resp["error"]["code"].as_str()), (400, Some("bad_request")));
    // An event kind that is not mapped.
    let sig = sign(&secret, br#"{"action":"opened"}"#);
    let (got, resp) = deliver(&server, "push.branch.json", "", |h, b| {
        *b = br#"{"action":"opened"}"#.to_vec();
        h.insert("x-github-event", "issues".parse().unwrap());
        h.insert("x-hub-signature-256", sig.parse().unwrap());
    })
    .await;
    assert_eq!((got, &resp["published"]), (202, &json!(0)));
    // ping
    let (got, _) = deliver(&server, "push.branch.json", "", |h, _| {
        h.insert("x-github-event", "ping".parse().unwrap());
    })
    .await;
    assert_eq!(got, 200);
    assert!(server.seen.0.lock().unwrap().is_empty(), "nothing was published");
}

/// Changes a delivery before it is sent.
type Tamper = dyn FnOnce(&mut reqwest::header::HeaderMap, &mut Vec<u8>);

fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[tokio::test]
async fn routing_no_route_and_override() {
    let server = serve(ROUTES).await;
    // octo-org/octo-repo matches no rule.
    let (status, body) = deliver(&server, "workflow_run.completed.json", "", |_, _| {}).await;
    assert_eq!((status, body), (202, json!({"published": 0, "reason": "no route"})));
    let (status, _) = deliver(&server, "workflow_job.completed.json", "?workspace_id=manual", |_, _| {}).await;
    assert_eq!(status, 202);
    let seen = server.seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["workspace_id"], "manual");
}

#[tokio::test]
async fn an_unconfigured_webhook_is_404() {
    let base = support::start(PublisherConfig::new("t"), Arc::new(MemoryBroker::new(10))).await;
    let r = reqwest::Client::new().post(format!("{base}/webhooks/github")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_catalog_entity_claiming_the_repository_decides_the_entity_ref() {
    let (secret, _) = deliveries();
    let broker = Arc::new(MemoryBroker::new(100));
    let seen = Arc::new(Seen::default());
    broker.set_handler(seen.clone());
    broker.subscribe("hello").await.unwrap();
    let config = PublisherConfig {
        github_secret: Some(secret),
        backstage_token: Some("bs".into()),
        routes: Routes::parse(
            "[[route]]\nrepository = \"Codertocat/*\"\nworkspace = \"hello\"\n[[route]]\nbackstage_entity = \"*\"\nworkspace = \"hello\"\n",
        )
        .unwrap(),
        ..PublisherConfig::new("t")
    };
    let server = Server { base: support::start(config, broker).await, seen: seen.clone() };

    // Backstage: component "greeter" says its repository is Codertocat/Hello-World.
    let entity = |event_type: &str, id: &str| {
        json!({"eventId": id, "eventType": event_type, "entityRef": "component:default/greeter",
               "entityJson": {"kind": "Component", "metadata": {"name": "greeter", "namespace": "default",
                              "annotations": {"github.com/project-slug": "Codertocat/Hello-World"}}}})
    };
    let post_entity =
        |body: Value| reqwest::Client::new().post(format!("{}/webhooks/backstage", server.base)).bearer_auth("bs").json(&body).send();
    assert_eq!(post_entity(entity("entity_created", "1")).await.unwrap().status(), 202);
    assert_eq!(deliver(&server, "deployment_status.created.json", "", |_, _| {}).await.0, 202);

    // Once the entity is deleted the convention applies again.
    assert_eq!(post_entity(entity("entity_deleted", "2")).await.unwrap().status(), 202);
    assert_eq!(deliver(&server, "deployment.created.json", "", |_, _| {}).await.0, 202);

    let refs: Vec<(String, String)> = seen
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["entity_ref"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        refs,
        [
            ("entity_update".to_string(), "component:default/greeter".to_string()),
            ("deployment_update".to_string(), "component:default/greeter".to_string()),
            ("entity_update".to_string(), "component:default/greeter".to_string()),
            ("deployment_update".to_string(), "component:default/hello-world".to_string()),
        ]
    );
}

/// The in-memory broker's delivery store, except that its next claimed
/// publishes fail before storing anything, as when Redis is briefly unreachable.
struct FailingPublishes {
    inner: Arc<MemoryBroker>,
    failures_left: Mutex<u32>,
}

impl DeliveryStore for FailingPublishes {
    fn publish_once<'a>(
        &'a self,
        claim: &'a tidings_broker::DeliveryClaim,
        events: Vec<tidings_protocol::Event>,
    ) -> BoxFuture<'a, Result<tidings_broker::PublishedOnce, tidings_broker::BrokerError>> {
        let mut left = self.failures_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return Box::pin(std::future::ready(Err(tidings_broker::BrokerError::Unavailable("connection reset".into()))));
        }
        self.inner.publish_once(claim, events)
    }
    fn link_entity<'a>(&'a self, s: &'a str, k: &'a str, r: Option<&'a str>) -> BoxFuture<'a, Result<(), tidings_broker::BrokerError>> {
        self.inner.link_entity(s, k, r)
    }
    fn linked_entity<'a>(&'a self, s: &'a str, k: &'a str) -> BoxFuture<'a, Result<Option<String>, tidings_broker::BrokerError>> {
        self.inner.linked_entity(s, k)
    }
}

#[tokio::test]
async fn a_publish_that_fails_keeps_no_claim_so_the_retry_is_published_once() {
    let (secret, _) = deliveries();
    let broker = Arc::new(MemoryBroker::new(100));
    let failing = Arc::new(FailingPublishes { inner: broker.clone(), failures_left: Mutex::new(1) });
    let seen = Arc::new(Seen::default());
    broker.set_handler(seen.clone());
    broker.subscribe("hello").await.unwrap();
    let config = PublisherConfig { github_secret: Some(secret), routes: Routes::parse(ROUTES).unwrap(), ..PublisherConfig::new("t") };
    let server = Server { base: support::start_with(config, broker, failing).await, seen: seen.clone() };

    let (status, body) = deliver(&server, "push.branch.json", "", |_, _| {}).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")));
    assert!(seen.0.lock().unwrap().is_empty(), "nothing reported, nothing published");
    let (status, _) = deliver(&server, "push.branch.json", "", |_, _| {}).await;
    assert_eq!(status, 202, "GitHub's redelivery (same id) goes through");
    assert_eq!(deliver(&server, "push.branch.json", "", |_, _| {}).await.0, 200, "and only once");
    assert_eq!(seen.0.lock().unwrap().len(), 1);
}
