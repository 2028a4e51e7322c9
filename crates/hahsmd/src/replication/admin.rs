//! The group commands an operator runs on a member (`hahsm ha ...`):
//! prepare (dual control), create, add and remove members, show, synchronize;
//! and starting, resuming and stopping a partition's replication. The join
//! handshake's initiator side is here; the candidate's is in `peer.rs`.
use super::group::Group;
use super::halog::HaLog;
use super::keys::{
    aad, check_proof, group_meta, keys_meta, owner_key, prove, random32, replication_key, transcript,
    ReplicationKeys,
};
use crate::appliance::Appliance;
use crate::config::advertised;
use crate::error::{AdminError, AdminResult};
use crate::partition::ActivePartition;
use crate::sync::RecoverRw;
use hahsm_crypto as crypto;
use hahsm_link::Fingerprint;
use hahsm_proto::admin::GroupStatus;
use hahsm_proto::encode;
use hahsm_proto::peer::{GroupDef, GroupMember, PeerRequest, PeerResponse, PolicySnapshot, WriteConcern};
use hahsm_token::policy;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

pub(super) fn load_keys(app: &Appliance, p: &ActivePartition) -> Option<ReplicationKeys> {
    let sealed = app.store.get_meta(&keys_meta(&p.name)).ok().flatten()?;
    let plain = p
        .pmk()
        .open(&aad(b"hahsm/replication-keys/v1", p.serial), &sealed)
        .ok()?;
    postcard::from_bytes(plain.expose()).ok()
}

pub(super) fn load_group_def(app: &Appliance, p: &ActivePartition) -> Option<GroupDef> {
    let sealed = app.store.get_meta(&group_meta(&p.name)).ok().flatten()?;
    let plain = p.pmk().open(&aad(b"hahsm/group/v1", p.serial), &sealed).ok()?;
    postcard::from_bytes(plain.expose()).ok()
}

pub(super) fn save_group_def(app: &Appliance, p: &ActivePartition, def: &GroupDef) -> AdminResult<()> {
    let sealed = p.pmk().seal(&aad(b"hahsm/group/v1", p.serial), &encode(def))?;
    app.store.put_meta(&group_meta(&p.name), &sealed)?;
    Ok(())
}

/// `ha prepare`: derives and stores the partition's replication keys. Needs the
/// SO (for the domain secret) and the partition-owner secret: dual control.
pub fn prepare(app: &Appliance, partition: &str, owner_secret: &hahsm_proto::Secret) -> AdminResult<()> {
    let domain = app.so_domain_key()?;
    let hsm = app.hsm_policies()?;
    for (n, name) in [
        (policy::hsm::ALLOW_CLONING, "allow-cloning"),
        (
            policy::hsm::ALLOW_NETWORK_REPLICATION,
            "allow-network-replication",
        ),
    ] {
        if !hsm.enabled(n) {
            return Err(AdminError::Refused(format!(
                "HSM policy {n} ({name}) is off: replication needs it on"
            )));
        }
    }
    let pp = app.partition_policy_values(partition)?;
    for (n, name) in [
        (
            policy::partition::ALLOW_PRIVATE_KEY_CLONING,
            "allow-private-key-cloning",
        ),
        (
            policy::partition::ALLOW_SECRET_KEY_CLONING,
            "allow-secret-key-cloning",
        ),
    ] {
        if !pp.enabled(n) {
            return Err(AdminError::Refused(format!(
                "partition policy {n} ({name}) is off: replication needs it on"
            )));
        }
    }
    // Proves the owner secret is right for this partition before using it.
    app.partition_pmk(partition, owner_secret)?;
    let active = app
        .active_partition(partition)
        .ok_or_else(|| AdminError::Refused(format!("partition '{partition}' is not activated")))?;
    let keys = ReplicationKeys {
        domain: domain.expose().to_vec(),
        owner: owner_key(owner_secret.expose(), partition)?.expose().to_vec(),
    };
    let sealed = active
        .pmk()
        .seal(&aad(b"hahsm/replication-keys/v1", active.serial), &encode(&keys))?;
    app.store.put_meta(&keys_meta(partition), &sealed)?;
    info!(partition, "partition prepared for replication");
    Ok(())
}

