//! The client link: a TLS listener and, per connection, a reader loop that
//! runs requests concurrently; each answers as it completes, through the
//! connection's shared writer. Every request runs under its deadline.
use crate::admission::Admission;
use crate::appliance::Appliance;
use crate::keyops::{Connection, KeyOps};
use crate::Completion;
use hahsm_link::LinkError;
use hahsm_proto::client::{Hello, MemberInfo, RequestFrame, ResponseFrame, Welcome};
use hahsm_proto::{decode, encode, WireError, PROTOCOL_VERSION};
use hahsm_token::TokenError;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

pub async fn serve(app: Arc<Appliance>, listener: TcpListener) -> anyhow::Result<()> {
    let limits = &app.config.limits;
    let admission = Admission::new(
        limits.max_pending_handshakes,
        limits.max_connections,
        limits.max_connections_per_client,
    );
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Running out of file descriptors must not end the listener.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (app, admission) = (app.clone(), admission.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(app, admission, tcp).await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// A client clock this far ahead of the member's is taken as skew, not as a
/// request from the future: its deadline then counts from its arrival.
const MAX_CLOCK_SKEW_MS: u64 = 30_000;

/// How long the member may work on a request: until the client gives up (by
/// the time it was issued and its deadline), at most the configured maximum.
/// `None` when the client has already given up: the request waited in the
/// socket (say, while this member was stopped) and may have been retried on
/// another member, so it must not run, above all not a write.
fn time_left(request: &RequestFrame, max_ms: u64) -> Option<Duration> {
    let wait = u64::from(request.deadline_ms).min(max_ms);
    let now = hahsm_proto::client::unix_ms();
    if request.issued_unix_ms > now.saturating_add(MAX_CLOCK_SKEW_MS) {
        warn!(
            ahead_ms = request.issued_unix_ms - now,
            "client clock ahead of the member's"
        );
        return Some(Duration::from_millis(wait));
    }
    let gives_up = request
        .issued_unix_ms
        .saturating_add(u64::from(request.deadline_ms));
    let left = gives_up.saturating_sub(now).min(wait);
    (left > 0).then(|| Duration::from_millis(left))
}

fn wire(e: TokenError) -> WireError {
    WireError::from(e)
}

async fn connection(
    app: Arc<Appliance>,
    admission: Arc<Admission>,
    tcp: tokio::net::TcpStream,
) -> Result<(), LinkError> {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let limits = app.config.limits.clone();
    let acceptor = app.tls_acceptor().map_err(|e| LinkError::Config(e.to_string()))?;
    // Until the hello is answered the connection holds a place in the
    // handshake pool, which a newer connection may take.
    let pending = admission.handshake();
    let accepted = tokio::select! {
        r = hahsm_link::accept(tcp, &acceptor, limits.handshake_timeout()) => r,
        () = pending.evicted() => {
            debug!(%peer, "handshake evicted by a newer connection");
            return Ok(());
        }
    };
    let (mut stream, fp) = match accepted {
        Ok(x) => x,
        Err(e) => {
            warn!(%peer, error = %e, "TLS handshake failed");
            return Err(e);
        }
    };
    let Some(client) = app.client(&fp) else {
        warn!(%peer, fingerprint = %fp, "refused: client certificate not registered");
        return Ok(());
    };
    // The hello must come promptly too: a client that completes TLS and then
    // stalls holds a connection slot.
    let hello = tokio::select! {
        r = tokio::time::timeout(
            limits.handshake_timeout(),
            hahsm_link::read_frame(&mut stream, limits.max_frame_bytes),
        ) => r.map_err(|_| LinkError::HandshakeTimeout)??,
        () = pending.evicted() => {
            debug!(%peer, "hello evicted by a newer connection");
            return Ok(());
        }
    };
    drop(pending);
    let Some(hello) = hello else { return Ok(()) };
    let admitted = admission.establish(&fp);
    let welcome = match decode::<Hello>(&hello) {
        Ok(_) if admitted.is_err() => {
            let refusal = admitted
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            warn!(%peer, client = %client.name, "connection refused: {refusal}");
            Welcome::Refused(WireError {
                code: hahsm_token::ck::CKR_SESSION_COUNT,
                message: refusal,
            })
        }
        Ok(h) if h.protocol_version == PROTOCOL_VERSION => {
            info!(%peer, client = %client.name, software = %h.client_software, "client connected");
            Welcome::Accepted(MemberInfo {
                protocol_version: PROTOCOL_VERSION,
                hsm_label: app.hsm_label(),
                serial: app.serial,
                software_version: crate::SOFTWARE_VERSION.to_string(),
                client_name: client.name.clone(),
            })
        }
        Ok(h) => Welcome::Refused(WireError {
            code: hahsm_token::ck::CKR_DEVICE_ERROR,
            message: format!(
                "protocol version {} is not supported; this member speaks {PROTOCOL_VERSION}",
                h.protocol_version
            ),
        }),
        Err(e) => Welcome::Refused(WireError {
            code: hahsm_token::ck::CKR_DEVICE_ERROR,
            message: e.to_string(),
        }),
    };
    let refused = matches!(welcome, Welcome::Refused(_));
    hahsm_link::write_frame(&mut stream, &encode(&welcome)).await?;
    if refused {
        return Ok(());
    }

    let conn = Arc::new(Connection::new(fp, client.name.clone()));
    let (mut reader, writer) = tokio::io::split(stream);
    // Each request's task writes its own answer when the socket is free (no
    // writer-task hand-off); answers that meet a busy socket go out together.
    let tx = hahsm_link::SharedWriter::start(writer);
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight_per_connection.max(1)));
    loop {
        let frame = match tokio::time::timeout(
            limits.idle_timeout(),
            hahsm_link::read_frame(&mut reader, limits.max_frame_bytes),
        )
        .await
        {
            Err(_) => {
                debug!(client = %client.name, "closing idle connection");
                break;
            }
            Ok(Ok(Some(f))) => f,
            // An end of stream at a frame boundary, with or without TLS's
            // close_notify, is an orderly close (applications that exit
            // rarely send one), not a bad frame.
            Ok(Ok(None)) | Ok(Err(hahsm_link::LinkError::Closed)) => {
                debug!(client = %client.name, "client closed the connection");
                break;
            }
            // A truncated frame, or a length beyond the limit.
            Ok(Err(e)) => {
                warn!(client = %client.name, error = %e, "bad frame; closing the connection");
                let _ = tx
                    .send(encode(&ResponseFrame {
                        id: 0,
                        result: Err(wire(TokenError::ArgumentsBad(e.to_string()))),
                    }))
                    .await;
                break;
            }
        };
        let request = match decode::<RequestFrame>(&frame) {
            Ok(r) => r,
            Err(e) => {
                warn!(client = %client.name, error = %e, "malformed request frame; closing the connection");
                let _ = tx
                    .send(encode(&ResponseFrame {
                        id: 0,
                        result: Err(wire(TokenError::ArgumentsBad(e.to_string()))),
                    }))
                    .await;
                break;
            }
        };
        // Backpressure: a client with too many requests in flight waits here.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (app, conn, tx) = (app.clone(), conn.clone(), tx.clone());
        tokio::spawn(async move {
            let name = request.request.name();
            let Some(deadline) = time_left(&request, app.config.limits.max_request_deadline_ms) else {
                warn!(client = %conn.client_name, request = name, "request expired before it was read; not run");
                let _ = tx
                    .send(encode(&ResponseFrame {
                        id: request.id,
                        result: Err(wire(TokenError::DeadlineExceeded)),
                    }))
                    .await;
                drop(permit);
                return;
            };
            let result = if request.request.is_write() {
                // A write never stops halfway (`run_to_completion`); a retry
                // with the same operation id gets its result.
                let work = {
                    let (app, conn) = (app.clone(), conn.clone());
                    let commit_by = std::time::Instant::now() + deadline;
                    crate::partition::COMMIT_BY.scope(commit_by, async move {
                        KeyOps {
                            app: &app,
                            conn: &conn,
                        }
                        .handle(request.request)
                        .await
                    })
                };
                match crate::run_to_completion(deadline, work).await {
                    Completion::Done(r) => r.map_err(wire),
                    Completion::Failed => Err(wire(TokenError::DeviceError("the request failed".into()))),
                    Completion::StillRunning => {
                        warn!(client = %conn.client_name, request = name, "request deadline passed; the write completes in the background");
                        Err(wire(TokenError::DeadlineExceeded))
                    }
                }
            } else {
                let ops = KeyOps {
                    app: &app,
                    conn: &conn,
                };
                match tokio::time::timeout(deadline, ops.handle(request.request)).await {
                    Ok(r) => r.map_err(wire),
                    Err(_) => {
                        warn!(client = %conn.client_name, request = name, "request deadline passed");
                        Err(wire(TokenError::DeadlineExceeded))
                    }
                }
            };
            if let Err(e) = &result {
                // The member's own failures, not the application's mistakes.
                if e.code == hahsm_token::ck::CKR_DEVICE_ERROR || e.code == hahsm_token::error::CKR_NO_QUORUM
                {
                    warn!(client = %conn.client_name, request = name, error = %e.message, "request failed");
                }
            }
            let _ = tx
                .send(encode(&ResponseFrame {
                    id: request.id,
                    result,
                }))
                .await;
            drop(permit);
        });
    }
    // Let the requests still running answer, and those answers reach the
    // client, before closing.
    let max = u32::try_from(limits.max_in_flight_per_connection.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _all_done = in_flight.acquire_many(max).await;
        let _ = tx.close().await;
    })
    .await;
    tx.abandon();
    Ok(())
}
