//! `hahsm bench`: the report's `multitoken2`, pointed at hahsm. It drives the
//! built PKCS#11 module as an application does and measures, per point (a
//! mode on N threads in M processes), operations/s and p50/p99/max latency
//! from an HDR histogram, beside the same operation on aws-lc-rs in-process
//! (`raw`, the physical limit of this CPU) and through SoftHSM2 (`softhsm`,
//! what a user would pick instead).
//!
//! The parts: `args` (the command line), `pkcs11` (loading a module and the
//! workloads through it), `raw` and `softhsm` (the baselines), `driver`
//! (threads, worker processes, progress), `stats` (histograms and points),
//! `output` (table, CSV, JSON), `plot` (SVG and PNG), `scenario` (the
//! report's tests 3.4.8 to 3.4.11, each against a group it starts).
pub mod args;
mod driver;
mod output;
mod pkcs11;
mod plot;
mod raw;
mod scenario;
mod softhsm;
mod stats;

pub use args::BenchArgs;

use anyhow::{anyhow, bail, Context, Result};
use args::{BenchCommand, BenchOpts, Mode, SlotChoice};
use driver::{Progress, Timing};
use pkcs11::Module;
use stats::{Point, Sample};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub async fn run(args: BenchArgs) -> Result<()> {
    // The modules and the measuring threads block: keep them off the async runtime.
    tokio::task::spawn_blocking(move || run_blocking(args)).await?
}

fn run_blocking(args: BenchArgs) -> Result<()> {
    args.opts.check()?;
    match &args.command {
        None => plain(&args.opts),
        Some(BenchCommand::Scenario(s)) => scenario::run(&args.opts, s),
        Some(BenchCommand::Worker) => worker(&args.opts),
    }
}

/// Where the libhahsm-pkcs11 package installs the module (amd64).
const PACKAGED_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libhahsm_pkcs11.so";

/// The module next to this program, as `cargo build` lays it out; else where
/// the packages put it (the CLI in /usr/bin, the module in the multiarch
/// PKCS#11 directory).
fn default_module() -> Result<PathBuf> {
    let beside = std::env::current_exe()?
        .parent()
        .ok_or_else(|| anyhow!("cannot locate the module"))?
        .join("libhahsm_pkcs11.so");
    if !beside.exists() && Path::new(PACKAGED_MODULE).exists() {
        return Ok(PathBuf::from(PACKAGED_MODULE));
    }
    Ok(beside)
}

/// How to reach one PKCS#11 module: the module, its slot and PIN.
#[derive(Clone)]
pub struct Target {
    pub module: PathBuf,
    pub slot: Option<SlotChoice>,
    pub partition: Option<String>,
    pub pin: String,
    /// hahsm's client config, passed on to worker processes.
    pub conf: Option<PathBuf>,
}

/// Where a point runs: one entry per process, with the slot that process uses.
#[derive(Clone)]
pub struct Placement {
    pub slots: Vec<Option<SlotChoice>>,
    pub threads: usize,
}

impl Placement {
    pub fn same(slot: Option<SlotChoice>, processes: usize, threads: usize) -> Placement {
        Placement {
            slots: vec![slot; processes],
            threads,
        }
    }

    pub fn processes(&self) -> usize {
        self.slots.len()
    }
}

/// hahsm's module and the baselines, loaded once for the whole run.
pub struct Bench {
    pub hahsm: Target,
    hahsm_module: Module,
    softhsm: Option<(softhsm::SoftHsm, Module, Target)>,
    raw: bool,
    pub timing: Timing,
    bytes: usize,
}

