//! The peer listener: TLS from other members, and each peer request
//! checked against the group's pinned member fingerprints before it runs
//! (heartbeats, pulls, pushes, definition updates), plus the candidate's
//! side of the join handshake. Group decisions are `group.rs`'s.
use super::admin::{
    active_with_keys, group_of, load_group_def, my_member, save_group_def, start, stop_group,
};
use super::group::{peer_error, Group, Outgoing, BATCH};
use super::keys::{check_proof, prove, random32, transcript};
use crate::appliance::Appliance;
use crate::error::AdminError;
use crate::partition::ActivePartition;
use crate::sync::{Recover, RecoverRw};
use crate::Completion;
use hahsm_link::{ClientAuthorizer, Fingerprint};
use hahsm_proto::peer::{PeerRequest, PeerRequestFrame, PeerResponse, PeerResponseFrame};
use hahsm_proto::{decode, encode, WireError};
use hahsm_token::ck;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Accepts any certificate at the TLS layer: a newcomer proves itself in the
/// join handshake with the group's secrets; every other request is checked
/// against the group's pinned member fingerprints.
struct AnyPeer;

impl ClientAuthorizer for AnyPeer {
    fn is_registered(&self, _fp: &Fingerprint) -> bool {
        true
    }
}

/// A candidate's side of a join in progress, between challenge and confirm.
#[derive(Clone)]
struct PendingJoin {
    group_id: [u8; 16],
    initiator_nonce: [u8; 32],
    candidate_nonce: [u8; 32],
    initiator: Fingerprint,
    at: Instant,
}

