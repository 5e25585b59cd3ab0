//! `ferry config show|check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use ferry_config::ConfigSources;

use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration and where each value came from.
    Show,
    /// Validate a configuration file (defaults + FILE only; environment and flags ignored).
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

pub fn run(cli: &Cli, cmd: &ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Show => {
            let loaded = cli.load_config()?;
            let origins = loaded.origins();
            let width = origins.iter().map(|o| o.key.len() + o.value.len() + 3).max().unwrap_or(0);
            for o in origins {
                let assignment = format!("{} = {}", o.key, o.value);
                println!("{assignment:<width$}  # {}", o.source);
            }
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check { file } => {
            let sources = ConfigSources { file: Some(file.clone()), env: false, sets: Vec::new() };
            match ferry_config::load(&sources) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: invalid\n{e}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
