//! The result table: one row per workload and engine, with its ratio to a baseline row.

use std::fmt::Write as _;

/// Which way is better for a row's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// What a workload's ratios are taken against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The best of the peers' rows (LMDB, redb, SQLite).
    BestPeer,
    /// LMDB's row.
    Lmdb,
    /// No ratio (reference measurements).
    None,
}

/// A goal from the issue that a row is checked against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// The row's ratio to its baseline is at least this.
    RatioAtLeast(f64),
    /// The row's value is at least this.
    ValueAtLeast(f64),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub engine: &'static str,
    pub is_peer: bool,
    pub value: f64,
    pub unit: &'static str,
    pub better: Better,
    pub baseline: Baseline,
    pub note: String,
    pub goal: Option<Goal>,
}

impl Row {
    /// The baseline value this row is compared with, from the rows of the same workload.
    fn baseline_value(&self, rows: &[Row]) -> Option<f64> {
        let same = rows.iter().filter(|r| r.workload == self.workload);
        match self.baseline {
            Baseline::None => None,
            Baseline::Lmdb => {
                same.filter(|r| r.engine == super::lmdb::NAME).map(|r| r.value).next()
            }
            Baseline::BestPeer => {
                let peers = same.filter(|r| r.is_peer).map(|r| r.value);
                match self.better {
                    Better::Higher => peers.reduce(f64::max),
                    Better::Lower => peers.reduce(f64::min),
                }
            }
        }
    }

    /// This row's value over its baseline's (for sizes, >1 means larger than the baseline).
    pub fn ratio(&self, rows: &[Row]) -> Option<f64> {
        self.baseline_value(rows).filter(|b| *b > 0.0).map(|b| self.value / b)
    }
}

/// One row per workload and engine: the best of the rounds, its note saying of how many.
pub fn best_per_engine(rows: Vec<Row>) -> Vec<Row> {
    let mut best: Vec<(Row, usize)> = Vec::new();
    for row in rows {
        match best.iter_mut().find(|(b, _)| b.workload == row.workload && b.engine == row.engine) {
            Some((b, rounds)) => {
                *rounds += 1;
                let better = match row.better {
                    Better::Higher => row.value > b.value,
                    Better::Lower => row.value < b.value,
                };
                if better {
                    *b = row;
                }
            }
            None => best.push((row, 1)),
        }
    }
    best.into_iter()
        .map(|(mut row, rounds)| {
            if rounds > 1 {
                row.note = format!("best of {rounds} rounds; {}", row.note);
            }
            row
        })
        .collect()
}

/// A number with thousands separators and sensible precision.
pub fn human(value: f64) -> String {
    if value >= 1000.0 {
        let digits = format!("{:.0}", value);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The rows as a Markdown table, grouped by workload in the order workloads first appear.
pub fn markdown(rows: &[Row]) -> String {
    let mut workloads: Vec<&str> = Vec::new();
    for row in rows {
        if !workloads.contains(&row.workload.as_str()) {
            workloads.push(&row.workload);
        }
    }
    let mut out = String::new();
    out.push_str("| workload | engine | result | unit | ratio | baseline | notes |\n");
    out.push_str("|---|---|---:|---|---:|---|---|\n");
    for row in workloads.iter().flat_map(|w| rows.iter().filter(move |r| r.workload == *w)) {
        let ratio = row.ratio(rows).map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into());
        let baseline = match row.baseline {
            Baseline::BestPeer if row.better == Better::Higher => "best peer (higher is better)",
            Baseline::BestPeer => "smallest peer (lower is better)",
            Baseline::Lmdb => "LMDB",
            Baseline::None => "-",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.workload,
            row.engine,
            human(row.value),
            row.unit,
            ratio,
            baseline,
            row.note
        );
    }
    out
}

/// One line per row that has a goal: the goal, the measurement, met or missed and by how much.
pub fn goals(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        let Some(goal) = row.goal else { continue };
        let (want, got) = match goal {
            Goal::RatioAtLeast(want) => match row.ratio(rows) {
                Some(got) => (want, got),
                None => continue,
            },
            Goal::ValueAtLeast(want) => (want, row.value),
        };
        let verdict = if got >= want {
            "MET".to_string()
        } else {
            format!("MISSED: {:.0}% of the goal ({:.2}x short)", 100.0 * got / want, want / got)
        };
        let (want, got) = match goal {
            Goal::RatioAtLeast(_) => (format!("ratio >= {want:.2}"), format!("{got:.2}x")),
            Goal::ValueAtLeast(_) => {
                (format!(">= {} {}", human(want), row.unit), format!("{} {}", human(got), row.unit))
            }
        };
        let _ = writeln!(
            out,
            "- {} / {}: goal {want}, measured {got}: {verdict}",
            row.workload, row.engine
        );
    }
    out
}
