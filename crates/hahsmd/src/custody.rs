//! Custody of the cloning-domain secret, and partition backups.
//!
//! The domain secret reaches the member either whole (a secret file) or as M
//! shares of an M-of-N split (`hahsm domain split`), which the member combines
//! here, checks, and zeroizes after use. A member initialised from shares
//! records the split (id, M, N, never a share) and from then on wants M shares,
//! not the whole secret, to add a member to a group: the custodians must meet.
//!
//! A backup holds one partition's whole op log (so its tombstones too), its
//! policies and its PIN verifiers, encrypted as one AES-256-GCM record under a
//! key derived with HKDF from **both** the domain secret and the
//! partition-owner secret, with the file's header as associated data: a
//! changed byte anywhere refuses the whole file. The member encrypts; key
//! material never leaves it in clear.
//!
//! A restored partition writes under a **new origin id**, not its member's
//! serial: its op log may be older than what its peers hold from that serial,
//! and reused sequence numbers would be dropped by them as duplicates.
use crate::appliance::Appliance;
use crate::error::refuse;
use crate::error::{AdminError, AdminResult};
use hahsm_crypto::{self as crypto, shares, SealKey, SecretBytes};
use hahsm_proto::admin::{Blob, DomainSecret};
use hahsm_proto::Secret;
use hahsm_token::oplog::{Op, OpBody};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use zeroize::Zeroize;

const META_CUSTODY: &str = "hsm.domain_custody";
const BACKUP_MAGIC: &[u8; 16] = b"hahsm-backup-v1\n";

/// How this member's domain secret is held, when it came from shares.
#[derive(Debug, Serialize, Deserialize)]
struct SplitRecord {
    split_id: [u8; 16],
    threshold: u8,
    count: u8,
}

/// The whole domain secret from what the operator gave, and the split it
/// came from, if any.
pub fn resolve(input: &DomainSecret) -> AdminResult<(SecretBytes, Option<shares::ShareInfo>)> {
    match input {
        DomainSecret::Whole(s) => {
            if s.len() != crate::appliance::SECRET_LEN {
                return refuse("the domain secret must be 32 bytes (256 bits)");
            }
            Ok((SecretBytes::new(s.expose().to_vec()), None))
        }
        DomainSecret::Shares(list) => {
            let refs: Vec<&[u8]> = list.iter().map(Secret::expose).collect();
            let secret =
                shares::combine(&refs).map_err(|e| AdminError::Refused(format!("domain shares: {e}")))?;
            let info = shares::inspect(refs[0], 1).map_err(|e| AdminError::Refused(e.to_string()))?;
            Ok((secret, Some(info)))
        }
    }
}

/// Initialises the HSM into the domain given whole or as shares.
pub fn hsm_init(app: &Appliance, label: &str, so_secret: &Secret, domain: &DomainSecret) -> AdminResult<()> {
    let (secret, split) = resolve(domain)?;
    app.hsm_init(label, so_secret, &Secret::new(secret.expose().to_vec()))?;
    match split {
        Some(info) => {
            let record = SplitRecord {
                split_id: info.split_id,
                threshold: info.threshold,
                count: info.count,
            };
            app.store
                .put_meta(META_CUSTODY, &postcard::to_allocvec(&record).unwrap_or_default())?;
            info!(
                threshold = info.threshold,
                shares = info.count,
                "HSM initialised from domain shares"
            );
        }
        None => app.store.delete_meta(META_CUSTODY)?,
    }
    Ok(())
}

/// Forgets the split record (factory reset).
pub fn forget(app: &Appliance) -> AdminResult<()> {
    Ok(app.store.delete_meta(META_CUSTODY)?)
}

fn split_record(app: &Appliance) -> Option<SplitRecord> {
    app.store
        .get_meta(META_CUSTODY)
        .ok()
        .flatten()
        .and_then(|b| postcard::from_bytes(&b).ok())
}

/// Checks that the domain secret given is this member's (the SO logged in),
/// and returns it whole.
pub fn check_domain(app: &Appliance, input: &DomainSecret) -> AdminResult<SecretBytes> {
    let ours = app.so_domain_key()?;
    if let (DomainSecret::Whole(_), Some(r)) = (input, split_record(app)) {
        return refuse(format!(
            "this member's domain secret is held as {} of {} shares: give {} shares (--share FILE), not a whole secret",
            r.threshold, r.count, r.threshold
        ));
    }
    let (secret, _) = resolve(input)?;
    let given = crate::replication::keys::domain_key(secret.expose())?;
    if !crypto::ct_eq(given.expose(), ours.expose()) {
        warn!("refused: the domain secret given is not this member's");
        return refuse("the domain secret given is not this member's cloning domain");
    }
    Ok(secret)
}

