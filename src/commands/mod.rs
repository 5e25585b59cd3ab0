//! One module per top-level subcommand.

pub mod bench;
pub mod client;
pub mod config;
pub mod files;
pub mod ingress_options;
pub mod init;
pub mod serve;
pub mod store_options;
pub mod token;
