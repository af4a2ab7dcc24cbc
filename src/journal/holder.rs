//! Who holds the writer lease, written so that another process can tell whether it still runs.
//!
//! A holder that is killed (SIGKILL, OOM, a crash) leaves its lease behind, freshly renewed. Two
//! things tell that it is dead: its lease lapses (it recorded the ttl it renews within), or —
//! at once — it ran on this host and its process is gone. For the second, a holder names itself
//! as a [`Holder`]: a role, a pid and a host people read, and on Linux a [`Mark`] (boot id, pid
//! namespace, the process's start time) that says whether a pid seen here is that process.
//! Anything else (another host, another container, another OS, a name a library host chose)
//! is judged by the lease's age only.

use super::store::Lease;
use super::{Journal, JournalError, writer};
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

/// The writer lease's ttl unless a host chooses another: a holder renews it every third of it,
/// so a holder that stopped renewing for this long is dead (or stalled, and fenced when it
/// writes again).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);

/// A process, as it names itself in the lease: `serve pid 4242 on laptop as bob [boot … pidns …
/// start …]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// What it runs as (`serve`, `demo`, `cli`, …).
    pub role: String,
    /// Its pid.
    pub pid: u32,
    /// Its host name (for people: two hosts may share one).
    pub host: String,
    /// Its user.
    pub user: String,
    /// What tells the process apart from any other, on Linux; `None` elsewhere.
    pub mark: Option<Mark>,
}

/// What identifies a process beyond its pid (Linux): pids are reused, and the same pid means
/// another process in another pid namespace (container) or after a reboot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): the machine and this boot.
    pub boot: String,
    /// The pid namespace's inode (`/proc/self/ns/pid`).
    pub pid_ns: u64,
    /// The process's start time, clock ticks after boot (`/proc/<pid>/stat`, field 22).
    pub start: u64,
}

impl Holder {
    /// This process, running as `role`.
    pub fn this_process(role: &str) -> Holder {
        Holder {
            role: role.to_owned(),
            pid: std::process::id(),
            host: host_name(),
            user: user_name(),
            mark: own_mark().cloned(),
        }
    }

    /// Reads a holder back from its lease; `None` for a name not in this form (an older
    /// version's, or a library host's own).
    pub fn parse(s: &str) -> Option<Holder> {
        let (name, mark) = match s.strip_suffix(']').and_then(|r| r.rsplit_once(" [")) {
            Some((name, mark)) => (name, Some(parse_mark(mark)?)),
            None => (s, None),
        };
        let (role, rest) = name.split_once(" pid ")?;
        let (pid, rest) = rest.split_once(" on ")?;
        let (host, user) = rest.split_once(" as ")?;
        if role.is_empty() || host.is_empty() || host.contains(' ') || user.contains(' ') {
            return None;
        }
        Some(Holder {
            role: role.to_owned(),
            pid: pid.parse().ok()?,
            host: host.to_owned(),
            user: user.to_owned(),
            mark,
        })
    }

    /// Role, pid and where, relative to this process: `serve pid 4242 on this host`, `… on host
    /// db-2 (not this host)`.
    pub fn describe(&self) -> String {
        format!("{} pid {} {}", self.role, self.pid, self.place())
    }

    /// [`Holder::describe`] of a lease's holder name, or the name as written if it is not a
    /// holder's.
    pub fn describe_name(name: &str) -> String {
        Holder::parse(name).map_or_else(|| name.to_owned(), |h| h.describe())
    }

    fn place(&self) -> String {
        match (&self.mark, own_mark()) {
            (Some(theirs), Some(ours)) if theirs.boot == ours.boot && theirs.pid_ns == ours.pid_ns => {
                "on this host".into()
            }
            (Some(theirs), Some(ours)) if theirs.boot == ours.boot => {
                "on this host, in another pid namespace (container)".into()
            }
            (Some(_), Some(_)) if self.host == host_name() => format!(
                "on host {} (another machine of that name, or this one before a reboot)",
                self.host
            ),
            (Some(_), Some(_)) => format!("on host {} (not this host)", self.host),
            _ => format!("on host {}", self.host),
        }
    }

    /// Whether its process ran on this host (this boot, this pid namespace) and has exited: its
    /// lease may be taken at once, without waiting for it to lapse.
    pub fn is_gone(&self) -> bool {
        matches!(self.presence(), Presence::Gone)
    }