impl Bench {
    /// Sets SoftHSM2 up first (it needs an environment variable set before
    /// any module starts its threads), then loads hahsm's module.
    pub fn new(opts: &BenchOpts, hahsm: Target, default_seconds: f64) -> Result<Bench> {
        let softhsm = if opts.baseline.contains(&args::Baseline::Softhsm) {
            match softhsm::installed() {
                Some(path) => {
                    let token = softhsm::SoftHsm::setup(path.clone())?;
                    let module = Module::load(&path)?;
                    let target = Target {
                        module: path,
                        slot: Some(SlotChoice::Name(softhsm::TOKEN_LABEL.into())),
                        partition: None,
                        pin: softhsm::USER_PIN.into(),
                        conf: None,
                    };
                    Some((token, module, target))
                }
                None => {
                    eprintln!(
                        "hahsm bench: SoftHSM2 is not installed ({} is missing; Debian package softhsm2): skipping the softhsm baseline",
                        softhsm::MODULE
                    );
                    None
                }
            }
        } else {
            None
        };
        if let Some(conf) = &hahsm.conf {
            std::env::set_var(hahsm_client::config::ENV_VAR, conf);
        }
        let hahsm_module = Module::load(&hahsm.module)?;
        Ok(Bench {
            hahsm,
            hahsm_module,
            softhsm,
            raw: opts.baseline.contains(&args::Baseline::Raw),
            timing: Timing {
                warmup: Duration::from_secs_f64(opts.warmup),
                window: Duration::from_secs_f64(opts.seconds.unwrap_or(default_seconds)),
            },
            bytes: opts.bytes,
        })
    }

    /// hahsm at one point, with every baseline that was asked for.
    pub fn point(&self, mode: Mode, placement: &Placement) -> Result<Point> {
        let (threads, processes) = (placement.threads, placement.processes());
        let what = format!("{} {}×{}", mode.label(), processes, threads);
        let sample = self.module_sample(&self.hahsm_module, &self.hahsm, mode, placement, &what)?;
        let mut point = Point::new(mode.to_string(), threads, processes, &sample);
        let window_us = self.timing.window.as_micros() as u64;
        if point.p50_us > window_us / 4 {
            eprintln!(
                "hahsm bench: {what}: one operation takes about {} ms, over a quarter of the {} s window, so this rate is coarse: use a longer --seconds",
                point.p50_us / 1000,
                self.timing.window.as_secs_f64()
            );
        }
        if self.raw {
            // The same operation, on as many threads as all processes together.
            let workload = raw::RawWorkload::new(mode, self.bytes)?;
            let progress = Progress::start(format!("{what} raw"), self.timing);
            let s = driver::measure(&workload, threads * processes, self.timing, &progress.counter)?;
            point.set_raw(&s);
        }
        if let Some((_, module, target)) = &self.softhsm {
            let slot = module.slot(target.slot.as_ref(), None)?;
            if module.offers(slot, mode)? {
                let same = Placement::same(target.slot.clone(), processes, threads);
                let s = self.module_sample(module, target, mode, &same, &format!("{what} softhsm"))?;
                point.set_softhsm(&s);
            } else {
                eprintln!(
                    "hahsm bench: SoftHSM2 does not offer {}: no softhsm baseline for it",
                    mode.label()
                );
            }
        }
        Ok(point)
    }

    /// hahsm at one point through another client config (a standalone
    /// member): always in worker processes, since this process's module is
    /// bound to the first config. No baselines.
    pub fn point_elsewhere(&self, target: &Target, mode: Mode, placement: &Placement) -> Result<Point> {
        let what = format!("{} {}×{}", mode.label(), placement.processes(), placement.threads);
        let progress = Progress::start(what, self.timing);
        let commands = placement
            .slots
            .iter()
            .map(|slot| self.worker_command(target, slot.as_ref(), mode, placement.threads))
            .collect::<Result<Vec<_>>>()?;
        let sample = driver::run_workers(commands, self.timing, &progress.counter)?;
        Ok(Point::new(
            mode.to_string(),
            placement.threads,
            placement.processes(),
            &sample,
        ))
    }

    fn module_sample(
        &self,
        module: &Module,
        target: &Target,
        mode: Mode,
        placement: &Placement,
        what: &str,
    ) -> Result<Sample> {
        let progress = Progress::start(what.to_string(), self.timing);
        if let [slot] = &placement.slots[..] {
            let slot = module.slot(slot.as_ref(), target.partition.as_deref())?;
            module.login(slot, &target.pin)?;
            let workload = module.prepare(slot, mode, self.bytes)?;
            let sample = driver::measure(&workload, placement.threads, self.timing, &progress.counter);
            let cleaned = workload.cleanup();
            let sample = sample?;
            if let Err(e) = cleaned {
                eprintln!("hahsm bench: {e:#}");
            }
            return Ok(sample);
        }
        let commands = placement
            .slots
            .iter()
            .map(|slot| self.worker_command(target, slot.as_ref(), mode, placement.threads))
            .collect::<Result<Vec<_>>>()?;
        driver::run_workers(commands, self.timing, &progress.counter)
    }

