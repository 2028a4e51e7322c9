//! An activated partition: its master key in memory, its replicated state (the
//! pure engine of `hahsm_replica`), a cache of its live objects for the hot
//! path, and the one write path that local writes and replicated operations
//! share.
//!
//! In the store, each OUID is one row holding its replicated state (creation,
//! attributes with their stamps, or a tombstone), sealed as one AES-256-GCM
//! record under the partition master key (PMK), with the partition serial, the
//! OUID and the row's version as associated data: a row moved to another object
//! or replaced by an older version fails to open. Key material inside the state
//! is sealed once more on its own, so it stays sealed in memory until a key is
//! first used. A sealed digest over the set of (OUID, version) pairs catches a
//! row deleted or rolled back behind the daemon's back at activation.
//!
//! Over 800 lines with its tests, on purpose: the write path's invariant
//! (memory changes only after the store commits, in `persist`) and the
//! integrity digest it keeps are easier to check with everything that
//! touches them in one file.
use crate::key_cache::KeyCache;
use crate::object_index::{Candidates, ObjectIndex};
use crate::recent_ops::RecentOps;
use crate::sync::{Recover, RecoverRw};
use hahsm_crypto::{
    self as crypto, Curve, KeyMaterial, LoadedKey, MlDsaSet, MlKemSet, PublicKey, SealKey, SecretBytes,
};
use hahsm_replica::{ObjectState, Plan, Replica, VersionVector};
use hahsm_store::{ObjectRow, OpRow, PartitionRow, Store, Write};
use hahsm_token::oplog::{NewObject, Op, OpBody, Stamp};
use hahsm_token::{ck, Hlc, MemberId, Ouid, Template, TokenError, TokenResult};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use zeroize::Zeroize;

/// The first bytes of every reserved record's OUID (`crate::pin_records`).
/// Object OUIDs are random or derived by a hash (`keyops::derive_ouid`),
/// never this.
pub const RESERVED_PREFIX: [u8; 7] = *b"\xffhahsm\x00";

/// Whether an OUID names a reserved record rather than an object.
pub fn is_reserved(ouid: &Ouid) -> bool {
    ouid.0[..RESERVED_PREFIX.len()] == RESERVED_PREFIX
}

/// The state of one OUID as the store keeps it; the secret is sealed under the PMK.
pub type StoredState = ObjectState<Vec<u8>>;

tokio::task_local! {
    /// For a client's write: the moment its client gives up. A local write
    /// made after it is refused (see `server::time_left`).
    pub static COMMIT_BY: std::time::Instant;
}

/// One live object, as request handlers see it.
pub struct ObjectEntry {
    pub ouid: Ouid,
    /// Never holds secret components; those stay in the sealed secret.
    pub attrs: Template,
    sealed_secret: Option<Vec<u8>>,
    loaded: OnceLock<Arc<LoadedKey>>,
}

impl ObjectEntry {
    pub fn class(&self) -> u64 {
        self.attrs.class().unwrap_or(ck::CKO_DATA)
    }

    pub fn is_private(&self) -> bool {
        self.attrs.flag(ck::CKA_PRIVATE, false)
    }

    fn from_state(ouid: Ouid, state: &StoredState) -> ObjectEntry {
        ObjectEntry {
            ouid,
            attrs: state.template(),
            sealed_secret: state.created.as_ref().and_then(|c| c.secret.clone()),
            loaded: OnceLock::new(),
        }
    }
}

/// The live objects, indexed by the attributes applications find them by
/// (`crate::object_index`): a partition may hold a million objects.
#[derive(Default)]
struct LiveObjects {
    /// In OUID order, so that a find without an indexed attribute walks them
    /// in the order it answers in.
    by_ouid: BTreeMap<Ouid, Arc<ObjectEntry>>,
    index: ObjectIndex,
    /// The partition's own records (PINs, failed-login counts; see
    /// `crate::pins`): replicated and digested as objects are, but never
    /// found, counted, listed or cleared as objects.
    reserved: HashMap<Ouid, Arc<ObjectEntry>>,
}

impl LiveObjects {
    fn insert(&mut self, entry: Arc<ObjectEntry>) {
        self.remove(&entry.ouid);
        if is_reserved(&entry.ouid) {
            self.reserved.insert(entry.ouid, entry);
            return;
        }
        self.index.insert(entry.ouid, &entry.attrs);
        self.by_ouid.insert(entry.ouid, entry);
    }

    fn remove(&mut self, ouid: &Ouid) {
        self.reserved.remove(ouid);
        if let Some(old) = self.by_ouid.remove(ouid) {
            self.index.remove(ouid, &old.attrs);
        }
    }

    /// The objects matching `filter`, in OUID order: through the smallest
    /// index set the filter names, by a walk of every object otherwise.
    fn find(&self, filter: &Template, logged_in: bool, limit: usize) -> Vec<Ouid> {
        let visible = |o: &&Arc<ObjectEntry>| (logged_in || !o.is_private()) && o.attrs.matches(filter);
        match self.index.candidates(filter) {
            Candidates::None => Vec::new(),
            Candidates::Some(set) => set
                .iter()
                .filter_map(|o| self.by_ouid.get(o))
                .filter(visible)
                .map(|o| o.ouid)
                .take(limit)
                .collect(),
            Candidates::All => self
                .by_ouid
                .values()
                .filter(visible)
                .map(|o| o.ouid)
                .take(limit)
                .collect(),
        }
    }
}

/// The content digest and each live object's term in it.
type ContentDigest = ([u8; 32], HashMap<Ouid, [u8; 32]>);

/// What one replicated operation did, for the replication runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    Duplicate,
    Gap { expected: u64 },
}

struct WriteState {
    next_seq: u64,
    digest: [u8; 32],
    /// The store row version of every OUID with state.
    versions: HashMap<Ouid, u64>,
}

pub struct ActivePartition {
    pub id: i64,
    pub name: String,
    pub serial: u64,
    pmk: SealKey,
    member: MemberId,
    hlc: Arc<Mutex<Hlc>>,
    store: Arc<Store>,
    replica: RwLock<Replica<Vec<u8>>>,
    /// The content digest (XOR of each live object's canonical hash) and each
    /// live object's term, kept up to date one changed object at a time, so
    /// heartbeats never rehash the whole partition.
    content: Mutex<ContentDigest>,
    live: RwLock<LiveObjects>,
    writes: tokio::sync::Mutex<WriteState>,
    /// The latest committed operations, for pushes to read without the store.
    recent: Mutex<RecentOps>,
    /// Per origin, the operations the log no longer holds (compacted, or
    /// covered by a peer's snapshot): a peer that lacks any of them catches
    /// up from this member's snapshot instead.
    floor: Mutex<VersionVector>,
    max_objects: usize,
    /// The parsed keys of token objects, bounded (`crate::key_cache`).
    keys: KeyCache,
    /// Local writes waiting for the write lock, committed together by
    /// whichever writer takes it (`write_local`).
    queued: Mutex<Vec<QueuedWrite>>,
    commits: AtomicU64,
    committed_writes: AtomicU64,
    /// Snapshots from peers installed since activation.
    snapshots: AtomicU64,
}

/// A local write waiting to be committed, and where its writer waits.
struct QueuedWrite {
    body: OpBody,
    client_op_id: Option<[u8; 16]>,
    commit_by: Option<std::time::Instant>,
    done: tokio::sync::oneshot::Sender<TokenResult<()>>,
}

