//! Which client connections the member takes on, so that no one can lock the
//! others out by holding connections:
//!
//! - connections still in their TLS handshake or hello sit in a bounded pool;
//!   when it is full, a new connection evicts the oldest one. A flood of idle
//!   or half-open connections then only ever holds the pool, and a real client,
//!   whose handshake takes milliseconds, gets through;
//! - established connections are bounded in all and per client certificate;
//!   a client over a limit is told so in the hello's answer.
use crate::sync::Recover;
use hahsm_link::Fingerprint;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

pub struct Admission {
    max_pending: usize,
    max_established: usize,
    max_per_client: usize,
    next_id: AtomicU64,
    /// Pending handshakes, oldest first, each with the signal that evicts it.
    pending: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    established: Mutex<Established>,
}

#[derive(Default)]
struct Established {
    total: usize,
    per_client: HashMap<Fingerprint, usize>,
}

/// Why an authenticated client was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    MemberFull(usize),
    ClientFull(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MemberFull(n) => write!(f, "the member has reached its limit of {n} client connections"),
            Refusal::ClientFull(n) => write!(
                f,
                "this client has reached its limit of {n} connections to the member"
            ),
        }
    }
}

impl Admission {
    pub fn new(max_pending: usize, max_established: usize, max_per_client: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_pending: max_pending.max(1),
            max_established,
            max_per_client,
            next_id: AtomicU64::new(0),
            pending: Mutex::default(),
            established: Mutex::default(),
        })
    }

    /// A place in the handshake pool, evicting the oldest holder if it is full.
    pub fn handshake(self: &Arc<Self>) -> PendingSlot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        let mut pending = self.pending.lock_or_recover();
        while pending.len() >= self.max_pending {
            if let Some((_, oldest)) = pending.pop_front() {
                // `notify_one` keeps the signal if the holder is not waiting yet.
                oldest.notify_one();
            }
        }
        pending.push_back((id, evict.clone()));
        PendingSlot {
            admission: self.clone(),
            id,
            evict,
        }
    }

    /// Admits an authenticated client, or says which limit it hit.
    pub fn establish(self: &Arc<Self>, client: &Fingerprint) -> Result<EstablishedSlot, Refusal> {
        let mut e = self.established.lock_or_recover();
        if e.total >= self.max_established {
            return Err(Refusal::MemberFull(self.max_established));
        }
        let mine = e.per_client.entry(client.clone()).or_default();
        if *mine >= self.max_per_client {
            return Err(Refusal::ClientFull(self.max_per_client));
        }
        *mine += 1;
        e.total += 1;
        Ok(EstablishedSlot {
            admission: self.clone(),
            client: client.clone(),
        })
    }
}

/// A connection in its handshake; leaving the pool when dropped.
pub struct PendingSlot {
    admission: Arc<Admission>,
    id: u64,
    evict: Arc<Notify>,
}

impl PendingSlot {
    /// Resolves when a newer connection has taken this one's place.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut pending = self.admission.pending.lock_or_recover();
        pending.retain(|(id, _)| *id != self.id);
    }
}

/// An established connection's share of the limits; released when dropped.
pub struct EstablishedSlot {
    admission: Arc<Admission>,
    client: Fingerprint,
}

impl Drop for EstablishedSlot {
    fn drop(&mut self) {
        let mut e = self.admission.established.lock_or_recover();
        e.total = e.total.saturating_sub(1);
        if let Some(n) = e.per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                e.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::of_der(&[b])
    }

    #[tokio::test]
    async fn a_full_handshake_pool_evicts_its_oldest() {
        let a = Admission::new(2, 10, 10);
        let first = a.handshake();
        let _second = a.handshake();
        let _third = a.handshake();
        tokio::time::timeout(std::time::Duration::from_secs(5), first.evicted())
            .await
            .expect("the oldest is evicted");
        assert_eq!(a.pending.lock().unwrap().len(), 2);
        drop(first);
        assert_eq!(
            a.pending.lock().unwrap().len(),
            2,
            "dropping an evicted slot frees nothing twice"
        );
    }

    #[test]
    fn established_limits_in_all_and_per_client() {
        let a = Admission::new(4, 3, 2);
        let one = a.establish(&fp(1)).unwrap();
        let _two = a.establish(&fp(1)).unwrap();
        assert_eq!(a.establish(&fp(1)).err(), Some(Refusal::ClientFull(2)));
        let _three = a.establish(&fp(2)).unwrap();
        assert_eq!(a.establish(&fp(3)).err(), Some(Refusal::MemberFull(3)));
        drop(one);
        assert!(a.establish(&fp(1)).is_ok(), "a closed connection frees its place");
    }
}
