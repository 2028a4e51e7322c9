//! Partition backups, streamed in encrypted chunks.
//!
//! A backup holds one partition's replicated state (every OUID's state:
//! objects, tombstones, ghosts and the reserved PIN records), the version
//! vector it covers, its policies and its PIN verifiers. It is written as a
//! head (magic and header, in clear) and chunks of at most
//! [`STATES_PER_CHUNK`] states (`hahsm_proto::backup_file` has the framing),
//! each sealed with AES-256-GCM under a key derived with HKDF from **both**
//! the domain secret and the partition-owner secret and the header's salt,
//! with the header, the chunk's number and whether it is the last as
//! associated data: a changed, missing, reordered or extra chunk refuses
//! the whole restore. The member seals and opens; key material never leaves
//! it in clear. Each admin call carries one chunk, so a partition of any
//! size backs up and restores in bounded memory on both sides.
//!
//! A backup is read page by page while the partition keeps serving, as a
//! peer's snapshot is: each chunk holds its states as they are when it is
//! read, which covers at least the version vector the header names (read
//! before the first chunk). Restoring joins the chunks' states and claims
//! that version vector only after the last chunk opened.
//!
//! A restored partition writes under a **new origin id**, not its member's
//! serial: its state may be older than what its peers hold from that serial,
//! and reused sequence numbers would be dropped by them as duplicates. Its
//! tombstones, and the group's, keep deleted keys deleted when it rejoins.
use crate::appliance::Appliance;
use crate::custody::check_domain;
use crate::error::{refuse, AdminError, AdminResult};
use crate::partition::{ActivePartition, StoredState};
use hahsm_crypto::{self as crypto, SealKey};
use hahsm_proto::admin::{BackupCursor, Blob, DomainSecret};
use hahsm_proto::backup_file::{self, MAGIC_V1, MAGIC_V2};
use hahsm_proto::Secret;
use hahsm_replica::VersionVector;
use hahsm_token::oplog::{Op, OpBody};
use hahsm_token::Ouid;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tracing::{info, warn};
use zeroize::Zeroize;

/// States per chunk: a chunk of private keys is a few megabytes, well inside
/// an admin frame.
pub const STATES_PER_CHUNK: usize = 1000;

#[derive(Serialize, Deserialize)]
struct HeaderV2 {
    partition: String,
    source_serial: u64,
    member: u64,
    created: String,
    /// The partition's live objects when the backup began (for progress).
    objects: u64,
    /// Every OUID with state when the backup began (for progress).
    states: u64,
    /// The version vector the backup covers.
    covers: Vec<(u64, u64)>,
    salt: [u8; 32],
}

/// The partition's own settings, in the first chunk.
#[derive(Serialize, Deserialize)]
struct Settings {
    policies: Vec<u8>,
    user_pin: Option<(Vec<u8>, Vec<u8>)>,
    so_pin: Option<(Vec<u8>, Vec<u8>)>,
}

/// One chunk, in clear: secrets inside are in clear, so it is zeroized once
/// sealed or read.
#[derive(Serialize, Deserialize)]
struct Chunk {
    settings: Option<Settings>,
    states: Vec<(Ouid, StoredState)>,
}

impl Chunk {
    fn wipe(mut self) {
        if let Some(s) = self.settings.as_mut() {
            for (a, b) in s.user_pin.iter_mut().chain(s.so_pin.iter_mut()) {
                a.zeroize();
                b.zeroize();
            }
        }
        for (_, state) in &mut self.states {
            if let Some(secret) = state.created.as_mut().and_then(|c| c.secret.as_mut()) {
                secret.zeroize();
            }
        }
    }
}

fn backup_key(domain: &[u8], owner: &[u8], salt: &[u8]) -> AdminResult<SealKey> {
    Ok(SealKey::new(crypto::hkdf_sha256(
        &[domain, owner],
        salt,
        b"hahsm/backup/v1",
        32,
    )?)?)
}

fn chunk_aad(header: &[u8], index: u64, last: bool) -> Vec<u8> {
    let mut aad = MAGIC_V2.to_vec();
    aad.extend_from_slice(&(header.len() as u32).to_le_bytes());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&index.to_le_bytes());
    aad.push(u8::from(last));
    aad
}

