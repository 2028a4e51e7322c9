//! The container images and the compose cluster, for real: scripts/cluster-up.sh
//! builds the images from the Debian packages on a base made from Debian's
//! packages, starts packaging/container/compose.yaml (three members, each with
//! its own address on a private network, a client and a Prometheus) and sets
//! the group up end to end. Then, while the client container signs through the
//! HA slot, one member container is killed (`docker kill`) and brought back, and
//! another is cut off its network (`docker network disconnect`) and joined again:
//! not one signature may fail, and the cut-off member's `/health/ready` must say
//! 503 while it is cut off and 200 once it has caught up. Prometheus, in its own
//! container, scrapes the three members. `down` then `up` finds the group and
//! its keys again on the named volumes.
//!
//! One build of the images serves the whole file (one test). Everything the
//! test makes (containers, network, volumes) is removed when it ends, also when
//! it fails; the images stay, as a cache for the next run.
use hahsm_it::docker::{deb_build_env, docker, repo, script, shown, sweep};
use hahsm_it::runbook::{steps, Step};
use hahsm_it::{expect_clean_bench, run_command, Run};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PIN: &str = "container-pin-71";
const PARTITION: &str = "haPart";

/// The compose project of one test run, destroyed with its volumes at the end.
struct Cluster {
    project: String,
    subnet: String,
    secrets: std::path::PathBuf,
}

impl Cluster {
    fn new(work: &Path) -> Cluster {
        let pid = std::process::id();
        Cluster {
            project: format!("hahsm-t71-{pid}"),
            // A /24 of its own, unlikely to meet the host's networks.
            subnet: format!("10.{}.{}", 200 + pid % 50, (pid / 50) % 250),
            secrets: work.join("secrets"),
        }
    }

    fn script(&self, arg: &str) -> Run {
        run_command(self.env(Command::new(script("cluster-up.sh")).arg(arg)))
    }

