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
        domain_secret: DomainSecret,
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
        /// The cloning-domain secret, checked against this member's before the
        /// join. Required when this member was initialised from shares.
        domain: Option<DomainSecret>,
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
    /// Entries of this member's audit journal after entry `after`, at most `limit`.
    JournalRead {
        after: u64,
        limit: u32,
    },
    /// The next part of an encrypted backup of the partition (its states,
    /// tombstones included, its policies and its PIN verifiers): the file's
    /// head and first chunk for no cursor, then the chunk after the cursor
    /// each answer gives, until it gives none (needs the SO, the domain secret
    /// and the partition-owner secret; `crate::backup_file` has the format).
    PartitionBackup {
        name: String,
        owner_secret: Secret,
        domain: DomainSecret,
        cursor: Option<BackupCursor>,
    },
    /// Restores a backup made by hahsm before chunked backups (format 1, one
    /// record) as a new partition `name` on this member.
    PartitionRestore {
        name: String,
        owner_secret: Secret,
        domain: DomainSecret,
        backup: Blob,
    },
    /// Starts restoring a chunked backup as the new partition `name` on this
    /// member, from the file's head (needs the SO, the domain secret and the
    /// partition-owner secret the backup was made with). The chunks follow on
    /// the same connection, in order, then `PartitionRestoreEnd`; a restore
    /// not ended on its connection leaves no partition behind.
    PartitionRestoreBegin {
        name: String,
        owner_secret: Secret,
        domain: DomainSecret,
        head: Blob,
    },
    /// The next chunk record of the backup being restored on this connection.
    PartitionRestoreChunk {
        record: Blob,
    },
    /// Ends the restore on this connection: only once every chunk, the last
    /// included, has opened is the partition's state complete.
    PartitionRestoreEnd,
}

/// Where a backup stands between two parts: the file's header (whose salt
/// derives the key), the next chunk's number, the OUID it starts after and
/// how many states the earlier chunks held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCursor {
    pub header: Blob,
    pub index: u64,
    pub after: [u8; 16],
    pub done: u64,
}

/// The cloning-domain secret as the operator gives it: the whole secret file,
/// or M shares of it (`hahsm domain split`), which the member combines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DomainSecret {
    Whole(Secret),
    /// Each share file's content, as written by `hahsm domain split`.
    Shares(Vec<Secret>),
}

