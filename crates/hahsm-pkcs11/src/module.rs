//! The module's state between `C_Initialize` and `C_Finalize`, and the
//! operations on it that span layers: a slot's calls, logins and logouts per
//! token, and the background task that follows each HA group. The parts are
//! below it: `runtime` (the I/O runtime), `pool` (connections per member),
//! `ha` (an HA slot's members), `slots`, `sessions` and `handles`.
//!
//! Locks are short: no lock that another session needs is held across a
//! network call. A server's connection is cloned out of its lock before use,
//! and one multiplexed connection per member carries every thread's requests.
//!
//! A slot is either one partition on one member, or an HA slot: one HA group
//! whose members all serve it. Object handles map to the object's
//! cluster-wide OUID (never to a member's row), so a handle works on every
//! member, and handles are never reused. In an HA slot each request goes to
//! the member with the fewest requests in flight, and a request that failed
//! at the connection level is sent at once to another member (a write with
//! the same operation id, so it is applied once).
use crate::error::{describe, rv, Error, Result};
use crate::ha::routing::{self, Route};
use crate::ha::watch;
use crate::handles::Handles;
use crate::log;
use crate::pool::{Net, Server};
use crate::runtime::Runtime;
use crate::sessions::Sessions;
use crate::slots::{Slot, SlotKind};
use crate::sync::{lock, read, write};
use hahsm_client::ClientConfig;
use hahsm_proto::client::{PartitionInfo, Request, Response};
use hahsm_proto::Secret;
use hahsm_token::{ck, Ouid};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How often the background task looks at the HA groups (probes due, and
/// every `REFRESH_EVERY` the group definitions).
const TICK: Duration = Duration::from_millis(250);
/// How often each HA group's definition is read again from a member.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

pub struct Module {
    pid: u32,
    net: Arc<Net>,
    servers: Vec<Arc<Server>>,
    slots: RwLock<Vec<Arc<Slot>>>,
    pub sessions: Sessions,
    pub handles: Handles,
    /// How many changes this process has begun or ended: writes, logins and
    /// logouts (each counted when sent and when answered). Attributes read
    /// before a change no longer answer for the member after it
    /// (`session::ReadWithFind`).
    changes: AtomicU64,
}

/// The module state; `None` before `C_Initialize` and after `C_Finalize`.
static MODULE: RwLock<Option<Arc<Module>>> = RwLock::new(None);

/// The initialized module, or `CKR_CRYPTOKI_NOT_INITIALIZED`. In a forked child
/// the parent's state is not usable: the child must call `C_Initialize`.
pub fn get() -> Result<Arc<Module>> {
    match read(&MODULE).as_ref() {
        Some(m) if m.pid == std::process::id() => Ok(m.clone()),
        _ => rv(ck::CKR_CRYPTOKI_NOT_INITIALIZED),
    }
}

/// `C_Initialize`: loads the client config, starts the runtime, connects to
/// every configured member and lists its partitions.
pub fn initialize() -> Result<()> {
    let mut global = write(&MODULE);
    if let Some(old) = global.take() {
        if old.pid == std::process::id() {
            *global = Some(old);
            return rv(ck::CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        // Inherited from the parent across fork(): its runtime's threads do
        // not exist here, so it can be neither used nor shut down. Leak it,
        // leaving the parent's sockets and state untouched.
        std::mem::forget(old);
    }
    let path = ClientConfig::default_path();
    let config = ClientConfig::load(&path).map_err(|e| {
        log::error(&format!("C_Initialize: {e}"));
        Error::Rv(ck::CKR_GENERAL_ERROR)
    })?;
    if config.servers.is_empty() {
        log::error(&format!(
            "C_Initialize: the client config {} names no server",
            path.display()
        ));
        return rv(ck::CKR_GENERAL_ERROR);
    }
    let runtime = Runtime::start()?;
    let servers = config
        .servers
        .iter()
        .map(|entry| Arc::new(Server::lister(entry.clone())))
        .collect();
    let module = Arc::new(Module {
        pid: std::process::id(),
        net: Arc::new(Net { runtime, config }),
        servers,
        slots: RwLock::default(),
        sessions: Sessions::default(),
        handles: Handles::default(),
        changes: AtomicU64::new(0),
    });
    module.refresh_slots();
    module.start_watch();
    *global = Some(module);
    Ok(())
}

/// `C_Finalize`: forgets every session and stops the runtime's threads.
pub fn finalize() -> Result<()> {
    let module = {
        let mut global = write(&MODULE);
        match global.as_ref() {
            Some(m) if m.pid == std::process::id() => {}
            _ => return rv(ck::CKR_CRYPTOKI_NOT_INITIALIZED),
        }
        global.take()
    };
    if let Some(m) = module {
        m.shutdown();
    }
    Ok(())
}

impl Module {
    fn shutdown(&self) {
        self.sessions.clear();
        let links = read(&self.slots)
            .iter()
            .flat_map(|s| {
                let _change = lock(&s.login_change);
                lock(&s.token).change(None);
                s.links()
            })
            .collect::<Vec<_>>();
        for s in self.servers.iter().chain(&links) {
            write(&s.conn).take();
            s.clear_pool();
        }
        self.net.runtime.shutdown();
    }

    pub fn request_timeout(&self) -> Duration {
        self.net.request_timeout()
    }

    /// Sends one request for a slot: to its member, or for an HA slot to
    /// the least busy member, failing over to the others.
    pub fn call(&self, slot: &Slot, request: Request) -> Result<Response> {
        let write = request.is_write();
        self.changed_if(write);
        let r = match &slot.kind {
            SlotKind::Member => self.net.call_server(&slot.server, request),
            SlotKind::Ha(g) => routing::call(g, &self.net, request, Route::Multiplexed),
        };
        self.changed_if(write);
        r
    }

    /// Counts a change begun or ended (see `changes`).
    fn changed_if(&self, change: bool) {
        if change {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The count of changes this process has begun or ended so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Like [`Module::call`], for an operation that needs no state on the
    /// member beyond the login: a single-part sign, verify, encrypt, decrypt
    /// or digest with a token key. It runs on a pooled blocking connection,
    /// driven by the calling thread (see `hahsm_client::blocking`).
    pub fn call_stateless(&self, slot: &Slot, request: Request) -> Result<Response> {
        let write = request.is_write();
        self.changed_if(write);
        let r = match &slot.kind {
            SlotKind::Member => self.net.call_pooled(&slot.server, request),
            SlotKind::Ha(g) => routing::call(g, &self.net, request, Route::Pooled),
        };
        self.changed_if(write);
        r
    }

    /// `C_Login` as the user or SO: the PIN is checked by a member (for an
    /// HA slot, the least busy one that answers), then logs every other
    /// connection of the slot in as they are next used.
    pub fn login(&self, slot: &Slot, user_type: u64, pin: Secret) -> Result<()> {
        let _change = lock(&slot.login_change);
        match slot.login() {
            Some(u) if u == user_type => return rv(ck::CKR_USER_ALREADY_LOGGED_IN),
            Some(_) => return rv(ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
            None => {}
        }
        let request = Request::Login {
            partition: slot.partition.clone(),
            user_type,
            pin: pin.clone(),
        };
        // A login shows private objects that a find before it did not.
        self.changed_if(true);
        let r = match &slot.kind {
            SlotKind::Member => self.net.login_on(&slot.server, user_type, &pin),
            SlotKind::Ha(g) => routing::over_members(g, &request, |member| {
                self.net
                    .login_on(&member.server, user_type, &pin)
                    .map(|()| Response::Done)
            })
            .map(|_| ()),
        };
        self.changed_if(true);
        r
    }

    /// `C_Logout`: ends the token's login for every session, and logs out
    /// every connection of the slot now (pooled ones are closed). The PIN is
    /// dropped (zeroized).
    pub fn logout(&self, slot: &Slot) -> Result<()> {
        let _change = lock(&slot.login_change);
        // A logout hides private objects that a find before it showed.
        self.changed_if(true);
        {
            let mut t = lock(&slot.token);
            if t.who.is_none() {
                return rv(ck::CKR_USER_NOT_LOGGED_IN);
            }
            t.change(None);
        }
        for server in slot.links() {
            server.clear_pool();
            if let Some(linked) = server.current() {
                if self.net.align(&server, &linked).is_err() {
                    // A connection that cannot be logged out is closed: the
                    // member ends its logins with it.
                    write(&server.conn).take();
                }
            }
        }
        self.changed_if(true);
        Ok(())
    }

    /// Ends session objects of a session that closed, on the member and
    /// connection that hold them. A member that cannot be reached holds
    /// them no more either: they die with its connection.
    pub fn release_session_objects(&self, slot: &Slot, objects: Vec<Ouid>) {
        if objects.is_empty() {
            return;
        }
        self.changed_if(true);
        let home = match &slot.kind {
            SlotKind::Member => Some(slot.server.clone()),
            SlotKind::Ha(g) => {
                lock(&g.session_objects).retain(|o| !objects.contains(o));
                lock(&g.session_home).as_ref().map(|m| m.server.clone())
            }
        };
        let Some(server) = home else { return };
        // On the connection as it is: a new one holds none of them.
        let Some(linked) = server.current() else { return };
        let release = Request::ReleaseSessionObjects {
            partition: slot.partition.clone(),
            objects,
        };
        if let Err(e) = self.net.send(&linked.conn, release) {
            log::warn(&format!(
                "{}: releasing session objects failed ({}); closing the connection, which ends them",
                server.entry.name,
                describe(&e)
            ));
            write(&server.conn).take();
        }
    }

    /// After `C_SetPIN` changed the logged-in role's PIN: the slot's other
    /// connections log in with the new one from now on.
    pub fn pin_changed(&self, slot: &Slot, new_pin: Secret) {
        let _change = lock(&slot.login_change);
        if let Some((_, pin)) = lock(&slot.token).who.as_mut() {
            *pin = new_pin;
        }
    }

    /// Lists the partitions of every member not yet listed (see `slots::list_new`).
    pub fn refresh_slots(&self) {
        crate::slots::list_new(&self.net, &self.servers, &self.slots);
    }

    /// Starts the background task that follows each HA group while the
    /// application runs: every `REFRESH_EVERY` it reads the group definition
    /// again (from any member in the rotation) and adds or drops members;
    /// every `TICK` it probes the members out of the rotation whose probe is
    /// due. It lives on the module's runtime, so `C_Finalize` (which shuts
    /// the runtime down) ends it; it also ends once the module is gone.
    fn start_watch(self: &Arc<Self>) {
        let module = Arc::downgrade(self);
        self.net.runtime.spawn(async move {
            let mut last_refresh = Instant::now();
            loop {
                tokio::time::sleep(TICK).await;
                let Some(m) = module.upgrade() else { return };
                if !m.net.runtime.is_running() {
                    return;
                }
                let refresh = last_refresh.elapsed() >= REFRESH_EVERY;
                if refresh {
                    last_refresh = Instant::now();
                }
                let groups: Vec<Arc<crate::ha::HaGroup>> =
                    read(&m.slots).iter().filter_map(|s| s.ha().cloned()).collect();
                for g in groups {
                    if refresh {
                        watch::refresh(&g, &m.net, &m.servers).await;
                        // Halve the latency averages: a member passed over
                        // after one slow spell looks fast again before long,
                        // and is measured anew.
                        for member in g.members() {
                            let _ = member.server.latency_us.fetch_update(
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                                |v| Some(v / 2),
                            );
                        }
                    }
                    watch::probe_due(&g, &m.net);
                }
            }
        });
    }

    /// Whether a slot is listed: with `ha_only`, only HA slots are.
    fn visible(&self, slot: &Slot) -> bool {
        !self.net.config.ha_only || slot.is_ha()
    }

    pub fn slots(&self) -> Vec<Arc<Slot>> {
        read(&self.slots)
            .iter()
            .filter(|s| self.visible(s))
            .cloned()
            .collect()
    }

    pub fn slot(&self, id: ck::CK_SLOT_ID) -> Result<Arc<Slot>> {
        read(&self.slots)
            .iter()
            .find(|s| s.id == id && self.visible(s))
            .cloned()
            .ok_or(Error::Rv(ck::CKR_SLOT_ID_INVALID))
    }

    /// Fresh partition facts (PIN locked, activated) for token info.
    pub fn refresh_info(&self, slot: &Slot) -> PartitionInfo {
        if let Ok(Response::Partitions(parts)) = self.call(slot, Request::ListPartitions) {
            if let Some(p) = parts.into_iter().find(|p| p.name == slot.partition) {
                *lock(&slot.info) = p;
            }
        }
        lock(&slot.info).clone()
    }
}
