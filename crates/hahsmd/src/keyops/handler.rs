//! One client request against the member: the PKCS#11 semantics of each
//! operation, on top of the pure rules in `hahsm_token::rules` and the crypto in
//! `hahsm_crypto`.
use super::templates::*;
use crate::appliance::{Appliance, PinKind};
use crate::partition::{ActivePartition, ObjectEntry};
use crate::sync::Recover;
use hahsm_crypto::{self as crypto, SecretBytes};
use hahsm_link::Fingerprint;
use hahsm_proto::client::{
    AttrResult, OpId, PartitionInfo, Request, Response, USER_CONTEXT_SPECIFIC, USER_NORMAL, USER_SO,
};
use hahsm_token::mechanism::{self, Usage};
use hahsm_token::object::holds_secret;
use hahsm_token::policy;
use hahsm_token::rules::{self};
use hahsm_token::{ck, AttrValue, Mechanism, Ouid, Template, TokenError, TokenResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The per-connection state: who the client is, where it is logged in, and its
/// session objects, which live and die with the connection.
pub struct Connection {
    pub fingerprint: Fingerprint,
    pub client_name: String,
    pub(super) logins: Mutex<HashMap<String, u64>>,
    pub(super) session_objects: Mutex<HashMap<Ouid, (String, Arc<ObjectEntry>)>>,
}

impl Connection {
    pub fn new(fingerprint: Fingerprint, client_name: String) -> Self {
        Connection {
            fingerprint,
            client_name,
            logins: Mutex::default(),
            session_objects: Mutex::default(),
        }
    }

    /// The role logged in to a partition on this connection, if any.
    pub(super) fn role(&self, partition: &str) -> Option<u64> {
        self.logins.lock_or_recover().get(partition).copied()
    }

    pub(super) fn session_object(&self, partition: &str, ouid: &Ouid) -> Option<Arc<ObjectEntry>> {
        let objects = self.session_objects.lock_or_recover();
        objects
            .get(ouid)
            .filter(|(p, _)| p == partition)
            .map(|(_, o)| o.clone())
    }

    pub(super) fn put_session_object(&self, partition: &str, entry: ObjectEntry) {
        let mut objects = self.session_objects.lock_or_recover();
        objects.insert(entry.ouid, (partition.to_string(), Arc::new(entry)));
    }

    pub(super) fn remove_session_object(&self, ouid: &Ouid) {
        self.session_objects.lock_or_recover().remove(ouid);
    }
}

/// The partition a request names, once access is checked.
pub(super) struct Ctx {
    pub(super) name: String,
    pub(super) active: Arc<ActivePartition>,
    /// Logged in as the user: private objects are visible and usable.
    pub(super) logged_in: bool,
    pub(super) role: Option<u64>,
}

pub struct KeyOps<'a> {
    pub app: &'a Appliance,
    pub conn: &'a Connection,
}