/// This member as its peers and the clients must reach it: the addresses
/// are the advertised ones, never a wildcard (which would make a peer dial
/// itself).
pub(super) fn my_member(app: &Appliance, p: &ActivePartition, standby: bool) -> AdminResult<GroupMember> {
    let bound_peer = app.peer_address().ok_or_else(|| {
        AdminError::Refused("this member has no peer listener: set `peer_listen` in its config".into())
    })?;
    let advertise = app.config.advertise_address.as_deref();
    let peer_address = advertised(&bound_peer, advertise, "peer_listen").map_err(AdminError::Refused)?;
    let client_address =
        advertised(&app.client_address(), advertise, "listen").map_err(AdminError::Refused)?;
    Ok(GroupMember {
        serial: app.serial,
        hsm_label: app.hsm_label(),
        partition_serial: p.serial,
        peer_address,
        fingerprint: app
            .fingerprint()
            .map_err(|e| AdminError::Refused(e.to_string()))?,
        client_address,
        standby,
    })
}

pub(super) fn active_with_keys(
    app: &Appliance,
    partition: &str,
) -> AdminResult<(Arc<ActivePartition>, ReplicationKeys)> {
    let p = app
        .active_partition(partition)
        .ok_or_else(|| AdminError::Refused(format!("partition '{partition}' is not activated")))?;
    let keys = load_keys(app, &p).ok_or_else(|| {
        AdminError::Refused(format!(
            "partition '{partition}' is not prepared for replication: run `hahsm ha prepare` first"
        ))
    })?;
    Ok((p, keys))
}

pub fn create_group(
    app: &Appliance,
    label: &str,
    partition: &str,
    concern: WriteConcern,
    timeout_ms: u64,
) -> AdminResult<GroupStatus> {
    app.require_so()?;
    let (p, keys) = active_with_keys(app, partition)?;
    if load_group_def(app, &p).is_some() {
        return Err(AdminError::Refused(format!(
            "partition '{partition}' is already in an HA group"
        )));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&crypto::random(16)?);
    let serial =
        10_000_000 + u64::from_le_bytes(crypto::random(8)?.try_into().unwrap_or_default()) % 90_000_000;
    let def = GroupDef {
        id,
        label: label.to_string(),
        serial,
        partition: partition.to_string(),
        epoch: 1,
        members: vec![my_member(app, &p, false)?],
        write_concern: concern,
        replication_timeout_ms: timeout_ms,
    };
    save_group_def(app, &p, &def)?;
    let group = start(app, &p, def, keys)?;
    info!(label, serial, partition, "HA group created");
    Ok(group.status(&p))
}

fn find_group(app: &Appliance, label: &str) -> AdminResult<(Arc<Group>, Arc<ActivePartition>)> {
    let groups = app.groups.read_or_recover();
    for (partition, g) in groups.iter() {
        if g.def().label == label || g.def().serial.to_string() == label {
            let p = app
                .active_partition(partition)
                .ok_or_else(|| AdminError::Refused(format!("partition '{partition}' is not activated")))?;
            return Ok((g.clone(), p));
        }
    }
    Err(AdminError::Refused(format!(
        "no HA group '{label}' on this member"
    )))
}

