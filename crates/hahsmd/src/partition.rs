//! An activated partition: its master key in memory, its objects decrypted into
//! an in-memory index, and the write path.
//!
//! Every object row in the store is one AES-256-GCM record (attributes and
//! secret together) under the partition master key, with the partition serial,
//! the object id and its version as associated data: a row moved to another
//! object or replaced by an older version fails to open. The partition also
//! keeps a sealed digest over the set of (object id, version) pairs, so a row
//! deleted or rolled back behind the daemon's back is found at activation.
use hahsm_crypto::{self as crypto, Curve, KeyMaterial, LoadedKey, PublicKey, SealKey, SecretBytes};
use hahsm_store::{ObjectRow, OpRow, PartitionRow, Store, Write};
use hahsm_token::oplog::{NewObject, Op, OpBody, Stamp};
use hahsm_token::{ck, Hlc, MemberId, Ouid, Template, TokenError, TokenResult};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use zeroize::Zeroize;

/// One object, as the partition holds it in memory.
pub struct ObjectEntry {
    pub ouid: Ouid,
    pub version: u64,
    /// Never holds secret components; those stay in the sealed record.
    pub attrs: Template,
    sealed_record: Vec<u8>,
    loaded: OnceLock<Arc<LoadedKey>>,
}

impl ObjectEntry {
    pub fn class(&self) -> u64 {
        self.attrs.class().unwrap_or(ck::CKO_DATA)
    }

    pub fn is_private(&self) -> bool {
        self.attrs.flag(ck::CKA_PRIVATE, false)
    }
}

/// What one store row decrypts to.
#[derive(Serialize, Deserialize)]
struct ObjectRecord {
    attrs: Template,
    secret: Option<Vec<u8>>,
}

impl Drop for ObjectRecord {
    fn drop(&mut self) {
        if let Some(s) = self.secret.as_mut() {
            s.zeroize();
        }
    }
}

struct WriteState {
    next_seq: u64,
    digest: [u8; 32],
}

pub struct ActivePartition {
    pub id: i64,
    pub name: String,
    pub serial: u64,
    pmk: SealKey,
    member: MemberId,
    hlc: Arc<Mutex<Hlc>>,
    store: Arc<Store>,
    objects: RwLock<HashMap<Ouid, Arc<ObjectEntry>>>,
    writes: tokio::sync::Mutex<WriteState>,
    max_objects: usize,
}

fn record_aad(serial: u64, ouid: &Ouid, version: u64) -> Vec<u8> {
    let mut aad = b"hahsm/object/v1".to_vec();
    aad.extend_from_slice(&serial.to_le_bytes());
    aad.extend_from_slice(ouid.as_bytes());
    aad.extend_from_slice(&version.to_le_bytes());
    aad
}

fn digest_aad(serial: u64) -> Vec<u8> {
    let mut aad = b"hahsm/digest/v1".to_vec();
    aad.extend_from_slice(&serial.to_le_bytes());
    aad
}

fn op_aad(serial: u64, origin: MemberId, seq: u64) -> Vec<u8> {
    let mut aad = b"hahsm/op/v1".to_vec();
    aad.extend_from_slice(&serial.to_le_bytes());
    aad.extend_from_slice(&origin.to_le_bytes());
    aad.extend_from_slice(&seq.to_le_bytes());
    aad
}

/// The contribution of one object version to the partition digest.
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

