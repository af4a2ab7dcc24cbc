//! What the stand-in upstreams do, and when: a pure function of the service and the time since
//! the demo started, scaled to the demo's length so a 20-second run and a 90-second run tell the
//! same story.

/// The three stand-in services, in display order.
pub const SERVICES: [&str; 3] = ["calcom", "retell", "stripe"];

/// How a stand-in answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Delay before answering (ms).
    pub delay_ms: u64,
}

/// The demo's timeline, as fractions of its length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Script {
    /// The demo's length (ms).
    pub length_ms: u64,
}

/// A phase of one service: `[from, to)` as fractions of the demo.
struct Phase {
    service: &'static str,
    from: f64,
    to: f64,
    what: &'static str,
}

const PHASES: [Phase; 3] = [
    Phase {
        service: "stripe",
        from: 0.15,
        to: 0.45,
        what: "fails hard (HTTP 500)",
    },
    Phase {
        service: "retell",
        from: 0.40,
        to: 0.65,
        what: "gets slow (900 ms answers)",
    },
    Phase {
        service: "calcom",
        from: 0.60,
        to: 0.85,
        what: "flaps (3 s failing, 3 s fine)",
    },
];

/// Length of one half of calcom's flapping (ms): long enough for a whole
/// open → half-open → closed cycle with the demo's 2-second OPEN period.
const FLAP_MS: u64 = 3_000;

impl Script {
    /// The reply of `service` at `elapsed_ms` since the demo started.
    ///
    /// ```
    /// use breakerbox::demo::{Reply, Script};
    /// let s = Script { length_ms: 20_000 };
    /// assert_eq!(s.reply("stripe", 1_000).status, 200);
    /// assert_eq!(s.reply("stripe", 5_000).status, 500);
    /// assert_eq!(s.reply("stripe", 10_000).status, 200);
    /// ```
    pub fn reply(&self, service: &str, elapsed_ms: u64) -> Reply {
        let healthy = Reply {
            status: 200,
            delay_ms: 20 + elapsed_ms % 7 * 5,
        };
        let Some(phase) = self.phase(service, elapsed_ms) else {
            return healthy;
        };
        match phase.service {
            "stripe" => Reply {
                status: 500,
                delay_ms: 15,
            },
            "retell" => Reply {
                status: 200,
                delay_ms: 900,
            },
            _ => {
                let into = elapsed_ms - self.at(phase.from);
                if (into / FLAP_MS).is_multiple_of(2) {
                    Reply {
                        status: 503,
                        delay_ms: 10,
                    }
                } else {
                    healthy
                }
            }
        }
    }

    fn at(&self, fraction: f64) -> u64 {
        (self.length_ms as f64 * fraction) as u64
    }

    fn phase(&self, service: &str, elapsed_ms: u64) -> Option<&'static Phase> {
        PHASES
            .iter()
            .find(|p| p.service == service && (self.at(p.from)..self.at(p.to)).contains(&elapsed_ms))
    }

    /// The timeline for people: `(service, from_ms, to_ms, what)`.
    pub fn timeline(&self) -> Vec<(&'static str, u64, u64, &'static str)> {
        PHASES
            .iter()
            .map(|p| (p.service, self.at(p.from), self.at(p.to), p.what))
            .collect()
    }
}