fn encode<T: Serialize>(v: &T) -> AdminResult<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| AdminError::Refused(e.to_string()))
}

fn refused_backup<T>() -> AdminResult<T> {
    refuse("the backup does not open: it was modified or damaged, or the domain or partition-owner secret is not the one it was made with")
}

/// One part of a backup: the bytes to append to the file, and where the
/// next part starts (none: the file is complete).
pub struct Part {
    pub bytes: Vec<u8>,
    pub cursor: Option<BackupCursor>,
    pub done: u64,
    pub total: u64,
}

/// The next part of a backup of partition `name`: the head and the first
/// chunk without a cursor, then the chunk after the cursor.
pub fn backup_part(
    app: &Appliance,
    name: &str,
    owner: &Secret,
    domain: &DomainSecret,
    cursor: Option<BackupCursor>,
) -> AdminResult<Part> {
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
    let (header_bytes, header, index, after, done, mut bytes) = match cursor {
        None => {
            let mut salt = [0u8; 32];
            salt.copy_from_slice(&crypto::random(32)?);
            let header = HeaderV2 {
                partition: name.to_string(),
                source_serial: row.serial,
                member: app.serial,
                created: hahsm_proto::utc::rfc3339_seconds(std::time::SystemTime::now()),
                objects: active.object_count() as u64,
                states: active.state_count() as u64,
                covers: active.version_vector().0.into_iter().collect(),
                salt,
            };
            let header_bytes = encode(&header)?;
            let head = backup_file::head(MAGIC_V2, &header_bytes);
            (header_bytes, header, 0, None, 0, head)
        }
        Some(c) => {
            let header: HeaderV2 = postcard::from_bytes(&c.header.0)
                .map_err(|_| AdminError::Refused("the backup cursor is malformed".into()))?;
            if header.partition != name || header.source_serial != row.serial {
                return refuse("the backup cursor belongs to another partition");
            }
            (
                c.header.0,
                header,
                c.index,
                Some(Ouid(c.after)),
                c.done,
                Vec::new(),
            )
        }
    };
    let (_, mut states, next) = active.snapshot_page(after, STATES_PER_CHUNK);
    for (ouid, state) in &mut states {
        if let Some(created) = state.created.as_mut() {
            if let Some(sealed) = created.secret.take() {
                created.secret = Some(active.open_secret(ouid, &sealed)?.expose().to_vec());
            }
        }
    }
    let settings = if index == 0 {
        let (user_pin, so_pin) = app.pin_verifiers(&row, &pmk)?;
        Some(Settings {
            policies: row.policies.clone(),
            user_pin,
            so_pin,
        })
    } else {
        None
    };
    let done = done + states.len() as u64;
    let chunk = Chunk { settings, states };
    let last = next.is_none();
    let mut plain = encode(&chunk);
    chunk.wipe();
    let key = backup_key(domain.expose(), owner.expose(), &header.salt)?;
    let sealed = match &plain {
        Ok(p) => key.seal(&chunk_aad(&header_bytes, index, last), p),
        Err(_) => return refuse("the backup chunk could not be encoded"),
    };
    if let Ok(p) = plain.as_mut() {
        p.zeroize();
    }
    bytes.extend(backup_file::record(last, &sealed?));
    if last {
        info!(
            partition = name,
            chunks = index + 1,
            states = done,
            "partition backed up"
        );
    }
    Ok(Part {
        bytes,
        cursor: next.map(|after| BackupCursor {
            header: Blob(header_bytes),
            index: index + 1,
            after: after.0,
            done,
        }),
        done,
        total: header.states.max(done),
    })
}

/// A chunked restore in progress on one admin connection.
pub struct Restore {
    name: String,
    owner: Secret,
    key: SealKey,
    header_bytes: Vec<u8>,
    covers: VersionVector,
    total: u64,
    next_index: u64,
    done: u64,
    /// The partition, once the first chunk made it.
    partition: Option<Arc<ActivePartition>>,
    finished: bool,
}

