//! The command line of `hahsm bench`: what the user typed, parsed and checked
//! with no I/O (modes, thread counts, slot choices), before anything is loaded.
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Args, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub opts: BenchOpts,
}

#[derive(Subcommand, Clone)]
pub enum BenchCommand {
    /// Reproduce one of the report's performance tests (§3.4.8–3.4.11) against
    /// a local HA group that this command starts and stops.
    Scenario(ScenarioArgs),
    /// One worker process of `--processes` (started by `hahsm bench` itself).
    #[command(hide = true)]
    Worker,
}

/// Options shared by a plain run, the scenarios and the worker processes.
#[derive(Args, Clone)]
pub struct BenchOpts {
    /// What to measure, comma-separated or repeated: rsa-sign[:2048|3072|4096],
    /// rsa-keygen[:BITS], ecdsa-sign[:p256|p384], eddsa-sign, aes-gcm, hmac,
    /// ecdh[:p256|p384], ml-dsa-sign[:44|65|87], ml-kem-decap[:512|768|1024] [default: rsa-sign:2048,ecdsa-sign:p256; scenarios:
    /// rsa-sign:2048,rsa-keygen:2048]
    #[arg(long, value_delimiter = ',', global = true)]
    pub mode: Vec<Mode>,
    /// Application threads per process: a list and/or ranges, e.g. `8`,
    /// `1,2,4,8`, `1-8` (every count from 1 to 8), `10-100:10` (10, 20, … 100)
    /// [default: 8; scenarios have their own]
    #[arg(long, global = true)]
    pub threads: Option<ThreadCounts>,
    /// Separate OS processes, each running `--threads` threads, measured
    /// together (report test 3.4.9).
    #[arg(long, default_value_t = 1, global = true)]
    pub processes: usize,
    /// Seconds measured per point [default: 5; scenarios: 3]
    #[arg(long, global = true)]
    pub seconds: Option<f64>,
    /// Seconds of warm-up before each point, not measured.
    #[arg(long, default_value_t = 1.0, global = true)]
    pub warmup: f64,
    /// The slot: `ha` (the HA slot), a slot id, a member's server name from
    /// the client config (its physical slot), or a token label [default: the
    /// first slot, or --partition's]
    #[arg(long, global = true)]
    pub slot: Option<SlotChoice>,
    /// The partition (token label) when --slot is not given.
    #[arg(long, env = "HAHSM_PARTITION", global = true)]
    pub partition: Option<String>,
    /// The user PIN.
    #[arg(long, env = "HAHSM_PIN", hide_env_values = true, global = true)]
    pub pin: Option<String>,
    /// The PKCS#11 module [default: libhahsm_pkcs11.so next to this program]
    #[arg(long, global = true)]
    pub module: Option<PathBuf>,
    /// Also measure the same operation on `raw` (aws-lc-rs in this process,
    /// same threads) and/or `softhsm` (SoftHSM2, if installed).
    #[arg(long, value_delimiter = ',', global = true)]
    pub baseline: Vec<Baseline>,
    /// Bytes of data signed, MACed or encrypted per operation.
    #[arg(long, default_value_t = 32, global = true)]
    pub bytes: usize,
    /// Write every point to this CSV file.
    #[arg(long, global = true)]
    pub csv: Option<PathBuf>,
    /// Print one JSON object per point on stdout instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Draw throughput against threads into this file (.svg or .png); repeatable.
    #[arg(long, global = true)]
    pub plot: Vec<PathBuf>,
    #[command(flatten)]
    pub conf: crate::common::ConfArg,
}

impl BenchOpts {
    pub fn modes(&self) -> Vec<Mode> {
        if self.mode.is_empty() {
            vec![Mode::RsaSign(2048), Mode::EcdsaSign(Curve::P256)]
        } else {
            self.mode.clone()
        }
    }

