//! HA groups on the member: dual-control keys, group definitions, the join
//! handshake, the peer listener, and the replicator that keeps every member's
//! copy of a partition converged with no client involved.
//!
//! The merge rules are the pure engine's (`hahsm_replica`); this module moves
//! operations between members and decides when:
//! - after every local write, to every reachable peer, in parallel, waiting at
//!   most the replication timeout (the write concern);
//! - on every heartbeat (every second), in both directions, for whatever the
//!   peers' version vectors say they lack (anti-entropy), which is also how a
//!   member that was away catches up by itself.
//!
//! See `docs/replication.md` for the protocol as a specification.
use crate::alerts::{Alert, AlertKind, AlertStatus};
use crate::appliance::{AdminError, AdminResult, Appliance};
use crate::partition::ActivePartition;
use hahsm_crypto::{self as crypto, SealKey, SecretBytes};
use hahsm_link::{ClientAuthorizer, Fingerprint, LinkError};
use hahsm_proto::admin::{GroupMemberStatus, GroupStatus};
use hahsm_proto::peer::{
    GroupDef, GroupMember, PeerRequest, PeerRequestFrame, PeerResponse, PeerResponseFrame, PolicySnapshot,
    Proof, ReplicaState, WriteConcern,
};
use hahsm_proto::{decode, encode, WireError};
use hahsm_replica::VersionVector;
use hahsm_token::oplog::{Op, OpBody};
use hahsm_token::{ck, policy, TokenError, TokenResult};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, warn};

/// How often members heartbeat each other.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
/// A member silent for this long is declared down.
pub const DOWN_AFTER: Duration = Duration::from_millis(2000);
/// While a peer that is not yet down fails to answer, it is probed this
/// often instead of every heartbeat interval, so that it is declared down
/// (and the alert raised) close to `DOWN_AFTER` after it went silent, not up
/// to a heartbeat interval later.
const SUSPECT_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Most operations one pull or push carries.
const BATCH: u32 = 2000;

// ----- keys and proofs -----

/// The key derived from the cloning-domain secret.
pub fn domain_key(domain_secret: &[u8]) -> TokenResult<SecretBytes> {
    crypto::hkdf_sha256(&[domain_secret], b"hahsm/domain-key/v1", b"hahsm/domain-key", 32)
}

/// The key derived from the partition-owner secret, bound to the partition's
/// name (the same on every member of a group).
fn owner_key(owner_secret: &[u8], partition: &str) -> TokenResult<SecretBytes> {
    crypto::hkdf_sha256(&[owner_secret], b"hahsm/owner-key/v1", partition.as_bytes(), 32)
}

/// The two derived keys a partition needs to replicate, sealed under its PMK.
#[derive(Serialize, Deserialize)]
struct ReplicationKeys {
    domain: Vec<u8>,
    owner: Vec<u8>,
}

impl Drop for ReplicationKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.domain.zeroize();
        self.owner.zeroize();
    }
}

fn keys_meta(partition: &str) -> String {
    format!("replication-keys/{partition}")
}

fn group_meta(partition: &str) -> String {
    format!("group/{partition}")
}

fn aad(label: &[u8], serial: u64) -> Vec<u8> {
    let mut a = label.to_vec();
    a.extend_from_slice(&serial.to_le_bytes());
    a
}

/// The group's replication key: it needs **both** secrets (dual control), and
/// is bound to the group and the partition.
fn replication_key(domain: &[u8], owner: &[u8], group: &GroupDef) -> TokenResult<SealKey> {
    let mut info = b"hahsm/replication/v1/".to_vec();
    info.extend_from_slice(group.partition.as_bytes());
    SealKey::new(crypto::hkdf_sha256(&[domain, owner], &group.id, &info, 32)?)
}

/// What a join proof covers: the role, the group, both nonces and both
/// certificates, so a proof made for one connection is worthless on another.
fn transcript(
    role: &[u8],
    group: &GroupDef,
    initiator_nonce: &[u8; 32],
    candidate_nonce: &[u8; 32],
    initiator: &Fingerprint,
    candidate: &Fingerprint,
) -> Vec<u8> {
    let mut t = b"hahsm/join/v1/".to_vec();
    t.extend_from_slice(role);
    t.extend_from_slice(&group.id);
    t.extend_from_slice(group.partition.as_bytes());
    t.extend_from_slice(initiator_nonce);
    t.extend_from_slice(candidate_nonce);
    t.extend_from_slice(&initiator.0);
    t.extend_from_slice(&candidate.0);
    t
}

fn prove(keys: &ReplicationKeys, transcript: &[u8]) -> Proof {
    Proof {
        domain: crypto::hmac_sha256(&keys.domain, transcript),
        owner: crypto::hmac_sha256(&keys.owner, transcript),
    }
}

/// Compares a peer's proof with ours; says which secret differs.
fn check_proof(ours: &Proof, theirs: &Proof, whose: &str) -> Result<(), String> {
    let domain_ok = crypto::ct_eq(&ours.domain, &theirs.domain);
    let owner_ok = crypto::ct_eq(&ours.owner, &theirs.owner);
    match (domain_ok, owner_ok) {
        (true, true) => Ok(()),
        (false, true) => Err(format!("{whose} holds a different cloning-domain secret")),
        (true, false) => Err(format!("{whose} holds a different partition-owner secret")),
        (false, false) => Err(format!(
            "{whose} holds a different cloning-domain secret and a different partition-owner secret"
        )),
    }
}

fn random32() -> TokenResult<[u8; 32]> {
    let b = crypto::random(32)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&b);
    Ok(out)
}

fn wire_aad(group: &GroupDef, ouid: &hahsm_token::Ouid) -> Vec<u8> {
    let mut a = b"hahsm/wire-secret/v1".to_vec();
    a.extend_from_slice(&group.id);
    a.extend_from_slice(ouid.as_bytes());
    a
}

// ----- the HA log -----

/// The HA event log: the report's table 5.2 lines in `ha.log`, and the same
/// events as JSON lines in `ha.jsonl`. A dropped or recovered member also
/// raises its alert here, the moment the failure detector decides.
pub struct HaLog {
    dir: std::path::PathBuf,
    monitor: Arc<crate::monitor::Monitor>,
}

impl HaLog {
    fn event(&self, group: &str, event: &str, member: u64, attempt: Option<u32>) {
        let now = chrono_like_time();
        let pid = std::process::id();
        let line = match (event, attempt) {
            ("dropped", _) => format!("{now} [{pid}] HA group: {group} has dropped member: {member}"),
            ("recovery-failed", Some(n)) => {
                format!("{now} [{pid}] HA group: {group} recovery attempt #{n} failed for member: {member}")
            }
            ("recovered", Some(n)) => {
                format!(
                    "{now} [{pid}] HA group: {group} recovery attempt #{n} succeeded for member: {member}"
                )
            }
            (other, _) => format!("{now} [{pid}] HA group: {group} {other} member: {member}"),
        };
        warn!("{line}");
        let kind = match event {
            "dropped" => Some(AlertKind::MemberDown),
            "recovered" => Some(AlertKind::MemberRecovered),
            _ => None,
        };
        if let Some(kind) = kind {
            let summary = line
                .split_once("HA group: ")
                .map_or(line.as_str(), |(_, rest)| rest);
            self.monitor.raise(
                Alert::new(kind, AlertStatus::Firing, format!("HA group: {summary}"))
                    .group(group)
                    .member(member),
            );
        }
        let json = serde_json::json!({
            "time_ms": crate::now_ms(), "group": group, "event": event, "member": member, "attempt": attempt,
        });
        for (name, text) in [("ha.log", line), ("ha.jsonl", json.to_string())] {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
            {
                let _ = writeln!(f, "{text}");
            }
        }
    }
}

