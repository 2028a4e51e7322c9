//! What the container tests share: the repository's scripts, `docker` runs
//! and their reports, and the cargo settings under which the scripts build
//! the Debian packages from binaries the tests already have.
use crate::{bin_dir, run, Run};
use std::path::{Path, PathBuf};

/// The image scripts/base-image.sh makes from Debian's packages (no registry).
pub const BASE_IMAGE: &str = "hahsm-base:bookworm";

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository")
}

/// A script of the repository's `scripts/`.
pub fn script(name: &str) -> PathBuf {
    repo().join("scripts").join(name)
}

pub fn docker(args: &[&str]) -> Run {
    run("docker", args)
}

/// A command's whole output, for the report of a failure.
pub fn shown(r: &Run) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        r.code, r.stdout, r.stderr
    )
}

/// `CARGO_TARGET_DIR` and `HAHSM_DEB_PROFILE` for scripts/build-debs.sh: the
/// target directory and profile of this test's binaries (scripts/test.sh
/// built them already), so that cargo has nothing left to compile.
pub fn deb_build_env() -> [(&'static str, String); 2] {
    let bins = bin_dir();
    let target = bins.parent().expect("the target directory");
    let profile = match bins.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    [
        ("CARGO_TARGET_DIR", target.display().to_string()),
        ("HAHSM_DEB_PROFILE", profile.to_string()),
    ]
}

/// Removes what an earlier run of a test left when it was killed before its
/// clean-up ran: the containers, networks and volumes whose names begin with
/// `prefix` followed by the process id of a test that no longer runs.
pub fn sweep(prefix: &str) {
    let dead = |name: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
    };
    let names = |args: &[&str]| -> Vec<String> {
        docker(args)
            .stdout
            .lines()
            .map(str::trim)
            .filter(|n| dead(n))
            .map(String::from)
            .collect()
    };
    for c in names(&["ps", "-a", "--format", "{{.Names}}"]) {
        eprintln!("removing {c}, left by a test that was killed");
        let _ = docker(&["rm", "-f", "-v", &c]);
    }
    for n in names(&["network", "ls", "--format", "{{.Name}}"]) {
        let _ = docker(&["network", "rm", &n]);
    }
    for v in names(&["volume", "ls", "--format", "{{.Name}}"]) {
        let _ = docker(&["volume", "rm", "-f", &v]);
    }
}

/// The `docker run` options for a container whose PID 1 is systemd: its
/// cgroup hierarchy, a /run of its own and, for the packaged unit's
/// PrivateUsers=, the capabilities to set up user namespaces; no more than
/// that (the container is not --privileged).
pub const SYSTEMD_RUN: &[&str] = &[
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "SYS_PTRACE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--cgroupns=host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
];

/// The command of such a container: installs systemd (and `packages`) from
/// Debian's packages, logging to /var/log/setup.log, then becomes systemd.
pub fn systemd_boot(packages: &str) -> String {
    format!(
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq \
         && apt-get install -y -qq --no-install-recommends systemd systemd-sysv dbus {packages} \
            >/var/log/setup.log 2>&1 \
         && exec /sbin/init"
    )
}

/// Waits until systemd in `container` has booted (`running` or `degraded`);
/// on failure, what the container and its set-up said.
pub fn wait_booted(container: &str, timeout: std::time::Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let state = docker(&["exec", container, "systemctl", "is-system-running"]);
        let state = state.stdout.trim().to_string();
        if state == "running" || state == "degraded" {
            return Ok(());
        }
        let running = docker(&["inspect", "-f", "{{.State.Running}}", container]);
        if running.stdout.trim() != "true" || std::time::Instant::now() > deadline {
            let setup = docker(&["exec", container, "cat", "/var/log/setup.log"]);
            return Err(format!(
                "systemd did not boot in {container} (state '{state}'):\n{}\n{}",
                shown(&docker(&["logs", container])),
                setup.stdout
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
