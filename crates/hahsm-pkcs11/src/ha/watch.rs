//! Following an HA group while the application runs: probing each member
//! out of the rotation until it may serve again (reachable, in the group,
//! activated and caught up with a serving member), and making the serving
//! members those the group's definition names. The module's background task
//! calls these; no application thread waits on them.
use super::group::{backoff, same_fingerprint, HaGroup, HaMember};
use crate::log;
use crate::pool::{Net, Server};
use crate::sync::{lock, write};
use hahsm_client::{ClientConfig, MemberConnection, ServerEntry};
use hahsm_proto::client::{Request, Response};
use hahsm_proto::halog::HaEvent;
use hahsm_proto::peer::GroupDef;
use std::sync::Arc;
use std::time::Instant;

/// Makes a group's serving members those its definition names: adds the
/// non-standby members not yet serving (the configured `Server` when the
/// config names it, else one made from the definition's client address and
/// pinned fingerprint) and drops the members no longer named. While the
/// application runs (`running`), a new member enters the rotation through
/// its first successful probe.
pub fn follow(g: &HaGroup, def: &GroupDef, running: bool, configured: &[Arc<Server>]) {
    let wanted: Vec<_> = def.members.iter().filter(|m| !m.standby).collect();
    if wanted.is_empty() {
        return;
    }
    let mut added = Vec::new();
    let mut removed = Vec::new();
    {
        let mut members = write(&g.members);
        members.retain(|m| {
            let keep = wanted
                .iter()
                .any(|w| same_fingerprint(&w.fingerprint, &m.server.entry.fingerprint));
            if !keep {
                removed.push(m.server.entry.name.clone());
            }
            keep
        });
        for gm in &wanted {
            let known = members
                .iter()
                .any(|m| same_fingerprint(&m.server.entry.fingerprint, &gm.fingerprint));
            if known || gm.client_address.is_empty() {
                continue;
            }
            let entry = configured
                .iter()
                .find(|s| same_fingerprint(&s.entry.fingerprint, &gm.fingerprint))
                .map(|s| s.entry.clone())
                .unwrap_or_else(|| ServerEntry {
                    name: format!("{}-{}", gm.hsm_label, gm.serial),
                    address: gm.client_address.clone(),
                    fingerprint: gm.fingerprint.clone(),
                });
            let server = Arc::new(Server::new(entry, &def.partition, g.token.clone()));
            members.push(if running {
                HaMember::joining(server)
            } else {
                HaMember::new(server)
            });
            added.push(gm.serial);
        }
    }
    if running {
        for serial in added {
            log::info(&format!(
                "HA group {}: member {serial} joined; probing it",
                g.label
            ));
        }
    }
    for name in removed {
        log::ha_event(&g.label, HaEvent::Removed, &name);
    }
}

/// The replication progress of the partition on a member in the rotation
/// (other than `returning`), asked now: what a returning member must
/// have applied before it serves again. Empty when no member answers
/// (then there is nothing to be behind of).
async fn serving_progress(g: &HaGroup, net: &Net, returning: &HaMember) -> Vec<(u64, u64)> {
    let serving = g
        .members()
        .into_iter()
        .filter(|m| !m.is_down() && !std::ptr::eq(m.as_ref(), returning));
    for member in serving {
        let ask = Request::Progress {
            partition: g.partition.clone(),
        };
        if let Ok(Response::Progress(progress)) = ask_member(net, &member.server, ask).await {
            return progress;
        }
    }
    Vec::new()
}

/// Reads an HA group's definition again from the first member in the
/// rotation that answers, and follows a newer definition's membership.
pub async fn refresh(g: &HaGroup, net: &Net, configured: &[Arc<Server>]) {
    for member in g.members().into_iter().filter(|m| !m.is_down()) {
        let get = Request::GetGroup {
            partition: g.partition.clone(),
        };
        let def = match ask_member(net, &member.server, get).await {
            Ok(Response::Group(Some(def))) if def.id == g.id => def,
            _ => continue,
        };
        let newer = {
            let mut known = lock(&g.def);
            if def.epoch >= known.epoch {
                *known = def.clone();
                true
            } else {
                false
            }
        };
        if newer {
            follow(g, &def, true, configured);
        }
        return;
    }
}