impl KeyOps<'_> {
    pub(super) fn ctx(&self, partition: &str) -> TokenResult<Ctx> {
        if !self.app.client_may_open(&self.conn.fingerprint, partition) {
            warn!(client = %self.conn.client_name, partition, "refused: partition not assigned to this client");
            return Err(TokenError::NotAuthorized(format!(
                "partition '{partition}' is not assigned to client '{}'",
                self.conn.client_name
            )));
        }
        let active = self
            .app
            .active_partition(partition)
            .ok_or(TokenError::PartitionNotActive)?;
        if let Some(g) = crate::replication::group_of(self.app, partition) {
            g.serving_allowed()?;
        }
        let role = self.conn.role(partition);
        Ok(Ctx {
            name: partition.to_string(),
            active,
            logged_in: role == Some(USER_NORMAL),
            role,
        })
    }

    pub(super) fn ctx_logged_in(&self, partition: &str) -> TokenResult<Ctx> {
        let ctx = self.ctx(partition)?;
        if !ctx.logged_in {
            return Err(TokenError::UserNotLoggedIn);
        }
        Ok(ctx)
    }

    /// An object the client can see: session objects first, and private
    /// objects only after login.
    pub(super) fn object(&self, ctx: &Ctx, ouid: &Ouid) -> TokenResult<Arc<ObjectEntry>> {
        let entry = self
            .conn
            .session_object(&ctx.name, ouid)
            .or_else(|| ctx.active.get(ouid))
            .ok_or(TokenError::ObjectHandleInvalid)?;
        if entry.is_private() && !ctx.logged_in {
            return Err(TokenError::ObjectHandleInvalid);
        }
        Ok(entry)
    }

    pub(super) fn key(&self, ctx: &Ctx, ouid: &Ouid) -> TokenResult<Arc<ObjectEntry>> {
        self.object(ctx, ouid).map_err(|e| match e {
            TokenError::ObjectHandleInvalid => TokenError::KeyHandleInvalid,
            other => other,
        })
    }

    /// Whether the partition's `allow-legacy-mechanisms` policy is on.
    fn legacy_allowed(&self, ctx: &Ctx) -> bool {
        self.app
            .partition_policy_values(&ctx.name)
            .map(|p| p.enabled(policy::partition::ALLOW_LEGACY_MECHANISMS))
            .unwrap_or(false)
    }

    /// A legacy mechanism (3DES, SHA-1 HMAC, MD5) is offered only under the
    /// partition's legacy policy (docs/pkcs11.md, "Legacy mechanisms").
    /// On a member running AWS-LC's FIPS module, only what that module
    /// approves (docs/pkcs11.md, "The FIPS build"), whatever the policies.
    pub(super) fn check_offered(&self, ctx: &Ctx, mech: u64) -> TokenResult<()> {
        if hahsm_crypto::fips_mode() && !mechanism::fips_approved(mech) {
            info!(client = %self.conn.client_name, partition = %ctx.name, mechanism = format!("{mech:#x}"),
                "refused: a mechanism the FIPS module does not approve");
            return Err(TokenError::MechanismInvalid(mech));
        }
        if mechanism::is_legacy(mech) && !self.legacy_allowed(ctx) {
            info!(client = %self.conn.client_name, partition = %ctx.name, mechanism = format!("{mech:#x}"),
                "refused: a legacy mechanism without partition policy 40 (allow-legacy-mechanisms)");
            return Err(TokenError::MechanismInvalid(mech));
        }
        Ok(())
    }

    /// [`Self::check_offered`] for one use of a key: in FIPS mode,
    /// `CKM_RSA_PKCS` signs but does not encrypt or wrap.
    fn check_offered_for(&self, ctx: &Ctx, mech: u64, usage: Usage) -> TokenResult<()> {
        self.check_offered(ctx, mech)?;
        if hahsm_crypto::fips_mode() && !mechanism::fips_approved_for(mech, usage) {
            info!(client = %self.conn.client_name, partition = %ctx.name, mechanism = format!("{mech:#x}"),
                usage = usage.name(), "refused: a use of a mechanism the FIPS module does not approve");
            return Err(TokenError::MechanismInvalid(mech));
        }
        Ok(())
    }

    /// Keys only the legacy policy allows, made or used: triple-DES keys
    /// and RSA keys under 2048 bits. On a member running the FIPS module,
    /// which approves neither, not even under the policy.
    pub(super) fn check_legacy_key(&self, ctx: &Ctx, attrs: &Template) -> TokenResult<()> {
        let fips = hahsm_crypto::fips_mode();
        let legacy = match attrs.key_type() {
            Some(ck::CKK_DES3) => Err(TokenError::AttributeValueInvalid(ck::CKA_KEY_TYPE)),
            Some(ck::CKK_RSA) if rsa_bits(attrs).is_some_and(|b| b < mechanism::RSA_MIN_BITS) => {
                let why = if fips { FIPS_RSA } else { LEGACY_RSA };
                Err(TokenError::KeySizeRange(why.into()))
            }
            _ => return Ok(()),
        };
        if !fips && self.legacy_allowed(ctx) {
            return Ok(());
        }
        legacy
    }

    pub(super) fn enforce_separation(&self, ctx: &Ctx) -> bool {
        self.app
            .partition_policy_values(&ctx.name)
            .map(|p| p.enabled(policy::partition::ENFORCE_KEY_SEPARATION))
            .unwrap_or(false)
    }

    /// Stores new objects: token objects through the partition's write path,
    /// session objects in the connection.
    pub(super) async fn store_new(
        &self,
        ctx: &Ctx,
        objects: Vec<(Template, Option<SecretBytes>)>,
        op_id: OpId,
    ) -> TokenResult<Vec<Ouid>> {
        let separation = self.enforce_separation(ctx);
        let mut entries = Vec::with_capacity(objects.len());
        for (index, (mut attrs, secret)) in objects.into_iter().enumerate() {
            if attrs.flag(ck::CKA_PRIVATE, false) && !ctx.logged_in {
                return Err(TokenError::UserNotLoggedIn);
            }
            rules::check_key_separation(&attrs, separation)?;
            self.check_legacy_key(ctx, &attrs)?;
            check_trusted(ctx, &attrs)?;
            if let (Some(ck::CKO_SECRET_KEY), Some(secret)) = (attrs.class(), secret.as_ref()) {
                set_check_value(&mut attrs, secret)?;
            }
            let ouid = derived_ouid(&ctx.name, &self.conn.fingerprint, &op_id, index);
            attrs.set(ck::CKA_UNIQUE_ID, AttrValue::Bytes(ouid.to_string().into_bytes()));
            entries.push(
                ctx.active
                    .new_entry(ouid, attrs, secret.as_ref().map(|s| s.expose()))?,
            );
        }
        let token = entries.iter().any(|e| e.attrs.flag(ck::CKA_TOKEN, false));
        if token {
            self.before_write(ctx).await?;
            let ids = ctx.active.create(entries, Some(op_id)).await?;
            self.after_write(ctx).await?;
            return Ok(ids);
        }
        let ids = entries.iter().map(|e| e.ouid).collect();
        for e in entries {
            self.conn.put_session_object(&ctx.name, e);
        }
        Ok(ids)
    }

    /// Handles one request, counted and timed by operation and mechanism
    /// for the metrics. (A request cut off by its deadline is not timed.)
    pub async fn handle(&self, request: Request) -> TokenResult<Response> {
        let operation = request.name();
        let mechanism = mechanism_of(&request);
        let started = std::time::Instant::now();
        let result = self.handle_request(request).await;
        self.app
            .monitor
            .metrics
            .operation(operation, mechanism, result.is_ok(), started.elapsed());
        result
    }

    async fn handle_request(&self, request: Request) -> TokenResult<Response> {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::ListPartitions => self.list_partitions(),
            Request::GetGroup { partition } => {
                let ctx = self.ctx(&partition)?;
                Ok(Response::Group(
                    crate::replication::group_of(self.app, &ctx.name).map(|g| g.definition()),
                ))
            }
            Request::Progress { partition } => {
                let ctx = self.ctx(&partition)?;
                Ok(Response::Progress(
                    ctx.active.version_vector().0.into_iter().collect(),
                ))
            }
            r @ (Request::Login { .. }
            | Request::Logout { .. }
            | Request::SetPin { .. }
            | Request::InitPin { .. }) => self.logins(r).await,
            r @ (Request::CreateObject { .. }
            | Request::FindObjects { .. }
            | Request::GetAttributes { .. }
            | Request::SetAttributes { .. }
            | Request::CopyObject { .. }
            | Request::ReleaseSessionObjects { .. }
            | Request::DestroyObject { .. }) => self.objects(r).await,
            r @ (Request::ImportKeyPair { .. }
            | Request::GenerateKey { .. }
            | Request::GenerateKeyPair { .. }
            | Request::WrapKey { .. }
            | Request::UnwrapKey { .. }
            | Request::DeriveKey { .. }
            | Request::EncapsulateKey { .. }
            | Request::DecapsulateKey { .. }) => self.keys(r).await,
            r @ (Request::Sign { .. }
            | Request::Verify { .. }
            | Request::Encrypt { .. }
            | Request::Decrypt { .. }
            | Request::GenerateRandom { .. }
            | Request::Digest { .. }
            | Request::DigestKeys { .. }) => self.operations(r).await,
        }
    }

    pub(super) fn list_partitions(&self) -> TokenResult<Response> {
        let assigned = self
            .app
            .client(&self.conn.fingerprint)
            .map(|c| c.partitions)
            .unwrap_or_default();
        let mut out = Vec::new();
        for summary in self
            .app
            .partition_list()
            .map_err(|e| TokenError::DeviceError(e.to_string()))?
        {
            if assigned.contains(&summary.name) {
                let pin_flags = match self.app.active_partition(&summary.name) {
                    Some(active) => {
                        let max = self
                            .app
                            .partition_policy_values(&summary.name)
                            .map(|p| p.get(policy::partition::MAX_FAILED_LOGINS))
                            .unwrap_or(0);
                        crate::pin_records::partition_pin_flags(&active, max, summary.so_pin_set)
                    }
                    None if summary.pin_locked => ck::CKF_USER_PIN_LOCKED,
                    None => 0,
                };
                let legacy_mechanisms = self
                    .app
                    .partition_policy_values(&summary.name)
                    .is_ok_and(|p| p.enabled(policy::partition::ALLOW_LEGACY_MECHANISMS));
                out.push(PartitionInfo {
                    pin_flags,
                    legacy_mechanisms,
                    fips: hahsm_crypto::fips_mode(),
                    name: summary.name,
                    serial: summary.serial,
                    activated: summary.activated,
                    object_count: summary.object_count,
                    pin_locked: summary.pin_locked,
                    so_pin_set: summary.so_pin_set,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::Partitions(out))
    }

    pub(super) async fn login(&self, partition: &str, user_type: u64, pin: &[u8]) -> TokenResult<Response> {
        let ctx = self.ctx(partition)?;
        let kind = match (user_type, ctx.role) {
            (USER_NORMAL, None) => PinKind::User,
            (USER_SO, None) => PinKind::So,
            // Re-authentication for an always-authenticate key: the user checks
            // the PIN again without a new login.
            (USER_CONTEXT_SPECIFIC, Some(USER_NORMAL)) => PinKind::User,
            (USER_CONTEXT_SPECIFIC, _) => return Err(TokenError::UserNotLoggedIn),
            (USER_NORMAL | USER_SO, Some(r)) if r == user_type => {
                return Err(TokenError::UserAlreadyLoggedIn)
            }
            (USER_NORMAL | USER_SO, Some(_)) => return Err(TokenError::UserAnotherAlreadyLoggedIn),
            _ => return Err(TokenError::UserTypeInvalid),
        };
        let row = self.app.partition_row_for_login(partition)?;
        match crate::pins::check(self.app, &row, &ctx.active, kind, pin).await {
            Ok(()) => {
                if user_type != USER_CONTEXT_SPECIFIC {
                    self.conn
                        .logins
                        .lock_or_recover()
                        .insert(partition.to_string(), user_type);
                }
                info!(client = %self.conn.client_name, partition, ?kind, "logged in");
                Ok(Response::Done)
            }
            Err(e) => {
                warn!(client = %self.conn.client_name, partition, ?kind, error = %e, "login failed");
                Err(e)
            }
        }
    }

    /// Refuses a write the group's write concern cannot take.
    pub(super) async fn before_write(&self, ctx: &Ctx) -> TokenResult<()> {
        match crate::replication::group_of(self.app, &ctx.name) {
            Some(g) => g.write_allowed().await,
            None => Ok(()),
        }
    }

    /// Replicates a write just made, waiting at most the replication timeout.
    /// Under the quorum write concern, fails unless a majority now holds it.
    pub(super) async fn after_write(&self, ctx: &Ctx) -> TokenResult<()> {
        match crate::replication::group_of(self.app, &ctx.name) {
            Some(g) => g.replicate_write(&ctx.active).await,
            None => Ok(()),
        }
    }

    /// A set-attributes or destroy retried with the same operation id was
    /// applied the first time (here, or on a peer that replicated it here).
    pub(super) async fn already_done(&self, ctx: &Ctx, op_id: &OpId) -> TokenResult<bool> {
        Ok(self.previous(ctx, op_id).await?.is_some())
    }

    /// A create retried with the same operation id returns its first result,
    /// once the write concern holds for it: the first attempt may have been
    /// refused because no majority confirmed it, and the retry must not
    /// acknowledge it on this member's word alone.
    pub(super) async fn previous(&self, ctx: &Ctx, op_id: &OpId) -> TokenResult<Option<Response>> {
        let Some(ids) = ctx.active.previous_result(op_id)? else {
            return Ok(None);
        };
        self.after_write(ctx).await?;
        Ok(Some(match ids.as_slice() {
            [one] => Response::Object(*one),
            [public, private] => Response::KeyPair {
                public: *public,
                private: *private,
            },
            _ => Response::Done,
        }))
    }

    pub(super) fn usable_key(
        &self,
        partition: &str,
        key: &Ouid,
        mech: &Mechanism,
        usage: Usage,
    ) -> TokenResult<(Ctx, Arc<ObjectEntry>)> {
        let ctx = self.ctx(partition)?;
        self.check_offered_for(&ctx, mech.mech, usage)?;
        let entry = self.key(&ctx, key)?;
        rules::check_key_use(&entry.attrs, mech.mech, usage)?;
        self.check_legacy_key(&ctx, &entry.attrs)?;
        // Keys made before the partition turned key separation on are held to
        // it when used (the policy is read only for keys that break it).
        if matches!(
            usage,
            Usage::Wrap | Usage::Unwrap | Usage::Encrypt | Usage::Decrypt
        ) && rules::check_key_separation(&entry.attrs, true).is_err()
            && self.enforce_separation(&ctx)
        {
            return Err(TokenError::KeyFunctionNotPermitted(
                "key separation is enforced: this key both wraps and encrypts".into(),
            ));
        }
        self.within_lease(&ctx, &entry)?;
        Ok((ctx, entry))
    }

    /// A token object may have been destroyed or changed on the majority
    /// side of a cut this member is on the wrong side of: under quorum, only
    /// a member holding the lease uses a token key or answers for a token
    /// object's attributes (docs/replication.md §7.1). Session objects live
    /// on this member alone.
    pub(super) fn within_lease(&self, ctx: &Ctx, entry: &ObjectEntry) -> TokenResult<()> {
        if !entry.attrs.flag(ck::CKA_TOKEN, false) {
            return Ok(());
        }
        match crate::replication::group_of(self.app, &ctx.name) {
            Some(g) => g.key_use_allowed(),
            None => Ok(()),
        }
    }

    /// The parsed key for an operation, once every check has passed.
    pub(super) fn loaded_key(
        &self,
        partition: &str,
        key: &Ouid,
        mech: &Mechanism,
        usage: Usage,
    ) -> TokenResult<Arc<hahsm_crypto::LoadedKey>> {
        let (ctx, entry) = self.usable_key(partition, key, mech, usage)?;
        ctx.active.key(&entry)
    }

    pub(super) fn secret_if_any(&self, ctx: &Ctx, entry: &ObjectEntry) -> TokenResult<Option<SecretBytes>> {
        if holds_secret(entry.class()) {
            Ok(Some(ctx.active.secret_of(entry)?))
        } else {
            Ok(None)
        }
    }

    pub(super) fn attribute(&self, ctx: &Ctx, entry: &ObjectEntry, attr: u64) -> TokenResult<AttrResult> {
        if let Some(v) = entry.attrs.get(attr) {
            return Ok(AttrResult::Value(v.clone()));
        }
        if !hahsm_token::object::is_secret_component(attr) || !holds_secret(entry.class()) {
            return Ok(AttrResult::Invalid);
        }
        if !rules::is_readable(&entry.attrs, attr) {
            return Ok(AttrResult::Sensitive);
        }
        // An extractable, non-sensitive secret key reveals its value; private
        // key components are not offered, only the PKCS#8 form through wrapping.
        if entry.class() == ck::CKO_SECRET_KEY && attr == ck::CKA_VALUE {
            let secret = ctx.active.secret_of(entry)?;
            return Ok(AttrResult::Value(AttrValue::Bytes(secret.expose().to_vec())));
        }
        Ok(AttrResult::Sensitive)
    }

    pub(super) fn derived_object(
        &self,
        ctx: &Ctx,
        base: &ObjectEntry,
        mech: &Mechanism,
        template: &Template,
    ) -> TokenResult<(Template, SecretBytes)> {
        if mech.mech != ck::CKM_ECDH1_DERIVE {
            return Err(TokenError::MechanismInvalid(mech.mech));
        }
        let len = template.ulong(ck::CKA_VALUE_LEN).map(|l| l as usize);
        let key = ctx.active.key(base)?;
        let secret = crypto::ecdh_derive(&key, &mech.params, len)?;
        secret_key_object(Some(base), template, secret)
    }

    /// The secret key `C_EncapsulateKey` or `C_DecapsulateKey` makes from an
    /// ML-KEM shared secret (32 bytes): all of it, or its first
    /// `CKA_VALUE_LEN` bytes (an AES-128 key takes 16).
    pub(super) fn kem_object(
        &self,
        key: Option<&ObjectEntry>,
        template: &Template,
        shared: SecretBytes,
    ) -> TokenResult<(Template, SecretBytes)> {
        let secret = match template.ulong(ck::CKA_VALUE_LEN) {
            None => shared,
            Some(len) if len > 0 && (len as usize) <= shared.len() => {
                SecretBytes::new(shared.expose()[..len as usize].to_vec())
            }
            Some(_) => {
                return Err(TokenError::TemplateInconsistent(format!(
                    "an ML-KEM shared secret is {} bytes: CKA_VALUE_LEN cannot exceed it",
                    shared.len()
                )))
            }
        };
        secret_key_object(key, template, secret)
    }
}

/// The attributes of a secret key made on the member from `secret`, which
/// an operation with `base` produced (`None`: from the member's own fresh
/// randomness, as an encapsulation): the template's, as a creation would
/// make them. `CKA_ALWAYS_SENSITIVE` and `CKA_NEVER_EXTRACTABLE` hold only
/// if `base` has them too: the new key was never exposed only if its source
/// was not.
pub(super) fn secret_key_object(
    base: Option<&ObjectEntry>,
    template: &Template,
    secret: SecretBytes,
) -> TokenResult<(Template, SecretBytes)> {
    let mut t = template.clone();
    t.set_default(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_SECRET_KEY));
    t.set_default(ck::CKA_KEY_TYPE, AttrValue::Ulong(ck::CKK_GENERIC_SECRET));
    t.remove(ck::CKA_VALUE_LEN);
    t.set(ck::CKA_VALUE, AttrValue::Bytes(secret.expose().to_vec()));
    let (mut attrs, _) = rules::created_object(&t, false)?;
    let sensitive = attrs.flag(ck::CKA_SENSITIVE, true);
    let extractable = attrs.flag(ck::CKA_EXTRACTABLE, false);
    let base_flag = |attr| base.is_none_or(|b| b.attrs.flag(attr, false));
    attrs.set(
        ck::CKA_ALWAYS_SENSITIVE,
        AttrValue::Bool(sensitive && base_flag(ck::CKA_ALWAYS_SENSITIVE)),
    );
    attrs.set(
        ck::CKA_NEVER_EXTRACTABLE,
        AttrValue::Bool(!extractable && base_flag(ck::CKA_NEVER_EXTRACTABLE)),
    );
    Ok((attrs, secret))
}

/// `CKR_USER_NOT_LOGGED_IN` when the object `template` makes (of `class`
/// unless it names one) will be private and the client is not logged in as
/// the user: checked before the template itself (`rules::will_be_private`).
pub(super) fn needs_login_for(ctx: &Ctx, template: &Template, class: u64) -> TokenResult<()> {
    if rules::will_be_private(template, class) && !ctx.logged_in {
        return Err(TokenError::UserNotLoggedIn);
    }
    Ok(())
}

/// Why an RSA key under 2048 bits is refused.
pub(super) const LEGACY_RSA: &str =
    "RSA keys under 2048 bits need the partition's policy 40 (allow-legacy-mechanisms)";

/// Why an RSA key under 2048 bits is refused on a member in FIPS mode.
pub(super) const FIPS_RSA: &str = "RSA keys under 2048 bits are not approved in FIPS mode";

/// The modulus length of an RSA key's attributes, in bits.
fn rsa_bits(attrs: &Template) -> Option<u64> {
    attrs.ulong(ck::CKA_MODULUS_BITS).or_else(|| {
        let m = attrs.bytes(ck::CKA_MODULUS)?;
        let m = &m[m.iter().take_while(|b| **b == 0).count()..];
        let top = m.first()?;
        Some(m.len() as u64 * 8 - u64::from(top.leading_zeros()))
    })
}

/// A new secret key's `CKA_CHECK_VALUE`: computed from its value, and a
/// value the template gave must be that one (`CKR_ATTRIBUTE_VALUE_INVALID`
/// otherwise, PKCS#11 3.0 §4.10); an empty one given asks for none.
fn set_check_value(attrs: &mut Template, secret: &SecretBytes) -> TokenResult<()> {
    let key_type = attrs.key_type().unwrap_or(ck::CKK_GENERIC_SECRET);
    let kcv = crypto::check_value(key_type, secret.expose())?;
    match attrs.bytes(ck::CKA_CHECK_VALUE) {
        Some([]) => Ok(()),
        Some(given) if given != kcv => Err(TokenError::AttributeValueInvalid(ck::CKA_CHECK_VALUE)),
        _ => {
            attrs.set(ck::CKA_CHECK_VALUE, AttrValue::Bytes(kcv.to_vec()));
            Ok(())
        }
    }
}

/// `CKA_TRUSTED` marks a key allowed to wrap keys that demand it
/// (`CKA_WRAP_WITH_TRUSTED`); only the partition SO may grant it, or any user
/// could wrap those keys under a key of their own.
pub(super) fn check_trusted(ctx: &Ctx, attrs: &Template) -> TokenResult<()> {
    if attrs.flag(ck::CKA_TRUSTED, false) && ctx.role != Some(USER_SO) {
        return Err(TokenError::AttributeReadOnly(ck::CKA_TRUSTED));
    }
    Ok(())
}

/// The answer to a request sent to a handler that does not take it (a bug
/// in `handle_request`'s dispatch), instead of a panic.
pub(super) fn misrouted(request: &Request) -> TokenError {
    TokenError::FunctionFailed(format!("{} reached the wrong handler", request.name()))
}
