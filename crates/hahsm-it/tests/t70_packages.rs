//! The Debian packages and the systemd unit, for real:
//! - the unit's hardening, as `systemd-analyze security` rates it;
//! - the sd_notify contract of the daemon (READY=1, WATCHDOG=1, STOPPING=1);
//! - the packages built by scripts/build-debs.sh, installed with apt into a clean
//!   Debian root (a debootstrap minbase image) and purged again
//!   (packaging/tests/install-purge.sh), and installed in a container whose PID 1
//!   is systemd, where the packaged unit runs the member under its sandbox and
//!   the member still does its work (packaging/tests/systemd-service.sh).
//!
//! Needs Docker, systemd-analyze, debootstrap and cargo-deb; scripts/test-deps.sh installs the
//! last three. The containers are removed, also when a test fails; the base
//! image hahsm-base:bookworm is kept, as scripts/base-image.sh's cache.
use hahsm_it::docker::{
    deb_build_env, docker, repo, script, shown, systemd_boot, wait_booted, BASE_IMAGE, SYSTEMD_RUN,
};
use hahsm_it::{bin, run, run_command};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn unit() -> PathBuf {
    repo().join("packaging/hahsmd.service")
}

// ---- the unit's hardening -------------------------------------------------

/// "→ Overall exposure level for hahsmd.service: 1.2 OK 🙂" → 1.2
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let (_, rest) = line.split_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_unit_is_rated_1_5_or_lower_by_systemd_analyze() {
    let unit = unit();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs (apt-get install systemd; scripts/test-deps.sh does)");
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let exposure =
        overall_exposure(&report).unwrap_or_else(|| panic!("no overall exposure in the report:\n{report}"));
    eprintln!("systemd-analyze security --offline=true: overall exposure {exposure}");
    assert!(
        exposure <= 1.5,
        "packaging/hahsmd.service is exposed {exposure} (> 1.5):\n{report}"
    );
    // What the rating does not show but the daemon's contract needs.
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "User=hahsm",
        "StateDirectory=hahsm",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "CapabilityBoundingSet=",
        "ExecStart=/usr/sbin/hahsmd --config /etc/hahsm/hahsmd.toml",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks '{line}'");
    }
    assert!(
        text.lines().any(|l| l.starts_with("WatchdogSec=")),
        "the unit has no watchdog"
    );
}

#[test]
fn overall_exposure_is_parsed() {
    assert_eq!(
        overall_exposure("x\n→ Overall exposure level for hahsmd.service: 1.2 OK 🙂\n"),
        Some(1.2)
    );
    assert_eq!(overall_exposure("nothing"), None);
}

// ---- the sd_notify contract ------------------------------------------------

/// A daemon started by a test, killed if the test fails.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts hahsmd as systemd would for Type=notify: NOTIFY_SOCKET names a
/// datagram socket the test listens on; with `watchdog_usec`, WATCHDOG_USEC and
/// WATCHDOG_PID (the daemon's own pid: a shell exports its pid, then execs).
fn start_notifying(work: &Path, watchdog_usec: Option<u64>) -> (Daemon, UnixDatagram) {
    let data = work.join("data");
    let config = work.join("hahsmd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n[monitoring]\nmetrics_listen = \"127.0.0.1:0\"\n",
            data.display()
        ),
    )
    .unwrap();
    let socket_path = work.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" --config \"$1\"")
        .arg(bin("hahsmd"))
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("hahsmd.log")).unwrap());
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec.to_string());
    }
    (Daemon(cmd.spawn().expect("hahsmd starts")), socket)
}

/// The notifications received until `done` says so or `timeout` passes, each
/// with its arrival time.
fn receive(
    socket: &UnixDatagram,
    timeout: Duration,
    mut done: impl FnMut(&[(Instant, String)]) -> bool,
) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !done(&got) {
        if let Ok(n) = socket.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                got.push((Instant::now(), line.to_string()));
            }
        }
    }
    got
}

fn count(got: &[(Instant, String)], what: &str) -> usize {
    got.iter().filter(|(_, m)| m == what).count()
}

