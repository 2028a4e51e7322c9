//! `hahsm demo`: a group of members on loopback, set up end to end, for a
//! first look (as `cockroach demo` is for CockroachDB). It starts N `hahsmd`
//! processes in a directory, initializes them with fresh secrets, creates a
//! partition on each, forms an HA group, makes a client certificate and
//! config, and prints how to point applications at it.
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use hahsm_client::admin::AdminClient;
use hahsm_client::{ClientConfig, ServerEntry};
use hahsm_proto::admin::{AdminRequest as R, AdminResponse};
use hahsm_proto::Secret;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const PARTITION: &str = "demoPart";
pub const GROUP: &str = "demoGroup";
pub const USER_PIN: &str = "demo-pin-1234";
pub const SO_PIN: &str = "demo-so-5678";

#[derive(Args)]
pub struct DemoArgs {
    /// The demo's directory [default: $TMPDIR/hahsm-demo]
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// How many members.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Return once the group is ready, leaving it running (`hahsm demo stop` ends it).
    #[arg(long)]
    detach: bool,
    #[command(subcommand)]
    command: Option<DemoCommand>,
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Stop every member of the running demo.
    Stop,
    /// SIGKILL member N (numbered from 1).
    KillMember { number: usize },
    /// SIGSTOP member N: it hangs, as a busy or wedged HSM does.
    PauseMember { number: usize },
    /// SIGCONT member N.
    ResumeMember { number: usize },
    /// Start member N again (killing it first if it runs).
    RestartMember { number: usize },
}

