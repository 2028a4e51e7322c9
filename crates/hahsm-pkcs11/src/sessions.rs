//! The session table: handles of open sessions (never reused while the
//! module is initialized) and the `Session` each stands for. No I/O.
use crate::error::{Error, Result};
use crate::session::Session;
use crate::sync::{read, write};
use hahsm_token::ck;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub struct Sessions {
    open: RwLock<HashMap<ck::CK_SESSION_HANDLE, Arc<Session>>>,
    next: AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            open: RwLock::default(),
            next: AtomicU64::new(1),
        }
    }
}

impl Sessions {
    pub fn add(&self, make: impl FnOnce(ck::CK_SESSION_HANDLE) -> Session) -> ck::CK_SESSION_HANDLE {
        let h = self.next.fetch_add(1, Ordering::Relaxed);
        write(&self.open).insert(h, Arc::new(make(h)));
        h
    }

    pub fn get(&self, h: ck::CK_SESSION_HANDLE) -> Result<Arc<Session>> {
        read(&self.open)
            .get(&h)
            .cloned()
            .ok_or(Error::Rv(ck::CKR_SESSION_HANDLE_INVALID))
    }

    pub fn remove(&self, h: ck::CK_SESSION_HANDLE) -> Result<Arc<Session>> {
        write(&self.open)
            .remove(&h)
            .ok_or(Error::Rv(ck::CKR_SESSION_HANDLE_INVALID))
    }

    pub fn of_slot(&self, slot: ck::CK_SLOT_ID) -> Vec<Arc<Session>> {
        read(&self.open)
            .values()
            .filter(|s| s.slot.id == slot)
            .cloned()
            .collect()
    }

    /// Forgets every session (`C_Finalize`).
    pub fn clear(&self) {
        write(&self.open).clear();
    }
}
