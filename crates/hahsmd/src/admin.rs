//! The admin socket: the operator's console. A Unix socket with mode 0600 in
//! the member's private data directory; frames as on the client link, without
//! TLS, one request answered at a time.
use crate::appliance::Appliance;
use crate::custody;
use crate::journal::{Action, Who};
use crate::replication;
use hahsm_proto::admin::GroupStatus;
use hahsm_proto::admin::{AdminRequest, AdminResponse, MemberStatus};
use hahsm_proto::peer::WriteConcern;
use hahsm_proto::{decode, encode};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::net::UnixListener;
use tracing::{info, warn};

pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        // A socket left by a killed daemon; nothing listens on it.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(app: Arc<Appliance>, listener: UnixListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        let actor = match stream.peer_cred() {
            Ok(c) => format!("uid {}", c.uid()),
            Err(_) => "uid ?".into(),
        };
        tokio::spawn(async move {
            // A chunked restore lives as long as its connection.
            let mut restore: Option<crate::backup::Restore> = None;
            while let Ok(Some(frame)) = hahsm_link::read_frame(&mut stream, ADMIN_MAX_FRAME).await {
                let response = match decode::<AdminRequest>(&frame) {
                    Ok(req) => {
                        let _guard = app.admin_lock().lock().await;
                        dispatch(&app, &actor, req, &mut restore).await
                    }
                    Err(e) => AdminResponse::Error(e.to_string()),
                };
                if hahsm_link::write_frame(&mut stream, &encode(&response))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if let Some(unfinished) = restore.take() {
                let _guard = app.admin_lock().lock().await;
                unfinished.abort(&app);
            }
        });
    }
}

/// The largest admin frame: a format-1 backup being restored travels in one.
const ADMIN_MAX_FRAME: u32 = hahsm_proto::DEFAULT_MAX_FRAME * 16;

/// Runs one request. Every request that changes something is journaled here,
/// whatever it is, with its result: a new request needs no code to be audited.
async fn dispatch(
    app: &Appliance,
    actor: &str,
    req: AdminRequest,
    restore: &mut Option<crate::backup::Restore>,
) -> AdminResponse {
    let name = req.name();
    let journaled = (!req.is_read_only()).then(|| {
        let who = Who {
            role: if app.so_logged_in() { "so" } else { "console" }.into(),
            actor: actor.to_string(),
            fingerprint: "-".into(),
        };
        (who, req.object(), req.redacted())
    });
    let result = run(app, req, restore).await;
    let response = match result {
        Ok(r) => {
            info!(command = %name, "admin command done");
            r
        }
        Err(e) => {
            warn!(command = %name, error = %e, "admin command refused");
            AdminResponse::Error(e.to_string())
        }
    };
    let Some((who, object, request)) = journaled else {
        return response;
    };
    let result = match &response {
        AdminResponse::Error(e) => format!("refused: {e}"),
        _ => "done".to_string(),
    };
    let action = Action {
        action: name,
        object,
        request,
        result,
    };
    match app.journal.append(&who, action) {
        Ok(()) => response,
        Err(e) => {
            warn!(error = %e, "cannot write the journal");
            AdminResponse::Error(format!(
                "the command ended ({}) but could not be journaled: {e}",
                if matches!(response, AdminResponse::Error(_)) {
                    "refused"
                } else {
                    "done"
                }
            ))
        }
    }
}

fn groups(statuses: Vec<GroupStatus>) -> anyhow::Result<AdminResponse> {
    Ok(AdminResponse::Groups(statuses))
}

