//! The module's state between `C_Initialize` and `C_Finalize`: the tokio
//! runtime that carries network I/O, the servers and their connections, the
//! slots, the session table and the object-handle table.
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
use crate::error::{rv, Error, Result};
use crate::log;
use crate::session::Session;
use hahsm_client::{BlockingConnection, ClientConfig, ClientError, MemberConnection, ServerEntry};
use hahsm_proto::client::{PartitionInfo, Request, Response};
use hahsm_proto::peer::GroupDef;
use hahsm_proto::Secret;
use hahsm_token::{ck, Ouid};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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

/// The login state of one token (slot) for this application: PKCS#11 logins
/// are per token and per application, whichever session made them.
#[derive(Default)]
pub struct TokenLogin {
    /// Who is logged in, with the PIN that logs the slot's other connections
    /// in. The PIN stays in a zeroizing `Secret`.
    who: Option<(u64, Secret)>,
    /// Bumped by every login, logout and end of a login: a connection
    /// logged in under an older generation is logged out (or in) again
    /// before it carries a request.
    generation: u64,
}

impl TokenLogin {
    fn change(&mut self, who: Option<(u64, Secret)>) -> u64 {
        self.who = who;
        self.generation += 1;
        self.generation
    }
}

/// What one connection's member believes about the login: the generation of
/// the token's login it was last brought in line with (none yet for a new
/// connection), and whether the member holds a login on it.
#[derive(Default)]
struct ConnLogin {
    generation: Option<u64>,
    logged_in: bool,
}

/// A multiplexed connection and its login as the member sees it. The mutex
/// is held while the login is brought in line, so two threads never log
/// one connection in or out at once.
struct Linked {
    conn: Arc<MemberConnection>,
    login: Mutex<ConnLogin>,
}

/// One member as one slot reaches it: its connections and what they are
/// logged in as. Every slot has its own, so that a login to one token (an HA
/// slot, or a member's slot) never answers for another.
pub struct Server {
    pub entry: ServerEntry,
    /// The slot's partition (empty for the connections that list partitions).
    partition: String,
    /// The slot's login, shared by the slot's members.
    token: Arc<Mutex<TokenLogin>>,
    conn: RwLock<Option<Arc<Linked>>>,
    /// Serializes reconnection, so that many threads do not all reconnect.
    reconnecting: Mutex<()>,
    /// Idle blocking connections for stateless operations on token keys,
    /// each with the login generation it was logged in under.
    pool: Mutex<Vec<(u64, BlockingConnection)>>,
    /// Pooled connections open, idle or in use (at most `POOL_MAX`).
    pooled: AtomicUsize,
    /// Moving average of the member's answer time on an open connection, in
    /// µs (0 until the first answer): an HA slot's tie-breaker between
    /// equally busy members. Connection setup is not counted.
    latency_us: AtomicU64,
}

/// The most blocking connections the module keeps to one member; threads
/// beyond that share the multiplexed connection.
const POOL_MAX: usize = 16;

impl Server {
    fn new(entry: ServerEntry, partition: &str, token: Arc<Mutex<TokenLogin>>) -> Server {
        Server {
            entry,
            partition: partition.to_string(),
            token,
            conn: RwLock::new(None),
            reconnecting: Mutex::new(()),
            pool: Mutex::default(),
            pooled: AtomicUsize::new(0),
            latency_us: AtomicU64::new(0),
        }
    }

    /// A member's connections for listing its partitions: never logged in.
    fn lister(entry: ServerEntry) -> Server {
        Server::new(entry, "", Arc::default())
    }

    /// Folds one answer time into the moving average (weight 1/8).
    fn record_latency(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    old - old / 8 + sample / 8
                })
            });
    }

    fn generation(&self) -> u64 {
        lock(&self.token).generation
    }

    /// Closes every idle pooled connection (the member failed, the login
    /// changed, or the module is finalized); connections in use are closed
    /// when their call returns.
    fn clear_pool(&self) {
        let idle = std::mem::take(&mut *lock(&self.pool));
        self.pooled.fetch_sub(idle.len(), Ordering::SeqCst);
    }

    /// Returns a connection whose call succeeded (or was answered with an
    /// error) to the pool, unless the login changed since it was logged in.
    fn check_in(&self, generation: u64, conn: BlockingConnection) {
        if generation == self.generation() {
            lock(&self.pool).push((generation, conn));
        } else {
            self.discard(conn);
        }
    }

    /// Forgets a pooled connection that failed.
    fn discard(&self, conn: BlockingConnection) {
        drop(conn);
        self.pooled.fetch_sub(1, Ordering::SeqCst);
    }

    fn current(&self) -> Option<Arc<Linked>> {
        read(&self.conn).as_ref().filter(|c| !c.conn.is_closed()).cloned()
    }
}

/// Member answers that say the PIN a login carried no longer opens the token.
fn pin_refused(e: &Error) -> bool {
    matches!(
        e.rv(),
        ck::CKR_PIN_INCORRECT | ck::CKR_PIN_LOCKED | ck::CKR_PIN_EXPIRED | ck::CKR_USER_PIN_NOT_INITIALIZED
    )
}