fn aad(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = label.to_vec();
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

fn record_aad(serial: u64, ouid: &Ouid, version: u64) -> Vec<u8> {
    aad(
        b"hahsm/object/v2",
        &[&serial.to_le_bytes(), ouid.as_bytes(), &version.to_le_bytes()],
    )
}

fn secret_aad(serial: u64, ouid: &Ouid) -> Vec<u8> {
    aad(b"hahsm/secret/v1", &[&serial.to_le_bytes(), ouid.as_bytes()])
}

fn digest_aad(serial: u64) -> Vec<u8> {
    aad(b"hahsm/digest/v1", &[&serial.to_le_bytes()])
}

fn op_aad(serial: u64, origin: MemberId, seq: u64) -> Vec<u8> {
    aad(
        b"hahsm/op/v1",
        &[&serial.to_le_bytes(), &origin.to_le_bytes(), &seq.to_le_bytes()],
    )
}

/// The contribution of one row version to the partition's integrity digest.
fn digest_term(ouid: &Ouid, version: u64) -> [u8; 32] {
    let mut buf = ouid.as_bytes().to_vec();
    buf.extend_from_slice(&version.to_le_bytes());
    crypto::sha256(&buf)
}

fn xor_into(acc: &mut [u8; 32], term: &[u8; 32]) {
    acc.iter_mut().zip(term).for_each(|(a, t)| *a ^= t);
}

fn integrity_error(what: &str) -> TokenError {
    TokenError::DeviceError(format!("store integrity check failed: {what}"))
}

fn encode<T: serde::Serialize>(v: &T) -> TokenResult<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| TokenError::FunctionFailed(format!("cannot encode: {e}")))
}

impl ActivePartition {
    /// Loads and decrypts every row of the partition and checks the sealed
    /// digest. A row that does not open, or a digest that does not match,
    /// refuses the activation: a tampered store is never served.
    pub fn open(
        store: Arc<Store>,
        row: &PartitionRow,
        pmk: SealKey,
        member: MemberId,
        hlc: Arc<Mutex<Hlc>>,
        max_objects: usize,
        key_cache_entries: usize,
    ) -> TokenResult<ActivePartition> {
        let rows = store.load_objects(row.id)?;
        let mut states = Vec::with_capacity(rows.len());
        let mut versions = HashMap::with_capacity(rows.len());
        let mut digest = [0u8; 32];
        for r in rows {
            let ouid = Ouid(r.ouid);
            let mut plain = pmk
                .open(&record_aad(row.serial, &ouid, r.version), &r.sealed)
                .map_err(|_| integrity_error(&format!("object {ouid} does not decrypt")))?;
            let state: StoredState = postcard::from_bytes(plain.expose())
                .map_err(|_| integrity_error(&format!("object {ouid} is malformed")))?;
            drop(std::mem::replace(&mut plain, SecretBytes::new(Vec::new())));
            xor_into(&mut digest, &digest_term(&ouid, r.version));
            versions.insert(ouid, r.version);
            states.push((ouid, state));
        }
        let stored_digest: [u8; 32] = if row.digest.is_empty() {
            [0u8; 32]
        } else {
            let d = pmk
                .open(&digest_aad(row.serial), &row.digest)
                .map_err(|_| integrity_error("the partition digest does not decrypt"))?;
            d.expose()
                .try_into()
                .map_err(|_| integrity_error("the partition digest is malformed"))?
        };
        if !crypto::ct_eq(&stored_digest, &digest) {
            return Err(integrity_error(
                "objects were removed or rolled back outside hahsm",
            ));
        }
        let vv = VersionVector(store.version_vector(row.id)?.into_iter().collect());
        let floor = VersionVector(store.log_floor(row.id)?.into_iter().collect());
        let (wall_ms, logical) = store.max_hlc(row.id)?;
        {
            let mut clock = hlc.lock_or_recover();
            *clock = (*clock).max(Hlc { wall_ms, logical });
        }
        let next_seq = vv.get(member) + 1;
        let replica = Replica::restore(vv, states);
        let mut content = ([0u8; 32], HashMap::new());
        for (ouid, _) in replica.live() {
            if let Some(term) = content_term(&replica, ouid) {
                xor_into(&mut content.0, &term);
                content.1.insert(*ouid, term);
            }
        }
        let mut live = LiveObjects::default();
        for (o, s) in replica.live() {
            live.insert(Arc::new(ObjectEntry::from_state(*o, s)));
        }
        Ok(ActivePartition {
            id: row.id,
            name: row.name.clone(),
            serial: row.serial,
            pmk,
            member,
            hlc,
            store,
            replica: RwLock::new(replica),
            content: Mutex::new(content),
            live: RwLock::new(live),
            writes: tokio::sync::Mutex::new(WriteState {
                next_seq,
                digest,
                versions,
            }),
            recent: Mutex::default(),
            floor: Mutex::new(floor),
            max_objects,
            keys: KeyCache::new(key_cache_entries),
            queued: Mutex::default(),
            commits: AtomicU64::new(0),
            committed_writes: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
        })
    }

    /// (keys parsed now, keys parsed since activation) of the key cache.
    pub fn key_cache_stats(&self) -> (u64, u64) {
        self.keys.stats()
    }

    pub fn pmk(&self) -> &SealKey {
        &self.pmk
    }

    pub fn member(&self) -> MemberId {
        self.member
    }

