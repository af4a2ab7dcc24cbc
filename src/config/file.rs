//! Reading `circuit_breaker.toml`: every key checked, every value kept with its line.

use super::Problem;
use super::knobs::{Knobs, Raw, Source, describe_toml};
use super::reader::Reader;
use super::schedule::{Schedule, parse_days, parse_hours, parse_timezone};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One `[services.NAME]` or `[services.NAME.operations."OP"]` section.
#[derive(Clone, Debug, Default)]
pub(crate) struct Section {
    pub knobs: Knobs,
    pub schedules: Vec<Schedule>,
    pub operations: BTreeMap<String, Section>,
    /// `upstream = "https://…"` (a service's only): the URL and where it was set.
    pub upstream: Option<(String, Source)>,
    /// `[[services.NAME.routes]]` (a service's only).
    pub routes: Vec<super::proxy::Route>,
}

/// The file as read.
#[derive(Clone, Debug, Default)]
pub(crate) struct File {
    pub defaults: Knobs,
    pub services: BTreeMap<String, Section>,
    pub alerts: super::alerts::AlertsConfig,
    pub api: super::api::ApiConfig,
    pub journal: super::journal::JournalConfig,
    pub proxy: super::proxy::ProxyConfig,
    pub fleet: super::fleet::FleetConfig,
}

const TOP_KEYS: [&str; 7] = ["defaults", "services", "alerts", "api", "journal", "proxy", "fleet"];
const SCHEDULE_KEYS: [&str; 4] = ["name", "days", "hours", "timezone"];
/// Knobs a schedule may override: the policy's, not the service's plumbing.
const SCHEDULE_KNOBS: [&str; 16] = [
    "failure_threshold",
    "success_threshold",
    "timeout",
    "half_open_requests",
    "failure_window",
    "failure_rate",
    "window_calls",
    "window",
    "window_buckets",
    "minimum_calls",
    "slow_call_duration",
    "slow_call_rate",
    "backoff_factor",
    "max_timeout",
    "jitter",
    "seed",
];

