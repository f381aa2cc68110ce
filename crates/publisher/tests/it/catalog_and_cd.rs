//! Backstage catalog history events and Argo CD notifications: every fixture
//! through its source module, and the bearer-token HTTP edge.

use crate::support;

use std::path::PathBuf;
use std::sync::Arc;

use crate::support::Seen;
use serde_json::{Value, json};
use tidings_broker::{Broker, MemoryBroker};
use tidings_publisher::PublisherConfig;
use tidings_publisher::routes::Routes;
use tidings_publisher::webhooks::{Parsed, argocd, backstage};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)).unwrap()
}

fn drafts(parsed: Parsed) -> (tidings_publisher::routes::Subject, Vec<Value>) {
    match parsed {
        Parsed::Events { subject, events } => {
            (subject, events.into_iter().map(|d| json!({"type": d.event_type, "data": d.data})).collect())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn backstage_history_events_become_entity_updates() {
    for (file, change) in [("entity_created", "created"), ("entity_updated", "updated"), ("entity_deleted", "deleted")] {
        let body = fixture(&format!("backstage/events-bus.catalog-history.{file}.json"));
        let (subject, events) = drafts(backstage::parse(&body).unwrap());
        assert_eq!(subject.backstage_entity.as_deref(), Some("component:default/my-service"), "{file}");
        let d = &events[0]["data"];
        assert_eq!(events[0]["type"], "entity_update");
        assert_eq!(
            (d["kind"].as_str(), d["namespace"].as_str(), d["name"].as_str(), d["change_type"].as_str()),
            (Some("Component"), Some("default"), Some("my-service"), Some(change)),
            "{file}"
        );
        assert_eq!(d["entity"]["metadata"]["name"], "my-service", "{file}");
        assert!(backstage::event_id(&body).is_some(), "{file}");
    }
    // The older spelling: bare event, `id`, entityJson as a JSON string.
    let entity = String::from_utf8(fixture("backstage/entity.component.my-service.json")).unwrap();
    let old = json!({"id": "77", "eventAt": "2025-06-04T10:00:00Z", "eventType": "entity_updated", "entityRef": "component:default/my-service", "entityJson": entity});
    let body = serde_json::to_vec(&old).unwrap();
    assert_eq!(backstage::event_id(&body).as_deref(), Some("77"));
    let (subject, events) = drafts(backstage::parse(&body).unwrap());
    assert_eq!(events[0]["data"]["entity"]["kind"], "Component");
    assert!(subject.repository.is_some(), "github.com/project-slug annotation becomes the repository");

    let location = fixture("backstage/events-bus.catalog-history.location_created.json");
    assert!(matches!(backstage::parse(&location).unwrap(), Parsed::Ignored { .. }));
    let errors = fixture("backstage/events-bus.catalog-errors.json");
    let (subject, events) = drafts(backstage::parse(&errors).unwrap());
    assert_eq!(subject.backstage_entity.as_deref(), Some("component:default/my-service"));
    assert_eq!((events[0]["type"].as_str(), events[0]["data"]["health"]["level"].as_str()), (Some("health_update"), Some("error")));
    assert!(events[0]["data"]["health"]["message"].as_str().unwrap().contains("spec.lifecycle"));
    let other_topic = br#"{"topic":"experimental.catalog.conflict","eventPayload":{}}"#;
    assert!(matches!(backstage::parse(other_topic).unwrap(), Parsed::Ignored { kind } if kind == "experimental.catalog.conflict"));

    // The history REST API's page: posted item by item.
    let page: Value = serde_json::from_slice(&fixture("backstage/rest.catalog-history-v1-events.response.json")).unwrap();
    assert!(backstage::parse(&serde_json::to_vec(&page).unwrap()).is_err(), "a whole page is refused with a clear reason");
    for item in page["items"].as_array().unwrap() {
        let (subject, events) = drafts(backstage::parse(&serde_json::to_vec(item).unwrap()).unwrap());
        assert_eq!(subject.backstage_entity.as_deref(), Some("component:default/my-service"));
        assert_eq!(events[0]["type"], "entity_update");
    }
    // An HTTP-ingress body without entityJson: the ref alone names the entity.
    let ingress: Value = serde_json::from_slice(&fixture("backstage/http-ingress.events-http-topic.example.json")).unwrap();
    let (_, events) = drafts(backstage::parse(&serde_json::to_vec(&ingress["request"]["body"]).unwrap()).unwrap());
    assert_eq!((events[0]["data"]["name"].as_str(), events[0]["data"]["change_type"].as_str()), (Some("my-service"), Some("updated")));
    assert_eq!(events[0]["data"]["entity"], Value::Null);
    assert!(backstage::parse(b"{}").is_err());
    assert!(backstage::parse(br#"{"eventType":"entity_updated"}"#).is_err(), "no entity named");
}

#[test]
fn argocd_notifications_become_deployment_and_health_updates() {
    let cases = [
        ("on-sync-running", "in_progress", false, "info"),
        ("on-sync-succeeded", "success", true, "info"),
        ("on-sync-failed", "failed", true, "error"),
        ("on-deployed", "success", true, "info"),
        ("on-health-degraded", "success", true, "error"),
    ];
    for (name, status, ended, level) in cases {
        let body = fixture(&format!("argocd/webhook.{name}.json"));
        let (subject, events) = drafts(argocd::parse(&body).unwrap());
        assert_eq!(subject.argocd_app.as_deref(), Some("guestbook"), "{name}");
        let d = &events[0]["data"]["deployment"];
        assert_eq!((events[0]["type"].as_str(), d["status"].as_str()), (Some("deployment_update"), Some(status)), "{name}");
        assert_eq!(d["commit"], "53e28ff20cc530b9ada2173fbbd64d48338583ba", "{name}");
        assert_eq!(
            (d["environment"].as_str(), d["url"].as_str()),
            (Some("guestbook"), Some("https://argocd.example.com/applications/guestbook")),
            "{name}"
        );
        assert_eq!(d.get("end_time").is_some(), ended, "{name}");
        assert_eq!(
            (events[1]["type"].as_str(), events[1]["data"]["health"]["level"].as_str()),
            (Some("health_update"), Some(level)),
            "{name}"
        );
    }
    assert!(argocd::parse(b"guestbook synced").is_err(), "a plain-text message body is refused");
    assert!(argocd::parse(b"{}").is_err());
}

#[tokio::test]
async fn bearer_webhooks_route_deduplicate_and_refuse() {
    let broker = Arc::new(MemoryBroker::new(100));
    let seen = Arc::new(Seen::default());
    broker.set_handler(seen.clone());
    broker.subscribe("catalog").await.unwrap();
    broker.subscribe("cd").await.unwrap();
    let routes = Routes::parse("[[route]]\nbackstage_entity = \"component:default/*\"\nworkspace = \"catalog\"\n[[route]]\nargocd_app = \"guest*\"\nworkspace = \"cd\"\n").unwrap();
    let config =
        PublisherConfig { backstage_token: Some("bs".into()), argocd_token: Some("cd".into()), routes, ..PublisherConfig::new("t") };
    let base = support::start(config, broker).await;
    let post = |path: &str, token: &str, body: Vec<u8>| {
        let req = reqwest::Client::new().post(format!("{base}{path}")).bearer_auth(token).body(body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let updated = fixture("backstage/events-bus.catalog-history.entity_updated.json");
    assert_eq!(post("/webhooks/backstage", "wrong", updated.clone()).await.0, 401);
    assert_eq!(post("/webhooks/backstage", "bs", b"not json".to_vec()).await.0, 400);
    assert_eq!(post("/webhooks/backstage", "bs", updated.clone()).await.0, 202);
    assert_eq!(post("/webhooks/backstage", "bs", updated).await, (200, json!({"duplicate": true})), "same eventId");
    let degraded = fixture("argocd/webhook.on-health-degraded.json");
    assert_eq!(post("/webhooks/argocd", "bs", degraded.clone()).await.0, 401, "each source has its own token");
    let (status, body) = post("/webhooks/argocd", "cd", degraded.clone()).await;
    assert_eq!((status, &body["published"]), (202, &json!(2)));
    assert_eq!(post("/webhooks/argocd", "cd", degraded).await.0, 200, "the same body again is a redelivery");

    let seen = seen.0.lock().unwrap().clone();
    let summary: Vec<(&str, &str, &str)> = seen
        .iter()
        .map(|e| (e["workspace_id"].as_str().unwrap(), e["type"].as_str().unwrap(), e["entity_ref"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("catalog", "entity_update", "component:default/my-service"),
            ("cd", "deployment_update", "component:default/guestbook"),
            ("cd", "health_update", "component:default/guestbook"),
        ]
    );
}