/// Before `ha add-member`: a member whose domain is held in shares wants M of
/// them; otherwise the domain secret is optional, and checked if given.
pub fn authorize_add_member(app: &Appliance, input: Option<&DomainSecret>) -> AdminResult<()> {
    match (input, split_record(app)) {
        (Some(d), _) => check_domain(app, d).map(drop),
        (None, Some(r)) => refuse(format!(
            "adding a member needs the domain custodians: give {} of the {} domain shares (--share FILE)",
            r.threshold, r.count
        )),
        (None, None) => Ok(()),
    }
}

// ----- backups -----

#[derive(Serialize, Deserialize)]
struct BackupHeader {
    partition: String,
    source_serial: u64,
    member: u64,
    created: String,
    ops: u64,
    salt: [u8; 32],
}

/// The encrypted part. Secrets inside are in clear, so the whole payload is
/// zeroized once sealed or read.
#[derive(Serialize, Deserialize)]
struct BackupPayload {
    policies: Vec<u8>,
    user_pin: Option<(Vec<u8>, Vec<u8>)>,
    so_pin: Option<(Vec<u8>, Vec<u8>)>,
    /// The whole op log in log order, each secret in clear.
    ops: Vec<Op>,
}

fn backup_key(domain: &[u8], owner: &[u8], salt: &[u8]) -> AdminResult<SealKey> {
    Ok(SealKey::new(crypto::hkdf_sha256(
        &[domain, owner],
        salt,
        b"hahsm/backup/v1",
        32,
    )?)?)
}

fn header_aad(header_bytes: &[u8]) -> Vec<u8> {
    let mut aad = BACKUP_MAGIC.to_vec();
    aad.extend_from_slice(header_bytes);
    aad
}

/// Writes partition `name` into an encrypted backup.
pub fn backup(app: &Appliance, name: &str, owner: &Secret, domain: &DomainSecret) -> AdminResult<Blob> {
    app.require_so()?;
    let domain = check_domain(app, domain)?;
    let pmk = app.partition_pmk(name, owner)?;
    let active = app
        .active_partition(name)
        .ok_or_else(|| AdminError::Refused(format!("partition '{name}' is not activated")))?;
    let row = app
        .store
        .get_partition(name)?
        .ok_or_else(|| AdminError::Refused(format!("no partition named '{name}'")))?;
    let mut ops = Vec::new();
    let mut after = 0;
    loop {
        let rows = app.store.ops_since(row.id, after, 1000)?;
        let Some(last) = rows.last() else { break };
        after = last.index;
        for r in &rows {
            let mut op = active.open_op(r)?;
            if let OpBody::Create { objects } = &mut op.body {
                for o in objects {
                    if let Some(sealed) = o.sealed_secret.take() {
                        o.sealed_secret = Some(active.open_secret(&o.ouid, &sealed)?.expose().to_vec());
                    }
                }
            }
            ops.push(op);
        }
    }
    let (user_pin, so_pin) = app.pin_verifiers(&row, &pmk)?;
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&crypto::random(32)?);
    let header = BackupHeader {
        partition: name.to_string(),
        source_serial: row.serial,
        member: app.serial,
        created: hahsm_proto::utc::rfc3339_seconds(std::time::SystemTime::now()),
        ops: ops.len() as u64,
        salt,
    };
    let header_bytes = postcard::to_allocvec(&header).map_err(|e| AdminError::Refused(e.to_string()))?;
    let payload = BackupPayload {
        policies: row.policies.clone(),
        user_pin,
        so_pin,
        ops,
    };
    let mut plain = postcard::to_allocvec(&payload).map_err(|e| AdminError::Refused(e.to_string()))?;
    wipe(payload);
    let sealed = backup_key(domain.expose(), owner.expose(), &salt)?.seal(&header_aad(&header_bytes), &plain);
    plain.zeroize();
    let mut out = BACKUP_MAGIC.to_vec();
    out.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&sealed?);
    info!(partition = name, ops = header.ops, "partition backed up");
    Ok(Blob(out))
}

