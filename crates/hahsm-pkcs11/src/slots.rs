//! The slot table: one slot per partition a member assigns this client,
//! and one HA slot per HA group those partitions belong to, with ids from
//! the partition (or group) serial so they survive restarts. It lists what
//! the members offer; requests over a slot are `pool`'s and `ha`'s.
use crate::error::describe;
use crate::ha::{same_fingerprint, HaGroup, HaMember};
use crate::log;
use crate::pool::{Net, Server, TokenLogin};
use crate::sync::{lock, read, write};
use hahsm_proto::client::{PartitionInfo, Request, Response};
use hahsm_proto::peer::GroupDef;
use hahsm_token::ck;
use std::sync::{Arc, Mutex, RwLock};

/// What a slot is.
pub enum SlotKind {
    /// One partition on one member (its HA slot, if it is in a group, is
    /// another slot).
    Member,
    /// An HA group's partition, served by every member of the group.
    Ha(Arc<HaGroup>),
}

/// One slot: a partition on a member, or an HA group's partition.
pub struct Slot {
    pub id: ck::CK_SLOT_ID,
    /// The member; for an HA slot, its first member.
    pub server: Arc<Server>,
    pub partition: String,
    pub serial: u64,
    pub info: Mutex<PartitionInfo>,
    pub kind: SlotKind,
    /// The application's login to this token, shared by the slot's
    /// connections to every member.
    pub(crate) token: Arc<Mutex<TokenLogin>>,
    /// Serializes login, logout and PIN changes of the token.
    pub(crate) login_change: Mutex<()>,
}

impl Slot {
    /// The HA group, for an HA slot.
    pub fn ha(&self) -> Option<&Arc<HaGroup>> {
        match &self.kind {
            SlotKind::Ha(g) => Some(g),
            SlotKind::Member => None,
        }
    }

    pub fn is_ha(&self) -> bool {
        self.ha().is_some()
    }

    /// The role logged in to this slot's token, if any (`CKU_USER` or `CKU_SO`).
    pub fn login(&self) -> Option<u64> {
        lock(&self.token).who.as_ref().map(|(u, _)| *u)
    }

    /// The slot's connections to each of its members.
    pub(crate) fn links(&self) -> Vec<Arc<Server>> {
        match &self.kind {
            SlotKind::Ha(g) => g.members().into_iter().map(|m| m.server.clone()).collect(),
            SlotKind::Member => vec![self.server.clone()],
        }
    }

    /// The token label: the group's label for an HA slot, else the partition name.
    pub fn label(&self) -> &str {
        match &self.kind {
            SlotKind::Ha(g) => &g.label,
            SlotKind::Member => &self.partition,
        }
    }
}

/// Lists the partitions of every member not yet listed, adding their
/// slots, and one HA slot per HA group those partitions belong to.
/// Slot ids come from the partition (or group) serial, so they survive
/// restarts of the application and of the member.
pub fn list_new(net: &Net, servers: &[Arc<Server>], table: &RwLock<Vec<Arc<Slot>>>) {
    for server in servers {
        let known = read(table)
            .iter()
            .any(|s| !s.is_ha() && s.server.entry.name == server.entry.name);
        if known {
            continue;
        }
        let parts = match net.call_server(server, Request::ListPartitions) {
            Ok(Response::Partitions(p)) => p,
            Ok(_) => continue,
            Err(e) => {
                log::warn(&format!(
                    "{}: cannot list partitions: {}",
                    server.entry.name,
                    describe(&e)
                ));
                continue;
            }
        };
        let parts: Vec<(PartitionInfo, Option<GroupDef>)> = parts
            .into_iter()
            .map(|info| {
                let group = match net.call_server(
                    server,
                    Request::GetGroup {
                        partition: info.name.clone(),
                    },
                ) {
                    Ok(Response::Group(g)) => g,
                    _ => None,
                };
                (info, group)
            })
            .collect();
        let mut slots = write(table);
        for (info, group) in parts {
            let id = free_slot_id(&slots, info.serial);
            if let Some(def) = &group {
                join_group(&mut slots, def, server, &info);
            }
            let token: Arc<Mutex<TokenLogin>> = Arc::default();
            slots.push(Arc::new(Slot {
                id,
                server: Arc::new(Server::new(server.entry.clone(), &info.name, token.clone())),
                partition: info.name.clone(),
                serial: info.serial,
                info: Mutex::new(info),
                kind: SlotKind::Member,
                token,
                login_change: Mutex::new(()),
            }));
        }
        // HA slots first, then the members' slots.
        slots.sort_by_key(|s| (!s.is_ha(), s.id));
    }
    // Members the groups name that the config does not: learned from the
    // group definition, with its client address and pinned fingerprint.
    for slot in read(table).iter() {
        let Some(g) = slot.ha() else { continue };
        let def = lock(&g.def).clone();
        crate::ha::watch::follow(g, &def, false, servers);
    }
}

/// A slot id from a serial, not yet taken.
fn free_slot_id(slots: &[Arc<Slot>], serial: u64) -> ck::CK_SLOT_ID {
    let mut id = (serial & 0x7fff_ffff) as ck::CK_SLOT_ID;
    while slots.iter().any(|s| s.id == id) {
        id = (id + 1) & 0x7fff_ffff;
    }
    id
}

/// Adds a member to its group's HA slot, making the slot on first sight.
fn join_group(slots: &mut Vec<Arc<Slot>>, def: &GroupDef, server: &Arc<Server>, info: &PartitionInfo) {
    if let Some(g) = slots.iter().filter_map(|s| s.ha()).find(|g| g.id == def.id) {
        let mut members = write(&g.members);
        if !members
            .iter()
            .any(|m| same_fingerprint(&m.server.entry.fingerprint, &server.entry.fingerprint))
        {
            let link = Server::new(server.entry.clone(), &def.partition, g.token.clone());
            members.push(HaMember::new(Arc::new(link)));
        }
        let mut known = lock(&g.def);
        if def.epoch > known.epoch {
            *known = def.clone();
        }
        return;
    }
    let id = free_slot_id(slots, def.serial);
    let token: Arc<Mutex<TokenLogin>> = Arc::default();
    let first = Arc::new(Server::new(server.entry.clone(), &def.partition, token.clone()));
    slots.push(Arc::new(Slot {
        id,
        server: first.clone(),
        partition: def.partition.clone(),
        serial: def.serial,
        info: Mutex::new(PartitionInfo {
            serial: def.serial,
            ..info.clone()
        }),
        kind: SlotKind::Ha(Arc::new(HaGroup::new(def, first, token.clone()))),
        token,
        login_change: Mutex::new(()),
    }));
}
