//! Operator messages over the member's local admin socket (mode 0600), the
//! equivalent of the appliance's serial console.
use crate::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    Status,
    HsmInit {
        label: String,
        so_secret: Secret,
        domain_secret: Secret,
    },
    HsmLogin {
        so_secret: Secret,
    },
    HsmLogout,
    HsmShowPolicies,
    HsmChangePolicy {
        policy: String,
        value: u64,
    },
    /// Wipes every partition, client and secret; the member starts over.
    FactoryReset,
    RegenCert {
        common_name: String,
        subject_alt_names: Vec<String>,
    },
    Fingerprint,
    PartitionCreate {
        name: String,
        owner_secret: Secret,
        initial_pin: Option<Secret>,
    },
    /// Either the current PIN, or the partition-owner secret (which also clears a lockout).
    PartitionChangePin {
        name: String,
        old_pin: Option<Secret>,
        owner_secret: Option<Secret>,
        new_pin: Secret,
    },
    /// Sets the partition SO's PIN (PKCS#11 `CKU_SO` on the partition's token).
    PartitionChangeSoPin {
        name: String,
        owner_secret: Secret,
        new_pin: Secret,
    },
    PartitionActivate {
        name: String,
        owner_secret: Secret,
    },
    PartitionDeactivate {
        name: String,
    },
    PartitionShowPolicies {
        name: String,
    },
    PartitionChangePolicy {
        name: String,
        policy: String,
        value: u64,
    },
    PartitionShowContents {
        name: String,
    },
    PartitionClear {
        name: String,
    },
    PartitionDelete {
        name: String,
    },
    PartitionList,
    /// Derives and stores a partition's replication keys (SO logged in, owner secret given).
    HaPrepare {
        partition: String,
        owner_secret: Secret,
    },
    HaCreateGroup {
        label: String,
        partition: String,
        quorum: bool,
        replication_timeout_ms: u64,
    },
    HaAddMember {
        group: String,
        peer_address: String,
        fingerprint: String,
        standby: bool,
    },
    HaRemoveMember {
        group: String,
        serial: u64,
    },
    HaShow {
        group: Option<String>,
    },
    HaSynchronize {
        group: String,
    },
    ClientRegister {
        name: String,
        hostname: String,
        fingerprint: String,
    },
    ClientRemove {
        name: String,
    },
    ClientList,
    ClientAssignPartition {
        client: String,
        partition: String,
    },
    ClientRevokePartition {
        client: String,
        partition: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLine {
    pub number: u32,
    pub name: String,
    pub description: String,
    pub value: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSummary {
    pub name: String,
    pub serial: u64,
    pub activated: bool,
    pub auto_activation: bool,
    pub object_count: u64,
    pub failed_logins: u32,
    pub pin_locked: bool,
    pub so_pin_set: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSummary {
    pub ouid: String,
    pub class: String,
    pub key_type: String,
    pub label: String,
    pub id_hex: String,
    pub private: bool,
    pub sensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSummary {
    pub name: String,
    pub hostname: String,
    pub fingerprint: String,
    pub partitions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub initialized: bool,
    pub hsm_label: String,
    pub serial: u64,
    pub so_logged_in: bool,
    pub listen: String,
    pub fingerprint: String,
    pub software_version: String,
    /// The peer listener's address, if the member has one.
    pub peer_address: Option<String>,
    /// The metrics endpoint's URL, once it is bound.
    pub metrics: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminResponse {
    Done(String),
    Status(MemberStatus),
    Policies(Vec<PolicyLine>),
    Fingerprint(String),
    PartitionCreated {
        serial: u64,
        initial_pin: Option<Secret>,
    },
    Partitions(Vec<PartitionSummary>),
    Contents(Vec<ObjectSummary>),
    Clients(Vec<ClientSummary>),
    Groups(Vec<GroupStatus>),
    Error(String),
}

/// One member of an HA group, as `ha show --sync-status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMemberStatus {
    pub name: String,
    pub serial: u64,
    /// `alive`, `down`, `lagging` or `standby`.
    pub state: String,
    pub object_count: u64,
    /// Hex SHA-256 over the member's live objects and their attributes.
    pub digest: String,
    /// Per origin member, the last operation applied.
    pub version_vector: Vec<(u64, u64)>,
    pub peer_address: String,
    pub client_address: String,
    /// Operations the most advanced member known here has and this one lacks.
    pub lag_operations: u64,
    /// How long this member has lacked operations, in milliseconds (0 when it
    /// lacks none), as far as this member has observed.
    pub lag_ms: u64,
    /// Milliseconds since this member last heard from it (0 for itself;
    /// None if never).
    pub last_seen_ms: Option<u64>,
    /// Its HSM and partition policies, as its heartbeats last carried them.
    pub policies: crate::peer::PolicySnapshot,
    /// Its metrics URL, or empty when unknown.
    pub metrics: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group id, hex.
    pub id: String,
    pub label: String,
    pub serial: u64,
    pub partition: String,
    pub write_concern: String,
    pub members: Vec<GroupMemberStatus>,
    /// Every member alive, with the same version vector and digest.
    pub in_sync: bool,
    /// A member is down or lagging.
    pub degraded: bool,
    /// One line per HSM or partition policy whose value differs between
    /// members; empty when every member has the same policies.
    pub policy_drift: Vec<String>,
}