/// HH:MM:SS in UTC, as the report's log lines start.
fn chrono_like_time() -> String {
    let secs = crate::now_ms() / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

// ----- peers -----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerHealth {
    /// Heard from within the failure-detection window, and caught up.
    Alive,
    /// Alive, but missing operations this member has (or missed a write deadline).
    Lagging,
    Down,
}

#[derive(Debug, Clone)]
struct PeerStatus {
    health: PeerHealth,
    last_seen: Option<Instant>,
    state: ReplicaState,
    recovery_attempts: u32,
    /// A write deadline was missed; cleared when the peer is caught up.
    missed_write: bool,
    /// The last call could not reach it (connect, I/O or time-out); cleared
    /// by its next answer. The quorum check counts it unreachable meanwhile,
    /// so a member cut off from its peers refuses writes before making them.
    link_failed: bool,
}

impl Default for PeerStatus {
    fn default() -> Self {
        // A peer is presumed alive until it fails to answer: a member that
        // starts must not log every peer as dropped.
        PeerStatus {
            health: PeerHealth::Alive,
            last_seen: None,
            state: ReplicaState::default(),
            recovery_attempts: 0,
            missed_write: false,
            link_failed: false,
        }
    }
}

/// A connection to one peer, which it pins: one request at a time, each
/// under a deadline.
struct PeerConn {
    fingerprint: String,
    tls: Arc<rustls::ClientConfig>,
    stream: AsyncMutex<Option<hahsm_link::ClientStream>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Writes take turns pushing to a peer; a write whose operations an
    /// earlier push already delivered has nothing left to send.
    push_turn: AsyncMutex<()>,
}

/// One partition's membership of an HA group, running.
pub struct Group {
    pub def: RwLock<GroupDef>,
    keys: ReplicationKeys,
    repl_key: SealKey,
    partition: Weak<ActivePartition>,
    me: u64,
    peers: Mutex<HashMap<u64, PeerStatus>>,
    conns: Mutex<HashMap<u64, Arc<PeerConn>>>,
    identity: hahsm_link::Identity,
    routes: std::collections::BTreeMap<String, String>,
    ha_log: HaLog,
    stop: tokio::sync::watch::Sender<bool>,
    wake: tokio::sync::Notify,
    /// This member's HSM and partition policies, as heartbeats carry them;
    /// kept current by the monitor's watch loop.
    policies: RwLock<PolicySnapshot>,
    monitor: Arc<crate::monitor::Monitor>,
    /// Since when each member (by serial) has lacked operations.
    behind_since: Mutex<HashMap<u64, Instant>>,
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn peer_error(msg: impl Into<String>) -> WireError {
    WireError {
        code: ck::CKR_DEVICE_ERROR,
        message: msg.into(),
    }
}

impl Group {
    /// The group definition as this member holds it.
    pub fn definition(&self) -> GroupDef {
        self.def()
    }

    fn def(&self) -> GroupDef {
        self.def.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn state(&self, p: &ActivePartition) -> ReplicaState {
        ReplicaState {
            serial: self.me,
            version_vector: p.version_vector().0.into_iter().collect(),
            live_objects: p.object_count() as u64,
            digest: p.content_digest(),
            policies: self.policies.read().unwrap_or_else(|p| p.into_inner()).clone(),
            metrics: self.monitor.metrics_url().unwrap_or_default(),
        }
    }

    /// Operations from the local log, their secrets re-sealed for the wire.
    fn outgoing(&self, p: &ActivePartition, origin: u64, after: u64, limit: u32) -> TokenResult<Vec<Op>> {
        let def = self.def();
        let key = &self.repl_key;
        let mut ops = p.ops_from(origin, after, limit as usize)?;
        for op in &mut ops {
            if let OpBody::Create { objects } = &mut op.body {
                for o in objects {
                    if let Some(sealed) = o.sealed_secret.take() {
                        let secret = p.open_secret(&o.ouid, &sealed)?;
                        o.sealed_secret = Some(key.seal(&wire_aad(&def, &o.ouid), secret.expose())?);
                    }
                }
            }
        }
        Ok(ops)
    }

    /// Applies a batch of operations from a peer, with one sync to disk;
    /// operations past a gap are left for a later pull.
    async fn incoming(&self, p: &ActivePartition, mut ops: Vec<Op>) -> TokenResult<()> {
        let def = self.def();
        let key = &self.repl_key;
        for op in &mut ops {
            if let OpBody::Create { objects } = &mut op.body {
                for o in objects {
                    if let Some(sealed) = o.sealed_secret.take() {
                        let secret = key.open(&wire_aad(&def, &o.ouid), &sealed).map_err(|_| {
                            TokenError::DeviceError(
                                "a replicated secret does not open under the group's replication key".into(),
                            )
                        })?;
                        o.sealed_secret = Some(p.seal_secret(&o.ouid, secret.expose())?);
                    }
                }
            }
        }
        p.apply_remote(ops).await?;
        Ok(())
    }

    fn set_peer(&self, serial: u64, f: impl FnOnce(&mut PeerStatus)) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        f(peers.entry(serial).or_default());
    }

    fn peer(&self, serial: u64) -> PeerStatus {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&serial)
            .cloned()
            .unwrap_or_default()
    }

    /// Where to reach a member: its route in this member's config, or the
    /// address it advertises.
    fn address_of(&self, member: &GroupMember) -> String {
        self.routes
            .get(&member.serial.to_string())
            .cloned()
            .unwrap_or_else(|| member.peer_address.clone())
    }

