//! The report's performance tests (§3.4.8 to 3.4.11), one command each. Each
//! starts a local HA group with `hahsm demo` in a directory of its own,
//! measures, writes `<name>.csv`, `<name>.jsonl` and its plots into `--out`,
//! and stops the group.
use super::args::{BenchOpts, Mode, ScenarioArgs, ScenarioName, SlotChoice};
use super::output::{Output, Row};
use super::plot::{self, Series};
use super::stats::Point;
use super::{Bench, Placement, Target};
use crate::demo_cmd::DemoFile;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A group started with `hahsm demo --detach`; stopped when dropped.
struct Group {
    dir: PathBuf,
    demo: DemoFile,
    _temp: Option<tempfile::TempDir>,
}

fn hahsm() -> Result<Command> {
    Ok(Command::new(
        std::env::current_exe().context("cannot find this program's path")?,
    ))
}

impl Group {
    /// Starts the group, again if a member's address came out unreadable
    /// (`hahsm demo` can read a member's address file before the member has
    /// finished writing it).
    fn start(members: usize, dir: Option<&Path>) -> Result<Group> {
        let mut attempt = 1;
        loop {
            let group = Group::start_once(members, dir)?;
            let bad = group
                .demo
                .members
                .iter()
                .any(|m| m.address.parse::<std::net::SocketAddr>().is_err());
            if !bad {
                return Ok(group);
            }
            if attempt == 3 {
                bail!("hahsm demo gave a member no usable address, three times");
            }
            eprintln!("hahsm bench: a member's address came out unreadable; starting the group again");
            drop(group);
            attempt += 1;
        }
    }