    fn live_read(&self) -> std::sync::RwLockReadGuard<'_, LiveObjects> {
        self.live.read_or_recover()
    }

    fn replica_read(&self) -> std::sync::RwLockReadGuard<'_, Replica<Vec<u8>>> {
        self.replica.read_or_recover()
    }

    /// Every OUID with state: live objects, ghosts, tombstones and reserved records.
    pub fn state_count(&self) -> usize {
        self.replica_read().states().count()
    }

    pub fn object_count(&self) -> usize {
        self.live_read().by_ouid.len()
    }

    pub fn get(&self, ouid: &Ouid) -> Option<Arc<ObjectEntry>> {
        self.live_read().by_ouid.get(ouid).cloned()
    }

    /// Object ids matching `filter`, private objects only when `logged_in`.
    pub fn find(&self, filter: &Template, logged_in: bool, limit: usize) -> Vec<Ouid> {
        // In OUID order, so paging and listings do not jump around.
        self.live_read().find(filter, logged_in, limit)
    }

    /// One of the partition's own records (see `crate::pins`).
    pub fn reserved(&self, ouid: &Ouid) -> Option<Arc<ObjectEntry>> {
        self.live_read().reserved.get(ouid).cloned()
    }

    /// Every one of the partition's own records.
    pub fn reserved_all(&self) -> Vec<Arc<ObjectEntry>> {
        self.live_read().reserved.values().cloned().collect()
    }

    pub fn all(&self) -> Vec<Arc<ObjectEntry>> {
        // In OUID order, as they are kept.
        self.live_read().by_ouid.values().cloned().collect()
    }

    pub fn version_vector(&self) -> VersionVector {
        self.replica_read().version_vector().clone()
    }

    /// A digest of the live objects and their attributes: equal on two members
    /// exactly when they hold the same objects with the same attributes.
    pub fn content_digest(&self) -> [u8; 32] {
        self.content.lock_or_recover().0
    }

    /// A new object for this partition, with its secret sealed under the PMK:
    /// for token objects before they are written, and for session objects,
    /// which never are.
    pub fn new_entry(&self, ouid: Ouid, attrs: Template, secret: Option<&[u8]>) -> TokenResult<ObjectEntry> {
        let sealed_secret = match secret {
            Some(s) => Some(self.pmk.seal(&secret_aad(self.serial, &ouid), s)?),
            None => None,
        };
        Ok(ObjectEntry {
            ouid,
            attrs,
            sealed_secret,
            loaded: OnceLock::new(),
        })
    }

    /// The key of an object, parsed once and cached: a token object's in the
    /// partition's bounded cache, a session object's (or a public key's,
    /// which holds no secret) with its entry, for as long as the entry lives.
    pub fn key(&self, entry: &ObjectEntry) -> TokenResult<Arc<LoadedKey>> {
        if let (Some(sealed), true) = (&entry.sealed_secret, entry.attrs.flag(ck::CKA_TOKEN, false)) {
            return self
                .keys
                .get_or_load(entry.ouid, sealed, || LoadedKey::load(self.material(entry)?));
        }
        if let Some(k) = entry.loaded.get() {
            return Ok(k.clone());
        }
        let loaded = Arc::new(LoadedKey::load(self.material(entry)?)?);
        Ok(entry.loaded.get_or_init(|| loaded).clone())
    }

    /// The raw secret of a key (raw bytes, or PKCS#8 for private keys).
    pub fn secret_of(&self, entry: &ObjectEntry) -> TokenResult<SecretBytes> {
        let sealed = entry
            .sealed_secret
            .as_ref()
            .ok_or_else(|| TokenError::KeyFunctionNotPermitted("the object holds no secret".into()))?;
        self.open_secret(&entry.ouid, sealed)
    }

    /// Opens a secret sealed under this partition's master key.
    pub fn open_secret(&self, ouid: &Ouid, sealed: &[u8]) -> TokenResult<SecretBytes> {
        self.pmk
            .open(&secret_aad(self.serial, ouid), sealed)
            .map_err(|_| integrity_error(&format!("the secret of object {ouid} does not decrypt")))
    }

    /// Seals a secret under this partition's master key.
    pub fn seal_secret(&self, ouid: &Ouid, secret: &[u8]) -> TokenResult<Vec<u8>> {
        self.pmk.seal(&secret_aad(self.serial, ouid), secret)
    }

    fn material(&self, entry: &ObjectEntry) -> TokenResult<KeyMaterial> {
        let a = &entry.attrs;
        let class = a.class().unwrap_or(ck::CKO_DATA);
        let key_type = a.key_type().ok_or(TokenError::KeyTypeInconsistent)?;
        if class == ck::CKO_PUBLIC_KEY {
            return Ok(KeyMaterial::Public(public_key_of(a)?));
        }
        let secret = self.secret_of(entry)?;
        Ok(match (class, key_type) {
            (ck::CKO_PRIVATE_KEY, ck::CKK_RSA) => KeyMaterial::RsaPrivate(secret),
            (ck::CKO_PRIVATE_KEY, ck::CKK_EC) => {
                let params = a
                    .bytes(ck::CKA_EC_PARAMS)
                    .ok_or(TokenError::KeyTypeInconsistent)?;
                KeyMaterial::EcPrivate {
                    curve: Curve::from_ec_params(params)?,
                    pkcs8: secret,
                }
            }
            (ck::CKO_PRIVATE_KEY, ck::CKK_EC_EDWARDS) => KeyMaterial::Ed25519Private(secret),
            (ck::CKO_PRIVATE_KEY, ck::CKK_ML_DSA) => KeyMaterial::MlDsaPrivate {
                set: ml_dsa_set_of(a)?,
                seed: secret,
            },
            (ck::CKO_PRIVATE_KEY, ck::CKK_ML_KEM) => KeyMaterial::MlKemPrivate {
                set: ml_kem_set_of(a)?,
                value: secret,
            },
            (ck::CKO_SECRET_KEY, ck::CKK_AES) => KeyMaterial::Aes(secret),
            (ck::CKO_SECRET_KEY, ck::CKK_DES3) => KeyMaterial::Des3(secret),
            (ck::CKO_SECRET_KEY, _) => KeyMaterial::GenericSecret(secret),
            _ => return Err(TokenError::KeyTypeInconsistent),
        })
    }

    /// The result of an earlier write with this client operation id, if any:
    /// a retried write returns the first result instead of writing again.
    pub fn previous_result(&self, op_id: &[u8; 16]) -> TokenResult<Option<Vec<Ouid>>> {
        let Some(row) = self.store.op_by_client_op_id(self.id, op_id)? else {
            return Ok(None);
        };
        let op = self.open_op(&row)?;
        Ok(Some(match op.body {
            OpBody::Create { objects } => objects.iter().map(|o| o.ouid).collect(),
            OpBody::SetAttributes { ouid, .. } | OpBody::Destroy { ouid } => vec![ouid],
            OpBody::Clear { .. } => vec![],
        }))
    }

    /// Decrypts one entry of the local operation log.
    pub fn open_op(&self, row: &OpRow) -> TokenResult<Op> {
        let plain = self
            .pmk
            .open(&op_aad(self.serial, row.origin, row.seq), &row.body)
            .map_err(|_| integrity_error(&format!("op-log entry {} does not decrypt", row.index)))?;
        postcard::from_bytes(plain.expose()).map_err(|_| integrity_error("an op-log entry is malformed"))
    }

    /// One origin's operations after `after_seq`, from the local log.
    /// Origin's operations after `after_seq`, at most `limit`: the latest
    /// from memory (`RecentOps`), older ones from the store.
    pub fn ops_from(&self, origin: MemberId, after_seq: u64, limit: usize) -> TokenResult<Vec<Op>> {
        if let Some(ops) = self.recent.lock_or_recover().after(origin, after_seq, limit) {
            return Ok(ops);
        }
        self.ops_from_store(origin, after_seq, limit)
    }

    /// The same, read from the store.
    pub fn ops_from_store(&self, origin: MemberId, after_seq: u64, limit: usize) -> TokenResult<Vec<Op>> {
        self.store
            .ops_from_origin(self.id, origin, after_seq, limit)?
            .iter()
            .map(|r| self.open_op(r))
            .collect()
    }

    /// Creates objects (one, or a key pair) as one operation.
    pub async fn create(&self, entries: Vec<ObjectEntry>, op_id: Option<[u8; 16]>) -> TokenResult<Vec<Ouid>> {
        if self.object_count() + entries.len() > self.max_objects {
            return Err(TokenError::DeviceMemory(format!(
                "the partition holds its limit of {} objects",
                self.max_objects
            )));
        }
        let ids: Vec<Ouid> = entries.iter().map(|e| e.ouid).collect();
        let objects = entries
            .into_iter()
            .map(|e| NewObject {
                ouid: e.ouid,
                attrs: e.attrs,
                sealed_secret: e.sealed_secret,
            })
            .collect();
        self.write_local(OpBody::Create { objects }, op_id).await?;
        Ok(ids)
    }

    /// Writes reserved records (see `crate::pins`) as one operation. They
    /// are not objects, so the partition's object limit does not apply: a
    /// full partition still counts failed logins.
    pub async fn create_reserved(
        &self,
        entries: Vec<ObjectEntry>,
        op_id: Option<[u8; 16]>,
    ) -> TokenResult<()> {
        let objects = entries
            .into_iter()
            .map(|e| NewObject {
                ouid: e.ouid,
                attrs: e.attrs,
                sealed_secret: e.sealed_secret,
            })
            .collect();
        self.write_local(OpBody::Create { objects }, op_id).await
    }

    /// Changes attributes (already checked against the PKCS#11 rules).
    pub async fn update(&self, ouid: Ouid, changed: Template, op_id: Option<[u8; 16]>) -> TokenResult<()> {
        self.write_local(OpBody::SetAttributes { ouid, attrs: changed }, op_id)
            .await
    }

    pub async fn destroy(&self, ouid: Ouid, op_id: Option<[u8; 16]>) -> TokenResult<()> {
        self.write_local(OpBody::Destroy { ouid }, op_id).await
    }

    /// Destroys every object this member holds, as one operation.
    pub async fn clear(&self) -> TokenResult<()> {
        let destroyed = self.live_read().by_ouid.keys().copied().collect();
        self.write_local(OpBody::Clear { destroyed }, None).await
    }

    /// A write made on this member: stamped with the next local sequence
    /// number and a fresh hybrid-logical-clock time, and committed with the
    /// other local writes waiting at the same time, in one store transaction
    /// and one sync to disk (group commit). Each writer is answered only once
    /// the transaction holding its write is durable; whichever writer takes
    /// the write lock commits everything queued until then.
    async fn write_local(&self, body: OpBody, client_op_id: Option<[u8; 16]>) -> TokenResult<()> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.queued.lock_or_recover().push(QueuedWrite {
            body,
            client_op_id,
            // A client's write commits before its client gives up, or not
            // at all: after that the client may have retried it elsewhere.
            commit_by: COMMIT_BY.try_with(|by| *by).ok(),
            done,
        });
        {
            let mut state = self.writes.lock().await;
            let batch = std::mem::take(&mut *self.queued.lock_or_recover());
            if !batch.is_empty() {
                self.commit_queued(&mut state, batch).await;
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(TokenError::DeviceError(
                "the write's commit was interrupted".into(),
            ))
        })
    }

    /// Commits queued local writes as one batch and answers each writer.
    async fn commit_queued(&self, state: &mut WriteState, batch: Vec<QueuedWrite>) {
        let now = std::time::Instant::now();
        let mut ops = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for w in batch {
            if w.commit_by.is_some_and(|by| now >= by) {
                let _ = w.done.send(Err(TokenError::DeadlineExceeded));
                continue;
            }
            let stamp = {
                let mut hlc = self.hlc.lock_or_recover();
                *hlc = hlc.tick(crate::now_ms());
                Stamp {
                    hlc: *hlc,
                    origin: self.member,
                }
            };
            ops.push(Op {
                seq: state.next_seq + ops.len() as u64,
                stamp,
                client_op_id: w.client_op_id,
                body: w.body,
            });
            waiting.push(w.done);
        }
        if ops.is_empty() {
            return;
        }
        let n = ops.len() as u64;
        match self.persist(state, ops).await {
            Ok(results) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.committed_writes.fetch_add(n, Ordering::Relaxed);
                for (done, applied) in waiting.into_iter().zip(results) {
                    let _ = done.send(match applied {
                        Applied::Applied => Ok(()),
                        other => Err(TokenError::DeviceError(format!(
                            "local write was not applied: {other:?}"
                        ))),
                    });
                }
            }
            Err(e) => {
                for done in waiting {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }

    /// (store transactions of local writes, local writes they held): their
    /// ratio is how many writes share one sync to disk.
    pub fn commit_stats(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.committed_writes.load(Ordering::Relaxed),
        )
    }

    /// Operations from a peer, their secrets already sealed under this
    /// partition's master key, applied with one sync to disk. Each origin's
    /// operations apply in sequence order only: past a gap, nothing of that
    /// origin applies. An operation stamped more than `max_ahead_ms` ahead
    /// of this member's clock comes from a clock that runs fast: it is not
    /// applied yet (nor the later ones of its origin), so that its stamp
    /// moves neither this member's clock nor the group's order; a later
    /// pull brings it again.
    pub async fn apply_remote(&self, ops: Vec<Op>, max_ahead_ms: u64) -> TokenResult<Vec<Applied>> {
        let mut state = self.writes.lock().await;
        let mut held_back = std::collections::BTreeMap::new();
        let ops: Vec<Op> = {
            let mut hlc = self.hlc.lock_or_recover();
            ops.into_iter()
                .filter(|op| {
                    if held_back.contains_key(&op.stamp.origin) {
                        return false;
                    }
                    match hlc.observe_bounded(op.stamp.hlc, crate::now_ms(), max_ahead_ms) {
                        Ok(next) => {
                            *hlc = next;
                            true
                        }
                        Err(ahead) => {
                            held_back.insert(op.stamp.origin, (op.seq, ahead));
                            false
                        }
                    }
                })
                .collect()
        };
        for (origin, (seq, ahead)) in held_back {
            tracing::warn!(
                partition = %self.name,
                origin,
                seq,
                ahead_ms = ahead,
                max_ahead_ms,
                "an operation stamped further ahead of this member's clock than the maximum offset is held back"
            );
        }
        self.persist(&mut state, ops).await
    }

    /// The one write path. The engine plans the batch (each operation seeing
    /// the ones before it) without changing anything; the op-log entries, the
    /// changed rows and the new sealed digest go to the store in one
    /// transaction; only then do the engine's state, the version vector that
    /// heartbeats carry and the live objects that requests see change, so
    /// nothing is visible that is not durable. If the commit fails, memory has
    /// not moved (and is reloaded from the store, in case the failure came
    /// after SQLite's commit).
    async fn persist(&self, state: &mut WriteState, ops: Vec<Op>) -> TokenResult<Vec<Applied>> {
        let mut results = Vec::with_capacity(ops.len());
        let mut writes = Vec::new();
        let mut touched = std::collections::BTreeSet::new();
        let mut digest = state.digest;
        let mut versions: HashMap<Ouid, u64> = HashMap::new();
        let mut next_seq = state.next_seq;
        // Planned against the state held, each seeing the ones before it;
        // nothing changes in memory until the store has them.
        let plans = self.replica_read().plan_batch(&ops);
        let mut to_commit = Vec::with_capacity(plans.len());
        let mut committed_ops = Vec::with_capacity(plans.len());
        for (op, plan) in ops.into_iter().zip(plans) {
            let changes = match &plan {
                Plan::Duplicate => {
                    results.push(Applied::Duplicate);
                    continue;
                }
                Plan::Gap { expected } => {
                    results.push(Applied::Gap { expected: *expected });
                    continue;
                }
                Plan::Apply { changes, .. } => changes,
            };
            let rows = self.sealed_rows(changes, state, &mut versions, &mut digest)?;
            touched.extend(changes.iter().map(|(ouid, _)| *ouid));
            let mut plain_op = encode(&op)?;
            let sealed_op = self
                .pmk
                .seal(&op_aad(self.serial, op.stamp.origin, op.seq), &plain_op);
            plain_op.zeroize();
            writes.push(Write {
                clear: false,
                puts: rows,
                deletes: vec![],
                op: OpRow {
                    index: 0,
                    origin: op.stamp.origin,
                    seq: op.seq,
                    hlc_wall: op.stamp.hlc.wall_ms,
                    hlc_logical: op.stamp.hlc.logical,
                    client_op_id: op.client_op_id,
                    kind: op.body.kind().to_string(),
                    body: sealed_op?,
                },
                digest: Some(self.pmk.seal(&digest_aad(self.serial), &digest)?),
            });
            if op.stamp.origin == self.member {
                next_seq = op.seq + 1;
            }
            to_commit.push(plan);
            committed_ops.push(op);
            results.push(Applied::Applied);
        }
        if writes.is_empty() {
            return Ok(results);
        }
        let store = self.store.clone();
        let id = self.id;
        let committed = tokio::task::spawn_blocking(move || store.commit_many(id, &writes))
            .await
            .map_err(|e| TokenError::DeviceError(format!("store task failed: {e}")));
        // Memory has not changed. Reloading makes it what the store holds in
        // case the failure came after SQLite's commit (an fsync error).
        if let Err(e) = committed.and_then(|r| r.map_err(TokenError::from)) {
            self.reload(state)?;
            return Err(e);
        }

        // Durable: now requests and heartbeats may see it.
        {
            let mut recent = self.recent.lock_or_recover();
            for op in committed_ops {
                recent.push(op);
            }
        }
        state.digest = digest;
        state.versions.extend(versions);
        state.next_seq = next_seq;
        {
            let mut replica = self.replica.write_or_recover();
            for plan in to_commit {
                replica.commit(plan);
            }
        }
        self.publish(&touched);
        Ok(results)
    }

    /// The store rows of changed states: each OUID's next row version, sealed
    /// under the PMK, with the integrity digest moved from the old version to
    /// the new one. `versions` holds the versions this batch already gave.
    fn sealed_rows(
        &self,
        changes: &[(Ouid, StoredState)],
        state: &WriteState,
        versions: &mut HashMap<Ouid, u64>,
        digest: &mut [u8; 32],
    ) -> TokenResult<Vec<ObjectRow>> {
        let mut rows = Vec::with_capacity(changes.len());
        for (ouid, new_state) in changes {
            let old = versions.get(ouid).or_else(|| state.versions.get(ouid)).copied();
            let version = old.map_or(1, |v| v + 1);
            if let Some(v) = old {
                xor_into(digest, &digest_term(ouid, v));
            }
            xor_into(digest, &digest_term(ouid, version));
            let mut plain = encode(new_state)?;
            let sealed = self.pmk.seal(&record_aad(self.serial, ouid, version), &plain);
            plain.zeroize();
            rows.push(ObjectRow {
                ouid: ouid.0,
                version,
                sealed: sealed?,
            });
            versions.insert(*ouid, version);
        }
        Ok(rows)
    }

    /// Once changes are durable and in the engine: the content digest, the
    /// live objects that requests see and the key cache follow them.
    fn publish(&self, touched: &std::collections::BTreeSet<Ouid>) {
        let replica = self.replica_read();
        let mut live = self.live.write_or_recover();
        let mut content = self.content.lock_or_recover();
        for ouid in touched {
            let (digest, terms) = &mut *content;
            if let Some(old) = terms.remove(ouid) {
                xor_into(digest, &old);
            }
            if let Some(term) = content_term(&replica, ouid) {
                xor_into(digest, &term);
                terms.insert(*ouid, term);
            }
        }
        drop(content);
        for ouid in touched {
            match replica.get(ouid) {
                Some(s) if s.is_live() => {
                    live.insert(Arc::new(ObjectEntry::from_state(*ouid, s)));
                }
                _ => {
                    live.remove(ouid);
                    self.keys.forget(ouid);
                }
            }
        }
    }

    /// (operations in the log, operations compacted away or covered by a
    /// snapshot, snapshots installed since activation).
    pub fn log_stats(&self) -> (u64, u64, u64) {
        let below = self.floor.lock_or_recover().total();
        let applied = self.replica_read().version_vector().total();
        (
            applied.saturating_sub(below),
            below,
            self.snapshots.load(Ordering::Relaxed),
        )
    }

    /// Per origin, what the log no longer holds.
    pub fn log_floor(&self) -> VersionVector {
        self.floor.lock_or_recover().clone()
    }

    /// Whether the log no longer holds `origin`'s operation after `after`:
    /// a peer at `after` must catch up from a snapshot.
    pub fn compacted_after(&self, origin: MemberId, after: u64) -> bool {
        after < self.floor.lock_or_recover().get(origin)
    }

    fn raise_floor(&self, to: &[(u64, u64)]) {
        let mut floor = self.floor.lock_or_recover();
        for (origin, seq) in to {
            let f = floor.0.entry(*origin).or_default();
            *f = (*f).max(*seq);
        }
    }

    /// Drops from the log each origin's operations up to `upto` that were
    /// stamped before `before_wall_ms` (`Store::compact_log`). The caller
    /// chooses `upto` so that the peers it still waits for have them; the
    /// objects keep every effect, so a peer that lacks one catches up from a
    /// snapshot. Returns how many entries were dropped.
    pub async fn compact_log(&self, upto: &VersionVector, before_wall_ms: u64) -> TokenResult<u64> {
        let below: Vec<(u64, u64)> = {
            let floor = self.floor.lock_or_recover();
            upto.0
                .iter()
                .filter(|(o, s)| **s > floor.get(**o))
                .map(|(o, s)| (*o, *s))
                .collect()
        };
        if below.is_empty() {
            return Ok(0);
        }
        let store = self.store.clone();
        let id = self.id;
        let (dropped, floor) = tokio::task::spawn_blocking(move || {
            let dropped = store.compact_log(id, &below, before_wall_ms)?;
            Ok::<_, hahsm_store::StoreError>((dropped, store.log_floor(id)?))
        })
        .await
        .map_err(|e| TokenError::DeviceError(format!("store task failed: {e}")))??;
        self.raise_floor(&floor);
        if dropped > 0 {
            tracing::info!(partition = %self.name, dropped, floor = ?floor, "op log compacted");
        }
        Ok(dropped)
    }

    /// One page of this partition's snapshot (for a peer whose log position
    /// this member no longer logs, or a backup): up to `limit` states
    /// (objects, ghosts, tombstones, reserved records) after `after` in OUID
    /// order, and fewer once they hold about `SNAPSHOT_PAGE_BYTES`, their
    /// secrets sealed under the PMK; the version vector the state covers now
    /// (a page read later covers at least as much); and the OUID after which
    /// the next page starts, if more remain.
    pub fn snapshot_page(
        &self,
        after: Option<Ouid>,
        limit: usize,
    ) -> (VersionVector, Vec<(Ouid, StoredState)>, Option<Ouid>) {
        let limit = limit.max(1);
        let replica = self.replica_read();
        let mut page: Vec<(Ouid, StoredState)> = Vec::new();
        let mut bytes = 0;
        let mut states = replica.states_after(after.as_ref()).peekable();
        while let Some((ouid, state)) = states.next_if(|_| page.len() < limit && bytes < SNAPSHOT_PAGE_BYTES)
        {
            bytes += approx_size(state);
            page.push((*ouid, state.clone()));
        }
        let next = states.peek().and_then(|_| page.last().map(|(o, _)| *o));
        (replica.version_vector().clone(), page, next)
    }

    /// Joins one page of a peer's snapshot, its secrets already sealed under
    /// this partition's PMK, with one sync to disk (the same order as every
    /// write: the store first, then memory). After the last page, `covers`
    /// (the version vector of the snapshot's first page) raises the version
    /// vector, and the log's floor with it, for each origin it is ahead on:
    /// only then does this member claim the operations it never logged.
    /// A page holding a stamp further than `max_ahead_ms` ahead of this
    /// member's clock is refused, as such an operation is held back
    /// (`apply_remote`): its stamps would carry this member's clock with them.
    /// Returns how many OUIDs changed.
    pub async fn install_snapshot(
        &self,
        states: Vec<(Ouid, StoredState)>,
        covers: Option<&VersionVector>,
        max_ahead_ms: u64,
    ) -> TokenResult<usize> {
        let mut state = self.writes.lock().await;
        let changes = self.replica_read().plan_states(&states);
        let raised: Vec<(u64, u64)> = match covers {
            Some(vv) => {
                let mine = self.replica_read().version_vector().clone();
                vv.0.iter()
                    .filter(|(o, s)| **s > mine.get(**o))
                    .map(|(o, s)| (*o, *s))
                    .collect()
            }
            None => Vec::new(),
        };
        if changes.is_empty() && raised.is_empty() {
            return Ok(0);
        }
        // The clock moves past every stamp the snapshot holds, as it does for
        // every operation applied, so that later local writes order after.
        let max_stamp = states
            .iter()
            .flat_map(|(_, s)| {
                s.created
                    .iter()
                    .map(|c| c.stamp)
                    .chain(s.attrs.values().map(|(stamp, _)| *stamp))
                    .chain(s.tombstone)
            })
            .map(|stamp| stamp.hlc)
            .max()
            .unwrap_or_default();
        {
            let mut hlc = self.hlc.lock_or_recover();
            *hlc = hlc
                .observe_bounded(max_stamp, crate::now_ms(), max_ahead_ms)
                .map_err(|ahead| {
                    TokenError::DeviceError(format!(
                        "a snapshot page holds a stamp {ahead} ms ahead of this member's clock, beyond the maximum offset"
                    ))
                })?;
        }
        let mut versions = HashMap::new();
        let mut digest = state.digest;
        let rows = self.sealed_rows(&changes, &state, &mut versions, &mut digest)?;
        let sealed_digest = self.pmk.seal(&digest_aad(self.serial), &digest)?;
        let store = self.store.clone();
        let id = self.id;
        let floor_rows = raised.clone();
        let clock = (max_stamp.wall_ms, max_stamp.logical);
        let committed = tokio::task::spawn_blocking(move || {
            store.install_states(id, &rows, &sealed_digest, &floor_rows, clock)
        })
        .await
        .map_err(|e| TokenError::DeviceError(format!("store task failed: {e}")));
        if let Err(e) = committed.and_then(|r| r.map_err(TokenError::from)) {
            self.reload(&mut state)?;
            return Err(e);
        }
        let touched: std::collections::BTreeSet<Ouid> = changes.iter().map(|(o, _)| *o).collect();
        let changed = touched.len();
        state.digest = digest;
        state.versions.extend(versions);
        self.replica.write_or_recover().commit_states(changes, covers);
        self.raise_floor(&raised);
        if covers.is_some() {
            self.snapshots.fetch_add(1, Ordering::Relaxed);
        }
        state.next_seq = state
            .next_seq
            .max(self.replica_read().version_vector().get(self.member) + 1);
        self.publish(&touched);
        Ok(changed)
    }

    /// Rebuilds the engine's state from the store, after a failed commit (which
    /// may yet have reached the disk).
    fn reload(&self, state: &mut WriteState) -> TokenResult<()> {
        let row = self
            .store
            .get_partition_by_id(self.id)?
            .ok_or_else(|| TokenError::DeviceError("the partition vanished from the store".into()))?;
        let fresh = ActivePartition::open(
            self.store.clone(),
            &row,
            SealKey::new(SecretBytes::new(self.pmk.key_bytes().to_vec()))?,
            self.member,
            self.hlc.clone(),
            self.max_objects,
            // Only its write state is taken; its key cache is not used.
            1,
        )?;
        let fresh_state = fresh
            .writes
            .try_lock()
            .map_err(|_| TokenError::DeviceError("reload raced".into()))?;
        state.next_seq = fresh_state.next_seq;
        state.digest = fresh_state.digest;
        state.versions = fresh_state.versions.clone();
        drop(fresh_state);
        *self.replica.write_or_recover() = std::mem::take(&mut *fresh.replica.write_or_recover());
        *self.floor.lock_or_recover() = fresh.log_floor();
        Ok(())
    }
}