    /// Checks what no parser can: ranges of numbers and their combinations.
    pub fn check(&self) -> Result<()> {
        if self.processes == 0 || self.processes > 64 {
            bail!("--processes takes 1 to 64");
        }
        if let Some(s) = self.seconds {
            if !(s > 0.0 && s <= 86_400.0) {
                bail!("--seconds must be above 0 (and at most a day)");
            }
        }
        if !(0.0..=3600.0).contains(&self.warmup) {
            bail!("--warmup takes 0 to 3600 seconds");
        }
        if self.bytes == 0 || self.bytes > 64 * 1024 {
            bail!("--bytes takes 1 to 65536");
        }
        for p in &self.plot {
            Format::of(p)?;
        }
        Ok(())
    }
}

#[derive(Args, Clone)]
pub struct ScenarioArgs {
    /// Which of the report's tests.
    pub name: ScenarioName,
    /// Where to write `<name>.csv`, `<name>.jsonl` and the plots (`<name>-<mode>.svg` and `.png`).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Members in the group.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// The group's directory [default: a temporary directory, removed afterwards]
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Only draw the plots again, from `<name>.jsonl` in `--out`.
    #[arg(long)]
    pub replot: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// 3.4.8: 1 to 100 threads on the HA slot, signing and key generation (table 4.1, figure 4.1).
    Threads,
    /// 3.4.9: 1 to 3 processes × threads on the HA slot, signing (table 4.2, figure 4.1).
    Processes,
    /// 3.4.10: the HA slot against the members' physical slots used at once and against a standalone member (tables 4.3, 4.4, figure 4.2).
    HaVsStandalone,
    /// 3.4.11: the HA slot while another process saturates member 1, against a standalone member (table 4.5).
    SlowMember,
}

impl fmt::Display for ScenarioName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.to_possible_value().ok_or(fmt::Error)?;
        f.write_str(v.get_name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// aws-lc-rs in this process, on the same number of threads.
    Raw,
    /// SoftHSM2 through its PKCS#11 module, in a temporary token.
    Softhsm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
}

/// One kind of operation, with its key size or curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    RsaSign(u32),
    RsaKeygen(u32),
    EcdsaSign(Curve),
    EddsaSign,
    AesGcm,
    Hmac,
    Ecdh(Curve),
    /// ML-DSA signatures of the parameter set 44, 65 or 87.
    MlDsaSign(u16),
    /// ML-KEM decapsulations of the parameter set 512, 768 or 1024.
    MlKemDecap(u16),
}

impl Mode {
    /// The short name used in tables and the first column of the text output.
    pub fn label(&self) -> String {
        match self {
            Mode::RsaSign(b) => format!("RSA-{b}"),
            Mode::RsaKeygen(b) => format!("RSA-{b}-gen"),
            Mode::EcdsaSign(Curve::P256) => "P-256".into(),
            Mode::EcdsaSign(Curve::P384) => "P-384".into(),
            Mode::EddsaSign => "Ed25519".into(),
            Mode::AesGcm => "AES-256-GCM".into(),
            Mode::Hmac => "HMAC-SHA256".into(),
            Mode::Ecdh(Curve::P256) => "ECDH-P-256".into(),
            Mode::Ecdh(Curve::P384) => "ECDH-P-384".into(),
            Mode::MlDsaSign(set) => format!("ML-DSA-{set}"),
            Mode::MlKemDecap(set) => format!("ML-KEM-{set}"),
        }
    }