    /// `hahsm bench worker …` for one process of a point. The PIN goes in the
    /// environment, not on the command line where `ps` shows it.
    fn worker_command(
        &self,
        target: &Target,
        slot: Option<&SlotChoice>,
        mode: Mode,
        threads: usize,
    ) -> Result<Command> {
        let mut cmd = Command::new(std::env::current_exe().context("cannot find this program's path")?);
        cmd.args(["bench", "worker", "--mode", &mode.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--seconds", &self.timing.window.as_secs_f64().to_string()])
            .args(["--warmup", &self.timing.warmup.as_secs_f64().to_string()])
            .args(["--bytes", &self.bytes.to_string()])
            .arg("--module")
            .arg(&target.module)
            .env("HAHSM_PIN", &target.pin)
            .env_remove("HAHSM_PARTITION");
        if let Some(slot) = slot {
            cmd.args(["--slot", &slot.to_string()]);
        }
        if let Some(p) = &target.partition {
            cmd.args(["--partition", p]);
        }
        if let Some(c) = &target.conf {
            cmd.arg("--conf").arg(c);
        }
        Ok(cmd)
    }
}

fn pin(opts: &BenchOpts) -> Result<String> {
    opts.pin
        .clone()
        .ok_or_else(|| anyhow!("the user PIN is needed: --pin or HAHSM_PIN"))
}

/// `hahsm bench [--mode …] [--threads …]`: every mode at every thread count.
fn plain(opts: &BenchOpts) -> Result<()> {
    let target = Target {
        module: opts.module.clone().map_or_else(default_module, Ok)?,
        slot: opts.slot.clone(),
        partition: opts.partition.clone(),
        pin: pin(opts)?,
        conf: opts.conf.conf.clone(),
    };
    let bench = Bench::new(opts, target, 5.0)?;
    let threads = opts.threads.clone().map_or(vec![8], |t| t.0);
    let mut out = output::Output::new(opts.json, opts.csv.as_deref())?;
    if !opts.json {
        println!(
            "hahsm bench: {} s per point after {} s of warm-up, module {}{}",
            bench.timing.window.as_secs_f64(),
            bench.timing.warmup.as_secs_f64(),
            bench.hahsm.module.display(),
            bench
                .hahsm
                .slot
                .as_ref()
                .map(|s| format!(", slot {s}"))
                .unwrap_or_default()
        );
    }
    let config = match &bench.hahsm.slot {
        Some(SlotChoice::Ha) => "hahsm HA slot".to_string(),
        Some(s) => format!("hahsm slot {s}"),
        None => "hahsm".to_string(),
    };
    for mode in opts.modes() {
        for &t in &threads {
            let placement = Placement::same(bench.hahsm.slot.clone(), opts.processes, t);
            out.add(&config, mode, bench.point(mode, &placement)?)?;
        }
    }
    out.finish()?;
    for path in &opts.plot {
        for (file, mode) in plot::files_per_mode(path, &opts.modes()) {
            let series = plot::series_with_baselines(out.points(), mode);
            plot::draw(
                &file,
                &format!("{} through hahsm's PKCS#11 module", mode.label()),
                mode,
                "threads",
                &series,
            )?;
            eprintln!("hahsm bench: plot written to {}", file.display());
        }
    }
    out.check_nonzero()
}

/// `hahsm bench worker`: one process of a multi-process point.
fn worker(opts: &BenchOpts) -> Result<()> {
    let (mode, threads) = match (&opts.mode[..], opts.threads.as_ref().map(|t| &t.0[..])) {
        ([m], Some([t])) => (*m, *t),
        _ => bail!("a worker takes one --mode and one --threads"),
    };
    if let Some(conf) = &opts.conf.conf {
        std::env::set_var(hahsm_client::config::ENV_VAR, conf);
    }
    let module_path = opts.module.clone().map_or_else(default_module, Ok)?;
    let module = Module::load(&module_path)?;
    let slot = module.slot(opts.slot.as_ref(), opts.partition.as_deref())?;
    module.login(slot, &pin(opts)?)?;
    let workload = module.prepare(slot, mode, opts.bytes)?;
    let timing = Timing {
        warmup: Duration::from_secs_f64(opts.warmup),
        window: Duration::from_secs_f64(opts.seconds.unwrap_or(5.0)),
    };
    let served = driver::serve_as_worker(&workload, threads, timing);
    let cleaned = workload.cleanup();
    served.and(cleaned)
}
