//! One partition's membership of an HA group, running: the connections to
//! the peers, the push of every local write under the write concern, the
//! heartbeats and anti-entropy that keep the copies converged with no client
//! involved, and the gates (quorum, standby, login) that requests pass. The
//! decisions are `detector`'s and the view is `view`'s; this file does the I/O.
use super::detector::{self, PeerStatus, Peers, HEARTBEAT_INTERVAL};
use super::halog::HaLog;
use super::keys::{wire_aad, ReplicationKeys};
use crate::partition::ActivePartition;
use crate::sync::{Recover, RecoverRw};
use hahsm_crypto::SealKey;
use hahsm_link::{Fingerprint, LinkError};
use hahsm_proto::admin::GroupStatus;
use hahsm_proto::peer::{
    GroupDef, GroupMember, PeerRequest, PeerRequestFrame, PeerResponse, PeerResponseFrame, PolicySnapshot,
    ReplicaState, WriteConcern,
};
use hahsm_proto::{decode, encode, WireError};
use hahsm_replica::VersionVector;
use hahsm_token::oplog::{Op, OpBody};
use hahsm_token::{ck, TokenError, TokenResult};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Mutex as AsyncMutex;

/// Most operations one pull or push carries.
pub(super) const BATCH: u32 = 2000;

/// Most states one page of a snapshot carries: a page of private keys is a
/// few megabytes, well inside a frame and a heartbeat's deadline.
pub(super) const SNAPSHOT_PAGE: u32 = 1000;

/// A member that lacks at least this many operations, and more than half as
/// many as its peer has live objects, catches up from the peer's snapshot
/// even when the peer's log holds them: joining a state costs about a third
/// of applying an operation (BENCHMARKS.md, "A bounded log").
pub(super) const SNAPSHOT_RATHER_THAN_OPS: u64 = 10_000;

/// Whether a member that lacks `missing` operations of a partition of
/// `live` objects catches up quicker from a snapshot than from the log.
fn snapshot_is_quicker(missing: u64, live: u64) -> bool {
    missing >= SNAPSHOT_RATHER_THAN_OPS && missing.saturating_mul(2) > live
}

/// What a pull is answered from: the log, or, when the log no longer holds
/// what the peer lacks, "ask for the snapshot".
pub(super) enum Outgoing {
    Ops(Vec<Op>),
    Compacted { floor: u64 },
}