/// `ha add-member`: runs the join handshake with the candidate at `address`,
/// whose certificate must have fingerprint `fingerprint`. The candidate must
/// prove it holds the same domain and partition-owner secrets, or it is
/// refused, with the secret that differs named.
pub async fn add_member(
    app: &Appliance,
    label: &str,
    address: &str,
    fingerprint: &str,
    standby: bool,
) -> AdminResult<GroupStatus> {
    app.require_so()?;
    let (group, p) = find_group(app, label)?;
    let def = group.def();
    let candidate_fp =
        Fingerprint::parse(fingerprint).map_err(|e| AdminError::Refused(format!("bad fingerprint: {e}")))?;
    let my_fp = Fingerprint::parse(
        &app.fingerprint()
            .map_err(|e| AdminError::Refused(e.to_string()))?,
    )
    .map_err(|e| AdminError::Refused(e.to_string()))?;
    let candidate = GroupMember {
        serial: 0,
        hsm_label: String::new(),
        partition_serial: 0,
        peer_address: address.to_string(),
        fingerprint: candidate_fp.to_string(),
        client_address: String::new(),
        standby,
    };
    let deadline = Duration::from_secs(10);
    let nonce = random32()?;
    let answer = group
        .call(
            &candidate,
            PeerRequest::JoinChallenge {
                group: def.clone(),
                nonce,
            },
            deadline,
        )
        .await
        .map_err(|e| {
            AdminError::Refused(format!(
                "the candidate at {address} refused or did not answer: {}",
                e.message
            ))
        })?;
    let PeerResponse::JoinProof {
        member,
        nonce: candidate_nonce,
        proof,
    } = answer
    else {
        return Err(AdminError::Refused("the candidate answered out of turn".into()));
    };
    let expected = prove(
        &group.keys,
        &transcript(
            b"candidate",
            &def,
            &nonce,
            &candidate_nonce,
            &my_fp,
            &candidate_fp,
        ),
    );
    if let Err(why) = check_proof(&expected, &proof, &format!("the member at {address}")) {
        warn!(address, "add-member refused: {why}");
        return Err(AdminError::Refused(format!("refused to add the member: {why}")));
    }
    if def
        .members
        .iter()
        .any(|m| m.serial == member.serial && m.fingerprint != candidate_fp.to_string())
    {
        return Err(AdminError::Refused(format!(
            "a member with serial {} is already in the group",
            member.serial
        )));
    }
    let mut new_def = def.clone();
    new_def.epoch += 1;
    new_def.members.retain(|m| m.serial != member.serial);
    new_def.members.push(GroupMember {
        standby,
        fingerprint: candidate_fp.to_string(),
        peer_address: address.to_string(),
        ..member
    });
    let my_proof = prove(
        &group.keys,
        &transcript(
            b"initiator",
            &def,
            &nonce,
            &candidate_nonce,
            &my_fp,
            &candidate_fp,
        ),
    );
    group
        .call(
            &candidate,
            PeerRequest::JoinConfirm {
                group: new_def.clone(),
                candidate_nonce,
                proof: my_proof,
            },
            deadline,
        )
        .await
        .map_err(|e| AdminError::Refused(format!("the candidate refused to join: {}", e.message)))?;
    save_group_def(app, &p, &new_def)?;
    *group.def.write_or_recover() = new_def.clone();
    group.broadcast_definition(&new_def).await;
    group.wake.notify_one();
    info!(label, address, "member added to HA group");
    Ok(group.status(&p))
}

pub async fn remove_member(app: &Appliance, label: &str, serial: u64) -> AdminResult<GroupStatus> {
    app.require_so()?;
    let (group, p) = find_group(app, label)?;
    let mut def = group.def();
    if serial == app.serial {
        return Err(AdminError::Refused(
            "remove a member from another member of the group".into(),
        ));
    }
    let before = def.members.len();
    def.members.retain(|m| m.serial != serial);
    if def.members.len() == before {
        return Err(AdminError::Refused(format!(
            "member {serial} is not in group '{label}'"
        )));
    }
    def.epoch += 1;
    save_group_def(app, &p, &def)?;
    *group.def.write_or_recover() = def.clone();
    group.broadcast_definition(&def).await;
    info!(label, serial, "member removed from HA group");
    Ok(group.status(&p))
}

pub fn show(app: &Appliance, label: Option<&str>) -> AdminResult<Vec<GroupStatus>> {
    let groups = app.groups.read_or_recover();
    let mut out = Vec::new();
    for (partition, g) in groups.iter() {
        if label.is_some_and(|l| g.def().label != l) {
            continue;
        }
        if let Some(p) = app.active_partition(partition) {
            out.push(g.status(&p));
        }
    }
    if out.is_empty() {
        return Err(AdminError::Refused(match label {
            Some(l) => format!("no HA group '{l}' on this member"),
            None => "this member is in no HA group".into(),
        }));
    }
    Ok(out)
}

/// `ha synchronize`: an immediate anti-entropy round with every peer. It can
/// only add what is missing: tombstones keep destroyed objects destroyed.
pub async fn synchronize(app: &Appliance, label: &str) -> AdminResult<GroupStatus> {
    let (group, p) = find_group(app, label)?;
    for m in group.others() {
        if !group.sync_with(&p, &m, Duration::from_secs(5)).await {
            group.missed(m.serial, label, Instant::now());
        }
    }
    Ok(group.status(&p))
}