    /// What cluster-up.sh reads, for this test's cluster.
    fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.envs(deb_build_env())
            .env("HAHSM_PROJECT", &self.project)
            .env("HAHSM_SUBNET", &self.subnet)
            .env("HAHSM_SECRETS", &self.secrets)
            .env("HAHSM_PIN", PIN)
            // Any free port: a second cluster may run on this host.
            .env("HAHSM_PROMETHEUS_PORT", "127.0.0.1:")
    }

    fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    fn network(&self) -> String {
        // compose names it PROJECT_NETWORK.
        format!("{}_hahsm", self.project)
    }

    fn ip(&self, member: &str) -> String {
        let host = match member {
            "member1" => 11,
            "member2" => 12,
            "member3" => 13,
            "client" => 21,
            other => panic!("no address for {other}"),
        };
        format!("{}.{host}", self.subnet)
    }

    /// A command in a container, as its image's user.
    fn exec(&self, service: &str, args: &[&str]) -> Run {
        let c = self.container(service);
        let mut all = vec!["exec", c.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// A command in the client container, with the partition and PIN.
    fn client(&self, args: &[&str]) -> Run {
        let c = self.container("client");
        let mut all = vec![
            "exec",
            "-e",
            "HAHSM_PARTITION=haPart",
            "-e",
            "HAHSM_PIN=container-pin-71",
            c.as_str(),
        ];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// `/health/ready` of a member, asked from inside its container (so it
    /// answers also while the member is cut off its network): code and body.
    fn ready(&self, member: &str) -> (u16, String) {
        let r = self.exec(
            member,
            &[
                "curl",
                "-s",
                "-m",
                "3",
                "-w",
                "\n%{http_code}",
                "http://127.0.0.1:9792/health/ready",
            ],
        );
        let (body, code) = r.stdout.rsplit_once('\n').unwrap_or(("", ""));
        (code.trim().parse().unwrap_or(0), body.trim().to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let r = self.script("destroy");
        if !r.ok {
            eprintln!("cluster-up.sh destroy failed:\n{}", shown(&r));
        }
        // What a failed `down` may have left.
        for s in ["member1", "member2", "member3", "client", "prometheus"] {
            let _ = docker(&["rm", "-f", "-v", &self.container(s)]);
        }
        let _ = docker(&["network", "rm", &self.network()]);
        for v in [
            "member1-data",
            "member2-data",
            "member3-data",
            "client-config",
            "prometheus-data",
        ] {
            let _ = docker(&["volume", "rm", "-f", &format!("{}_{v}", self.project)]);
        }
    }
}

/// Polls `check` every 500 ms until it gives a value or `timeout` passes.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not within {timeout:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn wait_ready(cluster: &Cluster, member: &str, timeout: Duration) {
    wait_for(&format!("{member} ready (200)"), timeout, || {
        match cluster.ready(member) {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        }
    });
}

/// The signing run: `hahsm bench` in the client container, through the HA
/// slot, as an application would sign; its JSON line says how many failed.
fn start_signing(cluster: &Cluster, seconds: u32) -> Child {
    Command::new("docker")
        .args([
            "exec",
            "-e",
            "HAHSM_PIN=container-pin-71",
            &cluster.container("client"),
            "hahsm",
            "bench",
            "--slot",
            "ha",
            "--mode",
            "ecdsa-sign:p256",
            "--threads",
            "2",
            "--warmup",
            "0",
            "--seconds",
            &seconds.to_string(),
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker exec runs")
}

#[test]
fn a_compose_cluster_signs_through_a_killed_and_a_cut_off_member() {
    sweep("hahsm-t71-");
    let work = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(work.path());
    let started = Instant::now();
    let r = cluster.script("up");
    assert!(r.ok, "scripts/cluster-up.sh failed:\n{}", shown(&r));
    eprintln!("cluster-up.sh (images, start, set-up): {:.0?}", started.elapsed());

    // Each member on its own address, the custodians' secrets on the host only.
    for m in ["member1", "member2", "member3", "client"] {
        let ip = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &cluster.container(m),
        ]);
        assert_eq!(ip.stdout.trim(), cluster.ip(m), "{m}'s address");
    }
    for s in ["domain.key", "owner.key", "so1.key", "so2.key", "so3.key"] {
        assert!(cluster.secrets.join(s).exists(), "{s} was not kept on the host");
    }
    for m in ["member1", "member2", "member3"] {
        let left = cluster.exec(m, &["ls", "/tmp/setup"]);
        assert!(!left.ok, "{m} still holds the set-up secrets: {}", left.stdout);
        let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &cluster.container(m)]);
        assert_eq!(health.stdout.trim(), "healthy", "{m}'s HEALTHCHECK");
        wait_ready(&cluster, m, Duration::from_secs(60));
    }
    let verify = cluster.exec("client", &["hahsm", "client", "verify"]).expect_ok();
    for m in ["member1", "member2", "member3"] {
        assert!(
            verify.stdout.contains(&format!("{m}: connected to HSM '{m}'")),
            "client verify did not reach {m}:\n{}",
            verify.stdout
        );
    }
    let activated = verify
        .stdout
        .lines()
        .filter(|l| {
            l.contains(&format!("partition {PARTITION} "))
                && l.ends_with("object(s)")
                && l.contains(": activated")
        })
        .count();
    assert_eq!(
        activated, 3,
        "{PARTITION} is not activated on every member:\n{}",
        verify.stdout
    );
    let ha = cluster
        .exec("member1", &["hahsm", "ha", "show", "--json"])
        .expect_ok();
    let view: serde_json::Value = serde_json::from_str(&ha.stdout).expect("ha show --json");
    eprintln!("member1's view of the group: {view}");
    // Members bind 0.0.0.0; the group must hold the addresses they advertise.
    for m in ["member1", "member2", "member3"] {
        let peer = format!("{}:1793", cluster.ip(m));
        assert!(
            ha.stdout.contains(&peer),
            "the group does not know {m} at {peer}:\n{}",
            ha.stdout
        );
    }
    assert!(
        !ha.stdout.contains("0.0.0.0"),
        "the group holds a wildcard address:\n{}",
        ha.stdout
    );

    // A key made before the faults and before down/up, to be found after.
    cluster
        .client(&[
            "hahsm",
            "keys",
            "gen",
            "--type",
            "ec:p256",
            "--label",
            "kept-on-volumes",
        ])
        .expect_ok();

    // ---- the faults, during one signing run ---------------------------------
    let run_seconds = 75;
    let mut signing = start_signing(&cluster, run_seconds);
    let run_started = Instant::now();
    std::thread::sleep(Duration::from_secs(8));

    // member3: killed, then started again with the same volume.
    docker(&["kill", &cluster.container("member3")]).expect_ok();
    eprintln!("member3 killed at {:.0?}", run_started.elapsed());
    std::thread::sleep(Duration::from_secs(10));
    let running = docker(&[
        "inspect",
        "-f",
        "{{.State.Running}}",
        &cluster.container("member3"),
    ]);
    if running.stdout.trim() != "true" {
        let r = docker(&["start", &cluster.container("member3")]);
        assert!(r.ok, "docker start member3:\n{}", shown(&r));
    }
    wait_ready(&cluster, "member3", Duration::from_secs(60));
    eprintln!("member3 back and caught up at {:.0?}", run_started.elapsed());

    // member2: cut off its network; the other two keep the majority.
    let net = cluster.network();
    let r = docker(&["network", "disconnect", &net, &cluster.container("member2")]);
    assert!(r.ok, "docker network disconnect:\n{}", shown(&r));
    eprintln!("member2 cut off at {:.0?}", run_started.elapsed());
    let cut_off = wait_for(
        "member2 unavailable (503)",
        Duration::from_secs(30),
        || match cluster.ready("member2") {
            (503, body) => Ok(body),
            (code, body) => Err(format!("{code} {body}")),
        },
    );
    eprintln!("member2 cut off says: 503 {cut_off}");
    assert!(
        cut_off.contains("cut off") || cut_off.contains("quorum"),
        "the 503 does not say the member is cut off: {cut_off}"
    );
    for m in ["member1", "member3"] {
        let (code, body) = cluster.ready(m);
        assert_eq!(code, 200, "{m}, in the majority, is not ready: {body}");
    }
    std::thread::sleep(Duration::from_secs(8));
    let r = docker(&[
        "network",
        "connect",
        "--ip",
        &cluster.ip("member2"),
        &net,
        &cluster.container("member2"),
    ]);
    assert!(r.ok, "docker network connect:\n{}", shown(&r));
    wait_ready(&cluster, "member2", Duration::from_secs(60));
    let faults_done = run_started.elapsed();
    eprintln!("member2 back and caught up at {faults_done:.0?}");
    assert!(
        signing.try_wait().unwrap().is_none(),
        "the signing run ended before the faults were over ({faults_done:.0?} of {run_seconds} s): \
         lengthen it"
    );

    let point = expect_clean_bench(signing, "while a member was killed and another cut off");
    eprintln!("signing run: {point}");

    // ---- Prometheus scrapes the three members --------------------------------
    let up = wait_for(
        "Prometheus scraping three members",
        Duration::from_secs(60),
        || {
            let r = cluster.exec(
                "prometheus",
                &[
                    "curl",
                    "-s",
                    "-m",
                    "3",
                    "http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D%22hahsm%22%7D%3D%3D1",
                ],
            );
            let v: serde_json::Value =
                serde_json::from_str(&r.stdout).map_err(|e| format!("{e}: {}", r.stdout))?;
            let n = v["data"]["result"].as_array().map_or(0, |a| a.len());
            if n == 3 {
                Ok(v)
            } else {
                Err(format!("{n} members up: {v}"))
            }
        },
    );
    eprintln!("Prometheus: {up}");
    let rules = cluster.exec(
        "prometheus",
        &["curl", "-s", "-m", "3", "http://127.0.0.1:9090/api/v1/rules"],
    );
    assert!(
        rules.stdout.contains("HahsmMemberDown"),
        "Prometheus has not loaded hahsm's rules: {}",
        rules.stdout
    );

    // ---- down and up: the volumes keep the group -----------------------------
    let r = cluster.script("down");
    assert!(r.ok, "cluster-up.sh down:\n{}", shown(&r));
    let gone = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("name={}-", cluster.project),
    ]);
    assert!(
        gone.stdout.trim().is_empty(),
        "containers left after down: {}",
        gone.stdout
    );
    let r = cluster.script("up");
    assert!(r.ok, "cluster-up.sh up again:\n{}", shown(&r));
    assert!(
        r.stderr.contains("already set up"),
        "the second up set the group up again:\n{}",
        shown(&r)
    );
    for m in ["member1", "member2", "member3"] {
        wait_ready(&cluster, m, Duration::from_secs(60));
    }
    let list = cluster.client(&["hahsm", "keys", "list"]).expect_ok();
    assert!(
        list.stdout.contains("kept-on-volumes"),
        "the key made before down is gone:\n{}",
        list.stdout
    );
    expect_clean_bench(start_signing(&cluster, 3), "after down and up");

    run_the_guide(&cluster);
}

