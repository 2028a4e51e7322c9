//! The member's state: HSM initialisation, the SO login, policies, partitions
//! and their activation, and the registry of clients.
//!
//! Key hierarchy (see SECURITY.md):
//! - each partition has a random 256-bit partition master key (PMK) that seals
//!   its objects, its PIN verifier and its op log;
//! - the PMK is stored wrapped under a key derived (HKDF-SHA256) from the
//!   partition-owner secret, so activation needs that secret;
//! - with auto-activation on, the PMK is also sealed under a host-local key file
//!   (`autoactivate.key`, mode 0600), so a restarted member comes back by itself;
//! - the domain secret is stored wrapped under a key derived from the SO secret.
use crate::config::Config;
use crate::partition::ActivePartition;
use hahsm_crypto::{self as crypto, SealKey, SecretBytes};
use hahsm_link::{ClientAuthorizer, Fingerprint};
use hahsm_proto::admin::{ClientSummary, ObjectSummary, PartitionSummary, PolicyLine};
use hahsm_proto::Secret;
use hahsm_store::{ClientRow, PartitionRow, Store};
use hahsm_token::policy::{self, Policies, PolicyDef, HSM_POLICIES, PARTITION_POLICIES};
use hahsm_token::{ck, Hlc, TokenError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// An operator-facing failure on the admin socket. Its text is shown as is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdminError(pub String);

impl From<TokenError> for AdminError {
    fn from(e: TokenError) -> Self {
        AdminError(e.to_string())
    }
}

impl From<hahsm_store::StoreError> for AdminError {
    fn from(e: hahsm_store::StoreError) -> Self {
        AdminError(e.to_string())
    }
}

pub type AdminResult<T> = Result<T, AdminError>;

fn fail<T>(msg: impl Into<String>) -> AdminResult<T> {
    Err(AdminError(msg.into()))
}

/// Which PIN of a partition: the user's, or the partition SO's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    User,
    So,
}

/// Partition data kept in the row's `extra` blob.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct PartitionExtra {
    so_pin_salt: Vec<u8>,
    sealed_so_pin: Option<Vec<u8>>,
}

/// The row's extra data; empty for a partition that never had any. Bytes
/// that do not decode are a damaged row: refused, never read as "no SO PIN".
fn extra_of(row: &PartitionRow) -> Result<PartitionExtra, TokenError> {
    if row.extra.is_empty() {
        return Ok(PartitionExtra::default());
    }
    decode_row(&row.extra, &format!("the extra data of partition '{}'", row.name))
}

/// A registered client, as the TLS layer and request handlers see it.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    pub name: String,
    pub partitions: HashSet<String>,
}

pub const SECRET_LEN: usize = 32;
pub const MIN_PIN_LEN: usize = 4;
pub const MAX_PIN_LEN: usize = 64;

const META_SERIAL: &str = "member.serial";
const META_LABEL: &str = "hsm.label";
const META_SO_SALT: &str = "hsm.so_salt";
const META_SO_VERIFIER: &str = "hsm.so_verifier";
const META_DOMAIN: &str = "hsm.domain_wrapped";
const META_POLICIES: &str = "hsm.policies";
/// Followed by a partition serial: the partition's origin id, when not the member's serial.
const META_ORIGIN: &str = "partition.origin.";

/// A PIN verifier and its salt, in clear (for backups only).
pub type PinPair = Option<(Vec<u8>, Vec<u8>)>;

pub struct Appliance {
    pub config: Config,
    pub store: Arc<Store>,
    pub serial: u64,
    pub hlc: Arc<Mutex<Hlc>>,
    seal_key: SealKey,
    so_login_until: Mutex<Option<Instant>>,
    /// While the SO is logged in: a key derived from the domain secret, for
    /// preparing partitions for replication. Dropped (zeroized) at logout.
    so_domain_key: Mutex<Option<SecretBytes>>,
    /// The HA groups this member's partitions belong to, by partition name.
    pub groups: RwLock<HashMap<String, Arc<crate::replication::Group>>>,
    clients: Arc<ClientRegistry>,
    tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
    active: RwLock<HashMap<String, Arc<ActivePartition>>>,
    /// The addresses the client link and the peer listener are bound to.
    pub bound_client: std::sync::OnceLock<String>,
    pub bound_peer: std::sync::OnceLock<String>,
    /// Serializes administrative changes, so two operators cannot interleave.
    admin_lock: tokio::sync::Mutex<()>,
    /// Serializes PIN checks, so that concurrent guesses are each counted
    /// against the lockout limit before the next is tried.
    pub pin_check_lock: tokio::sync::Mutex<()>,
    /// The audit journal of administrative actions.
    pub journal: crate::journal::Journal,
    /// Metrics and alerts.
    pub monitor: Arc<crate::monitor::Monitor>,
}

fn secret_ok(secret: &Secret, what: &str) -> AdminResult<()> {
    if secret.len() != SECRET_LEN {
        return fail(format!(
            "the {what} must be {SECRET_LEN} bytes (256 bits); got {} bytes",
            secret.len()
        ));
    }
    Ok(())
}

