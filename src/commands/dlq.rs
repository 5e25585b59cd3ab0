//! `ferry dlq`: the dead letters of a distributed cluster (instruction messages a partition
//! could not take): list them without removing them, or replay them to their partitions.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use ferry_cluster::dead_letters::{connect, list, replay, DeadLetter};
use ferry_cluster::status::text_table;
use ferry_config::FerryConfig;

use super::status::cluster_topology;

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// Describe the dead letters, oldest first, leaving them in place.
    List {
        /// Most messages described.
        #[arg(long, default_value_t = 100)]
        max: usize,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to their partitions; each leaves the dead letters only once the
    /// broker confirmed its republish. Those naming no partition stay, and are listed.
    Replay {
        /// Most messages replayed.
        #[arg(long, default_value_t = 10_000)]
        max: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &FerryConfig, command: &DlqCommand) -> anyhow::Result<ExitCode> {
    let runtime = super::startup::single_thread_runtime()?;
    runtime.block_on(async {
        let topology = cluster_topology(config).await?;
        let connection = connect(&config.cluster.broker_url).await?;
        let mut out = String::new();
        match command {
            DlqCommand::List { max, json } => {
                let letters =
                    list(&connection, &topology, *max).await.context("listing the dead letters")?;
                if *json {
                    out = serde_json::to_string_pretty(&letters)?;
                    out.push('\n');
                } else {
                    out.push_str(&format!(
                        "{} dead letter(s) in {}{}\n",
                        letters.len(),
                        topology.dead_letters(),
                        if letters.len() == *max {
                            " (--max reached; there may be more)"
                        } else {
                            ""
                        }
                    ));
                    if !letters.is_empty() {
                        let rows: Vec<Vec<String>> = letters.iter().map(|l| row(l, None)).collect();
                        text_table(&mut out, &HEADERS, &rows);
                    }
                }
            }
            DlqCommand::Replay { max, json } => {
                let report = replay(&connection, &topology, *max)
                    .await
                    .context("replaying the dead letters")?;
                if *json {
                    out = serde_json::to_string_pretty(&report)?;
                    out.push('\n');
                } else {
                    let parts: Vec<String> =
                        report.by_partition.iter().map(|(p, n)| format!("p{p:03}: {n}")).collect();
                    out.push_str(&format!("replayed {} dead letter(s)", report.replayed));
                    if !parts.is_empty() {
                        out.push_str(&format!(" ({})", parts.join(", ")));
                    }
                    out.push('\n');
                    if !report.kept.is_empty() {
                        out.push_str(&format!(
                            "kept {} in {}:\n",
                            report.kept.len(),
                            topology.dead_letters()
                        ));
                        let rows: Vec<Vec<String>> =
                            report.kept.iter().map(|k| row(&k.letter, Some(&k.why))).collect();
                        let mut headers = HEADERS.to_vec();
                        headers.push("KEPT BECAUSE");
                        text_table(&mut out, &headers, &rows);
                    }
                }
            }
        }
        let _ = connection.close(200, "ferry dlq done".into()).await;
        print!("{out}");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

const HEADERS: [&str; 7] =
    ["ROUTING KEY", "PARTITION", "INSTRUCTIONS", "FIRST OP", "FIRST PATH", "DIED", "TIMES"];

fn row(letter: &DeadLetter, why: Option<&str>) -> Vec<String> {
    let dash = || "-".to_owned();
    let mut row = vec![
        if letter.routing_key.is_empty() { "\"\"".to_owned() } else { letter.routing_key.clone() },
        letter.partition.map_or_else(dash, |p| format!("p{p:03}")),
        letter.instructions.map_or_else(|| "unreadable".to_owned(), |n| n.to_string()),
        letter.first_op.clone().unwrap_or_else(dash),
        letter.first_path.clone().unwrap_or_else(dash),
        letter.death.as_ref().map_or_else(dash, |d| d.reason.clone()),
        letter.death.as_ref().map_or_else(dash, |d| d.count.to_string()),
    ];
    if let Some(why) = why {
        row.push(why.to_owned());
    }
    row
}