/// How often the background task looks at the HA groups (probes due, and
/// every `REFRESH_EVERY` the group definitions).
const TICK: Duration = Duration::from_millis(250);
/// How often each HA group's definition is read again from a member.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// The longest wait between two probes of a member out of the rotation.
const PROBE_MAX: Duration = Duration::from_secs(10);

/// The wait after probe attempt `n` failed: 1 s after the first two attempts,
/// then 2, 4 and 8 s (each twice), then 10 s for as long as the member stays away.
fn backoff(n: u32) -> Duration {
    let secs = 1u64 << (n.saturating_sub(1) / 2).min(4);
    Duration::from_secs(secs).min(PROBE_MAX)
}

/// Why and since when a member is out of the rotation.
struct Outage {
    /// Probes made so far.
    attempts: u32,
    next_probe: Instant,
    /// A probe is on its way.
    probing: bool,
    /// A member that joined the group while the application ran: it enters
    /// the rotation through its first successful probe.
    joining: bool,
}

/// One member serving an HA slot.
pub struct HaMember {
    pub server: Arc<Server>,
    /// Requests sent to this member and not yet answered.
    in_flight: AtomicUsize,
    /// Out of the rotation, after a connection-level failure (or while
    /// joining): application requests pass it over and the background task
    /// probes it until it may serve again.
    outage: Mutex<Option<Outage>>,
    /// When it last refused a write for want of a quorum (cut off from the
    /// majority): for a moment after, writes go to the other members first.
    quorum_refused_at: Mutex<Option<Instant>>,
}

/// How long a member that refused a write for want of a quorum is asked for
/// writes last: about one heartbeat, time for its view of the group to change.
const QUORUM_SIDELINE: Duration = Duration::from_secs(1);

impl HaMember {
    fn new(server: Arc<Server>) -> Arc<HaMember> {
        Arc::new(HaMember {
            server,
            in_flight: AtomicUsize::new(0),
            outage: Mutex::new(None),
            quorum_refused_at: Mutex::new(None),
        })
    }

    /// A member that joined while the application runs: out of the
    /// rotation until its first probe succeeds.
    fn joining(server: Arc<Server>) -> Arc<HaMember> {
        Arc::new(HaMember {
            server,
            in_flight: AtomicUsize::new(0),
            outage: Mutex::new(Some(Outage {
                attempts: 0,
                next_probe: Instant::now(),
                probing: false,
                joining: true,
            })),
            quorum_refused_at: Mutex::new(None),
        })
    }

    pub fn is_down(&self) -> bool {
        lock(&self.outage).is_some()
    }

    fn refused_a_write_lately(&self) -> bool {
        lock(&self.quorum_refused_at).is_some_and(|t| t.elapsed() < QUORUM_SIDELINE)
    }
}

/// Counts a request in flight on a member while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn start(counter: &'a AtomicUsize) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What an HA slot adds to a slot: the group and its serving members.
pub struct HaGroup {
    pub id: [u8; 16],
    pub label: String,
    pub def: Mutex<GroupDef>,
    members: RwLock<Vec<Arc<HaMember>>>,
    /// The slot's login (as `Slot::token`), for the members that join.
    token: Arc<Mutex<TokenLogin>>,
    /// Rotates the choice among equally loaded members.
    next: AtomicUsize,
    /// The member that holds the slot's session objects (they live in one
    /// connection on one member), chosen when the first one is made.
    session_home: Mutex<Option<Arc<HaMember>>>,
    /// The session objects made through this slot, all on `session_home`.
    session_objects: Mutex<std::collections::HashSet<Ouid>>,
}

impl HaGroup {
    pub fn members(&self) -> Vec<Arc<HaMember>> {
        read(&self.members).clone()
    }

    /// The untried member in the rotation with the fewest requests in
    /// flight; among those, the fastest to answer lately, where members
    /// under four times the fastest's time count as equal and take turns (a
    /// member not measured yet counts as fastest, so it gets measured). One
    /// pick in eight ignores latency, so that a member passed over after a
    /// slow spell is measured again soon.
    /// Members out of the rotation are left to the background probe,
    /// unless every member is out: then they are tried as a last resort.
    fn pick(&self, members: &[Arc<HaMember>], tried: &[bool]) -> Option<usize> {
        let n = members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let down: Vec<bool> = members.iter().map(|m| m.is_down()).collect();
        let any_up = down.iter().any(|d| !d);
        let candidates: Vec<usize> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| !tried[i] && (!any_up || !down[i]))
            .collect();
        let explore = start % 8 == 0;
        let latency = |i: usize| {
            if explore {
                0
            } else {
                members[i].server.latency_us.load(Ordering::Relaxed)
            }
        };
        let fastest = candidates.iter().map(|&i| latency(i)).min()?.max(1);
        candidates.into_iter().min_by_key(|&i| {
            (
                members[i].in_flight.load(Ordering::SeqCst),
                latency(i) / (4 * fastest),
            )
        })
    }

    /// The member's serial, as the HA log names it (its name if the group
    /// definition does not know it).
    fn serial_of(&self, member: &HaMember) -> String {
        lock(&self.def)
            .members
            .iter()
            .find(|m| same_fingerprint(&m.fingerprint, &member.server.entry.fingerprint))
            .map_or_else(|| member.server.entry.name.clone(), |m| m.serial.to_string())
    }

    /// Takes a member out of the rotation after a connection-level failure;
    /// the background task probes it from now on.
    fn drop_member(&self, member: &HaMember) {
        {
            let mut o = lock(&member.outage);
            if o.is_some() {
                return;
            }
            *o = Some(Outage {
                attempts: 0,
                next_probe: Instant::now() + backoff(1),
                probing: false,
                joining: false,
            });
        }
        write(&member.server.conn).take();
        member.server.clear_pool();
        log::ha_event(&self.label, "dropped", &self.serial_of(member), None);
    }
}