/// Starts restoring a chunked backup as the new partition `name`: checks the
/// secrets and the head; the partition is made by the first chunk.
pub fn restore_begin(
    app: &Appliance,
    name: &str,
    owner: &Secret,
    domain: &DomainSecret,
    head: &[u8],
) -> AdminResult<Restore> {
    app.require_so()?;
    let domain = check_domain(app, domain)?;
    let Some(header_bytes) = backup_file::parse_head(MAGIC_V2, head) else {
        return refuse("this is not a hahsm backup file (or not its beginning)");
    };
    let Ok(header) = postcard::from_bytes::<HeaderV2>(header_bytes) else {
        return refused_backup();
    };
    if app.store.get_partition(name)?.is_some() {
        return refuse(format!(
            "partition '{name}' already exists: restore onto a fresh partition name or member"
        ));
    }
    Ok(Restore {
        name: name.to_string(),
        owner: owner.clone(),
        key: backup_key(domain.expose(), owner.expose(), &header.salt)?,
        header_bytes: header_bytes.to_vec(),
        covers: VersionVector(header.covers.into_iter().collect()),
        total: header.states,
        next_index: 0,
        done: 0,
        partition: None,
        finished: false,
    })
}

impl Restore {
    /// Opens and installs the next chunk record. Any failure ends the
    /// restore: the caller aborts it.
    pub async fn chunk(&mut self, app: &Appliance, record: &[u8]) -> AdminResult<(u64, u64)> {
        if self.finished {
            return refuse("the backup's last chunk was already restored: end the restore");
        }
        let Some((last, sealed)) = backup_file::parse_record(record) else {
            return refused_backup();
        };
        let Ok(plain) = self
            .key
            .open(&chunk_aad(&self.header_bytes, self.next_index, last), sealed)
        else {
            warn!(partition = %self.name, chunk = self.next_index, "restore refused: a chunk does not open");
            return refused_backup();
        };
        let chunk: Chunk = postcard::from_bytes(plain.expose())
            .map_err(|_| AdminError::Refused("the backup's content is malformed".into()))?;
        drop(plain);
        let Chunk { settings, mut states } = chunk;
        if self.partition.is_none() {
            let Some(mut settings) = settings else {
                return refuse("the backup's first chunk holds no partition settings");
            };
            let made = self.make_partition(app, &mut settings);
            Chunk {
                settings: Some(settings),
                states: Vec::new(),
            }
            .wipe();
            self.partition = Some(made?);
        }
        let active = self
            .partition
            .clone()
            .ok_or_else(|| AdminError::Refused("the restored partition vanished".into()))?;
        for (ouid, state) in &mut states {
            if let Some(created) = state.created.as_mut() {
                if let Some(mut secret) = created.secret.take() {
                    let sealed = active.seal_secret(ouid, &secret);
                    secret.zeroize();
                    created.secret = Some(sealed?);
                }
            }
        }
        self.done += states.len() as u64;
        active.install_snapshot(states, None, u64::MAX).await?;
        self.next_index += 1;
        self.finished = last;
        Ok((self.done, self.total.max(self.done)))
    }

    /// Creates the partition with the backup's settings and activates it,
    /// writing under a new origin id.
    fn make_partition(&self, app: &Appliance, settings: &mut Settings) -> AdminResult<Arc<ActivePartition>> {
        let (serial, _) = app.partition_create(&self.name, &self.owner, None)?;
        let made = self.set_up_partition(app, serial, settings);
        if made.is_err() {
            // Made here, but not set up: nothing half-made stays.
            crate::replication::stop_group(app, &self.name);
            let _ = app.partition_delete(&self.name);
        }
        made
    }

    fn set_up_partition(
        &self,
        app: &Appliance,
        serial: u64,
        settings: &mut Settings,
    ) -> AdminResult<Arc<ActivePartition>> {
        let name = &self.name;
        let origin = app.new_origin(serial)?;
        let mut row = app
            .store
            .get_partition(name)?
            .ok_or_else(|| AdminError::Refused("the restored partition vanished".into()))?;
        row.policies = std::mem::take(&mut settings.policies);
        app.store.update_partition(&row)?;
        let pmk = app.partition_pmk(name, &self.owner)?;
        app.set_pin_verifiers(name, &pmk, settings.user_pin.take(), settings.so_pin.take())?;
        app.partition_activate(name, &self.owner)?;
        crate::replication::resume_activated(app, name);
        info!(partition = %name, origin, "restored partition writes under a new origin id");
        app.active_partition(name)
            .ok_or_else(|| AdminError::Refused(format!("partition '{name}' is not activated")))
    }

