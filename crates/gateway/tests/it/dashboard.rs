//! The dashboard page: off unless asked for, served with a policy that forbids
//! inline and foreign code when on.

use crate::support::*;

async fn fetch(gw: &TestGateway, path: &str) -> reqwest::Response {
    reqwest::get(format!("{}{path}", gw.base())).await.unwrap()
}

#[tokio::test]
async fn the_dashboard_is_off_by_default() {
    let gw = TestGateway::start().await;
    for path in ["/", "/assets/dashboard/app.js"] {
        let r = fetch(&gw, path).await;
        assert_eq!(r.status(), 404, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
}

#[tokio::test]
async fn the_dashboard_serves_its_page_and_assets_only() {
    let gw = TestGateway::start_with(|c| c.dashboard = true).await;
    let page = fetch(&gw, "/").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
    assert!(page.text().await.unwrap().contains("assets/dashboard/app.js"));

    for (path, content_type, needle) in [
        ("/assets/dashboard/app.js", "text/javascript; charset=utf-8", "TidingsClient"),
        ("/assets/src/client.js", "text/javascript; charset=utf-8", "class TidingsClient"),
        ("/assets/dashboard/style.css", "text/css; charset=utf-8", "--bg"),
    ] {
        let r = fetch(&gw, path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], content_type, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    // Nothing outside the compiled-in list, however the path is spelled.
    for path in ["/assets/nope.js", "/assets/../Cargo.toml", "/assets/%2e%2e/src/lib.rs", "/assets/"] {
        let r = fetch(&gw, path).await;
        assert_eq!(r.status(), 404, "{path}");
    }
    // The API is untouched by the page being on.
    let t = gw.token("acme");
    let r = reqwest::Client::new().get(format!("{}/v1/workspaces/acme/events", gw.base())).bearer_auth(t).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
