//! One client request against the member: the PKCS#11 semantics of each
//! operation, on top of the pure rules in `hahsm_token::rules` and the crypto in
//! `hahsm_crypto`.
use crate::appliance::{Appliance, PinKind};
use crate::partition::{public_key_of, ActivePartition, ObjectEntry};
use hahsm_crypto::{self as crypto, KeyPair, PublicKey, SecretBytes};
use hahsm_link::Fingerprint;
use hahsm_proto::client::{
    AttrResult, OpId, PartitionInfo, Request, Response, USER_CONTEXT_SPECIFIC, USER_NORMAL, USER_SO,
};
use hahsm_token::mechanism::Usage;
use hahsm_token::object::holds_secret;
use hahsm_token::policy;
use hahsm_token::rules::{self, KeyPairSpec};
use hahsm_token::{ck, AttrValue, Mechanism, Ouid, Template, TokenError, TokenResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// Most objects one `FindObjects` returns.
const MAX_FIND: usize = 100_000;
/// Most random bytes one request returns.
const MAX_RANDOM: u32 = 64 * 1024;

/// The per-connection state: who the client is, where it is logged in, and its
/// session objects, which live and die with the connection.
pub struct Connection {
    pub fingerprint: Fingerprint,
    pub client_name: String,
    logins: Mutex<HashMap<String, u64>>,
    session_objects: Mutex<HashMap<Ouid, (String, Arc<ObjectEntry>)>>,
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
    fn role(&self, partition: &str) -> Option<u64> {
        self.logins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(partition)
            .copied()
    }

    fn session_object(&self, partition: &str, ouid: &Ouid) -> Option<Arc<ObjectEntry>> {
        let objects = self.session_objects.lock().unwrap_or_else(|p| p.into_inner());
        objects
            .get(ouid)
            .filter(|(p, _)| p == partition)
            .map(|(_, o)| o.clone())
    }

    fn put_session_object(&self, partition: &str, entry: ObjectEntry) {
        let mut objects = self.session_objects.lock().unwrap_or_else(|p| p.into_inner());
        objects.insert(entry.ouid, (partition.to_string(), Arc::new(entry)));
    }

    fn remove_session_object(&self, ouid: &Ouid) {
        self.session_objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ouid);
    }
}

/// The partition a request names, once access is checked.
struct Ctx {
    name: String,
    active: Arc<ActivePartition>,
    /// Logged in as the user: private objects are visible and usable.
    logged_in: bool,
    role: Option<u64>,
}

/// The OUID of the `index`th object a client write makes, derived from the
/// write's operation id (and the partition's name and the client, so that no one
/// else's op id can name it). A write retried on another member after an
/// ambiguous failure makes the same OUID there: if the first attempt was
/// applied after all, the two creations meet as one object, and the
/// replication engine keeps the later (the one the client was answered).
fn derived_ouid(partition: &str, client: &Fingerprint, op_id: &OpId, index: usize) -> Ouid {
    let mut input = Vec::with_capacity(128);
    input.extend_from_slice(b"hahsm/ouid/v2");
    // The partition's name, not its serial: each member of a group has its own
    // serial for the same partition, and a retry must make the same OUID on any.
    input.extend_from_slice(&(partition.len() as u64).to_be_bytes());
    input.extend_from_slice(partition.as_bytes());
    input.extend_from_slice(&client.0);
    input.extend_from_slice(op_id);
    input.extend_from_slice(&(index as u64).to_be_bytes());
    let hash = crypto::sha256(&input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash[..16]);
    Ouid(id)
}

/// `CKA_TRUSTED` marks a key allowed to wrap keys that demand it
/// (`CKA_WRAP_WITH_TRUSTED`); only the partition SO may grant it, or any user
/// could wrap those keys under a key of their own.
fn check_trusted(ctx: &Ctx, attrs: &Template) -> TokenResult<()> {
    if attrs.flag(ck::CKA_TRUSTED, false) && ctx.role != Some(USER_SO) {
        return Err(TokenError::AttributeReadOnly(ck::CKA_TRUSTED));
    }
    Ok(())
}

