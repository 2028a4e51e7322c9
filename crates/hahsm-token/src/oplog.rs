//! The operation-log model. Every change to a partition is one operation, written
//! in the same store transaction as the change itself; replication ships these.
use crate::attr::Template;
use crate::hlc::{Hlc, MemberId};
use crate::ouid::Ouid;
use serde::{Deserialize, Serialize};

/// Orders operations the same way on every member: by clock, then by origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub hlc: Hlc,
    pub origin: MemberId,
}

/// What an operation does. Secrets travel sealed: under the partition master key
/// in the local log, re-wrapped under the group's replication key on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpBody<S = Vec<u8>> {
    /// Create, generate, import, unwrap, copy and derive all end in this. A key
    /// pair is one operation with two objects, public first.
    Create {
        objects: Vec<NewObject<S>>,
    },
    SetAttributes {
        ouid: Ouid,
        attrs: Template,
    },
    Destroy {
        ouid: Ouid,
    },
    /// Clearing a partition destroys the objects the clearing member held, and
    /// names them: objects created elsewhere during a split survive, the same
    /// way on every member.
    Clear {
        destroyed: Vec<Ouid>,
    },
}

impl<S> OpBody<S> {
    pub fn kind(&self) -> &'static str {
        match self {
            OpBody::Create { .. } => "create",
            OpBody::SetAttributes { .. } => "set-attributes",
            OpBody::Destroy { .. } => "destroy",
            OpBody::Clear { .. } => "clear-partition",
        }
    }
}

/// An object as an operation creates it. `S` is the secret's form: sealed
/// bytes in a member's log and on the wire, anything in tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewObject<S = Vec<u8>> {
    pub ouid: Ouid,
    pub attrs: Template,
    pub sealed_secret: Option<S>,
}

/// One entry of a member's durable operation log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op<S = Vec<u8>> {
    /// Per-origin sequence number, starting at 1 and without gaps.
    pub seq: u64,
    pub stamp: Stamp,
    /// The client's operation id, so that a retried write is applied once.
    pub client_op_id: Option<[u8; 16]>,
    pub body: OpBody<S>,
}
