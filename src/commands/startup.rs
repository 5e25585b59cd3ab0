//! What every long-running command (`serve`, `worker`, `ingress`, `file-server`) does before
//! its own work: the data directory, the logger, the async runtime; and the one-thread
//! runtime of the short ones (`client`, `status`, `dlq`, `destroy`).

use anyhow::Context;
use ferry_config::FerryConfig;
use ferry_file_server::store::MANIFEST_FILE;
use ferry_file_server::Store;
use ferry_logger::{Logger, SighupReopen};

use super::store_options::init_options;

/// Creates the configured data directory when it has no store yet.
pub fn ensure_data_dir(config: &FerryConfig) -> anyhow::Result<()> {
    let dir = &config.store.data_dir;
    if !dir.join(MANIFEST_FILE).exists() {
        Store::init(dir, init_options(&config.store))
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        eprintln!("created data directory {}", dir.display());
    }
    Ok(())
}

/// The logger, its directory taken relative to the data directory, with diagnostics installed
/// and reopened on SIGHUP; keep both values alive for the life of the process.
pub fn start_logger(config: &FerryConfig, node: &str) -> anyhow::Result<(Logger, SighupReopen)> {
    let mut logger_config = config.logger.clone();
    logger_config.directory = config.store.data_dir.join(&config.logger.directory);
    let logger = ferry_logger::start(&logger_config, node).context("starting the logger")?;
    logger.install_diagnostics().context("installing the diagnostic log")?;
    let sighup = ferry_logger::reopen_on_sighup(logger.control())?;
    Ok((logger, sighup))
}

/// A multi-threaded runtime whose threads are named `thread_name`.
pub fn runtime(thread_name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()
        .context("starting the async runtime")
}

/// A runtime on the calling thread, for a command that makes a few requests and exits.
pub fn single_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
