//! The live dashboard page (`TIDINGS_DASHBOARD=true`, on in `tidings dev`): the
//! files under `crates/gateway/assets`, compiled from `clients/js` and
//! committed so that building the gateway never needs npm. `npm test` there
//! fails when this copy differs from a fresh build.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use tidings_protocol::codes::error;

/// Served path under `/assets/` → (content type, content).
macro_rules! assets {
    ($($path:literal => $type:expr),* $(,)?) => {
        /// Every file of `crates/gateway/assets` but `index.html`.
        pub const ASSETS: &[(&str, &str, &str)] = &[$(($path, $type, include_str!(concat!("../assets/", $path)))),*];
    };
}

const JS: &str = "text/javascript; charset=utf-8";

assets! {
    "dashboard/app.js" => JS,
    "dashboard/chart.js" => JS,
    "dashboard/dom.js" => JS,
    "dashboard/favicon.svg" => "image/svg+xml",
    "dashboard/logs.js" => JS,
    "dashboard/metrics.js" => JS,
    "dashboard/panels.js" => JS,
    "dashboard/style.css" => "text/css; charset=utf-8",
    "src/backoff.js" => JS,
    "src/client.js" => JS,
    "src/index.js" => JS,
    "src/protocol.js" => JS,
}

pub const INDEX_HTML: &str = include_str!("../assets/index.html");

/// Same-origin code only, no inline script or style, no framing: even a value
/// that slipped past the page's text-only rendering could not run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `/` and `/assets/*`.
pub fn router() -> Router {
    Router::new().route("/", get(index)).route("/assets/{*path}", get(asset))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            // The files change with the binary; revalidating is cheap next to a stale page.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, body)) => page(content_type, body),
        None => ApiError::new(StatusCode::NOT_FOUND, error::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path, out: &mut Vec<String>, root: &std::path::Path) {
        for entry in std::fs::read_dir(dir).expect("assets directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files(&path, out, root);
            } else {
                out.push(path.strip_prefix(root).expect("under root").to_string_lossy().replace('\\', "/"));
            }
        }
    }

    /// A file added to the build but not to `assets!` would be a 404 in the browser.
    #[test]
    fn every_asset_file_is_served() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let mut on_disk = Vec::new();
        files(&root, &mut on_disk, &root);
        on_disk.retain(|p| p != "index.html");
        on_disk.sort();
        let mut served: Vec<String> = ASSETS.iter().map(|(p, _, _)| p.to_string()).collect();
        served.sort();
        assert_eq!(on_disk, served);
    }

    #[test]
    fn the_page_loads_only_what_is_served() {
        for reference in ["assets/dashboard/style.css", "assets/dashboard/app.js"] {
            assert!(INDEX_HTML.contains(reference), "{reference}");
            assert!(ASSETS.iter().any(|(p, _, _)| format!("assets/{p}") == reference), "{reference}");
        }
        assert!(!INDEX_HTML.contains("<script>"), "no inline script: the CSP forbids it");
        assert!(!INDEX_HTML.contains("style="), "no inline style: the CSP forbids it");
    }
}
