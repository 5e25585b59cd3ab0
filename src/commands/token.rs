//! `ferry token issue`: a signed client token.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferry_config::FerryConfig;
use ferry_ingress::auth::unix_now_secs;
use ferry_ingress::{issue_token, Claims};

use super::ingress_options::auth_secret;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a token signed with the configured auth secret.
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The subject: the author of its changes.
    #[arg(long)]
    sub: String,
    /// A path prefix it may read (repeatable), e.g. `/`.
    #[arg(long, value_name = "PREFIX")]
    read: Vec<String>,
    /// A path prefix it may write (repeatable), e.g. `/home/alice/`.
    #[arg(long, value_name = "PREFIX")]
    write: Vec<String>,
    /// Lifetime, e.g. `24h`, `30m`, `7days`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

pub fn run(config: &FerryConfig, cmd: &TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::Issue(args) = cmd;
    let Some(secret) = auth_secret(&config.auth)? else {
        bail!("no auth secret configured: set auth.secret (FERRY_AUTH__SECRET) or auth.secret_file")
    };
    let claims = Claims {
        sub: args.sub.clone(),
        read: args.read.clone(),
        write: args.write.clone(),
        exp: unix_now_secs().saturating_add(args.ttl.as_secs()),
    };
    let token = issue_token(&secret, &claims).context("issuing the token")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