impl Reader<'_> {
    fn knobs(&mut self, path: &str, table: &DeTable<'_>, extra: &[&str], into: &mut Knobs) {
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if extra.contains(&name) {
                continue;
            }
            match into.set(name, &Raw::Toml(value.get_ref()), self.source(value.span().start)) {
                Ok(true) => {}
                Ok(false) => {
                    let known: Vec<&str> = Knobs::KEYS.iter().chain(extra).copied().collect();
                    self.unknown(key.span().start, path, name, &known);
                }
                Err(message) => self.problem(value.span().start, format!("{path}{name}: {message}")),
            }
        }
    }

    fn section(&mut self, path: &str, value: &Spanned<DeValue<'_>>, operations_allowed: bool) -> Section {
        let mut section = Section::default();
        let Some(table) = self.table(path.trim_end_matches('.'), value) else {
            return section;
        };
        let extra: &[&str] = if operations_allowed {
            &["schedules", "operations", "upstream", "routes"]
        } else {
            &["schedules"]
        };
        self.knobs(path, table, extra, &mut section.knobs);
        if let Some(schedules) = table.get("schedules") {
            section.schedules = self.schedules(&format!("{path}schedules"), schedules);
        }
        if let Some(v) = table.get("upstream").filter(|_| operations_allowed) {
            match v.get_ref() {
                DeValue::String(s) => section.upstream = Some((s.to_string(), self.source(v.span().start))),
                other => self.problem(
                    v.span().start,
                    format!("{path}upstream: {} is not a URL string", describe_toml(other)),
                ),
            }
        }
        if let Some(v) = table.get("routes").filter(|_| operations_allowed) {
            section.routes = self.routes(&format!("{path}routes"), v);
        }
        if let Some(ops) = table.get("operations")
            && let Some(ops_table) = self.table(&format!("{path}operations"), ops)
        {
            for (name, op) in ops_table.iter() {
                let op_path = format!("{path}operations.{:?}.", name.get_ref());
                let op_section = self.section(&op_path, op, false);
                section.operations.insert(name.get_ref().to_string(), op_section);
            }
        }
        section
    }

    pub(super) fn strings(&mut self, path: &str, value: &Spanned<DeValue<'_>>) -> Option<Vec<String>> {
        let items: Vec<&Spanned<DeValue<'_>>> = match value.get_ref() {
            DeValue::Array(a) => a.iter().collect(),
            DeValue::String(_) => vec![value],
            other => {
                self.problem(
                    value.span().start,
                    format!("{path}: {} is not a list of strings", describe_toml(other)),
                );
                return None;
            }
        };
        items
            .into_iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                other => {
                    self.problem(
                        item.span().start,
                        format!("{path}: {} is not a string", describe_toml(other)),
                    );
                    None
                }
            })
            .collect()
    }

    fn schedules(&mut self, path: &str, value: &Spanned<DeValue<'_>>) -> Vec<Schedule> {
        let DeValue::Array(items) = value.get_ref() else {
            self.problem(
                value.span().start,
                format!("{path} must be an array of tables: [[...schedules]]"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = item.span().start;
            let item_path = format!("{path}[{i}].");
            let Some(table) = self.table(&item_path, item) else {
                continue;
            };
            let mut knobs = Knobs::default();
            for (key, value) in table.iter() {
                let name: &str = key.get_ref();
                if SCHEDULE_KEYS.contains(&name) {
                    continue;
                }
                if !SCHEDULE_KNOBS.contains(&name) {
                    let known: Vec<&str> = SCHEDULE_KNOBS.iter().chain(SCHEDULE_KEYS.iter()).copied().collect();
                    self.unknown(key.span().start, &item_path, name, &known);
                    continue;
                }
                if let Err(message) = knobs.set(name, &Raw::Toml(value.get_ref()), self.source(value.span().start)) {
                    self.problem(value.span().start, format!("{item_path}{name}: {message}"));
                }
            }
            let name = match table.get("name").map(|v| v.get_ref()) {
                Some(DeValue::String(s)) => s.to_string(),
                _ => format!("schedule {}", i + 1),
            };
            let required = |key: &str| table.get(key);
            let (Some(days_v), Some(hours_v), Some(tz_v)) = (required("days"), required("hours"), required("timezone"))
            else {
                self.problem(
                    at,
                    format!("{item_path}: a schedule needs days, hours and timezone (e.g. days = [\"mon-fri\"], hours = \"09:00-17:00\", timezone = \"America/New_York\")"),
                );
                continue;
            };
            let days = self.strings(&format!("{item_path}days"), days_v).and_then(|d| {
                parse_days(&d)
                    .map_err(|m| self.problem(days_v.span().start, format!("{item_path}days: {m}")))
                    .ok()
                    .map(|parsed| (parsed, d.join(",")))
            });
            let hours_text = match hours_v.get_ref() {
                DeValue::String(s) => s.to_string(),
                other => describe_toml(other),
            };
            let hours = parse_hours(&hours_text)
                .map_err(|m| self.problem(hours_v.span().start, format!("{item_path}hours: {m}")))
                .ok();
            let tz_text = match tz_v.get_ref() {
                DeValue::String(s) => s.to_string(),
                other => describe_toml(other),
            };
            let tz = parse_timezone(&tz_text)
                .map_err(|m| self.problem(tz_v.span().start, format!("{item_path}timezone: {m}")))
                .ok();
            if let (Some((days, days_text)), Some(hours), Some(tz)) = (days, hours, tz) {
                out.push(Schedule::new(
                    name,
                    days,
                    hours,
                    tz,
                    knobs,
                    self.source(at),
                    format!("{days_text} {hours_text} {tz_text}"),
                ));
            }
        }
        // Windows of one section must not overlap: which one wins would be a guess.
        for (i, a) in out.iter().enumerate() {
            for b in &out[i + 1..] {
                if a.timezone != b.timezone {
                    self.problems.push(Problem {
                        location: b.source.to_string(),
                        message: format!(
                            "{path}: schedule {:?} uses {} but {:?} uses {}: use one time zone per section",
                            b.name, b.timezone, a.name, a.timezone
                        ),
                    });
                } else if a.overlaps(b) {
                    self.problems.push(Problem {
                        location: b.source.to_string(),
                        message: format!(
                            "{path}: schedule {:?} ({}) overlaps {:?} ({}) defined at {}",
                            b.name, b.describe, a.name, a.describe, a.source
                        ),
                    });
                }
            }
        }
        out
    }
}

/// Reads a config file's text. All problems are collected (not just the first); what could be
/// read is returned beside them so validation can go on and report the rest too.
pub(crate) fn read(path: &Path, text: &str) -> (File, Vec<Problem>) {
    let mut r = Reader {
        path,
        text,
        problems: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            r.problem(offset, format!("not valid TOML: {}", e.message()));
            return (File::default(), r.problems);
        }
    };
    let mut file = File::default();
    for (key, value) in root.get_ref().iter() {
        match key.get_ref().as_ref() {
            "defaults" => {
                if let Some(t) = r.table("defaults", value) {
                    let mut knobs = Knobs::default();
                    r.knobs("defaults.", t, &[], &mut knobs);
                    file.defaults = knobs;
                }
            }
            "services" => {
                if let Some(t) = r.table("services", value) {
                    for (name, section) in t.iter() {
                        let path = format!("services.{}.", name.get_ref());
                        let s = r.section(&path, section, true);
                        file.services.insert(name.get_ref().to_string(), s);
                    }
                }
            }
            "alerts" => file.alerts = super::alerts::read(&mut r, value),
            "api" => file.api = super::api::read(&mut r, value),
            "journal" => file.journal = super::journal::read(&mut r, value),
            "proxy" => file.proxy = super::proxy::read(&mut r, value),
            "fleet" => file.fleet = super::fleet::read(&mut r, value),
            other => {
                let offset = key.span().start;
                r.unknown(offset, "", other, &TOP_KEYS);
            }
        }
    }
    (file, r.problems)
}

/// The file to read: `--config PATH`, else `CIRCUIT_BREAKER_CONFIG`, else
/// `config/circuit_breaker.toml` if it exists. A path that was asked for must exist.
pub(crate) fn locate(
    flag: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Option<(PathBuf, Source)>, Problem> {
    let asked = flag
        .map(|p| {
            (
                p.to_path_buf(),
                Source::Flag {
                    flag: "--config".into(),
                },
            )
        })
        .or_else(|| {
            env.get("CIRCUIT_BREAKER_CONFIG").map(|p| {
                (
                    PathBuf::from(p),
                    Source::Env {
                        var: "CIRCUIT_BREAKER_CONFIG".into(),
                    },
                )
            })
        });
    match asked {
        Some((path, source)) => {
            if path.is_file() {
                Ok(Some((path, source)))
            } else {
                Err(Problem {
                    location: source.to_string(),
                    message: format!("config file {} does not exist or is not a file", path.display()),
                })
            }
        }
        None => {
            let default = PathBuf::from(super::DEFAULT_PATH);
            Ok(default.is_file().then_some((default, Source::Default)))
        }
    }
}