fn wipe(mut payload: BackupPayload) {
    for (a, b) in payload.user_pin.iter_mut().chain(payload.so_pin.iter_mut()) {
        a.zeroize();
        b.zeroize();
    }
    for op in &mut payload.ops {
        if let OpBody::Create { objects } = &mut op.body {
            for o in objects {
                if let Some(s) = o.sealed_secret.as_mut() {
                    s.zeroize();
                }
            }
        }
    }
}

fn refused_backup<T>() -> AdminResult<T> {
    refuse("the backup does not open: it was modified or damaged, or the domain or partition-owner secret is not the one it was made with")
}

/// Restores a backup as the new partition `name`, activated, writing under a
/// new origin id. Replicated into a group afterwards (`ha prepare`, then
/// `ha add-member` from a running member), it catches up on what happened since
/// the backup; its tombstones and the group's keep deleted keys deleted.
pub async fn restore(
    app: &Appliance,
    name: &str,
    owner: &Secret,
    domain: &DomainSecret,
    backup: &Blob,
) -> AdminResult<u64> {
    app.require_so()?;
    let domain = check_domain(app, domain)?;
    let bytes = &backup.0;
    if bytes.len() < BACKUP_MAGIC.len() + 4 || &bytes[..BACKUP_MAGIC.len()] != BACKUP_MAGIC {
        return refuse("this is not a hahsm backup file");
    }
    let rest = &bytes[BACKUP_MAGIC.len()..];
    let header_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let rest = &rest[4..];
    if header_len > rest.len() {
        return refused_backup();
    }
    let (header_bytes, sealed) = rest.split_at(header_len);
    let Ok(header) = postcard::from_bytes::<BackupHeader>(header_bytes) else {
        return refused_backup();
    };
    let Ok(plain) =
        backup_key(domain.expose(), owner.expose(), &header.salt)?.open(&header_aad(header_bytes), sealed)
    else {
        warn!(partition = name, "restore refused: the backup does not open");
        return refused_backup();
    };
    let payload: BackupPayload = postcard::from_bytes(plain.expose())
        .map_err(|_| AdminError::Refused("the backup's content is malformed".into()))?;
    drop(plain);
    if app.store.get_partition(name)?.is_some() {
        wipe(payload);
        return refuse(format!(
            "partition '{name}' already exists: restore onto a fresh partition name or member"
        ));
    }
    let result = restore_into(app, name, owner, payload).await;
    if result.is_err() {
        // Leave nothing half-restored behind.
        if app.store.get_partition(name)?.is_some() {
            let _ = app.partition_delete(name);
            crate::replication::stop_group(app, name);
        }
    }
    let serial = result?;
    info!(
        partition = name,
        from = %header.partition,
        source_serial = header.source_serial,
        ops = header.ops,
        "partition restored from a backup"
    );
    Ok(serial)
}

async fn restore_into(
    app: &Appliance,
    name: &str,
    owner: &Secret,
    mut payload: BackupPayload,
) -> AdminResult<u64> {
    let (serial, _) = app.partition_create(name, owner, None)?;
    let origin = app.new_origin(serial)?;
    let mut row = app
        .store
        .get_partition(name)?
        .ok_or_else(|| AdminError::Refused("the restored partition vanished".into()))?;
    row.policies = std::mem::take(&mut payload.policies);
    app.store.update_partition(&row)?;
    let pmk = app.partition_pmk(name, owner)?;
    app.set_pin_verifiers(name, &pmk, payload.user_pin.take(), payload.so_pin.take())?;
    app.partition_activate(name, owner)?;
    crate::replication::resume_activated(app, name);
    let active = app
        .active_partition(name)
        .ok_or_else(|| AdminError::Refused(format!("partition '{name}' is not activated")))?;
    let mut ops = std::mem::take(&mut payload.ops);
    for op in &mut ops {
        if let OpBody::Create { objects } = &mut op.body {
            for o in objects {
                if let Some(mut secret) = o.sealed_secret.take() {
                    let sealed = active.seal_secret(&o.ouid, &secret);
                    secret.zeroize();
                    o.sealed_secret = Some(sealed?);
                }
            }
        }
    }
    for chunk in ops.chunks(500) {
        let applied = active.apply_remote(chunk.to_vec(), u64::MAX).await?;
        if applied
            .iter()
            .any(|a| matches!(a, crate::partition::Applied::Gap { .. }))
        {
            return refuse("the backup's op log has a gap; it cannot be restored");
        }
    }
    info!(
        partition = name,
        origin, "restored partition writes under a new origin id"
    );
    Ok(serial)
}
