//! A group on a test bed of real hosts (bed::Bed): three members, each in its
//! own network namespace with its own address, and an application in a fourth,
//! joined by a bridge; the faults are the kernel's. While the application signs
//! through the HA slot: random loss, duplicated packets and a slow link on one
//! member (nftables and tc tbf; this kernel has no netem), an asymmetric partition made with nftables (one member
//! stops hearing another, which still hears it), one member cut off entirely
//! (its /health/ready says 503, then 200 once back), SIGSTOP and SIGCONT, and
//! kill -9 and a restart with the same data. Not one signature may fail, and
//! the members end identical.
//!
//! Runs as root (the tests do); scripts/test-deps.sh installs iproute2,
//! nftables and curl.
use hahsm_it::bed::Bed;
use hahsm_it::cluster::{set_up_for_ha, GROUP, PARTITION, PIN};
use hahsm_it::{bin, expect_clean_bench, hahsm, run_command, Member, Run};
use nix::sys::signal::Signal;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MEMBERS: [&str; 3] = ["hsm1", "hsm2", "hsm3"];

/// The members before the bed: a struct's fields drop in order, so the
/// daemons are stopped before their namespaces go.
struct Group {
    members: Vec<Member>,
    conf: std::path::PathBuf,
    _work: tempfile::TempDir,
    bed: Bed,
}

fn ha(m: &Member, args: &[&str]) -> Run {
    let socket = m.admin_socket();
    let mut full = vec!["ha", "--socket", socket.to_str().unwrap()];
    full.extend_from_slice(args);
    hahsm(None, &full)
}

impl Group {
    fn new() -> Group {
        let bed = Bed::new(&["hsm1", "hsm2", "hsm3", "app"]);
        let work = tempfile::tempdir().unwrap();
        let domain = work.path().join("domain.key");
        let owner = work.path().join("owner.key");
        let mut members = Vec::new();
        for name in MEMBERS {
            let host = bed.host(name);
            let dir = work.path().join(name);
            let m = Member::start_in_netns(&dir, &host.netns, &host.ip);
            set_up_for_ha(
                &m,
                name,
                &dir.join("so.key"),
                &["--domain-secret", domain.to_str().unwrap()],
                &owner,
            );
            ha(
                &m,
                &[
                    "prepare",
                    "--partition",
                    PARTITION,
                    "--owner-secret",
                    owner.to_str().unwrap(),
                ],
            )
            .expect_ok();
            members.push(m);
        }
        ha(
            &members[0],
            &[
                "create-group",
                "--label",
                GROUP,
                "--partition",
                PARTITION,
                "--quorum",
            ],
        )
        .expect_ok();
        for m in &members[1..] {
            ha(
                &members[0],
                &[
                    "add-member",
                    "--group",
                    GROUP,
                    "--address",
                    &m.peer_address,
                    "--fingerprint",
                    &m.fingerprint(),
                ],
            )
            .expect_ok();
        }
        let conf = work.path().join("client/client.toml");
        hahsm(Some(&conf), &["client", "create-cert", "--name", "app1"]).expect_ok();
        let cert = conf.with_file_name("app1.pem");
        for (name, m) in MEMBERS.iter().zip(&members) {
            hahsm(
                Some(&conf),
                &[
                    "client",
                    "add-server",
                    "--name",
                    name,
                    "--address",
                    &m.address,
                    "--fingerprint",
                    &m.fingerprint(),
                ],
            )
            .expect_ok();
            m.admin(&[
                "client",
                "register",
                "--client",
                "app1",
                "--cert",
                cert.to_str().unwrap(),
            ])
            .expect_ok();
            m.admin(&[
                "client",
                "assign-partition",
                "--client",
                "app1",
                "--partition",
                PARTITION,
            ])
            .expect_ok();
        }
        let g = Group {
            members,
            conf,
            _work: work,
            bed,
        };
        g.wait_in_sync(Duration::from_secs(30));
        g
    }

    fn index(name: &str) -> usize {
        MEMBERS.iter().position(|m| *m == name).unwrap()
    }

    /// `/health/ready` of a member, asked inside its namespace.
    fn ready(&self, name: &str) -> (u16, String) {
        let m = &self.members[Self::index(name)];
        let addr = std::fs::read_to_string(m.data_dir().join("metrics.addr")).unwrap_or_default();
        let url = format!("http://{}/health/ready", addr.trim());
        let r = self
            .bed
            .exec(name, "curl", &["-s", "-m", "3", "-w", "\n%{http_code}", &url]);
        let (body, code) = r.stdout.rsplit_once('\n').unwrap_or(("", ""));
        (code.trim().parse().unwrap_or(0), body.trim().to_string())
    }