/// Under key separation, a generated key wraps or unwraps only when its
/// template asks for it, so the defaults alone never break the rule.
fn separated_defaults(mut template: Template, separation: bool) -> Template {
    if separation {
        for attr in [ck::CKA_WRAP, ck::CKA_UNWRAP] {
            template.set_default(attr, AttrValue::Bool(false));
        }
    }
    template
}

fn check_template_size(app: &Appliance, t: &Template) -> TokenResult<()> {
    if t.len() > app.config.limits.max_template_attributes {
        return Err(TokenError::ArgumentsBad(format!(
            "the template has {} attributes; the limit is {}",
            t.len(),
            app.config.limits.max_template_attributes
        )));
    }
    Ok(())
}

pub struct KeyOps<'a> {
    pub app: &'a Appliance,
    pub conn: &'a Connection,
}

impl KeyOps<'_> {
    fn ctx(&self, partition: &str) -> TokenResult<Ctx> {
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

    fn ctx_logged_in(&self, partition: &str) -> TokenResult<Ctx> {
        let ctx = self.ctx(partition)?;
        if !ctx.logged_in {
            return Err(TokenError::UserNotLoggedIn);
        }
        Ok(ctx)
    }

    /// An object the client can see: session objects first, and private
    /// objects only after login.
    fn object(&self, ctx: &Ctx, ouid: &Ouid) -> TokenResult<Arc<ObjectEntry>> {
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

    fn key(&self, ctx: &Ctx, ouid: &Ouid) -> TokenResult<Arc<ObjectEntry>> {
        self.object(ctx, ouid).map_err(|e| match e {
            TokenError::ObjectHandleInvalid => TokenError::KeyHandleInvalid,
            other => other,
        })
    }

    fn enforce_separation(&self, ctx: &Ctx) -> bool {
        self.app
            .partition_policy_values(&ctx.name)
            .map(|p| p.enabled(policy::partition::ENFORCE_KEY_SEPARATION))
            .unwrap_or(false)
    }

    /// Stores new objects: token objects through the partition's write path,
    /// session objects in the connection.
    async fn store_new(
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
            check_trusted(ctx, &attrs)?;
            let ouid = derived_ouid(&ctx.name, &self.conn.fingerprint, &op_id, index);
            attrs.set(ck::CKA_UNIQUE_ID, AttrValue::Bytes(ouid.to_string().into_bytes()));
            entries.push(
                ctx.active
                    .new_entry(ouid, attrs, secret.as_ref().map(|s| s.expose()))?,
            );
        }
        let token = entries.iter().any(|e| e.attrs.flag(ck::CKA_TOKEN, false));
        if token {
            self.before_write(ctx)?;
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
            Request::Login {
                partition,
                user_type,
                pin,
            } => self.login(&partition, user_type, pin.expose()).await,
            Request::Logout { partition } => {
                let _ = self.ctx(&partition)?;
                let removed = self
                    .conn
                    .logins
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&partition);
                removed.map(|_| Response::Done).ok_or(TokenError::UserNotLoggedIn)
            }
            Request::SetPin {
                partition,
                old_pin,
                new_pin,
                op_id,
            } => {
                let ctx = self.ctx(&partition)?;
                if self.already_done(&ctx, &op_id).await? {
                    return Ok(Response::Done);
                }
                let kind = if ctx.role == Some(USER_SO) {
                    PinKind::So
                } else {
                    PinKind::User
                };
                let row = self.app.partition_row_for_login(&partition)?;
                crate::pins::check(self.app, &row, &ctx.active, kind, old_pin.expose()).await?;
                crate::pins::set(self.app, &ctx.active, kind, new_pin.expose(), Some(op_id)).await?;
                info!(client = %self.conn.client_name, partition, ?kind, "PIN changed");
                Ok(Response::Done)
            }
            Request::InitPin {
                partition,
                new_pin,
                op_id,
            } => {
                let ctx = self.ctx(&partition)?;
                if ctx.role != Some(USER_SO) {
                    return Err(TokenError::UserNotLoggedIn);
                }
                if self.already_done(&ctx, &op_id).await? {
                    return Ok(Response::Done);
                }
                crate::pins::set(
                    self.app,
                    &ctx.active,
                    PinKind::User,
                    new_pin.expose(),
                    Some(op_id),
                )
                .await?;
                info!(client = %self.conn.client_name, partition, "user PIN initialized by the partition SO");
                Ok(Response::Done)
            }
            Request::CreateObject {
                partition,
                template,
                op_id,
            } => {
                let ctx = self.ctx(&partition)?;
                check_template_size(self.app, &template)?;
                let (attrs, secret) = imported_object(&template)?;
                // Before the retry check: a replayed private create must not
                // tell a client that is not logged in what it made.
                if attrs.flag(ck::CKA_PRIVATE, false) && !ctx.logged_in {
                    return Err(TokenError::UserNotLoggedIn);
                }
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let ids = self.store_new(&ctx, vec![(attrs, secret)], op_id).await?;
                Ok(Response::Object(ids[0]))
            }
            Request::ImportKeyPair {
                partition,
                private_key_der,
                template,
                op_id,
            } => {
                let ctx = self.ctx_logged_in(&partition)?;
                check_template_size(self.app, &template)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let pair = crypto::import_private_key_der(private_key_der.expose())?;
                let (pubt, privt) = imported_pair_templates(&pair.public, &template)?;
                rules::check_pair_separation(&pubt, &privt, self.enforce_separation(&ctx))?;
                let ids = self
                    .store_new(&ctx, vec![(pubt, None), (privt, Some(pair.private_pkcs8))], op_id)
                    .await?;
                info!(client = %self.conn.client_name, partition, private = %ids[1], "key pair imported");
                Ok(Response::KeyPair {
                    public: ids[0],
                    private: ids[1],
                })
            }
            Request::GenerateKey {
                partition,
                mechanism,
                template,
                op_id,
            } => {
                let ctx = self.ctx_logged_in(&partition)?;
                check_template_size(self.app, &template)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let template = separated_defaults(template, self.enforce_separation(&ctx));
                let (attrs, len) = rules::generated_secret_key(mechanism.mech, &template)?;
                let secret = crypto::generate_secret(len)?;
                let ids = self.store_new(&ctx, vec![(attrs, Some(secret))], op_id).await?;
                info!(client = %self.conn.client_name, partition, object = %ids[0], "secret key generated");
                Ok(Response::Object(ids[0]))
            }
            Request::GenerateKeyPair {
                partition,
                mechanism,
                public_template,
                private_template,
                op_id,
            } => {
                let ctx = self.ctx_logged_in(&partition)?;
                check_template_size(self.app, &public_template)?;
                check_template_size(self.app, &private_template)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let separation = self.enforce_separation(&ctx);
                let (spec, mut pubt, mut privt) = rules::generated_key_pair(
                    mechanism.mech,
                    &separated_defaults(public_template, separation),
                    &separated_defaults(private_template, separation),
                )?;
                rules::check_pair_separation(&pubt, &privt, separation)?;
                // Key generation can take a while (RSA-4096): keep it off the async workers.
                let pair = tokio::task::spawn_blocking(move || generate_pair(&spec))
                    .await
                    .map_err(|e| TokenError::FunctionFailed(format!("key generation task failed: {e}")))??;
                add_public_attributes(&pair.public, &mut pubt, &mut privt);
                let ids = self
                    .store_new(&ctx, vec![(pubt, None), (privt, Some(pair.private_pkcs8))], op_id)
                    .await?;
                info!(client = %self.conn.client_name, partition, public = %ids[0], private = %ids[1], "key pair generated");
                Ok(Response::KeyPair {
                    public: ids[0],
                    private: ids[1],
                })
            }
            Request::FindObjects {
                partition,
                template,
                limit,
            } => {
                let ctx = self.ctx(&partition)?;
                check_template_size(self.app, &template)?;
                let limit = (limit as usize).min(MAX_FIND);
                let mut found = Vec::new();
                {
                    let session = self
                        .conn
                        .session_objects
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let mut mine: Vec<_> = session
                        .values()
                        .filter(|(p, o)| {
                            *p == partition
                                && (ctx.logged_in || !o.is_private())
                                && o.attrs.matches(&template)
                        })
                        .map(|(_, o)| o.ouid)
                        .collect();
                    mine.sort();
                    found.extend(mine);
                }
                found.extend(ctx.active.find(&template, ctx.logged_in, limit));
                found.truncate(limit);
                Ok(Response::Objects(found))
            }
            Request::GetAttributes {
                partition,
                object,
                types,
            } => {
                let ctx = self.ctx(&partition)?;
                let entry = self.object(&ctx, &object)?;
                let mut out = Vec::with_capacity(types.len());
                for attr in types {
                    out.push((attr, self.attribute(&ctx, &entry, attr)?));
                }
                Ok(Response::Attributes(out))
            }
            Request::SetAttributes {
                partition,
                object,
                template,
                op_id,
            } => {
                let ctx = self.ctx_logged_in(&partition)?;
                check_template_size(self.app, &template)?;
                if self.already_done(&ctx, &op_id).await? {
                    return Ok(Response::Done);
                }
                let entry = self.object(&ctx, &object)?;
                let changed = rules::set_attributes(&entry.attrs, &template)?;
                let mut attrs = entry.attrs.clone();
                for (k, v) in changed.iter() {
                    attrs.set(*k, v.clone());
                }
                rules::check_key_separation(&attrs, self.enforce_separation(&ctx))?;
                if changed.flag(ck::CKA_TRUSTED, false) {
                    check_trusted(&ctx, &changed)?;
                }
                if self.conn.session_object(&ctx.name, &object).is_some() {
                    let secret = self.secret_if_any(&ctx, &entry)?;
                    let e = ctx
                        .active
                        .new_entry(object, attrs, secret.as_ref().map(|s| s.expose()))?;
                    self.conn.put_session_object(&ctx.name, e);
                } else {
                    self.before_write(&ctx)?;
                    ctx.active.update(object, changed, Some(op_id)).await?;
                    self.after_write(&ctx).await?;
                }
                Ok(Response::Done)
            }
            Request::CopyObject {
                partition,
                object,
                template,
                op_id,
            } => {
                let ctx = self.ctx_logged_in(&partition)?;
                check_template_size(self.app, &template)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let entry = self.object(&ctx, &object)?;
                let attrs = rules::copied_object(&entry.attrs, &template)?;
                let secret = self.secret_if_any(&ctx, &entry)?;
                let ids = self.store_new(&ctx, vec![(attrs, secret)], op_id).await?;
                Ok(Response::Object(ids[0]))
            }
            Request::ReleaseSessionObjects { partition, objects } => {
                let ctx = self.ctx(&partition)?;
                for o in &objects {
                    if self.conn.session_object(&ctx.name, o).is_some() {
                        self.conn.remove_session_object(o);
                    }
                }
                Ok(Response::Done)
            }
            Request::DestroyObject {
                partition,
                object,
                op_id,
            } => {
                let ctx = self.ctx_logged_in(&partition)?;
                if self.already_done(&ctx, &op_id).await? {
                    return Ok(Response::Done);
                }
                let entry = self.object(&ctx, &object)?;
                if !entry.attrs.flag(ck::CKA_DESTROYABLE, true) {
                    return Err(TokenError::ActionProhibited(
                        "the object is not destroyable".into(),
                    ));
                }
                if self.conn.session_object(&ctx.name, &object).is_some() {
                    self.conn.remove_session_object(&object);
                } else {
                    self.before_write(&ctx)?;
                    ctx.active.destroy(object, Some(op_id)).await?;
                    self.after_write(&ctx).await?;
                    info!(client = %self.conn.client_name, partition, object = %object, "object destroyed");
                }
                Ok(Response::Done)
            }
            Request::Sign {
                partition,
                key,
                mechanism,
                data,
            } => {
                let k = self.loaded_key(&partition, &key, &mechanism, Usage::Sign)?;
                crypto::sign(&mechanism, &k, &data).map(Response::Bytes)
            }
            Request::Verify {
                partition,
                key,
                mechanism,
                data,
                signature,
            } => {
                let k = self.loaded_key(&partition, &key, &mechanism, Usage::Verify)?;
                crypto::verify(&mechanism, &k, &data, &signature).map(|()| Response::Verified)
            }
            Request::Encrypt {
                partition,
                key,
                mechanism,
                data,
            } => {
                let k = self.loaded_key(&partition, &key, &mechanism, Usage::Encrypt)?;
                crypto::encrypt(&mechanism, &k, &data).map(Response::Bytes)
            }
            Request::Decrypt {
                partition,
                key,
                mechanism,
                data,
            } => {
                let k = self.loaded_key(&partition, &key, &mechanism, Usage::Decrypt)?;
                crypto::decrypt(&mechanism, &k, &data).map(Response::Bytes)
            }
            Request::WrapKey {
                partition,
                wrapping_key,
                key,
                mechanism,
            } => {
                let (ctx, wrapping) = self.usable_key(&partition, &wrapping_key, &mechanism, Usage::Wrap)?;
                let target = self.key(&ctx, &key)?;
                rules::check_wrappable(&target.attrs, &wrapping.attrs)?;
                let secret = ctx.active.secret_of(&target)?;
                let k = ctx.active.key(&wrapping)?;
                crypto::wrap(&mechanism, &k, secret.expose()).map(Response::Bytes)
            }
            Request::UnwrapKey {
                partition,
                unwrapping_key,
                mechanism,
                wrapped,
                template,
                op_id,
            } => {
                let (ctx, unwrapping) =
                    self.usable_key(&partition, &unwrapping_key, &mechanism, Usage::Unwrap)?;
                if !ctx.logged_in {
                    return Err(TokenError::UserNotLoggedIn);
                }
                check_template_size(self.app, &template)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let k = ctx.active.key(&unwrapping)?;
                let secret = crypto::unwrap(&mechanism, &k, &wrapped)?;
                let (attrs, secret) = unwrapped_object(&template, secret)?;
                let ids = self.store_new(&ctx, vec![(attrs, Some(secret))], op_id).await?;
                Ok(Response::Object(ids[0]))
            }
            Request::DeriveKey {
                partition,
                base_key,
                mechanism,
                template,
                op_id,
            } => {
                let (ctx, base) = self.usable_key(&partition, &base_key, &mechanism, Usage::Derive)?;
                if !ctx.logged_in {
                    return Err(TokenError::UserNotLoggedIn);
                }
                check_template_size(self.app, &template)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let (attrs, secret) = self.derived_object(&ctx, &base, &mechanism, &template)?;
                let ids = self.store_new(&ctx, vec![(attrs, Some(secret))], op_id).await?;
                Ok(Response::Object(ids[0]))
            }
            Request::GenerateRandom { len } => {
                if len > MAX_RANDOM {
                    return Err(TokenError::ArgumentsBad(format!(
                        "at most {MAX_RANDOM} random bytes per request"
                    )));
                }
                crypto::random(len as usize).map(Response::Bytes)
            }
            Request::Digest { mechanism, data } => crypto::digest(mechanism.mech, &data).map(Response::Bytes),
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
        }
    }

    fn list_partitions(&self) -> TokenResult<Response> {
        let assigned = self
            .app
            .client(&self.conn.fingerprint)
            .map(|c| c.partitions)
            .unwrap_or_default();
        let mut out = Vec::new();
        for summary in self
            .app
            .partition_list()
            .map_err(|e| TokenError::DeviceError(e.0))?
        {
            if assigned.contains(&summary.name) {
                out.push(PartitionInfo {
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

    async fn login(&self, partition: &str, user_type: u64, pin: &[u8]) -> TokenResult<Response> {
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
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
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
    fn before_write(&self, ctx: &Ctx) -> TokenResult<()> {
        match crate::replication::group_of(self.app, &ctx.name) {
            Some(g) => g.write_allowed(),
            None => Ok(()),
        }
    }

    /// Replicates a write just made, waiting at most the replication timeout.
    /// Under the quorum write concern, fails unless a majority now holds it.
    async fn after_write(&self, ctx: &Ctx) -> TokenResult<()> {
        match crate::replication::group_of(self.app, &ctx.name) {
            Some(g) => g.replicate_write(&ctx.active).await,
            None => Ok(()),
        }
    }

    /// A set-attributes or destroy retried with the same operation id was
    /// applied the first time (here, or on a peer that replicated it here).
    async fn already_done(&self, ctx: &Ctx, op_id: &OpId) -> TokenResult<bool> {
        Ok(self.previous(ctx, op_id).await?.is_some())
    }

    /// A create retried with the same operation id returns its first result,
    /// once the write concern holds for it: the first attempt may have been
    /// refused because no majority confirmed it, and the retry must not
    /// acknowledge it on this member's word alone.
    async fn previous(&self, ctx: &Ctx, op_id: &OpId) -> TokenResult<Option<Response>> {
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

    fn usable_key(
        &self,
        partition: &str,
        key: &Ouid,
        mech: &Mechanism,
        usage: Usage,
    ) -> TokenResult<(Ctx, Arc<ObjectEntry>)> {
        let ctx = self.ctx(partition)?;
        let entry = self.key(&ctx, key)?;
        rules::check_key_use(&entry.attrs, mech.mech, usage)?;
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
        Ok((ctx, entry))
    }

    /// The parsed key for an operation, once every check has passed.
    fn loaded_key(
        &self,
        partition: &str,
        key: &Ouid,
        mech: &Mechanism,
        usage: Usage,
    ) -> TokenResult<Arc<hahsm_crypto::LoadedKey>> {
        let (ctx, entry) = self.usable_key(partition, key, mech, usage)?;
        ctx.active.key(&entry)
    }

    fn secret_if_any(&self, ctx: &Ctx, entry: &ObjectEntry) -> TokenResult<Option<SecretBytes>> {
        if holds_secret(entry.class()) {
            Ok(Some(ctx.active.secret_of(entry)?))
        } else {
            Ok(None)
        }
    }

    fn attribute(&self, ctx: &Ctx, entry: &ObjectEntry, attr: u64) -> TokenResult<AttrResult> {
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

    fn derived_object(
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
        let mut t = template.clone();
        t.set_default(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_SECRET_KEY));
        t.set_default(ck::CKA_KEY_TYPE, AttrValue::Ulong(ck::CKK_GENERIC_SECRET));
        t.remove(ck::CKA_VALUE_LEN);
        t.set(ck::CKA_VALUE, AttrValue::Bytes(secret.expose().to_vec()));
        let (mut attrs, _) = rules::created_object(&t, false)?;
        // A key derived inside the token from a sensitive base key was never exposed.
        let sensitive = attrs.flag(ck::CKA_SENSITIVE, true);
        let extractable = attrs.flag(ck::CKA_EXTRACTABLE, false);
        attrs.set(
            ck::CKA_ALWAYS_SENSITIVE,
            AttrValue::Bool(sensitive && base.attrs.flag(ck::CKA_ALWAYS_SENSITIVE, false)),
        );
        attrs.set(
            ck::CKA_NEVER_EXTRACTABLE,
            AttrValue::Bool(!extractable && base.attrs.flag(ck::CKA_NEVER_EXTRACTABLE, false)),
        );
        Ok((attrs, secret))
    }
}

/// The mechanism a request uses, if any, for the metrics' labels.
fn mechanism_of(request: &Request) -> Option<u64> {
    match request {
        Request::GenerateKey { mechanism, .. }
        | Request::GenerateKeyPair { mechanism, .. }
        | Request::Sign { mechanism, .. }
        | Request::Verify { mechanism, .. }
        | Request::Encrypt { mechanism, .. }
        | Request::Decrypt { mechanism, .. }
        | Request::WrapKey { mechanism, .. }
        | Request::UnwrapKey { mechanism, .. }
        | Request::DeriveKey { mechanism, .. }
        | Request::Digest { mechanism, .. } => Some(mechanism.mech),
        _ => None,
    }
}

fn generate_pair(spec: &KeyPairSpec) -> TokenResult<KeyPair> {
    match spec {
        KeyPairSpec::Rsa {
            bits,
            public_exponent,
        } => crypto::generate_rsa(*bits, public_exponent.as_deref()),
        KeyPairSpec::Ec { ec_params } => crypto::generate_ec(crypto::Curve::from_ec_params(ec_params)?),
        KeyPairSpec::Ed25519 => crypto::generate_ed25519(),
    }
}

/// DER of OID 1.3.101.112 (Ed25519), the `CKA_EC_PARAMS` of Edwards keys.
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Puts the public values of a key into the attributes of both halves.
fn add_public_attributes(public: &PublicKey, pubt: &mut Template, privt: &mut Template) {
    match public {
        PublicKey::Rsa {
            modulus,
            public_exponent,
        } => {
            let bits = public.modulus_bits().unwrap_or(0);
            for t in [&mut *pubt, &mut *privt] {
                t.set(ck::CKA_MODULUS, AttrValue::Bytes(modulus.clone()));
                t.set(ck::CKA_PUBLIC_EXPONENT, AttrValue::Bytes(public_exponent.clone()));
            }
            pubt.set(ck::CKA_MODULUS_BITS, AttrValue::Ulong(bits));
        }
        PublicKey::Ec { curve, .. } => {
            let point = public.ec_point_der().unwrap_or_default();
            pubt.set(ck::CKA_EC_PARAMS, AttrValue::Bytes(curve.ec_params()));
            privt.set(ck::CKA_EC_PARAMS, AttrValue::Bytes(curve.ec_params()));
            pubt.set(ck::CKA_EC_POINT, AttrValue::Bytes(point));
        }
        PublicKey::Ed25519 { .. } => {
            let point = public.ec_point_der().unwrap_or_default();
            pubt.set_default(ck::CKA_EC_PARAMS, AttrValue::Bytes(ED25519_PARAMS.to_vec()));
            privt.set_default(ck::CKA_EC_PARAMS, AttrValue::Bytes(ED25519_PARAMS.to_vec()));
            pubt.set(ck::CKA_EC_POINT, AttrValue::Bytes(point));
        }
    }
    pubt.set(ck::CKA_PUBLIC_KEY_INFO, AttrValue::Bytes(public.to_spki_der()));
    privt.set(ck::CKA_PUBLIC_KEY_INFO, AttrValue::Bytes(public.to_spki_der()));
}

/// `C_CreateObject`: checks the template and turns the key's components into
/// the form the member keeps (raw secret bytes, or PKCS#8 for private keys).
pub fn imported_object(template: &Template) -> TokenResult<(Template, Option<SecretBytes>)> {
    let (mut attrs, secret) = rules::created_object(template, false)?;
    let class = attrs.class().unwrap_or(ck::CKO_DATA);
    let comp = |a: u64| secret.bytes(a).unwrap_or_default();
    match (class, attrs.key_type()) {
        (ck::CKO_SECRET_KEY, _) => Ok((attrs, Some(SecretBytes::new(comp(ck::CKA_VALUE).to_vec())))),
        (ck::CKO_PRIVATE_KEY, Some(ck::CKK_RSA)) => {
            let n = attrs.bytes(ck::CKA_MODULUS).unwrap_or_default().to_vec();
            let e = attrs.bytes(ck::CKA_PUBLIC_EXPONENT).unwrap_or_default().to_vec();
            let pair = crypto::rsa_private_from_components(
                &n,
                &e,
                comp(ck::CKA_PRIVATE_EXPONENT),
                comp(ck::CKA_PRIME_1),
                comp(ck::CKA_PRIME_2),
                comp(ck::CKA_EXPONENT_1),
                comp(ck::CKA_EXPONENT_2),
                comp(ck::CKA_COEFFICIENT),
            )?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, Some(pair.private_pkcs8)))
        }
        (ck::CKO_PRIVATE_KEY, Some(ck::CKK_EC)) => {
            let params = attrs
                .bytes(ck::CKA_EC_PARAMS)
                .ok_or_else(|| TokenError::TemplateIncomplete("CKA_EC_PARAMS is required".into()))?;
            let pair =
                crypto::ec_private_from_scalar(crypto::Curve::from_ec_params(params)?, comp(ck::CKA_VALUE))?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, Some(pair.private_pkcs8)))
        }
        (ck::CKO_PRIVATE_KEY, Some(ck::CKK_EC_EDWARDS)) => {
            let pair = crypto::ed25519_private_from_seed(comp(ck::CKA_VALUE))?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, Some(pair.private_pkcs8)))
        }
        (ck::CKO_PUBLIC_KEY, _) => {
            // Parse the public values now, so a bad key is refused at creation.
            let public = public_key_of(&attrs)?;
            if let Some(point) = public.ec_point_der() {
                attrs.set(ck::CKA_EC_POINT, AttrValue::Bytes(point));
            }
            attrs.set(ck::CKA_PUBLIC_KEY_INFO, AttrValue::Bytes(public.to_spki_der()));
            Ok((attrs, None))
        }
        _ => Ok((attrs, None)),
    }
}