pub(super) fn start(
    app: &Appliance,
    p: &Arc<ActivePartition>,
    def: GroupDef,
    keys: ReplicationKeys,
) -> AdminResult<Arc<Group>> {
    let repl_key = replication_key(&keys.domain, &keys.owner, &def)?;
    let identity = hahsm_link::load_identity(&app.config.cert_path(), &app.config.key_path())
        .map_err(|e| AdminError::Refused(e.to_string()))?;
    let (stop, _) = tokio::sync::watch::channel(false);
    let group = Arc::new(Group {
        def: RwLock::new(def),
        keys,
        repl_key,
        partition: Arc::downgrade(p),
        me: app.serial,
        peers: Mutex::new(HashMap::new()),
        conns: Mutex::new(HashMap::new()),
        identity,
        routes: app.config.peer_routes.clone(),
        ha_log: HaLog {
            dir: app.config.data_dir.clone(),
            monitor: app.monitor.clone(),
        },
        stop,
        wake: tokio::sync::Notify::new(),
        policies: RwLock::new(policy_snapshot(app, &p.name)),
        monitor: app.monitor.clone(),
        behind_since: Mutex::new(HashMap::new()),
        rules: app.config.replication.clone(),
        clock_origin: Instant::now(),
    });
    app.groups
        .write_or_recover()
        .insert(p.name.clone(), group.clone());
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(group.clone().run());
    }
    Ok(group)
}

/// At activation: if the partition belongs to a group, start replicating.
pub fn resume_group(app: &Appliance, p: &Arc<ActivePartition>) {
    let (Some(def), Some(keys)) = (load_group_def(app, p), load_keys(app, p)) else {
        return;
    };
    if def.member(app.serial).is_none() {
        info!(partition = %p.name, "this member was removed from its group; not replicating");
        return;
    }
    match start(app, p, def, keys) {
        Ok(g) => info!(partition = %p.name, group = %g.def().label, "replication resumed"),
        Err(e) => warn!(partition = %p.name, error = %e, "cannot resume replication"),
    }
}

/// After a partition was activated here: resumes its group, if it is in one
/// that does not run here yet.
pub fn resume_activated(app: &Appliance, partition: &str) {
    if group_of(app, partition).is_some() {
        return;
    }
    if let Some(p) = app.active_partition(partition) {
        resume_group(app, &p);
    }
}

/// At start-up: resumes the group of every partition activated by itself.
pub fn resume_all(app: &Appliance) {
    for p in app.active_partitions() {
        resume_activated(app, &p.name);
    }
}

/// Stops every group (the factory reset).
pub fn stop_all(app: &Appliance) {
    let running: Vec<String> = app.groups.read_or_recover().keys().cloned().collect();
    for partition in running {
        stop_group(app, &partition);
    }
}

/// After a partition was cleared here: gives the group the destruction of
/// every object, under its write concern.
pub async fn replicate_clear(app: &Appliance, partition: &str) -> AdminResult<()> {
    if let (Some(g), Some(p)) = (group_of(app, partition), app.active_partition(partition)) {
        g.replicate_write(&p).await?;
    }
    Ok(())
}

/// Stops replicating a partition: at deactivation, or when removed from its group.
pub fn stop_group(app: &Appliance, partition: &str) {
    if let Some(g) = app.groups.write_or_recover().remove(partition) {
        let _ = g.stop.send(true);
    }
}

/// This member's HSM policies and the partition's, as heartbeats carry them:
/// the value in force of every policy in the tables, so a policy a store
/// never recorded compares as the value it has, not as missing.
fn policy_snapshot(app: &Appliance, partition: &str) -> PolicySnapshot {
    let in_force = |table: &[policy::PolicyDef], p: policy::Policies| -> Vec<(u32, u64)> {
        table.iter().map(|d| (d.number, p.get(d.number))).collect()
    };
    PolicySnapshot {
        hsm: app
            .hsm_policies()
            .map(|p| in_force(policy::HSM_POLICIES, p))
            .unwrap_or_default(),
        partition: app
            .partition_policy_values(partition)
            .map(|p| in_force(policy::PARTITION_POLICIES, p))
            .unwrap_or_default(),
    }
}

/// Brings every group's copy of this member's policies up to date.
pub fn refresh_policies(app: &Appliance) {
    let groups: Vec<(String, Arc<Group>)> = app
        .groups
        .read_or_recover()
        .iter()
        .map(|(partition, g)| (partition.clone(), g.clone()))
        .collect();
    for (partition, g) in groups {
        let now = policy_snapshot(app, &partition);
        *g.policies.write_or_recover() = now;
    }
}

/// The group of a partition, if it is in one.
pub fn group_of(app: &Appliance, partition: &str) -> Option<Arc<Group>> {
    app.groups.read_or_recover().get(partition).cloned()
}
