//! The reader of a TOML config file that every section's parser shares: each value's source
//! (file and line) and the problems found, with their lines. Below `file` and the sections it
//! reads (alerts, api, journal), so none of them needs the others.

use super::knobs::{Source, describe_toml};
use super::{Problem, did_you_mean};
use std::path::Path;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub(super) struct Reader<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl Reader<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    pub(super) fn source(&self, offset: usize) -> Source {
        Source::File {
            path: self.path.to_path_buf(),
            line: self.line(offset),
        }
    }

    pub(super) fn problem(&mut self, offset: usize, message: String) {
        self.problems.push(Problem {
            location: format!("{}:{}", self.path.display(), self.line(offset)),
            message,
        });
    }

    pub(super) fn table<'t>(&mut self, path: &str, value: &'t Spanned<DeValue<'t>>) -> Option<&'t DeTable<'t>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.problem(
                    value.span().start,
                    format!("{path} must be a table, not {}", describe_toml(other)),
                );
                None
            }
        }
    }

    pub(super) fn unknown(&mut self, offset: usize, path: &str, key: &str, known: &[&str]) {
        self.problem(
            offset,
            format!("unknown key {path}{key}{}", did_you_mean(key, known.iter().copied())),
        );
    }
}
