//! docs/deploy.md, "Three hosts from packages", run as it is written: four
//! Debian bookworm containers under systemd (hsmone, hsmtwo and hsmthree, the
//! members, and app, the application server with Prometheus) on a private
//! network with the page's addresses, the packages of scripts/build-debs.sh in
//! /root and a later revision of them in /root/new. Each `sh host=…` block of
//! the page runs on its hosts in the page's order, each `text copy` block is
//! carried out with `docker cp`; then the test checks what the page promises:
//! the firewall shuts out what it says, the keys made on app are on every
//! member, and every member runs the upgraded packages.
//!
//! The containers and the network are removed when the test ends, also when
//! it fails; the base image stays (scripts/base-image.sh's cache).
use hahsm_it::docker::{
    deb_build_env, docker, repo, script, shown, sweep, systemd_boot, wait_booted, BASE_IMAGE, SYSTEMD_RUN,
};
use hahsm_it::runbook::{steps, Step, EACH_MEMBER};
use hahsm_it::{run, run_command, Run};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SUBNET: &str = "10.0.1.0/24";

fn address(host: &str) -> &'static str {
    match host {
        "hsmone" => "10.0.1.21",
        "hsmtwo" => "10.0.1.22",
        "hsmthree" => "10.0.1.23",
        "app" => "10.0.1.10",
        other => panic!("docs/deploy.md names a host the test does not have: {other}"),
    }
}

const HOSTS: [&str; 4] = ["hsmone", "hsmtwo", "hsmthree", "app"];

/// The test's hosts and network, removed however the test ends.
struct Hosts {
    prefix: String,
}

impl Hosts {
    fn container(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }
    fn network(&self) -> String {
        format!("{}-net", self.prefix)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in HOSTS {
            let _ = docker(&["rm", "-f", "-v", &self.container(h)]);
        }
        let _ = docker(&["network", "rm", &self.network()]);
    }
}

fn build_debs(out: &Path, revision: &str) {
    let r = run_command(
        Command::new(script("build-debs.sh"))
            .arg(out)
            .envs(deb_build_env())
            .env("HAHSM_DEB_REVISION", revision),
    );
    assert!(
        r.ok,
        "scripts/build-debs.sh (revision {revision}) failed:\n{}",
        shown(&r)
    );
}

/// Starts a host: systemd as PID 1 (installed first, with what the page's
/// commands need of a Debian server: curl, nftables), with the capabilities
/// systemd needs and, for nft, NET_ADMIN.
fn start_host(hosts: &Hosts, host: &str, sources: &Path) {
    let (name, net) = (hosts.container(host), hosts.network());
    let apt = format!("{}:/etc/apt/sources.list:ro", sources.display());
    let boot = systemd_boot("curl nftables ca-certificates");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--hostname",
        host,
        "--network",
        &net,
        "--ip",
        address(host),
    ];
    args.extend_from_slice(SYSTEMD_RUN);
    args.extend([
        "--cap-add",
        "NET_ADMIN",
        "-v",
        &apt,
        BASE_IMAGE,
        "sh",
        "-c",
        &boot,
    ]);
    let r = docker(&args);
    assert!(r.ok, "cannot start {host}:\n{}", shown(&r));
}

/// How long one block may take on one host (a loop waiting for a member or
/// for Prometheus must end).
const BLOCK_DEADLINE: &str = "300";

/// One block on one host, as root in /root, with NAME and ADDR for a member.
fn run_block(hosts: &Hosts, host: &str, script: &str, line: usize) -> Run {
    let c = hosts.container(host);
    let name = format!("NAME={host}");
    let addr = format!("ADDR={}", address(host));
    let r = docker(&[
        "exec",
        "-w",
        "/root",
        "-e",
        &name,
        "-e",
        &addr,
        "-e",
        "DEBIAN_FRONTEND=noninteractive",
        &c,
        "timeout",
        BLOCK_DEADLINE,
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
    ]);
    assert!(
        r.ok,
        "docs/deploy.md line {line}, on {host}, failed:\n{script}\n{}",
        shown(&r)
    );
    r
}

