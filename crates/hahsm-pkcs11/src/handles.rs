//! The object-handle table: each object an application sees gets an
//! integer handle that maps to its cluster-wide OUID (never a member's row),
//! so a handle works on every member of an HA slot; handles are never
//! reused. With each, what the module remembers of a key, and which session
//! made a session object. No I/O.
use crate::error::{rv, Result};
use crate::sync::{read, write};
use hahsm_token::{ck, Ouid};
use std::collections::HashMap;
use std::sync::RwLock;

/// What the module remembers of a key, read once when the key is first used
/// for an operation (the class and key type never change; usage flags changed
/// through this module refresh it).
#[derive(Clone, Copy, Debug)]
pub struct KeyInfo {
    pub class: u64,
    pub key_type: u64,
    pub token: bool,
    pub always_authenticate: bool,
    /// `CKA_SIGN`, `CKA_VERIFY`, … as (attribute, value) pairs.
    pub usages: [(u64, bool); 9],
    /// `CKA_PARAMETER_SET` of an ML-DSA or ML-KEM key, 0 for others.
    pub parameter_set: u64,
}

impl KeyInfo {
    pub fn allows(&self, attr: u64) -> bool {
        self.usages.iter().any(|(a, v)| *a == attr && *v)
    }
}

pub struct ObjEntry {
    pub slot: ck::CK_SLOT_ID,
    pub ouid: Ouid,
    pub key: Option<KeyInfo>,
    /// For a session object made through this module: the session that made
    /// it, which destroys it when it closes.
    pub owner: Option<ck::CK_SESSION_HANDLE>,
}

#[derive(Default)]
struct Objects {
    by_handle: HashMap<ck::CK_OBJECT_HANDLE, ObjEntry>,
    by_ouid: HashMap<(ck::CK_SLOT_ID, Ouid), ck::CK_OBJECT_HANDLE>,
    next: ck::CK_OBJECT_HANDLE,
}

/// The handles of one module instance.
pub struct Handles(RwLock<Objects>);

impl Default for Handles {
    fn default() -> Self {
        // Handle 0 is CK_INVALID_HANDLE.
        Handles(RwLock::new(Objects {
            next: 1,
            ..Objects::default()
        }))
    }
}

impl Handles {
    /// The handle of an object, made on first sight and the same afterwards.
    pub fn handle_for(&self, slot: ck::CK_SLOT_ID, ouid: Ouid) -> ck::CK_OBJECT_HANDLE {
        if let Some(h) = read(&self.0).by_ouid.get(&(slot, ouid)) {
            return *h;
        }
        let mut t = write(&self.0);
        if let Some(h) = t.by_ouid.get(&(slot, ouid)) {
            return *h;
        }
        let h = t.next;
        t.next += 1;
        t.by_ouid.insert((slot, ouid), h);
        t.by_handle.insert(
            h,
            ObjEntry {
                slot,
                ouid,
                key: None,
                owner: None,
            },
        );
        h
    }

    /// The OUID behind a handle, checked to belong to the session's slot.
    pub fn object(&self, slot: ck::CK_SLOT_ID, h: ck::CK_OBJECT_HANDLE) -> Result<(Ouid, Option<KeyInfo>)> {
        match read(&self.0).by_handle.get(&h) {
            Some(e) if e.slot == slot => Ok((e.ouid, e.key)),
            _ => rv(ck::CKR_OBJECT_HANDLE_INVALID),
        }
    }

    pub fn set_key_info(&self, h: ck::CK_OBJECT_HANDLE, info: Option<KeyInfo>) {
        if let Some(e) = write(&self.0).by_handle.get_mut(&h) {
            e.key = info;
        }
    }

    pub fn set_owner(&self, h: ck::CK_OBJECT_HANDLE, owner: ck::CK_SESSION_HANDLE) {
        if let Some(e) = write(&self.0).by_handle.get_mut(&h) {
            e.owner = Some(owner);
        }
    }

    /// Forgets a destroyed object. Its handle is never given out again.
    pub fn forget(&self, h: ck::CK_OBJECT_HANDLE) {
        let mut t = write(&self.0);
        if let Some(e) = t.by_handle.remove(&h) {
            t.by_ouid.remove(&(e.slot, e.ouid));
        }
    }

    /// The session objects a session made, for it to destroy when it closes.
    pub fn owned_by(&self, session: ck::CK_SESSION_HANDLE) -> Vec<(ck::CK_OBJECT_HANDLE, Ouid)> {
        read(&self.0)
            .by_handle
            .iter()
            .filter(|(_, e)| e.owner == Some(session))
            .map(|(h, e)| (*h, e.ouid))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_stable_per_slot_and_never_reused() {
        let h = Handles::default();
        let (a, b) = (Ouid([1; 16]), Ouid([2; 16]));
        let ha = h.handle_for(1, a);
        assert_eq!(ha, 1);
        assert_eq!(h.handle_for(1, a), ha);
        // The same object seen through another slot has its own handle.
        let ha2 = h.handle_for(2, a);
        assert_ne!(ha2, ha);
        assert_eq!(h.object(1, ha).unwrap().0, a);
        // A handle is checked against the session's slot.
        assert_eq!(h.object(2, ha).unwrap_err().rv(), ck::CKR_OBJECT_HANDLE_INVALID);
        h.forget(ha);
        assert_eq!(h.object(1, ha).unwrap_err().rv(), ck::CKR_OBJECT_HANDLE_INVALID);
        let hb = h.handle_for(1, b);
        let again = h.handle_for(1, a);
        assert!(hb > ha2 && again > hb, "a handle was reused");
        h.set_owner(hb, 7);
        assert_eq!(h.owned_by(7), vec![(hb, b)]);
        assert!(h.owned_by(8).is_empty());
    }
}
