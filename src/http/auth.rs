//! Bearer tokens: compared as SHA-256 digests in constant time (so neither the token nor its
//! length leaks through timing), never logged, never echoed; repeated bad tokens from one
//! client get 429 with `Retry-After`, and never lock out a valid token.

use crate::config::Secret;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
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
/// `default`). Empty parts are refused with the position named, never the token. Lengths are
/// judged apart ([`crate::config::check_token_lengths`]), as they depend on the bind address.
pub fn tokens_from_env(value: &str) -> Result<Vec<Token>, String> {
    let tokens = crate::config::tokens_from_env(value).map_err(|e| format!("{}: {e}", crate::config::TOKEN_VAR))?;
    Ok(tokens.iter().map(|t| Token::new(t.name.clone(), &t.token)).collect())
}

/// The credentials of an `Authorization` value if its scheme is `Bearer`, in any case (schemes
/// are case-insensitive, RFC 7235 §2.1).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, credentials) = authorization.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
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

/// Bad tokens allowed in a burst from one client before it gets 429.
pub const BAD_TOKEN_BURST: u32 = 10;

/// The time over which a client's whole burst comes back: one more bad token every
/// `BAD_TOKEN_REFILL / BAD_TOKEN_BURST` (6 s).
pub const BAD_TOKEN_REFILL: Duration = Duration::from_secs(60);

/// Clients the limiter keeps state for. A state is some 50 bytes in the map, so this bounds it
/// to about 1 MiB at most.
pub const MAX_TRACKED_CLIENTS: usize = 10_000;

/// The bad-token limiter: a GCRA bucket per client (an IPv4 address, or an IPv6 /64, which one
/// host usually holds whole). Only failed authentications reach it, so a valid token is never
/// throttled by what others send from its address (a NAT, a proxy).
///
/// Bounded: at most `max_tracked` clients. When the map reaches it, the clients whose bucket is
/// full again are dropped (governor's `retain_recent`, at most once a second); if it is still
/// full, a bad token from anyone is refused (429) rather than tracked. A throttled client is
/// never evicted to make room, so cycling addresses cannot lift a throttle.
pub struct Limiter {
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    max_tracked: usize,
    /// When the map was last swept, and the wait a refused client is told while it is full.
    last_sweep: Mutex<Option<Instant>>,
    full_wait: Duration,
}

impl Default for Limiter {
    /// [`BAD_TOKEN_BURST`] per [`BAD_TOKEN_REFILL`], [`MAX_TRACKED_CLIENTS`] clients.
    fn default() -> Self {
        let burst = NonZeroU32::new(BAD_TOKEN_BURST).expect("a positive constant");
        Limiter::new(burst, BAD_TOKEN_REFILL, MAX_TRACKED_CLIENTS)
    }
}

impl Limiter {
    /// `burst` bad tokens at once per client, all back after `refill`; `max_tracked` clients.
    pub fn new(burst: NonZeroU32, refill: Duration, max_tracked: usize) -> Self {
        // A zero refill would be no limit at all: take the shortest one governor allows.
        let quota = Quota::with_period(refill / burst.get())
            .unwrap_or_else(|| Quota::with_period(Duration::from_nanos(1)).expect("1 ns is a period"))
            .allow_burst(burst);
        Limiter {
            buckets: RateLimiter::keyed(quota),
            max_tracked,
            last_sweep: Mutex::new(None),
            full_wait: quota.replenish_interval(),
        }
    }

    /// Records a failed authentication from `ip`: `Ok` if it is within the client's allowance
    /// (answer 401), or how long the client must wait (answer 429 with `Retry-After`).
    pub fn failed(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.buckets.len() >= self.max_tracked {
            self.sweep();
            if self.buckets.len() >= self.max_tracked {
                return Err(self.full_wait);
            }
        }
        self.buckets
            .check_key(&client(ip))
            .map_err(|not_until| not_until.wait_time_from(self.buckets.clock().now()))
    }

    /// How many clients have state now (at most `max_tracked`, give or take the requests in
    /// flight when it was reached).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Drops the clients whose bucket is full again; O(clients), so at most once a second.
    fn sweep(&self) {
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }
}

/// The key a client is counted by: its IPv4 address, or its IPv6 /64.
fn client(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}
