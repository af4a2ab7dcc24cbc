//! Which HTTP statuses are failures: by default 5xx, 408 and 429 (the upstream is in trouble or
//! asks us to back off); other 4xx are the caller's mistakes and count as successes, so a burst
//! of bad requests never opens the breaker.

use crate::breaker::Outcome;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// One status (`404`) or a class (`5xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum StatusPattern {
    /// Exactly this status.
    Exact(u16),
    /// Every status of this hundred (`5` is 500–599).
    Class(u16),
}

impl StatusPattern {
    /// Does `status` match?
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusPattern::Exact(s) => s == status,
            StatusPattern::Class(c) => status / 100 == c,
        }
    }
}

impl FromStr for StatusPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || format!("{s:?} is not an HTTP status: use 100-599 or a class such as \"5xx\"");
        if let Some(class) = t.strip_suffix("xx") {
            let c: u16 = class.parse().map_err(|_| bad())?;
            return if (1..=5).contains(&c) {
                Ok(StatusPattern::Class(c))
            } else {
                Err(bad())
            };
        }
        let n: u16 = t.parse().map_err(|_| bad())?;
        if (100..=599).contains(&n) {
            Ok(StatusPattern::Exact(n))
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for StatusPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusPattern::Exact(s) => write!(f, "{s}"),
            StatusPattern::Class(c) => write!(f, "{c}xx"),
        }
    }
}

impl From<StatusPattern> for String {
    fn from(p: StatusPattern) -> String {
        p.to_string()
    }
}

/// Maps an HTTP status to an [`Outcome`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusClassifier {
    /// Statuses that are failures.
    pub failures: Vec<StatusPattern>,
    /// Statuses that count as neither.
    pub ignored: Vec<StatusPattern>,
}

impl Default for StatusClassifier {
    fn default() -> Self {
        StatusClassifier {
            failures: default_failures(),
            ignored: Vec::new(),
        }
    }
}

/// 5xx, 408 Request Timeout and 429 Too Many Requests.
pub fn default_failures() -> Vec<StatusPattern> {
    vec![
        StatusPattern::Class(5),
        StatusPattern::Exact(408),
        StatusPattern::Exact(429),
    ]
}

impl StatusClassifier {
    /// Ignored wins over failure when a status is in both lists (the narrower intent).
    ///
    /// ```
    /// use breakerbox::breaker::Outcome;
    /// use breakerbox::config::StatusClassifier;
    /// let c = StatusClassifier::default();
    /// assert_eq!(c.classify(503), Outcome::Failure);
    /// assert_eq!(c.classify(429), Outcome::Failure);
    /// assert_eq!(c.classify(404), Outcome::Success);
    /// ```
    pub fn classify(&self, status: u16) -> Outcome {
        if self.ignored.iter().any(|p| p.matches(status)) {
            Outcome::Ignored
        } else if self.failures.iter().any(|p| p.matches(status)) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}