    /// What one operation is, for axis titles.
    pub fn unit(&self) -> &'static str {
        match self {
            Mode::RsaKeygen(_) => "key pairs/s",
            Mode::AesGcm => "encryptions/s",
            Mode::Hmac => "MACs/s",
            Mode::Ecdh(_) => "derivations/s",
            Mode::MlKemDecap(_) => "decapsulations/s",
            _ => "signatures/s",
        }
    }

    /// A name usable in file names.
    pub fn slug(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let curve = |c: &Curve| match c {
            Curve::P256 => "p256",
            Curve::P384 => "p384",
        };
        match self {
            Mode::RsaSign(b) => write!(f, "rsa-sign:{b}"),
            Mode::RsaKeygen(b) => write!(f, "rsa-keygen:{b}"),
            Mode::EcdsaSign(c) => write!(f, "ecdsa-sign:{}", curve(c)),
            Mode::EddsaSign => f.write_str("eddsa-sign"),
            Mode::AesGcm => f.write_str("aes-gcm"),
            Mode::Hmac => f.write_str("hmac"),
            Mode::Ecdh(c) => write!(f, "ecdh:{}", curve(c)),
            Mode::MlDsaSign(set) => write!(f, "ml-dsa-sign:{set}"),
            Mode::MlKemDecap(set) => write!(f, "ml-kem-decap:{set}"),
        }
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Mode> {
        let (name, param) = match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        let bits = |p: Option<&str>| -> Result<u32> {
            match p {
                None => Ok(2048),
                Some(p @ ("2048" | "3072" | "4096")) => Ok(p.parse()?),
                Some(p) => bail!("RSA key size '{p}': use 2048, 3072 or 4096"),
            }
        };
        let curve = |p: Option<&str>| -> Result<Curve> {
            match p.map(str::to_ascii_lowercase).as_deref() {
                None | Some("p256" | "p-256") => Ok(Curve::P256),
                Some("p384" | "p-384") => Ok(Curve::P384),
                Some(p) => bail!("curve '{p}': use p256 or p384"),
            }
        };
        let none = |p: Option<&str>, m: Mode| -> Result<Mode> {
            match p {
                None => Ok(m),
                Some(p) => bail!("{name} takes no parameter (got '{p}')"),
            }
        };
        match name {
            "rsa-sign" => Ok(Mode::RsaSign(bits(param)?)),
            "rsa-keygen" => Ok(Mode::RsaKeygen(bits(param)?)),
            "ecdsa-sign" => Ok(Mode::EcdsaSign(curve(param)?)),
            "ecdh" => Ok(Mode::Ecdh(curve(param)?)),
            "eddsa-sign" => none(param, Mode::EddsaSign),
            "aes-gcm" => none(param, Mode::AesGcm),
            "hmac" => none(param, Mode::Hmac),
            "ml-dsa-sign" => match param {
                None | Some("65") => Ok(Mode::MlDsaSign(65)),
                Some("44") => Ok(Mode::MlDsaSign(44)),
                Some("87") => Ok(Mode::MlDsaSign(87)),
                Some(p) => bail!("ML-DSA parameter set '{p}': use 44, 65 or 87"),
            },
            "ml-kem-decap" => match param {
                None | Some("768") => Ok(Mode::MlKemDecap(768)),
                Some("512") => Ok(Mode::MlKemDecap(512)),
                Some("1024") => Ok(Mode::MlKemDecap(1024)),
                Some(p) => bail!("ML-KEM parameter set '{p}': use 512, 768 or 1024"),
            },
            _ => Err(anyhow!(
                "unknown mode '{name}': use rsa-sign, rsa-keygen, ecdsa-sign, eddsa-sign, aes-gcm, hmac, ecdh, \
                 ml-dsa-sign or ml-kem-decap"
            )),
        }
    }
}

/// Thread counts, ascending and without repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadCounts(pub Vec<usize>);

/// No point in more threads than this in one process.
pub const MAX_THREADS: usize = 1000;

impl FromStr for ThreadCounts {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<ThreadCounts> {
        let number = |t: &str| -> Result<usize> {
            let n: usize = t
                .trim()
                .parse()
                .map_err(|_| anyhow!("'{t}' is not a thread count"))?;
            if n == 0 || n > MAX_THREADS {
                bail!("thread counts go from 1 to {MAX_THREADS} (got {n})");
            }
            Ok(n)
        };
        let mut counts = Vec::new();
        for item in s.split(',').filter(|i| !i.trim().is_empty()) {
            let (range, step) = match item.split_once(':') {
                Some((r, st)) => (r, number(st)?),
                None => (item, 1),
            };
            match range.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (number(a)?, number(b)?);
                    if a > b {
                        bail!("range {a}-{b} goes backwards");
                    }
                    counts.extend((a..=b).step_by(step));
                }
                None if step == 1 => counts.push(number(range)?),
                None => bail!("a step (':{step}') needs a range, as in 10-100:10"),
            }
        }
        if counts.is_empty() {
            bail!("no thread count given");
        }
        counts.sort_unstable();
        counts.dedup();
        Ok(ThreadCounts(counts))
    }
}