    /// Whether its process runs, as far as this process can see.
    fn presence(&self) -> Presence {
        let (Some(theirs), Some(ours)) = (&self.mark, own_mark()) else {
            return Presence::Unchecked;
        };
        if theirs.boot != ours.boot || theirs.pid_ns != ours.pid_ns {
            return Presence::Unchecked;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => match parse_stat(&stat) {
                // A zombie has exited: only its exit status waits for its parent.
                Some((state, start)) if start == theirs.start && !matches!(state, 'Z' | 'X' | 'x') => Presence::Running,
                // Its pid now belongs to another process (or it has exited).
                Some(_) => Presence::Gone,
                None => Presence::Unchecked,
            },
            // Only trusted where /proc shows other users' processes (not `hidepid`): there, a
            // missing pid is a process that is gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::metadata("/proc/1").is_ok() => {
                Presence::Gone
            }
            Err(_) => Presence::Unchecked,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pid {} on {} as {}", self.role, self.pid, self.host, self.user)?;
        if let Some(m) = &self.mark {
            write!(f, " [boot {} pidns {} start {}]", m.boot, m.pid_ns, m.start)?;
        }
        Ok(())
    }
}

fn parse_mark(s: &str) -> Option<Mark> {
    let mut words = s.split(' ');
    let mut field = |name: &str| match (words.next(), words.next()) {
        (Some(n), Some(v)) if n == name => Some(v.to_owned()),
        _ => None,
    };
    let mark = Mark {
        boot: field("boot")?,
        pid_ns: field("pidns")?.parse().ok()?,
        start: field("start")?.parse().ok()?,
    };
    words.next().is_none().then_some(mark)
}

/// State and start time from `/proc/<pid>/stat` (after the command name, which may hold spaces
/// and parentheses: the last `)` ends it).
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 come between the state (3) and the start time (22).
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// This process's mark, read once; `None` where /proc does not say (not Linux).
fn own_mark() -> Option<&'static Mark> {
    static MARK: OnceLock<Option<Mark>> = OnceLock::new();
    MARK.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let pid_ns = ns.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()?;
        let (_, start) = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        Some(Mark {
            boot: boot.trim().to_owned(),
            pid_ns,
            start,
        })
    })
    .as_ref()
}

/// Who runs this process, for the audit trail and the lease: `$USER`, else `$LOGNAME`, else the
/// name of the process's user id in `/etc/passwd`, else `uid N` (never a made-up `unknown`).
pub fn user_name() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            return v;
        }
    }
    use std::os::unix::fs::MetadataExt;
    // `/proc/self` is owned by the process's effective user id.
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown uid".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let _password = fields.next()?;
                (fields.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// This host's name, as the system gives it (`gethostname`), else `localhost` (empty, not UTF-8,
/// or with a space).
pub fn host_name() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(' '))
        .unwrap_or_else(|| "localhost".into())
}

enum Presence {
    Running,
    Gone,
    Unchecked,
}

/// How a lease's holder stands, as this process judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// It did not renew its lease within its ttl: dead (or stalled); the lease may be taken.
    Lapsed,
    /// It ran on this host and its process is gone (or its pid is another process's now):
    /// dead; the lease may be taken at once.
    Gone,
    /// Its process runs on this host.
    Running,
    /// It runs elsewhere, or names itself in a way that cannot be checked: only its lease's
    /// age tells, and it renewed within its ttl.
    Unchecked,
}

impl Lease {
    /// How long ago it was renewed (0 for a renewal "in the future": another host's clock).
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.renewed_at_ms.max(0) as u64)
    }

    /// The ttl it lapses after: the one its holder recorded, else `default`.
    pub fn ttl(&self, default: Duration) -> Duration {
        self.ttl_ms
            .map_or(default, |ms| Duration::from_millis(ms.max(0) as u64))
    }

    /// How its holder stands (see [`Standing`]), `default_ttl` for a lease that recorded none.
    pub fn standing(&self, now_ms: u64, default_ttl: Duration) -> Standing {
        // As the store's lapse check has it: older than the ttl.
        if u128::from(self.age_ms(now_ms)) > self.ttl(default_ttl).as_millis() {
            return Standing::Lapsed;
        }
        match Holder::parse(&self.holder).map(|h| h.presence()) {
            Some(Presence::Gone) => Standing::Gone,
            Some(Presence::Running) => Standing::Running,
            _ => Standing::Unchecked,
        }
    }

    /// Its holder for people: `serve pid 4242 on this host`, or the name as written.
    pub fn who(&self) -> String {
        Holder::describe_name(&self.holder)
    }

    /// One clause on how it stands: `serve pid 4242 on this host is gone`, `… on host db-2 (not
    /// this host) renewed the lease 1.2 s ago`.
    pub fn account(&self, standing: Standing, now_ms: u64, default_ttl: Duration) -> String {
        let (who, ago) = (self.who(), seconds(self.age_ms(now_ms)));
        match standing {
            Standing::Lapsed => format!(
                "{who} did not renew the lease for {ago} (its ttl is {})",
                seconds(self.ttl(default_ttl).as_millis() as u64)
            ),
            Standing::Gone => format!("{who} is gone"),
            Standing::Running => format!("{who} is alive (it renewed the lease {ago} ago)"),
            Standing::Unchecked => format!("{who} renewed the lease {ago} ago"),
        }
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1_000.0)
}

