//! Layering: defaults, then `ferry.toml`, then `FERRY_SECTION__KEY` environment variables, then
//! `--set section.key=value` flags; each later layer wins. Every value remembers where it came
//! from, for `ferry config show` and for error messages.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};

use crate::error::{did_you_mean, ConfigError, Invalid};
use crate::FerryConfig;

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "ferry.toml";

const ENV_PREFIX: &str = "FERRY_";
const ENV_SPLIT: &str = "__";

/// Where configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// An explicit file, which must exist; `None` reads `./ferry.toml` if present.
    pub file: Option<PathBuf>,
    /// Whether `FERRY_SECTION__KEY` environment variables apply.
    pub env: bool,
    /// `section.key=value` overrides, in order; the value is parsed as TOML when it can be
    /// (`8`, `true`, `"x"`), else taken as a string.
    pub sets: Vec<String>,
}

/// The effective configuration and where each value came from.
pub struct LoadedConfig {
    pub config: FerryConfig,
    figment: Figment,
}

/// One effective value, as `ferry config show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub key: String,
    /// The value as TOML.
    pub value: String,
    /// `default`, the file path, the environment variable, or `--set`.
    pub source: String,
}

/// Wraps a provider to give its values a readable source name.
struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        self.inner.data()
    }
}

/// Loads, layers and validates the configuration.
pub fn load(sources: &ConfigSources) -> Result<LoadedConfig, ConfigError> {
    let mut figment = Figment::from(Named {
        name: "default",
        inner: Serialized::defaults(FerryConfig::default()),
    });
    let file = match &sources.file {
        Some(path) if !path.is_file() => {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                message: "no such file".into(),
            })
        }
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
    };
    if let Some(path) = &file {
        check_toml_syntax(path)?;
        figment = figment.merge(Toml::file_exact(path));
    }
    if sources.env {
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains(ENV_SPLIT))
            .split(ENV_SPLIT);
        figment = figment.merge(env);
    }
    for flag in &sources.sets {
        let (key, raw) = flag
            .split_once('=')
            .filter(|(k, _)| k.contains('.') && !k.trim().is_empty())
            .ok_or_else(|| ConfigError::BadSetFlag { flag: flag.clone() })?;
        let value = parse_flag_value(raw);
        figment =
            figment.merge(Named { name: "--set", inner: Serialized::global(key.trim(), value) });
    }
    let config: FerryConfig = figment.extract().map_err(from_figment)?;
    let invalid = config.invalid_values();
    if !invalid.is_empty() {
        let errors = invalid.into_iter().map(|i| bad_value(&figment, i)).collect::<Vec<_>>();
        return Err(one_or_several(errors));
    }
    Ok(LoadedConfig { config, figment })
}

impl LoadedConfig {
    /// Every leaf key with its effective value and source, in key order.
    pub fn origins(&self) -> Vec<Origin> {
        let value = toml::Value::try_from(&self.config).expect("the config serializes to TOML");
        let mut out = Vec::new();
        flatten("", &value, &mut out);
        out.into_iter()
            .map(|(key, value)| {
                let source = source_of(&self.figment, &key);
                Origin { key, value, source }
            })
            .collect()
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.to_string())),
    }
}

fn parse_flag_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn check_toml_syntax(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    toml::from_str::<toml::Table>(&text).map(drop).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.message().to_string(),
    })
}

fn describe(metadata: &Metadata, key_path: &[&str]) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        _ if metadata.name.contains("environment") => {
            format!("{ENV_PREFIX}{}", key_path.join(ENV_SPLIT).to_uppercase())
        }
        _ => metadata.name.to_string(),
    }
}

fn source_of(figment: &Figment, key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    figment.find_metadata(key).map(|m| describe(m, &parts)).unwrap_or_else(|| "default".to_string())
}

fn bad_value(figment: &Figment, invalid: Invalid) -> ConfigError {
    let source_name = source_of(figment, &invalid.key);
    ConfigError::BadValue {
        key: invalid.key,
        value: invalid.value,
        allowed: invalid.allowed,
        source_name,
    }
}

fn one_or_several(mut errors: Vec<ConfigError>) -> ConfigError {
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        ConfigError::Several(errors)
    }
}

fn from_figment(error: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let errors = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let parts: Vec<&str> = e.path.iter().map(String::as_str).collect();
            let source_name = e
                .metadata
                .as_ref()
                .map(|m| describe(m, &parts))
                .unwrap_or_else(|| "configuration".to_string());
            match e.kind {
                Kind::UnknownField(field, expected) => {
                    // figment's path already ends with the unknown field.
                    let parent = e.path[..e.path.len().saturating_sub(1)].join(".");
                    let suggestion = did_you_mean(&field, expected).map(|s| {
                        if parent.is_empty() {
                            s.to_string()
                        } else {
                            format!("{parent}.{s}")
                        }
                    });
                    let key = if key.is_empty() { field } else { key };
                    ConfigError::UnknownKey { key, source_name, suggestion }
                }
                Kind::UnknownVariant(value, expected) => ConfigError::BadValue {
                    key,
                    value: format!("{value:?}"),
                    allowed: format!("one of {}", expected.join(", ")),
                    source_name,
                },
                Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                    ConfigError::BadValue {
                        key,
                        value: actual.to_string(),
                        allowed: expected,
                        source_name,
                    }
                }
                other => ConfigError::BadValue {
                    key,
                    value: String::from("?"),
                    allowed: other.to_string(),
                    source_name,
                },
            }
        })
        .collect();
    one_or_several(errors)
}
