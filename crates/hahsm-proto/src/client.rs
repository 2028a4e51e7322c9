//! Messages between a client (the CLI or the PKCS#11 module) and a member.
use crate::{Secret, WireError};
use hahsm_token::{AttrType, AttrValue, Mechanism, Ouid, Template};
use serde::{Deserialize, Serialize};

/// The first frame a client sends after the TLS handshake.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    /// Free text for the member's log, such as the program name.
    pub client_software: String,
}

/// The member's answer to `Hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Welcome {
    Accepted(MemberInfo),
    Refused(WireError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub protocol_version: u16,
    pub hsm_label: String,
    pub serial: u64,
    pub software_version: String,
    /// The name this member registered the client under.
    pub client_name: String,
}

/// A client operation id: chosen by the client for every write, so that a retry
/// after an ambiguous failure is applied once.
pub type OpId = [u8; 16];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    /// Milliseconds the client will wait; the member drops the request after it.
    pub deadline_ms: u32,
    /// When the client sent the request (its wall clock, ms since the Unix
    /// epoch). With `deadline_ms` it says when the client gives up, even if
    /// the request waited in a stopped member's socket: a member never
    /// applies a write after that (the client may have retried it elsewhere).
    pub issued_unix_ms: u64,
    pub request: Request,
}

/// Milliseconds since the Unix epoch on this host's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The id of the request answered; 0 for an error about the connection itself.
    pub id: u64,
    pub result: Result<Response, WireError>,
}

/// PKCS#11 user types, as on the wire.
pub const USER_SO: u64 = 0;
pub const USER_NORMAL: u64 = 1;
/// Re-authentication for a key with `CKA_ALWAYS_AUTHENTICATE`, after a user login.
pub const USER_CONTEXT_SPECIFIC: u64 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Ping,
    /// The partitions this client is assigned on the member.
    ListPartitions,
    Login {
        partition: String,
        user_type: u64,
        pin: Secret,
    },
    Logout {
        partition: String,
    },
    /// `C_SetPIN`: changes the PIN of the role logged in on this connection
    /// (the user's when none is).
    /// A group write: a retry with the same `op_id` is answered `Done`.
    SetPin {
        partition: String,
        old_pin: Secret,
        new_pin: Secret,
        op_id: OpId,
    },
    /// `C_InitPIN`: the partition SO sets the user PIN, which also clears a
    /// lockout. A group write, as `SetPin`.
    InitPin {
        partition: String,
        new_pin: Secret,
        op_id: OpId,
    },
    CreateObject {
        partition: String,
        template: Template,
        op_id: OpId,
    },
    /// Imports a private key given as PKCS#8 (or PKCS#1/SEC1) DER, with its
    /// public half; `template` applies to both objects.
    ImportKeyPair {
        partition: String,
        private_key_der: Secret,
        template: Template,
        op_id: OpId,
    },
    GenerateKey {
        partition: String,
        mechanism: Mechanism,
        template: Template,
        op_id: OpId,
    },
    GenerateKeyPair {
        partition: String,
        mechanism: Mechanism,
        public_template: Template,
        private_template: Template,
        op_id: OpId,
    },
    FindObjects {
        partition: String,
        template: Template,
        limit: u32,
        /// For how many of the objects found (the first ones) to send their
        /// attributes too (`Response::Found`), so that a look-up of a key
        /// and the reading of its attributes take one round trip. 0: none,
        /// and the answer is `Response::Objects`.
        read: u32,
    },
    GetAttributes {
        partition: String,
        object: Ouid,
        types: Vec<AttrType>,
    },
    SetAttributes {
        partition: String,
        object: Ouid,
        template: Template,
        op_id: OpId,
    },
    CopyObject {
        partition: String,
        object: Ouid,
        template: Template,
        op_id: OpId,
    },
    DestroyObject {
        partition: String,
        object: Ouid,
        op_id: OpId,
    },
    Sign {
        partition: String,
        key: Ouid,
        mechanism: Mechanism,
        data: Vec<u8>,
    },
    Verify {
        partition: String,
        key: Ouid,
        mechanism: Mechanism,
        data: Vec<u8>,
        signature: Vec<u8>,
    },
    Encrypt {
        partition: String,
        key: Ouid,
        mechanism: Mechanism,
        data: Vec<u8>,
    },
    Decrypt {
        partition: String,
        key: Ouid,
        mechanism: Mechanism,
        data: Vec<u8>,
    },
    WrapKey {
        partition: String,
        wrapping_key: Ouid,
        key: Ouid,
        mechanism: Mechanism,
    },
    UnwrapKey {
        partition: String,
        unwrapping_key: Ouid,
        mechanism: Mechanism,
        wrapped: Vec<u8>,
        template: Template,
        op_id: OpId,
    },
    DeriveKey {
        partition: String,
        base_key: Ouid,
        mechanism: Mechanism,
        template: Template,
        op_id: OpId,
    },
    GenerateRandom {
        len: u32,
    },
    Digest {
        /// The partition whose policy decides which digests are offered.
        partition: String,
        mechanism: Mechanism,
        data: Vec<u8>,
    },
    /// The HA group this partition belongs to, as the member knows it: a
    /// client learns the group from any one member and follows its changes.
    GetGroup {
        partition: String,
    },
    /// The partition's replication progress on this member: for each origin,
    /// the highest operation applied. A returning member re-enters the HA
    /// slot's rotation only once its progress covers a serving member's.
    Progress {
        partition: String,
    },
    /// Ends session objects of this connection whose session closed, logged
    /// in or not (`C_DestroyObject` needs a login; closing a session does not).
    ReleaseSessionObjects {
        partition: String,
        objects: Vec<Ouid>,
    },
    /// A digest whose input includes secret keys' values (`C_DigestKey`):
    /// `data`, with the value of each key inserted at its offset into
    /// `data` (offsets in order). Only the digest leaves the member.
    DigestKeys {
        partition: String,
        mechanism: Mechanism,
        data: Vec<u8>,
        keys: Vec<(u64, Ouid)>,
    },
    /// `C_EncapsulateKey` (PKCS#11 3.2): a shared secret made against an
    /// ML-KEM public key, kept on the member as a new secret key made from
    /// `template`; the answer is [`Response::Encapsulated`].
    EncapsulateKey {
        partition: String,
        public_key: Ouid,
        mechanism: Mechanism,
        template: Template,
        op_id: OpId,
    },
    /// `C_DecapsulateKey`: the shared secret that `ciphertext` carries,
    /// recovered with an ML-KEM private key and kept as a new secret key.
    DecapsulateKey {
        partition: String,
        private_key: Ouid,
        mechanism: Mechanism,
        ciphertext: Vec<u8>,
        template: Template,
        op_id: OpId,
    },
}

