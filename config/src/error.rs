//! Configuration errors: each names the key, the bad value, what is allowed, and its source.

use std::fmt;

/// A value that parsed but is outside what Ferry accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub value: String,
    pub allowed: String,
}

impl Invalid {
    pub fn new(
        key: impl Into<String>,
        value: impl Into<String>,
        allowed: impl Into<String>,
    ) -> Self {
        Invalid { key: key.into(), value: value.into(), allowed: allowed.into() }
    }
}

/// Records an [`Invalid`] for `key` unless `lo <= value <= hi`.
pub(crate) fn check_range(out: &mut Vec<Invalid>, key: String, value: u64, lo: u64, hi: u64) {
    if !(lo..=hi).contains(&value) {
        out.push(Invalid::new(key, value.to_string(), format!("an integer from {lo} to {hi}")));
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("unknown key {key} (in {source_name}){}", suggestion_text(.suggestion))]
    UnknownKey { key: String, source_name: String, suggestion: Option<String> },
    #[error("{key} = {value} (in {source_name}) is not allowed: expected {allowed}")]
    BadValue { key: String, value: String, allowed: String, source_name: String },
    #[error("bad --set {flag:?}: expected section.key=value")]
    BadSetFlag { flag: String },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{}", join_lines(.0))]
    Several(Vec<ConfigError>),
}

fn suggestion_text(s: &Option<String>) -> String {
    s.as_ref().map(|k| format!("; did you mean {k}?")).unwrap_or_default()
}

fn join_lines(errors: &[ConfigError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// The closest of `candidates` to `wrong`, if close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(wrong: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(wrong, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: expected {}", self.key, self.value, self.allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["flush_interval_ms", "flush_max_dirty", "data_dir"];
        assert_eq!(did_you_mean("flush_intrval_ms", &keys), Some("flush_interval_ms"));
        assert_eq!(did_you_mean("datadir", &keys), Some("data_dir"));
        assert_eq!(did_you_mean("zzz", &keys), None);
    }
}