/// `demo.json`: what a script needs to use the running demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoFile {
    pub module: PathBuf,
    pub conf: PathBuf,
    /// The same client without `ha_only`: every member's physical slot as
    /// well, for measuring or inspecting one member (`hahsm bench --slot hsm2`).
    #[serde(default)]
    pub conf_all_slots: PathBuf,
    /// The HA slot's token label (the group's label).
    pub token_label: String,
    pub user_pin: String,
    pub so_pin: String,
    pub group: String,
    /// An openssl.cnf that loads the libp11 engine with this module.
    #[serde(default)]
    pub openssl_conf: PathBuf,
    pub members: Vec<DemoMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoMember {
    pub number: usize,
    pub serial: u64,
    pub pid: u32,
    pub address: String,
    pub peer_address: String,
    pub data_dir: PathBuf,
    /// The member's metrics URL (Prometheus/OpenMetrics).
    #[serde(default)]
    pub metrics: String,
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("hahsm-demo")
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .ok_or_else(|| anyhow!("no directory for {name}"))?;
    if !path.exists() {
        bail!(
            "{} is missing: build the workspace first (cargo build)",
            path.display()
        );
    }
    Ok(path)
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

fn load(dir: &Path) -> anyhow::Result<DemoFile> {
    let path = dir.join("demo.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no demo in {} (no demo.json)", dir.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn save(dir: &Path, demo: &DemoFile) -> anyhow::Result<()> {
    std::fs::write(dir.join("demo.json"), serde_json::to_string_pretty(demo)?)?;
    Ok(())
}

/// A started member: its pid, client and peer addresses, and metrics URL.
struct Spawned {
    pid: u32,
    address: String,
    peer_address: String,
    metrics: String,
}

/// Starts one member's daemon in its own process group (so a terminal's
/// Ctrl-C reaches only the demo command), and waits until it is ready.
fn spawn_member(member_dir: &Path) -> anyhow::Result<Spawned> {
    let data = member_dir.join("data");
    for f in ["listen.addr", "peer.addr", "metrics.addr"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(member_dir.join("hahsmd.log"))?;
    let child = Command::new(sibling("hahsmd")?)
        .arg("--config")
        .arg(member_dir.join("hahsmd.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start hahsmd")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let (Ok(a), Ok(p)) = (
            std::fs::read_to_string(data.join("listen.addr")),
            std::fs::read_to_string(data.join("peer.addr")),
        ) {
            // Written before listen.addr, when the endpoint could bind.
            let metrics = std::fs::read_to_string(data.join("metrics.addr"))
                .map(|m| format!("http://{}/metrics", m.trim()))
                .unwrap_or_default();
            return Ok(Spawned {
                pid,
                address: a.trim().to_string(),
                peer_address: p.trim().to_string(),
                metrics,
            });
        }
        if !alive(pid) || Instant::now() > deadline {
            bail!(
                "member in {} did not start; see its hahsmd.log",
                member_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

async fn admin(member_dir: &Path, req: R) -> anyhow::Result<AdminResponse> {
    let mut client = AdminClient::connect(&member_dir.join("data/admin.sock")).await?;
    Ok(client.call(req).await?)
}

fn secret(path: &Path) -> anyhow::Result<Secret> {
    Ok(hahsm_client::secrets::read_or_generate(path)?.0)
}

/// Everything `demo` sets up, step by step.
async fn start(dir: &Path, n: usize) -> anyhow::Result<DemoFile> {
    if n == 0 || n > 9 {
        bail!("--members takes 1 to 9");
    }
    if let Ok(old) = load(dir) {
        if old.members.iter().any(|m| alive(m.pid)) {
            bail!(
                "a demo is already running in {}: `hahsm demo stop` first",
                dir.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("secrets"))?;
    let domain = secret(&dir.join("secrets/domain.key"))?;
    let owner = secret(&dir.join("secrets/owner.key"))?;
    let mut members = Vec::new();
    for number in 1..=n {
        let mdir = dir.join(format!("member{number}"));
        std::fs::create_dir_all(&mdir)?;
        let data = mdir.join("data");
        std::fs::write(
            mdir.join("hahsmd.toml"),
            format!(
                "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\npeer_listen = \"127.0.0.1:0\"\n\
                 [monitoring]\nmetrics_listen = \"127.0.0.1:0\"\n",
                data.display()
            ),
        )?;
        let Spawned {
            pid,
            address,
            peer_address,
            metrics,
        } = spawn_member(&mdir)?;
        let metrics_listen = metrics
            .trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .to_string();
        // Keep the ports across restarts, as a real appliance keeps its address.
        std::fs::write(
            mdir.join("hahsmd.toml"),
            format!(
                "data_dir = \"{}\"\nlisten = \"{address}\"\npeer_listen = \"{peer_address}\"\n\
                 [monitoring]\nmetrics_listen = \"{metrics_listen}\"\n",
                data.display()
            ),
        )?;
        let so = secret(&dir.join(format!("secrets/so{number}.key")))?;
        admin(
            &mdir,
            R::HsmInit {
                label: format!("hsm{number}"),
                so_secret: so.clone(),
                domain_secret: hahsm_proto::admin::DomainSecret::Whole(domain.clone()),
            },
        )
        .await?;
        admin(&mdir, R::HsmLogin { so_secret: so }).await?;
        for p in ["7", "16", "20"] {
            admin(
                &mdir,
                R::HsmChangePolicy {
                    policy: p.into(),
                    value: 1,
                },
            )
            .await?;
        }
        admin(
            &mdir,
            R::PartitionCreate {
                name: PARTITION.into(),
                owner_secret: owner.clone(),
                initial_pin: Some(Secret::from(USER_PIN)),
            },
        )
        .await?;
        for p in ["0", "4", "21", "22", "23"] {
            admin(
                &mdir,
                R::PartitionChangePolicy {
                    name: PARTITION.into(),
                    policy: p.into(),
                    value: 1,
                },
            )
            .await?;
        }
        admin(
            &mdir,
            R::PartitionActivate {
                name: PARTITION.into(),
                owner_secret: owner.clone(),
            },
        )
        .await?;
        admin(
            &mdir,
            R::PartitionChangeSoPin {
                name: PARTITION.into(),
                owner_secret: owner.clone(),
                new_pin: Secret::from(SO_PIN),
            },
        )
        .await?;
        admin(
            &mdir,
            R::HaPrepare {
                partition: PARTITION.into(),
                owner_secret: owner.clone(),
            },
        )
        .await?;
        let serial = match admin(&mdir, R::Status).await? {
            AdminResponse::Status(s) => s.serial,
            other => bail!("unexpected answer {other:?}"),
        };
        println!(
            "member {number}: hsm{number}, serial {serial}, client link {address}, peer link {peer_address}"
        );
        members.push(DemoMember {
            number,
            serial,
            pid,
            address,
            peer_address,
            data_dir: data,
            metrics,
        });
    }

    let first = dir.join("member1");
    admin(
        &first,
        R::HaCreateGroup {
            label: GROUP.into(),
            partition: PARTITION.into(),
            quorum: false,
            replication_timeout_ms: 2000,
        },
    )
    .await?;
    let fingerprint = |mdir: PathBuf| async move {
        match admin(&mdir, R::Fingerprint).await? {
            AdminResponse::Fingerprint(f) => Ok::<String, anyhow::Error>(f),
            other => bail!("unexpected answer {other:?}"),
        }
    };
    let mut fingerprints = Vec::new();
    for m in &members {
        fingerprints.push(fingerprint(dir.join(format!("member{}", m.number))).await?);
    }
    for (m, fp) in members.iter().zip(&fingerprints).skip(1) {
        admin(
            &first,
            R::HaAddMember {
                group: GROUP.into(),
                peer_address: m.peer_address.clone(),
                fingerprint: fp.clone(),
                standby: false,
                domain: None,
            },
        )
        .await?;
    }

    // The client: a certificate registered on every member, and a config
    // that pins every member.
    let client_dir = dir.join("client");
    std::fs::create_dir_all(&client_dir)?;
    let (cert_pem, key_pem) = hahsm_link::generate_self_signed("demo-client", &[])?;
    hahsm_link::write_private_file(&client_dir.join("demo-client.key"), key_pem.as_bytes())?;
    std::fs::write(client_dir.join("demo-client.pem"), cert_pem.as_bytes())?;
    let client_fp = hahsm_link::Fingerprint::of_der(&hahsm_link::cert_from_pem(&cert_pem)?).to_string();
    let mut config = ClientConfig {
        cert: client_dir.join("demo-client.pem"),
        key: client_dir.join("demo-client.key"),
        ..ClientConfig::default()
    };
    for (m, fp) in members.iter().zip(&fingerprints) {
        let mdir = dir.join(format!("member{}", m.number));
        admin(
            &mdir,
            R::ClientRegister {
                name: "demo-client".into(),
                hostname: "127.0.0.1".into(),
                fingerprint: client_fp.clone(),
            },
        )
        .await?;
        admin(
            &mdir,
            R::ClientAssignPartition {
                client: "demo-client".into(),
                partition: PARTITION.into(),
            },
        )
        .await?;
        config.servers.push(ServerEntry {
            name: format!("hsm{}", m.number),
            address: m.address.clone(),
            fingerprint: fp.clone(),
        });
    }
    let conf_all_slots = client_dir.join("client-all-slots.toml");
    config.save(&conf_all_slots)?;
    // Applications see the HA slot only, as they would in production.
    config.ha_only = true;
    let conf = client_dir.join("client.toml");
    config.save(&conf)?;
    let module = sibling("libhahsm_pkcs11.so").unwrap_or_else(|_| PathBuf::from("libhahsm_pkcs11.so"));
    // Without MODULE_PATH the libp11 engine loads p11-kit's proxy, not hahsm.
    let openssl_conf = client_dir.join("openssl-pkcs11.cnf");
    std::fs::write(
        &openssl_conf,
        format!(
            "openssl_conf = conf\n[conf]\nengines = engines\n[engines]\npkcs11 = pkcs11\n\
             [pkcs11]\nengine_id = pkcs11\nMODULE_PATH = {}\ninit = 0\n",
            module.display()
        ),
    )?;
    let demo = DemoFile {
        module,
        conf,
        conf_all_slots,
        token_label: GROUP.into(),
        user_pin: USER_PIN.into(),
        so_pin: SO_PIN.into(),
        group: GROUP.into(),
        openssl_conf,
        members,
    };
    save(dir, &demo)?;
    Ok(demo)
}

fn print_usage(dir: &Path, demo: &DemoFile) {
    let m = demo.module.display();
    println!(
        r#"
hahsm demo: {n} members in HA group '{group}', partition '{part}'. Files in {dir}.

  export HAHSM_CONF={conf}
  export HAHSM_PIN={pin}            # the user PIN; the partition SO PIN is {so}
  module: {m}

  hahsm keys gen --type ec:p256 --label mykey --server hsm1
  hahsm keys list --server hsm2       # the key is on every member
  hahsm ha show --sync-status --socket {sock}
  hahsm monitor --socket {sock}      # live; metrics of member 1: {metrics}
  pkcs11-tool --module {m} -L          # one slot: the HA group '{group}'
  pkcs11-tool --module {m} --login --pin {pin} --keypairgen --key-type EC:prime256v1 --label p11key
  OPENSSL_CONF={ossl} openssl pkeyutl -engine pkcs11 -keyform engine -sign \
      -inkey "pkcs11:token={group};object=p11key;type=private;pin-value={pin}" -in <(head -c 32 /dev/urandom) -out sig
  python3 -c 'import pkcs11; t = pkcs11.lib("{m}").get_token(token_label="{group}"); print(t.open(user_pin="{pin}").generate_random(64).hex())'

  Faults: hahsm demo kill-member 2 | pause-member 2 | resume-member 2 | restart-member 2
  Script access: {dir}/demo.json"#,
        n = demo.members.len(),
        group = demo.group,
        part = PARTITION,
        dir = dir.display(),
        conf = demo.conf.display(),
        pin = demo.user_pin,
        so = demo.so_pin,
        sock = dir.join("member1/data/admin.sock").display(),
        ossl = demo.openssl_conf.display(),
        metrics = demo.members.first().map(|m| m.metrics.as_str()).unwrap_or("-"),
    );
}

fn stop_all(demo: &DemoFile) {
    for m in &demo.members {
        let pid = Pid::from_raw(m.pid as i32);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while demo.members.iter().any(|m| alive(m.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for m in demo.members.iter().filter(|m| alive(m.pid)) {
        let _ = kill(Pid::from_raw(m.pid as i32), Signal::SIGKILL);
    }
}

fn member(demo: &mut DemoFile, number: usize) -> anyhow::Result<&mut DemoMember> {
    let count = demo.members.len();
    demo.members
        .iter_mut()
        .find(|m| m.number == number)
        .ok_or_else(|| anyhow!("no member {number}: the demo has members 1 to {count}"))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let signal_member = |number: usize, sig: Signal, what: &str| -> anyhow::Result<()> {
        let mut demo = load(&dir)?;
        let m = member(&mut demo, number)?;
        kill(Pid::from_raw(m.pid as i32), sig).with_context(|| format!("member {number} is not running"))?;
        println!("member {number} (pid {}): {what}", m.pid);
        Ok(())
    };
    match args.command {
        Some(DemoCommand::Stop) => {
            let demo = load(&dir)?;
            stop_all(&demo);
            println!("demo stopped; its files stay in {}", dir.display());
        }
        Some(DemoCommand::KillMember { number }) => signal_member(number, Signal::SIGKILL, "killed")?,
        Some(DemoCommand::PauseMember { number }) => signal_member(number, Signal::SIGSTOP, "paused")?,
        Some(DemoCommand::ResumeMember { number }) => signal_member(number, Signal::SIGCONT, "resumed")?,
        Some(DemoCommand::RestartMember { number }) => {
            let mut demo = load(&dir)?;
            let m = member(&mut demo, number)?;
            if alive(m.pid) {
                let _ = kill(Pid::from_raw(m.pid as i32), Signal::SIGKILL);
                while alive(m.pid) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let spawned = spawn_member(&dir.join(format!("member{number}")))?;
            let pid = spawned.pid;
            m.pid = pid;
            m.metrics = spawned.metrics;
            println!("member {number} restarted (pid {pid})");
            save(&dir, &demo)?;
        }
        None => {
            // Installed before the set-up, so a Ctrl-C during it is not lost:
            // it then stops the demo as soon as it is ready.
            let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
            let demo = match start(&dir, args.members).await {
                Ok(d) => d,
                Err(e) => {
                    if let Ok(d) = load(&dir) {
                        stop_all(&d);
                    }
                    return Err(e);
                }
            };
            print_usage(&dir, &demo);
            if args.detach {
                println!("\nThe demo keeps running: `hahsm demo stop` ends it.");
                return Ok(());
            }
            println!("\nPress Ctrl-C to stop the demo.");
            interrupt.recv().await;
            // Reload: restart-member may have changed pids meanwhile.
            stop_all(&load(&dir).unwrap_or(demo));
            println!("demo stopped; its files stay in {}", dir.display());
        }
    }
    Ok(())
}
