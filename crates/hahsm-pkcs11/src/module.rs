//! The module's state between `C_Initialize` and `C_Finalize`: the tokio
//! runtime that carries network I/O, the servers and their connections, the
//! slots, the session table and the object-handle table.
//!
//! Locks are short: no lock that another session needs is held across a
//! network call. A server's connection is cloned out of its lock before use,
//! and one multiplexed connection per member carries every thread's requests.
//!
//! Shaped for the HA slot to come: a slot names its member through `Server`,
//! object handles map to the object's cluster-wide OUID (never to a member's
//! row), and handles are never reused.
use crate::error::{rv, Error, Result};
use crate::log;
use crate::session::Session;
use hahsm_client::{ClientConfig, ClientError, MemberConnection, ServerEntry};
use hahsm_proto::client::{PartitionInfo, Request, Response};
use hahsm_proto::Secret;
use hahsm_token::{ck, Ouid};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Locks a mutex, recovering it if a panicking thread poisoned it (each
/// critical section leaves the data consistent).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

pub fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// One configured member and the module's connection to it.
pub struct Server {
    pub entry: ServerEntry,
    conn: RwLock<Option<Arc<MemberConnection>>>,
    /// Serializes reconnection, so that many threads do not all reconnect.
    reconnecting: Mutex<()>,
    /// The logins held on this member, by partition, with what is needed to
    /// log in again after a reconnection. The PIN stays in a zeroizing `Secret`.
    logins: Mutex<HashMap<String, (u64, Secret)>>,
}

/// One slot: a partition on a member.
pub struct Slot {
    pub id: ck::CK_SLOT_ID,
    pub server: Arc<Server>,
    pub partition: String,
    pub serial: u64,
    pub info: Mutex<PartitionInfo>,
}

impl Slot {
    /// The role logged in to this slot's token, if any (`CKU_USER` or `CKU_SO`).
    pub fn login(&self) -> Option<u64> {
        lock(&self.server.logins).get(&self.partition).map(|(u, _)| *u)
    }
}

/// What the module remembers of a key, read once when the key is first used
/// for an operation (the class and key type never change; usage flags changed
/// through this module refresh it).
#[derive(Clone, Copy, Debug)]
pub struct KeyInfo {
    pub class: u64,
    pub key_type: u64,
    pub token: bool,
    pub always_authenticate: bool,
    /// `CKA_SIGN`, `CKA_VERIFY`, … as (attribute, value) pairs.
    pub usages: [(u64, bool); 7],
}

impl KeyInfo {
    pub fn allows(&self, attr: u64) -> bool {
        self.usages.iter().any(|(a, v)| *a == attr && *v)
    }
}

pub struct ObjEntry {
    pub slot: ck::CK_SLOT_ID,
    pub ouid: Ouid,
    pub key: Option<KeyInfo>,
    /// For a session object made through this module: the session that made
    /// it, which destroys it when it closes.
    pub owner: Option<ck::CK_SESSION_HANDLE>,
}

#[derive(Default)]
pub struct Objects {
    by_handle: HashMap<ck::CK_OBJECT_HANDLE, ObjEntry>,
    by_ouid: HashMap<(ck::CK_SLOT_ID, Ouid), ck::CK_OBJECT_HANDLE>,
    next: ck::CK_OBJECT_HANDLE,
}

pub struct Module {
    pid: u32,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    config: ClientConfig,
    servers: Vec<Arc<Server>>,
    slots: RwLock<Vec<Arc<Slot>>>,
    sessions: RwLock<HashMap<ck::CK_SESSION_HANDLE, Arc<Session>>>,
    next_session: AtomicU64,
    objects: RwLock<Objects>,
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
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("hahsm-pkcs11")
        .enable_all()
        .build()
        .map_err(|e| {
            log::error(&format!("C_Initialize: cannot start the I/O runtime: {e}"));
            Error::Rv(ck::CKR_GENERAL_ERROR)
        })?;
    let servers = config
        .servers
        .iter()
        .map(|entry| {
            Arc::new(Server {
                entry: entry.clone(),
                conn: RwLock::new(None),
                reconnecting: Mutex::new(()),
                logins: Mutex::default(),
            })
        })
        .collect();
    let module = Arc::new(Module {
        pid: std::process::id(),
        handle: runtime.handle().clone(),
        runtime: Mutex::new(Some(runtime)),
        config,
        servers,
        slots: RwLock::default(),
        sessions: RwLock::default(),
        next_session: AtomicU64::new(1),
        objects: RwLock::new(Objects {
            next: 1,
            ..Objects::default()
        }),
    });
    module.refresh_slots();
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
        write(&self.sessions).clear();
        for s in &self.servers {
            write(&s.conn).take();
            lock(&s.logins).clear();
        }
        if let Some(rt) = lock(&self.runtime).take() {
            // Shut down from a thread of our own: the caller may be inside
            // an async context (or an atexit handler), where tokio forbids it.
            let stopper = std::thread::spawn(move || rt.shutdown_timeout(Duration::from_secs(2)));
            let _ = stopper.join();
        }
    }

    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout()
    }

    /// Runs a future on the runtime and waits for it, never longer than
    /// `limit`. Works from any application thread, including one that is
    /// itself inside another tokio runtime.
    pub fn block<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let bounded = async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => rv(ck::CKR_DEVICE_ERROR),
            }
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // The common case: drive the future on this thread; the runtime's
            // workers carry the socket I/O and the timers.
            return self.handle.block_on(bounded);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(bounded.await);
        });
        rx.recv_timeout(limit + Duration::from_secs(1))
            .unwrap_or_else(|_| rv(ck::CKR_DEVICE_ERROR))
    }

    /// The connection to a member, connecting (and logging in again where
    /// the application was logged in) when there is none or it was lost.
    fn connection(&self, server: &Arc<Server>) -> Result<Arc<MemberConnection>> {
        let current = || read(&server.conn).as_ref().filter(|c| !c.is_closed()).cloned();
        if let Some(c) = current() {
            return Ok(c);
        }
        let _one = lock(&server.reconnecting);
        if let Some(c) = current() {
            return Ok(c);
        }
        let (config, entry) = (self.config.clone(), server.entry.clone());
        let limit = self.config.connect_timeout() + self.config.handshake_timeout() + Duration::from_secs(1);
        let conn = self
            .block(limit, async move {
                MemberConnection::connect(&config, &entry)
                    .await
                    .map_err(Error::from)
            })
            .inspect_err(|e| {
                log::warn(&format!(
                    "cannot connect to {}: {}",
                    server.entry.name,
                    describe(e)
                ))
            })?;
        let conn = Arc::new(conn);
        let logins: Vec<(String, u64, Secret)> = lock(&server.logins)
            .iter()
            .map(|(p, (u, pin))| (p.clone(), *u, pin.clone()))
            .collect();
        for (partition, user_type, pin) in logins {
            let c = conn.clone();
            let p = partition.clone();
            let again = self.block(self.request_timeout(), async move {
                c.call(Request::Login {
                    partition: p,
                    user_type,
                    pin,
                })
                .await
                .map_err(Error::from)
            });
            if let Err(e) = again {
                log::warn(&format!(
                    "{}: logging in again to partition '{partition}' failed: {}",
                    server.entry.name,
                    describe(&e)
                ));
                lock(&server.logins).remove(&partition);
            }
        }
        *write(&server.conn) = Some(conn.clone());
        Ok(conn)
    }

    /// Sends one request to a member. A request that failed because the
    /// connection was lost is sent once more on a new connection; writes carry
    /// their operation id, so the member applies them once.
    pub fn call_server(&self, server: &Arc<Server>, request: Request) -> Result<Response> {
        let mut retried = false;
        loop {
            let conn = self.connection(server)?;
            let req = request.clone();
            let c = conn.clone();
            let limit = self.request_timeout() + Duration::from_secs(1);
            match self.block(limit, async move { c.call(req).await.map_err(Error::from) }) {
                Err(Error::Client(e @ (ClientError::Disconnected { .. } | ClientError::Link { .. })))
                    if !retried =>
                {
                    log::warn(&format!("{}: {e}; reconnecting", server.entry.name));
                    write(&server.conn).take();
                    retried = true;
                }
                other => return other,
            }
        }
    }

    pub fn call(&self, slot: &Slot, request: Request) -> Result<Response> {
        self.call_server(&slot.server, request)
    }

    /// Records a successful login (for re-login after a reconnection).
    pub fn set_login(&self, slot: &Slot, user_type: u64, pin: Secret) {
        lock(&slot.server.logins).insert(slot.partition.clone(), (user_type, pin));
    }

    pub fn clear_login(&self, slot: &Slot) {
        lock(&slot.server.logins).remove(&slot.partition);
    }

    // ------------------------------------------------------------- slots --

    /// Lists the partitions of every member not yet listed, adding their slots.
    /// Slot ids come from the partition serial, so they survive restarts of
    /// the application and of the member.
    pub fn refresh_slots(&self) {
        for server in &self.servers {
            let known = read(&self.slots).iter().any(|s| Arc::ptr_eq(&s.server, server));
            if known {
                continue;
            }
            let parts = match self.call_server(server, Request::ListPartitions) {
                Ok(Response::Partitions(p)) => p,
                Ok(_) => continue,
                Err(e) => {
                    log::warn(&format!(
                        "{}: cannot list partitions: {}",
                        server.entry.name,
                        describe(&e)
                    ));
                    continue;
                }
            };
            let mut slots = write(&self.slots);
            for info in parts {
                let mut id = (info.serial & 0x7fff_ffff) as ck::CK_SLOT_ID;
                while slots.iter().any(|s| s.id == id) {
                    id = (id + 1) & 0x7fff_ffff;
                }
                slots.push(Arc::new(Slot {
                    id,
                    server: server.clone(),
                    partition: info.name.clone(),
                    serial: info.serial,
                    info: Mutex::new(info),
                }));
            }
            slots.sort_by_key(|s| s.id);
        }
    }

    pub fn slots(&self) -> Vec<Arc<Slot>> {
        read(&self.slots).clone()
    }

    pub fn slot(&self, id: ck::CK_SLOT_ID) -> Result<Arc<Slot>> {
        read(&self.slots)
            .iter()
            .find(|s| s.id == id)
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

    // ---------------------------------------------------------- sessions --

    pub fn add_session(&self, make: impl FnOnce(ck::CK_SESSION_HANDLE) -> Session) -> ck::CK_SESSION_HANDLE {
        let h = self.next_session.fetch_add(1, Ordering::Relaxed);
        write(&self.sessions).insert(h, Arc::new(make(h)));
        h
    }

    pub fn session(&self, h: ck::CK_SESSION_HANDLE) -> Result<Arc<Session>> {
        read(&self.sessions)
            .get(&h)
            .cloned()
            .ok_or(Error::Rv(ck::CKR_SESSION_HANDLE_INVALID))
    }

    pub fn remove_session(&self, h: ck::CK_SESSION_HANDLE) -> Result<Arc<Session>> {
        write(&self.sessions)
            .remove(&h)
            .ok_or(Error::Rv(ck::CKR_SESSION_HANDLE_INVALID))
    }

    pub fn sessions_of(&self, slot: ck::CK_SLOT_ID) -> Vec<Arc<Session>> {
        read(&self.sessions)
            .values()
            .filter(|s| s.slot.id == slot)
            .cloned()
            .collect()
    }

    // ----------------------------------------------------------- objects --

    /// The handle of an object, made on first sight and the same afterwards.
    pub fn handle_for(&self, slot: ck::CK_SLOT_ID, ouid: Ouid) -> ck::CK_OBJECT_HANDLE {
        if let Some(h) = read(&self.objects).by_ouid.get(&(slot, ouid)) {
            return *h;
        }
        let mut t = write(&self.objects);
        if let Some(h) = t.by_ouid.get(&(slot, ouid)) {
            return *h;
        }
        let h = t.next;
        t.next += 1;
        t.by_ouid.insert((slot, ouid), h);
        t.by_handle.insert(
            h,
            ObjEntry {
                slot,
                ouid,
                key: None,
                owner: None,
            },
        );
        h
    }

    /// The OUID behind a handle, checked to belong to the session's slot.
    pub fn object(&self, slot: ck::CK_SLOT_ID, h: ck::CK_OBJECT_HANDLE) -> Result<(Ouid, Option<KeyInfo>)> {
        match read(&self.objects).by_handle.get(&h) {
            Some(e) if e.slot == slot => Ok((e.ouid, e.key)),
            _ => rv(ck::CKR_OBJECT_HANDLE_INVALID),
        }
    }

    pub fn set_key_info(&self, h: ck::CK_OBJECT_HANDLE, info: Option<KeyInfo>) {
        if let Some(e) = write(&self.objects).by_handle.get_mut(&h) {
            e.key = info;
        }
    }

    pub fn set_owner(&self, h: ck::CK_OBJECT_HANDLE, owner: ck::CK_SESSION_HANDLE) {
        if let Some(e) = write(&self.objects).by_handle.get_mut(&h) {
            e.owner = Some(owner);
        }
    }

    /// Forgets a destroyed object. Its handle is never given out again.
    pub fn forget_object(&self, h: ck::CK_OBJECT_HANDLE) {
        let mut t = write(&self.objects);
        if let Some(e) = t.by_handle.remove(&h) {
            t.by_ouid.remove(&(e.slot, e.ouid));
        }
    }

    /// The session objects a session made, for it to destroy when it closes.
    pub fn owned_by(&self, session: ck::CK_SESSION_HANDLE) -> Vec<(ck::CK_OBJECT_HANDLE, Ouid)> {
        read(&self.objects)
            .by_handle
            .iter()
            .filter(|(_, e)| e.owner == Some(session))
            .map(|(h, e)| (*h, e.ouid))
            .collect()
    }
}

/// An error as the log shows it: the member's message or the connection's fault.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Client(c) => c.to_string(),
        Error::Token(t) => t.to_string(),
        other => format!("CKR {:#x}", other.rv()),
    }
}
