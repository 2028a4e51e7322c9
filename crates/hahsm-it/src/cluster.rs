//! An HA group of real `hahsmd` members, set up as the report's listing 3.3
//! sets up three Luna SAs, with every member-to-member link running through
//! its own fault-injecting proxy, so a test can cut, black-hole or slow any
//! link, as well as kill or stop any member.
use crate::proxy::{Mode, Proxy};
use crate::{hahsm, hahsm_env, Member, Run};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const GROUP: &str = "haGroup";
pub const PARTITION: &str = "haPart";
pub const PIN: &str = "haPwd-1234";

pub struct Cluster {
    pub work: tempfile::TempDir,
    pub members: Vec<Member>,
    pub serials: Vec<u64>,
    pub fingerprints: Vec<String>,
    /// The link from member `i` to member `j` runs through `proxies[(i, j)]`.
    pub proxies: HashMap<(usize, usize), Proxy>,
    pub conf: PathBuf,
    pub domain_secret: PathBuf,
    pub owner_secret: PathBuf,
}

/// Initializes a started appliance as `label` (with `domain_args`: a domain
/// secret or shares), logs the SO in, turns on the HSM and partition policies
/// an HA group needs, and creates and activates partition `PARTITION` under
/// `owner`, with the user PIN `PIN`.
pub fn set_up_for_ha(m: &Member, label: &str, so: &Path, domain_args: &[&str], owner: &Path) {
    let run = |args: &[&str]| m.admin(args).expect_ok();
    let mut init = vec!["hsm", "init", "--label", label, "--so-secret", s_ref(so)];
    init.extend_from_slice(domain_args);
    run(&init);
    run(&["hsm", "login", "--so-secret", s_ref(so)]);
    for p in ["7", "16", "20"] {
        run(&["hsm", "change-policy", "--policy", p, "--value", "1"]);
    }
    run(&[
        "partition",
        "create",
        "--partition",
        PARTITION,
        "--owner-secret",
        s_ref(owner),
        "--pin",
        PIN,
    ]);
    for p in ["0", "4", "21", "22", "23"] {
        run(&[
            "partition",
            "change-policy",
            "--partition",
            PARTITION,
            "--policy",
            p,
            "--value",
            "1",
        ]);
    }
    run(&[
        "partition",
        "activate",
        "--partition",
        PARTITION,
        "--owner-secret",
        s_ref(owner),
    ]);
}

/// Makes the client `app1` (certificate and key beside `conf`) and
/// registers it on every member, each under its name in `conf`, with the
/// partition `PARTITION` assigned: the client of a test's group.
pub fn register_client(conf: &Path, members: &[(String, &Member)]) {
    hahsm(Some(conf), &["client", "create-cert", "--name", "app1"]).expect_ok();
    for (name, m) in members {
        serve_client(conf, name, m);
    }
}

