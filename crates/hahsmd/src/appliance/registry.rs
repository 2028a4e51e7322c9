//! The registry of registered clients (name, fingerprint, assigned
//! partitions), which the TLS layer asks who may connect.
use crate::sync::RecoverRw;
use hahsm_link::{ClientAuthorizer, Fingerprint};
use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

/// A registered client, as the TLS layer and request handlers see it.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    pub name: String,
    pub partitions: HashSet<String>,
}

/// Registered clients by certificate fingerprint; the TLS layer asks it on
/// every handshake, request handlers on every request.
#[derive(Default)]
pub struct ClientRegistry(RwLock<HashMap<Fingerprint, ClientEntry>>);

impl ClientRegistry {
    /// Puts the registry as the store now has it in place.
    pub fn replace(&self, clients: HashMap<Fingerprint, ClientEntry>) {
        *self.0.write_or_recover() = clients;
    }

    pub fn get(&self, fp: &Fingerprint) -> Option<ClientEntry> {
        self.0.read_or_recover().get(fp).cloned()
    }

    /// Whether the client may open the partition; on every request, so it
    /// copies nothing.
    pub fn may_open(&self, fp: &Fingerprint, partition: &str) -> bool {
        self.0
            .read_or_recover()
            .get(fp)
            .is_some_and(|c| c.partitions.contains(partition))
    }
}

impl ClientAuthorizer for ClientRegistry {
    fn is_registered(&self, fp: &Fingerprint) -> bool {
        self.0.read_or_recover().contains_key(fp)
    }
}