pub async fn serve_peers(app: Arc<Appliance>, listener: tokio::net::TcpListener) {
    let acceptor = match hahsm_link::load_identity(&app.config.cert_path(), &app.config.key_path())
        .and_then(|id| hahsm_link::server_config(id, Arc::new(AnyPeer)))
    {
        Ok(c) => tokio_rustls::TlsAcceptor::from(c),
        Err(e) => {
            warn!(error = %e, "peer listener disabled: no usable certificate");
            return;
        }
    };
    let pending: Arc<Mutex<Vec<PendingJoin>>> = Arc::default();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (app, acceptor, pending) = (app.clone(), acceptor.clone(), pending.clone());
        tokio::spawn(async move {
            let Ok((mut stream, fp)) =
                hahsm_link::accept(tcp, &acceptor, app.config.limits.handshake_timeout()).await
            else {
                return;
            };
            loop {
                let frame = match tokio::time::timeout(
                    Duration::from_secs(60),
                    hahsm_link::read_frame(&mut stream, 256 << 20),
                )
                .await
                {
                    Ok(Ok(Some(f))) => f,
                    _ => return,
                };
                let Ok(req) = decode::<PeerRequestFrame>(&frame) else {
                    let _ = hahsm_link::write_frame(
                        &mut stream,
                        &encode(&PeerResponseFrame {
                            id: 0,
                            result: Err(peer_error("malformed peer frame")),
                        }),
                    )
                    .await;
                    return;
                };
                let deadline = Duration::from_millis(u64::from(req.deadline_ms).clamp(100, 60_000));
                let journaled = peer_admin_action(&req.request);
                // Applying replicated operations never stops halfway.
                let work = {
                    let (app, fp, pending) = (app.clone(), fp.clone(), pending.clone());
                    async move { handle_peer(&app, &fp, &pending, req.request).await }
                };
                let result = match crate::run_to_completion(deadline, work).await {
                    Completion::Done(r) => r,
                    Completion::Failed => Err(peer_error("the request failed")),
                    Completion::StillRunning => Err(peer_error(
                        "deadline passed; the request completes in the background",
                    )),
                };
                if let Some(action) = journaled {
                    journal_peer_action(&app, &fp, action, &result);
                }
                if hahsm_link::write_frame(&mut stream, &encode(&PeerResponseFrame { id: req.id, result }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// The administrative peer requests (joins and group changes), as the
/// journal records them; heartbeats and operations are not journaled.
fn peer_admin_action(request: &PeerRequest) -> Option<crate::journal::Action> {
    let (action, group) = match request {
        PeerRequest::JoinChallenge { group, .. } => ("HaJoinChallenge", group),
        PeerRequest::JoinConfirm { group, .. } => ("HaJoinConfirm", group),
        PeerRequest::GroupUpdate { group } => ("HaGroupUpdate", group),
        PeerRequest::Heartbeat { .. }
        | PeerRequest::Pull { .. }
        | PeerRequest::Push { .. }
        | PeerRequest::Snapshot { .. } => return None,
    };
    let members: Vec<String> = group.members.iter().map(|m| m.serial.to_string()).collect();
    Some(crate::journal::Action {
        action: action.to_string(),
        object: format!("group {}", group.label),
        request: format!(
            "{action} {{ group: {:?}, partition: {:?}, epoch: {}, members: [{}] }}",
            group.label,
            group.partition,
            group.epoch,
            members.join(", ")
        ),
        result: String::new(),
    })
}

fn journal_peer_action(
    app: &Appliance,
    fp: &Fingerprint,
    mut action: crate::journal::Action,
    result: &Result<PeerResponse, WireError>,
) {
    let sender = {
        let groups = app.groups.read_or_recover();
        groups
            .values()
            .find_map(|g| g.def().member_by_fingerprint(&fp.to_hex()).map(|m| m.serial))
    };
    action.result = match result {
        Ok(_) => "done".into(),
        Err(e) => format!("refused: {}", e.message),
    };
    let who = crate::journal::Who {
        role: "peer".into(),
        actor: sender.map_or_else(|| "member ?".to_string(), |s| format!("member {s}")),
        fingerprint: fp.to_string(),
    };
    if let Err(e) = app.journal.append(&who, action) {
        warn!(error = %e, "cannot write the journal");
    }
}

/// Finds the group `group_id` on this member and checks the peer is in it.
fn authorized(
    app: &Appliance,
    fp: &Fingerprint,
    group_id: &[u8; 16],
) -> Result<(Arc<Group>, Arc<ActivePartition>), WireError> {
    let groups = app.groups.read_or_recover();
    for (partition, g) in groups.iter() {
        let def = g.def();
        if &def.id != group_id {
            continue;
        }
        if def.member_by_fingerprint(&fp.to_hex()).is_none() {
            warn!(fingerprint = %fp, group = %def.label, "refused a peer that is not a member of the group");
            return Err(WireError {
                code: ck::CKR_TOKEN_NOT_RECOGNIZED,
                message: format!("not a member of HA group '{}'", def.label),
            });
        }
        let p = app
            .active_partition(partition)
            .ok_or_else(|| peer_error("the partition is not activated"))?;
        return Ok((g.clone(), p));
    }
    Err(WireError {
        code: ck::CKR_TOKEN_NOT_RECOGNIZED,
        message: "no such HA group on this member".into(),
    })
}

async fn handle_peer(
    app: &Arc<Appliance>,
    fp: &Fingerprint,
    pending: &Mutex<Vec<PendingJoin>>,
    request: PeerRequest,
) -> Result<PeerResponse, WireError> {
    let refuse = |m: String| WireError {
        code: ck::CKR_TOKEN_NOT_RECOGNIZED,
        message: m,
    };
    match request {
        PeerRequest::JoinChallenge { group, nonce } => {
            let (p, keys) = active_with_keys(app, &group.partition).map_err(|e| refuse(e.to_string()))?;
            if let Some(existing) = load_group_def(app, &p) {
                if existing.id != group.id {
                    return Err(refuse(format!(
                        "partition '{}' already belongs to HA group '{}'",
                        group.partition, existing.label
                    )));
                }
            }
            let me = Fingerprint::parse(&app.fingerprint().map_err(|e| peer_error(e.to_string()))?)
                .map_err(|e| peer_error(e.to_string()))?;
            let candidate_nonce = random32().map_err(WireError::from)?;
            let proof = prove(
                &keys,
                &transcript(b"candidate", &group, &nonce, &candidate_nonce, fp, &me),
            );
            let mut pj = pending.lock_or_recover();
            pj.retain(|j| j.at.elapsed() < Duration::from_secs(60));
            pj.push(PendingJoin {
                group_id: group.id,
                initiator_nonce: nonce,
                candidate_nonce,
                initiator: fp.clone(),
                at: Instant::now(),
            });
            let member = my_member(app, &p, false).map_err(|e| peer_error(e.to_string()))?;
            Ok(PeerResponse::JoinProof {
                member,
                nonce: candidate_nonce,
                proof,
            })
        }
        PeerRequest::JoinConfirm {
            group,
            candidate_nonce,
            proof,
        } => {
            let join = {
                let mut pj = pending.lock_or_recover();
                let i = pj
                    .iter()
                    .position(|j| {
                        j.group_id == group.id && j.candidate_nonce == candidate_nonce && &j.initiator == fp
                    })
                    .ok_or_else(|| refuse("no join in progress for this confirmation".into()))?;
                pj.remove(i)
            };
            let (p, keys) = active_with_keys(app, &group.partition).map_err(|e| refuse(e.to_string()))?;
            let me = Fingerprint::parse(&app.fingerprint().map_err(|e| peer_error(e.to_string()))?)
                .map_err(|e| peer_error(e.to_string()))?;
            // The transcript covers the group's id and partition, which the
            // confirmation's newer definition shares with the challenge's.
            let expected = prove(
                &keys,
                &transcript(
                    b"initiator",
                    &group,
                    &join.initiator_nonce,
                    &candidate_nonce,
                    &join.initiator,
                    &me,
                ),
            );
            if let Err(why) = check_proof(&expected, &proof, "the group's member") {
                warn!("join refused: {why}");
                return Err(refuse(format!("refused to join: {why}")));
            }
            if group.member(app.serial).is_none() {
                return Err(refuse("the group definition does not include this member".into()));
            }
            save_group_def(app, &p, &group).map_err(|e| peer_error(e.to_string()))?;
            if let Some(g) = group_of(app, &p.name) {
                *g.def.write_or_recover() = group.clone();
                g.wake.notify_one();
            } else {
                start(app, &p, group.clone(), keys).map_err(|e| peer_error(e.to_string()))?;
            }
            info!(group = %group.label, "joined HA group");
            Ok(PeerResponse::Joined)
        }
        PeerRequest::Heartbeat {
            group_id,
            epoch: _,
            state,
        } => {
            let (g, p) = authorized(app, fp, &group_id)?;
            let def = g.def();
            // The sender is who its certificate says, whatever the message claims.
            if let Some(sender) = def.member_by_fingerprint(&fp.to_hex()) {
                g.seen(sender.serial, &def.label, state);
            }
            Ok(PeerResponse::HeartbeatAck {
                epoch: g.def().epoch,
                state: g.state(&p),
            })
        }
        PeerRequest::Pull {
            group_id,
            origin,
            after_seq,
            limit,
        } => {
            let (g, p) = authorized(app, fp, &group_id)?;
            let limit = limit.min(BATCH);
            match g
                .outgoing(&p, origin, after_seq, limit)
                .map_err(WireError::from)?
            {
                Outgoing::Ops(ops) => {
                    let more = ops.len() as u32 == limit;
                    Ok(PeerResponse::Ops { ops, more })
                }
                Outgoing::Compacted { floor } => Ok(PeerResponse::Compacted { origin, floor }),
            }
        }
        PeerRequest::Snapshot {
            group_id,
            after,
            limit,
        } => {
            let (g, p) = authorized(app, fp, &group_id)?;
            g.snapshot_out(&p, after, limit).map_err(WireError::from)
        }
        PeerRequest::Push { group_id, ops } => {
            let (g, p) = authorized(app, fp, &group_id)?;
            // A member whose clock is off stamps its writes wrongly: take
            // none from it (the alert says so), though it still hears ours.
            let sender = g.def().member_by_fingerprint(&fp.to_hex()).map(|m| m.serial);
            if let Some(ms) = sender.and_then(|serial| g.peer_clock_refused(serial)) {
                return Err(WireError {
                    code: hahsm_token::ck::CKR_DEVICE_ERROR,
                    message: format!(
                        "push refused: your clock is {ms:+} ms off from this member's, beyond the maximum offset"
                    ),
                });
            }
            g.incoming(&p, ops).await.map_err(WireError::from)?;
            Ok(PeerResponse::PushAck { state: g.state(&p) })
        }
        PeerRequest::GroupUpdate { group } => {
            let (g, p) = authorized(app, fp, &group.id)?;
            let current = g.def();
            if group.epoch > current.epoch {
                save_group_def(app, &p, &group).map_err(|e| peer_error(e.to_string()))?;
                let removed = group.member(app.serial).is_none();
                *g.def.write_or_recover() = group.clone();
                if removed {
                    warn!(group = %group.label, "this member was removed from the group");
                    stop_group(app, &p.name);
                }
            }
            Ok(PeerResponse::Done)
        }
    }
}

impl From<AdminError> for WireError {
    fn from(e: AdminError) -> Self {
        peer_error(e.to_string())
    }
}
