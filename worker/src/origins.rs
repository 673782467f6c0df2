//! Which web origins may talk to the worker (`CORS_ORIGINS`): exact origins
//! (`https://chat.example.com`) and wildcard subdomains (`https://*.vercel.app`). Browsers enforce
//! CORS on long-polling requests; websockets are not covered by CORS, so the Socket.IO connect step
//! checks the `Origin` header itself.

use axum::http::HeaderValue;
use tower_http::cors::{AllowOrigin, CorsLayer};

#[derive(Clone, Debug, Default)]
pub struct Origins {
    exact: Vec<String>,
    /// (scheme with `://`, host suffix starting with `.`)
    wildcards: Vec<(String, String)>,
}

impl Origins {
    /// Parses a comma-separated list; `None` for an empty one.
    pub fn parse(list: &str) -> Result<Option<Origins>, String> {
        let mut origins = Origins::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((scheme, host)) = entry.split_once("://") else {
                return Err(format!("{entry:?}: expected scheme://host, e.g. https://chat.example.com"));
            };
            match host.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => {
                    origins.wildcards.push((format!("{scheme}://"), suffix.to_owned()))
                }
                Some(_) => return Err(format!("{entry:?}: a wildcard stands for subdomains: https://*.example.com")),
                None => origins.exact.push(entry.trim_end_matches('/').to_owned()),
            }
        }
        Ok((!origins.exact.is_empty() || !origins.wildcards.is_empty()).then_some(origins))
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.exact.iter().any(|o| o == origin)
            || self.wildcards.iter().any(|(scheme, suffix)| {
                origin
                    .strip_prefix(scheme.as_str())
                    .is_some_and(|host| host.ends_with(suffix.as_str()) && host.len() > suffix.len())
            })
    }

    /// CORS headers for the allowed origins (long-polling from a browser page on another origin).
    pub fn cors_layer(&self) -> CorsLayer {
        let allowed = self.clone();
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                origin.to_str().is_ok_and(|o| allowed.allows(o))
            }))
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([axum::http::header::CONTENT_TYPE])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_subdomains() {
        let o = Origins::parse("https://chat.example.com, https://*.vercel.app").expect("valid").expect("some");
        assert!(o.allows("https://chat.example.com"));
        assert!(o.allows("https://my-app-123.vercel.app"));
        assert!(!o.allows("https://vercel.app"), "the wildcard is for subdomains");
        assert!(!o.allows("http://my-app.vercel.app"), "the scheme counts");
        assert!(!o.allows("https://evilvercel.app"));
        assert!(!o.allows("https://chat.example.com.evil.org"));
        assert!(Origins::parse("chat.example.com").is_err());
        assert!(Origins::parse("https://*vercel.app").is_err());
        assert!(Origins::parse(" , ").expect("valid").is_none());
    }
}