/// A connection to one peer, which it pins: one request at a time, each
/// under a deadline.
pub(super) struct PeerConn {
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
    pub(super) keys: ReplicationKeys,
    pub(super) repl_key: SealKey,
    pub(super) partition: Weak<ActivePartition>,
    pub(super) me: u64,
    pub(super) peers: Mutex<Peers>,
    pub(super) conns: Mutex<HashMap<u64, Arc<PeerConn>>>,
    pub(super) identity: hahsm_link::Identity,
    pub(super) routes: std::collections::BTreeMap<String, String>,
    pub(super) ha_log: HaLog,
    pub(super) stop: tokio::sync::watch::Sender<bool>,
    pub(super) wake: tokio::sync::Notify,
    /// This member's HSM and partition policies, as heartbeats carry them;
    /// kept current by the monitor's watch loop.
    pub(super) policies: RwLock<PolicySnapshot>,
    pub(super) monitor: Arc<crate::monitor::Monitor>,
    /// Since when each member (by serial) has lacked operations.
    pub(super) behind_since: Mutex<HashMap<u64, Instant>>,
    /// The maximum clock offset and the quorum lease (`[replication]`).
    pub(super) rules: crate::config::Replication,
    /// The origin of this member's monotonic clock readings, for
    /// `detector::clock_anchor`.
    pub(super) clock_origin: Instant,
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub(super) fn peer_error(msg: impl Into<String>) -> WireError {
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

    pub(super) fn def(&self) -> GroupDef {
        self.def.read_or_recover().clone()
    }

    pub(super) fn state(&self, p: &ActivePartition) -> ReplicaState {
        ReplicaState {
            serial: self.me,
            version_vector: p.version_vector().0.into_iter().collect(),
            live_objects: p.object_count() as u64,
            digest: p.content_digest(),
            policies: self.policies.read_or_recover().clone(),
            metrics: self.monitor.metrics_url().unwrap_or_default(),
            wall_ms: crate::now_ms(),
        }
    }

    /// This member's clock anchor now (`detector::clock_anchor`).
    fn clock_anchor(&self) -> i64 {
        detector::clock_anchor(crate::now_ms(), Instant::now(), self.clock_origin)
    }

    /// A secret sealed under the partition's master key, sealed instead under
    /// the group's replication key for the wire.
    fn sealed_for_wire(
        &self,
        p: &ActivePartition,
        def: &GroupDef,
        ouid: &hahsm_token::Ouid,
        sealed: &[u8],
    ) -> TokenResult<Vec<u8>> {
        let secret = p.open_secret(ouid, sealed)?;
        self.repl_key.seal(&wire_aad(def, ouid), secret.expose())
    }

    /// A secret from the wire, sealed instead under the partition's master key.
    fn resealed_from_wire(
        &self,
        p: &ActivePartition,
        def: &GroupDef,
        ouid: &hahsm_token::Ouid,
        sealed: &[u8],
    ) -> TokenResult<Vec<u8>> {
        let secret = self.repl_key.open(&wire_aad(def, ouid), sealed).map_err(|_| {
            TokenError::DeviceError(
                "a replicated secret does not open under the group's replication key".into(),
            )
        })?;
        p.seal_secret(ouid, secret.expose())
    }

    /// Operations from the local log, their secrets re-sealed for the wire;
    /// or, if the log no longer holds the first of them, `Compacted`.
    pub(super) fn outgoing(
        &self,
        p: &ActivePartition,
        origin: u64,
        after: u64,
        limit: u32,
    ) -> TokenResult<Outgoing> {
        let def = self.def();
        let compacted = || Outgoing::Compacted {
            floor: p.log_floor().get(origin),
        };
        if p.compacted_after(origin, after) {
            return Ok(compacted());
        }
        let mut ops = p.ops_from(origin, after, limit as usize)?;
        // Compacted while it was read.
        if ops.first().is_some_and(|op| op.seq != after + 1) {
            return Ok(compacted());
        }
        for op in &mut ops {
            if let OpBody::Create { objects } = &mut op.body {
                for o in objects {
                    if let Some(sealed) = o.sealed_secret.take() {
                        o.sealed_secret = Some(self.sealed_for_wire(p, &def, &o.ouid, &sealed)?);
                    }
                }
            }
        }
        Ok(Outgoing::Ops(ops))
    }

    /// One page of this member's snapshot (`ActivePartition::snapshot_page`),
    /// each secret re-sealed under the replication key as operations' are.
    pub(super) fn snapshot_out(
        &self,
        p: &ActivePartition,
        after: Option<hahsm_token::Ouid>,
        limit: u32,
    ) -> TokenResult<PeerResponse> {
        let def = self.def();
        let (covers, mut states, next) = p.snapshot_page(after, limit.min(SNAPSHOT_PAGE) as usize);
        for (ouid, state) in &mut states {
            if let Some(created) = state.created.as_mut() {
                if let Some(sealed) = created.secret.take() {
                    created.secret = Some(self.sealed_for_wire(p, &def, ouid, &sealed)?);
                }
            }
        }
        Ok(PeerResponse::Snapshot {
            covers: covers.0.into_iter().collect(),
            states,
            next,
        })
    }

    /// Catches up from `member`'s snapshot, page by page, when its log no
    /// longer holds what this member lacks (this member was away longer
    /// than the log retention, or is new). Each page is joined and durable
    /// on its own; the version vector moves only after the last one, to what
    /// the first page covered, so an interrupted snapshot claims nothing and
    /// the next round starts another. Returns whether it completed.
    pub(super) async fn catch_up_by_snapshot(
        &self,
        p: &ActivePartition,
        member: &GroupMember,
        deadline: Duration,
    ) -> bool {
        let def = self.def();
        let started = Instant::now();
        let (mut after, mut covers, mut pages, mut states_seen, mut changed) =
            (None, None, 0u64, 0usize, 0usize);
        loop {
            let req = PeerRequest::Snapshot {
                group_id: def.id,
                after,
                limit: SNAPSHOT_PAGE,
            };
            let (page_covers, states, next) = match self.call(member, req, deadline).await {
                Ok(PeerResponse::Snapshot { covers, states, next }) => (covers, states, next),
                _ => return false,
            };
            let first = covers
                .get_or_insert_with(|| VersionVector(page_covers.into_iter().collect()))
                .clone();
            states_seen += states.len();
            let states = match self.states_in(p, &def, states) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(partition = %p.name, member = member.serial, error = %e, "a snapshot page was refused");
                    return false;
                }
            };
            let max_ahead = self.rules.max_clock_offset_ms;
            match p
                .install_snapshot(states, next.is_none().then_some(&first), max_ahead)
                .await
            {
                Ok(n) => changed += n,
                Err(e) => {
                    tracing::warn!(partition = %p.name, member = member.serial, error = %e, "a snapshot page could not be installed");
                    return false;
                }
            }
            pages += 1;
            match next {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        tracing::info!(
            partition = %p.name,
            from = member.serial,
            pages,
            states = states_seen,
            changed,
            covers = ?covers.map(|c| c.0),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "caught up from a peer's snapshot"
        );
        true
    }

    /// A snapshot page's states with their secrets re-sealed from the
    /// replication key to this partition's master key.
    fn states_in(
        &self,
        p: &ActivePartition,
        def: &GroupDef,
        mut states: Vec<(hahsm_token::Ouid, crate::partition::StoredState)>,
    ) -> TokenResult<Vec<(hahsm_token::Ouid, crate::partition::StoredState)>> {
        for (ouid, state) in &mut states {
            if let Some(created) = state.created.as_mut() {
                if let Some(sealed) = created.secret.take() {
                    created.secret = Some(self.resealed_from_wire(p, def, ouid, &sealed)?);
                }
            }
        }
        Ok(states)
    }

    /// Applies a batch of operations from a peer, with one sync to disk;
    /// operations past a gap are left for a later pull.
    pub(super) async fn incoming(&self, p: &ActivePartition, mut ops: Vec<Op>) -> TokenResult<()> {
        let def = self.def();
        for op in &mut ops {
            if let OpBody::Create { objects } = &mut op.body {
                for o in objects {
                    if let Some(sealed) = o.sealed_secret.take() {
                        o.sealed_secret = Some(self.resealed_from_wire(p, &def, &o.ouid, &sealed)?);
                    }
                }
            }
        }
        p.apply_remote(ops, self.rules.max_clock_offset_ms).await?;
        Ok(())
    }

    fn set_peer(&self, serial: u64, f: impl FnOnce(&mut PeerStatus)) {
        let mut peers = self.peers.lock_or_recover();
        f(peers.entry(serial).or_default());
    }

    fn peer(&self, serial: u64) -> PeerStatus {
        self.peers
            .lock_or_recover()
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
        let mut conns = self.conns.lock_or_recover();
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
    pub(super) async fn call(
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

    pub(super) fn others(&self) -> Vec<GroupMember> {
        self.def()
            .members
            .into_iter()
            .filter(|m| m.serial != self.me)
            .collect()
    }

    /// Brings one peer up to date in both directions, as far as its version
    /// vector says. Returns whether the peer answered.
    pub(super) async fn sync_with(
        &self,
        p: &ActivePartition,
        member: &GroupMember,
        deadline: Duration,
    ) -> bool {
        let def = self.def();
        let hb = PeerRequest::Heartbeat {
            group_id: def.id,
            epoch: def.epoch,
            state: self.state(p),
        };
        let (sent, sent_wall) = (Instant::now(), crate::now_ms());
        let (epoch, theirs) = match self.call(member, hb, deadline).await {
            Ok(PeerResponse::HeartbeatAck { epoch, state }) => (epoch, state),
            _ => return false,
        };
        let reading = detector::measure_clock(sent_wall, sent.elapsed(), theirs.wall_ms, self.clock_anchor());
        self.set_peer(member.serial, |s| s.clock = Some(reading));
        self.seen(member.serial, &def.label, theirs.clone());
        if epoch < def.epoch {
            let _ = self
                .call(member, PeerRequest::GroupUpdate { group: def.clone() }, deadline)
                .await;
        }
        let their_vv = VersionVector(theirs.version_vector.iter().copied().collect());
        // Pull what they have and we lack; from their snapshot, once, if
        // their log no longer holds it.
        let mut snapshot_taken = false;
        let mine = p.version_vector();
        let missing: u64 = their_vv
            .0
            .iter()
            .map(|(o, s)| s.saturating_sub(mine.get(*o)))
            .sum();
        if snapshot_is_quicker(missing, theirs.live_objects)
            && self.peer_clock_refused(member.serial).is_none()
        {
            snapshot_taken = true;
            self.catch_up_by_snapshot(p, member, deadline).await;
        }
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
                    // Not from a peer whose clock is off: its stamps would
                    // win over later writes (its pushes are refused too).
                    Ok(PeerResponse::Compacted { .. })
                        if !snapshot_taken && self.peer_clock_refused(member.serial).is_none() =>
                    {
                        snapshot_taken = true;
                        if !self.catch_up_by_snapshot(p, member, deadline).await {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        // Everything the peer held when it answered is applied here: the
        // quorum lease may count from when the heartbeat was sent.
        if p.version_vector().covers(&their_vv) {
            self.set_peer(member.serial, |s| s.caught_up_as_of = Some(sent));
        }
        // Push what we have and they lack, as a write does.
        let covered = self
            .push_until_covered(p, member, &p.version_vector(), &def, deadline)
            .await;
        self.set_peer(member.serial, |s| s.caught_up(covered));
        true
    }

    /// Records an answer from a peer: it is alive, and if it was down, it has recovered.
    pub(super) fn seen(&self, serial: u64, label: &str, state: ReplicaState) {
        let mut event = None;
        self.set_peer(serial, |s| event = s.answered(state, Instant::now()));
        if let Some(e) = event {
            self.ha_log.event(label, serial, e);
        }
    }

    /// Records a failed exchange; the detector decides whether the peer is
    /// now down, or a recovery attempt failed.
    pub(super) fn missed(&self, serial: u64, label: &str, started: Instant) {
        let mut event = None;
        self.set_peer(serial, |s| event = s.failed(started, Instant::now()));
        if let Some(e) = event {
            self.ha_log.event(label, serial, e);
        }
    }

    fn peers_now(&self) -> Peers {
        self.peers.lock_or_recover().clone()
    }

    /// After a local write: pushes what each peer lacks, to all of them in
    /// parallel, and waits until they have it (committed), at most the
    /// replication timeout.
    ///
    /// - `AllReachable` pushes to the peers in step. Once the first has
    ///   answered, the others get a short grace (`detector::grace`): a peer
    ///   far slower than its siblings is a straggler. Peers that miss the
    ///   deadline or the grace are marked lagging and are not waited for
    ///   again until anti-entropy has brought them back in step, so one slow,
    ///   stopped or unreachable member cannot stall writes.
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
        let target_serials = detector::write_targets(&def, self.me, &self.peers_now());
        let targets: Vec<&GroupMember> = def
            .members
            .iter()
            .filter(|m| target_serials.contains(&m.serial))
            .collect();
        let mut answered = HashSet::new();
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
                        let enough = !needs_majority || detector::majority_holds(def, self.me, &answered);
                        if enough && !grace_started {
                            grace_started = true;
                            deadline = deadline.min(Instant::now() + detector::grace(started.elapsed()));
                        }
                    }
                    Ok(Some((_, false))) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            for m in targets.iter().filter(|m| !answered.contains(&m.serial)) {
                self.set_peer(m.serial, PeerStatus::missed_a_write);
            }
        }
        self.wake.notify_one();
        if needs_majority && !detector::majority_holds(&def, self.me, &answered) {
            return Err(TokenError::NoQuorum(format!(
                "write not acknowledged: the write concern is quorum and only {} of {} members confirmed it \
                 (the others were unreachable or slower than the replication timeout, {} ms); it stays on this \
                 member and reaches the others when they are back",
                1 + answered.len(),
                detector::voters(&def),
                def.replication_timeout_ms
            )));
        }
        Ok(())
    }

    /// Pushes to one peer what `mine` has and it lacks, batch by batch, until
    /// its acknowledged state covers `mine`. An earlier push (perhaps another
    /// write's, queued on the same connection) may already have delivered
    /// it: concurrent writes, and the heartbeat's anti-entropy, share pushes.
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
            // So far behind that it is quicker to take a snapshot, which it
            // does when it next heartbeats this member (`sync_with`).
            let missing: u64 = mine.0.iter().map(|(o, s)| s.saturating_sub(theirs.get(*o))).sum();
            if snapshot_is_quicker(missing, p.object_count() as u64) {
                return false;
            }
            if behind_before.as_ref() == Some(&behind) {
                // It acknowledged the last round but took none of it.
                return false;
            }
            behind_before = Some(behind.clone());
            for (origin, after) in behind {
                // What the log no longer holds, the peer pulls as a snapshot.
                let ops = match self.outgoing(p, origin, after, BATCH) {
                    Ok(Outgoing::Ops(o)) if !o.is_empty() => o,
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

    /// Sends a new group definition to every other member; heartbeats repeat
    /// it to anyone who misses it.
    pub(super) async fn broadcast_definition(&self, def: &GroupDef) {
        for m in def.members.iter().filter(|m| m.serial != self.me) {
            let _ = self
                .call(
                    m,
                    PeerRequest::GroupUpdate { group: def.clone() },
                    Duration::from_secs(2),
                )
                .await;
        }
    }

    /// A standby member serves no requests while an active member is up.
    pub fn serving_allowed(&self) -> TokenResult<()> {
        // On every request: look without copying the definition.
        let standby = {
            let def = self.def.read_or_recover();
            def.member(self.me).is_some_and(|m| m.standby)
        };
        if !standby {
            return Ok(());
        }
        let def = self.def();
        if detector::standby_must_wait(&def, self.me, &self.peers_now()) {
            return Err(TokenError::DeviceError(format!(
                "this member is a standby of HA group '{}' and serves no requests while an active member is up",
                def.label
            )));
        }
        Ok(())
    }

    /// Whether this member may check a PIN now: only once caught up with
    /// every peer it can hear (`detector::catching_up_with`), so that a
    /// member back from an outage never checks a PIN against the verifier or
    /// the failure count it missed a change of. It waits for that a little
    /// (anti-entropy is woken at once), then refuses as `NoQuorum`, which
    /// the HA slot answers by asking another member.
    pub async fn login_gate(&self, p: &ActivePartition) -> TokenResult<()> {
        const PATIENCE: Duration = Duration::from_millis(3000);
        let started = Instant::now();
        loop {
            let behind =
                detector::catching_up_with(&self.def(), self.me, &p.version_vector(), &self.peers_now());
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

    /// This partition's readiness facts for `GET /health/ready`.
    pub fn health_of(&self, p: &ActivePartition) -> crate::health::PartitionHealth {
        let def = self.def();
        let peers = self.peers_now();
        crate::health::PartitionHealth {
            partition: p.name.clone(),
            group: Some(def.label.clone()),
            standby: detector::standby_must_wait(&def, self.me, &peers),
            cut_off: detector::quorum_refusal(&def, self.me, &peers).is_some(),
            catching_up_with: detector::catching_up_with(&def, self.me, &p.version_vector(), &peers),
        }
    }

    /// Whether a write may go ahead under the group's write concern, and
    /// with this member's clock (`detector::clock_refusal`). Both refusals
    /// are `NoQuorum`, which the HA slot answers by asking another member.
    /// A peer whose clock has not been compared yet (just after this member
    /// started or joined) is waited for a little, anti-entropy woken at once.
    pub async fn write_allowed(&self) -> TokenResult<()> {
        const PATIENCE: Duration = Duration::from_millis(2000);
        let started = Instant::now();
        loop {
            let def = self.def();
            let peers = self.peers_now();
            if let Some((reachable, voters)) = detector::quorum_refusal(&def, self.me, &peers) {
                return Err(TokenError::NoQuorum(format!(
                    "write refused: write concern is quorum and only {reachable} of {voters} members are reachable"
                )));
            }
            let anchor = self.clock_anchor();
            let refusal =
                detector::clock_refusal(&def, self.me, &peers, anchor, self.rules.max_clock_offset_ms);
            let Some(refusal) = refusal else {
                return Ok(());
            };
            self.wake.notify_one();
            let waiting = matches!(refusal, detector::ClockRefusal::NotCompared(_));
            if !waiting || started.elapsed() >= PATIENCE {
                let why = self.describe_clock_refusal(&refusal);
                return Err(TokenError::NoQuorum(format!("write refused: {why}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Why this member's clock keeps it from writing, in words.
    fn describe_clock_refusal(&self, refusal: &detector::ClockRefusal) -> String {
        let max = self.rules.max_clock_offset_ms;
        match refusal {
            detector::ClockRefusal::NotCompared(serials) => {
                format!("this member has not compared its clock with members {serials:?} of its group yet")
            }
            detector::ClockRefusal::Outvoted { agreeing, known, far } => format!(
                "this member's clock is more than the maximum offset ({max} ms) off from {}; it agrees \
                 with only {agreeing} of the {known} members it compared with (peer minus this member: {})",
                if far.len() == 1 { "a peer" } else { "its peers" },
                far.iter()
                    .map(|(serial, ms)| format!("{serial}: {ms:+} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Whether this member may use a token key or answer for a token
    /// object's attributes now. Under `quorum` it must hold the lease
    /// (`detector::lease`): a member that has not caught up with a majority
    /// of its group within the lease time may have missed the destroy of
    /// the key it is asked to use, or a change of the object.
    pub fn key_use_allowed(&self) -> TokenResult<()> {
        let lease_for = self.rules.quorum_lease();
        // On every key operation: look under the locks, copying nothing.
        let def = self.def.read_or_recover();
        if def.write_concern != WriteConcern::Quorum {
            return Ok(());
        }
        let lease = detector::lease(&def, self.me, &self.peers.lock_or_recover(), lease_for);
        drop(def);
        let held = match lease {
            detector::Lease::NotNeeded => return Ok(()),
            detector::Lease::Until(until) => Instant::now() < until,
            detector::Lease::Missing => false,
        };
        if held {
            return Ok(());
        }
        self.wake.notify_one();
        Err(TokenError::NoQuorum(format!(
            "refused: the write concern is quorum and this member has not caught up with a majority of its \
             group within the lease ({} ms), so it may have missed a destroy or a change",
            lease_for.as_millis()
        )))
    }

    /// Whether a peer's clock is further off than the maximum offset from
    /// this member's: its pushes are refused (their stamps would win over
    /// writes made after them), and it is alerted.
    pub(super) fn peer_clock_refused(&self, serial: u64) -> Option<i64> {
        let c = self.peer(serial).clock?;
        let anchor = self.clock_anchor();
        c.beyond(anchor, self.rules.max_clock_offset_ms)
            .then(|| c.offset_now(anchor))
    }

    /// The group's status as this member sees it.
    pub fn status(&self, p: &ActivePartition) -> GroupStatus {
        let peers = self.peers_now();
        let mut behind = self.behind_since.lock_or_recover();
        let def = self.def();
        let mut status =
            super::view::group_status(&def, self.me, &self.state(p), &peers, &mut behind, Instant::now());
        let anchor = self.clock_anchor();
        for m in &mut status.members {
            m.clock_offset_ms = peers
                .get(&m.serial)
                .and_then(|s| s.clock)
                .map(|c| c.offset_now(anchor));
        }
        let max = self.rules.max_clock_offset_ms;
        status.clock_problems = detector::far_clocks(&def, self.me, &peers, anchor, max)
            .into_iter()
            .map(|(serial, ms)| {
                format!(
                    "member {serial}'s clock is {ms:+} ms off from this member's (maximum {max} ms); refused"
                )
            })
            .collect();
        let refusal = detector::clock_refusal(&def, self.me, &peers, anchor, max);
        if let Some(outvoted @ detector::ClockRefusal::Outvoted { .. }) = refusal {
            let why = self.describe_clock_refusal(&outvoted);
            status
                .clock_problems
                .push(format!("member {} takes no writes: {why}", self.me));
            status.own_clock_off = true;
        }
        status
    }

    /// How far this member may compact its log now (`detector::compaction_floor`).
    pub fn compaction_floor(&self, p: &ActivePartition) -> VersionVector {
        detector::compaction_floor(
            &self.def(),
            self.me,
            &p.version_vector(),
            &self.peers_now(),
            self.clock_origin,
            Instant::now(),
            self.rules.log_retention(),
        )
    }

    /// The background loop: heartbeats and anti-entropy with every peer.
    pub(super) async fn run(self: Arc<Self>) {
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
            let serials: Vec<u64> = others.iter().map(|m| m.serial).collect();
            let pause = detector::next_pause(&self.peers_now(), &serials, Instant::now());
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }
}