/// Opaque bytes (an encrypted backup) that print as their length only, so a
/// journaled request stays short.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Blob(pub Vec<u8>);

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl AdminRequest {
    /// The request's name, e.g. `PartitionCreate`.
    pub fn name(&self) -> String {
        format!("{self:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// The request with every secret shown as `<redacted>`: its `Debug` form,
    /// since `Secret` prints no value and `Blob` only its length.
    pub fn redacted(&self) -> String {
        format!("{self:?}").replace("Secret(<redacted>)", "<redacted>")
    }

    /// Whether the request only reads; those are not journaled.
    pub fn is_read_only(&self) -> bool {
        use AdminRequest as R;
        match self {
            R::Status
            | R::HsmShowPolicies
            | R::Fingerprint
            | R::PartitionShowPolicies { .. }
            | R::PartitionShowContents { .. }
            | R::PartitionList
            | R::HaShow { .. }
            | R::ClientList
            | R::JournalRead { .. } => true,
            R::HsmInit { .. }
            | R::HsmLogin { .. }
            | R::HsmLogout
            | R::HsmChangePolicy { .. }
            | R::FactoryReset
            | R::RegenCert { .. }
            | R::PartitionCreate { .. }
            | R::PartitionChangePin { .. }
            | R::PartitionChangeSoPin { .. }
            | R::PartitionActivate { .. }
            | R::PartitionDeactivate { .. }
            | R::PartitionChangePolicy { .. }
            | R::PartitionClear { .. }
            | R::PartitionDelete { .. }
            | R::HaPrepare { .. }
            | R::HaCreateGroup { .. }
            | R::HaAddMember { .. }
            | R::HaRemoveMember { .. }
            | R::HaSynchronize { .. }
            | R::ClientRegister { .. }
            | R::ClientRemove { .. }
            | R::ClientAssignPartition { .. }
            | R::ClientRevokePartition { .. }
            | R::PartitionBackup { cursor: None, .. }
            | R::PartitionRestore { .. }
            | R::PartitionRestoreBegin { .. }
            | R::PartitionRestoreEnd => false,
            // A backup's first part is journaled; the parts after it and a
            // restore's chunks belong to that entry (or to its Begin and End).
            R::PartitionBackup { cursor: Some(_), .. } | R::PartitionRestoreChunk { .. } => true,
        }
    }

    /// The object the request acts on, for the journal.
    pub fn object(&self) -> String {
        use AdminRequest as R;
        match self {
            R::Status | R::HsmShowPolicies | R::PartitionList | R::ClientList | R::JournalRead { .. } => {
                "member".into()
            }
            R::HsmInit { label, .. } => format!("hsm {label}"),
            R::HsmLogin { .. } | R::HsmLogout | R::FactoryReset => "hsm".into(),
            R::HsmChangePolicy { policy, .. } => format!("hsm policy {policy}"),
            R::RegenCert { .. } | R::Fingerprint => "server certificate".into(),
            R::PartitionCreate { name, .. }
            | R::PartitionChangePin { name, .. }
            | R::PartitionChangeSoPin { name, .. }
            | R::PartitionActivate { name, .. }
            | R::PartitionDeactivate { name }
            | R::PartitionShowPolicies { name }
            | R::PartitionShowContents { name }
            | R::PartitionClear { name }
            | R::PartitionDelete { name }
            | R::PartitionBackup { name, .. }
            | R::PartitionRestore { name, .. }
            | R::PartitionRestoreBegin { name, .. } => format!("partition {name}"),
            R::PartitionRestoreChunk { .. } | R::PartitionRestoreEnd => "partition being restored".into(),
            R::PartitionChangePolicy { name, policy, .. } => format!("partition {name} policy {policy}"),
            R::HaPrepare { partition, .. } => format!("partition {partition}"),
            R::HaCreateGroup { label, .. }
            | R::HaAddMember { group: label, .. }
            | R::HaRemoveMember { group: label, .. }
            | R::HaSynchronize { group: label } => format!("group {label}"),
            R::HaShow { group } => format!("group {}", group.as_deref().unwrap_or("*")),
            R::ClientRegister { name, .. } | R::ClientRemove { name } => format!("client {name}"),
            R::ClientAssignPartition { client, partition }
            | R::ClientRevokePartition { client, partition } => {
                format!("client {client} partition {partition}")
            }
        }
    }
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
    /// Keys held parsed in the partition's key cache (0 when not activated).
    pub parsed_keys: u64,
    /// Keys parsed since the partition was activated: far more than
    /// `parsed_keys` under a steady load means the cache is too small.
    pub key_loads: u64,
    /// Store transactions that committed local writes since activation,
    /// and the local writes they held: their ratio is how many writes
    /// shared one sync to disk (group commit).
    pub write_commits: u64,
    pub writes_committed: u64,
    /// Operations in the op log, operations compacted out of it (their
    /// effects kept in the objects), and snapshots from peers installed
    /// since activation.
    pub log_entries: u64,
    pub log_compacted: u64,
    pub snapshots_installed: u64,
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
    /// Whether the member runs AWS-LC's FIPS module (the `fips` build).
    pub fips: bool,
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
    /// Journal lines as the member holds them, and where its journal ends.
    Journal {
        member: u64,
        hsm_label: String,
        lines: Vec<String>,
        head: crate::journal::JournalHead,
    },
    /// The next bytes of a backup file, the cursor to ask for the part after
    /// them (none: the file is complete), and the states written so far of
    /// the partition's total.
    BackupPart {
        bytes: Blob,
        cursor: Option<BackupCursor>,
        done: u64,
        total: u64,
    },
    /// A restore's progress: states restored so far, of the backup's total.
    RestoreProgress {
        done: u64,
        total: u64,
    },
    Error(String),
}

/// A member of an HA group, as another member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Heard from within the failure-detection window, and caught up.
    Alive,
    /// Heard from, but missing operations (or it missed a write deadline).
    Lagging,
    /// Silent for longer than the failure-detection window.
    Down,
    /// Alive, and a standby: it serves no requests while an active member is up.
    Standby,
}

impl MemberState {
    pub const ALL: [MemberState; 4] = [
        MemberState::Alive,
        MemberState::Lagging,
        MemberState::Down,
        MemberState::Standby,
    ];

    /// The state's name, as `ha show` and the metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Lagging => "lagging",
            MemberState::Down => "down",
            MemberState::Standby => "standby",
        }
    }
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// One member of an HA group, as `ha show --sync-status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMemberStatus {
    pub name: String,
    pub serial: u64,
    pub state: MemberState,
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
    /// Its wall clock minus this member's, in milliseconds, as last measured
    /// (None for this member itself, and for a peer not measured yet).
    pub clock_offset_ms: Option<i64>,
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
    /// One line per clock further off than the maximum offset: a peer this
    /// member refuses, or this member itself when it takes no writes.
    pub clock_problems: Vec<String>,
    /// This member's own clock is off from the majority: it takes no writes
    /// (one of `clock_problems` says so).
    pub own_clock_off: bool,
}
