//! `ferry init`: create a data directory.

use std::process::ExitCode;

use clap::Args;
use ferry_config::FerryConfig;
use ferry_file_server::Store;

use super::store_options::init_options;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Number of partitions (default: store.partitions, 16); fixed afterwards.
    #[arg(long)]
    partitions: Option<u32>,
    /// Leading path segments that choose a partition (default: store.partition_depth, 2).
    #[arg(long)]
    partition_depth: Option<u32>,
}

pub fn run(config: &FerryConfig, args: &InitArgs) -> anyhow::Result<ExitCode> {
    let mut layout = init_options(&config.store);
    layout.partitions = args.partitions.unwrap_or(layout.partitions);
    layout.partition_depth = args.partition_depth.unwrap_or(layout.partition_depth);
    if layout.partitions == 0 || layout.partition_depth == 0 {
        anyhow::bail!("--partitions and --partition-depth must be at least 1");
    }
    let dir = &config.store.data_dir;
    Store::init(dir, layout)?;
    println!(
        "initialized {} with {} partitions (partition depth {})",
        dir.display(),
        layout.partitions,
        layout.partition_depth
    );
    Ok(ExitCode::SUCCESS)
}