    fn start_once(members: usize, dir: Option<&Path>) -> Result<Group> {
        let (dir, temp) = match dir {
            Some(d) => (d.to_path_buf(), None),
            None => {
                let t = tempfile::Builder::new().prefix("hahsm-bench-group").tempdir()?;
                (t.path().join("demo"), Some(t))
            }
        };
        eprintln!(
            "hahsm bench: starting a {members}-member group in {}",
            dir.display()
        );
        let out = hahsm()?
            .args(["demo", "--detach", "--members", &members.to_string(), "--dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "hahsm demo could not start the group: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = std::fs::read_to_string(dir.join("demo.json")).context("the group's demo.json")?;
        Ok(Group {
            demo: serde_json::from_str(&text)?,
            dir,
            _temp: temp,
        })
    }

    /// Physical slot of member `n` (from 1): the demo names its servers hsm1, hsm2, …
    fn member(n: usize) -> Option<SlotChoice> {
        Some(SlotChoice::Name(format!("hsm{n}")))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(mut c) = hahsm() {
            let _ = c
                .args(["demo", "stop", "--dir"])
                .arg(&self.dir)
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// A process that keeps one member busy (the report's second `multitoken2`
/// on the first physical slot); killed when dropped.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one scenario measures: its modes, and the configurations of each point.
struct Plan {
    modes: Vec<Mode>,
    points: Vec<PlanPoint>,
}

struct PlanPoint {
    config: String,
    placement: Placement,
    /// Measured on a standalone member (a group of one, with no peers to
    /// replicate to) instead of the group.
    standalone: bool,
}

fn at(config: impl Into<String>, placement: Placement) -> PlanPoint {
    PlanPoint {
        config: config.into(),
        placement,
        standalone: false,
    }
}

/// The report's "one HSM": a member that replicates to no one. A physical
/// slot of a group member is not that in hahsm: members replicate writes
/// themselves, whichever slot the client used.
fn standalone(threads: usize) -> PlanPoint {
    PlanPoint {
        config: "standalone member (no peers)".into(),
        placement: Placement::same(Group::member(1), 1, threads),
        standalone: true,
    }
}

fn default_threads(name: ScenarioName) -> Vec<usize> {
    match name {
        // Table 4.1's rows.
        ScenarioName::Threads => vec![1, 3, 10, 20, 60, 100],
        // Table 4.2's rows (threads per process).
        ScenarioName::Processes => vec![1, 3, 10, 20, 30, 60, 100],
        // Table 4.4's total threads (a multiple of the members).
        ScenarioName::HaVsStandalone => vec![3, 9, 15, 30, 60],
        // Table 4.5: multitoken2 -nslots 1x12.
        ScenarioName::SlowMember => vec![12],
    }
}

fn plan(name: ScenarioName, opts: &BenchOpts, members: usize) -> Plan {
    let threads = opts
        .threads
        .clone()
        .map_or_else(|| default_threads(name), |t| t.0);
    let modes = if opts.mode.is_empty() {
        match name {
            ScenarioName::Processes => vec![Mode::RsaSign(2048)],
            _ => vec![Mode::RsaSign(2048), Mode::RsaKeygen(2048)],
        }
    } else {
        opts.mode.clone()
    };
    let ha = Some(SlotChoice::Ha);
    let ha_name = format!("hahsm HA slot ({members} members)");
    let mut points = Vec::new();
    match name {
        ScenarioName::Threads => {
            for &t in &threads {
                points.push(at(ha_name.clone(), Placement::same(ha.clone(), 1, t)));
            }
        }
        ScenarioName::Processes => {
            for procs in 1..=3 {
                for &t in &threads {
                    let label = format!("HA slot, {procs} process{}", if procs == 1 { "" } else { "es" });
                    points.push(at(label, Placement::same(ha.clone(), procs, t)));
                }
            }
        }
        ScenarioName::HaVsStandalone => {
            for &total in &threads {
                let per_member = total.div_ceil(members).max(1);
                points.push(at(ha_name.clone(), Placement::same(ha.clone(), 1, total)));
                points.push(at(
                    format!("{members} members' physical slots ({members} processes)"),
                    Placement {
                        slots: (1..=members).map(Group::member).collect(),
                        threads: per_member,
                    },
                ));
                points.push(standalone(total));
            }
        }
        ScenarioName::SlowMember => {
            for &t in &threads {
                points.push(standalone(t));
                points.push(at(ha_name.clone(), Placement::same(ha.clone(), 1, t)));
                points.push(at(
                    format!("{ha_name}, hsm1 busy"),
                    Placement::same(ha.clone(), 1, t),
                ));
            }
        }
    }
    Plan { modes, points }
}

pub fn run(opts: &BenchOpts, args: &ScenarioArgs) -> Result<()> {
    if args.replot {
        return replot(args);
    }
    if args.members == 0 || args.members > 9 {
        bail!("--members takes 1 to 9");
    }
    if args.name == ScenarioName::SlowMember && args.members < 2 {
        bail!("slow-member needs at least 2 members");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let plan = plan(args.name, opts, args.members);
    let group = Group::start(args.members, args.dir.as_deref())?;
    let target = Target {
        module: opts.module.clone().unwrap_or_else(|| group.demo.module.clone()),
        slot: Some(SlotChoice::Ha),
        partition: None,
        pin: group.demo.user_pin.clone(),
        conf: Some(group.demo.conf_all_slots.clone()),
    };
    let needs_standalone = plan.points.iter().any(|p| p.standalone);
    let single = if needs_standalone {
        let dir = args.dir.as_ref().map(|d| d.join("standalone"));
        Some(Group::start(1, dir.as_deref())?)
    } else {
        None
    };
    let single_target = single.as_ref().map(|g| Target {
        module: opts.module.clone().unwrap_or_else(|| g.demo.module.clone()),
        slot: Group::member(1),
        partition: None,
        pin: g.demo.user_pin.clone(),
        conf: Some(g.demo.conf_all_slots.clone()),
    });
    let bench = Bench::new(opts, target, 3.0)?;
    let name = args.name.to_string();
    let csv = args.out.join(format!("{name}.csv"));
    let mut out = Output::new(opts.json, Some(&csv))?.with_config_in_json();
    let mut jsonl = String::new();
    for &mode in &plan.modes {
        for p in &plan.points {
            let _load = if p.config.ends_with("busy") {
                Some(busy(&bench)?)
            } else {
                None
            };
            let point = match &single_target {
                Some(t) if p.standalone => bench.point_elsewhere(t, mode, &p.placement)?,
                _ => bench.point(mode, &p.placement)?,
            };
            out.add(&p.config, mode, point)?;
            if let Some(row) = out.points().last() {
                jsonl.push_str(&serde_json::to_string(row)?);
                jsonl.push('\n');
            }
        }
    }
    out.finish()?;
    std::fs::write(args.out.join(format!("{name}.jsonl")), jsonl)?;
    draw_plots(args, out.points())?;
    eprintln!(
        "hahsm bench: {name} written to {} ({name}.csv, {name}.jsonl{})",
        args.out.display(),
        if args.name == ScenarioName::SlowMember {
            ""
        } else {
            ", plots"
        }
    );
    out.check_nonzero()
}

/// `<name>-<mode>.svg` and `.png` for every mode (slow-member is a table only).
fn draw_plots(args: &ScenarioArgs, rows: &[Row]) -> Result<()> {
    if args.name == ScenarioName::SlowMember {
        return Ok(());
    }
    let x_desc = match args.name {
        ScenarioName::Processes => "threads per process",
        _ => "threads (in all)",
    };
    let mut modes: Vec<Mode> = Vec::new();
    for r in rows {
        if !modes.contains(&r.mode) {
            modes.push(r.mode);
        }
    }
    for mode in modes {
        let series = scenario_series(args.name, rows, mode);
        let title = format!("{} — report test {}", mode.label(), test_number(args.name));
        for ext in ["svg", "png"] {
            let file = args.out.join(format!("{}-{}.{ext}", args.name, mode.slug()));
            plot::draw(&file, &title, mode, x_desc, &series)?;
        }
    }
    Ok(())
}

/// `--replot`: the plots again from `<name>.jsonl`, without measuring.
fn replot(args: &ScenarioArgs) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Line {
        config: String,
        #[serde(flatten)]
        point: Point,
    }
    let path = args.out.join(format!("{}.jsonl", args.name));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let l: Line = serde_json::from_str(line).with_context(|| format!("a line of {}", path.display()))?;
        rows.push(Row {
            mode: l.point.mode.parse()?,
            config: l.config,
            point: l.point,
        });
    }
    draw_plots(args, &rows)?;
    eprintln!("hahsm bench: plots redrawn from {}", path.display());
    Ok(())
}

fn test_number(name: ScenarioName) -> &'static str {
    match name {
        ScenarioName::Threads => "3.4.8",
        ScenarioName::Processes => "3.4.9",
        ScenarioName::HaVsStandalone => "3.4.10",
        ScenarioName::SlowMember => "3.4.11",
    }
}

/// Lines per configuration, and the baselines' lines once each (from the
/// 1-process HA configuration, where they ran on the same total threads).
fn scenario_series(name: ScenarioName, rows: &[Row], mode: Mode) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    let mut add = |name: String, x: f64, y: f64| match series.iter_mut().find(|s| s.name == name) {
        Some(s) => s.points.push((x, y)),
        None => series.push(Series {
            name,
            points: vec![(x, y)],
        }),
    };
    for r in rows.iter().filter(|r| r.mode == mode) {
        // The report plots test 3.4.10 against the threads of all processes together.
        let x = match name {
            ScenarioName::HaVsStandalone => (r.point.threads * r.point.processes) as f64,
            _ => r.point.threads as f64,
        };
        add(r.config.clone(), x, r.point.ops_per_s);
        if r.point.processes == 1 && r.config.starts_with("hahsm HA slot") && !r.config.ends_with("busy") {
            if let Some(v) = r.point.raw_ops_per_s {
                add("aws-lc-rs in-process (raw)".into(), x, v);
            }
            if let Some(v) = r.point.softhsm_ops_per_s {
                add("SoftHSM2".into(), x, v);
            }
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

/// Starts the load on member 1: 12 threads signing there (report test
/// 3.4.11, step 5), and gives it time to log in and make its key.
fn busy(bench: &Bench) -> Result<Load> {
    let mut cmd = hahsm()?;
    cmd.args([
        "bench",
        "--mode",
        "rsa-sign:2048",
        "--slot",
        "hsm1",
        "--threads",
        "12",
    ])
    .args(["--seconds", "86400", "--warmup", "0", "--json"])
    .arg("--module")
    .arg(&bench.hahsm.module)
    .env("HAHSM_PIN", &bench.hahsm.pin)
    .env_remove("HAHSM_PARTITION")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(c) = &bench.hahsm.conf {
        cmd.arg("--conf").arg(c);
    }
    let load = Load(cmd.spawn().context("starting the load on member 1")?);
    std::thread::sleep(Duration::from_secs(3));
    Ok(load)
}
