//! The sidecar proxy's settings: `[proxy]`, each service's `upstream`, and its
//! `[[services.NAME.routes]]` (operations by method and path, fallbacks).
//!
//! ```toml
//! [proxy]
//! bind = "127.0.0.1:9000"      # breakerbox proxy's address (its --bind wins)
//! enabled = true               # breakerbox serve runs the proxy too
//! max_body = "16MiB"           # request bodies over this: 413
//! max_header = "32KiB"         # request line + headers over this: 431
//! max_concurrent = 256         # requests in flight per upstream (a bulkhead): 503 beyond it
//! connect_timeout = "3s"       # connecting (and the TLS handshake) to an upstream
//! total_timeout = "60s"        # a whole exchange, the response body included
//! ca_file = "/etc/ssl/internal-ca.pem"   # optional: verify upstreams against these CAs only
//!
//! [proxy.ports]                # optional: one listening port per service, no path prefix
//! stripe = 9001
//!
//! [services.stripe]
//! upstream = "https://api.stripe.com"
//!
//! [[services.stripe.routes]]
//! method = "POST"
//! path = "/v1/customers"
//! operation = "customers.create"
//!
//! [[services.stripe.routes]]
//! method = "GET"
//! path = "/v1/prices/{id}"
//! fallback = "last_good"       # or "static" with status, headers and body
//! max_age = "10m"
//! ```

use super::knobs::{Raw, Source, describe_toml, parse_duration};
use super::reader::Reader;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// `[proxy]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProxyConfig {
    /// Where `breakerbox proxy` listens when no `--bind` is given.
    pub bind: SocketAddr,
    /// `breakerbox serve` runs the proxy too.
    pub enabled: bool,
    /// Largest request body (bytes): 413 beyond it.
    pub max_body_bytes: u64,
    /// Largest request line + headers (bytes): 431 beyond it.
    pub max_header_bytes: u64,
    /// Requests in flight per upstream: 503 beyond it.
    pub max_concurrent: u32,
    /// Connecting to an upstream, TLS included (ms).
    pub connect_timeout_ms: u64,
    /// A whole exchange, response body included (ms). The service's `call_timeout` bounds the
    /// wait for the response's headers.
    pub total_timeout_ms: u64,
    /// One listening port per service (the path is the upstream's, no prefix).
    pub ports: BTreeMap<String, u16>,
    /// PEM file of the CA certificates that upstreams' certificates are verified against,
    /// instead of the system's store (for upstreams with a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

/// `[proxy] bind`'s default.
pub const DEFAULT_PROXY_BIND: &str = "127.0.0.1:9000";

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            bind: DEFAULT_PROXY_BIND.parse().expect("a valid address"),
            enabled: false,
            max_body_bytes: 16 << 20,
            max_header_bytes: 32 << 10,
            max_concurrent: 256,
            connect_timeout_ms: 3_000,
            total_timeout_ms: 60_000,
            ports: BTreeMap::new(),
            ca_file: None,
        }
    }
}

/// A service the proxy forwards to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Upstream {
    /// The service.
    pub service: String,
    /// `scheme://authority[/base]` as configured.
    pub url: String,
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`: the `Host` header sent.
    pub authority: String,
    /// A path every forwarded path is put under ("" or "/base", no trailing slash).
    pub base_path: String,
    /// Its routes, in file order (the first match wins).
    pub routes: Vec<Route>,
}

/// One `[[services.NAME.routes]]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    /// The method matched (upper case); `None`: any.
    pub method: Option<String>,
    /// The path template as written (`/v1/customers/{id}`).
    pub path: String,
    /// The operation whose breaker the route's calls go through (None: the service's).
    pub operation: Option<String>,
    /// What answers when the breaker rejects, the call times out or cannot connect.
    pub fallback: Option<RouteFallback>,
    /// `last_good`: request headers that tell callers apart beside the built-in ones
    /// (`Authorization`, `Cookie`, `Accept*`, `X-Api-Key`, `Stripe-Account`, …).
    pub key_headers: Vec<String>,
    /// Where it was defined.
    pub source: Source,
}

