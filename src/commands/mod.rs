//! One module per top-level subcommand.

pub mod config;
pub mod files;
pub mod init;
pub mod store_options;