    /// The partition being restored.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends the restore once the last chunk is in: the partition then claims
    /// the version vector the backup covers. Returns its serial; on failure,
    /// the restore back, for the caller to abort.
    pub async fn end(mut self) -> Result<u64, (Restore, AdminError)> {
        let Some(active) = self.partition.clone().filter(|_| self.finished) else {
            return Err((
                self,
                AdminError::Refused(
                    "the backup ends before its last chunk: it was cut short, and is not restored".into(),
                ),
            ));
        };
        if let Err(e) = active
            .install_snapshot(Vec::new(), Some(&self.covers), u64::MAX)
            .await
        {
            return Err((self, e.into()));
        }
        info!(
            partition = %self.name,
            chunks = self.next_index,
            states = self.done,
            "partition restored from a backup"
        );
        self.partition = None;
        Ok(active.serial)
    }

    /// Leaves nothing half-restored behind: deletes the partition, if the
    /// first chunk made it.
    pub fn abort(mut self, app: &Appliance) {
        if self.partition.take().is_some() {
            warn!(partition = %self.name, "restore abandoned: the partition is deleted");
            crate::replication::stop_group(app, &self.name);
            if let Err(e) = app.partition_delete(&self.name) {
                warn!(partition = %self.name, error = %e, "could not delete the half-restored partition");
            }
        }
    }
}

// ----- format 1: one sealed record of the whole op log -----

#[derive(Serialize, Deserialize)]
struct HeaderV1 {
    partition: String,
    source_serial: u64,
    member: u64,
    created: String,
    ops: u64,
    salt: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct PayloadV1 {
    policies: Vec<u8>,
    user_pin: Option<(Vec<u8>, Vec<u8>)>,
    so_pin: Option<(Vec<u8>, Vec<u8>)>,
    ops: Vec<Op>,
}

fn wipe_v1(mut payload: PayloadV1) {
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

/// Restores a format-1 backup (made before chunked backups) as the new
/// partition `name`, replaying its op log under a new origin id.
pub async fn restore_v1(
    app: &Appliance,
    name: &str,
    owner: &Secret,
    domain: &DomainSecret,
    backup: &Blob,
) -> AdminResult<u64> {
    app.require_so()?;
    let domain = check_domain(app, domain)?;
    let Some(header_bytes) = backup_file::parse_head_prefix(MAGIC_V1, &backup.0) else {
        return refuse("this is not a hahsm backup file");
    };
    let sealed = &backup.0[backup_file::head(MAGIC_V1, header_bytes).len()..];
    let Ok(header) = postcard::from_bytes::<HeaderV1>(header_bytes) else {
        return refused_backup();
    };
    let mut aad = MAGIC_V1.to_vec();
    aad.extend_from_slice(header_bytes);
    let Ok(plain) = backup_key(domain.expose(), owner.expose(), &header.salt)?.open(&aad, sealed) else {
        warn!(partition = name, "restore refused: the backup does not open");
        return refused_backup();
    };
    let payload: PayloadV1 = postcard::from_bytes(plain.expose())
        .map_err(|_| AdminError::Refused("the backup's content is malformed".into()))?;
    drop(plain);
    if app.store.get_partition(name)?.is_some() {
        wipe_v1(payload);
        return refuse(format!(
            "partition '{name}' already exists: restore onto a fresh partition name or member"
        ));
    }
    let result = restore_v1_into(app, name, owner, payload).await;
    if result.is_err() && app.store.get_partition(name)?.is_some() {
        // Leave nothing half-restored behind.
        let _ = app.partition_delete(name);
        crate::replication::stop_group(app, name);
    }
    let serial = result?;
    info!(
        partition = name,
        from = %header.partition,
        source_serial = header.source_serial,
        ops = header.ops,
        "partition restored from a format-1 backup"
    );
    Ok(serial)
}

async fn restore_v1_into(
    app: &Appliance,
    name: &str,
    owner: &Secret,
    mut payload: PayloadV1,
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
