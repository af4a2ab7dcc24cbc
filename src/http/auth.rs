//! Bearer tokens: compared as SHA-256 digests in constant time (so neither the token nor its
//! length leaks through timing), never logged, never echoed; repeated bad tokens from one
//! address get 429 with `Retry-After`.

use crate::config::Secret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// A named API token; the name is "who" in the audit trail.
#[derive(Clone)]
pub struct Token {
    /// The token's name (e.g. `oncall`).
    pub name: String,
    digest: [u8; 32],
}

impl Token {
    /// A token named `name`.
    pub fn new(name: impl Into<String>, secret: &Secret) -> Self {
        Token {
            name: name.into(),
            digest: Sha256::digest(secret.expose().as_bytes()).into(),
        }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}, ***)", self.name)
    }
}

/// Tokens from `CIRCUIT_BREAKER_API_TOKEN`: `name:token,name:token`, or one bare token (named
/// `default`). Empty parts are refused with the position named, never the token.
pub fn tokens_from_env(value: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    for (i, part) in value.split(',').enumerate() {
        let part = part.trim();
        let (name, token) = match part.split_once(':') {
            Some((n, t)) => (n.trim(), t.trim()),
            None => ("default", part),
        };
        if name.is_empty() || token.is_empty() {
            return Err(format!(
                "CIRCUIT_BREAKER_API_TOKEN: entry {} is empty: use name:token[,name:token…] or one token",
                i + 1
            ));
        }
        out.push(Token::new(name, &Secret::new(token)));
    }
    Ok(out)
}

/// Which token a presented bearer value is, if any. Every token is compared (no early exit).
pub fn check<'t>(tokens: &'t [Token], presented: &str) -> Option<&'t Token> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        if bool::from(t.digest.ct_eq(&digest)) {
            found = Some(t);
        }
    }
    found
}

/// Counts bad tokens per address: more than `limit` within `window` blocks the address until the
/// window ends. Bounded: at most `max_addresses` are tracked (the oldest entries go first).
pub struct Limiter {
    limit: u32,
    window: Duration,
    max_addresses: usize,
    seen: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Limiter {
    /// `limit` bad tokens per `window` per address.
    pub fn new(limit: u32, window: Duration) -> Self {
        Limiter {
            limit,
            window,
            max_addresses: 10_000,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Time left blocked for `ip`, if it is blocked.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (count, since) = seen.get(&ip)?;
        let elapsed = since.elapsed();
        (*count > self.limit && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// Records a bad token from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= self.max_addresses
            && !seen.contains_key(&ip)
            && let Some(oldest) = seen.iter().min_by_key(|(_, (_, t))| *t).map(|(ip, _)| *ip)
        {
            seen.remove(&oldest);
        }
        let entry = seen.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}