/// About how many bytes of states one snapshot page holds: a page is one
/// frame, and one transaction on the receiving side.
pub const SNAPSHOT_PAGE_BYTES: usize = 4 << 20;

/// About the encoded size of a state: its values, its secret and the stamps.
fn approx_size(state: &StoredState) -> usize {
    let secret = state
        .created
        .as_ref()
        .and_then(|c| c.secret.as_ref())
        .map_or(0, Vec::len);
    let attrs: usize = state.attrs.values().map(|(_, v)| 24 + v.to_raw().len()).sum();
    64 + secret + attrs
}

/// One live object's contribution to the content digest.
fn content_term(replica: &Replica<Vec<u8>>, ouid: &Ouid) -> Option<[u8; 32]> {
    let mut buf = Vec::new();
    replica
        .canonical_object(ouid, |b| buf.extend_from_slice(b))
        .then(|| crypto::sha256(&buf))
}

/// Reads a public key back from an object's attributes.
pub fn public_key_of(a: &Template) -> TokenResult<PublicKey> {
    let missing = |what: &str| TokenError::TemplateIncomplete(format!("{what} is missing"));
    match a.key_type() {
        Some(ck::CKK_RSA) => Ok(PublicKey::Rsa {
            modulus: a
                .bytes(ck::CKA_MODULUS)
                .ok_or_else(|| missing("CKA_MODULUS"))?
                .to_vec(),
            public_exponent: a
                .bytes(ck::CKA_PUBLIC_EXPONENT)
                .ok_or_else(|| missing("CKA_PUBLIC_EXPONENT"))?
                .to_vec(),
        }),
        Some(ck::CKK_EC) => Ok(PublicKey::Ec {
            curve: Curve::from_ec_params(
                a.bytes(ck::CKA_EC_PARAMS)
                    .ok_or_else(|| missing("CKA_EC_PARAMS"))?,
            )?,
            point: crypto::ec_point_from_attribute(
                a.bytes(ck::CKA_EC_POINT).ok_or_else(|| missing("CKA_EC_POINT"))?,
            )?,
        }),
        Some(ck::CKK_EC_EDWARDS) => Ok(PublicKey::Ed25519 {
            point: crypto::ec_point_from_attribute(
                a.bytes(ck::CKA_EC_POINT).ok_or_else(|| missing("CKA_EC_POINT"))?,
            )?,
        }),
        Some(ck::CKK_ML_DSA) => Ok(PublicKey::MlDsa {
            set: ml_dsa_set_of(a)?,
            value: a
                .bytes(ck::CKA_VALUE)
                .ok_or_else(|| missing("CKA_VALUE"))?
                .to_vec(),
        }),
        Some(ck::CKK_ML_KEM) => Ok(PublicKey::MlKem {
            set: ml_kem_set_of(a)?,
            value: a
                .bytes(ck::CKA_VALUE)
                .ok_or_else(|| missing("CKA_VALUE"))?
                .to_vec(),
        }),
        _ => Err(TokenError::KeyTypeInconsistent),
    }
}