pub fn pin_ok(pin: &[u8]) -> Result<(), TokenError> {
    if pin.len() < MIN_PIN_LEN || pin.len() > MAX_PIN_LEN {
        return Err(TokenError::PinLenRange);
    }
    Ok(())
}

fn owner_kek(owner_secret: &[u8], serial: u64) -> Result<SealKey, TokenError> {
    let key = crypto::hkdf_sha256(
        &[owner_secret],
        &serial.to_le_bytes(),
        b"hahsm/partition-owner-kek/v1",
        32,
    )?;
    SealKey::new(key)
}

fn so_kek(so_secret: &[u8], salt: &[u8]) -> Result<SealKey, TokenError> {
    SealKey::new(crypto::hkdf_sha256(&[so_secret], salt, b"hahsm/so-kek/v1", 32)?)
}

fn so_verifier(so_secret: &[u8], salt: &[u8]) -> Result<SecretBytes, TokenError> {
    crypto::hkdf_sha256(&[so_secret], salt, b"hahsm/so-verifier/v1", 32)
}

fn pmk_aad(serial: u64) -> Vec<u8> {
    let mut aad = b"hahsm/pmk/v1".to_vec();
    aad.extend_from_slice(&serial.to_le_bytes());
    aad
}

fn autoactivate_aad(serial: u64) -> Vec<u8> {
    let mut aad = b"hahsm/autoactivate/v1".to_vec();
    aad.extend_from_slice(&serial.to_le_bytes());
    aad
}

fn pin_pending_meta(partition: &str, kind: PinKind) -> String {
    match kind {
        PinKind::User => format!("pin-pending/{partition}/user"),
        PinKind::So => format!("pin-pending/{partition}/so"),
    }
}

/// Partition policy 15: the failed logins that lock the PIN (0: no limit).
pub fn max_failed_logins(row: &PartitionRow) -> Result<u32, TokenError> {
    Ok(partition_policies_of(row)?.get(policy::partition::MAX_FAILED_LOGINS) as u32)
}

fn pin_aad(serial: u64, kind: PinKind) -> Vec<u8> {
    let mut aad = match kind {
        PinKind::User => b"hahsm/pin/v1".to_vec(),
        PinKind::So => b"hahsm/so-pin/v1".to_vec(),
    };
    aad.extend_from_slice(&serial.to_le_bytes());
    aad
}

fn random_serial(digits: u32) -> Result<u64, TokenError> {
    let bytes = crypto::random(8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes);
    let low = 10u64.pow(digits - 1);
    Ok(low + u64::from_le_bytes(b) % (9 * low))
}

fn policy_lines(table: &[PolicyDef], values: &Policies) -> Vec<PolicyLine> {
    table
        .iter()
        .map(|d| PolicyLine {
            number: d.number,
            name: d.name.to_string(),
            description: d.description.to_string(),
            value: values.get(d.number),
        })
        .collect()
}

/// Decodes a record of the appliance's own. One that does not decode is a
/// damaged store, refused as the store refuses a damaged file: replacing it
/// with defaults could relax a policy or lose a PIN verifier.
fn decode_row<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, TokenError> {
    postcard::from_bytes(bytes)
        .map_err(|_| TokenError::DeviceError(format!("store integrity check failed: {what} does not decode")))
}

fn decode_policies(bytes: &[u8], whose: &str) -> Result<Policies, TokenError> {
    decode_row(bytes, &format!("the policies of {whose}"))
}