/// Starts a probe of each member out of the rotation whose probe is due.
pub fn probe_due(g: &Arc<HaGroup>, net: &Arc<Net>) {
    let now = Instant::now();
    for member in g.members() {
        let due = match lock(&member.outage).as_mut() {
            Some(o) if !o.probing && o.next_probe <= now => {
                o.probing = true;
                o.attempts += 1;
                Some((o.attempts, o.joining))
            }
            _ => None,
        };
        let Some((attempt, joining)) = due else { continue };
        let (g, n) = (g.clone(), net.clone());
        net.runtime.spawn(async move {
            let reference = serving_progress(&g, &n, &member).await;
            let result = probe(&n.config, &member.server.entry, &g.partition, g.id, &reference).await;
            let serial = g.serial_of(&member);
            match result {
                Ok(()) => {
                    lock(&member.outage).take();
                    // The next request connects afresh and logs in again.
                    write(&member.server.conn).take();
                    if joining {
                        log::ha_event(&g.label, HaEvent::Added, &serial);
                    } else {
                        log::ha_event(&g.label, HaEvent::Recovered(attempt), &serial);
                    }
                }
                Err(why) => {
                    if let Some(o) = lock(&member.outage).as_mut() {
                        o.probing = false;
                        o.next_probe = Instant::now() + backoff(attempt);
                    }
                    log::info(&format!(
                        "{}: probe #{attempt} failed: {why}",
                        member.server.entry.name
                    ));
                    if !joining {
                        log::ha_event(&g.label, HaEvent::RecoveryFailed(attempt), &serial);
                    }
                }
            }
        });
    }
}

/// Sends one request from the background task: on the member's
/// connection if it has one, else on a fresh one that is not kept.
async fn ask_member(net: &Net, server: &Server, request: Request) -> std::result::Result<Response, String> {
    let conn = match server.current() {
        Some(c) => c.conn.clone(),
        None => Arc::new(connect_bounded(&net.config, &server.entry).await?),
    };
    conn.call(request).await.map_err(|e| e.to_string())
}

/// A fresh connection to a member, within the connect and handshake deadlines.
async fn connect_bounded(
    config: &ClientConfig,
    entry: &ServerEntry,
) -> std::result::Result<MemberConnection, String> {
    let limit = config.connect_timeout() + config.handshake_timeout();
    match tokio::time::timeout(limit, MemberConnection::connect(config, entry)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{}: no connection within {limit:?}", entry.name)),
    }
}

/// Probes a member out of the rotation over a fresh connection: it must
/// answer a ping, still hold the group's partition in the group, have that
/// partition activated, and have applied every operation a serving member
/// had applied when the probe began (`reference`, per origin), so that it
/// serves no stale object and misses no key the application made.
async fn probe(
    config: &ClientConfig,
    entry: &ServerEntry,
    partition: &str,
    group: [u8; 16],
    reference: &[(u64, u64)],
) -> std::result::Result<(), String> {
    let conn = connect_bounded(config, entry).await?;
    let call = |request| {
        let conn = &conn;
        async move { conn.call(request).await.map_err(|e| e.to_string()) }
    };
    match call(Request::Ping).await? {
        Response::Pong => {}
        other => return Err(format!("unexpected answer to a ping: {other:?}")),
    }
    match call(Request::GetGroup {
        partition: partition.to_string(),
    })
    .await?
    {
        Response::Group(Some(def)) if def.id == group => {}
        _ => return Err("the partition is not in the group".to_string()),
    }
    let Response::Partitions(parts) = call(Request::ListPartitions).await? else {
        return Err("unexpected answer to list-partitions".to_string());
    };
    match parts.iter().find(|p| p.name == partition) {
        Some(p) if !p.activated => return Err("the partition is not activated".to_string()),
        Some(_) => {}
        None => return Err("the partition is not assigned to this client".to_string()),
    }
    let Response::Progress(progress) = call(Request::Progress {
        partition: partition.to_string(),
    })
    .await?
    else {
        return Err("unexpected answer to progress".to_string());
    };
    let applied = |origin: u64| {
        progress
            .iter()
            .find(|(o, _)| *o == origin)
            .map_or(0, |(_, seq)| *seq)
    };
    let behind = reference
        .iter()
        .filter(|(origin, seq)| applied(*origin) < *seq)
        .map(|(origin, seq)| seq - applied(*origin))
        .sum::<u64>();
    if behind > 0 {
        return Err(format!(
            "catching up: {behind} operations behind a serving member"
        ));
    }
    Ok(())
}