/// The two objects of an imported key pair: `template` (label, id, token,
/// usage flags) applies to both, each keeping only what fits its class.
fn imported_pair_templates(public: &PublicKey, template: &Template) -> TokenResult<(Template, Template)> {
    let key_type = public.key_type();
    let mut common = template.clone();
    for attr in [ck::CKA_CLASS, ck::CKA_KEY_TYPE] {
        common.remove(attr);
    }
    let only_private = [
        ck::CKA_SIGN,
        ck::CKA_DECRYPT,
        ck::CKA_UNWRAP,
        ck::CKA_DERIVE,
        ck::CKA_SENSITIVE,
        ck::CKA_EXTRACTABLE,
    ];
    let only_public = [ck::CKA_VERIFY, ck::CKA_ENCRYPT, ck::CKA_WRAP];
    let mut pubt = common.clone();
    let mut privt = common;
    for a in only_private {
        pubt.remove(a);
    }
    for a in only_public {
        privt.remove(a);
    }
    pubt.set(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_PUBLIC_KEY));
    pubt.set(ck::CKA_KEY_TYPE, AttrValue::Ulong(key_type));
    privt.set(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_PRIVATE_KEY));
    privt.set(ck::CKA_KEY_TYPE, AttrValue::Ulong(key_type));
    // A placeholder component so the creation rules see a key with a value;
    // the real material is the PKCS#8 blob, kept sealed.
    privt.set(ck::CKA_VALUE, AttrValue::Bytes(vec![0]));
    add_public_attributes(public, &mut pubt, &mut privt);
    // The public template needs its public values before the rules check it.
    let (pubt, _) = rules::created_object(&pubt, false)?;
    let (privt, _) = rules::created_object(&privt, false)?;
    Ok((pubt, privt))
}

