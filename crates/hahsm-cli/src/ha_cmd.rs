//! `hahsm ha …`: HA groups, administered on a member's console (its admin
//! socket). The group definition lives on the members, not in clients'
//! configuration files, so no client can leave the group out of sync.
use crate::common::admin_socket;
use anyhow::bail;
use clap::{Args, Subcommand};
use hahsm_client::admin::AdminClient;
use hahsm_client::secrets;
use hahsm_proto::admin::{AdminRequest as R, AdminResponse, GroupStatus, MemberState};
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
        /// Acknowledge a write only once a majority of members holds it, and
        /// refuse writes unless a majority is reachable.
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
    /// Show the group as `hahsm monitor` does, once: each member's state,
    /// objects, replication lag and metrics URL, whether the group is in sync,
    /// and any policy drift between members. --sync-status adds the digests.
    Show {
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        sync_status: bool,
        /// Print JSON for scripts (each member's `metrics` URL included).
        #[arg(long)]
        json: bool,
    },
    /// Give other members one member's HSM and partition policies, through
    /// the ordinary change-policy commands on each member's console (the SO
    /// must be logged in there). The policies come from the source member's
    /// heartbeats, so it must be up.
    SyncPolicies {
        #[arg(long)]
        group: String,
        /// The member whose policies the others take: its serial or HSM label.
        #[arg(long)]
        from: String,
        /// The admin socket of a further member to apply them to (repeat for
        /// each); the member of --socket is always one of them.
        #[arg(long = "to-socket")]
        to_sockets: Vec<PathBuf>,
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
        HaCommand::SyncPolicies {
            group,
            from,
            to_sockets,
        } => {
            let mut targets = vec![socket];
            targets.extend(to_sockets);
            return sync_policies(&group, &from, &targets).await;
        }
    };
    let mut admin = AdminClient::connect(&socket).await?;
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
                print!("{}", crate::monitor_cmd::render_group(g, sync));
            }
        }
        other => bail!("unexpected answer {other:?}"),
    }
    Ok(())
}

async fn group_on(admin: &mut AdminClient, group: &str) -> anyhow::Result<GroupStatus> {
    match admin
        .call(R::HaShow {
            group: Some(group.to_string()),
        })
        .await?
    {
        AdminResponse::Groups(mut g) if !g.is_empty() => Ok(g.swap_remove(0)),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// `ha sync-policies`: on each target member, the policies whose value
/// differs from the source member's are set with the ordinary
/// `HsmChangePolicy` and `PartitionChangePolicy` requests.
async fn sync_policies(group: &str, from: &str, targets: &[PathBuf]) -> anyhow::Result<()> {
    for socket in targets {
        let mut admin = AdminClient::connect(socket).await?;
        let me = match admin.call(R::Status).await? {
            AdminResponse::Status(s) => s,
            other => bail!("unexpected answer {other:?}"),
        };
        let g = group_on(&mut admin, group).await?;
        let source = g
            .members
            .iter()
            .find(|m| m.serial.to_string() == from || m.name == from)
            .ok_or_else(|| anyhow::anyhow!("no member '{from}' in HA group '{}'", g.label))?;
        if source.serial == me.serial {
            println!(
                "member {} ({}) is the source: nothing to change",
                me.serial, me.hsm_label
            );
            continue;
        }
        if source.state == MemberState::Down || source.policies.is_empty() {
            bail!(
                "member {} ({}) is {}: its policies are not known for sure; bring it back first",
                source.serial,
                source.name,
                if source.state == MemberState::Down {
                    "down"
                } else {
                    "not heard from yet"
                }
            );
        }
        let mine = g
            .members
            .iter()
            .find(|m| m.serial == me.serial)
            .ok_or_else(|| anyhow::anyhow!("this member is not in HA group '{}'", g.label))?;
        let differs = |theirs: &[(u32, u64)], ours: &[(u32, u64)]| -> Vec<(u32, u64)> {
            theirs
                .iter()
                .filter(|(n, v)| ours.iter().find(|(k, _)| k == n).map(|(_, w)| w) != Some(v))
                .copied()
                .collect()
        };
        let hsm = differs(&source.policies.hsm, &mine.policies.hsm);
        let partition = differs(&source.policies.partition, &mine.policies.partition);
        if hsm.is_empty() && partition.is_empty() {
            println!(
                "member {} ({}) already has the policies of member {} ({})",
                me.serial, me.hsm_label, source.serial, source.name
            );
            continue;
        }
        for (number, value) in hsm {
            admin
                .call(R::HsmChangePolicy {
                    policy: number.to_string(),
                    value,
                })
                .await
                .map_err(|e| anyhow::anyhow!("member {}: HSM policy {number}: {e}", me.serial))?;
            println!(
                "member {} ({}): HSM policy {number} set to {value}",
                me.serial, me.hsm_label
            );
        }
        for (number, value) in partition {
            admin
                .call(R::PartitionChangePolicy {
                    name: g.partition.clone(),
                    policy: number.to_string(),
                    value,
                })
                .await
                .map_err(|e| anyhow::anyhow!("member {}: partition policy {number}: {e}", me.serial))?;
            println!(
                "member {} ({}): partition {} policy {number} set to {value}",
                me.serial, me.hsm_label, g.partition
            );
        }
    }
    // The members learn of each other's new policies with the next
    // heartbeats: wait briefly for the first member's view to agree.
    let mut admin = AdminClient::connect(&targets[0]).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let g = group_on(&mut admin, group).await?;
        if g.policy_drift.is_empty() {
            println!("policies: the same on every member");
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            println!("policies still differ (members not given with --to-socket keep theirs):");
            for line in &g.policy_drift {
                println!("  {line}");
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