/// What [`Journal::claim_lease`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This process holds the lease now (and keeps renewing it until close). `replaced`: the
    /// lease it took from a holder judged dead, and why ([`Standing::Lapsed`] or
    /// [`Standing::Gone`]).
    Taken {
        /// The dead holder's lease, if there was one.
        replaced: Option<(Lease, Standing)>,
    },
    /// Another process holds it and may be alive ([`Standing::Running`] or
    /// [`Standing::Unchecked`]).
    Held {
        /// Its lease.
        lease: Lease,
        /// How it stands.
        standing: Standing,
    },
}

impl Journal {
    /// Takes the lease from a holder judged dead before its ttl ran out, only if the lease is
    /// still exactly `dead` (the same holder, not renewed since), and keeps renewing it. Returns
    /// the lease as it stands: compare its `holder` with yours.
    pub async fn take_over_lease(&self, holder: &str, ttl: Duration, dead: &Lease) -> Result<Lease, JournalError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.appender.shared.request(writer::Request::Lease {
            holder: holder.to_owned(),
            ttl,
            dead: Some(dead.clone()),
            reply,
        });
        Ok(answer.await.map_err(|_| JournalError::Closed)??)
    }

    /// Takes the writer lease for `me` if nobody holds it, its holder's lease lapsed, or its
    /// holder ran on this host and is gone; otherwise says who holds it and how it stands. Never
    /// waits: a caller that wants a fresh lease to lapse calls again.
    pub async fn claim_lease(&self, me: &str, ttl: Duration) -> Result<Claim, JournalError> {
        let mut last = None;
        // Another process may claim at the same moment: each try re-reads what it did.
        for _ in 0..3 {
            let now = writer::now_ms();
            let seen = self.lease().await?;
            let (lease, judged) = match seen {
                Some(l) if l.holder != me => {
                    let s = l.standing(now, ttl);
                    (Some(l), Some(s))
                }
                other => (other, None),
            };
            let got = match (&lease, judged) {
                (Some(l), Some(Standing::Gone)) => self.take_over_lease(me, ttl, l).await?,
                (Some(l), Some(s @ (Standing::Running | Standing::Unchecked))) => {
                    return Ok(Claim::Held {
                        lease: l.clone(),
                        standing: s,
                    });
                }
                _ => self.acquire_lease(me, ttl).await?,
            };
            if got.holder == me {
                let replaced = lease
                    .zip(judged)
                    .filter(|(_, s)| matches!(s, Standing::Lapsed | Standing::Gone));
                return Ok(Claim::Taken { replaced });
            }
            last = Some(got);
        }
        let lease = last.expect("three tries");
        let standing = lease.standing(writer::now_ms(), ttl);
        Ok(Claim::Held { lease, standing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_reads_back_as_written() {
        let me = Holder::this_process("serve");
        assert_eq!(Holder::parse(&me.to_string()), Some(me.clone()));
        let plain = Holder { mark: None, ..me };
        assert_eq!(Holder::parse(&plain.to_string()), Some(plain));
        for other in [
            "serve pid 1",
            "test ThreadId(3)",
            "serve pid x on h as u",
            "a pid 1 on h as u [boot b]",
        ] {
            assert_eq!(Holder::parse(other), None, "{other}");
        }
    }

    #[test]
    fn the_start_time_comes_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_stat(stat), Some(('S', 987_654)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_runs_and_a_reused_pid_is_another_process() {
        let me = Holder::this_process("serve");
        assert!(matches!(me.presence(), Presence::Running));
        assert_eq!(me.describe(), format!("serve pid {} on this host", std::process::id()));
        let mut reused = me.clone();
        if let Some(m) = &mut reused.mark {
            m.start += 1;
        }
        assert!(matches!(reused.presence(), Presence::Gone));
    }
}
