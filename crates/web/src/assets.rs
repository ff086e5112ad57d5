//! The web interface's pages and assets, compiled into the binary: plain HTML,
//! CSS and ES modules, no build step. Every answer carries a strict
//! Content-Security-Policy (no inline script or style, nothing from another
//! origin), `X-Content-Type-Options: nosniff`, and an ETag with
//! `Cache-Control: no-cache`, so browsers revalidate cheaply (304) and never
//! run a stale script after an upgrade.

use axum::{
    extract::Path,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use clairon_http::ApiError;

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $ty:expr) => {
        Asset {
            path: $path,
            content_type: $ty,
            body: include_bytes!(concat!("../assets/", $path)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Files under `/assets/`.
pub static ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/api.js", JS),
    asset!("js/charts.js", JS),
    asset!("js/layout.js", JS),
    asset!("js/live.js", JS),
    asset!("js/session.js", JS),
    asset!("js/ui.js", JS),
    asset!("js/pages/dashboard.js", JS),
    asset!("js/pages/index.js", JS),
    asset!("js/pages/logs.js", JS),
    asset!("js/pages/monitoring.js", JS),
    asset!("js/pages/notifications.js", JS),
];

/// Pages by route.
pub static PAGES: &[(&str, Asset)] = &[
    ("/", asset!("index.html", HTML)),
    ("/dashboard", asset!("dashboard.html", HTML)),
    ("/notifications", asset!("notifications.html", HTML)),
    ("/monitoring", asset!("monitoring.html", HTML)),
    ("/logs", asset!("logs.html", HTML)),
];

/// FNV-1a: stable for a given content, so the ETag changes only with the file.
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("\"{h:016x}\"")
}

/// Headers every page and asset answer carries.
pub fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

pub fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let tag = etag(asset.body);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = res.headers_mut();
    security_headers(h);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    res
}

pub(crate) async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => serve(a, &headers),
        None => ApiError::NotFound("There is no such file.".into()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(a: &Asset) -> &'static str {
        std::str::from_utf8(a.body).expect("assets are UTF-8")
    }

    fn all() -> impl Iterator<Item = &'static Asset> {
        ASSETS.iter().chain(PAGES.iter().map(|(_, a)| a))
    }

    /// Every `/assets/…` path a page or module names is served.
    #[test]
    fn every_referenced_asset_is_embedded() {
        for a in all() {
            let body = text(a);
            for (i, _) in body.match_indices("/assets/") {
                let rest = &body[i + "/assets/".len()..];
                let end = rest
                    .find(['"', '\'', '`', ')', ' ', '?', '#'])
                    .unwrap_or(rest.len());
                let path = &rest[..end];
                assert!(
                    ASSETS.iter().any(|x| x.path == path),
                    "{} names /assets/{path}, which is not embedded",
                    a.path
                );
            }
        }
    }

    /// ` onclick=`, ` onload=`, …
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.chars().take_while(char::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    /// The CSP forbids inline code; the pages must not need it, and data is
    /// only ever written as text.
    #[test]
    fn pages_have_no_inline_script_style_or_html_sinks() {
        for (route, a) in PAGES {
            let body = text(a);
            for (i, _) in body.match_indices("<script") {
                let tag = &body[i..i + body[i..].find('>').unwrap()];
                assert!(tag.contains("src=\"/assets/"), "{route}: inline script");
            }
            assert!(!body.contains("<style"), "{route}: inline style");
            assert!(!body.contains(" style=\""), "{route}: style attribute");
            assert!(!has_inline_handler(body), "{route}: inline event handler");
            assert!(body.contains("name=\"viewport\""), "{route}: phone width");
        }
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let body = text(a);
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ] {
                assert!(!body.contains(sink), "{} uses {sink}", a.path);
            }
            assert!(!body.contains("?token="), "{}: token in a URL", a.path);
        }
    }

    #[test]
    fn answers_carry_type_csp_nosniff_and_revalidate_by_etag() {
        let a = ASSETS.iter().find(|a| a.path == "js/api.js").unwrap();
        let res = serve(a, &HeaderMap::new());
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers();
        assert_eq!(h[header::CONTENT_TYPE], JS);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
        let tag = h[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(serve(a, &again).status(), StatusCode::NOT_MODIFIED);
    }
}
