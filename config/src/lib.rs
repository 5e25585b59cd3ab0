//! Ferry's configuration: one typed tree for every Ferry process.
//!
//! Values come from defaults, `ferry.toml`, `FERRY_SECTION__KEY` environment variables and
//! `--set section.key=value` flags, later layers winning ([`load`]). Unknown keys and bad values
//! are errors that name the key, the value, what is allowed and where it came from.
//! `ferry.example.toml` at the repository root documents every key.
//!
//! This crate only describes and validates settings; it starts nothing and opens no files but
//! the configuration file.

pub mod auth;
pub mod cluster;
mod error;
pub mod ingress;
mod load;
pub mod logger;
pub mod store;

use serde::{Deserialize, Serialize};

pub use auth::{AuthConfig, Secret};
pub use cluster::ClusterConfig;
pub use error::{ConfigError, Invalid};
pub use ingress::IngressConfig;
pub use load::{load, ConfigSources, LoadedConfig, Origin, DEFAULT_CONFIG_FILE};
pub use logger::LoggerConfig;
pub use store::{StoreConfig, WalGroupSyncPolicy, WalSyncPolicy};

/// The whole configuration, one field per `ferry.toml` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FerryConfig {
    pub store: StoreConfig,
    pub logger: LoggerConfig,
    pub ingress: IngressConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
}

impl FerryConfig {
    /// Values that parsed but are outside what Ferry accepts.
    pub fn invalid_values(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        self.store.check(&mut out);
        out.extend(self.logger.invalid_values());
        self.ingress.check(&mut out);
        self.auth.check(&mut out);
        self.cluster.check(&mut out);
        out
    }
}