/// Which connection to a member carries a request.
#[derive(Clone, Copy)]
enum Route {
    /// The one multiplexed connection, which holds the session objects.
    Multiplexed,
    /// A pooled blocking connection (stateless operations on token keys).
    Pooled,
}

/// One slot: a partition on a member, or an HA group's partition.
pub struct Slot {
    pub id: ck::CK_SLOT_ID,
    /// The member; for an HA slot, its first member.
    pub server: Arc<Server>,
    pub partition: String,
    pub serial: u64,
    pub info: Mutex<PartitionInfo>,
    /// For a member's slot: the HA group its partition belongs to.
    pub group: Option<[u8; 16]>,
    /// For an HA slot: the group and its members.
    pub ha: Option<HaGroup>,
    /// The application's login to this token, shared by the slot's
    /// connections to every member.
    token: Arc<Mutex<TokenLogin>>,
    /// Serializes login, logout and PIN changes of the token.
    login_change: Mutex<()>,
}

impl Slot {
    /// The role logged in to this slot's token, if any (`CKU_USER` or `CKU_SO`).
    pub fn login(&self) -> Option<u64> {
        lock(&self.token).who.as_ref().map(|(u, _)| *u)
    }

    /// The slot's connections to each of its members.
    fn links(&self) -> Vec<Arc<Server>> {
        match &self.ha {
            Some(g) => g.members().into_iter().map(|m| m.server.clone()).collect(),
            None => vec![self.server.clone()],
        }
    }

    /// The token label: the group's label for an HA slot, else the partition name.
    pub fn label(&self) -> &str {
        match &self.ha {
            Some(g) => &g.label,
            None => &self.partition,
        }
    }
}

