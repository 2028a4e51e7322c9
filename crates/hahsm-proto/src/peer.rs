//! Messages between the members of an HA group, over the peer link (mutual
//! TLS on the member's peer listener). Secrets inside operations travel sealed
//! under the group's replication key, which needs both the cloning-domain
//! secret and the partition-owner secret.
use crate::WireError;
use hahsm_replica::ObjectState;
use hahsm_token::oplog::Op;
use hahsm_token::Ouid;
use serde::{Deserialize, Serialize};

/// How many members must hold a write before the caller hears it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteConcern {
    /// Durable locally and on every member that is reachable, waiting at most
    /// the replication timeout; members that miss it are caught up later.
    AllReachable,
    /// Acknowledged only once a majority of the voting members holds the
    /// write; refused before it is made unless a majority is reachable.
    Quorum,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The member's appliance serial, also its origin id in op logs.
    pub serial: u64,
    pub hsm_label: String,
    pub partition_serial: u64,
    /// host:port of the member's peer listener.
    pub peer_address: String,
    /// SHA-256 fingerprint of the member's certificate, pinned by its peers.
    pub fingerprint: String,
    /// host:port of the member's client link, for clients that follow the group.
    pub client_address: String,
    pub standby: bool,
}

/// The group definition: stored on every member, replicated by the members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDef {
    pub id: [u8; 16],
    pub label: String,
    /// Stays the same when members come and go.
    pub serial: u64,
    /// The partition name, the same on every member.
    pub partition: String,
    /// Bumped on every change; the highest epoch wins.
    pub epoch: u64,
    pub members: Vec<GroupMember>,
    pub write_concern: WriteConcern,
    pub replication_timeout_ms: u64,
}

impl GroupDef {
    pub fn member(&self, serial: u64) -> Option<&GroupMember> {
        self.members.iter().find(|m| m.serial == serial)
    }

    pub fn member_by_fingerprint(&self, fp_hex: &str) -> Option<&GroupMember> {
        self.members
            .iter()
            .find(|m| m.fingerprint.replace(':', "").eq_ignore_ascii_case(fp_hex))
    }
}

/// Proof that a member holds the same secrets, without revealing them: one
/// HMAC under a key derived from each secret, over both nonces and both
/// members' certificate fingerprints (so a proof cannot be relayed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub domain: [u8; 32],
    pub owner: [u8; 32],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRequestFrame {
    pub id: u64,
    pub deadline_ms: u32,
    pub request: PeerRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerResponseFrame {
    pub id: u64,
    pub result: Result<PeerResponse, WireError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// First step of adding a member: the group's member asks the candidate to
    /// prove it holds the same domain and partition-owner secrets.
    JoinChallenge { group: GroupDef, nonce: [u8; 32] },
    /// Second step: the group's member proves the same to the candidate and
    /// hands it the group definition that includes it.
    JoinConfirm {
        group: GroupDef,
        candidate_nonce: [u8; 32],
        proof: Proof,
    },
    /// Liveness and the sender's replication state.
    Heartbeat {
        group_id: [u8; 16],
        epoch: u64,
        state: ReplicaState,
    },
    /// "Send me the operations of this origin after this sequence number."
    Pull {
        group_id: [u8; 16],
        origin: u64,
        after_seq: u64,
        limit: u32,
    },
    /// New operations, in per-origin sequence order.
    Push { group_id: [u8; 16], ops: Vec<Op> },
    /// A newer group definition.
    GroupUpdate { group: GroupDef },
    /// "Send me a page of your snapshot: your states after this OUID" (from
    /// the first for `None`), asked after a pull was answered `Compacted`.
    Snapshot {
        group_id: [u8; 16],
        after: Option<Ouid>,
        limit: u32,
    },
}

/// A member's replication state, as heartbeats carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    pub serial: u64,
    pub version_vector: Vec<(u64, u64)>,
    pub live_objects: u64,
    pub digest: [u8; 32],
    /// The member's HSM and partition policies, so every member can tell
    /// when the group's policies drift apart, with no operator asking.
    pub policies: PolicySnapshot,
    /// The member's metrics URL (`http://host:port/metrics`), or empty.
    pub metrics: String,
    /// The member's wall clock (milliseconds since the Unix epoch) when it
    /// made this state: the heartbeat's sender compares it with its own to
    /// measure the clock offset between them (docs/replication.md §8.1).
    pub wall_ms: u64,
}

/// One member's policy values: `(policy number, value)`, sorted by number.
/// Empty when the member has not been heard from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    pub hsm: Vec<(u32, u64)>,
    pub partition: Vec<(u32, u64)>,
}

impl PolicySnapshot {
    pub fn is_empty(&self) -> bool {
        self.hsm.is_empty() && self.partition.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerResponse {
    JoinProof {
        member: GroupMember,
        nonce: [u8; 32],
        proof: Proof,
    },
    Joined,
    HeartbeatAck {
        epoch: u64,
        state: ReplicaState,
    },
    Ops {
        ops: Vec<Op>,
        more: bool,
    },
    PushAck {
        state: ReplicaState,
    },
    Done,
    /// The answer to a pull for operations the log no longer holds: up to
    /// `floor`, the origin's operations are compacted away; ask for the
    /// snapshot.
    Compacted {
        origin: u64,
        floor: u64,
    },
    /// One page of a snapshot: states in OUID order, each secret sealed under
    /// the group's replication key; the version vector the sender's state
    /// covered when it read the page; the OUID to ask the next page after,
    /// if more remain.
    Snapshot {
        covers: Vec<(u64, u64)>,
        states: Vec<(Ouid, ObjectState<Vec<u8>>)>,
        next: Option<Ouid>,
    },
}

impl PeerRequest {
    pub fn name(&self) -> &'static str {
        match self {
            PeerRequest::JoinChallenge { .. } => "join-challenge",
            PeerRequest::JoinConfirm { .. } => "join-confirm",
            PeerRequest::Heartbeat { .. } => "heartbeat",
            PeerRequest::Pull { .. } => "pull",
            PeerRequest::Push { .. } => "push",
            PeerRequest::GroupUpdate { .. } => "group-update",
            PeerRequest::Snapshot { .. } => "snapshot",
        }
    }
}