fn partition_policies_of(row: &PartitionRow) -> Result<Policies, TokenError> {
    decode_policies(&row.policies, &format!("partition '{}'", row.name))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, TokenError> {
    postcard::to_allocvec(v).map_err(|e| TokenError::DeviceError(format!("cannot encode a record: {e}")))
}

/// Refuses a store whose appliance records do not decode (the HSM policies,
/// each partition's policies and extra data), naming the damaged one.
fn check_records(store: &Store) -> anyhow::Result<()> {
    if let Some(b) = store.get_meta(META_POLICIES)? {
        decode_policies(&b, "the HSM")?;
    }
    for row in store.list_partitions()? {
        partition_policies_of(&row)?;
        extra_of(&row)?;
    }
    Ok(())
}

/// Creates a directory readable only by this user.
pub fn private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

impl Appliance {
    /// Opens the member's store, loads its registry and re-activates the
    /// partitions whose auto-activation policy is on.
    pub fn open(config: Config) -> anyhow::Result<Arc<Appliance>> {
        private_dir(&config.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data directory {}: {e}", config.data_dir.display())
        })?;
        let store = Arc::new(Store::open(&config.store_path())?);
        check_records(&store).map_err(|e| anyhow::anyhow!("{e}; refusing to start on a damaged store"))?;
        let seal_key = load_or_create_seal_key(&config.seal_key_path())?;
        let serial = match store.get_meta(META_SERIAL)? {
            Some(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().unwrap_or_default()),
            _ => {
                let s = random_serial(8)?;
                store.put_meta(META_SERIAL, &s.to_le_bytes())?;
                s
            }
        };
        let journal =
            crate::journal::Journal::open(&config.data_dir.join("journal.jsonl"), serial, store.clone())?;
        let appliance = Arc::new(Appliance {
            journal,
            config,
            store,
            serial,
            hlc: Arc::new(Mutex::new(Hlc::default())),
            seal_key,
            so_login_until: Mutex::new(None),
            so_domain_key: Mutex::new(None),
            groups: RwLock::new(HashMap::new()),
            clients: Arc::new(ClientRegistry::default()),
            tls: RwLock::new(None),
            active: RwLock::new(HashMap::new()),
            bound_client: std::sync::OnceLock::new(),
            bound_peer: std::sync::OnceLock::new(),
            admin_lock: tokio::sync::Mutex::new(()),
            pin_check_lock: tokio::sync::Mutex::new(()),
            monitor: Arc::new(crate::monitor::Monitor::new(serial)),
        });
        appliance.reload_clients()?;
        appliance.auto_activate();
        Ok(appliance)
    }

    fn auto_activate(&self) {
        let partitions = match self.store.list_partitions() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot list partitions for auto-activation");
                return;
            }
        };
        for row in partitions {
            if !row.activated {
                continue;
            }
            // Checked at start-up (`check_records`).
            let Ok(policies) = partition_policies_of(&row) else {
                continue;
            };
            let Some(sealed) = row.sealed_pmk.as_ref() else {
                info!(partition = %row.name, "partition needs activation with its owner secret");
                continue;
            };
            if !policies.enabled(policy::partition::ALLOW_AUTO_ACTIVATION) {
                continue;
            }
            let result = self
                .seal_key
                .open(&autoactivate_aad(row.serial), sealed)
                .and_then(SealKey::new)
                .and_then(|pmk| self.load_partition(&row, pmk));
            match result {
                Ok(()) => info!(partition = %row.name, "partition auto-activated"),
                Err(e) => {
                    warn!(partition = %row.name, error = %e, "auto-activation failed; the partition stays inactive")
                }
            }
        }
    }

    fn load_partition(&self, row: &PartitionRow, pmk: SealKey) -> Result<(), TokenError> {
        let active = ActivePartition::open(
            self.store.clone(),
            row,
            pmk,
            self.partition_origin(row.serial),
            self.hlc.clone(),
            self.config.limits.max_objects_per_partition,
        )?;
        let active = Arc::new(active);
        self.active_write().insert(row.name.clone(), active.clone());
        crate::replication::resume_group(self, &active);
        Ok(())
    }

    fn active_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<ActivePartition>>> {
        self.active.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn active_partition(&self, name: &str) -> Option<Arc<ActivePartition>> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn reload_clients(&self) -> AdminResult<()> {
        let mut map = HashMap::new();
        for c in self.store.list_clients()? {
            let partitions = self.store.partitions_of_client(&c.name)?.into_iter().collect();
            let Ok(fp) = Fingerprint::parse(&c.fingerprint_hex) else {
                warn!(client = %c.name, "registered fingerprint is malformed; the client is ignored");
                continue;
            };
            map.insert(
                fp,
                ClientEntry {
                    name: c.name,
                    partitions,
                },
            );
        }
        *self.clients.0.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// The registered client with this certificate fingerprint.
    pub fn client(&self, fp: &Fingerprint) -> Option<ClientEntry> {
        self.clients.get(fp)
    }

    pub fn client_may_open(&self, fp: &Fingerprint, partition: &str) -> bool {
        self.clients.may_open(fp, partition)
    }

    /// The TLS acceptor for the client link, built from the member's
    /// certificate; made at first use, and again after `regen-cert`.
    pub fn tls_acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        if let Some(a) = self.tls.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(a.clone());
        }
        if !self.config.cert_path().exists() {
            let host = self
                .config
                .listen
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or("127.0.0.1");
            self.regen_cert(
                &format!("hahsm-{}", self.serial),
                &[host.trim_matches(['[', ']']).to_string()],
            )?;
        }
        let identity = hahsm_link::load_identity(&self.config.cert_path(), &self.config.key_path())?;
        let config = hahsm_link::server_config(identity, self.clients.clone())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(acceptor.clone());
        Ok(acceptor)
    }

    /// Makes a new server certificate and key; new connections use it at once.
    pub fn regen_cert(&self, common_name: &str, sans: &[String]) -> anyhow::Result<String> {
        let mut names: Vec<String> = sans.to_vec();
        for default in ["localhost", "127.0.0.1"] {
            if !names.iter().any(|n| n == default) {
                names.push(default.to_string());
            }
        }
        let (cert_pem, key_pem) = hahsm_link::generate_self_signed(common_name, &names)?;
        hahsm_link::write_private_file(&self.config.key_path(), key_pem.as_bytes())?;
        hahsm_link::write_private_file(&self.config.cert_path(), cert_pem.as_bytes())?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = None;
        info!(common_name, "server certificate regenerated");
        self.fingerprint()
    }

    /// The SHA-256 fingerprint of the member's server certificate.
    pub fn fingerprint(&self) -> anyhow::Result<String> {
        let cert = hahsm_link::load_cert_pem(&self.config.cert_path())?;
        Ok(Fingerprint::of_der(&cert).to_string())
    }

    /// The peer listener's address, once bound.
    pub fn peer_address(&self) -> Option<String> {
        self.bound_peer.get().cloned()
    }

    /// The client link's address, once bound.
    pub fn client_address(&self) -> String {
        self.bound_client
            .get()
            .cloned()
            .unwrap_or_else(|| self.config.listen.clone())
    }

    pub fn admin_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.admin_lock
    }

    /// The origin id a partition's own writes carry: the member's serial,
    /// or the new id a restored partition was given (see `custody`).
    fn partition_origin(&self, partition_serial: u64) -> u64 {
        self.store
            .get_meta(&format!("{META_ORIGIN}{partition_serial}"))
            .ok()
            .flatten()
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(self.serial)
    }

    /// Gives a partition a new random origin id, before it is activated.
    pub fn new_origin(&self, partition_serial: u64) -> AdminResult<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(&crypto::random(8)?);
        // Positive in the store's signed column, and never 0 ("none").
        let origin = (u64::from_le_bytes(b) >> 1).max(1);
        self.store
            .put_meta(&format!("{META_ORIGIN}{partition_serial}"), &origin.to_le_bytes())?;
        Ok(origin)
    }

    /// A partition's user and SO PIN verifiers (salt, verifier), opened with its master key.
    pub fn pin_verifiers(&self, row: &PartitionRow, pmk: &SealKey) -> AdminResult<(PinPair, PinPair)> {
        let open = |sealed: Option<&Vec<u8>>, salt: &[u8], kind| -> AdminResult<PinPair> {
            match sealed {
                Some(s) => Ok(Some((
                    salt.to_vec(),
                    pmk.open(&pin_aad(row.serial, kind), s)?.expose().to_vec(),
                ))),
                None => Ok(None),
            }
        };
        let extra = extra_of(row)?;
        Ok((
            open(row.sealed_pin.as_ref(), &row.pin_salt, PinKind::User)?,
            open(extra.sealed_so_pin.as_ref(), &extra.so_pin_salt, PinKind::So)?,
        ))
    }

    /// Sets a partition's PIN verifiers, sealing them under its master key.
    pub fn set_pin_verifiers(
        &self,
        name: &str,
        pmk: &SealKey,
        user: PinPair,
        so: PinPair,
    ) -> AdminResult<()> {
        let mut row = self.partition_row(name)?;
        if let Some((salt, verifier)) = user {
            row.sealed_pin = Some(pmk.seal(&pin_aad(row.serial, PinKind::User), &verifier)?);
            row.pin_salt = salt;
        }
        if let Some((salt, verifier)) = so {
            let mut extra = extra_of(&row)?;
            extra.sealed_so_pin = Some(pmk.seal(&pin_aad(row.serial, PinKind::So), &verifier)?);
            extra.so_pin_salt = salt;
            row.extra = encode(&extra)?;
        }
        self.store.update_partition(&row)?;
        Ok(())
    }

    // ----- HSM level -----

    pub fn is_initialized(&self) -> bool {
        matches!(self.store.get_meta(META_SO_VERIFIER), Ok(Some(_)))
    }

    pub fn hsm_label(&self) -> String {
        self.store
            .get_meta(META_LABEL)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn so_logged_in(&self) -> bool {
        let until = self.so_login_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    pub fn require_so(&self) -> AdminResult<()> {
        if !self.is_initialized() {
            return fail("the HSM is not initialized: run `hahsm appliance hsm init` first");
        }
        if !self.so_logged_in() {
            return fail("this command needs the SO: run `hahsm appliance hsm login --so-secret FILE` first");
        }
        Ok(())
    }

    pub fn hsm_init(&self, label: &str, so_secret: &Secret, domain_secret: &Secret) -> AdminResult<()> {
        if self.is_initialized() {
            return fail("the HSM is already initialized; `hahsm appliance hsm factory-reset` starts over");
        }
        if label.is_empty() || label.len() > 32 {
            return fail("the HSM label must be 1 to 32 characters");
        }
        secret_ok(so_secret, "SO secret")?;
        secret_ok(domain_secret, "domain secret")?;
        let salt = crypto::random(16)?;
        let verifier = so_verifier(so_secret.expose(), &salt)?;
        let wrapped_domain =
            so_kek(so_secret.expose(), &salt)?.seal(b"hahsm/domain/v1", domain_secret.expose())?;
        self.store.put_meta(META_LABEL, label.as_bytes())?;
        self.store.put_meta(META_SO_SALT, &salt)?;
        self.store.put_meta(META_DOMAIN, &wrapped_domain)?;
        self.store
            .put_meta(META_POLICIES, &encode(&Policies::defaults(HSM_POLICIES))?)?;
        // Written last: its presence is what marks the HSM initialized.
        self.store.put_meta(META_SO_VERIFIER, verifier.expose())?;
        info!(label, "HSM initialized");
        Ok(())
    }

    pub fn hsm_login(&self, so_secret: &Secret) -> AdminResult<()> {
        if !self.is_initialized() {
            return fail("the HSM is not initialized");
        }
        let salt = self.store.get_meta(META_SO_SALT)?.unwrap_or_default();
        let stored = self.store.get_meta(META_SO_VERIFIER)?.unwrap_or_default();
        let given = so_verifier(so_secret.expose(), &salt)?;
        if !crypto::ct_eq(given.expose(), &stored) {
            warn!("SO login refused: wrong SO secret");
            return fail("SO login refused: the SO secret is wrong");
        }
        let wrapped = self.store.get_meta(META_DOMAIN)?.unwrap_or_default();
        let domain = so_kek(so_secret.expose(), &salt)?
            .open(b"hahsm/domain/v1", &wrapped)
            .map_err(|_| AdminError("store integrity check failed: the wrapped domain secret".into()))?;
        *self.so_domain_key.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(crate::replication::domain_key(domain.expose())?);
        let minutes = self.config.limits.so_login_minutes;
        *self.so_login_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + Duration::from_secs(minutes * 60));
        info!("SO logged in on the admin socket");
        Ok(())
    }

    pub fn hsm_logout(&self) {
        *self.so_login_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.so_domain_key.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The key derived from the domain secret; needs the SO logged in.
    pub fn so_domain_key(&self) -> AdminResult<SecretBytes> {
        self.require_so()?;
        self.so_domain_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| AdminError("log in as the SO again: the domain key is not loaded".into()))
    }

    /// Unwraps a partition's master key with its owner secret.
    pub fn partition_pmk(&self, name: &str, owner_secret: &Secret) -> AdminResult<SealKey> {
        let row = self.partition_row(name)?;
        self.unwrap_pmk(&row, owner_secret)
    }

    pub fn hsm_policies(&self) -> AdminResult<Policies> {
        Ok(match self.store.get_meta(META_POLICIES)? {
            Some(b) => decode_policies(&b, "the HSM")?,
            None => Policies::defaults(HSM_POLICIES),
        })
    }

    pub fn hsm_policy_lines(&self) -> AdminResult<Vec<PolicyLine>> {
        Ok(policy_lines(HSM_POLICIES, &self.hsm_policies()?))
    }

    pub fn hsm_change_policy(&self, key: &str, value: u64) -> AdminResult<()> {
        self.require_so()?;
        let def = policy::lookup(HSM_POLICIES, key)
            .ok_or_else(|| AdminError(format!("no HSM policy '{key}' (see `hsm show-policies`)")))?;
        let mut p = self.hsm_policies()?;
        p.set(def, value).map_err(AdminError)?;
        self.store.put_meta(META_POLICIES, &encode(&p)?)?;
        info!(policy = def.number, name = def.name, value, "HSM policy changed");
        Ok(())
    }

    pub fn factory_reset(&self) -> AdminResult<()> {
        let active: Vec<String> = self.active_write().drain().map(|(n, _)| n).collect();
        for name in active {
            crate::replication::stop_group(self, &name);
        }
        for p in self.store.list_partitions()? {
            self.store.delete_partition(p.id)?;
        }
        for c in self.store.list_clients()? {
            self.store.remove_client(&c.name)?;
        }
        for key in [
            META_SO_VERIFIER,
            META_LABEL,
            META_SO_SALT,
            META_DOMAIN,
            META_POLICIES,
        ] {
            self.store.delete_meta(key)?;
        }
        crate::custody::forget(self)?;
        self.hsm_logout();
        self.reload_clients()?;
        warn!("factory reset: every partition, client and secret was erased");
        Ok(())
    }

    // ----- partitions -----

    fn partition_row(&self, name: &str) -> AdminResult<PartitionRow> {
        self.store
            .get_partition(name)?
            .ok_or_else(|| AdminError(format!("no partition named '{name}'")))
    }

    pub fn partition_create(
        &self,
        name: &str,
        owner_secret: &Secret,
        initial_pin: Option<&Secret>,
    ) -> AdminResult<(u64, Option<Secret>)> {
        self.require_so()?;
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return fail("a partition name is 1 to 32 letters, digits, '-', '_' or '.'");
        }
        secret_ok(owner_secret, "partition-owner secret")?;
        if self.store.get_partition(name)?.is_some() {
            return fail(format!("partition '{name}' already exists"));
        }
        let generated = match initial_pin {
            Some(_) => None,
            // Like the appliance's challenge string: printed once, to be changed.
            None => Some(Secret::new(random_pin()?.into_bytes())),
        };
        let pin = initial_pin
            .or(generated.as_ref())
            .map(|p| p.expose().to_vec())
            .unwrap_or_default();
        pin_ok(&pin)?;
        let serial = random_serial(8)?;
        let pmk = SealKey::generate()?;
        let salt = crypto::random(16)?;
        let verifier = crypto::pin_verifier(&pin, &salt);
        let row = PartitionRow {
            id: 0,
            name: name.to_string(),
            serial,
            wrapped_pmk: owner_kek(owner_secret.expose(), serial)?.seal(&pmk_aad(serial), pmk.key_bytes())?,
            sealed_pmk: None,
            pin_salt: salt,
            sealed_pin: Some(pmk.seal(&pin_aad(serial, PinKind::User), &verifier)?),
            failed_logins: 0,
            policies: encode(&Policies::defaults(PARTITION_POLICIES))?,
            activated: false,
            digest: Vec::new(),
            extra: Vec::new(),
        };
        self.store.create_partition(&row)?;
        info!(partition = name, serial, "partition created");
        Ok((serial, generated))
    }

    fn unwrap_pmk(&self, row: &PartitionRow, owner_secret: &Secret) -> AdminResult<SealKey> {
        let kek = owner_kek(owner_secret.expose(), row.serial)?;
        let pmk = kek.open(&pmk_aad(row.serial), &row.wrapped_pmk).map_err(|_| {
            warn!(partition = %row.name, "activation refused: wrong partition-owner secret");
            AdminError(format!(
                "the partition-owner secret is wrong for partition '{}'",
                row.name
            ))
        })?;
        Ok(SealKey::new(pmk)?)
    }

    pub fn partition_activate(&self, name: &str, owner_secret: &Secret) -> AdminResult<()> {
        let mut row = self.partition_row(name)?;
        let policies = partition_policies_of(&row)?;
        if !policies.enabled(policy::partition::ALLOW_ACTIVATION) {
            return fail(format!(
                "partition '{name}' does not allow activation: set policy 22 (allow-activation) to 1 first"
            ));
        }
        let pmk = self.unwrap_pmk(&row, owner_secret)?;
        row.sealed_pmk = if policies.enabled(policy::partition::ALLOW_AUTO_ACTIVATION) {
            Some(
                self.seal_key
                    .seal(&autoactivate_aad(row.serial), pmk.key_bytes())?,
            )
        } else {
            None
        };
        row.activated = true;
        if self.active_partition(name).is_none() {
            self.load_partition(&row, pmk)?;
        }
        self.store.update_partition(&row)?;
        info!(
            partition = name,
            auto = row.sealed_pmk.is_some(),
            "partition activated"
        );
        Ok(())
    }

    pub fn partition_deactivate(&self, name: &str) -> AdminResult<()> {
        self.require_so()?;
        let mut row = self.partition_row(name)?;
        row.activated = false;
        row.sealed_pmk = None;
        self.store.update_partition(&row)?;
        self.active_write().remove(name);
        crate::replication::stop_group(self, name);
        info!(partition = name, "partition deactivated");
        Ok(())
    }

    pub fn partition_policies(&self, name: &str) -> AdminResult<Vec<PolicyLine>> {
        let row = self.partition_row(name)?;
        Ok(policy_lines(PARTITION_POLICIES, &partition_policies_of(&row)?))
    }

    pub fn partition_policy_values(&self, name: &str) -> AdminResult<Policies> {
        Ok(partition_policies_of(&self.partition_row(name)?)?)
    }

    pub fn partition_change_policy(&self, name: &str, key: &str, value: u64) -> AdminResult<()> {
        self.require_so()?;
        let mut row = self.partition_row(name)?;
        let def = policy::lookup(PARTITION_POLICIES, key).ok_or_else(|| {
            AdminError(format!(
                "no partition policy '{key}' (see `partition show-policies`)"
            ))
        })?;
        let mut p = partition_policies_of(&row)?;
        p.set(def, value).map_err(AdminError)?;
        row.policies = encode(&p)?;
        if def.number == policy::partition::ALLOW_AUTO_ACTIVATION {
            if value == 0 {
                // Turning auto-activation off removes the sealed key at once.
                row.sealed_pmk = None;
            } else if let Some(active) = self.active_partition(name) {
                row.sealed_pmk = Some(
                    self.seal_key
                        .seal(&autoactivate_aad(row.serial), active.pmk().key_bytes())?,
                );
            }
        }
        self.store.update_partition(&row)?;
        info!(
            partition = name,
            policy = def.number,
            name = def.name,
            value,
            "partition policy changed"
        );
        Ok(())
    }

    /// Changes the user PIN with the partition-owner secret, which also
    /// clears a lockout. (With the old PIN, the partition must be active, and
    /// the group changes it: `crate::pins::change_with_old_pin`.)
    pub fn partition_change_pin(
        &self,
        name: &str,
        owner: Option<&Secret>,
        new_pin: &Secret,
    ) -> AdminResult<()> {
        let row = self.partition_row(name)?;
        pin_ok(new_pin.expose())?;
        let Some(owner) = owner else {
            return fail("give the old PIN or the partition-owner secret");
        };
        let pmk = self.unwrap_pmk(&row, owner)?;
        self.store_pin(row, &pmk, PinKind::User, new_pin.expose())?;
        self.mark_pin_pending(name, PinKind::User)?;
        info!(partition = name, "partition PIN changed");
        Ok(())
    }

    /// Sets the partition SO's PIN, with the partition-owner secret.
    pub fn partition_change_so_pin(&self, name: &str, owner: &Secret, new_pin: &Secret) -> AdminResult<()> {
        let row = self.partition_row(name)?;
        pin_ok(new_pin.expose())?;
        let pmk = self.unwrap_pmk(&row, owner)?;
        self.store_pin(row, &pmk, PinKind::So, new_pin.expose())?;
        self.mark_pin_pending(name, PinKind::So)?;
        info!(partition = name, "partition SO PIN changed");
        Ok(())
    }

    /// Stores a new PIN verifier, sealed under the partition master key. A new
    /// user PIN clears the failed-login count.
    pub fn store_pin(
        &self,
        mut row: PartitionRow,
        pmk: &SealKey,
        kind: PinKind,
        pin: &[u8],
    ) -> Result<(), TokenError> {
        pin_ok(pin)?;
        let salt = crypto::random(16)?;
        let sealed = pmk.seal(&pin_aad(row.serial, kind), &crypto::pin_verifier(pin, &salt))?;
        match kind {
            PinKind::User => {
                row.pin_salt = salt;
                row.sealed_pin = Some(sealed);
                row.failed_logins = 0;
            }
            PinKind::So => {
                let mut extra = extra_of(&row)?;
                extra.so_pin_salt = salt;
                extra.sealed_so_pin = Some(sealed);
                row.extra = encode(&extra)?;
            }
        }
        self.store.update_partition(&row)?;
        Ok(())
    }

    /// The verifier a partition's row holds for a PIN, opened with the
    /// active partition's master key: the PIN as set with the owner secret,
    /// before it is published to the group (see `crate::pins`).
    pub fn row_verifier(
        &self,
        row: &PartitionRow,
        active: &ActivePartition,
        kind: PinKind,
    ) -> Result<Option<crate::pins::Verifier>, TokenError> {
        let extra = extra_of(row)?;
        let (stored, salt) = match kind {
            PinKind::User => (row.sealed_pin.as_ref(), &row.pin_salt),
            PinKind::So => (extra.sealed_so_pin.as_ref(), &extra.so_pin_salt),
        };
        let Some(stored) = stored else {
            return Ok(None);
        };
        let hash = active
            .pmk()
            .open(&pin_aad(row.serial, kind), stored)
            .map_err(|_| TokenError::DeviceError("store integrity check failed: PIN verifier".into()))?;
        Ok(Some(crate::pins::Verifier {
            salt: salt.clone(),
            hash,
        }))
    }

    /// Whether the row holds a PIN the group has not been given yet.
    pub fn pin_pending(&self, partition: &str, kind: PinKind) -> bool {
        matches!(
            self.store.get_meta(&pin_pending_meta(partition, kind)),
            Ok(Some(_))
        )
    }

    /// A PIN set in the row: the group gets it when the partition is next
    /// active here (at once, if it is: see `crate::pins::publish`).
    fn mark_pin_pending(&self, partition: &str, kind: PinKind) -> AdminResult<()> {
        self.store
            .put_meta(&pin_pending_meta(partition, kind), b"1")
            .map_err(|e| AdminError(e.to_string()))
    }

    pub fn clear_pin_pending(&self, partition: &str, kind: PinKind) -> Result<(), TokenError> {
        Ok(self.store.delete_meta(&pin_pending_meta(partition, kind))?)
    }

    pub fn partition_row_for_login(&self, name: &str) -> Result<PartitionRow, TokenError> {
        self.store
            .get_partition(name)?
            .ok_or_else(|| TokenError::NotAuthorized(format!("no partition named '{name}'")))
    }

    pub fn partition_list(&self) -> AdminResult<Vec<PartitionSummary>> {
        let mut out = Vec::new();
        for row in self.store.list_partitions()? {
            let policies = partition_policies_of(&row)?;
            let max = policies.get(policy::partition::MAX_FAILED_LOGINS) as u32;
            // Active, the group's count (see `crate::pins`); the row's count
            // is from before PINs were group state.
            let failed_logins = match self.active_partition(&row.name) {
                Some(a) => u32::try_from(crate::pins::failures(&a)).unwrap_or(u32::MAX),
                None => row.failed_logins,
            };
            out.push(PartitionSummary {
                // Live objects when active; otherwise the rows, which also
                // count tombstones, are the best the store can say.
                object_count: match self.active_partition(&row.name) {
                    Some(a) => a.object_count() as u64,
                    None => self.store.object_count(row.id)?,
                },
                activated: self.active_partition(&row.name).is_some(),
                auto_activation: row.sealed_pmk.is_some(),
                failed_logins,
                pin_locked: max > 0 && failed_logins >= max,
                so_pin_set: extra_of(&row)?.sealed_so_pin.is_some(),
                name: row.name,
                serial: row.serial,
            });
        }
        Ok(out)
    }

    pub fn partition_contents(&self, name: &str) -> AdminResult<Vec<ObjectSummary>> {
        self.require_so()?;
        let active = self
            .active_partition(name)
            .ok_or_else(|| AdminError(format!("partition '{name}' is not activated")))?;
        Ok(active
            .all()
            .iter()
            .map(|o| ObjectSummary {
                ouid: o.ouid.to_string(),
                class: hahsm_token::object::class_name(o.class()).to_string(),
                key_type: o
                    .attrs
                    .key_type()
                    .map(hahsm_token::object::key_type_name)
                    .unwrap_or("-")
                    .to_string(),
                label: o.attrs.label().unwrap_or_default(),
                id_hex: hex::encode(o.attrs.bytes(ck::CKA_ID).unwrap_or_default()),
                private: o.is_private(),
                sensitive: o.attrs.flag(ck::CKA_SENSITIVE, false),
            })
            .collect())
    }

    pub async fn partition_clear(&self, name: &str) -> AdminResult<()> {
        self.require_so()?;
        let active = self
            .active_partition(name)
            .ok_or_else(|| AdminError(format!("partition '{name}' is not activated")))?;
        active.clear().await?;
        if let Some(g) = crate::replication::group_of(self, name) {
            g.replicate_write(&active).await?;
        }
        warn!(partition = name, "partition cleared");
        Ok(())
    }

    pub fn partition_delete(&self, name: &str) -> AdminResult<()> {
        self.require_so()?;
        let row = self.partition_row(name)?;
        self.active_write().remove(name);
        crate::replication::stop_group(self, name);
        self.store.delete_partition(row.id)?;
        self.reload_clients()?;
        warn!(partition = name, "partition deleted");
        Ok(())
    }

    // ----- clients -----

    pub fn client_register(&self, name: &str, hostname: &str, fingerprint: &str) -> AdminResult<()> {
        self.require_so()?;
        if name.is_empty() || name.len() > 64 {
            return fail("a client name is 1 to 64 characters");
        }
        let fp = Fingerprint::parse(fingerprint).map_err(|e| AdminError(format!("bad fingerprint: {e}")))?;
        self.store.register_client(&ClientRow {
            name: name.to_string(),
            fingerprint_hex: fp.to_hex(),
            hostname: hostname.to_string(),
        })?;
        self.reload_clients()?;
        info!(client = name, fingerprint = %fp, "client registered");
        Ok(())
    }

    pub fn client_remove(&self, name: &str) -> AdminResult<()> {
        self.require_so()?;
        self.store.remove_client(name)?;
        self.reload_clients()?;
        info!(client = name, "client removed");
        Ok(())
    }

    pub fn client_assign(&self, client: &str, partition: &str, assign: bool) -> AdminResult<()> {
        self.require_so()?;
        if assign {
            self.store.assign_partition(client, partition)?;
        } else {
            self.store.revoke_partition(client, partition)?;
        }
        self.reload_clients()?;
        info!(client, partition, assign, "client partition assignment changed");
        Ok(())
    }

    pub fn client_list(&self) -> AdminResult<Vec<ClientSummary>> {
        let mut out = Vec::new();
        for c in self.store.list_clients()? {
            let fp = Fingerprint::parse(&c.fingerprint_hex)
                .map(|f| f.to_string())
                .unwrap_or(c.fingerprint_hex.clone());
            out.push(ClientSummary {
                partitions: self.store.partitions_of_client(&c.name)?,
                name: c.name,
                hostname: c.hostname,
                fingerprint: fp,
            });
        }
        Ok(out)
    }
}