/// A route's fallback.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteFallback {
    /// A fixed answer.
    Static {
        /// Its status.
        status: u16,
        /// Its headers.
        headers: Vec<(String, String)>,
        /// Its body.
        body: String,
    },
    /// The last 2xx answer to the same request (same path, query and credentials) of this
    /// route, if it is younger than `max_age_ms` and was at most `max_bytes` long. GET only.
    LastGood {
        /// Oldest answer served (ms).
        max_age_ms: u64,
        /// Largest body kept (bytes).
        max_bytes: u64,
    },
}

impl Route {
    /// Whether `method` and `path` (the path under the service, starting with `/`) match.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if let Some(m) = &self.method
            && m != method
        {
            return false;
        }
        let mut want = self.path.split('/').skip(1);
        let mut got = path.split('/').skip(1);
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) => {
                    let param = w.starts_with('{') && w.ends_with('}');
                    if (param && g.is_empty()) || (!param && w != g) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    }
}

const PROXY_KEYS: [&str; 9] = [
    "ca_file",
    "bind",
    "enabled",
    "max_body",
    "max_header",
    "max_concurrent",
    "connect_timeout",
    "total_timeout",
    "ports",
];
const ROUTE_KEYS: [&str; 10] = [
    "key_headers",
    "method",
    "path",
    "operation",
    "fallback",
    "status",
    "headers",
    "body",
    "max_age",
    "max_bytes",
];
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// A size: a whole number of bytes, or a string with a unit (`"16MiB"`, `"32KiB"`, `"1MB"`).
pub(crate) fn parse_bytes(v: &DeValue<'_>) -> Result<u64, String> {
    match v {
        DeValue::Integer(i) => i
            .as_str()
            .parse::<u64>()
            .map_err(|_| format!("{} must be a whole number of bytes", i.as_str())),
        DeValue::String(s) => {
            let t = s.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (n, unit) = t.split_at(split);
            let n: u64 = n
                .parse()
                .map_err(|_| format!("{s:?} is not a size (e.g. 1048576, \"512KiB\", \"16MiB\")"))?;
            let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "kb" => 1_000,
                "kib" => 1 << 10,
                "mb" => 1_000_000,
                "mib" => 1 << 20,
                "gb" => 1_000_000_000,
                "gib" => 1 << 30,
                other => {
                    return Err(format!(
                        "{s:?}: unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB or GiB)"
                    ));
                }
            };
            n.checked_mul(factor).ok_or_else(|| format!("{s:?} is too large"))
        }
        other => Err(format!("{} is not a size (e.g. \"16MiB\")", describe_toml(other))),
    }
}

fn positive(r: &mut Reader<'_>, at: usize, key: &str, v: Result<u64, String>) -> Option<u64> {
    match v {
        Ok(0) => {
            r.problem(at, format!("{key}: must be more than 0"));
            None
        }
        Ok(n) => Some(n),
        Err(e) => {
            r.problem(at, format!("{key}: {e}"));
            None
        }
    }
}

