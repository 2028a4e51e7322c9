//! Sessions and their active operations.
//!
//! Multi-part operations buffer their input in the module and send one
//! single-part request to the member at `C_*Final`, on the same member;
//! AES-ECB, AES-CBC, AES-CBC-PAD and AES-CTR encryption and decryption
//! instead send their whole blocks at each `C_*Update` and keep only a
//! partial block (`api::update_cipher`). The result of a request is kept
//! until it is delivered, so the "NULL buffer returns the length" convention
//! costs one request, not two.
use crate::slots::Slot;
use hahsm_token::{ck, Mechanism, Ouid, Template};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most bytes a multi-part operation buffers: the input must fit in one frame.
pub const MAX_BUFFERED: usize = 1000 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Encrypt,
    Decrypt,
    Digest,
    Sign,
    Verify,
}

impl OpKind {
    pub const ALL: [OpKind; 5] = [
        OpKind::Encrypt,
        OpKind::Decrypt,
        OpKind::Digest,
        OpKind::Sign,
        OpKind::Verify,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The single-part function, for the log.
    pub fn single_part_name(self) -> &'static str {
        match self {
            OpKind::Encrypt => "C_Encrypt",
            OpKind::Decrypt => "C_Decrypt",
            OpKind::Digest => "C_Digest",
            OpKind::Sign => "C_Sign",
            OpKind::Verify => "C_Verify",
        }
    }

    /// The `CKF_*` flag `C_SessionCancel` names this operation by.
    pub fn cancel_flag(self) -> u64 {
        match self {
            OpKind::Encrypt => ck::CKF_ENCRYPT,
            OpKind::Decrypt => ck::CKF_DECRYPT,
            OpKind::Digest => ck::CKF_DIGEST,
            OpKind::Sign => ck::CKF_SIGN,
            OpKind::Verify => ck::CKF_VERIFY,
        }
    }
}

/// One active operation.
pub struct Op {
    pub mech: Mechanism,
    /// The key; `None` for a digest.
    pub key: Option<Ouid>,
    /// The key needs a context-specific login before each use.
    pub always_authenticate: bool,
    pub context_login_done: bool,
    /// Input gathered by `C_*Update`.
    pub buffer: Vec<u8>,
    pub multipart: bool,
    /// The last request's input and output, kept until the output is delivered.
    pub cached: Option<(Vec<u8>, Vec<u8>)>,
    /// No state on the member is needed (a digest, or a token key without
    /// context-specific login): any connection to any member may carry it.
    pub stateless: bool,
    /// A multi-part AES-CTR operation used the last value of its counter:
    /// more input would repeat the key stream.
    pub ctr_spent: bool,
    /// Secret keys `C_DigestKey` added to a digest: each key and the offset
    /// in `buffer` where its value goes (the member inserts it).
    pub digest_keys: Vec<(u64, Ouid)>,
}

impl Op {
    pub fn new(mech: Mechanism, key: Option<Ouid>, always_authenticate: bool) -> Op {
        Op {
            mech,
            key,
            always_authenticate,
            context_login_done: false,
            buffer: Vec::new(),
            multipart: false,
            cached: None,
            stateless: false,
            ctr_spent: false,
            digest_keys: Vec::new(),
        }
    }
}

/// A `C_FindObjects` search: the matching objects, handed out in pages.
pub struct Find {
    pub found: Vec<Ouid>,
    pub next: usize,
}

/// How long the attributes a find brought answer `C_GetAttributeValue` in
/// place of a member (docs/replication.md §12: a read may answer as of the
/// find, this much earlier).
pub const READ_WITH_FIND_FRESH: Duration = Duration::from_millis(500);

/// The attributes of the first objects the session's last
/// `C_FindObjectsInit` found, as the member had them then: what an
/// application reads of the key it just looked up is answered from here,
/// with no round trip, while it is fresh and this process has changed
/// nothing since (`Module::changes`).
pub struct ReadWithFind {
    pub at: Instant,
    pub changes: u64,
    pub attributes: HashMap<Ouid, Template>,
}

impl ReadWithFind {
    /// The attributes of `ouid` as the find saw them, if they still stand
    /// for the member's answer: fresh, and nothing changed by this process
    /// since (`changes` is the module's count now).
    pub fn of(&self, ouid: &Ouid, changes: u64) -> Option<&Template> {
        if self.changes != changes || self.at.elapsed() > READ_WITH_FIND_FRESH {
            return None;
        }
        self.attributes.get(ouid)
    }
}

/// A `C_WrapKey` result kept for the call that fetches it.
pub struct PendingWrap {
    pub request: (Ouid, Ouid, Mechanism),
    pub wrapped: Vec<u8>,
}

#[derive(Default)]
pub struct State {
    ops: [Option<Op>; 5],
    pub find: Option<Find>,
    pub read_with_find: Option<ReadWithFind>,
    pub pending_wrap: Option<PendingWrap>,
}

impl State {
    pub fn op(&mut self, kind: OpKind) -> Option<&mut Op> {
        self.ops[kind.index()].as_mut()
    }

    pub fn has(&self, kind: OpKind) -> bool {
        self.ops[kind.index()].is_some()
    }

    pub fn set(&mut self, kind: OpKind, op: Op) {
        self.ops[kind.index()] = Some(op);
    }

    pub fn end(&mut self, kind: OpKind) {
        self.ops[kind.index()] = None;
    }

    /// Any operation active (for `CKU_CONTEXT_SPECIFIC`).
    pub fn any_key_op(&mut self) -> Option<&mut Op> {
        self.ops.iter_mut().flatten().find(|o| o.key.is_some())
    }
}

pub struct Session {
    pub handle: ck::CK_SESSION_HANDLE,
    pub slot: Arc<Slot>,
    pub rw: bool,
    pub state: Mutex<State>,
}

impl Session {
    /// The session state of PKCS#11 §5.6 (`CKS_*`), from the token's login.
    pub fn ck_state(&self) -> u64 {
        match (self.slot.login(), self.rw) {
            (Some(u), _) if u == ck::CKU_SO => ck::CKS_RW_SO_FUNCTIONS,
            (Some(_), true) => ck::CKS_RW_USER_FUNCTIONS,
            (Some(_), false) => ck::CKS_RO_USER_FUNCTIONS,
            (None, true) => ck::CKS_RW_PUBLIC_SESSION,
            (None, false) => ck::CKS_RO_PUBLIC_SESSION,
        }
    }
}
