//! The HSM-level commands of the console: initialisation, the SO login and
//! its domain key, the HSM policies, and the factory reset.
use super::records::*;
use super::state::Appliance;
use crate::error::refuse;
use crate::error::{AdminError, AdminResult};
use crate::sync::Recover;
use hahsm_crypto::{self as crypto, SecretBytes};
use hahsm_proto::admin::PolicyLine;
use hahsm_proto::Secret;
use hahsm_token::policy::{self, Policies, HSM_POLICIES};
use std::time::{Duration, Instant};
use tracing::{info, warn};

impl Appliance {
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
        let until = self.so_login_until.lock_or_recover();
        until.is_some_and(|t| Instant::now() < t)
    }

    pub fn require_so(&self) -> AdminResult<()> {
        if !self.is_initialized() {
            return Err(AdminError::NotInitialized);
        }
        if !self.so_logged_in() {
            return Err(AdminError::SoNotLoggedIn);
        }
        Ok(())
    }

    pub fn hsm_init(&self, label: &str, so_secret: &Secret, domain_secret: &Secret) -> AdminResult<()> {
        if self.is_initialized() {
            return refuse("the HSM is already initialized; `hahsm appliance hsm factory-reset` starts over");
        }
        if label.is_empty() || label.len() > 32 {
            return refuse("the HSM label must be 1 to 32 characters");
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
            return refuse("the HSM is not initialized");
        }
        let salt = self.store.get_meta(META_SO_SALT)?.unwrap_or_default();
        let stored = self.store.get_meta(META_SO_VERIFIER)?.unwrap_or_default();
        let given = so_verifier(so_secret.expose(), &salt)?;
        if !crypto::ct_eq(given.expose(), &stored) {
            warn!("SO login refused: wrong SO secret");
            return refuse("SO login refused: the SO secret is wrong");
        }
        let wrapped = self.store.get_meta(META_DOMAIN)?.unwrap_or_default();
        let domain = so_kek(so_secret.expose(), &salt)?
            .open(b"hahsm/domain/v1", &wrapped)
            .map_err(|_| {
                AdminError::Refused("store integrity check failed: the wrapped domain secret".into())
            })?;
        *self.so_domain_key.lock_or_recover() = Some(crate::replication::keys::domain_key(domain.expose())?);
        let minutes = self.config.limits.so_login_minutes;
        *self.so_login_until.lock_or_recover() = Some(Instant::now() + Duration::from_secs(minutes * 60));
        info!("SO logged in on the admin socket");
        Ok(())
    }

    pub fn hsm_logout(&self) {
        *self.so_login_until.lock_or_recover() = None;
        *self.so_domain_key.lock_or_recover() = None;
    }

    /// The key derived from the domain secret; needs the SO logged in.
    pub fn so_domain_key(&self) -> AdminResult<SecretBytes> {
        self.require_so()?;
        self.so_domain_key
            .lock_or_recover()
            .clone()
            .ok_or_else(|| AdminError::Refused("log in as the SO again: the domain key is not loaded".into()))
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
            .ok_or_else(|| AdminError::Refused(format!("no HSM policy '{key}' (see `hsm show-policies`)")))?;
        let mut p = self.hsm_policies()?;
        p.set(def, value).map_err(AdminError::Refused)?;
        self.store.put_meta(META_POLICIES, &encode(&p)?)?;
        info!(policy = def.number, name = def.name, value, "HSM policy changed");
        Ok(())
    }

    pub fn factory_reset(&self) -> AdminResult<()> {
        self.active_write().clear();
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
        self.hsm_logout();
        self.reload_clients()?;
        warn!("factory reset: every partition, client and secret was erased");
        Ok(())
    }
}
