//! TLS for the HTTP clients breakerbox builds (the reqwest middleware's users, `status --test`,
//! alert webhooks): rustls with the ring provider, verifying against the system's CA store; and
//! their errors told in full.

/// Installs ring as the process's rustls provider, once. reqwest is built without a provider of
/// its own (to keep aws-lc's large C build out), so this must run before the first
/// `reqwest::Client` is built; `Registry::start`, `BreakerMiddleware::new` and the alert notifier
/// call it, and so can a host application that builds clients earlier. A provider the host
/// installed first is kept.
///
/// ```
/// breakerbox::tls::init();
/// let client = reqwest::Client::new(); // would panic without a provider
/// # drop(client);
/// ```
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed: the host's choice stands.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An error and its causes, `a: b: c` (a part already in the text is not repeated) — reqwest's
/// top-level message alone ("error sending request") does not say whether DNS, the connection
/// or TLS failed.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