impl ActivePartition {
    /// Loads and decrypts every object of the partition and checks the sealed
    /// digest. Any record that does not open, or a digest that does not match,
    /// refuses the activation: a tampered store is never served.
    pub fn open(
        store: Arc<Store>,
        row: &PartitionRow,
        pmk: SealKey,
        member: MemberId,
        hlc: Arc<Mutex<Hlc>>,
        max_objects: usize,
    ) -> TokenResult<ActivePartition> {
        let rows = store.load_objects(row.id)?;
        let mut objects = HashMap::with_capacity(rows.len());
        let mut digest = [0u8; 32];
        for r in rows {
            let ouid = Ouid(r.ouid);
            let plain = pmk
                .open(&record_aad(row.serial, &ouid, r.version), &r.sealed)
                .map_err(|_| integrity_error(&format!("object {ouid} does not decrypt")))?;
            let record: ObjectRecord = postcard::from_bytes(plain.expose())
                .map_err(|_| integrity_error(&format!("object {ouid} is malformed")))?;
            xor_into(&mut digest, &digest_term(&ouid, r.version));
            objects.insert(
                ouid,
                Arc::new(ObjectEntry {
                    ouid,
                    version: r.version,
                    attrs: record.attrs.clone(),
                    sealed_record: r.sealed,
                    loaded: OnceLock::new(),
                }),
            );
        }
        let stored_digest = if row.digest.is_empty() {
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
        let next_seq = store.max_seq(row.id, member)? + 1;
        Ok(ActivePartition {
            id: row.id,
            name: row.name.clone(),
            serial: row.serial,
            pmk,
            member,
            hlc,
            store,
            objects: RwLock::new(objects),
            writes: tokio::sync::Mutex::new(WriteState { next_seq, digest }),
            max_objects,
        })
    }

    pub fn pmk(&self) -> &SealKey {
        &self.pmk
    }

    pub fn object_count(&self) -> usize {
        self.read_objects().len()
    }

    fn read_objects(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Ouid, Arc<ObjectEntry>>> {
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_objects(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Ouid, Arc<ObjectEntry>>> {
        self.objects.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, ouid: &Ouid) -> Option<Arc<ObjectEntry>> {
        self.read_objects().get(ouid).cloned()
    }

    /// Object ids matching `filter`, private objects only when `logged_in`.
    pub fn find(&self, filter: &Template, logged_in: bool, limit: usize) -> Vec<Ouid> {
        let objects = self.read_objects();
        let mut found: Vec<Ouid> = objects
            .values()
            .filter(|o| (logged_in || !o.is_private()) && o.attrs.matches(filter))
            .map(|o| o.ouid)
            .collect();
        // A stable order, so paging and listings do not jump around.
        found.sort();
        found.truncate(limit);
        found
    }

    pub fn all(&self) -> Vec<Arc<ObjectEntry>> {
        let mut all: Vec<_> = self.read_objects().values().cloned().collect();
        all.sort_by_key(|o| o.ouid);
        all
    }

    /// Builds an in-memory entry with a sealed record; used for token objects
    /// before they are committed and for session objects, which never are.
    pub fn seal_entry(
        &self,
        ouid: Ouid,
        version: u64,
        attrs: Template,
        secret: Option<&[u8]>,
    ) -> TokenResult<ObjectEntry> {
        let record = ObjectRecord {
            attrs: attrs.clone(),
            secret: secret.map(<[u8]>::to_vec),
        };
        let mut plain = postcard::to_allocvec(&record)
            .map_err(|e| TokenError::FunctionFailed(format!("cannot encode object: {e}")))?;
        let sealed = self.pmk.seal(&record_aad(self.serial, &ouid, version), &plain);
        plain.zeroize();
        Ok(ObjectEntry {
            ouid,
            version,
            attrs,
            sealed_record: sealed?,
            loaded: OnceLock::new(),
        })
    }

    /// The key of an object, parsed once and cached.
    pub fn key(&self, entry: &ObjectEntry) -> TokenResult<Arc<LoadedKey>> {
        if let Some(k) = entry.loaded.get() {
            return Ok(k.clone());
        }
        let loaded = Arc::new(LoadedKey::load(self.material(entry)?)?);
        Ok(entry.loaded.get_or_init(|| loaded).clone())
    }

    /// The raw secret of a key (raw bytes, or PKCS#8 for private keys), for wrapping.
    pub fn secret_of(&self, entry: &ObjectEntry) -> TokenResult<SecretBytes> {
        let plain = self
            .pmk
            .open(
                &record_aad(self.serial, &entry.ouid, entry.version),
                &entry.sealed_record,
            )
            .map_err(|_| integrity_error(&format!("object {} does not decrypt", entry.ouid)))?;
        let mut record: ObjectRecord = postcard::from_bytes(plain.expose())
            .map_err(|_| integrity_error(&format!("object {} is malformed", entry.ouid)))?;
        let secret = record
            .secret
            .take()
            .ok_or_else(|| TokenError::KeyFunctionNotPermitted("the object holds no secret".into()))?;
        Ok(SecretBytes::new(secret))
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
            (ck::CKO_SECRET_KEY, ck::CKK_AES) => KeyMaterial::Aes(secret),
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
            OpBody::ClearPartition => vec![],
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

    /// Creates objects (one, or a key pair) as one operation. The op-log entry
    /// carries each object's sealed record.
    pub async fn create(&self, entries: Vec<ObjectEntry>, op_id: Option<[u8; 16]>) -> TokenResult<Vec<Ouid>> {
        if self.object_count() + entries.len() > self.max_objects {
            return Err(TokenError::DeviceMemory(format!(
                "the partition holds its limit of {} objects",
                self.max_objects
            )));
        }
        let objects = entries
            .iter()
            .map(|e| NewObject {
                ouid: e.ouid,
                attrs: e.attrs.clone(),
                sealed_secret: Some(e.sealed_record.clone()),
            })
            .collect();
        let ids: Vec<Ouid> = entries.iter().map(|e| e.ouid).collect();
        self.commit(OpBody::Create { objects }, op_id, entries, vec![], false)
            .await?;
        Ok(ids)
    }

    /// Replaces an object's attributes with `attrs` (already checked), as a new version.
    pub async fn update(
        &self,
        current: &ObjectEntry,
        attrs: Template,
        changed: Template,
        op_id: Option<[u8; 16]>,
    ) -> TokenResult<()> {
        let secret = match current.attrs.class() {
            Some(c) if hahsm_token::object::holds_secret(c) => Some(self.secret_of(current)?),
            _ => None,
        };
        let entry = self.seal_entry(
            current.ouid,
            current.version + 1,
            attrs,
            secret.as_ref().map(|s| s.expose()),
        )?;
        self.commit(
            OpBody::SetAttributes {
                ouid: current.ouid,
                attrs: changed,
            },
            op_id,
            vec![entry],
            vec![],
            false,
        )
        .await
    }

    pub async fn destroy(&self, ouid: Ouid, op_id: Option<[u8; 16]>) -> TokenResult<()> {
        self.commit(OpBody::Destroy { ouid }, op_id, vec![], vec![ouid], false)
            .await
    }

    pub async fn clear(&self) -> TokenResult<()> {
        self.commit(OpBody::ClearPartition, None, vec![], vec![], true)
            .await
    }

    /// The one write path: the op-log entry, the object rows and the new sealed
    /// digest go to the store in one transaction; memory changes only after the
    /// commit, so nothing is visible that is not durable.
    async fn commit(
        &self,
        body: OpBody,
        op_id: Option<[u8; 16]>,
        puts: Vec<ObjectEntry>,
        deletes: Vec<Ouid>,
        clear: bool,
    ) -> TokenResult<()> {
        let mut state = self.writes.lock().await;
        let stamp = {
            let mut hlc = self.hlc.lock().unwrap_or_else(|p| p.into_inner());
            *hlc = hlc.tick(crate::now_ms());
            Stamp {
                hlc: *hlc,
                origin: self.member,
            }
        };
        let seq = state.next_seq;
        let kind = body.kind().to_string();
        let op = Op {
            seq,
            stamp,
            client_op_id: op_id,
            body,
        };
        let mut plain_op = postcard::to_allocvec(&op)
            .map_err(|e| TokenError::FunctionFailed(format!("cannot encode op: {e}")))?;
        let sealed_op = self.pmk.seal(&op_aad(self.serial, self.member, seq), &plain_op);
        plain_op.zeroize();
        let sealed_op = sealed_op?;

        let mut digest = if clear { [0u8; 32] } else { state.digest };
        {
            let objects = self.read_objects();
            for ouid in &deletes {
                if let Some(old) = objects.get(ouid) {
                    xor_into(&mut digest, &digest_term(ouid, old.version));
                }
            }
            for e in &puts {
                if let Some(old) = objects.get(&e.ouid) {
                    xor_into(&mut digest, &digest_term(&e.ouid, old.version));
                }
                xor_into(&mut digest, &digest_term(&e.ouid, e.version));
            }
        }
        let write = Write {
            clear,
            puts: puts
                .iter()
                .map(|e| ObjectRow {
                    ouid: e.ouid.0,
                    version: e.version,
                    sealed: e.sealed_record.clone(),
                })
                .collect(),
            deletes: deletes.iter().map(|o| o.0).collect(),
            op: OpRow {
                index: 0,
                origin: self.member,
                seq,
                hlc_wall: stamp.hlc.wall_ms,
                hlc_logical: stamp.hlc.logical,
                client_op_id: op_id,
                kind,
                body: sealed_op,
            },
            digest: Some(self.pmk.seal(&digest_aad(self.serial), &digest)?),
        };
        let store = self.store.clone();
        let id = self.id;
        tokio::task::spawn_blocking(move || store.commit(id, &write))
            .await
            .map_err(|e| TokenError::DeviceError(format!("store task failed: {e}")))??;

        state.next_seq += 1;
        state.digest = digest;
        let mut objects = self.write_objects();
        if clear {
            objects.clear();
        }
        for ouid in deletes {
            objects.remove(&ouid);
        }
        for e in puts {
            objects.insert(e.ouid, Arc::new(e));
        }
        Ok(())
    }
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
        _ => Err(TokenError::KeyTypeInconsistent),
    }
}
