//! `hahsm appliance …`: the member's console, over its admin socket.
use crate::common::admin_socket;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hahsm_client::admin::AdminClient;
use hahsm_client::secrets;
use hahsm_proto::admin::{AdminRequest as R, AdminResponse, DomainSecret, PolicyLine};
use hahsm_proto::Secret;
use std::path::PathBuf;

#[derive(Args)]
pub struct ApplianceArgs {
    /// The member's admin socket [env: HAHSM_ADMIN_SOCKET; default: <data-dir>/admin.sock]
    #[arg(long, env = "HAHSM_ADMIN_SOCKET")]
    socket: Option<PathBuf>,
    /// The member's data directory, to find its admin socket.
    #[arg(long, env = "HAHSM_DATA_DIR", default_value = "/var/lib/hahsm")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: ApplianceCommand,
}

#[derive(Subcommand)]
enum ApplianceCommand {
    /// Show the member: label, serial, SO login, listen address, fingerprint.
    Status,
    #[command(subcommand)]
    Hsm(HsmCommand),
    #[command(subcommand)]
    Partition(PartitionCommand),
    #[command(subcommand)]
    Sysconf(SysconfCommand),
    #[command(subcommand)]
    Client(ApplianceClientCommand),
}

#[derive(Subcommand)]
enum HsmCommand {
    /// Initialize the HSM. A secret file that does not exist is created with a new
    /// random secret (mode 0600); an existing one is reused, as when a second
    /// member joins the same cloning domain. Instead of the domain secret file,
    /// M shares of it (`--share FILE`, repeated) may be given.
    Init {
        #[arg(long)]
        label: String,
        #[arg(long)]
        so_secret: PathBuf,
        #[command(flatten)]
        domain: crate::custody_cmd::DomainArgs,
    },
    /// Log in as the HSM security officer for the admin commands that follow.
    Login {
        #[arg(long)]
        so_secret: PathBuf,
    },
    Logout,
    ShowPolicies,
    /// Change an HSM policy, by number (as in the report) or by name.
    ChangePolicy {
        #[arg(long)]
        policy: String,
        #[arg(long)]
        value: u64,
    },
    /// Erase every partition, client and secret on this member.
    FactoryReset {
        /// Required: this cannot be undone.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PartitionCommand {
    /// Create a partition. Its owner secret file is created if missing. Without
    /// --pin, a random initial PIN is printed once: change it.
    Create {
        #[arg(long)]
        partition: String,
        #[arg(long)]
        owner_secret: PathBuf,
        /// The initial user PIN [env: HAHSM_INITIAL_PIN]
        #[arg(long, env = "HAHSM_INITIAL_PIN", hide_env_values = true)]
        pin: Option<String>,
    },
    /// Change the user PIN, with the old PIN or with the owner secret (which also clears a lockout).
    ChangePin {
        #[arg(long)]
        partition: String,
        #[arg(long, hide_env_values = true)]
        old_pin: Option<String>,
        #[arg(long)]
        owner_secret: Option<PathBuf>,
        #[arg(long, hide_env_values = true)]
        new_pin: String,
    },
    /// Set the partition SO's PIN (PKCS#11 CKU_SO), with the owner secret.
    ChangeSoPin {
        #[arg(long)]
        partition: String,
        #[arg(long)]
        owner_secret: PathBuf,
        #[arg(long, hide_env_values = true)]
        new_pin: String,
    },
    /// Activate a partition with its owner secret, so clients can log in.
    Activate {
        #[arg(long)]
        partition: String,
        #[arg(long)]
        owner_secret: PathBuf,
    },
    Deactivate {
        #[arg(long)]
        partition: String,
    },
    ShowPolicies {
        #[arg(long)]
        partition: String,
    },
    ChangePolicy {
        #[arg(long)]
        partition: String,
        #[arg(long)]
        policy: String,
        #[arg(long)]
        value: u64,
    },
    ShowContents {
        #[arg(long)]
        partition: String,
    },
    /// Destroy every object in the partition, as one logged operation.
    Clear {
        #[arg(long)]
        partition: String,
        #[arg(long)]
        force: bool,
    },
    Delete {
        #[arg(long)]
        partition: String,
        #[arg(long)]
        force: bool,
    },
    List,
}

#[derive(Subcommand)]
enum SysconfCommand {
    /// Make a new server certificate for the client link.
    RegenCert {
        #[arg(long, default_value = "hahsm")]
        common_name: String,
        /// Extra subject alternative names (host names or IP addresses).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Print the SHA-256 fingerprint of the server certificate.
    Fingerprint,
}

#[derive(Subcommand)]
enum ApplianceClientCommand {
    /// Register a client certificate (by file or by fingerprint).
    Register {
        #[arg(long)]
        client: String,
        #[arg(long, default_value = "")]
        hostname: String,
        #[arg(long, conflicts_with = "fingerprint")]
        cert: Option<PathBuf>,
        #[arg(long)]
        fingerprint: Option<String>,
    },
    Remove {
        #[arg(long)]
        client: String,
    },
    List,
    /// Allow a registered client to open a partition.
    AssignPartition {
        #[arg(long)]
        client: String,
        #[arg(long)]
        partition: String,
    },
    RevokePartition {
        #[arg(long)]
        client: String,
        #[arg(long)]
        partition: String,
    },
}

fn read_secret(path: &std::path::Path) -> anyhow::Result<Secret> {
    Ok(secrets::read_secret(path)?)
}

fn print_policies(lines: &[PolicyLine]) {
    println!("{:>4}  {:<30} {:<45} {:>5}", "#", "name", "description", "value");
    for l in lines {
        println!(
            "{:>4}  {:<30} {:<45} {:>5}",
            l.number, l.name, l.description, l.value
        );
    }
}

pub async fn run(args: ApplianceArgs) -> anyhow::Result<()> {
    let socket = admin_socket(args.socket.clone(), &args.data_dir);
    let mut admin = AdminClient::connect(&socket).await?;
    let request = match args.command {
        ApplianceCommand::Status => R::Status,
        ApplianceCommand::Hsm(c) => match c {
            HsmCommand::Init {
                label,
                so_secret,
                domain,
            } => {
                let (so, so_new) = secrets::read_or_generate(&so_secret)?;
                let mut made = vec![(so_new, so_secret.clone(), "SO")];
                let domain = match (&domain.domain_secret, domain.share.is_empty()) {
                    (Some(path), _) => {
                        let (secret, new) = secrets::read_or_generate(path)?;
                        made.push((new, path.clone(), "domain"));
                        DomainSecret::Whole(secret)
                    }
                    (None, false) => domain.required()?,
                    (None, true) => {
                        bail!("give --domain-secret FILE, or --share FILE for each of M domain shares")
                    }
                };
                for (new, path, what) in made {
                    let verb = if new { "wrote a new" } else { "using the existing" };
                    println!("{verb} {what} secret: {}", path.display());
                }
                R::HsmInit {
                    label,
                    so_secret: so,
                    domain_secret: domain,
                }
            }
            HsmCommand::Login { so_secret } => R::HsmLogin {
                so_secret: read_secret(&so_secret)?,
            },
            HsmCommand::Logout => R::HsmLogout,
            HsmCommand::ShowPolicies => R::HsmShowPolicies,
            HsmCommand::ChangePolicy { policy, value } => R::HsmChangePolicy { policy, value },
            HsmCommand::FactoryReset { force } => {
                if !force {
                    bail!("factory-reset erases every key on this member; add --force to go ahead");
                }
                R::FactoryReset
            }
        },
        ApplianceCommand::Partition(c) => match c {
            PartitionCommand::Create {
                partition,
                owner_secret,
                pin,
            } => {
                let (owner, new) = secrets::read_or_generate(&owner_secret)?;
                if new {
                    println!("wrote a new partition-owner secret: {}", owner_secret.display());
                }
                R::PartitionCreate {
                    name: partition,
                    owner_secret: owner,
                    initial_pin: pin.map(|p| Secret::from(p.as_str())),
                }
            }
            PartitionCommand::ChangePin {
                partition,
                old_pin,
                owner_secret,
                new_pin,
            } => R::PartitionChangePin {
                name: partition,
                old_pin: old_pin.map(|p| Secret::from(p.as_str())),
                owner_secret: owner_secret.as_deref().map(read_secret).transpose()?,
                new_pin: Secret::from(new_pin.as_str()),
            },
            PartitionCommand::ChangeSoPin {
                partition,
                owner_secret,
                new_pin,
            } => R::PartitionChangeSoPin {
                name: partition,
                owner_secret: read_secret(&owner_secret)?,
                new_pin: Secret::from(new_pin.as_str()),
            },
            PartitionCommand::Activate {
                partition,
                owner_secret,
            } => R::PartitionActivate {
                name: partition,
                owner_secret: read_secret(&owner_secret)?,
            },
            PartitionCommand::Deactivate { partition } => R::PartitionDeactivate { name: partition },
            PartitionCommand::ShowPolicies { partition } => R::PartitionShowPolicies { name: partition },
            PartitionCommand::ChangePolicy {
                partition,
                policy,
                value,
            } => R::PartitionChangePolicy {
                name: partition,
                policy,
                value,
            },
            PartitionCommand::ShowContents { partition } => R::PartitionShowContents { name: partition },
            PartitionCommand::Clear { partition, force } => {
                if !force {
                    bail!("clear destroys every object in '{partition}'; add --force to go ahead");
                }
                R::PartitionClear { name: partition }
            }
            PartitionCommand::Delete { partition, force } => {
                if !force {
                    bail!("delete removes partition '{partition}' and its objects; add --force to go ahead");
                }
                R::PartitionDelete { name: partition }
            }
            PartitionCommand::List => R::PartitionList,
        },
        ApplianceCommand::Sysconf(c) => match c {
            SysconfCommand::RegenCert { common_name, sans } => R::RegenCert {
                common_name,
                subject_alt_names: sans,
            },
            SysconfCommand::Fingerprint => R::Fingerprint,
        },
        ApplianceCommand::Client(c) => match c {
            ApplianceClientCommand::Register {
                client,
                hostname,
                cert,
                fingerprint,
            } => {
                let fingerprint = match (cert, fingerprint) {
                    (Some(path), _) => {
                        let der = hahsm_link::load_cert_pem(&path)
                            .with_context(|| format!("cannot read client certificate {}", path.display()))?;
                        hahsm_link::Fingerprint::of_der(&der).to_string()
                    }
                    (None, Some(fp)) => fp,
                    (None, None) => bail!("give the client's --cert FILE or --fingerprint"),
                };
                R::ClientRegister {
                    name: client,
                    hostname,
                    fingerprint,
                }
            }
            ApplianceClientCommand::Remove { client } => R::ClientRemove { name: client },
            ApplianceClientCommand::List => R::ClientList,
            ApplianceClientCommand::AssignPartition { client, partition } => {
                R::ClientAssignPartition { client, partition }
            }
            ApplianceClientCommand::RevokePartition { client, partition } => {
                R::ClientRevokePartition { client, partition }
            }
        },
    };
    print_response(admin.call(request).await?);
    Ok(())
}

fn print_response(response: AdminResponse) {
    match response {
        AdminResponse::Done(msg) => println!("{msg}"),
        AdminResponse::Status(s) => {
            println!(
                "HSM label:        {}",
                if s.initialized {
                    s.hsm_label.as_str()
                } else {
                    "(not initialized)"
                }
            );
            println!("serial:           {}", s.serial);
            println!("SO logged in:     {}", if s.so_logged_in { "yes" } else { "no" });
            println!("client link:      {}", s.listen);
            println!("fingerprint:      {}", s.fingerprint);
            println!("software version: {}", s.software_version);
            println!(
                "FIPS module:      {}",
                if s.fips { "yes (AWS-LC FIPS)" } else { "no" }
            );
            if let Some(peer) = s.peer_address {
                println!("peer listener:    {peer}");
            }
            println!("metrics:          {}", s.metrics.as_deref().unwrap_or("off"));
        }
        AdminResponse::Policies(lines) => print_policies(&lines),
        AdminResponse::Fingerprint(fp) => println!("SHA256 Fingerprint={fp}"),
        AdminResponse::PartitionCreated { serial, initial_pin } => {
            println!("partition created, serial {serial}");
            if let Some(pin) = initial_pin {
                println!("initial PIN: {}", String::from_utf8_lossy(pin.expose()));
                println!("change it with `hahsm appliance partition change-pin`");
            }
        }
        AdminResponse::Partitions(list) => {
            println!(
                "{:<20} {:>10} {:>10} {:>6} {:>8} {:>8}",
                "partition", "serial", "activated", "auto", "objects", "locked"
            );
            for p in list {
                println!(
                    "{:<20} {:>10} {:>10} {:>6} {:>8} {:>8}",
                    p.name,
                    p.serial,
                    yes(p.activated),
                    yes(p.auto_activation),
                    p.object_count,
                    yes(p.pin_locked)
                );
            }
        }
        AdminResponse::Contents(objects) => {
            println!(
                "{:<32}  {:<12} {:<15} {:<20} id",
                "object id", "class", "type", "label"
            );
            for o in &objects {
                println!(
                    "{:<32}  {:<12} {:<15} {:<20} {}",
                    o.ouid, o.class, o.key_type, o.label, o.id_hex
                );
            }
            println!("{} object(s)", objects.len());
        }
        AdminResponse::Clients(clients) => {
            for c in clients {
                println!(
                    "client {} (host {})",
                    c.name,
                    if c.hostname.is_empty() { "-" } else { &c.hostname }
                );
                println!("  fingerprint: {}", c.fingerprint);
                println!(
                    "  partitions:  {}",
                    if c.partitions.is_empty() {
                        "-".into()
                    } else {
                        c.partitions.join(", ")
                    }
                );
            }
        }
        AdminResponse::Groups(groups) => {
            for g in groups {
                println!(
                    "HA group '{}' serial {} ({} members)",
                    g.label,
                    g.serial,
                    g.members.len()
                );
            }
        }
        AdminResponse::Journal { lines, .. } => lines.iter().for_each(|l| println!("{l}")),
        AdminResponse::BackupPart { done, total, .. } => {
            println!("a part of a backup, {done} of {total} states (use `hahsm backup`)")
        }
        AdminResponse::RestoreProgress { done, total } => println!("restored {done} of {total} states"),
        AdminResponse::Error(msg) => eprintln!("{msg}"),
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
