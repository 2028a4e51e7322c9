//! `hahsm ha …`: HA groups, administered on a member's console (its admin
//! socket). The group definition lives on the members, not in clients'
//! configuration files, so no client can leave the group out of sync.
use crate::appliance_cmd::admin_socket;
use anyhow::bail;
use clap::{Args, Subcommand};
use hahsm_client::admin::AdminClient;
use hahsm_client::secrets;
use hahsm_proto::admin::{AdminRequest as R, AdminResponse, GroupStatus};
use std::path::PathBuf;

#[derive(Args)]
pub struct HaArgs {
    /// The member's admin socket [env: HAHSM_ADMIN_SOCKET; default: <data-dir>/admin.sock]
    #[arg(long, env = "HAHSM_ADMIN_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// The member's data directory, to find its admin socket.
    #[arg(long, env = "HAHSM_DATA_DIR", default_value = "/var/lib/hahsm", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: HaCommand,
}

#[derive(Subcommand)]
enum HaCommand {
    /// Prepare a partition for replication on this member: derives its keys from
    /// the domain secret (the SO must be logged in) and the partition-owner secret.
    Prepare {
        #[arg(long)]
        partition: String,
        #[arg(long)]
        owner_secret: PathBuf,
    },
    /// Create a group with this member's partition as its first member.
    CreateGroup {
        #[arg(long)]
        label: String,
        #[arg(long)]
        partition: String,
        /// Refuse writes unless a majority of members is reachable.
        #[arg(long)]
        quorum: bool,
        /// How long a write waits for the other members, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        replication_timeout_ms: u64,
    },
    /// Add a member: it must prove it holds the same domain and partition-owner secrets.
    AddMember {
        #[arg(long)]
        group: String,
        /// The new member's peer listener, host:port.
        #[arg(long)]
        address: String,
        /// The new member's certificate fingerprint (its `sysconf fingerprint`).
        #[arg(long)]
        fingerprint: String,
        /// The domain secret, checked against this member's; M shares are
        /// required when this member was initialised from shares.
        #[command(flatten)]
        domain: crate::custody_cmd::DomainArgs,
    },
    /// Add a standby member: it receives every object but serves no crypto
    /// while an active member is up.
    AddStandby {
        #[arg(long)]
        group: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        fingerprint: String,
        #[command(flatten)]
        domain: crate::custody_cmd::DomainArgs,
    },
    RemoveMember {
        #[arg(long)]
        group: String,
        /// The member's serial.
        #[arg(long)]
        serial: u64,
    },
    /// Show the group; with --sync-status, each member's state, object count and digest.
    Show {
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        sync_status: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Run an anti-entropy round with every member now. It only adds what is
    /// missing: deleted objects stay deleted.
    Synchronize {
        #[arg(long)]
        group: String,
    },
}

pub async fn run(args: HaArgs) -> anyhow::Result<()> {
    let socket = admin_socket(args.socket.clone(), &args.data_dir);
    let mut admin = AdminClient::connect(&socket).await?;
    let (request, json, sync) = match args.command {
        HaCommand::Prepare {
            partition,
            owner_secret,
        } => (
            R::HaPrepare {
                partition,
                owner_secret: secrets::read_secret(&owner_secret)?,
            },
            false,
            false,
        ),
        HaCommand::CreateGroup {
            label,
            partition,
            quorum,
            replication_timeout_ms,
        } => (
            R::HaCreateGroup {
                label,
                partition,
                quorum,
                replication_timeout_ms,
            },
            false,
            true,
        ),
        HaCommand::AddMember {
            group,
            address,
            fingerprint,
            domain,
        } => (
            R::HaAddMember {
                group,
                peer_address: address,
                fingerprint,
                standby: false,
                domain: domain.read()?,
            },
            false,
            true,
        ),
        HaCommand::AddStandby {
            group,
            address,
            fingerprint,
            domain,
        } => (
            R::HaAddMember {
                group,
                peer_address: address,
                fingerprint,
                standby: true,
                domain: domain.read()?,
            },
            false,
            true,
        ),
        HaCommand::RemoveMember { group, serial } => (R::HaRemoveMember { group, serial }, false, true),
        HaCommand::Show {
            group,
            sync_status,
            json,
        } => (R::HaShow { group }, json, sync_status),
        HaCommand::Synchronize { group } => (R::HaSynchronize { group }, false, true),
    };
    match admin.call(request).await? {
        AdminResponse::Done(msg) => println!("{msg}"),
        AdminResponse::Groups(groups) if json => {
            let value = if groups.len() == 1 {
                serde_json::to_value(&groups[0])?
            } else {
                serde_json::to_value(&groups)?
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        AdminResponse::Groups(groups) => {
            for g in &groups {
                print_group(g, sync);
            }
        }
        other => bail!("unexpected answer {other:?}"),
    }
    Ok(())
}

fn print_group(g: &GroupStatus, sync: bool) {
    println!(
        "HA group '{}'  serial {}  partition {}  write concern {}",
        g.label, g.serial, g.partition, g.write_concern
    );
    if sync {
        println!(
            "{:<16} {:>10} {:<8} {:>8}  {:<16} peer",
            "member", "serial", "state", "objects", "digest"
        );
        for m in &g.members {
            println!(
                "{:<16} {:>10} {:<8} {:>8}  {:<16} {}",
                m.name,
                m.serial,
                m.state,
                m.object_count,
                &m.digest[..m.digest.len().min(16)],
                m.peer_address
            );
        }
        println!("in sync: {}", if g.in_sync { "yes" } else { "NO" });
        if !g.in_sync {
            for line in differences(g) {
                println!("  {line}");
            }
        }
    } else {
        for m in &g.members {
            println!("  member {} ({}) {}", m.serial, m.name, m.state);
        }
    }
}

/// What each member lacks compared with the most advanced member, per origin:
/// the operations it has not applied yet, and whether its content differs.
fn differences(g: &GroupStatus) -> Vec<String> {
    let mut best: std::collections::BTreeMap<u64, u64> = Default::default();
    for m in &g.members {
        for (origin, seq) in &m.version_vector {
            let e = best.entry(*origin).or_default();
            *e = (*e).max(*seq);
        }
    }
    let mut out = Vec::new();
    for m in &g.members {
        if m.state == "down" {
            out.push(format!("member {} ({}) is down", m.serial, m.name));
            continue;
        }
        let have: std::collections::BTreeMap<u64, u64> = m.version_vector.iter().copied().collect();
        for (origin, top) in &best {
            let mine = have.get(origin).copied().unwrap_or(0);
            if mine < *top {
                out.push(format!(
                    "member {} ({}) lacks {} operation(s) from member {origin} (has {mine}, the group has {top})",
                    m.serial,
                    m.name,
                    top - mine
                ));
            }
        }
        if m.state == "lagging" {
            out.push(format!("member {} ({}) is lagging", m.serial, m.name));
        }
    }
    let digests: std::collections::BTreeSet<&str> = g
        .members
        .iter()
        .filter(|m| m.state != "down")
        .map(|m| m.digest.as_str())
        .collect();
    if digests.len() > 1 && out.is_empty() {
        out.push("members hold different objects or attributes at the same version (digests differ)".into());
    }
    out
}