#[test]
fn the_deployment_guide_runs_as_written_on_three_hosts_and_an_application_server() {
    let page = std::fs::read_to_string(repo().join("docs/deploy.md")).unwrap();
    let plan = steps(&page).unwrap_or_else(|e| panic!("docs/deploy.md: {e}"));
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let (old, new) = (work.path().join("debs"), work.path().join("new"));
    std::thread::scope(|s| {
        let image = s.spawn(|| {
            let r = run(script("base-image.sh").to_str().unwrap(), &[BASE_IMAGE]);
            assert!(r.ok, "scripts/base-image.sh failed:\n{}", shown(&r));
        });
        build_debs(&old, "1");
        build_debs(&new, "2");
        image.join().expect("the base image");
    });
    let mirror = run(script("debian-mirror.sh").to_str().unwrap(), &[]);
    assert!(mirror.ok, "no Debian mirror:\n{}", shown(&mirror));
    let sources = work.path().join("sources.list");
    std::fs::write(&sources, format!("deb {} bookworm main\n", mirror.stdout.trim())).unwrap();

    // The page's subnet is fixed: a killed earlier run must not hold it.
    sweep("hahsm-t72-");
    let hosts = Hosts {
        prefix: format!("hahsm-t72-{}", std::process::id()),
    };
    let r = docker(&["network", "create", "--subnet", SUBNET, &hosts.network()]);
    assert!(r.ok, "docker network create {SUBNET}:\n{}", shown(&r));
    for h in HOSTS {
        start_host(&hosts, h, &sources);
    }
    for h in HOSTS {
        wait_booted(&hosts.container(h), Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
        let c = hosts.container(h);
        for (dir, to) in [(&old, "/root/"), (&new, "/root/new/")] {
            docker(&["exec", &c, "mkdir", "-p", to]).expect_ok();
            for deb in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
                let r = docker(&["cp", deb.path().to_str().unwrap(), &format!("{c}:{to}")]);
                assert!(r.ok, "docker cp to {h}:\n{}", shown(&r));
            }
        }
    }
    eprintln!("hosts up with the packages in {:.0?}", started.elapsed());

    let carried = work.path().join("carried");
    let mut blocks = 0;
    for step in &plan {
        match step {
            Step::Run {
                hosts: on,
                script,
                line,
            } => {
                if on == &["docker"] {
                    continue; // the containers part: t71_containers runs it
                }
                for h in on {
                    let t = Instant::now();
                    run_block(&hosts, h, script, *line);
                    eprintln!("line {line} on {h}: {:.1?}", t.elapsed());
                }
                blocks += 1;
            }
            Step::Copy { files, line } => {
                for (from, to) in files {
                    let _ = std::fs::remove_file(&carried);
                    let r = docker(&[
                        "cp",
                        &format!("{}:{}", hosts.container(&from.host), from.path),
                        carried.to_str().unwrap(),
                    ]);
                    assert!(
                        r.ok,
                        "docs/deploy.md line {line}: {}:{}:\n{}",
                        from.host,
                        from.path,
                        shown(&r)
                    );
                    let r = docker(&[
                        "cp",
                        carried.to_str().unwrap(),
                        &format!("{}:{}", hosts.container(&to.host), to.path),
                    ]);
                    assert!(
                        r.ok,
                        "docs/deploy.md line {line}: to {}:{}:\n{}",
                        to.host,
                        to.path,
                        shown(&r)
                    );
                }
            }
        }
    }
    assert!(blocks >= 10, "only {blocks} blocks of docs/deploy.md ran");
    eprintln!("docs/deploy.md ran in {:.0?}", started.elapsed());

    // What the page promises beyond its own commands' exit codes.
    let app = hosts.container("app");
    let reach = |addr: &str, port: u16| {
        docker(&[
            "exec",
            &app,
            "bash",
            "-c",
            &format!("timeout 3 bash -c '</dev/tcp/{addr}/{port}'"),
        ])
        .ok
    };
    assert!(
        reach("10.0.1.21", 1792),
        "the application server cannot reach hsmone's client link"
    );
    assert!(
        !reach("10.0.1.21", 1793),
        "the firewall lets the application server reach hsmone's peer link"
    );
    for m in EACH_MEMBER {
        let c = hosts.container(m);
        let v = docker(&["exec", &c, "dpkg-query", "-W", "-f=${Version}", "hahsmd"]);
        assert!(
            v.stdout.trim().ends_with("-2"),
            "{m} runs hahsmd {} after the upgrade",
            v.stdout
        );
        let active = docker(&["exec", &c, "systemctl", "is-active", "hahsmd"]);
        assert_eq!(active.stdout.trim(), "active", "hahsmd on {m} after the upgrade");
        // The key generated on app through the group is held by every member.
        let objects = docker(&["exec", &c, "hahsm", "ha", "show", "--json"]);
        assert!(objects.ok, "ha show on {m}:\n{}", shown(&objects));
    }
    let list = docker(&[
        "exec",
        "-w",
        "/root",
        "-e",
        "HAHSM_PARTITION=haPart",
        "-e",
        "HAHSM_PIN=haPwd-2024",
        &app,
        "bash",
        "-c",
        "for s in hsmone hsmtwo hsmthree; do hahsm keys list --server $s | grep -c web-tls; done",
    ]);
    assert!(list.ok, "keys list on each member:\n{}", shown(&list));
    let counts: Vec<&str> = list.stdout.split_whitespace().collect();
    assert_eq!(counts.len(), 3, "{}", shown(&list));
    assert!(
        counts.iter().all(|c| *c != "0"),
        "the key made on app is not on every member: {counts:?}"
    );
    eprintln!("the deployment test took {:.0?}", started.elapsed());
}