fn log(work: &Path) -> String {
    std::fs::read_to_string(work.join("hahsmd.log")).unwrap_or_default()
}

#[test]
fn the_daemon_notifies_ready_pings_the_watchdog_and_notifies_stopping() {
    let work = tempfile::tempdir().unwrap();
    // A 600 ms watchdog: a ping every 300 ms.
    let (mut daemon, socket) = start_notifying(work.path(), Some(600_000));
    let got = receive(&socket, Duration::from_secs(30), |g| count(g, "READY=1") > 0);
    assert_eq!(
        count(&got, "READY=1"),
        1,
        "no READY=1 from hahsmd within 30 s: {got:?}\nlog:\n{}",
        log(work.path())
    );
    // Ready means ready: the listeners are up and the admin socket answers.
    let addr = std::fs::read_to_string(work.path().join("data/listen.addr")).unwrap_or_default();
    assert!(!addr.trim().is_empty(), "READY=1 before the client listener");
    let socket_path = work.path().join("data/admin.sock");
    hahsm_it::hahsm(
        None,
        &["appliance", "--socket", socket_path.to_str().unwrap(), "status"],
    )
    .expect_ok();

    let ready = got.iter().find(|(_, m)| m == "READY=1").map(|(t, _)| *t).unwrap();
    let pings = receive(&socket, Duration::from_secs(3), |_| false);
    let n = count(&pings, "WATCHDOG=1");
    // About 10 in 3 s; a loaded machine may delay some, and a ping per tick is
    // not a busy loop.
    assert!(
        (3..=30).contains(&n),
        "{n} WATCHDOG=1 in 3 s with WATCHDOG_USEC=600000 (expected one every 300 ms): {pings:?}\nlog:\n{}",
        log(work.path())
    );
    let first = pings
        .iter()
        .find(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .unwrap();
    assert!(first >= ready, "a watchdog ping before READY=1");

    // SIGTERM: STOPPING=1, then a clean exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let got = receive(&socket, Duration::from_secs(10), |g| count(g, "STOPPING=1") > 0);
    assert_eq!(
        count(&got, "STOPPING=1"),
        1,
        "no STOPPING=1 after SIGTERM: {got:?}"
    );
    let status = daemon.0.wait().unwrap();
    assert!(
        status.success(),
        "hahsmd exited with {status}\n{}",
        log(work.path())
    );
}

#[test]
fn without_a_watchdog_the_daemon_only_notifies_ready() {
    let work = tempfile::tempdir().unwrap();
    let (_daemon, socket) = start_notifying(work.path(), None);
    let got = receive(&socket, Duration::from_secs(30), |g| count(g, "READY=1") > 0);
    assert_eq!(
        count(&got, "READY=1"),
        1,
        "no READY=1: {got:?}\n{}",
        log(work.path())
    );
    let later = receive(&socket, Duration::from_millis(1500), |_| false);
    assert_eq!(
        count(&later, "WATCHDOG=1"),
        0,
        "pings without WATCHDOG_USEC: {later:?}"
    );
}

// ---- the packages in containers --------------------------------------------

/// A container, removed when the test ends, however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Builds the packages with scripts/build-debs.sh, in the profile and target
/// directory of this test's binaries (scripts/test.sh built them already), so
/// that cargo has nothing left to compile.
fn build_debs(out: &Path) {
    let started = Instant::now();
    let r = run_command(
        Command::new(script("build-debs.sh"))
            .arg(out)
            .envs(deb_build_env()),
    );
    assert!(r.ok, "scripts/build-debs.sh failed:\n{}", shown(&r));
    assert_eq!(
        r.stdout.trim(),
        out.to_str().unwrap(),
        "build-debs.sh prints its directory"
    );
    for p in ["hahsmd_", "hahsm_", "libhahsm-pkcs11_"] {
        let found = std::fs::read_dir(out)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(p));
        assert!(found, "no {p}*.deb in {}", out.display());
    }
    eprintln!("packages built in {:.0?}", started.elapsed());
}

