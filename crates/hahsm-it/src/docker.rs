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