    fn wait_ready(&self, name: &str, code: u16, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (got, body) = self.ready(name);
            if got == code {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: /health/ready {got} ({body}), not {code}, after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Every member in sync with the same digest, as each sees the group.
    fn wait_in_sync(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<serde_json::Value> = self
                .members
                .iter()
                .map(|m| serde_json::from_str(&ha(m, &["show", "--json"]).stdout).unwrap_or_default())
                .collect();
            let digests: std::collections::BTreeSet<String> = views
                .iter()
                .flat_map(|v| v["members"].as_array().cloned().unwrap_or_default())
                .map(|m| m["digest"].to_string())
                .collect();
            if views.iter().all(|v| v["in_sync"] == true) && digests.len() == 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the members are not in sync after {timeout:?}: {views:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `hahsm ARGS…` on the application's host, with the client config, PIN and partition.
    fn app(&self, args: &[&str]) -> Run {
        run_command(
            self.bed
                .command("app", &bin("hahsm"))
                .args(args)
                .env("HAHSM_CONF", &self.conf)
                .env("HAHSM_PIN", PIN)
                .env("HAHSM_PARTITION", PARTITION),
        )
    }

    /// `hahsm bench` in the application's namespace: signatures through the HA slot.
    fn start_signing(&self, seconds: u32) -> Child {
        self.bed
            .command("app", &bin("hahsm"))
            .args([
                "bench",
                "--slot",
                "ha",
                "--mode",
                "ecdsa-sign:p256",
                "--threads",
                "2",
            ])
            .args(["--warmup", "0", "--seconds", &seconds.to_string(), "--json"])
            .env("HAHSM_CONF", &self.conf)
            .env("HAHSM_PIN", PIN)
            .env("HAHSM_PARTITION", PARTITION)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hahsm bench starts")
    }
}

#[test]
fn the_group_signs_through_kernel_made_faults_on_a_bed_of_namespaces() {
    let mut g = Group::new();
    for m in MEMBERS {
        g.wait_ready(m, 200, Duration::from_secs(30));
    }
    // A key written through the group before the faults, to be found on each
    // member after them.
    g.app(&[
        "keys",
        "gen",
        "--type",
        "ec:p256",
        "--label",
        "before-the-faults",
        "--server",
        "hsm1",
    ])
    .expect_ok();
    let seconds = 50;
    let mut signing = g.start_signing(seconds);
    let started = Instant::now();
    let at = |what: &str| eprintln!("{:>5.1} s  {what}", started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(4));

    at("hsm2: 5% of its packets lost, 2% sent twice to hsm1, its link at 2 Mbit/s");
    g.bed.lose("hsm2", 5);
    g.bed.duplicate("hsm2", "hsm1", 2);
    g.bed.throttle("hsm2", "2mbit", "200ms");
    std::thread::sleep(Duration::from_secs(6));
    g.bed.heal();

    at("hsm3 stops hearing hsm1 (hsm1 still hears hsm3)");
    g.bed.cut_one_way("hsm1", "hsm3");
    std::thread::sleep(Duration::from_secs(6));
    g.bed.heal();

    at("hsm3 cut off");
    g.bed.isolate("hsm3");
    let body = g.wait_ready("hsm3", 503, Duration::from_secs(20));
    at(&format!("hsm3 says 503: {body}"));
    assert!(body.contains("cut off"), "the 503 does not say why: {body}");
    for m in ["hsm1", "hsm2"] {
        assert_eq!(g.ready(m).0, 200, "{m}, in the majority, is not ready");
    }
    g.bed.heal();
    g.wait_ready("hsm3", 200, Duration::from_secs(30));
    at("hsm3 back and caught up");

    at("hsm1 paused (SIGSTOP) for 4 s");
    g.members[0].signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(4));
    g.members[0].signal(Signal::SIGCONT);
    g.wait_ready("hsm1", 200, Duration::from_secs(30));

    at("hsm2 killed (kill -9) and started again with its data");
    g.members[1].kill9();
    std::thread::sleep(Duration::from_secs(3));
    g.members[1].spawn();
    g.wait_ready("hsm2", 200, Duration::from_secs(30));
    at("the faults are over");
    assert!(
        signing.try_wait().unwrap().is_none(),
        "the signing run ended before the faults were over ({:?} of {seconds} s)",
        started.elapsed()
    );

    let point = expect_clean_bench(signing, "through the faults");
    eprintln!("signing run: {point}");

    g.wait_in_sync(Duration::from_secs(30));
    for name in MEMBERS {
        let list = g.app(&["keys", "list", "--server", name]).expect_ok();
        assert!(
            list.stdout.contains("before-the-faults"),
            "{name} lost the key made before the faults:\n{}",
            list.stdout
        );
    }
}
