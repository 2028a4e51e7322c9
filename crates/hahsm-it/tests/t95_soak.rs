//! Chaos soak (issue 8, part 6): a 3-member group under steady mixed load
//! from several application processes, each loading the built module and
//! using the HA slot (sign, keygen, rename, destroy), while every few seconds
//! a random fault hits: kill -9 (then restart), pause (SIGSTOP, then
//! SIGCONT), cut link, slow link, or a clean restart. At the end:
//! - every acknowledged write is present, unless a later acknowledged
//!   operation destroyed or renamed it;
//! - no object whose destruction was acknowledged exists;
//! - all members are identical (same version vector and content digest);
//! - no application operation failed. The group's write concern is quorum:
//!   a write is acknowledged only once a majority of members holds it, so an
//!   acknowledged object stays reachable whichever single member a fault
//!   hits next. Faults hit one member at a time, so a majority is always up,
//!   and the HA slot retries a write a member could not get confirmed on
//!   another member;
//! - the resident memory of the member that is never restarted stayed flat:
//!   close to what it needs when restarted cold with the data it then holds.
//!
//! `HAHSM_SOAK_SECONDS` (default 20) and `HAHSM_SOAK_SEED` replay a run
//! (`HAHSM_SOAK_KEEP=1` keeps the members' and workers' logs); the
//! long run's figures are in SECURITY.md. The worker processes are this test
//! binary again, running the ignored `soak_worker` entry.
mod t20_pkcs11_support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PIN};
use hahsm_it::proxy::Mode;
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WORKERS: usize = 3;
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One application process: the HA slot through the module, a random mix of
/// operations until its deadline. Each acknowledged write is appended to its
/// journal before the next operation: `C label`, `R old new`, `D label`;
/// failed operations as `F kind error`; a failed write's outcome is unknown
/// (`U label`).
#[test]
#[ignore = "a worker process of the soak, started by it"]
fn soak_worker() {
    let (Ok(journal), Some(id), Some(seconds)) = (
        std::env::var("HAHSM_SOAK_JOURNAL"),
        env_u64("HAHSM_SOAK_WORKER"),
        env_u64("HAHSM_SOAK_WORKER_SECONDS"),
    ) else {
        return;
    };
    let mut out = std::fs::File::create(&journal).expect("journal");
    let mut rng = Rng(env_u64("HAHSM_SOAK_SEED").unwrap_or(7) ^ (id + 1).wrapping_mul(0x9E37_79B9));
    let p11 = Pkcs11::new(t20_pkcs11_support::module_path()).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    let (_, signer) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(true), Attribute::EcParams(P256.to_vec())],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::Label(format!("soak-signer-{id}").into_bytes()),
            ],
        )
        .expect("signing key");
    writeln!(out, "C soak-signer-{id}").unwrap();
    let mut live: Vec<(String, ObjectHandle)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let line = match rng.below(10) {
            0..=4 => match s.sign(&Mechanism::EcdsaSha256, signer, format!("{id}-{n}").as_bytes()) {
                Ok(_) => "S".to_string(),
                Err(e) => format!("F sign {e}"),
            },
            5..=6 => {
                let label = format!("soak-{id}-{n}");
                let made = s.generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(true),
                        Attribute::ValueLen(16.into()),
                        Attribute::Label(label.clone().into_bytes()),
                    ],
                );
                match made {
                    Ok(h) => {
                        live.push((label.clone(), h));
                        format!("C {label}")
                    }
                    Err(e) => format!("U {label}\nF keygen {e}"),
                }
            }
            7..=8 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let (old, h) = live[i].clone();
                let new = format!("{old}r");
                match s.update_attributes(h, &[Attribute::Label(new.clone().into_bytes())]) {
                    Ok(()) => {
                        live[i].0 = new.clone();
                        format!("R {old} {new}")
                    }
                    Err(e) => {
                        live.remove(i);
                        format!("U {old}\nU {new}\nF rename {e}")
                    }
                }
            }
            _ if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let (label, h) = live.remove(i);
                match s.destroy_object(h) {
                    Ok(()) => format!("D {label}"),
                    Err(e) => format!("U {label}\nF destroy {e}"),
                }
            }
            _ => continue,
        };
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
    drop(s);
    p11.finalize().expect("C_Finalize");
}

/// What the journals say must (and must not) exist at the end.
#[derive(Default)]
struct Expected {
    live: BTreeSet<String>,
    gone: BTreeSet<String>,
    unknown: BTreeSet<String>,
    operations: u64,
    failures: Vec<String>,
}

