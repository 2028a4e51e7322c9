//! The member's state: the store, the activated partitions, the HA groups
//! running here, the clients, the TLS identity, the journal and the monitor;
//! opening it at start-up. The console's commands on it are in `hsm.rs`,
//! `partitions.rs` and `clients.rs`; the subsystems above (replication,
//! PINs, custody, key operations) take it as an argument.
use super::records::*;
use super::registry::ClientRegistry;
use crate::config::Config;
use crate::partition::ActivePartition;
use crate::sync::RecoverRw;
use hahsm_crypto::{SealKey, SecretBytes};
use hahsm_link::Fingerprint;
use hahsm_store::{PartitionRow, Store};
use hahsm_token::policy::{self};
use hahsm_token::{Hlc, TokenError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tracing::{info, warn};

pub struct Appliance {
    pub config: Config,
    pub store: Arc<Store>,
    pub serial: u64,
    pub hlc: Arc<Mutex<Hlc>>,
    pub(super) seal_key: SealKey,
    pub(super) so_login_until: Mutex<Option<Instant>>,
    /// While the SO is logged in: a key derived from the domain secret, for
    /// preparing partitions for replication. Dropped (zeroized) at logout.
    pub(super) so_domain_key: Mutex<Option<SecretBytes>>,
    /// The HA groups this member's partitions belong to, by partition name.
    pub groups: RwLock<HashMap<String, Arc<crate::replication::group::Group>>>,
    pub(super) clients: Arc<ClientRegistry>,
    pub(super) tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
    pub(super) active: RwLock<HashMap<String, Arc<ActivePartition>>>,
    /// The addresses the client link and the peer listener are bound to.
    pub bound_client: std::sync::OnceLock<String>,
    pub bound_peer: std::sync::OnceLock<String>,
    /// Serializes administrative changes, so two operators cannot interleave.
    pub(super) admin_lock: tokio::sync::Mutex<()>,
    /// Serializes PIN checks, so that concurrent guesses are each counted
    /// against the lockout limit before the next is tried.
    pub pin_check_lock: tokio::sync::Mutex<()>,
    /// The audit journal of administrative actions.
    pub journal: crate::journal::Journal,
    /// Metrics and alerts.
    pub monitor: Arc<crate::monitor::Monitor>,
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

    pub(super) fn auto_activate(&self) {
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

    pub(super) fn load_partition(&self, row: &PartitionRow, pmk: SealKey) -> Result<(), TokenError> {
        let active = ActivePartition::open(
            self.store.clone(),
            row,
            pmk,
            self.partition_origin(row.serial),
            self.hlc.clone(),
            self.config.limits.max_objects_per_partition,
            self.config.limits.key_cache_entries,
        )?;
        let active = Arc::new(active);
        self.active_write().insert(row.name.clone(), active);
        Ok(())
    }

    pub(super) fn active_write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<ActivePartition>>> {
        self.active.write_or_recover()
    }

    /// Every partition activated here.
    pub fn active_partitions(&self) -> Vec<Arc<ActivePartition>> {
        self.active.read_or_recover().values().cloned().collect()
    }

    pub fn active_partition(&self, name: &str) -> Option<Arc<ActivePartition>> {
        self.active.read_or_recover().get(name).cloned()
    }

    /// The TLS acceptor for the client link, built from the member's
    /// certificate; made at first use, and again after `regen-cert`.
    pub fn tls_acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        if let Some(a) = self.tls.read_or_recover().as_ref() {
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
        *self.tls.write_or_recover() = Some(acceptor.clone());
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
        *self.tls.write_or_recover() = None;
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
}