fn base_image() {
    let started = Instant::now();
    let r = run(script("base-image.sh").to_str().unwrap(), &[BASE_IMAGE]);
    assert!(r.ok, "scripts/base-image.sh failed:\n{}", shown(&r));
    eprintln!("base image ready in {:.0?}", started.elapsed());
}

/// `deb MIRROR bookworm main`, from the host's apt sources, for the
/// containers' own sources.list (written at run time: the image may be older).
fn sources_list() -> String {
    let r = run(script("debian-mirror.sh").to_str().unwrap(), &[]);
    assert!(r.ok, "no Debian mirror in the host's apt sources:\n{}", shown(&r));
    format!("deb {} bookworm main\n", r.stdout.trim())
}

fn name(what: &str) -> String {
    format!("hahsm-{what}-{}", std::process::id())
}

/// packaging/tests/install-purge.sh in a clean container of the base image.
fn install_and_purge(debs: &Path, sources: &Path) -> Result<(), String> {
    let container = Container(name("pkgtest"));
    let started = Instant::now();
    let r = docker(&[
        "run",
        "--rm",
        "--name",
        &container.0,
        "-v",
        &format!("{}:/debs:ro", debs.display()),
        "-v",
        &format!("{}:/tests:ro", repo().join("packaging/tests").display()),
        "-v",
        &format!("{}:/etc/apt/sources.list:ro", sources.display()),
        BASE_IMAGE,
        "/tests/install-purge.sh",
    ]);
    eprintln!("install and purge: {:.0?}", started.elapsed());
    if r.ok && r.stdout.contains("PACKAGES OK") {
        Ok(())
    } else {
        Err(format!(
            "install-purge.sh in a clean Debian container failed:\n{}",
            shown(&r)
        ))
    }
}

/// packaging/tests/systemd-service.sh in a container whose PID 1 is systemd.
fn under_systemd(debs: &Path, sources: &Path) -> Result<(), String> {
    let container = Container(name("systemd"));
    let started = Instant::now();
    let volumes = [
        format!("{}:/debs:ro", debs.display()),
        format!("{}:/tests:ro", repo().join("packaging/tests").display()),
        format!("{}:/etc/apt/sources.list:ro", sources.display()),
    ];
    let boot = systemd_boot("p11-kit");
    let mut args = vec!["run", "-d", "--name", container.0.as_str()];
    args.extend_from_slice(SYSTEMD_RUN);
    for v in &volumes {
        args.extend(["-v", v.as_str()]);
    }
    args.extend([BASE_IMAGE, "sh", "-c", boot.as_str()]);
    let r = docker(&args);
    if !r.ok {
        return Err(format!("cannot start the systemd container:\n{}", shown(&r)));
    }
    wait_booted(&container.0, Duration::from_secs(240))?;
    eprintln!("systemd booted in {:.0?}", started.elapsed());
    let r = docker(&["exec", &container.0, "/tests/systemd-service.sh"]);
    eprintln!("under systemd: {:.0?}", started.elapsed());
    if r.ok && r.stdout.contains("SYSTEMD OK") {
        Ok(())
    } else {
        Err(format!("systemd-service.sh under systemd failed:\n{}", shown(&r)))
    }
}

#[test]
fn packages_install_purge_and_run_the_member_under_systemd() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let debs = work.path().join("debs");
    // The two are independent: the image on one core, the packages on the other.
    std::thread::scope(|s| {
        let image = s.spawn(base_image);
        build_debs(&debs);
        image.join().expect("the base image");
    });
    let sources = work.path().join("sources.list");
    std::fs::write(&sources, sources_list()).unwrap();
    let (plain, systemd) = std::thread::scope(|s| {
        let plain = s.spawn(|| install_and_purge(&debs, &sources));
        let systemd = under_systemd(&debs, &sources);
        (plain.join().expect("install and purge"), systemd)
    });
    eprintln!("the package test took {:.0?}", started.elapsed());
    let failures: Vec<String> = [plain, systemd].into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