async fn run(
    app: &Appliance,
    req: AdminRequest,
    restore: &mut Option<crate::backup::Restore>,
) -> anyhow::Result<AdminResponse> {
    use AdminRequest as R;
    let done = |m: &str| Ok(AdminResponse::Done(m.to_string()));
    match req {
        R::Status => Ok(AdminResponse::Status(MemberStatus {
            initialized: app.is_initialized(),
            hsm_label: app.hsm_label(),
            serial: app.serial,
            so_logged_in: app.so_logged_in(),
            listen: app.config.listen.clone(),
            fingerprint: app.fingerprint().unwrap_or_default(),
            software_version: crate::SOFTWARE_VERSION.to_string(),
            peer_address: app.peer_address(),
            metrics: app.monitor.metrics_url(),
            fips: hahsm_crypto::fips_mode(),
        })),
        R::HsmInit {
            label,
            so_secret,
            domain_secret,
        } => {
            custody::hsm_init(app, &label, &so_secret, &domain_secret)?;
            done(&format!("HSM '{label}' initialized (serial {})", app.serial))
        }
        R::HsmLogin { so_secret } => {
            app.hsm_login(&so_secret)?;
            done("SO logged in")
        }
        R::HsmLogout => {
            app.hsm_logout();
            done("SO logged out")
        }
        R::HsmShowPolicies => Ok(AdminResponse::Policies(app.hsm_policy_lines()?)),
        R::HsmChangePolicy { policy, value } => {
            app.hsm_change_policy(&policy, value)?;
            done(&format!("HSM policy {policy} set to {value}"))
        }
        R::FactoryReset => {
            replication::stop_all(app);
            app.factory_reset()?;
            crate::custody::forget(app)?;
            done("factory reset done: the HSM is uninitialized")
        }
        R::RegenCert {
            common_name,
            subject_alt_names,
        } => {
            app.require_so()?;
            let fp = app.regen_cert(&common_name, &subject_alt_names)?;
            done(&format!("new server certificate; SHA-256 fingerprint {fp}"))
        }
        R::Fingerprint => {
            app.tls_acceptor()?;
            Ok(AdminResponse::Fingerprint(app.fingerprint()?))
        }
        R::PartitionCreate {
            name,
            owner_secret,
            initial_pin,
        } => {
            let (serial, pin) = app.partition_create(&name, &owner_secret, initial_pin.as_ref())?;
            Ok(AdminResponse::PartitionCreated {
                serial,
                initial_pin: pin,
            })
        }
        R::PartitionChangePin {
            name,
            old_pin,
            owner_secret,
            new_pin,
        } => {
            match (old_pin.as_ref(), owner_secret.as_ref()) {
                (Some(old), None) => crate::pins::change_with_old_pin(app, &name, old, &new_pin).await?,
                _ => {
                    app.partition_change_pin(&name, owner_secret.as_ref(), &new_pin)?;
                    crate::pins::publish(app, &name).await?;
                }
            }
            done(&format!("PIN of partition '{name}' changed"))
        }
        R::PartitionChangeSoPin {
            name,
            owner_secret,
            new_pin,
        } => {
            app.partition_change_so_pin(&name, &owner_secret, &new_pin)?;
            crate::pins::publish(app, &name).await?;
            done(&format!("SO PIN of partition '{name}' changed"))
        }
        R::PartitionActivate { name, owner_secret } => {
            app.partition_activate(&name, &owner_secret)?;
            replication::resume_activated(app, &name);
            done(&format!("partition '{name}' activated"))
        }
        R::PartitionDeactivate { name } => {
            app.partition_deactivate(&name)?;
            replication::stop_group(app, &name);
            done(&format!("partition '{name}' deactivated"))
        }
        R::PartitionShowPolicies { name } => Ok(AdminResponse::Policies(app.partition_policies(&name)?)),
        R::PartitionChangePolicy { name, policy, value } => {
            app.partition_change_policy(&name, &policy, value)?;
            done(&format!("partition '{name}' policy {policy} set to {value}"))
        }
        R::PartitionShowContents { name } => Ok(AdminResponse::Contents(app.partition_contents(&name)?)),
        R::PartitionClear { name } => {
            app.partition_clear(&name).await?;
            replication::replicate_clear(app, &name).await?;
            done(&format!("partition '{name}' cleared"))
        }
        R::PartitionDelete { name } => {
            app.partition_delete(&name)?;
            replication::stop_group(app, &name);
            done(&format!("partition '{name}' deleted"))
        }
        R::PartitionList => Ok(AdminResponse::Partitions(app.partition_list()?)),
        R::HaPrepare {
            partition,
            owner_secret,
        } => {
            replication::prepare(app, &partition, &owner_secret)?;
            done(&format!("partition '{partition}' is prepared for replication"))
        }
        R::HaCreateGroup {
            label,
            partition,
            quorum,
            replication_timeout_ms,
        } => {
            let concern = if quorum {
                WriteConcern::Quorum
            } else {
                WriteConcern::AllReachable
            };
            let status = replication::create_group(app, &label, &partition, concern, replication_timeout_ms)?;
            groups(vec![status])
        }
        R::HaAddMember {
            group,
            peer_address,
            fingerprint,
            standby,
            domain,
        } => {
            custody::authorize_add_member(app, domain.as_ref())?;
            groups(vec![
                replication::add_member(app, &group, &peer_address, &fingerprint, standby).await?,
            ])
        }
        R::HaRemoveMember { group, serial } => {
            groups(vec![replication::remove_member(app, &group, serial).await?])
        }
        R::HaShow { group } => groups(replication::show(app, group.as_deref())?),
        R::HaSynchronize { group } => groups(vec![replication::synchronize(app, &group).await?]),
        R::ClientRegister {
            name,
            hostname,
            fingerprint,
        } => {
            app.client_register(&name, &hostname, &fingerprint)?;
            done(&format!("client '{name}' registered"))
        }
        R::ClientRemove { name } => {
            app.client_remove(&name)?;
            done(&format!("client '{name}' removed"))
        }
        R::ClientList => Ok(AdminResponse::Clients(app.client_list()?)),
        R::ClientAssignPartition { client, partition } => {
            app.client_assign(&client, &partition, true)?;
            done(&format!("partition '{partition}' assigned to client '{client}'"))
        }
        R::ClientRevokePartition { client, partition } => {
            app.client_assign(&client, &partition, false)?;
            done(&format!("partition '{partition}' revoked from client '{client}'"))
        }
        R::JournalRead { after, limit } => {
            let (lines, head) = app.journal.read(after, limit.clamp(1, 10_000) as usize)?;
            Ok(AdminResponse::Journal {
                member: app.serial,
                hsm_label: app.hsm_label(),
                lines,
                head,
            })
        }
        R::PartitionBackup {
            name,
            owner_secret,
            domain,
            cursor,
        } => {
            let part = crate::backup::backup_part(app, &name, &owner_secret, &domain, cursor)?;
            Ok(AdminResponse::BackupPart {
                bytes: hahsm_proto::admin::Blob(part.bytes),
                cursor: part.cursor,
                done: part.done,
                total: part.total,
            })
        }
        R::PartitionRestore {
            name,
            owner_secret,
            domain,
            backup,
        } => {
            let serial = crate::backup::restore_v1(app, &name, &owner_secret, &domain, &backup).await?;
            done(&format!(
                "partition '{name}' restored from the backup (serial {serial}), activated, with a new origin id"
            ))
        }
        R::PartitionRestoreBegin {
            name,
            owner_secret,
            domain,
            head,
        } => {
            if restore.is_some() {
                anyhow::bail!("a restore is already in progress on this connection");
            }
            *restore = Some(crate::backup::restore_begin(
                app,
                &name,
                &owner_secret,
                &domain,
                &head.0,
            )?);
            done(&format!("restoring partition '{name}'"))
        }
        R::PartitionRestoreChunk { record } => {
            let Some(session) = restore.as_mut() else {
                anyhow::bail!("no restore in progress on this connection");
            };
            match session.chunk(app, &record.0).await {
                Ok((done, total)) => Ok(AdminResponse::RestoreProgress { done, total }),
                Err(e) => {
                    if let Some(failed) = restore.take() {
                        failed.abort(app);
                    }
                    Err(e.into())
                }
            }
        }
        R::PartitionRestoreEnd => {
            let Some(session) = restore.take() else {
                anyhow::bail!("no restore in progress on this connection");
            };
            let name = session.name().to_string();
            match session.end().await {
                Ok(serial) => done(&format!(
                    "partition '{name}' restored from the backup (serial {serial}), activated, with a new origin id"
                )),
                Err((session, e)) => {
                    session.abort(app);
                    Err(e.into())
                }
            }
        }
    }
}
