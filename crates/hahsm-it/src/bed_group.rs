//! An HA group of three members (`quorum` unless asked) on a test bed (`bed::Bed`): each
//! member in its own network namespace with its own address, an application
//! host beside them, and one client registered on every member. The members'
//! config and environment can be given (a `[replication]` table, libfaketime).
use crate::bed::Bed;
use crate::cluster::{register_client, set_up_for_ha, GROUP, PARTITION, PIN};
use crate::{bin, hahsm, run_command, Env, Member, Run, Tmpfs};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The members' host names; the application's is `app`.
pub const MEMBERS: [&str; 3] = ["hsm1", "hsm2", "hsm3"];

/// How the group's members differ from the plain ones.
#[derive(Default)]
pub struct BedSetup<'a> {
    /// TOML tables appended to every member's config, e.g. `[replication]`.
    pub tables: &'a str,
    /// Lines under every member's `[limits]`, e.g. `idle_timeout_ms = 6000`.
    pub limits: &'a str,
    /// Extra environment for the member on host `name`, e.g. libfaketime's.
    pub env: Option<&'a dyn Fn(&str) -> Env>,
    /// The `all-reachable` write concern instead of `quorum`.
    pub all_reachable: bool,
    /// A host whose member keeps its data on a tmpfs of this size (e.g.
    /// `("hsm2", "128m")`), which `fill_disk` can fill.
    pub small_disk: Option<(&'a str, &'a str)>,
}

/// The members before the bed: a struct's fields drop in order, so the
/// daemons are stopped before their namespaces go.
pub struct BedGroup {
    pub members: Vec<Member>,
    /// Unmounted after the members stop, before the work directory goes.
    _disks: Vec<Tmpfs>,
    pub conf: std::path::PathBuf,
    pub work: tempfile::TempDir,
    pub bed: Bed,
}

/// `hahsm ha ARGS…` on member `m`'s console.
pub fn ha(m: &Member, args: &[&str]) -> Run {
    let socket = m.admin_socket();
    let mut full = vec!["ha", "--socket", socket.to_str().expect("utf-8 path")];
    full.extend_from_slice(args);
    hahsm(None, &full)
}

impl BedGroup {
    pub fn new(setup: &BedSetup) -> BedGroup {
        let bed = Bed::new(&["hsm1", "hsm2", "hsm3", "app"]);
        let work = tempfile::tempdir().expect("temp dir");
        let domain = work.path().join("domain.key");
        let owner = work.path().join("owner.key");
        let mut members = Vec::new();
        let mut disks = Vec::new();
        for name in MEMBERS {
            let host = bed.host(name);
            let dir = work.path().join(name);
            if let Some((_, size)) = setup.small_disk.filter(|(h, _)| *h == name) {
                let disk = Tmpfs::mount(&dir.join("data"), size)
                    .unwrap_or_else(|| panic!("a tmpfs for {name}'s data (needs root)"));
                disks.push(disk);
            }
            let mut m = Member::start_in_netns(&dir, &host.netns, &host.ip);
            let env = setup.env.map(|e| e(name)).unwrap_or_default();
            if !setup.tables.is_empty() || !setup.limits.is_empty() || !env.is_empty() {
                let text = std::fs::read_to_string(&m.config).expect("config");
                let text = text.replacen("[limits]\n", &format!("[limits]\n{}\n", setup.limits), 1);
                std::fs::write(&m.config, format!("{text}\n{}\n", setup.tables)).expect("config written");
                for (k, v) in env {
                    m.set_env(&k, &v);
                }
                m.stop();
                m.spawn();
            }
            set_up_for_ha(
                &m,
                name,
                &dir.join("so.key"),
                &["--domain-secret", domain.to_str().expect("utf-8 path")],
                &owner,
            );
            ha(
                &m,
                &[
                    "prepare",
                    "--partition",
                    PARTITION,
                    "--owner-secret",
                    owner.to_str().expect("utf-8 path"),
                ],
            )
            .expect_ok();
            members.push(m);
        }
        let mut create = vec!["create-group", "--label", GROUP, "--partition", PARTITION];
        if !setup.all_reachable {
            create.push("--quorum");
        }
        ha(&members[0], &create).expect_ok();
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
        let named: Vec<(String, &Member)> = MEMBERS.iter().map(|n| n.to_string()).zip(&members).collect();
        register_client(&conf, &named);
        let g = BedGroup {
            members,
            _disks: disks,
            conf,
            work,
            bed,
        };
        g.wait_in_sync(Duration::from_secs(30));
        g
    }

