//! Requests over an HA slot's members: to the least busy member, and on
//! to another after a failure that may be the member's (a lost connection,
//! a refusal for want of a quorum, an object it has not applied yet), with
//! the same operation id so a write lands once; and the requests bound to
//! the member holding the slot's session objects.
use super::group::{HaGroup, HaMember, InFlight};
use crate::error::{describe, Error, Result};
use crate::log;
use crate::pool::Net;
use crate::sync::lock;
use hahsm_client::ClientError;
use hahsm_proto::client::{Request, Response};
use hahsm_token::ck;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which connection to a member carries a request.
#[derive(Clone, Copy)]
pub enum Route {
    /// The one multiplexed connection, which holds the session objects.
    Multiplexed,
    /// A pooled blocking connection (stateless operations on token keys).
    Pooled,
}

/// Whether a failed request may have failed because of its member, so that
/// another member should be tried.
fn member_failed(e: &Error) -> bool {
    match e {
        Error::Client(c) => c.is_connection_failure(),
        // `block` gave up waiting: the member did not answer in time.
        Error::Rv(rv) => *rv == ck::CKR_DEVICE_ERROR,
        _ => false,
    }
}

/// Sends a request to the member with the fewest requests in flight. A
/// connection-level failure sends the same request (a write keeps its
/// operation id) at once to another member, until one answers or every
/// member has failed.
///
/// When a member refused for want of a quorum and no member answered, the
/// slot asks again, more slowly each time, until the request's deadline:
/// a member catching up or cut off regains its quorum in moments, and a
/// write keeps its operation id (docs/replication.md §12: a refusal after
/// the write may still take effect; the retry lands it once).
pub fn call(g: &HaGroup, net: &Net, request: Request, route: Route) -> Result<Response> {
    if let Some(made) = session_bound(g, &request) {
        return call_session_home(g, net, request, made);
    }
    let give_up = Instant::now() + net.request_timeout();
    let mut pause = QUORUM_RETRY_FIRST;
    loop {
        let (answer, quorum_refused) = over_members_once(g, &request, |member| match route {
            Route::Multiplexed => net.call_server(&member.server, request.clone()),
            Route::Pooled => net.call_pooled(&member.server, request.clone()),
        });
        match answer {
            Err(e) if quorum_refused && Instant::now() + pause < give_up => {
                log::info(&format!(
                    "HA group {}: {} found no member with a quorum ({}); asking again in {} ms",
                    g.label,
                    request.name(),
                    describe(&e),
                    pause.as_millis()
                ));
                std::thread::sleep(pause);
                pause = (pause * 2).min(QUORUM_RETRY_MOST);
            }
            Err(e) if quorum_refused => {
                log::warn(&format!(
                    "HA group {}: {} found no member with a quorum until its deadline ({})",
                    g.label,
                    request.name(),
                    describe(&e)
                ));
                return Err(e);
            }
            answer => return answer,
        }
    }
}

/// The first pause before asking the members again when the ones that
/// answered refused for want of a quorum, and the longest (it doubles).
const QUORUM_RETRY_FIRST: Duration = Duration::from_millis(50);
const QUORUM_RETRY_MOST: Duration = Duration::from_millis(800);

/// Makes `attempt` on the least busy member, and on another after a
/// connection-level failure or a refusal for want of a quorum, until
/// one answers or every member has failed.
pub fn over_members(
    g: &HaGroup,
    request: &Request,
    attempt: impl Fn(&Arc<HaMember>) -> Result<Response>,
) -> Result<Response> {
    over_members_once(g, request, attempt).0
}