pub(super) fn read(r: &mut Reader<'_>, value: &Spanned<DeValue<'_>>) -> ProxyConfig {
    let mut config = ProxyConfig::default();
    let Some(table) = r.table("proxy", value) else {
        return config;
    };
    for (key, v) in table.iter() {
        let at = v.span().start;
        let raw = Raw::Toml(v.get_ref());
        match key.get_ref().as_ref() {
            "bind" => match v.get_ref() {
                DeValue::String(s) => match s.parse::<SocketAddr>() {
                    Ok(a) => config.bind = a,
                    Err(_) => r.problem(
                        at,
                        format!("proxy.bind: {s:?} is not an address (e.g. \"127.0.0.1:9000\")"),
                    ),
                },
                other => r.problem(at, format!("proxy.bind: {} is not a string", describe_toml(other))),
            },
            "ca_file" => match v.get_ref() {
                DeValue::String(s) if !s.is_empty() => config.ca_file = Some(s.to_string().into()),
                other => r.problem(
                    at,
                    format!("proxy.ca_file: {} is not a file's path", describe_toml(other)),
                ),
            },
            "enabled" => match v.get_ref() {
                DeValue::Boolean(b) => config.enabled = *b,
                other => r.problem(
                    at,
                    format!("proxy.enabled: {} is not true or false", describe_toml(other)),
                ),
            },
            "max_body" => {
                if let Some(n) = positive(r, at, "proxy.max_body", parse_bytes(v.get_ref())) {
                    config.max_body_bytes = n;
                }
            }
            "max_header" => match parse_bytes(v.get_ref()) {
                Ok(n) if (1_024..=1 << 20).contains(&n) => config.max_header_bytes = n,
                Ok(n) => r.problem(at, format!("proxy.max_header: {n} bytes is outside 1KiB..1MiB")),
                Err(e) => r.problem(at, format!("proxy.max_header: {e}")),
            },
            "max_concurrent" => {
                let n = match v.get_ref() {
                    DeValue::Integer(i) => i
                        .as_str()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n <= 1_000_000)
                        .ok_or_else(|| format!("{} must be a whole number from 1 to 1000000", i.as_str())),
                    other => Err(format!("{} is not a whole number", describe_toml(other))),
                };
                if let Some(n) = positive(r, at, "proxy.max_concurrent", n) {
                    config.max_concurrent = n as u32;
                }
            }
            "connect_timeout" => {
                if let Some(n) = positive(r, at, "proxy.connect_timeout", parse_duration(&raw)) {
                    config.connect_timeout_ms = n;
                }
            }
            "total_timeout" => {
                if let Some(n) = positive(r, at, "proxy.total_timeout", parse_duration(&raw)) {
                    config.total_timeout_ms = n;
                }
            }
            "ports" => {
                if let Some(ports) = r.table("proxy.ports", v) {
                    for (service, port) in ports.iter() {
                        let at = port.span().start;
                        match port.get_ref() {
                            DeValue::Integer(i) => match i.as_str().parse::<u16>() {
                                Ok(p) if p > 0 => {
                                    config.ports.insert(service.get_ref().to_string(), p);
                                }
                                _ => r.problem(
                                    at,
                                    format!(
                                        "proxy.ports.{}: {} is not a port (1 to 65535)",
                                        service.get_ref(),
                                        i.as_str()
                                    ),
                                ),
                            },
                            other => r.problem(
                                at,
                                format!(
                                    "proxy.ports.{}: {} is not a port number",
                                    service.get_ref(),
                                    describe_toml(other)
                                ),
                            ),
                        }
                    }
                }
            }
            other => r.unknown(key.span().start, "proxy.", other, &PROXY_KEYS),
        }
    }
    config
}

/// A service's `upstream`: `http(s)://host[:port][/base]`, nothing else.
pub(super) fn parse_upstream(text: &str) -> Result<(String, String, String), String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e}); e.g. \"https://api.stripe.com\""))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s.to_owned(),
        Some(other) => return Err(format!("{text:?}: scheme {other:?} is not http or https")),
        None => return Err(format!("{text:?} has no scheme: write \"https://{text}\"")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("{text:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("{text:?}: credentials do not belong in the upstream's URL"));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(format!("{text:?}: an upstream has no query or fragment"));
    }
    let base = uri.path().trim_end_matches('/').to_owned();
    Ok((scheme, authority.as_str().to_owned(), base))
}

