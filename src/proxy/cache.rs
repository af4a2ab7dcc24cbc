//! A `last_good` route's answers: per route, per request (path, query and the caller's
//! credentials), the last 2xx response copied while it streamed, up to a size bound.
//! Never another route's, never another caller's.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests remembered per route; the oldest goes first beyond it.
const MAX_ENTRIES: usize = 1_024;

/// The request headers that say who asks and what answer fits, always part of the key (a
/// route's `key_headers` add to them).
const KEY_HEADERS: [&str; 8] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "accept",
    "accept-encoding",
    "accept-language",
    "x-api-key",
    "stripe-account",
];

/// One remembered answer.
pub(super) struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

/// One route's answers.
pub(super) struct LastGood {
    pub max_age: Duration,
    pub max_bytes: u64,
    /// The route's own identity headers, beside [`KEY_HEADERS`].
    pub key_headers: Vec<http::HeaderName>,
    entries: Mutex<HashMap<String, std::sync::Arc<Answer>>>,
}

impl LastGood {
    pub(super) fn new(max_age: Duration, max_bytes: u64, key_headers: Vec<http::HeaderName>) -> Self {
        LastGood {
            max_age,
            max_bytes,
            key_headers,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key of a request: its path and query under the service, and a digest of the headers
    /// that say who asks and what answer fits ([`KEY_HEADERS`] and the route's own): one
    /// caller's answer is never another's, nor a gzip answer one for a client without gzip.
    pub(super) fn key(&self, path_and_query: &str, headers: &http::HeaderMap) -> String {
        let mut h = Sha256::new();
        let names = KEY_HEADERS
            .iter()
            .map(|n| http::HeaderName::from_static(n))
            .chain(self.key_headers.iter().cloned());
        for name in names {
            h.update(name.as_str().as_bytes());
            h.update([0]);
            for v in headers.get_all(&name) {
                h.update(v.as_bytes());
                h.update([0]);
            }
            h.update([1]);
        }
        let digest = h.finalize();
        let mut key = String::with_capacity(path_and_query.len() + 65);
        key.push_str(path_and_query);
        key.push(' ');
        for b in &digest[..16] {
            key.push_str(&format!("{b:02x}"));
        }
        key
    }

    /// Whether an exchange's answer may be kept and served again: a whole 2xx answer (not a
    /// range), to a request without `Range`, that is not private, not `no-store`, sets no cookie
    /// and does not vary on headers the key may not hold.
    pub(super) fn keepable(request: &http::HeaderMap, status: http::StatusCode, response: &http::HeaderMap) -> bool {
        let cache_control = response
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                let v = v.to_ascii_lowercase();
                v.contains("no-store") || v.contains("private")
            });
        status.is_success()
            && status != http::StatusCode::PARTIAL_CONTENT
            && !request.contains_key(http::header::RANGE)
            && !response.contains_key(http::header::SET_COOKIE)
            && !response.contains_key(http::header::VARY)
            && !cache_control
    }

    pub(super) fn get(&self, key: &str, now: Instant) -> Option<std::sync::Arc<Answer>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let a = entries.get(key)?;
        (now.saturating_duration_since(a.at) <= self.max_age).then(|| a.clone())
    }

    pub(super) fn put(&self, key: String, answer: Answer) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES
            && !entries.contains_key(&key)
            && let Some(oldest) = entries.iter().min_by_key(|(_, a)| a.at).map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(key, std::sync::Arc::new(answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_formats_and_paths_are_kept_apart_and_age_out() {
        let c = LastGood::new(
            Duration::from_secs(10),
            100,
            vec![http::HeaderName::from_static("x-tenant")],
        );
        let mut alice = http::HeaderMap::new();
        alice.insert(http::header::AUTHORIZATION, "Bearer a".parse().unwrap());
        let mut bob = http::HeaderMap::new();
        bob.insert(http::header::AUTHORIZATION, "Bearer b".parse().unwrap());
        let t0 = Instant::now();
        let answer = |body: &'static str| Answer {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            at: t0,
        };
        c.put(c.key("/v1/prices/1", &alice), answer("alice's"));
        assert_eq!(c.get(&c.key("/v1/prices/1", &alice), t0).unwrap().body, "alice's");
        assert!(
            c.get(&c.key("/v1/prices/1", &bob), t0).is_none(),
            "another caller's answer"
        );
        assert!(
            c.get(&c.key("/v1/prices/2", &alice), t0).is_none(),
            "another path's answer"
        );
        assert!(
            c.get(&c.key("/v1/prices/1?x=1", &alice), t0).is_none(),
            "another query's"
        );
        let mut gzip = alice.clone();
        gzip.insert(http::header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        assert!(
            c.get(&c.key("/v1/prices/1", &gzip), t0).is_none(),
            "an answer for another encoding"
        );
        let mut tenant = alice.clone();
        tenant.insert("x-tenant", "t2".parse().unwrap());
        assert!(
            c.get(&c.key("/v1/prices/1", &tenant), t0).is_none(),
            "the route's own key header"
        );
        assert!(
            c.get(&c.key("/v1/prices/1", &alice), t0 + Duration::from_secs(11))
                .is_none(),
            "too old"
        );
    }

    #[test]
    fn only_whole_shareable_answers_are_kept() {
        let ok = http::StatusCode::OK;
        let none = http::HeaderMap::new();
        assert!(LastGood::keepable(&none, ok, &none));
        for (name, value) in [
            ("set-cookie", "s=1"),
            ("vary", "X-Tenant"),
            ("cache-control", "private, max-age=60"),
            ("cache-control", "no-store"),
        ] {
            let mut h = http::HeaderMap::new();
            h.insert(http::HeaderName::from_static(name), value.parse().unwrap());
            assert!(!LastGood::keepable(&none, ok, &h), "{name}: {value}");
        }
        let mut range = http::HeaderMap::new();
        range.insert(http::header::RANGE, "bytes=0-9".parse().unwrap());
        assert!(!LastGood::keepable(&range, ok, &none));
        assert!(!LastGood::keepable(&none, http::StatusCode::PARTIAL_CONTENT, &none));
        assert!(!LastGood::keepable(&none, http::StatusCode::BAD_GATEWAY, &none));
    }
}