/// `over_members`, and whether it ran out of members with one of them
/// having refused for want of a quorum (so that asking again may succeed).
fn over_members_once(
    g: &HaGroup,
    request: &Request,
    attempt: impl Fn(&Arc<HaMember>) -> Result<Response>,
) -> (Result<Response>, bool) {
    let members = g.members();
    let mut tried = vec![false; members.len()];
    // A member that refused a write for want of a quorum a moment ago is
    // likely still cut off from the majority: ask it for writes last.
    let mut asked_last: Vec<usize> = Vec::new();
    if request.is_write() {
        asked_last = (0..members.len())
            .filter(|&i| members[i].refused_a_write_lately())
            .collect();
        asked_last.iter().for_each(|&i| tried[i] = true);
    }
    let mut last = None;
    let mut quorum_refused = false;
    // A member that answered it has no such object: the object may be
    // destroyed (the members that refused for a quorum are then a minority
    // that has not applied the destroy), so asking again would only wait.
    let mut no_such_object: Option<Error> = None;
    while let Some(i) = g.pick(&members, &tried).or_else(|| asked_last.pop()) {
        tried[i] = true;
        let member = &members[i];
        let result = {
            let _busy = InFlight::start(&member.in_flight);
            attempt(member)
        };
        match result {
            Err(e) if member_failed(&e) => {
                log::warn(&format!(
                    "{}: {} failed ({}); trying another member",
                    member.server.entry.name,
                    request.name(),
                    describe(&e)
                ));
                g.drop_member(member);
                last = Some(e);
            }
            // The member cannot reach a quorum of the group, or could not
            // get this write confirmed by one (it is on the minority side
            // of a cut); a member on the majority side can. The write
            // keeps its operation id, so it lands once.
            Err(Error::Client(ClientError::Remote(ref w))) if w.code == hahsm_token::error::CKR_NO_QUORUM => {
                *lock(&member.quorum_refused_at) = Some(Instant::now());
                quorum_refused = true;
                log::info(&format!(
                    "{}: {} refused for want of a quorum; trying another member",
                    member.server.entry.name,
                    request.name()
                ));
                last = Some(Error::Rv(ck::CKR_DEVICE_ERROR));
            }
            // The member's disk is full: it could not record the write (or
            // the failed login), so another member may. A write keeps its
            // operation id, so it lands once even if this one did commit.
            Err(Error::Client(ClientError::Remote(ref w))) if w.code == ck::CKR_DEVICE_MEMORY => {
                log::warn(&format!(
                    "{}: {} failed for want of space on the member ({}); trying another member",
                    member.server.entry.name,
                    request.name(),
                    w.message
                ));
                last = Some(Error::Rv(ck::CKR_DEVICE_MEMORY));
            }
            // The member does not know an object this application holds a
            // handle for: it has not applied the write that made (or
            // renamed) it yet, e.g. it was slow when that write was
            // acknowledged. Another member has; the lagging one stays in
            // the rotation.
            Err(e) if object_unknown(&e) => {
                log::info(&format!(
                    "{}: {} found no such object ({}); trying another member",
                    member.server.entry.name,
                    request.name(),
                    describe(&e)
                ));
                no_such_object = Some(e);
            }
            Err(e) if e.rv() == ck::CKR_DEVICE_ERROR => {
                log::warn(&format!(
                    "{}: {} failed on the member: {}",
                    member.server.entry.name,
                    request.name(),
                    describe(&e)
                ));
                return (Err(e), false);
            }
            // An answer, or an error that another member would give too:
            // nothing to ask again.
            other => return (other, false),
        }
    }
    // "No such object" wins over the other failures, whichever member gave
    // it: the application learns the object is gone (or not yet there).
    if let Some(e) = no_such_object {
        return (Err(e), false);
    }
    let e = last.unwrap_or(Error::Rv(ck::CKR_DEVICE_ERROR));
    // (A refusal for want of a quorum is asked again by `call`, which says
    // so itself.)
    if !object_unknown(&e) && !quorum_refused {
        log::warn(&format!(
            "HA group {}: {} failed on every member it could try ({})",
            g.label,
            request.name(),
            describe(&e)
        ));
    }
    (Err(e), quorum_refused)
}