impl Reader<'_> {
    /// `[[services.NAME.routes]]`.
    pub(super) fn routes(&mut self, path: &str, value: &Spanned<DeValue<'_>>) -> Vec<Route> {
        let DeValue::Array(items) = value.get_ref() else {
            self.problem(
                value.span().start,
                format!("{path} must be an array of tables: [[...routes]]"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}].");
            let Some(table) = self.table(&item_path, item) else {
                continue;
            };
            if let Some(route) = self.route(&item_path, table, item.span().start) {
                out.push(route);
            }
        }
        out
    }

    fn route(&mut self, p: &str, table: &DeTable<'_>, at: usize) -> Option<Route> {
        let mut ok = true;
        for (key, _) in table.iter() {
            if !ROUTE_KEYS.contains(&key.get_ref().as_ref()) {
                self.unknown(key.span().start, p, key.get_ref(), &ROUTE_KEYS);
                ok = false;
            }
        }
        let string = |r: &mut Self, key: &str| -> Option<String> {
            let v = table.get(key)?;
            match v.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                other => {
                    r.problem(
                        v.span().start,
                        format!("{p}{key}: {} is not a string", describe_toml(other)),
                    );
                    None
                }
            }
        };
        let method = string(self, "method").map(|m| m.to_ascii_uppercase());
        if let Some(m) = &method
            && m != "*"
            && !METHODS.contains(&m.as_str())
        {
            self.problem(
                at,
                format!("{p}method: {m:?} is not an HTTP method ({})", METHODS.join(", ")),
            );
            ok = false;
        }
        let method = method.filter(|m| m != "*");
        let Some(path) = string(self, "path") else {
            self.problem(
                at,
                format!("{p}: a route needs a path (e.g. path = \"/v1/customers/{{id}}\")"),
            );
            return None;
        };
        if !path.starts_with('/') || path.contains("//") || path.contains('?') || path.contains('#') {
            self.problem(
                at,
                format!("{p}path: {path:?} must start with / and have no empty segment, query or fragment"),
            );
            ok = false;
        }
        for segment in path.split('/').skip(1) {
            let opens = segment.contains('{') || segment.contains('}');
            let param = segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}');
            if (opens && !param) || segment == ".." || segment == "." {
                self.problem(
                    at,
                    format!("{p}path: segment {segment:?} of {path:?}: a parameter is a whole segment, like {{id}}"),
                );
                ok = false;
            }
        }
        let operation = string(self, "operation");
        let mut key_headers = Vec::new();
        if table.contains_key("key_headers") && string(self, "fallback").as_deref() != Some("last_good") {
            self.problem(
                at,
                format!("{p}key_headers: only meaningful with fallback = \"last_good\""),
            );
            ok = false;
        }
        let fallback = match string(self, "fallback").as_deref() {
            None => {
                for key in ["status", "headers", "body", "max_age", "max_bytes"] {
                    if table.contains_key(key) {
                        self.problem(
                            at,
                            format!("{p}{key}: only meaningful with fallback = \"static\" or \"last_good\""),
                        );
                        ok = false;
                    }
                }
                None
            }
            Some("static") => self.static_fallback(p, table, at),
            Some("last_good") => {
                if method.as_deref() != Some("GET") {
                    self.problem(
                        at,
                        format!(
                            "{p}fallback: \"last_good\" answers idempotent reads only: give the route method = \"GET\""
                        ),
                    );
                    ok = false;
                }
                let max_age_ms = match table.get("max_age") {
                    Some(v) => positive(
                        self,
                        v.span().start,
                        &format!("{p}max_age"),
                        parse_duration(&Raw::Toml(v.get_ref())),
                    )?,
                    None => 300_000,
                };
                let max_bytes = match table.get("max_bytes") {
                    Some(v) => positive(self, v.span().start, &format!("{p}max_bytes"), parse_bytes(v.get_ref()))?,
                    None => 1 << 20,
                };
                for key in ["status", "headers", "body"] {
                    if table.contains_key(key) {
                        self.problem(at, format!("{p}{key}: only meaningful with fallback = \"static\""));
                        ok = false;
                    }
                }
                if let Some(v) = table.get("key_headers") {
                    for h in self.strings(&format!("{p}key_headers"), v).unwrap_or_default() {
                        if http::HeaderName::from_bytes(h.as_bytes()).is_ok() {
                            key_headers.push(h.to_ascii_lowercase());
                        } else {
                            self.problem(v.span().start, format!("{p}key_headers: {h:?} is not a header name"));
                            ok = false;
                        }
                    }
                }
                Some(RouteFallback::LastGood { max_age_ms, max_bytes })
            }
            Some(other) => {
                self.problem(at, format!("{p}fallback: {other:?} is not \"static\" or \"last_good\""));
                return None;
            }
        };
        ok.then(|| Route {
            method,
            path,
            operation,
            fallback,
            key_headers,
            source: self.source(at),
        })
    }

    fn static_fallback(&mut self, p: &str, table: &DeTable<'_>, at: usize) -> Option<RouteFallback> {
        let status = match table.get("status") {
            Some(v) => match v.get_ref() {
                DeValue::Integer(i) => match i.as_str().parse::<u16>() {
                    Ok(s) if (200..=599).contains(&s) => s,
                    _ => {
                        self.problem(
                            v.span().start,
                            format!("{p}status: {} is not a final HTTP status (200 to 599)", i.as_str()),
                        );
                        return None;
                    }
                },
                other => {
                    self.problem(
                        v.span().start,
                        format!("{p}status: {} is not a number", describe_toml(other)),
                    );
                    return None;
                }
            },
            None => 200,
        };
        let mut headers = Vec::new();
        if let Some(v) = table.get("headers")
            && let Some(t) = self.table(&format!("{p}headers"), v)
        {
            for (name, value) in t.iter() {
                let name_ok = http::HeaderName::from_bytes(name.get_ref().as_bytes()).is_ok();
                match value.get_ref() {
                    DeValue::String(s) if name_ok && http::HeaderValue::from_str(s).is_ok() => {
                        headers.push((name.get_ref().to_string(), s.to_string()))
                    }
                    DeValue::String(s) => self.problem(
                        value.span().start,
                        format!("{p}headers: {:?}: {s:?} is not a valid header", name.get_ref()),
                    ),
                    other => self.problem(
                        value.span().start,
                        format!(
                            "{p}headers.{}: {} is not a string",
                            name.get_ref(),
                            describe_toml(other)
                        ),
                    ),
                }
            }
        }
        let body = match table.get("body").map(|v| (v.span().start, v.get_ref())) {
            Some((_, DeValue::String(s))) => s.to_string(),
            Some((at, other)) => {
                self.problem(at, format!("{p}body: {} is not a string", describe_toml(other)));
                return None;
            }
            None => String::new(),
        };
        for key in ["max_age", "max_bytes"] {
            if table.contains_key(key) {
                self.problem(at, format!("{p}{key}: only meaningful with fallback = \"last_good\""));
            }
        }
        Some(RouteFallback::Static { status, headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Option<&str>, path: &str) -> Route {
        Route {
            method: method.map(str::to_owned),
            path: path.to_owned(),
            operation: None,
            fallback: None,
            key_headers: Vec::new(),
            source: Source::Default,
        }
    }

    #[test]
    fn templates_match_whole_segments() {
        let r = route(Some("GET"), "/v1/customers/{id}");
        assert!(r.matches("GET", "/v1/customers/cus_1"));
        assert!(!r.matches("POST", "/v1/customers/cus_1"));
        assert!(!r.matches("GET", "/v1/customers/"), "an empty segment is no id");
        assert!(!r.matches("GET", "/v1/customers"));
        assert!(!r.matches("GET", "/v1/customers/cus_1/sources"));
        assert!(route(None, "/v1/customers").matches("DELETE", "/v1/customers"));
    }

    #[test]
    fn upstreams_are_plain_http_urls() {
        assert_eq!(
            parse_upstream("https://api.stripe.com").unwrap(),
            ("https".into(), "api.stripe.com".into(), String::new())
        );
        assert_eq!(
            parse_upstream("http://127.0.0.1:8080/base/").unwrap(),
            ("http".into(), "127.0.0.1:8080".into(), "/base".into())
        );
        for bad in [
            "api.stripe.com",
            "ftp://x",
            "https://u:p@x",
            "https://x/?a=1",
            "https://x/#f",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn every_mistake_is_named_with_its_value() {
        let load =
            |text: &str| super::super::Config::from_toml(std::path::Path::new("p.toml"), text, &Default::default());
        let ok = load(
            "[services.stripe]\nupstream = \"https://api.stripe.com/base/\"\n[[services.stripe.routes]]\nmethod = \"post\"\npath = \"/v1/customers\"\noperation = \"customers.create\"\n[proxy]\nmax_body = \"1MiB\"\n[proxy.ports]\nstripe = 9001\n",
        )
        .unwrap();
        let u = ok.upstream("stripe").unwrap();
        assert_eq!(
            (u.base_path.as_str(), u.routes[0].method.as_deref()),
            ("/base", Some("POST"))
        );
        assert!(
            ok.breaker("stripe/customers.create").is_some(),
            "a route's operation gets a breaker"
        );
        assert_eq!((ok.proxy.max_body_bytes, ok.proxy.ports["stripe"]), (1 << 20, 9001));
        for (text, named) in [
            (
                "[services.stripe]\nupstream = \"api.stripe.com\"\n",
                "\"api.stripe.com\" has no scheme",
            ),
            ("[services.stripe]\nupstream = 5\n", "upstream: 5"),
            (
                "[services.stripe.operations.x]\nupstream = \"http://a\"\n",
                "unknown key services.stripe.operations",
            ),
            (
                "[services.stripe]\n[[services.stripe.routes]]\npath = \"/a\"\n",
                "no upstream",
            ),
            (
                "[services.s]\nupstream = \"http://a\"\n[[services.s.routes]]\nmethod = \"FETCH\"\npath = \"/a\"\n",
                "\"FETCH\" is not an HTTP method",
            ),
            (
                "[services.s]\nupstream = \"http://a\"\n[[services.s.routes]]\npath = \"/a/{id\"\n",
                "segment \"{id\"",
            ),
            (
                "[services.s]\nupstream = \"http://a\"\n[[services.s.routes]]\npath = \"/a\"\nfallback = \"last_good\"\n",
                "method = \"GET\"",
            ),
            (
                "[services.s]\nupstream = \"http://a\"\n[[services.s.routes]]\npath = \"/a\"\nfallback = \"cache\"\n",
                "\"cache\" is not",
            ),
            (
                "[services.s]\nupstream = \"http://a\"\n[[services.s.routes]]\npath = \"/a\"\nfallback = \"static\"\nstatus = 99\n",
                "99 is not a final HTTP status",
            ),
            ("[proxy]\nmax_body = \"12 parsecs\"\n", "parsecs"),
            ("[proxy]\nmax_header = 10\n", "10 bytes is outside"),
            ("[proxy]\nmax_concurrent = 0\n", "max_concurrent: must be more than 0"),
            ("[proxy]\nbind = \"localhost\"\n", "\"localhost\" is not an address"),
            ("[proxy]\nport = 1\n", "unknown key proxy.port"),
            ("[proxy.ports]\nstripe = 9001\n", "proxy.ports.stripe: no service"),
            ("[proxy.ports]\nstripe = 70000\n", "70000 is not a port"),
        ] {
            let e = load(text).expect_err(text).to_string();
            assert!(e.contains(named), "{text}: {e}");
        }
    }

    #[test]
    fn sizes_take_units() {
        let s = |t: &str| parse_bytes(&DeValue::String(t.into()));
        assert_eq!(s("16MiB"), Ok(16 << 20));
        assert_eq!(s("1 KB"), Ok(1_000));
        assert!(s("12 parsecs").unwrap_err().contains("parsecs"));
    }
}