    pub fn index(name: &str) -> usize {
        MEMBERS
            .iter()
            .position(|m| *m == name)
            .unwrap_or_else(|| panic!("no member host {name}"))
    }

    /// `/health/ready` of a member, asked inside its namespace.
    pub fn ready(&self, name: &str) -> (u16, String) {
        let m = &self.members[Self::index(name)];
        let addr = std::fs::read_to_string(m.data_dir().join("metrics.addr")).unwrap_or_default();
        let url = format!("http://{}/health/ready", addr.trim());
        let r = self
            .bed
            .exec(name, "curl", &["-s", "-m", "3", "-w", "\n%{http_code}", &url]);
        let (body, code) = r.stdout.rsplit_once('\n').unwrap_or(("", ""));
        (code.trim().parse().unwrap_or(0), body.trim().to_string())
    }

    pub fn wait_ready(&self, name: &str, code: u16, timeout: Duration) -> String {
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

    /// Fills the disk of the member on `host` (its `small_disk`) with a
    /// file, to the last byte; returns the file, for `free_disk`.
    pub fn fill_disk(&self, host: &str) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.members[Self::index(host)].data_dir().join("filler");
        let mut f = std::fs::File::create(&filler).expect("the filler file");
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        // The last partial chunk too: byte by byte is slow, 4 KiB will do.
        while f.write_all(&chunk[..4096]).is_ok() {}
        filler
    }

    pub fn free_disk(&self, filler: &std::path::Path) {
        std::fs::remove_file(filler).expect("the filler file removed");
    }

    /// The labels of the objects on member `name`, as its own slot lists them.
    pub fn labels_on(&self, name: &str) -> Vec<String> {
        let list = self.app(&["keys", "list", "--server", name]).expect_ok().stdout;
        // "object id  class  type  label  id", the header first.
        list.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .collect()
    }

    /// Every member in sync with the same digest, as each sees the group.
    pub fn wait_in_sync(&self, timeout: Duration) {
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
    pub fn app(&self, args: &[&str]) -> Run {
        run_command(
            self.bed
                .command("app", &bin("hahsm"))
                .args(args)
                .env("HAHSM_CONF", &self.conf)
                .env("HAHSM_PIN", PIN)
                .env("HAHSM_PARTITION", PARTITION),
        )
    }

    /// Where the application's PKCS#11 module logs (`HAHSM_PKCS11_LOG`).
    pub fn module_log(&self) -> std::path::PathBuf {
        self.work.path().join("app-pkcs11.log")
    }

    /// `program ARGS…` started on the application's host, with the client
    /// config, PIN and partition, its output piped and its module's log at
    /// `module_log`.
    pub fn spawn_app(&self, program: &std::path::Path, args: &[&str]) -> Child {
        self.bed
            .command("app", program)
            .args(args)
            .env("HAHSM_PKCS11_LOG", self.module_log())
            .env("HAHSM_CONF", &self.conf)
            .env("HAHSM_PIN", PIN)
            .env("HAHSM_PARTITION", PARTITION)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()))
    }

    /// `hahsm bench` in the application's namespace: signatures through the HA slot.
    pub fn start_signing(&self, seconds: u32) -> Child {
        let seconds = seconds.to_string();
        self.spawn_app(
            &bin("hahsm"),
            &[
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
                &seconds,
                "--json",
            ],
        )
    }
}
