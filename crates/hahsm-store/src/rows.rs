//! The rows the store keeps. Their blobs are opaque to the store; several hold sealed
//! or wrapped key material, so `Debug` prints their lengths, never their bytes.
use std::fmt;

/// Prints a blob as its length only.
struct Len(usize);

impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// Prints an optional blob as its length only.
struct OptLen(Option<usize>);

impl fmt::Debug for OptLen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "Some(<{n} bytes>)"),
            None => f.write_str("None"),
        }
    }
}

/// Prints a 16-byte id (an OUID or a client operation id) as 32 hex digits. Ids are not secret.
struct Id16<'a>(&'a [u8; 16]);

impl fmt::Debug for Id16<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One partition (one PKCS#11 token).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PartitionRow {
    /// Assigned by [`Store::create_partition`](crate::Store::create_partition), ignored
    /// there, and never reused after a partition is deleted.
    pub id: i64,
    pub name: String,
    pub serial: u64,
    /// The partition master key, wrapped under the security officer's key material.
    pub wrapped_pmk: Vec<u8>,
    /// The partition master key sealed to this host, for auto-activation.
    pub sealed_pmk: Option<Vec<u8>>,
    pub pin_salt: Vec<u8>,
    pub sealed_pin: Option<Vec<u8>>,
    pub failed_logins: u32,
    /// Opaque to the store.
    pub policies: Vec<u8>,
    pub activated: bool,
    /// Digest of the partition's state, kept current by [`Write::digest`].
    pub digest: Vec<u8>,
    /// Opaque to the store, for later use.
    pub extra: Vec<u8>,
}

impl fmt::Debug for PartitionRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("serial", &self.serial)
            .field("wrapped_pmk", &Len(self.wrapped_pmk.len()))
            .field("sealed_pmk", &OptLen(self.sealed_pmk.as_ref().map(Vec::len)))
            .field("pin_salt", &Len(self.pin_salt.len()))
            .field("sealed_pin", &OptLen(self.sealed_pin.as_ref().map(Vec::len)))
            .field("failed_logins", &self.failed_logins)
            .field("policies", &Len(self.policies.len()))
            .field("activated", &self.activated)
            .field("digest", &Len(self.digest.len()))
            .field("extra", &Len(self.extra.len()))
            .finish()
    }
}

/// A client machine allowed to connect, identified by its certificate fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ClientRow {
    pub name: String,
    /// Compared without regard to case; stored as given.
    pub fingerprint_hex: String,
    pub hostname: String,
}

/// One object of a partition: its attributes and secret, sealed by the daemon.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ObjectRow {
    pub ouid: [u8; 16],
    pub version: u64,
    pub sealed: Vec<u8>,
}

impl fmt::Debug for ObjectRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectRow")
            .field("ouid", &Id16(&self.ouid))
            .field("version", &self.version)
            .field("sealed", &Len(self.sealed.len()))
            .finish()
    }
}

/// One entry of the durable operation log.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct OpRow {
    /// The local log index, assigned by [`Store::commit`](crate::Store::commit): it grows
    /// with each commit across the whole store and is never reused. Ignored on commit.
    pub index: u64,
    /// The member the operation started on.
    pub origin: u64,
    /// Per-origin sequence number. Above 0 it must be unique per (partition, origin),
    /// and at most `i64::MAX`; 0 means "none" and is not checked.
    pub seq: u64,
    pub hlc_wall: u64,
    pub hlc_logical: u32,
    pub client_op_id: Option<[u8; 16]>,
    pub kind: String,
    /// Opaque to the store.
    pub body: Vec<u8>,
}

impl fmt::Debug for OpRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpRow")
            .field("index", &self.index)
            .field("origin", &self.origin)
            .field("seq", &self.seq)
            .field("hlc_wall", &self.hlc_wall)
            .field("hlc_logical", &self.hlc_logical)
            .field("client_op_id", &self.client_op_id.as_ref().map(Id16))
            .field("kind", &self.kind)
            .field("body", &Len(self.body.len()))
            .finish()
    }
}

/// One atomic change to a partition, applied by [`Store::commit`](crate::Store::commit)
/// in this order: `clear`, `puts`, `deletes`, the `op` entry, the `digest`. An OUID that is
/// both put and deleted therefore ends up deleted.
#[derive(Clone, Debug, Default)]
pub struct Write {
    /// Remove every object of the partition first.
    pub clear: bool,
    /// Inserted, or replacing the row with the same OUID.
    pub puts: Vec<ObjectRow>,
    /// Removed if present; absent OUIDs are not an error.
    pub deletes: Vec<[u8; 16]>,
    pub op: OpRow,
    /// The partition's new state digest, if it changed.
    pub digest: Option<Vec<u8>>,
}