/// A fingerprint as written in configs and group definitions, for comparison.
fn same_fingerprint(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.replace(':', "").to_ascii_lowercase();
    norm(a) == norm(b)
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
        .map(|entry| Arc::new(Server::lister(entry.clone())))
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
        write(&self.sessions).clear();
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
        if let Some(rt) = lock(&self.runtime).take() {
            // Shut down from a thread of our own: the caller may be inside
            // an async context (or an atexit handler), where tokio forbids it.
            // With no thread to be had (the process is exiting), the
            // runtime's threads are left to the exit.
            if let Ok(stopper) =
                std::thread::Builder::new().spawn(move || rt.shutdown_timeout(Duration::from_secs(2)))
            {
                let _ = stopper.join();
            }
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
        let outside_any_runtime = match tokio::runtime::Handle::try_current() {
            Ok(_) => false,
            // During thread-local destruction (a session closed from a TLS
            // destructor) tokio cannot enter the runtime on this thread:
            // hand the future to a worker instead.
            Err(e) => !e.is_thread_local_destroyed(),
        };
        if outside_any_runtime {
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

    /// The multiplexed connection to a member, connecting when there is
    /// none or it was lost, and logged in (or out) as the slot's token is.
    fn connection(&self, server: &Arc<Server>) -> Result<Arc<MemberConnection>> {
        let linked = self.linked(server)?;
        self.align(server, &linked)?;
        Ok(linked.conn.clone())
    }

    /// The multiplexed connection as it is, connecting when there is none.
    fn linked(&self, server: &Arc<Server>) -> Result<Arc<Linked>> {
        if let Some(c) = server.current() {
            return Ok(c);
        }
        let _one = lock(&server.reconnecting);
        if let Some(c) = server.current() {
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
        let linked = Arc::new(Linked {
            conn: Arc::new(conn),
            login: Mutex::default(),
        });
        *write(&server.conn) = Some(linked.clone());
        Ok(linked)
    }

    /// One request on a connection, within the request deadline.
    fn send(&self, conn: &Arc<MemberConnection>, request: Request) -> Result<Response> {
        let c = conn.clone();
        let limit = self.request_timeout() + Duration::from_secs(1);
        self.block(limit, async move { c.call(request).await.map_err(Error::from) })
    }

    /// Brings a connection's login in line with the token's: logs out a login
    /// the token no longer holds, and logs in with the token's PIN. A PIN the
    /// member refuses (changed or locked meanwhile, by another application)
    /// ends the token's login: the application is logged out, and its next
    /// request that needs the login gets `CKR_USER_NOT_LOGGED_IN`.
    fn align(&self, server: &Server, linked: &Linked) -> Result<()> {
        let mut conn = lock(&linked.login);
        for _ in 0..3 {
            let (who, generation) = {
                let t = lock(&server.token);
                (t.who.clone(), t.generation)
            };
            if conn.generation == Some(generation) {
                return Ok(());
            }
            if conn.logged_in {
                let out = Request::Logout {
                    partition: server.partition.clone(),
                };
                match self.send(&linked.conn, out) {
                    Ok(_) => {}
                    Err(e) if e.rv() == ck::CKR_USER_NOT_LOGGED_IN => {}
                    Err(e) => return Err(e),
                }
                conn.logged_in = false;
            }
            if let Some((user_type, pin)) = who {
                let login = Request::Login {
                    partition: server.partition.clone(),
                    user_type,
                    pin,
                };
                match self.send(&linked.conn, login) {
                    Ok(_) => conn.logged_in = true,
                    // The member holds a login this connection lost track
                    // of: log it out, and log in again with the PIN checked.
                    Err(e) if e.rv() == ck::CKR_USER_ALREADY_LOGGED_IN => {
                        conn.logged_in = true;
                        continue;
                    }
                    Err(e) if pin_refused(&e) => {
                        log::warn(&format!(
                            "{}: logging in again to partition '{}' failed ({}); the application is logged out",
                            server.entry.name,
                            server.partition,
                            describe(&e)
                        ));
                        let mut t = lock(&server.token);
                        if t.generation == generation {
                            t.change(None);
                        }
                        conn.generation = Some(t.generation);
                        return rv(ck::CKR_USER_NOT_LOGGED_IN);
                    }
                    Err(e) => return Err(e),
                }
            }
            conn.generation = Some(generation);
        }
        rv(ck::CKR_DEVICE_ERROR)
    }

    /// Checks a login's PIN on one member, on a connection that holds no
    /// login, and on success makes it the token's login. A member that says
    /// the connection is logged in already is logged out and asked again:
    /// its word never stands in for a PIN check.
    fn login_on(&self, server: &Arc<Server>, user_type: u64, pin: &Secret) -> Result<()> {
        let linked = self.linked(server)?;
        let mut conn = lock(&linked.login);
        let out = || Request::Logout {
            partition: server.partition.clone(),
        };
        if conn.logged_in {
            match self.send(&linked.conn, out()) {
                Ok(_) => {}
                Err(e) if e.rv() == ck::CKR_USER_NOT_LOGGED_IN => {}
                Err(e) => return Err(e),
            }
            conn.logged_in = false;
        }
        let login = Request::Login {
            partition: server.partition.clone(),
            user_type,
            pin: pin.clone(),
        };
        let mut answer = self.send(&linked.conn, login.clone());
        if matches!(&answer, Err(e) if e.rv() == ck::CKR_USER_ALREADY_LOGGED_IN) {
            match self.send(&linked.conn, out()) {
                Ok(_) => {}
                Err(e) if e.rv() == ck::CKR_USER_NOT_LOGGED_IN => {}
                Err(e) => return Err(e),
            }
            answer = self.send(&linked.conn, login);
        }
        match answer {
            Ok(Response::Done) => {}
            Ok(_) => return rv(ck::CKR_DEVICE_ERROR),
            Err(e) if e.rv() == ck::CKR_USER_ALREADY_LOGGED_IN => return rv(ck::CKR_DEVICE_ERROR),
            Err(e) => return Err(e),
        }
        let generation = lock(&server.token).change(Some((user_type, pin.clone())));
        *conn = ConnLogin {
            generation: Some(generation),
            logged_in: true,
        };
        Ok(())
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
            let started = Instant::now();
            let answer = self.block(limit, async move { c.call(req).await.map_err(Error::from) });
            if matches!(&answer, Ok(_) | Err(Error::Client(ClientError::Remote(_)))) {
                server.record_latency(started.elapsed());
            }
            match answer {
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

    /// Sends one request for a slot: to its member, or for an HA slot to
    /// the least busy member, failing over to the others.
    pub fn call(&self, slot: &Slot, request: Request) -> Result<Response> {
        match &slot.ha {
            None => self.call_server(&slot.server, request),
            Some(g) => self.call_group(g, request, Route::Multiplexed),
        }
    }

    /// Like [`Module::call`], for an operation that needs no state on the
    /// member beyond the login: a single-part sign, verify, encrypt, decrypt
    /// or digest with a token key. It runs on a pooled blocking connection,
    /// driven by the calling thread (see `hahsm_client::blocking`).
    pub fn call_stateless(&self, slot: &Slot, request: Request) -> Result<Response> {
        match &slot.ha {
            None => self.call_pooled(&slot.server, request),
            Some(g) => self.call_group(g, request, Route::Pooled),
        }
    }

    /// Sends a stateless request on a pooled connection to one member. An
    /// idle connection the member has closed meanwhile (idle timeout,
    /// restart) fails at once; the request is then sent once more on a new one.
    fn call_pooled(&self, server: &Arc<Server>, request: Request) -> Result<Response> {
        let mut retried = false;
        loop {
            let Some((epoch, mut conn, reused)) = self.check_out(server)? else {
                return self.call_server(server, request);
            };
            let started = Instant::now();
            let answer = conn.call(request.clone(), self.request_timeout());
            if matches!(&answer, Ok(_) | Err(ClientError::Remote(_))) {
                server.record_latency(started.elapsed());
            }
            match answer {
                Ok(r) => {
                    server.check_in(epoch, conn);
                    return Ok(r);
                }
                Err(e @ ClientError::Remote(_)) => {
                    server.check_in(epoch, conn);
                    return Err(e.into());
                }
                Err(ClientError::Disconnected { .. }) if reused && !retried => {
                    server.discard(conn);
                    retried = true;
                }
                Err(e) => {
                    server.discard(conn);
                    return Err(e.into());
                }
            }
        }
    }

    /// An idle pooled connection logged in as the token is now, or a new
    /// one; `None` when the member already has `POOL_MAX` of them or the
    /// login could not be made on it (the caller then uses the multiplexed
    /// connection, which deals with that). The flag says whether the
    /// connection was reused.
    fn check_out(&self, server: &Arc<Server>) -> Result<Option<(u64, BlockingConnection, bool)>> {
        let current = server.generation();
        loop {
            let Some((generation, conn)) = lock(&server.pool).pop() else {
                break;
            };
            if generation == current {
                return Ok(Some((generation, conn, true)));
            }
            server.discard(conn);
        }
        if server.pooled.fetch_add(1, Ordering::SeqCst) >= POOL_MAX {
            server.pooled.fetch_sub(1, Ordering::SeqCst);
            return Ok(None);
        }
        let (who, generation) = {
            let t = lock(&server.token);
            (t.who.clone(), t.generation)
        };
        let (config, entry) = (self.config.clone(), server.entry.clone());
        let limit = self.config.connect_timeout() + self.config.handshake_timeout() + Duration::from_secs(1);
        let opened = self.block(limit, async move {
            BlockingConnection::connect(&config, &entry)
                .await
                .map_err(Error::from)
        });
        let mut conn = match opened {
            Ok(c) => c,
            Err(e) => {
                server.pooled.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        if let Some((user_type, pin)) = who {
            let login = Request::Login {
                partition: server.partition.clone(),
                user_type,
                pin,
            };
            match conn.call(login, self.request_timeout()) {
                Ok(_) => {}
                Err(ClientError::Remote(_)) => {
                    server.discard(conn);
                    return Ok(None);
                }
                Err(e) => {
                    server.discard(conn);
                    return Err(e.into());
                }
            }
        }
        Ok(Some((generation, conn, false)))
    }

    /// Sends a request to the member with the fewest requests in flight. A
    /// connection-level failure sends the same request (a write keeps its
    /// operation id) at once to another member, until one answers or every
    /// member has failed.
    fn call_group(&self, g: &HaGroup, request: Request, route: Route) -> Result<Response> {
        if let Some(made) = session_bound(g, &request) {
            return self.call_session_home(g, request, made);
        }
        self.over_members(g, &request, |member| match route {
            Route::Multiplexed => self.call_server(&member.server, request.clone()),
            Route::Pooled => self.call_pooled(&member.server, request.clone()),
        })
    }

    /// Makes `attempt` on the least busy member, and on another after a
    /// connection-level failure or a refusal for want of a quorum, until
    /// one answers or every member has failed.
    fn over_members(
        &self,
        g: &HaGroup,
        request: &Request,
        attempt: impl Fn(&Arc<HaMember>) -> Result<Response>,
    ) -> Result<Response> {
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
                Err(Error::Client(ClientError::Remote(ref w)))
                    if w.code == hahsm_token::error::CKR_NO_QUORUM =>
                {
                    *lock(&member.quorum_refused_at) = Some(Instant::now());
                    log::log(
                        "info",
                        &format!(
                            "{}: {} refused for want of a quorum; trying another member",
                            member.server.entry.name,
                            request.name()
                        ),
                    );
                    last = Some(Error::Rv(ck::CKR_DEVICE_ERROR));
                }
                // The member does not know an object this application holds a
                // handle for: it has not applied the write that made (or
                // renamed) it yet, e.g. it was slow when that write was
                // acknowledged. Another member has; the lagging one stays in
                // the rotation.
                Err(e) if object_unknown(&e) => {
                    log::log(
                        "info",
                        &format!(
                            "{}: {} found no such object ({}); trying another member",
                            member.server.entry.name,
                            request.name(),
                            describe(&e)
                        ),
                    );
                    last = Some(e);
                }
                Err(e) if e.rv() == ck::CKR_DEVICE_ERROR => {
                    log::warn(&format!(
                        "{}: {} failed on the member: {}",
                        member.server.entry.name,
                        request.name(),
                        describe(&e)
                    ));
                    return Err(e);
                }
                other => return other,
            }
        }
        let e = last.unwrap_or(Error::Rv(ck::CKR_DEVICE_ERROR));
        if !object_unknown(&e) {
            log::warn(&format!(
                "HA group {}: {} failed on every member it could try ({})",
                g.label,
                request.name(),
                describe(&e)
            ));
        }
        Err(e)
    }

    /// Sends a request that makes or uses a session object to the slot's
    /// session home, choosing the least busy member as the home when there
    /// is none. There is no failover: the session objects die with their
    /// member, and the next request that needs them gets
    /// `CKR_OBJECT_HANDLE_INVALID` (or `CKR_KEY_HANDLE_INVALID`) from the new home.
    fn call_session_home(&self, g: &HaGroup, request: Request, made: Vec<bool>) -> Result<Response> {
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
                    log::log(
                        "info",
                        &format!(
                            "HA group {}: session objects live on member {}",
                            g.label,
                            g.serial_of(&members[i])
                        ),
                    );
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
            self.call_server(&home.server, request)
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
            Ok(Response::Object(o)) if made.first() == Some(&true) => {
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
        match &slot.ha {
            None => self.login_on(&slot.server, user_type, &pin),
            Some(g) => self
                .over_members(g, &request, |member| {
                    self.login_on(&member.server, user_type, &pin)
                        .map(|()| Response::Done)
                })
                .map(|_| ()),
        }
    }

    /// `C_Logout`: ends the token's login for every session, and logs out
    /// every connection of the slot now (pooled ones are closed). The PIN is
    /// dropped (zeroized).
    pub fn logout(&self, slot: &Slot) -> Result<()> {
        let _change = lock(&slot.login_change);
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
                if self.align(&server, &linked).is_err() {
                    // A connection that cannot be logged out is closed: the
                    // member ends its logins with it.
                    write(&server.conn).take();
                }
            }
        }
        Ok(())
    }

    /// Ends session objects of a session that closed, on the member and
    /// connection that hold them. A member that cannot be reached holds
    /// them no more either: they die with its connection.
    pub fn release_session_objects(&self, slot: &Slot, objects: Vec<Ouid>) {
        if objects.is_empty() {
            return;
        }
        let home = match &slot.ha {
            None => Some(slot.server.clone()),
            Some(g) => {
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
        if let Err(e) = self.send(&linked.conn, release) {
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

    // ------------------------------------------------------------- slots --

    /// Lists the partitions of every member not yet listed, adding their
    /// slots, and one HA slot per HA group those partitions belong to.
    /// Slot ids come from the partition (or group) serial, so they survive
    /// restarts of the application and of the member.
    pub fn refresh_slots(&self) {
        for server in &self.servers {
            let known = read(&self.slots)
                .iter()
                .any(|s| s.ha.is_none() && s.server.entry.name == server.entry.name);
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
            let parts: Vec<(PartitionInfo, Option<GroupDef>)> = parts
                .into_iter()
                .map(|info| {
                    let group = match self.call_server(
                        server,
                        Request::GetGroup {
                            partition: info.name.clone(),
                        },
                    ) {
                        Ok(Response::Group(g)) => g,
                        _ => None,
                    };
                    (info, group)
                })
                .collect();
            let mut slots = write(&self.slots);
            for (info, group) in parts {
                let id = free_slot_id(&slots, info.serial);
                if let Some(def) = &group {
                    join_group(&mut slots, def, server, &info);
                }
                let token: Arc<Mutex<TokenLogin>> = Arc::default();
                slots.push(Arc::new(Slot {
                    id,
                    server: Arc::new(Server::new(server.entry.clone(), &info.name, token.clone())),
                    partition: info.name.clone(),
                    serial: info.serial,
                    info: Mutex::new(info),
                    group: group.map(|g| g.id),
                    ha: None,
                    token,
                    login_change: Mutex::new(()),
                }));
            }
            // HA slots first, then the members' slots.
            slots.sort_by_key(|s| (s.ha.is_none(), s.id));
        }
        // Members the groups name that the config does not: learned from the
        // group definition, with its client address and pinned fingerprint.
        for slot in read(&self.slots).iter() {
            let Some(g) = &slot.ha else { continue };
            let def = lock(&g.def).clone();
            self.sync_members(g, &def, false);
        }
    }

    /// Makes a group's serving members those its definition names: adds the
    /// non-standby members not yet serving (the configured `Server` when the
    /// config names it, else one made from the definition's client address and
    /// pinned fingerprint) and drops the members no longer named. While the
    /// application runs (`running`), a new member enters the rotation through
    /// its first successful probe.
    fn sync_members(&self, g: &HaGroup, def: &GroupDef, running: bool) {
        let wanted: Vec<_> = def.members.iter().filter(|m| !m.standby).collect();
        if wanted.is_empty() {
            return;
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        {
            let mut members = write(&g.members);
            members.retain(|m| {
                let keep = wanted
                    .iter()
                    .any(|w| same_fingerprint(&w.fingerprint, &m.server.entry.fingerprint));
                if !keep {
                    removed.push(m.server.entry.name.clone());
                }
                keep
            });
            for gm in &wanted {
                let known = members
                    .iter()
                    .any(|m| same_fingerprint(&m.server.entry.fingerprint, &gm.fingerprint));
                if known || gm.client_address.is_empty() {
                    continue;
                }
                let entry = self
                    .servers
                    .iter()
                    .find(|s| same_fingerprint(&s.entry.fingerprint, &gm.fingerprint))
                    .map(|s| s.entry.clone())
                    .unwrap_or_else(|| ServerEntry {
                        name: format!("{}-{}", gm.hsm_label, gm.serial),
                        address: gm.client_address.clone(),
                        fingerprint: gm.fingerprint.clone(),
                    });
                let server = Arc::new(Server::new(entry, &def.partition, g.token.clone()));
                members.push(if running {
                    HaMember::joining(server)
                } else {
                    HaMember::new(server)
                });
                added.push(gm.serial);
            }
        }
        if running {
            for serial in added {
                log::log(
                    "info",
                    &format!("HA group {}: member {serial} joined; probing it", g.label),
                );
            }
        }
        for name in removed {
            log::ha_event(&g.label, "removed", &name, None);
        }
    }

    // -------------------------------------------------------- background --

    /// Starts the background task that follows each HA group while the
    /// application runs: every `REFRESH_EVERY` it reads the group definition
    /// again (from any member in the rotation) and adds or drops members;
    /// every `TICK` it probes the members out of the rotation whose probe is
    /// due. It lives on the module's runtime, so `C_Finalize` (which shuts
    /// the runtime down) ends it; it also ends once the module is gone.
    fn start_watch(self: &Arc<Self>) {
        let module = Arc::downgrade(self);
        self.handle.spawn(async move {
            let mut last_refresh = Instant::now();
            loop {
                tokio::time::sleep(TICK).await;
                let Some(m) = module.upgrade() else { return };
                if lock(&m.runtime).is_none() {
                    return;
                }
                let refresh = last_refresh.elapsed() >= REFRESH_EVERY;
                if refresh {
                    last_refresh = Instant::now();
                }
                let groups: Vec<Arc<Slot>> = read(&m.slots)
                    .iter()
                    .filter(|s| s.ha.is_some())
                    .cloned()
                    .collect();
                for slot in groups {
                    if refresh {
                        m.refresh_group(&slot).await;
                        // Halve the latency averages: a member passed over
                        // after one slow spell looks fast again before long,
                        // and is measured anew.
                        if let Some(g) = &slot.ha {
                            for member in g.members() {
                                let _ = member.server.latency_us.fetch_update(
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                    |v| Some(v / 2),
                                );
                            }
                        }
                    }
                    m.probe_due(&slot);
                }
            }
        });
    }

    /// The replication progress of the partition on a member in the rotation
    /// (other than `returning`), asked now: what a returning member must
    /// have applied before it serves again. Empty when no member answers
    /// (then there is nothing to be behind of).
    async fn serving_progress(&self, g: &HaGroup, returning: &HaMember, partition: &str) -> Vec<(u64, u64)> {
        let serving = g
            .members()
            .into_iter()
            .filter(|m| !m.is_down() && !std::ptr::eq(m.as_ref(), returning));
        for member in serving {
            let ask = Request::Progress {
                partition: partition.to_string(),
            };
            if let Ok(Response::Progress(progress)) = self.ask(&member.server, ask).await {
                return progress;
            }
        }
        Vec::new()
    }

    /// Sends one request from the background task: on the member's
    /// connection if it has one, else on a fresh one that is not kept.
    async fn ask(&self, server: &Server, request: Request) -> std::result::Result<Response, String> {
        let conn = match server.current() {
            Some(c) => c.conn.clone(),
            None => Arc::new(connect_bounded(&self.config, &server.entry).await?),
        };
        conn.call(request).await.map_err(|e| e.to_string())
    }

    /// Reads an HA group's definition again from the first member in the
    /// rotation that answers, and follows a newer definition's membership.
    async fn refresh_group(&self, slot: &Slot) {
        let Some(g) = &slot.ha else { return };
        for member in g.members().into_iter().filter(|m| !m.is_down()) {
            let get = Request::GetGroup {
                partition: slot.partition.clone(),
            };
            let def = match self.ask(&member.server, get).await {
                Ok(Response::Group(Some(def))) if def.id == g.id => def,
                _ => continue,
            };
            let newer = {
                let mut known = lock(&g.def);
                if def.epoch >= known.epoch {
                    *known = def.clone();
                    true
                } else {
                    false
                }
            };
            if newer {
                self.sync_members(g, &def, true);
            }
            return;
        }
    }

    /// Starts a probe of each member out of the rotation whose probe is due.
    fn probe_due(self: &Arc<Self>, slot: &Arc<Slot>) {
        let Some(g) = &slot.ha else { return };
        let now = Instant::now();
        for member in g.members() {
            let due = match lock(&member.outage).as_mut() {
                Some(o) if !o.probing && o.next_probe <= now => {
                    o.probing = true;
                    o.attempts += 1;
                    Some((o.attempts, o.joining))
                }
                _ => None,
            };
            let Some((attempt, joining)) = due else { continue };
            let (m, slot) = (self.clone(), slot.clone());
            self.handle.spawn(async move {
                let Some(g) = &slot.ha else { return };
                let reference = m.serving_progress(g, &member, &slot.partition).await;
                let result = probe(&m.config, &member.server.entry, &slot.partition, g.id, &reference).await;
                let serial = g.serial_of(&member);
                match result {
                    Ok(()) => {
                        lock(&member.outage).take();
                        // The next request connects afresh and logs in again.
                        write(&member.server.conn).take();
                        if joining {
                            log::ha_event(&g.label, "added", &serial, None);
                        } else {
                            log::ha_event(&g.label, "recovered", &serial, Some(attempt));
                        }
                    }
                    Err(why) => {
                        if let Some(o) = lock(&member.outage).as_mut() {
                            o.probing = false;
                            o.next_probe = Instant::now() + backoff(attempt);
                        }
                        log::log(
                            "info",
                            &format!("{}: probe #{attempt} failed: {why}", member.server.entry.name),
                        );
                        if !joining {
                            log::ha_event(&g.label, "recovery-failed", &serial, Some(attempt));
                        }
                    }
                }
            });
        }
    }

    /// Whether a slot is listed: with `ha_only`, only HA slots are.
    fn visible(&self, slot: &Slot) -> bool {
        !self.config.ha_only || slot.ha.is_some()
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

/// A slot id from a serial, not yet taken.
fn free_slot_id(slots: &[Arc<Slot>], serial: u64) -> ck::CK_SLOT_ID {
    let mut id = (serial & 0x7fff_ffff) as ck::CK_SLOT_ID;
    while slots.iter().any(|s| s.id == id) {
        id = (id + 1) & 0x7fff_ffff;
    }
    id
}

/// Adds a member to its group's HA slot, making the slot on first sight.
fn join_group(slots: &mut Vec<Arc<Slot>>, def: &GroupDef, server: &Arc<Server>, info: &PartitionInfo) {
    if let Some(g) = slots
        .iter()
        .filter_map(|s| s.ha.as_ref())
        .find(|g| g.id == def.id)
    {
        let mut members = write(&g.members);
        if !members
            .iter()
            .any(|m| same_fingerprint(&m.server.entry.fingerprint, &server.entry.fingerprint))
        {
            let link = Server::new(server.entry.clone(), &def.partition, g.token.clone());
            members.push(HaMember::new(Arc::new(link)));
        }
        let mut known = lock(&g.def);
        if def.epoch > known.epoch {
            *known = def.clone();
        }
        return;
    }
    let id = free_slot_id(slots, def.serial);
    let token: Arc<Mutex<TokenLogin>> = Arc::default();
    let first = Arc::new(Server::new(server.entry.clone(), &def.partition, token.clone()));
    slots.push(Arc::new(Slot {
        id,
        server: first.clone(),
        partition: def.partition.clone(),
        serial: def.serial,
        info: Mutex::new(PartitionInfo {
            serial: def.serial,
            ..info.clone()
        }),
        group: None,
        ha: Some(HaGroup {
            id: def.id,
            label: def.label.clone(),
            def: Mutex::new(def.clone()),
            members: RwLock::new(vec![HaMember::new(first)]),
            token: token.clone(),
            next: AtomicUsize::new(0),
            session_home: Mutex::default(),
            session_objects: Mutex::default(),
        }),
        token,
        login_change: Mutex::new(()),
    }));
}

/// A fresh connection to a member, within the connect and handshake deadlines.
async fn connect_bounded(
    config: &ClientConfig,
    entry: &ServerEntry,
) -> std::result::Result<MemberConnection, String> {
    let limit = config.connect_timeout() + config.handshake_timeout();
    match tokio::time::timeout(limit, MemberConnection::connect(config, entry)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{}: no connection within {limit:?}", entry.name)),
    }
}

/// Probes a member out of the rotation over a fresh connection: it must
/// answer a ping, still hold the group's partition in the group, have that
/// partition activated, and have applied every operation a serving member
/// had applied when the probe began (`reference`, per origin), so that it
/// serves no stale object and misses no key the application made.
async fn probe(
    config: &ClientConfig,
    entry: &ServerEntry,
    partition: &str,
    group: [u8; 16],
    reference: &[(u64, u64)],
) -> std::result::Result<(), String> {
    let conn = connect_bounded(config, entry).await?;
    let call = |request| {
        let conn = &conn;
        async move { conn.call(request).await.map_err(|e| e.to_string()) }
    };
    match call(Request::Ping).await? {
        Response::Pong => {}
        other => return Err(format!("unexpected answer to a ping: {other:?}")),
    }
    match call(Request::GetGroup {
        partition: partition.to_string(),
    })
    .await?
    {
        Response::Group(Some(def)) if def.id == group => {}
        _ => return Err("the partition is not in the group".to_string()),
    }
    let Response::Partitions(parts) = call(Request::ListPartitions).await? else {
        return Err("unexpected answer to list-partitions".to_string());
    };
    match parts.iter().find(|p| p.name == partition) {
        Some(p) if !p.activated => return Err("the partition is not activated".to_string()),
        Some(_) => {}
        None => return Err("the partition is not assigned to this client".to_string()),
    }
    let Response::Progress(progress) = call(Request::Progress {
        partition: partition.to_string(),
    })
    .await?
    else {
        return Err("unexpected answer to progress".to_string());
    };
    let applied = |origin: u64| {
        progress
            .iter()
            .find(|(o, _)| *o == origin)
            .map_or(0, |(_, seq)| *seq)
    };
    let behind = reference
        .iter()
        .filter(|(origin, seq)| applied(*origin) < *seq)
        .map(|(origin, seq)| seq - applied(*origin))
        .sum::<u64>();
    if behind > 0 {
        return Err(format!(
            "catching up: {behind} operations behind a serving member"
        ));
    }
    Ok(())
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
        | Request::DeriveKey { template, .. } => vec![session(template)],
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
        _ => Vec::new(),
    };
    let searching = matches!(request, Request::FindObjects { .. }) && !known.is_empty();
    let bound = made.iter().any(|s| *s) || named.iter().any(|o| known.contains(o)) || searching;
    bound.then_some(made)
}

/// An error as the log shows it: the member's message or the connection's fault.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Client(c) => c.to_string(),
        Error::Token(t) => t.to_string(),
        other => format!("CKR {:#x}", other.rv()),
    }
}