fn read_journals(paths: &[PathBuf]) -> Expected {
    let mut e = Expected::default();
    for p in paths {
        for line in std::fs::read_to_string(p).unwrap_or_default().lines() {
            let parts: Vec<&str> = line.splitn(3, ' ').collect();
            e.operations += 1;
            match parts.as_slice() {
                ["C", l] => {
                    e.live.insert(l.to_string());
                }
                ["R", old, new] => {
                    e.live.remove(*old);
                    e.gone.insert(old.to_string());
                    e.live.insert(new.to_string());
                }
                ["D", l] => {
                    e.live.remove(*l);
                    e.gone.insert(l.to_string());
                }
                ["U", l] => {
                    e.live.remove(*l);
                    e.unknown.insert(l.to_string());
                }
                ["F", ..] => e.failures.push(line.to_string()),
                _ => {}
            }
        }
    }
    e
}

fn labels_on(c: &Cluster, i: usize) -> BTreeSet<String> {
    c.keys(i, &["list"])
        .expect_ok()
        .stdout
        .lines()
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("soak-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn chaos_soak_loses_nothing_and_converges() {
    let seconds = env_u64("HAHSM_SOAK_SECONDS").unwrap_or(20);
    let seed = env_u64("HAHSM_SOAK_SEED").unwrap_or(0x50a4) | 1;
    eprintln!("soak: {seconds} s, {WORKERS} processes, HAHSM_SOAK_SEED={seed}");
    let mut rng = Rng(seed);
    let mut c = Cluster::with_group_options(3, &["--quorum"]);
    if std::env::var_os("HAHSM_SOAK_KEEP").is_some() {
        // Keep the members' and workers' logs for a post-mortem.
        c.work.disable_cleanup(true);
        eprintln!("soak: keeping {}", c.work.path().display());
    }
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let conf = c.work.path().join("client/soak.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}\n")).unwrap();
    let journals: Vec<PathBuf> = (0..WORKERS)
        .map(|w| c.work.path().join(format!("journal-{w}.txt")))
        .collect();
    let workers: Vec<std::process::Child> = journals
        .iter()
        .enumerate()
        .map(|(w, journal)| {
            std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args(["--exact", "soak_worker", "--ignored", "--nocapture"])
                .env("HAHSM_CONF", &conf)
                .env("HAHSM_PKCS11_LOG", c.work.path().join(format!("pkcs11-{w}.log")))
                .env("HAHSM_SOAK_JOURNAL", journal)
                .env("HAHSM_SOAK_WORKER", w.to_string())
                .env("HAHSM_SOAK_WORKER_SECONDS", seconds.to_string())
                .env("HAHSM_SOAK_SEED", seed.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("worker starts")
        })
        .collect();

    // Faults hit members 1 and 2; member 0 is never restarted, so its
    // resident memory can be followed across the whole run.
    let steady = c.members[0].pid().expect("member 0 runs");
    std::thread::sleep(Duration::from_secs(2));
    let rss_start = rss_kib(steady);
    let end = Instant::now() + Duration::from_secs(seconds.saturating_sub(4));
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    while Instant::now() < end {
        let victim = 1 + rng.below(2) as usize;
        let (name, hold) = match rng.below(5) {
            0 => {
                c.members[victim].kill9();
                ("kill", 1)
            }
            1 => {
                c.members[victim].signal(Signal::SIGSTOP);
                ("pause", 1)
            }
            2 => {
                c.isolate(victim, Mode::Cut);
                ("cut link", 1)
            }
            3 => {
                for j in 0..3 {
                    if let Some(p) = c
                        .proxies
                        .get(&(victim, j))
                        .or_else(|| c.proxies.get(&(j, victim)))
                    {
                        p.set_delay(Duration::from_millis(150));
                    }
                }
                ("slow link", 1)
            }
            _ => {
                c.members[victim].stop();
                ("restart", 0)
            }
        };
        *faults.entry(name).or_default() += 1;
        eprintln!("soak: {name} member {victim}");
        std::thread::sleep(Duration::from_secs(hold + rng.below(2)));
        // Heal.
        match name {
            "kill" | "restart" => c.members[victim].spawn(),
            "pause" => c.members[victim].signal(Signal::SIGCONT),
            "cut link" => c.heal_all(),
            _ => {
                for p in c.proxies.values() {
                    p.set_delay(Duration::ZERO);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
    }
    for (i, mut w) in workers.into_iter().enumerate() {
        let status = w.wait().expect("worker");
        assert!(
            status.success(),
            "worker {i} failed: {status}; its module log:\n{}",
            std::fs::read_to_string(c.work.path().join(format!("pkcs11-{i}.log"))).unwrap_or_default()
        );
    }
    let rss_end = rss_kib(steady);
    let converged = c.wait(Duration::from_secs(60), || {
        (0..3).all(|i| c.status(i)["in_sync"] == true)
    });
    if !converged {
        let lists: Vec<BTreeSet<String>> = (0..3).map(|i| labels_on(&c, i)).collect();
        let all: BTreeSet<&String> = lists.iter().flatten().collect();
        let differing: Vec<String> = all
            .into_iter()
            .filter(|l| !lists.iter().all(|m| m.contains(*l)))
            .map(|l| {
                format!(
                    "{l} on {:?}",
                    (0..3).filter(|&i| lists[i].contains(l)).collect::<Vec<_>>()
                )
            })
            .collect();
        let e = read_journals(&journals);
        let history: Vec<String> = differing
            .iter()
            .filter_map(|d| d.split(' ').next())
            .flat_map(|l| {
                journals.iter().flat_map(move |j| {
                    std::fs::read_to_string(j)
                        .unwrap_or_default()
                        .lines()
                        .filter(|line| {
                            line.split(' ')
                                .any(|w| w == l || w.trim_end_matches('r') == l.trim_end_matches('r'))
                        })
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        panic!(
            "the group did not converge after the soak (faults {faults:?}, seed {seed}); objects on some members only: \
             {differing:?}; their journal lines: {history:?}; unknown outcomes: {}\n{}",
            e.unknown.len(),
            serde_json::to_string_pretty(&c.status(0)).unwrap_or_default()
        );
    }

    let e = read_journals(&journals);
    let digests = c.member_digests(0);
    assert_eq!(digests.len(), 1, "members differ: {digests:?}");
    for i in 0..3 {
        let listed = labels_on(&c, i);
        let missing: Vec<&String> = e.live.difference(&listed).collect();
        assert!(
            missing.is_empty(),
            "member {i} lacks acknowledged objects {missing:?}"
        );
        let resurrected: Vec<&String> = listed
            .iter()
            .filter(|l| e.gone.contains(*l) && !e.live.contains(*l) && !e.unknown.contains(*l))
            .collect();
        let history: Vec<String> = resurrected
            .iter()
            .flat_map(|l| {
                let base = l.trim_end_matches('r').to_string();
                journals.iter().flat_map(move |j| {
                    let base = base.clone();
                    std::fs::read_to_string(j)
                        .unwrap_or_default()
                        .lines()
                        .filter(|line| line.split(' ').skip(1).any(|w| w.trim_end_matches('r') == base))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        assert!(
            resurrected.is_empty(),
            "member {i} holds destroyed or renamed-away objects {resurrected:?} (seed {seed}); journal: {history:?}"
        );
    }
    // What member 0 holds after the soak, started cold: the memory its data
    // explains. Growth beyond that would be a leak.
    c.members[0].stop();
    c.members[0].spawn();
    let fresh = c.members[0].pid().expect("member 0 runs");
    assert!(c.wait_in_sync(0, Duration::from_secs(30)), "{:#}", c.status(0));
    let rss_fresh = rss_kib(fresh);
    let faults_total: u32 = faults.values().sum();
    eprintln!(
        "soak: {} operations from {WORKERS} processes, {faults_total} faults {faults:?}, {} failed operations, \
         {} objects live, 0 lost, 0 resurrected; member 0 RSS {rss_start} KiB -> {rss_end} KiB, \
         {rss_fresh} KiB restarted with the same data (seed {seed})",
        e.operations,
        e.failures.len(),
        e.live.len()
    );
    assert!(
        e.failures.is_empty(),
        "{} application operations failed, the first: {:?}",
        e.failures.len(),
        &e.failures[..e.failures.len().min(12)]
    );
    // Flat, for a member whose data grew: at most half as much again as a
    // cold start with the same data needs, plus room for buffers and caches.
    assert!(
        rss_end < rss_fresh * 3 / 2 + 8 * 1024,
        "member 0's resident memory grew from {rss_start} KiB to {rss_end} KiB; \
         restarted with the same data it needs {rss_fresh} KiB"
    );
}
