//! One module per top-level subcommand.

pub mod bench;
pub mod client;
pub mod cluster_options;
pub mod config;
pub mod destroy;
pub mod dlq;
pub mod file_server;
pub mod files;
pub mod ingress_node;
pub mod ingress_options;
pub mod init;
pub mod metrics;
pub mod serve;
pub mod signals;
pub mod startup;
pub mod status;
pub mod store_options;
pub mod token;
pub mod worker;