/// Which slot of the module to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotChoice {
    Ha,
    Id(u64),
    Name(String),
}

impl FromStr for SlotChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<SlotChoice> {
        if s.is_empty() {
            bail!("--slot needs a value");
        }
        if s.eq_ignore_ascii_case("ha") {
            return Ok(SlotChoice::Ha);
        }
        Ok(match s.parse() {
            Ok(id) => SlotChoice::Id(id),
            Err(_) => SlotChoice::Name(s.to_string()),
        })
    }
}

impl fmt::Display for SlotChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotChoice::Ha => f.write_str("ha"),
            SlotChoice::Id(id) => write!(f, "{id}"),
            SlotChoice::Name(n) => f.write_str(n),
        }
    }
}

/// The file format of a `--plot` figure, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn of(path: &Path) -> Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => bail!(
                "--plot {}: the file name must end in .svg or .png",
                path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_take_lists_ranges_and_steps() {
        let t = |s: &str| s.parse::<ThreadCounts>().map(|t| t.0);
        assert_eq!(t("8").unwrap(), vec![8]);
        assert_eq!(t("1,2,4,8").unwrap(), vec![1, 2, 4, 8]);
        assert_eq!(t("1-4").unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(t("10-40:10,1,100").unwrap(), vec![1, 10, 20, 30, 40, 100]);
        assert_eq!(t("4,1-4").unwrap(), vec![1, 2, 3, 4]);
        assert!(t("0").is_err());
        assert!(t("4-1").is_err());
        assert!(t("5:2").is_err());
        assert!(t("x").is_err());
        assert!(t("").is_err());
        assert!(t("1-100000").is_err());
    }

    #[test]
    fn modes_parse_with_and_without_parameters_and_print_back() {
        for (text, mode) in [
            ("rsa-sign", Mode::RsaSign(2048)),
            ("rsa-sign:4096", Mode::RsaSign(4096)),
            ("rsa-keygen:3072", Mode::RsaKeygen(3072)),
            ("ecdsa-sign:p384", Mode::EcdsaSign(Curve::P384)),
            ("ecdh", Mode::Ecdh(Curve::P256)),
            ("eddsa-sign", Mode::EddsaSign),
            ("aes-gcm", Mode::AesGcm),
            ("hmac", Mode::Hmac),
            ("ml-dsa-sign", Mode::MlDsaSign(65)),
            ("ml-dsa-sign:87", Mode::MlDsaSign(87)),
            ("ml-kem-decap:512", Mode::MlKemDecap(512)),
            ("ml-kem-decap", Mode::MlKemDecap(768)),
        ] {
            let parsed: Mode = text.parse().unwrap();
            assert_eq!(parsed, mode);
            assert_eq!(parsed.to_string().parse::<Mode>().unwrap(), mode);
        }
        for bad in [
            "rsa-sign:1024",
            "ecdsa-sign:p521",
            "hmac:256",
            "dsa",
            "ml-dsa-sign:768",
            "ml-kem-decap:65",
        ] {
            assert!(bad.parse::<Mode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slot_choices() {
        assert_eq!("HA".parse::<SlotChoice>().unwrap(), SlotChoice::Ha);
        assert_eq!("17".parse::<SlotChoice>().unwrap(), SlotChoice::Id(17));
        assert_eq!(
            "hsm2".parse::<SlotChoice>().unwrap(),
            SlotChoice::Name("hsm2".into())
        );
    }
}
