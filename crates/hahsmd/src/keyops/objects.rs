//! Objects: create, find, read and change attributes, copy, destroy, and
//! the release of a closed session's objects.
use super::handler::{check_trusted, misrouted, needs_login_for, KeyOps};
use super::templates::*;
use crate::sync::Recover;
use hahsm_proto::client::{Request, Response};
use hahsm_token::rules::{self};
use hahsm_token::{ck, TokenError, TokenResult};
use tracing::info;

/// Most objects one `FindObjects` returns.
const MAX_FIND: usize = 100_000;

/// Most objects one `FindObjects` sends the attributes of: a look-up finds
/// one key, or a key and its certificate, and a listing reads the rest
/// with `GetAttributes` as it needs them.
const MAX_READ_WITH_FIND: usize = 32;

/// And at most about this many bytes of attribute values (data objects and
/// certificates can be large): a small share of a frame, which the list of
/// objects found must also fit in.
const MAX_READ_WITH_FIND_BYTES: usize = 64 * 1024;

impl KeyOps<'_> {
    pub(super) async fn objects(&self, request: Request) -> TokenResult<Response> {
        match request {
            Request::CreateObject {
                partition,
                template,
                op_id,
            } => {
                let ctx = self.ctx(&partition)?;
                check_template_size(self.app, &template)?;
                // The login before the template (§5.1), and before the retry
                // check: a replayed private create must not tell a client
                // that is not logged in what it made.
                needs_login_for(&ctx, &template, ck::CKO_DATA)?;
                let (attrs, secret) = imported_object(&template)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let ids = self.store_new(&ctx, vec![(attrs, secret)], op_id).await?;
                Ok(Response::Object(ids[0]))
            }
            Request::FindObjects {
                partition,
                template,
                limit,
                read,
            } => {
                let ctx = self.ctx(&partition)?;
                check_template_size(self.app, &template)?;
                let limit = (limit as usize).min(MAX_FIND);
                let mut found = Vec::new();
                {
                    let session = self.conn.session_objects.lock_or_recover();
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
                if read == 0 {
                    return Ok(Response::Objects(found));
                }
                // Only what `GetAttributes` would answer here and now: the
                // stored attributes (never a secret component), and none of
                // a token object while this member may not serve reads
                // (the lease, as `GetAttributes` checks it). The list stops
                // at the first object left out, so the module reads that
                // one and those after it itself.
                let mut attributes = Vec::new();
                let mut bytes = 0;
                for ouid in found.iter().take((read as usize).min(MAX_READ_WITH_FIND)) {
                    let Ok(entry) = self.object(&ctx, ouid) else { break };
                    if self.within_lease(&ctx, &entry).is_err() {
                        break;
                    }
                    bytes += entry
                        .attrs
                        .iter()
                        .map(|(_, v)| 16 + v.to_raw().len())
                        .sum::<usize>();
                    if bytes > MAX_READ_WITH_FIND_BYTES {
                        break;
                    }
                    attributes.push(entry.attrs.clone());
                }
                Ok(Response::Found {
                    objects: found,
                    attributes,
                })
            }
            Request::GetAttributes {
                partition,
                object,
                types,
            } => {
                let ctx = self.ctx(&partition)?;
                let entry = self.object(&ctx, &object)?;
                self.within_lease(&ctx, &entry)?;
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
                // Public objects need no login (private ones are out of
                // sight without it).
                let ctx = self.ctx(&partition)?;
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
                    self.before_write(&ctx).await?;
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
                let ctx = self.ctx(&partition)?;
                check_template_size(self.app, &template)?;
                let entry = self.object(&ctx, &object)?;
                // A public object's copy made private needs the login.
                if template.flag(ck::CKA_PRIVATE, entry.is_private()) && !ctx.logged_in {
                    return Err(TokenError::UserNotLoggedIn);
                }
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
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
                let ctx = self.ctx(&partition)?;
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
                    self.before_write(&ctx).await?;
                    ctx.active.destroy(object, Some(op_id)).await?;
                    self.after_write(&ctx).await?;
                    info!(client = %self.conn.client_name, partition, object = %object, "object destroyed");
                }
                Ok(Response::Done)
            }
            other => Err(misrouted(&other)),
        }
    }
}