/// The ML-DSA parameter set a `CKA_PARAMETER_SET` value names.
pub(crate) fn ml_dsa_set(parameter_set: u64) -> TokenResult<MlDsaSet> {
    MlDsaSet::from_ckp(parameter_set).ok_or(TokenError::AttributeValueInvalid(ck::CKA_PARAMETER_SET))
}

/// The ML-KEM parameter set a `CKA_PARAMETER_SET` value names.
pub(crate) fn ml_kem_set(parameter_set: u64) -> TokenResult<MlKemSet> {
    MlKemSet::from_ckp(parameter_set).ok_or(TokenError::AttributeValueInvalid(ck::CKA_PARAMETER_SET))
}

/// The ML-DSA parameter set of a key's (or checked template's) attributes.
pub(crate) fn ml_dsa_set_of(a: &Template) -> TokenResult<MlDsaSet> {
    ml_dsa_set(a.ulong(ck::CKA_PARAMETER_SET).unwrap_or(0))
}

/// The ML-KEM parameter set of a key's (or checked template's) attributes.
pub(crate) fn ml_kem_set_of(a: &Template) -> TokenResult<MlKemSet> {
    ml_kem_set(a.ulong(ck::CKA_PARAMETER_SET).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hahsm_token::AttrValue;

    fn entry(id: u8, label: &str, private: bool) -> Arc<ObjectEntry> {
        Arc::new(ObjectEntry {
            ouid: Ouid([id; 16]),
            attrs: Template::new()
                .with(ck::CKA_LABEL, AttrValue::Bytes(label.as_bytes().to_vec()))
                .with(ck::CKA_PRIVATE, AttrValue::Bool(private)),
            sealed_secret: None,
            loaded: OnceLock::new(),
        })
    }

    fn label(l: &str) -> Template {
        Template::new().with(ck::CKA_LABEL, AttrValue::Bytes(l.as_bytes().to_vec()))
    }

    proptest::proptest! {
        /// The indexed find answers what a walk of every object answers,
        /// through inserts, changes of indexed values and removals.
        #[test]
        fn an_indexed_find_answers_as_a_walk_of_every_object(
            changes in proptest::collection::vec(
                (0u8..12, 0u64..3, 0u8..3, 0u8..3, proptest::bool::ANY, proptest::bool::ANY), 1..60),
            filters in proptest::collection::vec(
                (proptest::option::of(0u64..4), proptest::option::of(0u8..4),
                 proptest::option::of(0u8..4), proptest::option::of(proptest::bool::ANY)), 1..12),
            logged_in in proptest::bool::ANY,
            limit in 1usize..8,
        ) {
            let mut live = LiveObjects::default();
            for (id, class, ckid, label, private, gone) in changes {
                if gone {
                    live.remove(&Ouid([id; 16]));
                    continue;
                }
                let attrs = Template::new()
                    .with(ck::CKA_CLASS, AttrValue::Ulong(class))
                    .with(ck::CKA_ID, AttrValue::Bytes(vec![ckid]))
                    .with(ck::CKA_LABEL, AttrValue::Bytes(vec![b'a' + label]))
                    .with(ck::CKA_PRIVATE, AttrValue::Bool(private));
                live.insert(Arc::new(ObjectEntry {
                    ouid: Ouid([id; 16]),
                    attrs,
                    sealed_secret: None,
                    loaded: OnceLock::new(),
                }));
            }
            for (class, ckid, label, private) in filters {
                let mut filter = Template::new();
                if let Some(c) = class {
                    filter.set(ck::CKA_CLASS, AttrValue::Ulong(c));
                }
                if let Some(i) = ckid {
                    filter.set(ck::CKA_ID, AttrValue::Bytes(vec![i]));
                }
                if let Some(l) = label {
                    filter.set(ck::CKA_LABEL, AttrValue::Bytes(vec![b'a' + l]));
                }
                if let Some(p) = private {
                    filter.set(ck::CKA_PRIVATE, AttrValue::Bool(p));
                }
                let walked: Vec<Ouid> = live
                    .by_ouid
                    .values()
                    .filter(|o| (logged_in || !o.is_private()) && o.attrs.matches(&filter))
                    .map(|o| o.ouid)
                    .take(limit)
                    .collect();
                proptest::prop_assert_eq!(live.find(&filter, logged_in, limit), walked);
            }
        }
    }

    /// A partition of its own store, in `dir`.
    fn partition_in(dir: &std::path::Path) -> (Arc<Store>, ActivePartition) {
        partition_as(dir, 1, 7)
    }

    /// A partition of member `member`, its master key all `key` bytes.
    fn partition_as(dir: &std::path::Path, member: MemberId, key: u8) -> (Arc<Store>, ActivePartition) {
        let store = Arc::new(Store::open(&dir.join("hahsm.db")).expect("store"));
        let row = PartitionRow {
            id: 0,
            name: "p".into(),
            serial: 7,
            wrapped_pmk: vec![1],
            sealed_pmk: None,
            pin_salt: vec![],
            sealed_pin: None,
            failed_logins: 0,
            policies: vec![],
            activated: true,
            digest: vec![],
            extra: vec![],
        };
        store.create_partition(&row).expect("partition row");
        (store.clone(), reopen(&store, member, key))
    }

    fn reopen(store: &Arc<Store>, member: MemberId, key: u8) -> ActivePartition {
        let row = store.get_partition("p").expect("read").expect("there");
        let pmk = SealKey::new(SecretBytes::new(vec![key; 32])).expect("key");
        ActivePartition::open(store.clone(), &row, pmk, member, Arc::default(), 100, 16).expect("opens")
    }

    #[tokio::test]
    async fn a_compacted_log_reopens_whole_and_its_snapshot_rebuilds_the_partition_on_another_member() {
        let (a_dir, b_dir) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let (store_a, a) = partition_as(a_dir.path(), 1, 7);
        for id in 1..=5u8 {
            let e = a
                .new_entry(Ouid([id; 16]), label(&format!("k{id}")), Some(&[id; 32]))
                .expect("entry");
            a.create(vec![e], None).await.expect("create");
        }
        a.update(Ouid([2; 16]), label("renamed"), None)
            .await
            .expect("rename");
        a.destroy(Ouid([3; 16]), None).await.expect("destroy");
        let (vv, digest) = (a.version_vector(), a.content_digest());
        assert_eq!(a.compact_log(&vv, u64::MAX).await.expect("compact"), 7);
        assert!(a.compacted_after(1, 6) && !a.compacted_after(1, 7));
        assert_eq!(a.log_stats(), (0, 7, 0));
        assert!(a.ops_from_store(1, 0, 100).expect("ops").is_empty());

        // Reopened: the same state and version vector, nothing in the log,
        // and the next write takes the next sequence number.
        drop(a);
        let a = reopen(&store_a, 1, 7);
        assert_eq!((a.version_vector(), a.content_digest()), (vv.clone(), digest));
        let e = a
            .new_entry(Ouid([6; 16]), label("k6"), Some(&[6; 32]))
            .expect("entry");
        a.create(vec![e], None).await.expect("create after compaction");
        assert_eq!(a.version_vector().get(1), 8);

        // Member 2, under another master key, from member 1's snapshot in
        // pages of 2: it claims nothing until the last page.
        let (store_b, b) = partition_as(b_dir.path(), 2, 9);
        let (mut after, mut covers, mut pages) = (None, None, 0);
        loop {
            let (vv, mut page, next) = a.snapshot_page(after, 2);
            let covers = covers.get_or_insert(vv).clone();
            for (ouid, state) in &mut page {
                if let Some(c) = state.created.as_mut() {
                    let sealed = c.secret.take().expect("a secret");
                    let secret = a.open_secret(ouid, &sealed).expect("opens under A");
                    c.secret = Some(b.seal_secret(ouid, secret.expose()).expect("seals under B"));
                }
            }
            b.install_snapshot(page, next.is_none().then_some(&covers), u64::MAX)
                .await
                .expect("install");
            pages += 1;
            match next {
                Some(last) => {
                    assert_eq!(
                        b.version_vector(),
                        VersionVector::default(),
                        "claimed before the last page"
                    );
                    after = Some(last);
                }
                None => break,
            }
        }
        assert_eq!(pages, 3, "six OUIDs, two a page");
        assert_eq!(
            (b.version_vector(), b.content_digest()),
            (a.version_vector(), a.content_digest())
        );
        assert_eq!(b.log_stats(), (0, 8, 1));
        let key1 = b.get(&Ouid([1; 16])).expect("live on B");
        assert_eq!(b.secret_of(&key1).expect("opens").expose(), &[1u8; 32]);
        assert!(b.get(&Ouid([3; 16])).is_none(), "the destroyed object came back");
        assert_eq!(
            b.get(&Ouid([2; 16])).expect("live").attrs.label().as_deref(),
            Some("renamed")
        );
        // Joining the same snapshot again changes nothing.
        let (_, again, _) = a.snapshot_page(None, 100);
        let sealed_again: Vec<_> = again
            .into_iter()
            .map(|(o, mut s)| {
                if let Some(c) = s.created.as_mut() {
                    let secret = a
                        .open_secret(&o, &c.secret.take().expect("secret"))
                        .expect("opens");
                    c.secret = Some(b.seal_secret(&o, secret.expose()).expect("seals"));
                }
                (o, s)
            })
            .collect();
        assert_eq!(
            b.install_snapshot(sealed_again, None, u64::MAX)
                .await
                .expect("again"),
            0
        );

        // B reopens whole (its sealed digest covers the installed rows) and
        // writes under its own origin from 1.
        drop(b);
        let b = reopen(&store_b, 2, 9);
        assert_eq!(b.content_digest(), a.content_digest());
        let e = b.new_entry(Ouid([7; 16]), label("on-b"), None).expect("entry");
        b.create(vec![e], None).await.expect("create on B");
        assert_eq!(b.version_vector().get(2), 1);
        assert_eq!(b.version_vector().get(1), 8);
    }

    /// A push reads the latest operations from memory, and they are the
    /// store's exactly (secrets sealed the same way); older ones, and those
    /// of a partition just opened, come from the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_latest_operations_come_from_memory_as_the_store_has_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, p) = partition_in(dir.path());
        for id in 1..=5u8 {
            let e = p
                .new_entry(Ouid([id; 16]), label("k"), Some(&[id; 32]))
                .expect("entry");
            p.create(vec![e], None).await.expect("created");
        }
        p.destroy(Ouid([2; 16]), None).await.expect("destroyed");
        let from_memory = p.recent.lock_or_recover().after(1, 0, 100).expect("kept");
        assert_eq!(from_memory.len(), 6);
        assert_eq!(from_memory, p.ops_from_store(1, 0, 100).expect("stored"));
        assert_eq!(
            p.ops_from(1, 3, 2).expect("ops"),
            p.ops_from_store(1, 3, 2).expect("stored")
        );
        // A partition opened afresh keeps nothing yet, and asks the store.
        let row = store.get_partition("p").expect("read").expect("there");
        let pmk = SealKey::new(SecretBytes::new(vec![7; 32])).expect("key");
        let reopened =
            ActivePartition::open(store.clone(), &row, pmk, 1, Arc::default(), 100, 16).expect("opens");
        assert!(reopened.recent.lock_or_recover().after(1, 0, 100).is_none());
        assert_eq!(reopened.ops_from(1, 0, 100).expect("ops"), from_memory);
    }

    /// The write path's promise: memory (what requests and heartbeats see)
    /// changes only once the store holds the write. While another process
    /// holds the database, a write waits in its commit, and the version
    /// vector and the objects stay as they were; a failed commit leaves them
    /// so. Before, the engine's state moved first and was reloaded after a
    /// failure, and a heartbeat in that window carried the unwritten write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_changes_only_after_the_store_commits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_store, p) = partition_in(dir.path());
        let p = Arc::new(p);
        let write = |id: u8| {
            let p = p.clone();
            tokio::spawn(async move {
                let e = p.new_entry(Ouid([id; 16]), label("x"), None).expect("entry");
                p.create(vec![e], None).await
            })
        };
        let blocker = rusqlite::Connection::open(dir.path().join("hahsm.db")).expect("second connection");
        blocker
            .execute_batch("BEGIN EXCLUSIVE")
            .expect("holds the database");
        let waiting = write(1);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(
            p.version_vector().get(1),
            0,
            "the version vector moved before the commit"
        );
        assert!(
            p.get(&Ouid([1; 16])).is_none(),
            "the object is visible before the commit"
        );
        blocker.execute_batch("COMMIT").expect("lets go");
        waiting.await.expect("task").expect("the write commits");
        assert_eq!(p.version_vector().get(1), 1);
        assert!(p.get(&Ouid([1; 16])).is_some());

        // Held past the store's busy timeout: the commit fails, memory is as it was.
        blocker
            .execute_batch("BEGIN EXCLUSIVE")
            .expect("holds the database");
        let failing = write(2);
        let digest = p.content_digest();
        let refused = failing.await.expect("task");
        assert!(refused.is_err(), "the write succeeded with the database held");
        assert_eq!(p.version_vector().get(1), 1);
        assert!(p.get(&Ouid([2; 16])).is_none());
        assert_eq!(p.content_digest(), digest);
        blocker.execute_batch("COMMIT").expect("lets go");
        write(3).await.expect("task").expect("writes again");
        assert_eq!(p.version_vector().get(1), 2);
    }

    #[test]
    fn the_label_index_follows_renames_and_removals() {
        let mut live = LiveObjects::default();
        live.insert(entry(2, "a", false));
        live.insert(entry(1, "a", false));
        live.insert(entry(3, "b", true));
        assert_eq!(
            live.find(&label("a"), false, 10),
            vec![Ouid([1; 16]), Ouid([2; 16])]
        );
        assert_eq!(live.find(&label("a"), false, 1), vec![Ouid([1; 16])]);
        assert!(
            live.find(&label("b"), false, 10).is_empty(),
            "private before login"
        );
        assert_eq!(live.find(&label("b"), true, 10), vec![Ouid([3; 16])]);
        // A rename moves the object from one label to the other.
        live.insert(entry(2, "b", false));
        assert_eq!(live.find(&label("a"), true, 10), vec![Ouid([1; 16])]);
        assert_eq!(
            live.find(&label("b"), true, 10),
            vec![Ouid([2; 16]), Ouid([3; 16])]
        );
        live.remove(&Ouid([1; 16]));
        assert!(live.find(&label("a"), true, 10).is_empty());
        assert!(
            matches!(live.index.candidates(&label("a")), Candidates::None),
            "no empty entries left"
        );
        // Without a label, every visible object, in OUID order.
        assert_eq!(
            live.find(&Template::new(), true, 10),
            vec![Ouid([2; 16]), Ouid([3; 16])]
        );
        // A label of the wrong kind matches nothing.
        let odd = Template::new().with(ck::CKA_LABEL, AttrValue::Ulong(1));
        assert!(live.find(&odd, true, 10).is_empty());
    }
}
