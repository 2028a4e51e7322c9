//! The module's connections to members, per slot: a multiplexed
//! connection and a pool of blocking ones for each (slot, member), each
//! logged in as the slot's token is (`TokenLogin`), and the calls over them
//! with their reconnect-once rule. It knows members, not HA groups: choosing
//! a member is `ha`'s job.
use crate::error::{describe, rv, Error, Result};
use crate::log;
use crate::runtime::Runtime;
use crate::sync::{lock, read, write};
use hahsm_client::{BlockingConnection, ClientConfig, ClientError, MemberConnection, ServerEntry};
use hahsm_proto::client::{Request, Response};
use hahsm_proto::Secret;
use hahsm_token::ck;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The login state of one token (slot) for this application: PKCS#11 logins
/// are per token and per application, whichever session made them.
#[derive(Default)]
pub struct TokenLogin {
    /// Who is logged in, with the PIN that logs the slot's other connections
    /// in. The PIN stays in a zeroizing `Secret`.
    pub(crate) who: Option<(u64, Secret)>,
    /// Bumped by every login, logout and end of a login: a connection
    /// logged in under an older generation is logged out (or in) again
    /// before it carries a request.
    pub(crate) generation: u64,
}

impl TokenLogin {
    pub(crate) fn change(&mut self, who: Option<(u64, Secret)>) -> u64 {
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
pub struct Linked {
    pub(crate) conn: Arc<MemberConnection>,
    login: Mutex<ConnLogin>,
}

/// One member as one slot reaches it: its connections and what they are
/// logged in as. Every slot has its own, so that a login to one token (an HA
/// slot, or a member's slot) never answers for another.
pub struct Server {
    pub entry: ServerEntry,
    /// The slot's partition (empty for the connections that list partitions).
    pub(crate) partition: String,
    /// The slot's login, shared by the slot's members.
    pub(crate) token: Arc<Mutex<TokenLogin>>,
    pub(crate) conn: RwLock<Option<Arc<Linked>>>,
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
    pub(crate) latency_us: AtomicU64,
}

/// The most blocking connections the module keeps to one member; threads
/// beyond that share the multiplexed connection.
const POOL_MAX: usize = 16;

impl Server {
    pub(crate) fn new(entry: ServerEntry, partition: &str, token: Arc<Mutex<TokenLogin>>) -> Server {
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
    pub(crate) fn lister(entry: ServerEntry) -> Server {
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

    pub(crate) fn generation(&self) -> u64 {
        lock(&self.token).generation
    }

    /// Closes every idle pooled connection (the member failed, the login
    /// changed, or the module is finalized); connections in use are closed
    /// when their call returns.
    pub(crate) fn clear_pool(&self) {
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

    pub(crate) fn current(&self) -> Option<Arc<Linked>> {
        read(&self.conn).as_ref().filter(|c| !c.conn.is_closed()).cloned()
    }
}

/// Member answers that say the PIN a login carried no longer opens the token.
pub(crate) fn pin_refused(e: &Error) -> bool {
    matches!(
        e.rv(),
        ck::CKR_PIN_INCORRECT | ck::CKR_PIN_LOCKED | ck::CKR_PIN_EXPIRED | ck::CKR_USER_PIN_NOT_INITIALIZED
    )
}

/// What reaching a member takes: the runtime that carries the I/O and the
/// client config (addresses, certificates, deadlines).
pub struct Net {
    pub runtime: Runtime,
    pub config: ClientConfig,
}

impl Net {
    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout()
    }

    /// See `Runtime::block`.
    pub fn block<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.runtime.block(limit, fut)
    }

    /// The multiplexed connection to a member, connecting when there is
    /// none or it was lost, and logged in (or out) as the slot's token is.
    pub fn connection(&self, server: &Arc<Server>) -> Result<Arc<MemberConnection>> {
        let linked = self.linked(server)?;
        self.align(server, &linked)?;
        Ok(linked.conn.clone())
    }

    /// The multiplexed connection as it is, connecting when there is none.
    pub fn linked(&self, server: &Arc<Server>) -> Result<Arc<Linked>> {
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
    pub fn send(&self, conn: &Arc<MemberConnection>, request: Request) -> Result<Response> {
        let c = conn.clone();
        let limit = self.request_timeout() + Duration::from_secs(1);
        self.runtime
            .block(limit, async move { c.call(request).await.map_err(Error::from) })
    }

    /// Brings a connection's login in line with the token's: logs out a login
    /// the token no longer holds, and logs in with the token's PIN. A PIN the
    /// member refuses (changed or locked meanwhile, by another application)
    /// ends the token's login: the application is logged out, and its next
    /// request that needs the login gets `CKR_USER_NOT_LOGGED_IN`.
    pub fn align(&self, server: &Server, linked: &Linked) -> Result<()> {
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
    pub fn login_on(&self, server: &Arc<Server>, user_type: u64, pin: &Secret) -> Result<()> {
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
            let answer = self
                .runtime
                .block(limit, async move { c.call(req).await.map_err(Error::from) });
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

    /// Sends a stateless request on a pooled connection to one member. An
    /// idle connection the member has closed meanwhile (idle timeout,
    /// restart) fails at once; the request is then sent once more on a new one.
    pub fn call_pooled(&self, server: &Arc<Server>, request: Request) -> Result<Response> {
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
        let opened = self.runtime.block(limit, async move {
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
}
