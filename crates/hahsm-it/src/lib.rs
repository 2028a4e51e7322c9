//! The multi-process test harness: real `hahsmd` members in temporary
//! directories, driven by the real `hahsm` CLI and by the client library, with
//! faults made for real (SIGKILL, SIGSTOP, tampering with files on disk).
//!
//! The binaries come from the workspace's target directory (`HAHSM_BIN_DIR`
//! overrides it); `scripts/test.sh` builds them before the tests run.
pub mod bed;
pub mod bed_group;
pub mod cluster;
pub mod docker;
pub mod history;
pub mod proxy;
pub mod runbook;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Environment variables for a process, as (name, value).
pub type Env = Vec<(String, String)>;

/// Debian's libfaketime for threaded programs (the `faketime` package, which
/// scripts/test-deps.sh installs): with `LD_PRELOAD` and `FAKETIME`, a member
/// sees its wall clock off; with `DONT_FAKE_MONOTONIC=1` its monotonic
/// clock stays true.
pub fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .expect("libfaketimeMT.so.1 (Debian's faketime package; scripts/test-deps.sh installs it)")
}

/// The directory holding `hahsmd` and `hahsm`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HAHSM_BIN_DIR") {
        return PathBuf::from(d);
    }
    // Test executables live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("the test knows its own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (scripts/test.sh does: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A command's result, with its output as text for assertions.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with the whole output when the command failed.
    #[track_caller]
    pub fn expect_ok(self) -> Run {
        assert!(
            self.ok,
            "command failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the command failed with `needle` in its error output.
    #[track_caller]
    pub fn expect_err(self, needle: &str) -> Run {
        assert!(!self.ok, "command should have failed\nstdout:\n{}", self.stdout);
        assert!(
            self.stderr.contains(needle) || self.stdout.contains(needle),
            "expected '{needle}' in the error\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `hahsm` with the given client config (exported as `HAHSM_CONF`).
pub fn hahsm(conf: Option<&Path>, args: &[&str]) -> Run {
    hahsm_env(conf, args, &[])
}

pub fn hahsm_env(conf: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin("hahsm"));
    cmd.args(args).stdin(Stdio::null());
    cmd.env_remove("HAHSM_PIN")
        .env_remove("HAHSM_PARTITION")
        .env_remove("HAHSM_CONF");
    if let Some(c) = conf {
        cmd.env("HAHSM_CONF", c);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("hahsm runs"))
}

/// The `[monitoring]` table every test member starts with.
const MONITORING: &str = "[monitoring]\nmetrics_listen = \"127.0.0.1:0\"\n";

/// `HAHSM_MEMBER_WRAPPER`: a command, in words split on white space, that
/// each member (outside a network namespace) is started under, its last
/// argument being `hahsmd` and then the member's own arguments; for example
/// `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p` to count the
/// member's instructions (`scripts/callgrind-per-op.sh`). Unset or empty:
/// members start as `hahsmd` itself. Under a wrapper, a member is given
/// longer to start and to stop (a wrapped program is slow, and one killed
/// before it exits writes no profile).
fn member_wrapper() -> Option<Vec<String>> {
    let words: Vec<String> = std::env::var("HAHSM_MEMBER_WRAPPER")
        .ok()?
        .split_whitespace()
        .map(String::from)
        .collect();
    (!words.is_empty()).then_some(words)
}

/// How long a member may take to start (`secs` without a wrapper).
fn member_patience(secs: u64) -> Duration {
    match member_wrapper() {
        Some(_) => Duration::from_secs(secs.max(300)),
        None => Duration::from_secs(secs),
    }
}

/// One `hahsmd` process with its own data directory.
pub struct Member {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub address: String,
    /// The peer listener's address, when the member has one.
    pub peer_address: String,
    /// The network namespace it runs in (a host of a `bed::Bed`), if any.
    netns: Option<String>,
    /// Extra environment for the daemon (e.g. libfaketime's), from its next start.
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Member {
    /// Writes a config listening on an ephemeral loopback port and starts the daemon.
    pub fn start(dir: &Path) -> Member {
        Self::start_with(dir, "")
    }

    /// Like `start`, with a peer listener for HA groups.
    pub fn start_peer(dir: &Path) -> Member {
        Self::start_config(dir, "peer_listen = \"127.0.0.1:0\"\n", "", "")
    }

    /// Like `start`, with extra TOML lines under `[limits]`.
    pub fn start_with(dir: &Path, limits: &str) -> Member {
        Self::start_config(dir, "", "", limits)
    }

    /// Like `start_with`, with extra TOML lines under `[monitoring]` (which
    /// may open `[monitoring.alerts]`).
    pub fn start_monitored(dir: &Path, monitoring: &str, limits: &str) -> Member {
        Self::start_config(dir, "", monitoring, limits)
    }

    fn start_config(dir: &Path, top: &str, monitoring: &str, limits: &str) -> Member {
        // The metrics endpoint on a free port: members of one test, and
        // tests running at once, must not contend for the default port.
        Self::launch(
            dir,
            &format!("listen = \"127.0.0.1:0\"\n{top}{MONITORING}{monitoring}\n[limits]\n{limits}\n"),
            None,
        )
    }

    /// A member on a host of a test bed: in the network namespace `netns`,
    /// listening on the host's address `ip` (clients on 1792, peers on
    /// 1793); its console, the admin socket, is on the machine's file system.
    pub fn start_in_netns(dir: &Path, netns: &str, ip: &str) -> Member {
        Self::launch(
            dir,
            &format!("listen = \"{ip}:1792\"\npeer_listen = \"{ip}:1793\"\n{MONITORING}\n[limits]\n"),
            Some(netns),
        )
    }

    /// Writes the config (`data_dir`, then `config`) and starts the daemon.
    fn launch(dir: &Path, config: &str, netns: Option<&str>) -> Member {
        std::fs::create_dir_all(dir).expect("member dir");
        let path = dir.join("hahsmd.toml");
        let data = dir.join("data");
        std::fs::write(&path, format!("data_dir = \"{}\"\n{config}", data.display()))
            .expect("config written");
        let mut m = Member {
            dir: dir.to_path_buf(),
            config: path,
            address: String::new(),
            peer_address: String::new(),
            netns: netns.map(String::from),
            env: Vec::new(),
            child: None,
        };
        m.spawn();
        m
    }

    /// `hahsmd`, in the member's network namespace if it has one.
    fn daemon_command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("hahsmd"));
                c
            }
            None => match member_wrapper() {
                Some(words) => {
                    let mut c = Command::new(&words[0]);
                    c.args(&words[1..]).arg(bin("hahsmd"));
                    c
                }
                None => Command::new(bin("hahsmd")),
            },
        }
    }

    /// Sets an environment variable for the daemon; it applies at the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Adds top-level TOML lines (e.g. `log_format = "json"`); they apply at
    /// the next start.
    pub fn add_top_level(&self, lines: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text = text.replacen(MONITORING, &format!("{lines}\n{MONITORING}"), 1);
        std::fs::write(&self.config, text).expect("config written");
    }

    /// The health endpoint `path` (e.g. `/health/ready?format=json`): the
    /// status code and the body.
    pub fn health(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = std::fs::read_to_string(self.data_dir().join("metrics.addr")).expect("metrics.addr");
        let mut tcp = std::net::TcpStream::connect(addr.trim()).expect("metrics endpoint");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(tcp, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("request");
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        let code = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        (code, body)
    }

    /// Adds TOML lines under `[monitoring]`; they apply at the next start.
    pub fn add_monitoring(&self, monitoring: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text = text.replacen(MONITORING, &format!("{MONITORING}{monitoring}\n"), 1);
        std::fs::write(&self.config, text).expect("config written");
    }

    /// The metrics endpoint's URL, from the address the member wrote.
    pub fn metrics_url(&self) -> String {
        let addr = std::fs::read_to_string(self.data_dir().join("metrics.addr")).expect("metrics.addr");
        format!("http://{}/metrics", addr.trim())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir().join("admin.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("hahsmd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the daemon and waits until its admin socket answers.
    pub fn spawn(&mut self) {
        // A restarted member binds the port it had; on a busy machine another
        // process's outgoing connection may hold that port as its ephemeral
        // source port for a moment. Try again then, as an operator would.
        // Any other early exit is retried once, loudly, so that a rare
        // start-up failure shows its log in the test output but a persistent
        // one still fails the test.
        let mut other_failures = 0;
        for _ in 0..20 {
            let log_before = self.log().len();
            match self.try_spawn() {
                Ok(()) => return,
                Err(log) => {
                    let this_start = &log[log_before.min(log.len())..];
                    if !this_start.contains("in use") {
                        other_failures += 1;
                        assert!(other_failures < 2, "hahsmd exited during start-up; log:\n{log}");
                        eprintln!("hahsmd exited during start-up; retrying once. Its output:\n{this_start}");
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        panic!("hahsmd could not bind its ports; log:\n{}", self.log());
    }

    /// One start attempt: `Err(log)` if the daemon exited during start-up.
    fn try_spawn(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.data_dir().join("listen.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = self
            .daemon_command()
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("hahsmd starts");
        self.child = Some(child);
        let deadline = Instant::now() + member_patience(30);
        loop {
            // The file may be read between its creation and its write: an
            // empty address is not an address yet.
            let addr = std::fs::read_to_string(self.data_dir().join("listen.addr")).unwrap_or_default();
            if !addr.trim().is_empty() && self.admin(&["status"]).ok {
                self.address = addr.trim().to_string();
                self.peer_address = std::fs::read_to_string(self.data_dir().join("peer.addr"))
                    .map(|a| a.trim().to_string())
                    .unwrap_or_default();
                self.pin_port();
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("({status})\n{}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "hahsmd did not become ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A member keeps its address across restarts, as a real appliance does:
    /// after the first start on port 0, the config names the port it got.
    fn pin_port(&self) {
        let text = std::fs::read_to_string(&self.config).unwrap_or_default();
        let fixed = text
            .replace(
                "\nlisten = \"127.0.0.1:0\"",
                &format!("\nlisten = \"{}\"", self.address),
            )
            .replace(
                "peer_listen = \"127.0.0.1:0\"",
                &format!("peer_listen = \"{}\"", self.peer_address),
            );
        if fixed != text {
            std::fs::write(&self.config, fixed).expect("config rewritten");
        }
    }

    /// Starts the daemon expecting it to refuse to run; returns its exit code
    /// and log. A daemon still running after 20 s is killed and reported as
    /// `None` with what it logged, so that a test of a refusal fails instead of
    /// hanging when the daemon starts after all.
    pub fn spawn_expect_exit(&mut self) -> (Option<i32>, String) {
        let mut child = Command::new(bin("hahsmd"))
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hahsmd runs");
        let started = std::time::Instant::now();
        let code = loop {
            match child.try_wait().expect("waits for hahsmd") {
                Some(status) => break status.code(),
                None if started.elapsed() > Duration::from_secs(20) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        (code, stderr)
    }

    /// Sends a signal. SIGSTOP returns only once every thread of the member
    /// has stopped: the kernel delivers it asynchronously, and a request sent
    /// at once could otherwise still be served.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
            if sig == Signal::SIGSTOP {
                wait_stopped(pid);
            }
        }
    }

    /// SIGKILL, as a power cut would: no shutdown code runs.
    /// Runs `work` (a program using the module) and sends `sig` to this
    /// member as soon as that program has logged in here (the member logs
    /// each login), so the fault lands mid-command with the member in use.
    /// Returns `work`'s result, and whether the signal was sent.
    pub fn signal_at_next_login<T>(&self, sig: Signal, work: impl FnOnce() -> T) -> (T, bool) {
        let pid = Pid::from_raw(self.pid().expect("the member runs") as i32);
        let before = self.log().len();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if self
                        .log()
                        .get(before..)
                        .is_some_and(|new| new.contains("logged in client="))
                    {
                        kill(pid, sig).expect("the member is signalled");
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                false
            });
            let out = work();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (out, watcher.join().expect("the watcher ends"))
        })
    }

    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + member_patience(10);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `hahsm appliance --socket <this member's socket> ARGS…`
    pub fn admin(&self, args: &[&str]) -> Run {
        let socket = self.admin_socket();
        let mut full = vec!["appliance", "--socket", socket.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        hahsm(None, &full)
    }

    pub fn fingerprint(&self) -> String {
        let out = self.admin(&["sysconf", "fingerprint"]).expect_ok();
        out.stdout
            .trim()
            .trim_start_matches("SHA256 Fingerprint=")
            .to_string()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Never leave a daemon behind, even when a test fails; a paused one
        // must be resumed to die cleanly.
        self.signal(Signal::SIGCONT);
        self.kill9();
    }
}

/// Waits (at most 5 s) until every thread of `pid` is in the stopped state.
fn wait_stopped(pid: u32) {
    let stopped = || -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.trim_start().chars().next())
                })
                .is_none_or(|state| state == 'T' || state == 't')
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stopped() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A member set up as in the report's listings 3.1 and 3.2: HSM initialized,
/// a partition with a PIN and the activation policies, a client certificate
/// registered and assigned, and a client config that pins the member.
pub struct Standalone {
    pub work: tempfile::TempDir,
    pub member: Member,
    pub conf: PathBuf,
    pub so_secret: PathBuf,
    pub domain_secret: PathBuf,
    pub owner_secret: PathBuf,
    pub partition: String,
    pub pin: String,
}

pub const PARTITION: &str = "myPart";
pub const PIN: &str = "myPwD-1234";

impl Standalone {
    /// A TLS connection to the member made with `conf`'s certificate, past
    /// the hello (as `software`), for tests that write frames by hand.
    pub async fn raw_client(&self, conf: &Path, software: &str) -> hahsm_link::ClientStream {
        let config = hahsm_client::ClientConfig::load(conf).unwrap();
        let identity = hahsm_link::load_identity(&config.cert, &config.key).unwrap();
        let pinned = hahsm_link::Fingerprint::parse(&config.servers[0].fingerprint).unwrap();
        let tls = hahsm_link::client_config(identity, pinned).unwrap();
        let t = Duration::from_secs(10);
        let mut c = hahsm_link::connect(&self.member.address, tls, t, t)
            .await
            .unwrap();
        let hello = hahsm_proto::client::Hello {
            protocol_version: hahsm_proto::PROTOCOL_VERSION,
            client_software: software.into(),
        };
        hahsm_link::write_frame(&mut c, &hahsm_proto::encode(&hello))
            .await
            .unwrap();
        hahsm_link::read_frame(&mut c, 1 << 20)
            .await
            .unwrap()
            .expect("welcome");
        c
    }
}
/// The partition SO's PIN (PKCS#11 `CKU_SO`).
pub const SO_PIN: &str = "so-pin-5678";

/// Makes client `name`'s certificate and config at `conf`, pins `member` in
/// it, registers the certificate on the member and, if given, assigns it
/// `partition`.
fn set_up_client(member: &Member, conf: &Path, name: &str, partition: Option<&str>) {
    hahsm(Some(conf), &["client", "create-cert", "--name", name]).expect_ok();
    hahsm(
        Some(conf),
        &[
            "client",
            "add-server",
            "--name",
            "testhsm",
            "--address",
            &member.address,
            "--fingerprint",
            &member.fingerprint(),
        ],
    )
    .expect_ok();
    let cert = conf.with_file_name(format!("{name}.pem"));
    member
        .admin(&[
            "client",
            "register",
            "--client",
            name,
            "--hostname",
            "127.0.0.1",
            "--cert",
            cert.to_str().expect("utf-8"),
        ])
        .expect_ok();
    if let Some(partition) = partition {
        member
            .admin(&[
                "client",
                "assign-partition",
                "--client",
                name,
                "--partition",
                partition,
            ])
            .expect_ok();
    }
}

impl Standalone {
    pub fn new() -> Standalone {
        Self::with_limits("")
    }

    pub fn with_limits(limits: &str) -> Standalone {
        Self::build(tempfile::tempdir().expect("temp dir"), limits)
    }

    /// Sets up a member in `work`, whose member directory is `work/testhsm`
    /// (data in `work/testhsm/data`): a test may prepare that first, say by
    /// mounting a small file system there.
    pub fn build(work: tempfile::TempDir, limits: &str) -> Standalone {
        Self::build_monitored(work, limits, "")
    }

    /// Like `build`, with extra TOML lines under `[monitoring]`.
    pub fn build_monitored(work: tempfile::TempDir, limits: &str, monitoring: &str) -> Standalone {
        let member = Member::start_monitored(&work.path().join("testhsm"), monitoring, limits);
        let secrets = work.path().join("secrets");
        std::fs::create_dir_all(&secrets).expect("secrets dir");
        let so = secrets.join("so.key");
        let domain = secrets.join("domain.key");
        let owner = secrets.join("owner.key");
        let p = |p: &Path| p.to_str().expect("utf-8").to_string();
        member
            .admin(&[
                "hsm",
                "init",
                "--label",
                "testhsm",
                "--so-secret",
                &p(&so),
                "--domain-secret",
                &p(&domain),
            ])
            .expect_ok();
        member
            .admin(&["hsm", "login", "--so-secret", &p(&so)])
            .expect_ok();
        for policy in ["7", "16", "20"] {
            member
                .admin(&["hsm", "change-policy", "--policy", policy, "--value", "1"])
                .expect_ok();
        }
        member
            .admin(&[
                "partition",
                "create",
                "--partition",
                PARTITION,
                "--owner-secret",
                &p(&owner),
                "--pin",
                "initial-pin",
            ])
            .expect_ok();
        member
            .admin(&[
                "partition",
                "change-pin",
                "--partition",
                PARTITION,
                "--owner-secret",
                &p(&owner),
                "--new-pin",
                PIN,
            ])
            .expect_ok();
        for policy in ["22", "23"] {
            member
                .admin(&[
                    "partition",
                    "change-policy",
                    "--partition",
                    PARTITION,
                    "--policy",
                    policy,
                    "--value",
                    "1",
                ])
                .expect_ok();
        }
        member
            .admin(&[
                "partition",
                "activate",
                "--partition",
                PARTITION,
                "--owner-secret",
                &p(&owner),
            ])
            .expect_ok();

        member
            .admin(&[
                "partition",
                "change-so-pin",
                "--partition",
                PARTITION,
                "--owner-secret",
                &p(&owner),
                "--new-pin",
                SO_PIN,
            ])
            .expect_ok();

        let conf = work.path().join("client/client.toml");
        set_up_client(&member, &conf, "app1", Some(PARTITION));
        Standalone {
            work,
            member,
            conf,
            so_secret: so,
            domain_secret: domain,
            owner_secret: owner,
            partition: PARTITION.to_string(),
            pin: PIN.to_string(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Another client, with its own certificate and config (returned), at
    /// `<name>/client.toml`; registered on the member, and assigned the
    /// partition if `assign`.
    pub fn add_client(&self, name: &str, assign: bool) -> PathBuf {
        let conf = self.path(&format!("{name}/client.toml"));
        set_up_client(
            &self.member,
            &conf,
            name,
            assign.then_some(self.partition.as_str()),
        );
        conf
    }

    /// `hahsm keys ARGS…` with this setup's config, partition and PIN.
    pub fn keys(&self, args: &[&str]) -> Run {
        self.keys_with_pin(&self.pin, args)
    }

    /// `hahsm keys ARGS` logging in with `pin` (a wrong one, say).
    pub fn keys_with_pin(&self, pin: &str, args: &[&str]) -> Run {
        let mut full = vec!["keys"];
        full.extend_from_slice(args);
        hahsm_env(
            Some(&self.conf),
            &full,
            &[("HAHSM_PIN", pin), ("HAHSM_PARTITION", &self.partition)],
        )
    }

    /// Sets partition policy `number` of the partition (on the console).
    pub fn set_partition_policy(&self, number: u32, value: u64) {
        let (number, value) = (number.to_string(), value.to_string());
        self.member
            .admin(&[
                "partition",
                "change-policy",
                "--partition",
                &self.partition,
                "--policy",
                &number,
                "--value",
                &value,
            ])
            .expect_ok();
    }

    pub fn client_config(&self) -> hahsm_client::ClientConfig {
        hahsm_client::ClientConfig::load(&self.conf).expect("client config")
    }

    /// A connection through the client library, logged in.
    pub async fn connect(&self) -> hahsm_client::MemberConnection {
        let config = self.client_config();
        let server = config.servers[0].clone();
        let conn = hahsm_client::MemberConnection::connect(&config, &server)
            .await
            .expect("connects");
        conn.call(hahsm_proto::client::Request::Login {
            partition: self.partition.clone(),
            user_type: hahsm_proto::client::USER_NORMAL,
            pin: hahsm_proto::Secret::from(self.pin.as_str()),
        })
        .await
        .expect("logs in");
        conn
    }
}

impl Default for Standalone {
    fn default() -> Self {
        Self::new()
    }
}

/// A small tmpfs mounted for a test, unmounted when dropped. Mounting needs
/// root, which CI has; `mount` returns None elsewhere.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Runs a command and returns its output; panics if it cannot start.
pub fn run(program: &str, args: &[&str]) -> Run {
    run_command(Command::new(program).args(args))
}

/// Waits for a `hahsm bench --json` run and checks that it signed and that
/// not one operation failed (`during` says what happened meanwhile, for the
/// report); returns its JSON point.
#[track_caller]
pub fn expect_clean_bench(child: Child, during: &str) -> serde_json::Value {
    let out = child.wait_with_output().expect("the bench ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the bench failed:\n{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_default();
    let point: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("no JSON point from hahsm bench ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(
        point["errors"].as_u64(),
        Some(0),
        "operations failed {during}:\n{stdout}\n{stderr}"
    );
    assert!(
        point["ops_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "no operation at all: {point}"
    );
    point
}

/// Runs a prepared command to its end, with no standard input.
/// A loopback TCP port free a moment ago, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A server a test starts (nginx, knotd…) in a process group of its own,
/// the whole group killed when dropped: workers outlive a killed master
/// otherwise. Starts `cmd` with `process_group(0)`.
pub struct ProcessGroup(pub Child);

impl ProcessGroup {
    pub fn spawn(cmd: &mut Command, what: &str) -> ProcessGroup {
        use std::os::unix::process::CommandExt;
        ProcessGroup(
            cmd.process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("{what} starts: {e}")),
        )
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-(self.0.id() as i32)), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

pub fn run_command(cmd: &mut Command) -> Run {
    let program = cmd.get_program().to_string_lossy().into_owned();
    Run::from(
        cmd.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}")),
    )
}

/// An alert command for a member's `[monitoring.alerts] exec`: it appends
/// "KIND STATUS MEMBER JSON" to the file named by its argument (the
/// variables and the JSON on stdin, as the member passes them).
pub fn alert_script(dir: &Path) -> PathBuf {
    let script = dir.join("alert.sh");
    std::fs::write(
        &script,
        // One write per alert, so a reader never sees half a line.
        "#!/bin/sh\njson=$(cat)\nprintf '%s %s %s %s\\n' \"$HAHSM_ALERT_KIND\" \"$HAHSM_ALERT_STATUS\" \"$HAHSM_ALERT_MEMBER\" \"$json\" >> \"$1\"\n",
    )
    .expect("alert script written");
    script
}

/// The `[monitoring]` lines (after `extra`) that run `alert_script` for
/// every alert, appending to `out`.
pub fn exec_alerts_config(script: &Path, out: &Path, extra: &str) -> String {
    format!(
        "{extra}[monitoring.alerts]\nexec = [\"/bin/sh\", \"{}\", \"{}\"]\nretry_backoff_ms = 100\n",
        script.display(),
        out.display()
    )
}

/// The alerts `alert_script` wrote to `path`, one line each.
pub fn alerts_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A plain HTTP/1.1 GET of `url` (`http://host:port/path`), such as a
/// member's metrics endpoint: the whole response, which must be a 200.
pub fn http_get(url: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut conn = std::net::TcpStream::connect(host).expect("metrics endpoint");
    write!(
        conn,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    out
}