/// `C_UnwrapKey`: the template names the class and key type; the unwrapped bytes
/// are the raw secret, or PKCS#8 for private keys.
fn unwrapped_object(template: &Template, secret: SecretBytes) -> TokenResult<(Template, SecretBytes)> {
    let class = template
        .class()
        .ok_or_else(|| TokenError::TemplateIncomplete("CKA_CLASS is required".into()))?;
    match class {
        ck::CKO_SECRET_KEY => {
            let mut t = template.clone();
            t.set(ck::CKA_VALUE, AttrValue::Bytes(secret.expose().to_vec()));
            let (attrs, _) = rules::created_object(&t, false)?;
            Ok((attrs, secret))
        }
        ck::CKO_PRIVATE_KEY => {
            let pair =
                crypto::import_private_key_der(secret.expose()).map_err(|_| TokenError::WrappedKeyInvalid)?;
            if template.key_type().is_some_and(|k| k != pair.public.key_type()) {
                return Err(TokenError::TemplateInconsistent(
                    "the unwrapped key is of another type".into(),
                ));
            }
            let mut t = template.clone();
            t.set(ck::CKA_KEY_TYPE, AttrValue::Ulong(pair.public.key_type()));
            // A placeholder component so the rules accept the template; the real
            // material is the PKCS#8 blob.
            t.set(ck::CKA_VALUE, AttrValue::Bytes(vec![0]));
            let (mut attrs, _) = rules::created_object(&t, false)?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, pair.private_pkcs8))
        }
        _ => Err(TokenError::TemplateInconsistent(
            "only secret and private keys can be unwrapped".into(),
        )),
    }
}