impl Request {
    /// Whether the request changes the member's state (objects, PINs or the
    /// login counters): such a request must run to completion once started.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Login { .. }
                | Request::SetPin { .. }
                | Request::InitPin { .. }
                | Request::CreateObject { .. }
                | Request::ImportKeyPair { .. }
                | Request::GenerateKey { .. }
                | Request::GenerateKeyPair { .. }
                | Request::SetAttributes { .. }
                | Request::CopyObject { .. }
                | Request::DestroyObject { .. }
                | Request::UnwrapKey { .. }
                | Request::DeriveKey { .. }
                | Request::EncapsulateKey { .. }
                | Request::DecapsulateKey { .. }
        )
    }

    /// The name used in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::ListPartitions => "list-partitions",
            Request::Login { .. } => "login",
            Request::Logout { .. } => "logout",
            Request::SetPin { .. } => "set-pin",
            Request::InitPin { .. } => "init-pin",
            Request::CreateObject { .. } => "create-object",
            Request::ImportKeyPair { .. } => "import-key-pair",
            Request::GenerateKey { .. } => "generate-key",
            Request::GenerateKeyPair { .. } => "generate-key-pair",
            Request::FindObjects { .. } => "find-objects",
            Request::GetAttributes { .. } => "get-attributes",
            Request::SetAttributes { .. } => "set-attributes",
            Request::CopyObject { .. } => "copy-object",
            Request::DestroyObject { .. } => "destroy-object",
            Request::Sign { .. } => "sign",
            Request::Verify { .. } => "verify",
            Request::Encrypt { .. } => "encrypt",
            Request::Decrypt { .. } => "decrypt",
            Request::WrapKey { .. } => "wrap-key",
            Request::UnwrapKey { .. } => "unwrap-key",
            Request::DeriveKey { .. } => "derive-key",
            Request::GenerateRandom { .. } => "generate-random",
            Request::Digest { .. } => "digest",
            Request::GetGroup { .. } => "get-group",
            Request::Progress { .. } => "progress",
            Request::ReleaseSessionObjects { .. } => "release-session-objects",
            Request::DigestKeys { .. } => "digest-keys",
            Request::EncapsulateKey { .. } => "encapsulate-key",
            Request::DecapsulateKey { .. } => "decapsulate-key",
        }
    }
}

/// One attribute in a `GetAttributes` answer, with PKCS#11's per-attribute outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrResult {
    Value(AttrValue),
    /// The attribute exists but is sensitive or unextractable.
    Sensitive,
    /// The object has no such attribute.
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub name: String,
    pub serial: u64,
    pub activated: bool,
    pub object_count: u64,
    pub pin_locked: bool,
    /// Whether the partition SO has a PIN, so `CKU_SO` logins can work.
    pub so_pin_set: bool,
    /// The token flags the PINs' state sets (`CKF_USER_PIN_COUNT_LOW`,
    /// `_FINAL_TRY`, `_LOCKED` and the `CKF_SO_PIN_*` ones), from the
    /// group's failed-login count as this member has it.
    pub pin_flags: u64,
    /// Whether the partition's `allow-legacy-mechanisms` policy is on, so
    /// the module lists 3DES, SHA-1 HMAC, MD5 and RSA-1024.
    pub legacy_mechanisms: bool,
    /// Whether the member runs AWS-LC's FIPS module, so the module lists
    /// only what that module approves (`mechanism::offered`).
    pub fips: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Partitions(Vec<PartitionInfo>),
    Done,
    Object(Ouid),
    KeyPair {
        public: Ouid,
        private: Ouid,
    },
    Objects(Vec<Ouid>),
    /// A `FindObjects` with `read`: the objects, and the attributes of the
    /// first of them (never secret components, which stay behind
    /// `GetAttributes`), in the same order.
    Found {
        objects: Vec<Ouid>,
        attributes: Vec<Template>,
    },
    Attributes(Vec<(AttrType, AttrResult)>),
    Bytes(Vec<u8>),
    Verified,
    /// The HA group of a partition: its members, their client addresses and
    /// pinned fingerprints; `None` when the partition is in no group.
    Group(Option<crate::peer::GroupDef>),
    /// (origin member id, highest sequence applied) for each origin.
    Progress(Vec<(u64, u64)>),
    /// An `EncapsulateKey`'s new secret key and the ciphertext to send to
    /// the holder of the private key.
    Encapsulated {
        object: Ouid,
        ciphertext: Vec<u8>,
    },
}
