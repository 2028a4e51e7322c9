//! The partition commands of the console: create, activate, policies, PINs
//! (as set with the owner secret; the group's PINs are `crate::pins`),
//! contents, clear and delete; and the partitions' origins and verifiers
//! for backups.
use super::records::*;
use super::state::Appliance;
use crate::error::refuse;
use crate::error::{AdminError, AdminResult};
use crate::partition::ActivePartition;
pub use crate::pin_records::PinKind;
use hahsm_crypto::{self as crypto, SealKey};
use hahsm_proto::admin::{ObjectSummary, PartitionSummary, PolicyLine};
use hahsm_proto::Secret;
use hahsm_store::PartitionRow;
use hahsm_token::policy::{self, Policies, PARTITION_POLICIES};
use hahsm_token::{ck, TokenError};
use tracing::{info, warn};

impl Appliance {
    /// The origin id a partition's own writes carry: the member's serial,
    /// or the new id a restored partition was given (see `custody`).
    pub(super) fn partition_origin(&self, partition_serial: u64) -> u64 {
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

    /// Unwraps a partition's master key with its owner secret.
    pub fn partition_pmk(&self, name: &str, owner_secret: &Secret) -> AdminResult<SealKey> {
        let row = self.partition_row(name)?;
        self.unwrap_pmk(&row, owner_secret)
    }

    pub(super) fn partition_row(&self, name: &str) -> AdminResult<PartitionRow> {
        self.store
            .get_partition(name)?
            .ok_or_else(|| AdminError::Refused(format!("no partition named '{name}'")))
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
            return refuse("a partition name is 1 to 32 letters, digits, '-', '_' or '.'");
        }
        secret_ok(owner_secret, "partition-owner secret")?;
        if self.store.get_partition(name)?.is_some() {
            return refuse(format!("partition '{name}' already exists"));
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

    pub(super) fn unwrap_pmk(&self, row: &PartitionRow, owner_secret: &Secret) -> AdminResult<SealKey> {
        let kek = owner_kek(owner_secret.expose(), row.serial)?;
        let pmk = kek.open(&pmk_aad(row.serial), &row.wrapped_pmk).map_err(|_| {
            warn!(partition = %row.name, "activation refused: wrong partition-owner secret");
            AdminError::Refused(format!(
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
            return refuse(format!(
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
            AdminError::Refused(format!(
                "no partition policy '{key}' (see `partition show-policies`)"
            ))
        })?;
        let mut p = partition_policies_of(&row)?;
        p.set(def, value).map_err(AdminError::Refused)?;
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
            return refuse("give the old PIN or the partition-owner secret");
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
    ) -> Result<Option<crate::pin_records::Verifier>, TokenError> {
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
        Ok(Some(crate::pin_records::Verifier {
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
    pub(super) fn mark_pin_pending(&self, partition: &str, kind: PinKind) -> AdminResult<()> {
        self.store
            .put_meta(&pin_pending_meta(partition, kind), b"1")
            .map_err(|e| AdminError::Refused(e.to_string()))
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
                Some(a) => u32::try_from(crate::pin_records::failures(&a)).unwrap_or(u32::MAX),
                None => row.failed_logins,
            };
            let (parsed_keys, key_loads) = self
                .active_partition(&row.name)
                .map(|a| a.key_cache_stats())
                .unwrap_or_default();
            let (write_commits, writes_committed) = self
                .active_partition(&row.name)
                .map(|a| a.commit_stats())
                .unwrap_or_default();
            let (log_entries, log_compacted, snapshots_installed) = self
                .active_partition(&row.name)
                .map(|a| a.log_stats())
                .unwrap_or_default();
            out.push(PartitionSummary {
                log_entries,
                log_compacted,
                snapshots_installed,
                parsed_keys,
                key_loads,
                write_commits,
                writes_committed,
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
            .ok_or_else(|| AdminError::Refused(format!("partition '{name}' is not activated")))?;
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
            .ok_or_else(|| AdminError::Refused(format!("partition '{name}' is not activated")))?;
        active.clear().await?;
        warn!(partition = name, "partition cleared");
        Ok(())
    }

    pub fn partition_delete(&self, name: &str) -> AdminResult<()> {
        self.require_so()?;
        let row = self.partition_row(name)?;
        self.active_write().remove(name);
        self.store.delete_partition(row.id)?;
        self.reload_clients()?;
        warn!(partition = name, "partition deleted");
        Ok(())
    }
}