/// Registers the client `app1` of the client config `conf` (its certificate
/// made already) on member `m`, assigns it the partition there, and adds `m`
/// to the config as the server `name`.
pub fn serve_client(conf: &Path, name: &str, m: &Member) {
    let cert = conf.with_file_name("app1.pem");
    hahsm(
        Some(conf),
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
    m.admin(&["client", "register", "--client", "app1", "--cert", &s(&cert)])
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

fn s_ref(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// A fresh appliance in the cloning domain of the secret file `domain`:
/// initialised as `label`, its SO logged in, and the HSM policies a restore
/// and a group need (7, 16, 20) on; no partition yet.
pub fn fresh_member_in_domain(dir: &Path, label: &str, domain: &Path) -> Member {
    let m = Member::start_peer(dir);
    let so = dir.join("so.key");
    m.admin(&[
        "hsm",
        "init",
        "--label",
        label,
        "--so-secret",
        s_ref(&so),
        "--domain-secret",
        s_ref(domain),
    ])
    .expect_ok();
    m.admin(&["hsm", "login", "--so-secret", s_ref(&so)]).expect_ok();
    for p in ["7", "16", "20"] {
        m.admin(&["hsm", "change-policy", "--policy", p, "--value", "1"])
            .expect_ok();
    }
    m
}

/// `hahsm restore` of the backup `file` as the partition `PARTITION` on `m`.
pub fn restore(m: &Member, file: &Path, owner: &Path, domain: &Path) -> Run {
    let socket = m.admin_socket();
    hahsm(
        None,
        &[
            "restore",
            "--socket",
            s_ref(&socket),
            "--partition",
            PARTITION,
            "--owner-secret",
            s_ref(owner),
            "--domain-secret",
            s_ref(domain),
            "--file",
            s_ref(file),
        ],
    )
}

/// How a test's group differs from the plain one; `Default` is the plain one.
#[derive(Default)]
pub struct Setup<'a> {
    /// Extra `ha create-group` options (e.g. `--quorum`).
    pub group_options: &'a [&'a str],
    /// Extra TOML lines under member `i`'s `[monitoring]` (which may open
    /// `[monitoring.alerts]`), e.g. its alert command.
    pub monitoring: Option<&'a dyn Fn(usize) -> String>,
    /// Extra TOML tables at the end of member `i`'s config, e.g. `[replication]`.
    pub tables: Option<&'a dyn Fn(usize) -> String>,
    /// Extra environment for member `i`'s daemon, e.g. libfaketime's.
    pub env: Option<&'a dyn Fn(usize) -> crate::Env>,
}

impl Cluster {
    /// Points the PKCS#11 module of this process, and of the programs it
    /// starts, at the group's HA slot alone: writes `client/ha.toml` (the
    /// client config with `ha_only = true` and, if given, another request
    /// deadline) and sets `HAHSM_CONF` to it. Returns its path.
    pub fn ha_only_conf(&self, request_timeout_ms: Option<u64>) -> PathBuf {
        let text = std::fs::read_to_string(&self.conf).expect("the client config");
        let text = text
            .lines()
            .map(|l| match request_timeout_ms {
                Some(ms) if l.starts_with("request_timeout_ms") => format!("request_timeout_ms = {ms}"),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let conf = self.work.path().join("client/ha.toml");
        std::fs::write(&conf, format!("ha_only = true\n{text}\n")).expect("write client/ha.toml");
        std::env::set_var("HAHSM_CONF", &conf);
        conf
    }

    /// `n` members in one group, the first being the group's creator.
    pub fn new(n: usize) -> Cluster {
        Self::with(n, &Setup::default())
    }

    /// Like `new`, with extra `ha create-group` options (e.g. `--quorum`).
    pub fn with_group_options(n: usize, options: &[&str]) -> Cluster {
        Self::with(
            n,
            &Setup {
                group_options: options,
                ..Setup::default()
            },
        )
    }

    /// Like `new`, with extra TOML lines under each member's `[monitoring]`
    /// (given the member's index), e.g. its alert command.
    pub fn with_monitoring(n: usize, monitoring: &dyn Fn(usize) -> String) -> Cluster {
        Self::with(
            n,
            &Setup {
                monitoring: Some(monitoring),
                ..Setup::default()
            },
        )
    }

    /// `n` members in one group, set up as `setup` says.
    pub fn with(n: usize, setup: &Setup) -> Cluster {
        let work = tempfile::tempdir().expect("temp dir");
        let secrets = work.path().join("secrets");
        std::fs::create_dir_all(&secrets).expect("secrets dir");
        let domain = secrets.join("domain.key");
        let owner = secrets.join("owner.key");
        let mut c = Cluster {
            conf: work.path().join("client/client.toml"),
            work,
            members: Vec::new(),
            serials: Vec::new(),
            fingerprints: Vec::new(),
            proxies: HashMap::new(),
            domain_secret: domain.clone(),
            owner_secret: owner.clone(),
        };
        for i in 0..n {
            c.add_appliance(i, &domain, &owner);
        }
        // Route every link through a proxy, then restart so the routes (and
        // the setup's config and environment) apply.
        for i in 0..n {
            let mut routes = String::from("\n[peer_routes]\n");
            for j in 0..n {
                if i != j {
                    let proxy = Proxy::start(&c.members[j].peer_address);
                    routes.push_str(&format!("\"{}\" = \"{}\"\n", c.serials[j], proxy.addr));
                    c.proxies.insert((i, j), proxy);
                }
            }
            let m = &mut c.members[i];
            if let Some(monitoring) = setup.monitoring {
                m.add_monitoring(&monitoring(i));
            }
            let tables = setup.tables.map(|t| t(i)).unwrap_or_default();
            let text = std::fs::read_to_string(&m.config).expect("config");
            // Top-level keys must come before the first table.
            let (top, rest) = text.split_at(text.find("[limits]").unwrap_or(text.len()));
            std::fs::write(&m.config, format!("{top}{rest}{routes}\n{tables}\n")).expect("config");
            for (k, v) in setup.env.map(|e| e(i)).unwrap_or_default() {
                m.set_env(&k, &v);
            }
            m.stop();
            m.spawn();
        }
        for i in 0..n {
            c.so_login(i);
            c.ha(
                i,
                &["prepare", "--partition", PARTITION, "--owner-secret", &s(&owner)],
            )
            .expect_ok();
        }
        let mut create = vec!["create-group", "--label", GROUP, "--partition", PARTITION];
        create.extend_from_slice(setup.group_options);
        c.ha(0, &create).expect_ok();
        for j in 1..n {
            c.add_member(j).expect_ok();
        }
        // One client, registered on every member, knowing every member.
        let named: Vec<(String, &Member)> = c
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("hsm{i}"), m))
            .collect();
        register_client(&c.conf, &named);
        assert!(
            c.wait_in_sync(0, Duration::from_secs(15)),
            "the new group never reported in sync"
        );
        c
    }

    /// Starts, initializes and sets up one more appliance (not yet in the group).
    pub fn add_appliance(&mut self, i: usize, domain: &Path, owner: &Path) -> usize {
        let dir = self.work.path().join(format!("hsm{i}"));
        let m = Member::start_peer(&dir);
        let so = dir.join("so.key");
        set_up_for_ha(
            &m,
            &format!("hsm{i}"),
            &so,
            &["--domain-secret", &s(domain)],
            owner,
        );
        let run = |args: &[&str]| m.admin(args).expect_ok();
        let status = run(&["status"]).stdout;
        let serial = status
            .lines()
            .find_map(|l| l.strip_prefix("serial:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("serial in status");
        self.fingerprints.push(m.fingerprint());
        self.serials.push(serial);
        self.members.push(m);
        self.members.len() - 1
    }

    /// Sets up one more appliance, prepared for the group, and adds it as a
    /// standby (`ha add-standby`, from member 0, straight to its peer
    /// listener), with the client registered and assigned there and named
    /// `hsm<index>` in the client config. Returns its index.
    pub fn add_standby(&mut self) -> usize {
        let (domain, owner) = (self.domain_secret.clone(), self.owner_secret.clone());
        let j = self.add_appliance(self.members.len(), &domain, &owner);
        self.so_login(j);
        self.ha(
            j,
            &["prepare", "--partition", PARTITION, "--owner-secret", &s(&owner)],
        )
        .expect_ok();
        self.ha(
            0,
            &[
                "add-standby",
                "--group",
                GROUP,
                "--address",
                &self.members[j].peer_address,
                "--fingerprint",
                &self.fingerprints[j],
            ],
        )
        .expect_ok();
        serve_client(&self.conf, &format!("hsm{j}"), &self.members[j]);
        j
    }

    /// `hahsm backup` of the group's partition on member `i` into `out`,
    /// with the group's domain and partition-owner secrets.
    pub fn backup(&self, i: usize, out: &Path) -> Run {
        let socket = self.members[i].admin_socket();
        hahsm(
            None,
            &[
                "backup",
                "--socket",
                s_ref(&socket),
                "--partition",
                PARTITION,
                "--owner-secret",
                s_ref(&self.owner_secret),
                "--domain-secret",
                s_ref(&self.domain_secret),
                "--out",
                s_ref(out),
            ],
        )
    }

    pub fn so_login(&self, i: usize) {
        let so = self.members[i].dir.join("so.key");
        self.admin(i, &["hsm", "login", "--so-secret", &s(&so)])
            .expect_ok();
    }

    pub fn admin(&self, i: usize, args: &[&str]) -> Run {
        self.members[i].admin(args)
    }

    /// `hahsm ha ARGS…` on member `i`'s console.
    pub fn ha(&self, i: usize, args: &[&str]) -> Run {
        let socket = self.members[i].admin_socket();
        let mut full = vec!["ha", "--socket", socket.to_str().expect("utf-8")];
        full.extend_from_slice(args);
        hahsm(None, &full)
    }

    /// Adds member `j` to the group from member 0, through the 0→j link.
    pub fn add_member(&self, j: usize) -> Run {
        let addr = self
            .proxies
            .get(&(0, j))
            .map(|p| p.addr.clone())
            .unwrap_or_else(|| self.members[j].peer_address.clone());
        self.ha(
            0,
            &[
                "add-member",
                "--group",
                GROUP,
                "--address",
                &addr,
                "--fingerprint",
                &self.fingerprints[j],
            ],
        )
    }

    /// `hahsm keys ARGS…` against member `i`.
    pub fn keys(&self, i: usize, args: &[&str]) -> Run {
        let server = format!("hsm{i}");
        let mut full = vec!["keys", "--server", &server];
        full.extend_from_slice(args);
        hahsm_env(
            Some(&self.conf),
            &full,
            &[("HAHSM_PIN", PIN), ("HAHSM_PARTITION", PARTITION)],
        )
    }

    /// `ha show --sync-status --json` on member `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let out = self.ha(i, &["show", "--sync-status", "--json"]);
        serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The state member `i` reports for the member with index `j`.
    pub fn state_of(&self, i: usize, j: usize) -> String {
        let st = self.status(i);
        st["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["serial"] == self.serials[j]))
            .and_then(|m| m["state"].as_str())
            .unwrap_or("?")
            .to_string()
    }

    /// The distinct content digests of the members, as member `i` reports
    /// them: one when they hold the same objects.
    pub fn member_digests(&self, i: usize) -> std::collections::BTreeSet<String> {
        self.status(i)["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["digest"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn wait_in_sync(&self, i: usize, timeout: Duration) -> bool {
        self.wait(timeout, || self.status(i)["in_sync"] == true)
    }

    pub fn wait(&self, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        done()
    }

    /// Sets both directions of the link between members `a` and `b`.
    pub fn link(&self, a: usize, b: usize, mode: Mode) {
        for key in [(a, b), (b, a)] {
            if let Some(p) = self.proxies.get(&key) {
                p.set(mode);
            }
        }
    }

    /// Cuts member `i` off from every other member.
    pub fn isolate(&self, i: usize, mode: Mode) {
        for j in 0..self.members.len() {
            if j != i {
                self.link(i, j, mode);
            }
        }
    }

    pub fn heal_all(&self) {
        for p in self.proxies.values() {
            p.set(Mode::Pass);
        }
    }

    pub fn ha_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].data_dir().join("ha.log")).unwrap_or_default()
    }
}
