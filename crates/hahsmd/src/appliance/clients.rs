//! The console's client commands: register, remove, assign, list; and
//! reloading the registry (`registry.rs`) from the store.
use super::registry::ClientEntry;
use super::state::Appliance;
use crate::error::refuse;
use crate::error::{AdminError, AdminResult};
use hahsm_link::Fingerprint;
use hahsm_proto::admin::ClientSummary;
use hahsm_store::ClientRow;
use std::collections::HashMap;
use tracing::{info, warn};

impl Appliance {
    pub(super) fn reload_clients(&self) -> AdminResult<()> {
        let mut map = HashMap::new();
        for c in self.store.list_clients()? {
            let partitions = self.store.partitions_of_client(&c.name)?.into_iter().collect();
            let Ok(fp) = Fingerprint::parse(&c.fingerprint_hex) else {
                warn!(client = %c.name, "registered fingerprint is malformed; the client is ignored");
                continue;
            };
            map.insert(
                fp,
                ClientEntry {
                    name: c.name,
                    partitions,
                },
            );
        }
        self.clients.replace(map);
        Ok(())
    }

    /// The registered client with this certificate fingerprint.
    pub fn client(&self, fp: &Fingerprint) -> Option<ClientEntry> {
        self.clients.get(fp)
    }

    pub fn client_may_open(&self, fp: &Fingerprint, partition: &str) -> bool {
        self.clients.may_open(fp, partition)
    }

    pub fn client_register(&self, name: &str, hostname: &str, fingerprint: &str) -> AdminResult<()> {
        self.require_so()?;
        if name.is_empty() || name.len() > 64 {
            return refuse("a client name is 1 to 64 characters");
        }
        let fp = Fingerprint::parse(fingerprint)
            .map_err(|e| AdminError::Refused(format!("bad fingerprint: {e}")))?;
        self.store.register_client(&ClientRow {
            name: name.to_string(),
            fingerprint_hex: fp.to_hex(),
            hostname: hostname.to_string(),
        })?;
        self.reload_clients()?;
        info!(client = name, fingerprint = %fp, "client registered");
        Ok(())
    }

    pub fn client_remove(&self, name: &str) -> AdminResult<()> {
        self.require_so()?;
        self.store.remove_client(name)?;
        self.reload_clients()?;
        info!(client = name, "client removed");
        Ok(())
    }

    pub fn client_assign(&self, client: &str, partition: &str, assign: bool) -> AdminResult<()> {
        self.require_so()?;
        if assign {
            self.store.assign_partition(client, partition)?;
        } else {
            self.store.revoke_partition(client, partition)?;
        }
        self.reload_clients()?;
        info!(client, partition, assign, "client partition assignment changed");
        Ok(())
    }

    pub fn client_list(&self) -> AdminResult<Vec<ClientSummary>> {
        let mut out = Vec::new();
        for c in self.store.list_clients()? {
            let fp = Fingerprint::parse(&c.fingerprint_hex)
                .map(|f| f.to_string())
                .unwrap_or(c.fingerprint_hex.clone());
            out.push(ClientSummary {
                partitions: self.store.partitions_of_client(&c.name)?,
                name: c.name,
                hostname: c.hostname,
                fingerprint: fp,
            });
        }
        Ok(out)
    }
}
