//! Points as they are measured: a table (or one JSON object per point) on
//! stdout, and CSV rows in a file.
use super::args::Mode;
use super::stats::Point;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// A point and the configuration it was measured in (e.g. "HA slot").
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub config: String,
    #[serde(skip)]
    pub mode: Mode,
    #[serde(flatten)]
    pub point: Point,
}

pub const CSV_HEADER: &str = "config,mode,threads,processes,ops_per_s,p50_us,p99_us,max_us,errors,raw_ops_per_s,raw_ratio,softhsm_ops_per_s,softhsm_ratio";

pub struct Output {
    json: bool,
    /// Scenarios print the configuration in JSON too; a plain run prints
    /// exactly the point's fields.
    json_config: bool,
    csv: Option<std::fs::File>,
    rows: Vec<Row>,
    header_printed: bool,
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl Output {
    pub fn new(json: bool, csv: Option<&Path>) -> Result<Output> {
        let csv = match csv {
            Some(path) => {
                let mut f =
                    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                writeln!(f, "{CSV_HEADER}")?;
                Some(f)
            }
            None => None,
        };
        Ok(Output {
            json,
            json_config: false,
            csv,
            rows: Vec::new(),
            header_printed: false,
        })
    }

    pub fn with_config_in_json(mut self) -> Output {
        self.json_config = true;
        self
    }

    pub fn add(&mut self, config: &str, mode: Mode, point: Point) -> Result<()> {
        let row = Row {
            config: config.to_string(),
            mode,
            point,
        };
        if self.json {
            let line = if self.json_config {
                serde_json::to_string(&row)?
            } else {
                serde_json::to_string(&row.point)?
            };
            println!("{line}");
        } else {
            self.print_row(&row);
        }
        if let Some(f) = &mut self.csv {
            let p = &row.point;
            writeln!(
                f,
                "\"{}\",{},{},{},{},{},{},{},{},{},{},{},{}",
                row.config.replace('"', "'"),
                p.mode,
                p.threads,
                p.processes,
                p.ops_per_s,
                p.p50_us,
                p.p99_us,
                p.max_us,
                p.errors,
                opt(p.raw_ops_per_s),
                opt(p.raw_ratio),
                opt(p.softhsm_ops_per_s),
                opt(p.softhsm_ratio)
            )?;
            f.flush()?;
        }
        self.rows.push(row);
        Ok(())
    }

    /// The table's first column is the operation, its second ops/s.
    fn print_row(&mut self, row: &Row) {
        if !self.header_printed {
            println!(
                "{:<13} {:>10} {:>7} {:>5} {:>9} {:>9} {:>9} {:>6} {:>10} {:>6} {:>10} {:>6}  config",
                "op",
                "ops/s",
                "threads",
                "procs",
                "p50 µs",
                "p99 µs",
                "max µs",
                "errors",
                "raw ops/s",
                "ratio",
                "softhsm/s",
                "ratio"
            );
            self.header_printed = true;
        }
        let p = &row.point;
        let num = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
        println!(
            "{:<13} {:>10.1} {:>7} {:>5} {:>9} {:>9} {:>9} {:>6} {:>10} {:>6} {:>10} {:>6}  {}",
            row.mode.label(),
            p.ops_per_s,
            p.threads,
            p.processes,
            p.p50_us,
            p.p99_us,
            p.max_us,
            p.errors,
            num(p.raw_ops_per_s, 1),
            num(p.raw_ratio, 3),
            num(p.softhsm_ops_per_s, 1),
            num(p.softhsm_ratio, 3),
            row.config
        );
    }

    pub fn points(&self) -> &[Row] {
        &self.rows
    }

    pub fn finish(&mut self) -> Result<()> {
        if let Some(f) = &mut self.csv {
            f.sync_all()?;
        }
        Ok(())
    }

    /// A point where nothing succeeded means the bench measured nothing: fail.
    pub fn check_nonzero(&self) -> Result<()> {
        let dead: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.point.ops_per_s == 0.0)
            .map(|r| format!("{} on {} threads ({})", r.point.mode, r.point.threads, r.config))
            .collect();
        if !dead.is_empty() {
            bail!("no operation succeeded for {}", dead.join(", "));
        }
        Ok(())
    }
}
