//! The chat's web client at `/`: plain HTML, CSS and JS compiled into the worker (`assets/web/`), so
//! a person can use the chat with nothing else installed and nothing fetched at run time. The
//! page names its script and style by a hash of their content, so they are cached for good and a
//! new release is picked up at once (the page itself is revalidated every time).

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../assets/web/index.html");
const APP_JS: &str = include_str!("../assets/web/app.js");
const APP_CSS: &str = include_str!("../assets/web/app.css");

/// The page's own sources only: the chat is same-origin (its websocket included); inline script
/// and anything from elsewhere are refused, so a message can never run as code.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   connect-src 'self' ws: wss:; media-src 'self' blob:; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The page with its assets' hashed names, and those names.
struct Site {
    index: String,
    js: String,
    css: String,
}

static SITE: LazyLock<Site> = LazyLock::new(|| {
    let js = format!("app-{:016x}.js", fnv(APP_JS));
    let css = format!("app-{:016x}.css", fnv(APP_CSS));
    let index = INDEX.replace("{{app.js}}", &format!("/assets/{js}")).replace("{{app.css}}", &format!("/assets/{css}"));
    Site { index, js, css }
});

/// FNV-1a: a name that changes with the content, not a defence.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

pub async fn index() -> Response {
    let mut response = SITE.index.clone().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = if file == SITE.js {
        (APP_JS, "application/javascript; charset=utf-8")
    } else if file == SITE.css {
        (APP_CSS, "text/css; charset=utf-8")
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The name changes with the content: cached for good.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_names_its_assets_by_their_content() {
        let site = &*super::SITE;
        assert!(
            site.index.contains(&format!("/assets/{}", site.js))
                && site.index.contains(&format!("/assets/{}", site.css))
        );
        assert!(!site.index.contains("{{"), "every placeholder filled");
    }
}