/// docs/deploy.md, "With containers": its block, run line by line from the
/// repository as the page says, with this test's names for the page's
/// (the project hahsm-t71-PID for hahsm, its secrets directory, the port
/// Prometheus was given). It ends with `destroy`.
fn run_the_guide(cluster: &Cluster) {
    let page = std::fs::read_to_string(repo().join("docs/deploy.md")).unwrap();
    let block = steps(&page)
        .unwrap_or_else(|e| panic!("docs/deploy.md: {e}"))
        .into_iter()
        .find_map(|s| match s {
            Step::Run { hosts, script, line } if hosts == ["docker"] => Some((script, line)),
            _ => None,
        })
        .expect("docs/deploy.md has a host=docker block");
    let (script, line) = block;
    let port = docker(&["port", &cluster.container("prometheus"), "9090"]);
    assert!(port.ok, "docker port:\n{}", shown(&port));
    let prometheus = port.stdout.lines().next().unwrap_or_default().trim().to_string();
    let script = script
        .replace("~/.hahsm-cluster/hahsm", cluster.secrets.to_str().unwrap())
        .replace("hahsm-client", &cluster.container("client"))
        .replace("hahsm-member", &format!("{}-member", cluster.project))
        .replace("127.0.0.1:9090", &prometheus);
    let r = run_command(
        cluster
            .env(Command::new("bash").args(["-euo", "pipefail", "-c", &script]))
            .current_dir(repo()),
    );
    assert!(
        r.ok,
        "docs/deploy.md line {line}, run as\n{script}\nfailed:\n{}",
        shown(&r)
    );
    assert!(
        r.stderr.contains("already set up"),
        "the guide's first cluster-up.sh set the group up again:\n{}",
        shown(&r)
    );
}