    fn conn(&self, member: &GroupMember) -> Result<Arc<PeerConn>, WireError> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conns.get(&member.serial) {
            if c.fingerprint == member.fingerprint {
                return Ok(c.clone());
            }
        }
        let pinned = Fingerprint::parse(&member.fingerprint).map_err(|e| peer_error(e.to_string()))?;
        let tls = hahsm_link::client_config(self.identity.clone(), pinned)
            .map_err(|e| peer_error(e.to_string()))?;
        let conn = Arc::new(PeerConn {
            fingerprint: member.fingerprint.clone(),
            tls,
            stream: AsyncMutex::new(None),
            next_id: std::sync::atomic::AtomicU64::new(1),
            push_turn: AsyncMutex::new(()),
        });
        conns.insert(member.serial, conn.clone());
        Ok(conn)
    }

    /// One request to a peer, connecting first if needed, all within `deadline`.
    async fn call(
        &self,
        member: &GroupMember,
        request: PeerRequest,
        deadline: Duration,
    ) -> Result<PeerResponse, WireError> {
        let conn = self.conn(member)?;
        let tls = conn.tls.clone();
        let fut = async {
            let mut guard = conn.stream.lock().await;
            if guard.is_none() {
                let s = hahsm_link::connect(&self.address_of(member), tls, deadline, deadline)
                    .await
                    .map_err(|e| self.link_failed(member, e.to_string()))?;
                *guard = Some(s);
            }
            let Some(stream) = guard.as_mut() else {
                return Err(peer_error("no connection"));
            };
            let id = conn.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let frame = PeerRequestFrame {
                id,
                deadline_ms: deadline.as_millis() as u32,
                request,
            };
            let result = async {
                hahsm_link::write_frame(stream, &encode(&frame)).await?;
                hahsm_link::read_frame(stream, 256 << 20)
                    .await?
                    .ok_or(LinkError::Closed)
            }
            .await;
            match result {
                Ok(bytes) => match decode::<PeerResponseFrame>(&bytes) {
                    Ok(r) if r.id == id => r.result,
                    _ => {
                        *guard = None;
                        Err(self.link_failed(member, "malformed answer from peer".into()))
                    }
                },
                Err(e) => {
                    *guard = None;
                    Err(self.link_failed(member, e.to_string()))
                }
            }
        };
        match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r,
            Err(_) => {
                // The stream may be mid-frame: start afresh next time.
                if let Ok(mut g) = conn.stream.try_lock() {
                    *g = None;
                }
                Err(self.link_failed(
                    member,
                    format!("member {} did not answer within {deadline:?}", member.serial),
                ))
            }
        }
    }

    /// Notes that a call could not reach `member`, and makes its error.
    fn link_failed(&self, member: &GroupMember, why: String) -> WireError {
        self.set_peer(member.serial, |s| s.link_failed = true);
        peer_error(why)
    }

    fn others(&self) -> Vec<GroupMember> {
        self.def()
            .members
            .into_iter()
            .filter(|m| m.serial != self.me)
            .collect()
    }

    /// Brings one peer up to date in both directions, as far as its version
    /// vector says. Returns whether the peer answered.
    async fn sync_with(&self, p: &ActivePartition, member: &GroupMember, deadline: Duration) -> bool {
        let def = self.def();
        let hb = PeerRequest::Heartbeat {
            group_id: def.id,
            epoch: def.epoch,
            state: self.state(p),
        };
        let (epoch, theirs) = match self.call(member, hb, deadline).await {
            Ok(PeerResponse::HeartbeatAck { epoch, state }) => (epoch, state),
            _ => return false,
        };
        self.seen(member.serial, &def.label, theirs.clone());
        if epoch < def.epoch {
            let _ = self
                .call(member, PeerRequest::GroupUpdate { group: def.clone() }, deadline)
                .await;
        }
        let their_vv = VersionVector(theirs.version_vector.iter().copied().collect());
        // Pull what they have and we lack.
        for (origin, _) in their_vv.ahead_of(&p.version_vector()) {
            loop {
                let after = p.version_vector().get(origin);
                let req = PeerRequest::Pull {
                    group_id: def.id,
                    origin,
                    after_seq: after,
                    limit: BATCH,
                };
                match self.call(member, req, deadline).await {
                    Ok(PeerResponse::Ops { ops, more }) => {
                        let got = ops.len();
                        if self.incoming(p, ops).await.is_err()
                            || got == 0
                            || p.version_vector().get(origin) == after
                        {
                            break;
                        }
                        if !more {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        // Push what we have and they lack.
        let mut their_vv = their_vv;
        for (origin, after) in p.version_vector().ahead_of(&their_vv) {
            let mut after = after;
            loop {
                let ops = match self.outgoing(p, origin, after, BATCH) {
                    Ok(o) if !o.is_empty() => o,
                    _ => break,
                };
                let last = ops.last().map(|o| o.seq).unwrap_or(after);
                match self
                    .call(
                        member,
                        PeerRequest::Push {
                            group_id: def.id,
                            ops,
                        },
                        deadline,
                    )
                    .await
                {
                    Ok(PeerResponse::PushAck { state }) => {
                        their_vv = VersionVector(state.version_vector.iter().copied().collect());
                        self.seen(member.serial, &def.label, state);
                        if their_vv.get(origin) < last {
                            break;
                        }
                        after = last;
                    }
                    _ => break,
                }
            }
        }
        if their_vv.covers(&p.version_vector()) {
            self.set_peer(member.serial, |s| {
                s.missed_write = false;
                s.health = PeerHealth::Alive;
            });
        } else {
            self.set_peer(member.serial, |s| s.health = PeerHealth::Lagging);
        }
        true
    }

    /// Records an answer from a peer: it is alive, and if it was down, it has recovered.
    fn seen(&self, serial: u64, label: &str, state: ReplicaState) {
        let mut recovered = None;
        self.set_peer(serial, |s| {
            if s.health == PeerHealth::Down {
                recovered = Some(s.recovery_attempts + 1);
                s.recovery_attempts = 0;
                s.health = PeerHealth::Lagging;
            }
            s.last_seen = Some(Instant::now());
            s.link_failed = false;
            s.state = state;
        });
        if let Some(n) = recovered {
            self.ha_log.event(label, "recovered", serial, Some(n));
        }
    }

    /// Records a failed exchange; declares the peer down once it has been
    /// silent for `DOWN_AFTER`.
    fn missed(&self, serial: u64, label: &str, started: Instant) {
        let mut event = None;
        self.set_peer(serial, |s| {
            let silent_since = s.last_seen.unwrap_or(started);
            match s.health {
                PeerHealth::Down => {
                    s.recovery_attempts += 1;
                    // Log the first attempts, then every tenth, so an outage of
                    // a day does not fill the disk.
                    if s.recovery_attempts <= 3 || s.recovery_attempts % 10 == 0 {
                        event = Some(("recovery-failed", Some(s.recovery_attempts)));
                    }
                }
                _ if silent_since.elapsed() >= DOWN_AFTER => {
                    s.health = PeerHealth::Down;
                    event = Some(("dropped", None));
                }
                _ => {}
            }
        });
        if let Some((e, n)) = event {
            self.ha_log.event(label, e, serial, n);
        }
    }

    /// After a local write: pushes what each peer lacks, to all of them in
    /// parallel, and waits until they have it (committed), at most the
    /// replication timeout.
    ///
    /// - `AllReachable` pushes to the peers in step. Once the first has
    ///   answered, the others get a short grace (four times as long as it
    ///   took, at least 50 ms): a peer far slower than its siblings is a
    ///   straggler. Peers that miss the deadline or the grace are marked
    ///   lagging and are not waited for again until anti-entropy has brought
    ///   them back in step, so one slow, stopped or unreachable member cannot
    ///   stall writes.
    /// - `Quorum` pushes to every peer not known to be down, lagging ones
    ///   included, and the grace starts only once a majority of the voting
    ///   members holds the write. If no majority holds it by the deadline the
    ///   write is not acknowledged: the caller gets `NoQuorum`. The write
    ///   stays in this member's log and reaches the others when they are
    ///   back, so its outcome is unknown to the application, which retries
    ///   it (with the same operation id) on another member.
    pub async fn replicate_write(&self, p: &ActivePartition) -> TokenResult<()> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let def = self.def();
        let needs_majority = def.write_concern == WriteConcern::Quorum;
        let timeout = Duration::from_millis(def.replication_timeout_ms);
        let targets: Vec<GroupMember> = self
            .others()
            .into_iter()
            .filter(|m| match self.peer(m.serial).health {
                PeerHealth::Alive => true,
                PeerHealth::Lagging => needs_majority,
                PeerHealth::Down => false,
            })
            .collect();
        let voters = def.members.iter().filter(|m| !m.standby).count();
        // This member holds the write; count the voters among those that confirm it.
        let majority_holds = |confirmed: &std::collections::HashSet<u64>| {
            let holders = 1 + targets
                .iter()
                .filter(|m| !m.standby && confirmed.contains(&m.serial))
                .count();
            holders * 2 > voters
        };
        let mut answered = std::collections::HashSet::new();
        if !targets.is_empty() {
            let mine = p.version_vector();
            let def = &def;
            let mut pushes: FuturesUnordered<_> = targets
                .iter()
                .map(|m| {
                    let mine = mine.clone();
                    async move { (m.serial, self.push_until_covered(p, m, &mine, def, timeout).await) }
                })
                .collect();
            let started = Instant::now();
            let mut deadline = started + timeout;
            let mut grace_started = false;
            loop {
                let next = tokio::time::timeout_at(deadline.into(), pushes.next()).await;
                match next {
                    Ok(Some((serial, true))) => {
                        answered.insert(serial);
                        let enough = !needs_majority || majority_holds(&answered);
                        if enough && !grace_started {
                            grace_started = true;
                            let grace = (started.elapsed() * 4).max(Duration::from_millis(50));
                            deadline = deadline.min(Instant::now() + grace);
                        }
                    }
                    Ok(Some((_, false))) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            for m in targets.iter().filter(|m| !answered.contains(&m.serial)) {
                self.set_peer(m.serial, |s| {
                    s.missed_write = true;
                    if s.health == PeerHealth::Alive {
                        s.health = PeerHealth::Lagging;
                    }
                });
            }
        }
        self.wake.notify_one();
        if needs_majority && !majority_holds(&answered) {
            return Err(TokenError::NoQuorum(format!(
                "write not acknowledged: the write concern is quorum and only {} of {voters} members confirmed it \
                 (the others were unreachable or slower than the replication timeout, {} ms); it stays on this \
                 member and reaches the others when they are back",
                1 + answered.len(),
                def.replication_timeout_ms
            )));
        }
        Ok(())
    }

    /// Pushes to one peer what `mine` has and it lacks, batch by batch, until
    /// its acknowledged state covers `mine`. An earlier push (perhaps another
    /// write's, queued on the same connection) may already have delivered
    /// it: concurrent writes share pushes.
    async fn push_until_covered(
        &self,
        p: &ActivePartition,
        m: &GroupMember,
        mine: &VersionVector,
        def: &GroupDef,
        timeout: Duration,
    ) -> bool {
        let conn = match self.conn(m) {
            Ok(c) => c,
            Err(_) => return false,
        };
        let _turn = conn.push_turn.lock().await;
        let mut behind_before = None;
        // A connection reset (a network blip, the peer's restart) is worth
        // one more try on a fresh connection; the caller's deadline bounds it.
        let mut may_reconnect = true;
        'rounds: loop {
            let theirs = VersionVector(self.peer(m.serial).state.version_vector.iter().copied().collect());
            let behind = mine.ahead_of(&theirs);
            if behind.is_empty() {
                return true;
            }
            if behind_before.as_ref() == Some(&behind) {
                // It acknowledged the last round but took none of it.
                return false;
            }
            behind_before = Some(behind.clone());
            for (origin, after) in behind {
                let ops = match self.outgoing(p, origin, after, BATCH) {
                    Ok(o) if !o.is_empty() => o,
                    _ => return false,
                };
                match self
                    .call(
                        m,
                        PeerRequest::Push {
                            group_id: def.id,
                            ops,
                        },
                        timeout,
                    )
                    .await
                {
                    Ok(PeerResponse::PushAck { state }) => self.seen(m.serial, &def.label, state),
                    Err(_) if may_reconnect => {
                        may_reconnect = false;
                        behind_before = None;
                        continue 'rounds;
                    }
                    _ => return false,
                }
            }
        }
    }

    /// A standby member serves no requests while an active member is up.
    pub fn serving_allowed(&self) -> TokenResult<()> {
        // On every request: look without copying the definition.
        let standby = {
            let def = self.def.read().unwrap_or_else(|p| p.into_inner());
            def.member(self.me).is_some_and(|m| m.standby)
        };
        if !standby {
            return Ok(());
        }
        let def = self.def();
        let active_up = self
            .others()
            .iter()
            .any(|m| !m.standby && self.peer(m.serial).health != PeerHealth::Down);
        if active_up {
            return Err(TokenError::DeviceError(format!(
                "this member is a standby of HA group '{}' and serves no requests while an active member is up",
                def.label
            )));
        }
        Ok(())
    }

    /// Whether this member may check a PIN now: only once caught up with
    /// every peer it can hear. Each peer must be down, or have been heard from since this
    /// member started, with every operation it reported applied here too, so
    /// that a member back from an outage never checks a PIN against the
    /// verifier or the failure count it missed a change of. It waits for
    /// that a little (anti-entropy is woken at once), then refuses as
    /// `NoQuorum`, which the HA slot answers by asking another member.
    pub async fn login_gate(&self, p: &ActivePartition) -> TokenResult<()> {
        const PATIENCE: Duration = Duration::from_millis(3000);
        let started = Instant::now();
        loop {
            let mine = p.version_vector();
            let behind: Vec<u64> = self
                .others()
                .iter()
                .filter(|m| {
                    let s = self.peer(m.serial);
                    let theirs = VersionVector(s.state.version_vector.iter().copied().collect());
                    s.health != PeerHealth::Down && (s.last_seen.is_none() || !mine.covers(&theirs))
                })
                .map(|m| m.serial)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= PATIENCE {
                return Err(TokenError::NoQuorum(format!(
                    "login refused: this member is catching up with members {behind:?} of its group"
                )));
            }
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a write may go ahead under the group's write concern.
    pub fn write_allowed(&self) -> TokenResult<()> {
        let def = self.def();
        if def.write_concern != WriteConcern::Quorum {
            return Ok(());
        }
        let voters = def.members.iter().filter(|m| !m.standby).count();
        let reachable = 1 + self
            .others()
            .iter()
            .filter(|m| {
                let peer = self.peer(m.serial);
                !m.standby && peer.health != PeerHealth::Down && !peer.link_failed
            })
            .count();
        if reachable * 2 > voters {
            Ok(())
        } else {
            Err(TokenError::NoQuorum(format!(
                "write refused: write concern is quorum and only {reachable} of {voters} members are reachable"
            )))
        }
    }

    /// The group's status as this member sees it.
    pub fn status(&self, p: &ActivePartition) -> GroupStatus {
        let def = self.def();
        let mine = self.state(p);
        let mut seen = Vec::new();
        for m in &def.members {
            if m.serial == self.me {
                seen.push(("alive", mine.clone(), Some(Duration::ZERO)));
            } else {
                let s = self.peer(m.serial);
                let fresh = s.last_seen.is_some_and(|t| t.elapsed() < DOWN_AFTER * 2);
                let health = match s.health {
                    PeerHealth::Down => "down",
                    _ if !fresh => "down",
                    PeerHealth::Lagging => "lagging",
                    PeerHealth::Alive => "alive",
                };
                seen.push((health, s.state, s.last_seen.map(|t| t.elapsed())));
            }
        }
        let best = crate::monitor::best_vector(seen.iter().map(|(_, s, _)| s.version_vector.as_slice()));
        let drift = crate::monitor::policy_drift(
            &def.members
                .iter()
                .zip(&seen)
                .map(|(m, (_, s, _))| (m.hsm_label.clone(), &s.policies))
                .collect::<Vec<_>>(),
        );
        let mut behind = self.behind_since.lock().unwrap_or_else(|p| p.into_inner());
        behind.retain(|serial, _| def.member(*serial).is_some());
        let mut members = Vec::new();
        let mut in_sync = true;
        let mut degraded = false;
        for (m, (health, state, last_seen)) in def.members.iter().zip(seen) {
            let lag_operations = crate::monitor::lag_operations(&state.version_vector, &best);
            let lag_ms = if lag_operations == 0 {
                behind.remove(&m.serial);
                0
            } else {
                behind
                    .entry(m.serial)
                    .or_insert_with(Instant::now)
                    .elapsed()
                    .as_millis() as u64
            };
            if health != "alive" {
                degraded = true;
            }
            let state_name = if m.standby && health == "alive" {
                "standby"
            } else {
                health
            };
            if health != "alive" || state.digest != mine.digest || state.version_vector != mine.version_vector
            {
                in_sync = false;
            }
            members.push(GroupMemberStatus {
                name: m.hsm_label.clone(),
                serial: m.serial,
                state: state_name.to_string(),
                object_count: state.live_objects,
                digest: hex::encode(state.digest),
                version_vector: state.version_vector.clone(),
                peer_address: m.peer_address.clone(),
                client_address: m.client_address.clone(),
                lag_operations,
                lag_ms,
                last_seen_ms: last_seen.map(|d| d.as_millis() as u64),
                policies: state.policies,
                metrics: state.metrics,
            });
        }
        GroupStatus {
            id: hex::encode(def.id),
            label: def.label,
            serial: def.serial,
            partition: def.partition,
            write_concern: format!("{:?}", def.write_concern),
            members,
            in_sync,
            degraded,
            policy_drift: drift,
        }
    }

    /// The background loop: heartbeats and anti-entropy with every peer.
    async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let started = Instant::now();
        loop {
            let Some(p) = self.partition.upgrade() else { return };
            let label = self.def().label;
            let others = self.others();
            let rounds = others.iter().map(|m| {
                let p = p.clone();
                let me = self.clone();
                let label = label.clone();
                async move {
                    if !me.sync_with(&p, m, HEARTBEAT_INTERVAL).await {
                        me.missed(m.serial, &label, started);
                    }
                }
            });
            futures::future::join_all(rounds).await;
            drop(p);
            let suspect = others.iter().any(|m| {
                let s = self.peer(m.serial);
                s.health != PeerHealth::Down && s.last_seen.is_some_and(|t| t.elapsed() > HEARTBEAT_INTERVAL)
            });
            let pause = if suspect {
                SUSPECT_PROBE_INTERVAL
            } else {
                HEARTBEAT_INTERVAL
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }
}

// ----- appliance-side administration -----

fn load_keys(app: &Appliance, p: &ActivePartition) -> Option<ReplicationKeys> {
    let sealed = app.store.get_meta(&keys_meta(&p.name)).ok().flatten()?;
    let plain = p
        .pmk()
        .open(&aad(b"hahsm/replication-keys/v1", p.serial), &sealed)
        .ok()?;
    postcard::from_bytes(plain.expose()).ok()
}

fn load_group_def(app: &Appliance, p: &ActivePartition) -> Option<GroupDef> {
    let sealed = app.store.get_meta(&group_meta(&p.name)).ok().flatten()?;
    let plain = p.pmk().open(&aad(b"hahsm/group/v1", p.serial), &sealed).ok()?;
    postcard::from_bytes(plain.expose()).ok()
}

fn save_group_def(app: &Appliance, p: &ActivePartition, def: &GroupDef) -> AdminResult<()> {
    let sealed = p.pmk().seal(&aad(b"hahsm/group/v1", p.serial), &encode(def))?;
    app.store.put_meta(&group_meta(&p.name), &sealed)?;
    Ok(())
}

/// `ha prepare`: derives and stores the partition's replication keys. Needs the
/// SO (for the domain secret) and the partition-owner secret: dual control.
pub fn prepare(app: &Appliance, partition: &str, owner_secret: &hahsm_proto::Secret) -> AdminResult<()> {
    let domain = app.so_domain_key()?;
    let hsm = app.hsm_policies()?;
    for (n, name) in [
        (policy::hsm::ALLOW_CLONING, "allow-cloning"),
        (
            policy::hsm::ALLOW_NETWORK_REPLICATION,
            "allow-network-replication",
        ),
    ] {
        if !hsm.enabled(n) {
            return Err(AdminError(format!(
                "HSM policy {n} ({name}) is off: replication needs it on"
            )));
        }
    }
    let pp = app.partition_policy_values(partition)?;
    for (n, name) in [
        (
            policy::partition::ALLOW_PRIVATE_KEY_CLONING,
            "allow-private-key-cloning",
        ),
        (
            policy::partition::ALLOW_SECRET_KEY_CLONING,
            "allow-secret-key-cloning",
        ),
    ] {
        if !pp.enabled(n) {
            return Err(AdminError(format!(
                "partition policy {n} ({name}) is off: replication needs it on"
            )));
        }
    }
    // Proves the owner secret is right for this partition before using it.
    app.partition_pmk(partition, owner_secret)?;
    let active = app
        .active_partition(partition)
        .ok_or_else(|| AdminError(format!("partition '{partition}' is not activated")))?;
    let keys = ReplicationKeys {
        domain: domain.expose().to_vec(),
        owner: owner_key(owner_secret.expose(), partition)?.expose().to_vec(),
    };
    let sealed = active
        .pmk()
        .seal(&aad(b"hahsm/replication-keys/v1", active.serial), &encode(&keys))?;
    app.store.put_meta(&keys_meta(partition), &sealed)?;
    info!(partition, "partition prepared for replication");
    Ok(())
}

fn my_member(app: &Appliance, p: &ActivePartition, standby: bool) -> AdminResult<GroupMember> {
    let peer_address = app.peer_address().ok_or_else(|| {
        AdminError("this member has no peer listener: set `peer_listen` in its config".into())
    })?;
    Ok(GroupMember {
        serial: app.serial,
        hsm_label: app.hsm_label(),
        partition_serial: p.serial,
        peer_address,
        fingerprint: app.fingerprint().map_err(|e| AdminError(e.to_string()))?,
        client_address: app.client_address(),
        standby,
    })
}

fn active_with_keys(
    app: &Appliance,
    partition: &str,
) -> AdminResult<(Arc<ActivePartition>, ReplicationKeys)> {
    let p = app
        .active_partition(partition)
        .ok_or_else(|| AdminError(format!("partition '{partition}' is not activated")))?;
    let keys = load_keys(app, &p).ok_or_else(|| {
        AdminError(format!(
            "partition '{partition}' is not prepared for replication: run `hahsm ha prepare` first"
        ))
    })?;
    Ok((p, keys))
}

pub fn create_group(
    app: &Appliance,
    label: &str,
    partition: &str,
    concern: WriteConcern,
    timeout_ms: u64,
) -> AdminResult<GroupStatus> {
    app.require_so()?;
    let (p, keys) = active_with_keys(app, partition)?;
    if load_group_def(app, &p).is_some() {
        return Err(AdminError(format!(
            "partition '{partition}' is already in an HA group"
        )));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&crypto::random(16)?);
    let serial =
        10_000_000 + u64::from_le_bytes(crypto::random(8)?.try_into().unwrap_or_default()) % 90_000_000;
    let def = GroupDef {
        id,
        label: label.to_string(),
        serial,
        partition: partition.to_string(),
        epoch: 1,
        members: vec![my_member(app, &p, false)?],
        write_concern: concern,
        replication_timeout_ms: timeout_ms,
    };
    save_group_def(app, &p, &def)?;
    let group = start(app, &p, def, keys)?;
    info!(label, serial, partition, "HA group created");
    Ok(group.status(&p))
}

fn find_group(app: &Appliance, label: &str) -> AdminResult<(Arc<Group>, Arc<ActivePartition>)> {
    let groups = app.groups.read().unwrap_or_else(|p| p.into_inner());
    for (partition, g) in groups.iter() {
        if g.def().label == label || g.def().serial.to_string() == label {
            let p = app
                .active_partition(partition)
                .ok_or_else(|| AdminError(format!("partition '{partition}' is not activated")))?;
            return Ok((g.clone(), p));
        }
    }
    Err(AdminError(format!("no HA group '{label}' on this member")))
}

/// `ha add-member`: runs the join handshake with the candidate at `address`,
/// whose certificate must have fingerprint `fingerprint`. The candidate must
/// prove it holds the same domain and partition-owner secrets, or it is
/// refused, with the secret that differs named.
pub async fn add_member(
    app: &Appliance,
    label: &str,
    address: &str,
    fingerprint: &str,
    standby: bool,
) -> AdminResult<GroupStatus> {
    app.require_so()?;
    let (group, p) = find_group(app, label)?;
    let def = group.def();
    let candidate_fp =
        Fingerprint::parse(fingerprint).map_err(|e| AdminError(format!("bad fingerprint: {e}")))?;
    let my_fp = Fingerprint::parse(&app.fingerprint().map_err(|e| AdminError(e.to_string()))?)
        .map_err(|e| AdminError(e.to_string()))?;
    let candidate = GroupMember {
        serial: 0,
        hsm_label: String::new(),
        partition_serial: 0,
        peer_address: address.to_string(),
        fingerprint: candidate_fp.to_string(),
        client_address: String::new(),
        standby,
    };
    let deadline = Duration::from_secs(10);
    let nonce = random32()?;
    let answer = group
        .call(
            &candidate,
            PeerRequest::JoinChallenge {
                group: def.clone(),
                nonce,
            },
            deadline,
        )
        .await
        .map_err(|e| {
            AdminError(format!(
                "the candidate at {address} refused or did not answer: {}",
                e.message
            ))
        })?;
    let PeerResponse::JoinProof {
        member,
        nonce: candidate_nonce,
        proof,
    } = answer
    else {
        return Err(AdminError("the candidate answered out of turn".into()));
    };
    let expected = prove(
        &group.keys,
        &transcript(
            b"candidate",
            &def,
            &nonce,
            &candidate_nonce,
            &my_fp,
            &candidate_fp,
        ),
    );
    if let Err(why) = check_proof(&expected, &proof, &format!("the member at {address}")) {
        warn!(address, "add-member refused: {why}");
        return Err(AdminError(format!("refused to add the member: {why}")));
    }
    if def
        .members
        .iter()
        .any(|m| m.serial == member.serial && m.fingerprint != candidate_fp.to_string())
    {
        return Err(AdminError(format!(
            "a member with serial {} is already in the group",
            member.serial
        )));
    }
    let mut new_def = def.clone();
    new_def.epoch += 1;
    new_def.members.retain(|m| m.serial != member.serial);
    new_def.members.push(GroupMember {
        standby,
        fingerprint: candidate_fp.to_string(),
        peer_address: address.to_string(),
        ..member
    });
    let my_proof = prove(
        &group.keys,
        &transcript(
            b"initiator",
            &def,
            &nonce,
            &candidate_nonce,
            &my_fp,
            &candidate_fp,
        ),
    );
    group
        .call(
            &candidate,
            PeerRequest::JoinConfirm {
                group: new_def.clone(),
                candidate_nonce,
                proof: my_proof,
            },
            deadline,
        )
        .await
        .map_err(|e| AdminError(format!("the candidate refused to join: {}", e.message)))?;
    save_group_def(app, &p, &new_def)?;
    *group.def.write().unwrap_or_else(|p| p.into_inner()) = new_def.clone();
    // Tell everyone else; heartbeats repeat it to anyone who missed it.
    for m in new_def.members.iter().filter(|m| m.serial != app.serial) {
        let _ = group
            .call(
                m,
                PeerRequest::GroupUpdate {
                    group: new_def.clone(),
                },
                Duration::from_secs(2),
            )
            .await;
    }
    group.wake.notify_one();
    info!(label, address, "member added to HA group");
    Ok(group.status(&p))
}

pub async fn remove_member(app: &Appliance, label: &str, serial: u64) -> AdminResult<GroupStatus> {
    app.require_so()?;
    let (group, p) = find_group(app, label)?;
    let mut def = group.def();
    if serial == app.serial {
        return Err(AdminError(
            "remove a member from another member of the group".into(),
        ));
    }
    let before = def.members.len();
    def.members.retain(|m| m.serial != serial);
    if def.members.len() == before {
        return Err(AdminError(format!("member {serial} is not in group '{label}'")));
    }
    def.epoch += 1;
    save_group_def(app, &p, &def)?;
    *group.def.write().unwrap_or_else(|p| p.into_inner()) = def.clone();
    for m in def.members.iter().filter(|m| m.serial != app.serial) {
        let _ = group
            .call(
                m,
                PeerRequest::GroupUpdate { group: def.clone() },
                Duration::from_secs(2),
            )
            .await;
    }
    info!(label, serial, "member removed from HA group");
    Ok(group.status(&p))
}

pub fn show(app: &Appliance, label: Option<&str>) -> AdminResult<Vec<GroupStatus>> {
    let groups = app.groups.read().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    for (partition, g) in groups.iter() {
        if label.is_some_and(|l| g.def().label != l) {
            continue;
        }
        if let Some(p) = app.active_partition(partition) {
            out.push(g.status(&p));
        }
    }
    if out.is_empty() {
        return Err(AdminError(match label {
            Some(l) => format!("no HA group '{l}' on this member"),
            None => "this member is in no HA group".into(),
        }));
    }
    Ok(out)
}

/// `ha synchronize`: an immediate anti-entropy round with every peer. It can
/// only add what is missing: tombstones keep destroyed objects destroyed.
pub async fn synchronize(app: &Appliance, label: &str) -> AdminResult<GroupStatus> {
    let (group, p) = find_group(app, label)?;
    for m in group.others() {
        if !group.sync_with(&p, &m, Duration::from_secs(5)).await {
            group.missed(m.serial, label, Instant::now());
        }
    }
    Ok(group.status(&p))
}

fn start(
    app: &Appliance,
    p: &Arc<ActivePartition>,
    def: GroupDef,
    keys: ReplicationKeys,
) -> AdminResult<Arc<Group>> {
    let repl_key = replication_key(&keys.domain, &keys.owner, &def)?;
    let identity = hahsm_link::load_identity(&app.config.cert_path(), &app.config.key_path())
        .map_err(|e| AdminError(e.to_string()))?;
    let (stop, _) = tokio::sync::watch::channel(false);
    let group = Arc::new(Group {
        def: RwLock::new(def),
        keys,
        repl_key,
        partition: Arc::downgrade(p),
        me: app.serial,
        peers: Mutex::new(HashMap::new()),
        conns: Mutex::new(HashMap::new()),
        identity,
        routes: app.config.peer_routes.clone(),
        ha_log: HaLog {
            dir: app.config.data_dir.clone(),
            monitor: app.monitor.clone(),
        },
        stop,
        wake: tokio::sync::Notify::new(),
        policies: RwLock::new(policy_snapshot(app, &p.name)),
        monitor: app.monitor.clone(),
        behind_since: Mutex::new(HashMap::new()),
    });
    app.groups
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(p.name.clone(), group.clone());
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(group.clone().run());
    }
    Ok(group)
}

/// At activation: if the partition belongs to a group, start replicating.
pub fn resume_group(app: &Appliance, p: &Arc<ActivePartition>) {
    let (Some(def), Some(keys)) = (load_group_def(app, p), load_keys(app, p)) else {
        return;
    };
    if def.member(app.serial).is_none() {
        info!(partition = %p.name, "this member was removed from its group; not replicating");
        return;
    }
    match start(app, p, def, keys) {
        Ok(g) => info!(partition = %p.name, group = %g.def().label, "replication resumed"),
        Err(e) => warn!(partition = %p.name, error = %e, "cannot resume replication"),
    }
}

/// Stops replicating a partition: at deactivation, or when removed from its group.
pub fn stop_group(app: &Appliance, partition: &str) {
    if let Some(g) = app
        .groups
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(partition)
    {
        let _ = g.stop.send(true);
    }
}

/// This member's HSM policies and the partition's, as heartbeats carry them:
/// the value in force of every policy in the tables, so a policy a store
/// never recorded compares as the value it has, not as missing.
fn policy_snapshot(app: &Appliance, partition: &str) -> PolicySnapshot {
    let in_force = |table: &[policy::PolicyDef], p: policy::Policies| -> Vec<(u32, u64)> {
        table.iter().map(|d| (d.number, p.get(d.number))).collect()
    };
    PolicySnapshot {
        hsm: app
            .hsm_policies()
            .map(|p| in_force(policy::HSM_POLICIES, p))
            .unwrap_or_default(),
        partition: app
            .partition_policy_values(partition)
            .map(|p| in_force(policy::PARTITION_POLICIES, p))
            .unwrap_or_default(),
    }
}

/// Brings every group's copy of this member's policies up to date.
pub fn refresh_policies(app: &Appliance) {
    let groups: Vec<(String, Arc<Group>)> = app
        .groups
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(partition, g)| (partition.clone(), g.clone()))
        .collect();
    for (partition, g) in groups {
        let now = policy_snapshot(app, &partition);
        *g.policies.write().unwrap_or_else(|p| p.into_inner()) = now;
    }
}

/// The group of a partition, if it is in one.
pub fn group_of(app: &Appliance, partition: &str) -> Option<Arc<Group>> {
    app.groups
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(partition)
        .cloned()
}

// ----- the peer listener -----

/// Accepts any certificate at the TLS layer: a newcomer proves itself in the
/// join handshake with the group's secrets; every other request is checked
/// against the group's pinned member fingerprints.
struct AnyPeer;

impl ClientAuthorizer for AnyPeer {
    fn is_registered(&self, _fp: &Fingerprint) -> bool {
        true
    }
}

/// A candidate's side of a join in progress, between challenge and confirm.
#[derive(Clone)]
struct PendingJoin {
    group_id: [u8; 16],
    initiator_nonce: [u8; 32],
    candidate_nonce: [u8; 32],
    initiator: Fingerprint,
    at: Instant,
}

pub async fn serve_peers(app: Arc<Appliance>, listener: tokio::net::TcpListener) {
    let acceptor = match hahsm_link::load_identity(&app.config.cert_path(), &app.config.key_path())
        .and_then(|id| hahsm_link::server_config(id, Arc::new(AnyPeer)))
    {
        Ok(c) => tokio_rustls::TlsAcceptor::from(c),
        Err(e) => {
            warn!(error = %e, "peer listener disabled: no usable certificate");
            return;
        }
    };
    let pending: Arc<Mutex<Vec<PendingJoin>>> = Arc::default();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (app, acceptor, pending) = (app.clone(), acceptor.clone(), pending.clone());
        tokio::spawn(async move {
            let Ok((mut stream, fp)) =
                hahsm_link::accept(tcp, &acceptor, app.config.limits.handshake_timeout()).await
            else {
                return;
            };
            loop {
                let frame = match tokio::time::timeout(
                    Duration::from_secs(60),
                    hahsm_link::read_frame(&mut stream, 256 << 20),
                )
                .await
                {
                    Ok(Ok(Some(f))) => f,
                    _ => return,
                };
                let Ok(req) = decode::<PeerRequestFrame>(&frame) else {
                    let _ = hahsm_link::write_frame(
                        &mut stream,
                        &encode(&PeerResponseFrame {
                            id: 0,
                            result: Err(peer_error("malformed peer frame")),
                        }),
                    )
                    .await;
                    return;
                };
                let deadline = Duration::from_millis(u64::from(req.deadline_ms).clamp(100, 60_000));
                let journaled = peer_admin_action(&req.request);
                // Applying replicated operations must never stop halfway (a
                // dropped future would leave memory ahead of the store), so
                // the request runs in a task of its own and the deadline only
                // bounds the wait for its answer.
                let work = {
                    let (app, fp, pending) = (app.clone(), fp.clone(), pending.clone());
                    tokio::spawn(async move { handle_peer(&app, &fp, &pending, req.request).await })
                };
                let result = match tokio::time::timeout(deadline, work).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(peer_error("the request failed")),
                    Err(_) => Err(peer_error(
                        "deadline passed; the request completes in the background",
                    )),
                };
                if let Some(action) = journaled {
                    journal_peer_action(&app, &fp, action, &result);
                }
                if hahsm_link::write_frame(&mut stream, &encode(&PeerResponseFrame { id: req.id, result }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// The administrative peer requests (joins and group changes), as the
/// journal records them; heartbeats and operations are not journaled.
fn peer_admin_action(request: &PeerRequest) -> Option<crate::journal::Action> {
    let (action, group) = match request {
        PeerRequest::JoinChallenge { group, .. } => ("HaJoinChallenge", group),
        PeerRequest::JoinConfirm { group, .. } => ("HaJoinConfirm", group),
        PeerRequest::GroupUpdate { group } => ("HaGroupUpdate", group),
        PeerRequest::Heartbeat { .. } | PeerRequest::Pull { .. } | PeerRequest::Push { .. } => return None,
    };
    let members: Vec<String> = group.members.iter().map(|m| m.serial.to_string()).collect();
    Some(crate::journal::Action {
        action: action.to_string(),
        object: format!("group {}", group.label),
        request: format!(
            "{action} {{ group: {:?}, partition: {:?}, epoch: {}, members: [{}] }}",
            group.label,
            group.partition,
            group.epoch,
            members.join(", ")
        ),
        result: String::new(),
    })
}

fn journal_peer_action(
    app: &Appliance,
    fp: &Fingerprint,
    mut action: crate::journal::Action,
    result: &Result<PeerResponse, WireError>,
) {
    let sender = {
        let groups = app.groups.read().unwrap_or_else(|p| p.into_inner());
        groups
            .values()
            .find_map(|g| g.def().member_by_fingerprint(&fp.to_hex()).map(|m| m.serial))
    };
    action.result = match result {
        Ok(_) => "done".into(),
        Err(e) => format!("refused: {}", e.message),
    };
    let who = crate::journal::Who {
        role: "peer".into(),
        actor: sender.map_or_else(|| "member ?".to_string(), |s| format!("member {s}")),
        fingerprint: fp.to_string(),
    };
    if let Err(e) = app.journal.append(&who, action) {
        warn!(error = %e, "cannot write the journal");
    }
}

/// Finds the group `group_id` on this member and checks the peer is in it.
fn authorized(
    app: &Appliance,
    fp: &Fingerprint,
    group_id: &[u8; 16],
) -> Result<(Arc<Group>, Arc<ActivePartition>), WireError> {
    let groups = app.groups.read().unwrap_or_else(|p| p.into_inner());
    for (partition, g) in groups.iter() {
        let def = g.def();
        if &def.id != group_id {
            continue;
        }
        if def.member_by_fingerprint(&fp.to_hex()).is_none() {
            warn!(fingerprint = %fp, group = %def.label, "refused a peer that is not a member of the group");
            return Err(WireError {
                code: ck::CKR_TOKEN_NOT_RECOGNIZED,
                message: format!("not a member of HA group '{}'", def.label),
            });
        }
        let p = app
            .active_partition(partition)
            .ok_or_else(|| peer_error("the partition is not activated"))?;
        return Ok((g.clone(), p));
    }
    Err(WireError {
        code: ck::CKR_TOKEN_NOT_RECOGNIZED,
        message: "no such HA group on this member".into(),
    })
}

async fn handle_peer(
    app: &Arc<Appliance>,
    fp: &Fingerprint,
    pending: &Mutex<Vec<PendingJoin>>,
    request: PeerRequest,
) -> Result<PeerResponse, WireError> {
    let refuse = |m: String| WireError {
        code: ck::CKR_TOKEN_NOT_RECOGNIZED,
        message: m,
    };
    match request {
        PeerRequest::JoinChallenge { group, nonce } => {
            let (p, keys) = active_with_keys(app, &group.partition).map_err(|e| refuse(e.0))?;
            if let Some(existing) = load_group_def(app, &p) {
                if existing.id != group.id {
                    return Err(refuse(format!(
                        "partition '{}' already belongs to HA group '{}'",
                        group.partition, existing.label
                    )));
                }
            }
            let me = Fingerprint::parse(&app.fingerprint().map_err(|e| peer_error(e.to_string()))?)
                .map_err(|e| peer_error(e.to_string()))?;
            let candidate_nonce = random32().map_err(WireError::from)?;
            let proof = prove(
                &keys,
                &transcript(b"candidate", &group, &nonce, &candidate_nonce, fp, &me),
            );
            let mut pj = pending.lock().unwrap_or_else(|p| p.into_inner());
            pj.retain(|j| j.at.elapsed() < Duration::from_secs(60));
            pj.push(PendingJoin {
                group_id: group.id,
                initiator_nonce: nonce,
                candidate_nonce,
                initiator: fp.clone(),
                at: Instant::now(),
            });
            let member = my_member(app, &p, false).map_err(|e| peer_error(e.0))?;
            Ok(PeerResponse::JoinProof {
                member,
                nonce: candidate_nonce,
                proof,
            })
        }
        PeerRequest::JoinConfirm {
            group,
            candidate_nonce,
            proof,
        } => {
            let join = {
                let mut pj = pending.lock().unwrap_or_else(|p| p.into_inner());
                let i = pj
                    .iter()
                    .position(|j| {
                        j.group_id == group.id && j.candidate_nonce == candidate_nonce && &j.initiator == fp
                    })
                    .ok_or_else(|| refuse("no join in progress for this confirmation".into()))?;
                pj.remove(i)
            };
            let (p, keys) = active_with_keys(app, &group.partition).map_err(|e| refuse(e.0))?;
            let me = Fingerprint::parse(&app.fingerprint().map_err(|e| peer_error(e.to_string()))?)
                .map_err(|e| peer_error(e.to_string()))?;
            // The transcript covers the group's id and partition, which the
            // confirmation's newer definition shares with the challenge's.
            let expected = prove(
                &keys,
                &transcript(
                    b"initiator",
                    &group,
                    &join.initiator_nonce,
                    &candidate_nonce,
                    &join.initiator,
                    &me,
                ),
            );
            if let Err(why) = check_proof(&expected, &proof, "the group's member") {
                warn!("join refused: {why}");
                return Err(refuse(format!("refused to join: {why}")));
            }
            if group.member(app.serial).is_none() {
                return Err(refuse("the group definition does not include this member".into()));
            }
            save_group_def(app, &p, &group).map_err(|e| peer_error(e.0))?;
            if let Some(g) = group_of(app, &p.name) {
                *g.def.write().unwrap_or_else(|p| p.into_inner()) = group.clone();
                g.wake.notify_one();
            } else {
                start(app, &p, group.clone(), keys).map_err(|e| peer_error(e.0))?;
            }
            info!(group = %group.label, "joined HA group");
            Ok(PeerResponse::Joined)
        }
        PeerRequest::Heartbeat {
            group_id,
            epoch: _,
            state,
        } => {
            let (g, p) = authorized(app, fp, &group_id)?;
            let def = g.def();
            // The sender is who its certificate says, whatever the message claims.
            if let Some(sender) = def.member_by_fingerprint(&fp.to_hex()) {
                g.seen(sender.serial, &def.label, state);
            }
            Ok(PeerResponse::HeartbeatAck {
                epoch: g.def().epoch,
                state: g.state(&p),
            })
        }
        PeerRequest::Pull {
            group_id,
            origin,
            after_seq,
            limit,
        } => {
            let (g, p) = authorized(app, fp, &group_id)?;
            let limit = limit.min(BATCH);
            let ops = g
                .outgoing(&p, origin, after_seq, limit)
                .map_err(WireError::from)?;
            let more = ops.len() as u32 == limit;
            Ok(PeerResponse::Ops { ops, more })
        }
        PeerRequest::Push { group_id, ops } => {
            let (g, p) = authorized(app, fp, &group_id)?;
            g.incoming(&p, ops).await.map_err(WireError::from)?;
            Ok(PeerResponse::PushAck { state: g.state(&p) })
        }
        PeerRequest::GroupUpdate { group } => {
            let (g, p) = authorized(app, fp, &group.id)?;
            let current = g.def();
            if group.epoch > current.epoch {
                save_group_def(app, &p, &group).map_err(|e| peer_error(e.0))?;
                let removed = group.member(app.serial).is_none();
                *g.def.write().unwrap_or_else(|p| p.into_inner()) = group.clone();
                if removed {
                    warn!(group = %group.label, "this member was removed from the group");
                    stop_group(app, &p.name);
                }
            }
            Ok(PeerResponse::Done)
        }
    }
}

impl From<AdminError> for WireError {
    fn from(e: AdminError) -> Self {
        peer_error(e.0)
    }
}