/// Registered clients by certificate fingerprint; the TLS layer asks it on
/// every handshake, request handlers on every request.
#[derive(Default)]
pub struct ClientRegistry(RwLock<HashMap<Fingerprint, ClientEntry>>);

impl ClientRegistry {
    pub fn get(&self, fp: &Fingerprint) -> Option<ClientEntry> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(fp).cloned()
    }

    /// Whether the client may open the partition; on every request, so it
    /// copies nothing.
    pub fn may_open(&self, fp: &Fingerprint, partition: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(fp)
            .is_some_and(|c| c.partitions.contains(partition))
    }
}

impl ClientAuthorizer for ClientRegistry {
    fn is_registered(&self, fp: &Fingerprint) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains_key(fp)
    }
}

fn random_pin() -> Result<String, TokenError> {
    // Four groups of four from an alphabet without look-alikes, as the
    // appliance's challenge strings are.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    // Rejection sampling: bytes at or above the largest multiple of the
    // alphabet's size would favour its first letters.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut chars: Vec<char> = Vec::with_capacity(16);
    while chars.len() < 16 {
        for b in crypto::random(32)? {
            if b < limit && chars.len() < 16 {
                chars.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

fn load_or_create_seal_key(path: &std::path::Path) -> anyhow::Result<SealKey> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(SealKey::new(SecretBytes::new(bytes))
            .map_err(|_| anyhow::anyhow!("{} is not a valid auto-activation key", path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SealKey::generate()?;
            hahsm_link::write_private_file(path, key.key_bytes())?;
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pins_are_four_groups_of_four_from_the_alphabet() {
        for _ in 0..50 {
            let pin = random_pin().unwrap();
            let groups: Vec<&str> = pin.split('-').collect();
            assert_eq!(groups.len(), 4, "{pin}");
            assert!(groups.iter().all(|g| g.len() == 4), "{pin}");
            assert!(
                pin.chars()
                    .all(|c| c == '-' || (c.is_ascii_alphanumeric() && !"IlO01o".contains(c))),
                "{pin}"
            );
        }
        assert_ne!(random_pin().unwrap(), random_pin().unwrap());
    }
}