/// Sends a request that makes or uses a session object to the slot's
/// session home, choosing the least busy member as the home when there
/// is none. There is no failover: the session objects die with their
/// member, and the next request that needs them gets
/// `CKR_OBJECT_HANDLE_INVALID` (or `CKR_KEY_HANDLE_INVALID`) from the new home.
fn call_session_home(g: &HaGroup, net: &Net, request: Request, made: Vec<bool>) -> Result<Response> {
    let home = {
        let mut home = lock(&g.session_home);
        match &*home {
            Some(m) if !m.is_down() => m.clone(),
            _ => {
                let members = g.members();
                let i = g
                    .pick(&members, &vec![false; members.len()])
                    .ok_or(Error::Rv(ck::CKR_DEVICE_ERROR))?;
                lock(&g.session_objects).clear();
                log::info(&format!(
                    "HA group {}: session objects live on member {}",
                    g.label,
                    g.serial_of(&members[i])
                ));
                *home = Some(members[i].clone());
                members[i].clone()
            }
        }
    };
    let destroyed = match &request {
        Request::DestroyObject { object, .. } => Some(*object),
        _ => None,
    };
    let result = {
        let _busy = InFlight::start(&home.in_flight);
        net.call_server(&home.server, request)
    };
    match &result {
        Ok(Response::Done) => {
            if let Some(o) = destroyed {
                lock(&g.session_objects).remove(&o);
            }
        }
        Err(e) if member_failed(e) => {
            log::warn(&format!(
                "{}: the member holding this application's session objects failed ({}); they are lost",
                home.server.entry.name,
                describe(e)
            ));
            g.drop_member(&home);
            lock(&g.session_home).take();
            lock(&g.session_objects).clear();
        }
        Ok(Response::Object(o) | Response::Encapsulated { object: o, .. }) if made.first() == Some(&true) => {
            lock(&g.session_objects).insert(*o);
        }
        Ok(Response::KeyPair { public, private }) => {
            let mut objects = lock(&g.session_objects);
            for (o, session) in [(public, made.first()), (private, made.get(1))] {
                if session == Some(&true) {
                    objects.insert(*o);
                }
            }
        }
        _ => {}
    }
    result
}

/// A member's answer that it holds no object behind a handle the module gave
/// out: in an HA slot, another member may hold it.
fn object_unknown(e: &Error) -> bool {
    matches!(
        e.rv(),
        ck::CKR_OBJECT_HANDLE_INVALID
            | ck::CKR_KEY_HANDLE_INVALID
            | ck::CKR_WRAPPING_KEY_HANDLE_INVALID
            | ck::CKR_UNWRAPPING_KEY_HANDLE_INVALID
    )
}

/// Whether a request in an HA slot must go to the slot's session home: it
/// makes a session object, names one, or searches while some exist. Returns,
/// for each object the request makes (in the order its answer names them),
/// whether it is a session object.
fn session_bound(g: &HaGroup, request: &Request) -> Option<Vec<bool>> {
    let known = lock(&g.session_objects);
    let session = |t: &hahsm_token::Template| !t.flag(ck::CKA_TOKEN, false);
    let made: Vec<bool> = match request {
        Request::CreateObject { template, .. }
        | Request::GenerateKey { template, .. }
        | Request::UnwrapKey { template, .. }
        | Request::DeriveKey { template, .. }
        | Request::EncapsulateKey { template, .. }
        | Request::DecapsulateKey { template, .. } => vec![session(template)],
        Request::ImportKeyPair { template, .. } => vec![session(template); 2],
        Request::GenerateKeyPair {
            public_template,
            private_template,
            ..
        } => vec![session(public_template), session(private_template)],
        // A copy keeps the original's CKA_TOKEN unless the template sets it.
        Request::CopyObject { template, object, .. } => vec![match template.get(ck::CKA_TOKEN) {
            Some(v) => v.as_bool() == Some(false),
            None => known.contains(object),
        }],
        _ => Vec::new(),
    };
    let named = match request {
        Request::GetAttributes { object, .. }
        | Request::SetAttributes { object, .. }
        | Request::CopyObject { object, .. }
        | Request::DestroyObject { object, .. } => vec![*object],
        Request::Sign { key, .. }
        | Request::Verify { key, .. }
        | Request::Encrypt { key, .. }
        | Request::Decrypt { key, .. } => vec![*key],
        Request::WrapKey {
            wrapping_key, key, ..
        } => vec![*wrapping_key, *key],
        Request::UnwrapKey { unwrapping_key, .. } => vec![*unwrapping_key],
        Request::DeriveKey { base_key, .. } => vec![*base_key],
        Request::EncapsulateKey { public_key, .. } => vec![*public_key],
        Request::DecapsulateKey { private_key, .. } => vec![*private_key],
        Request::DigestKeys { keys, .. } => keys.iter().map(|(_, k)| *k).collect(),
        _ => Vec::new(),
    };
    let searching = matches!(request, Request::FindObjects { .. }) && !known.is_empty();
    let bound = made.iter().any(|s| *s) || named.iter().any(|o| known.contains(o)) || searching;
    bound.then_some(made)
}
