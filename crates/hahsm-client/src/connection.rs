//! A connection to one member: mutual TLS with the member's certificate pinned,
//! a protocol-version handshake, then many requests in flight at once, each
//! matched to its answer by request id and bounded by its own deadline.
use crate::config::{ClientConfig, ServerEntry};
use hahsm_link::{Fingerprint, LinkError};
use hahsm_proto::client::{Hello, MemberInfo, Request, RequestFrame, Response, ResponseFrame, Welcome};
use hahsm_proto::{decode, encode, WireError, PROTOCOL_VERSION};
use hahsm_token::ck;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

type WriteHalf = tokio::io::WriteHalf<hahsm_link::ClientStream>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("{server}: {source}")]
    Link { server: String, source: LinkError },
    /// The member answered with an error.
    #[error("{0}")]
    Remote(WireError),
    #[error("{server}: no answer within {ms} ms")]
    Timeout { server: String, ms: u64 },
    #[error("{server}: the connection was lost")]
    Disconnected { server: String },
    #[error("{0}")]
    Config(String),
    #[error("{server}: protocol error: {message}")]
    Protocol { server: String, message: String },
}

impl ClientError {
    /// The PKCS#11 return code an application should see.
    pub fn ckr(&self) -> u64 {
        match self {
            // A vendor code of the member's, for clients that can try another.
            ClientError::Remote(e) if e.code == hahsm_token::error::CKR_NO_QUORUM => ck::CKR_DEVICE_ERROR,
            ClientError::Remote(e) => e.code,
            ClientError::Disconnected { .. } => ck::CKR_DEVICE_REMOVED,
            ClientError::Link {
                source: LinkError::ClientNotRegistered,
                ..
            } => ck::CKR_TOKEN_NOT_RECOGNIZED,
            ClientError::Link { .. } | ClientError::Timeout { .. } | ClientError::Protocol { .. } => {
                ck::CKR_DEVICE_ERROR
            }
            ClientError::Config(_) => ck::CKR_GENERAL_ERROR,
        }
    }

    /// True when the request may not have reached the member, or its answer
    /// was lost: a write retried after this must reuse its operation id.
    pub fn is_connection_failure(&self) -> bool {
        !matches!(self, ClientError::Remote(_) | ClientError::Config(_))
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response, WireError>>>>>;

pub struct MemberConnection {
    server: String,
    info: MemberInfo,
    next_id: AtomicU64,
    pending: Pending,
    outgoing: Arc<hahsm_link::SharedWriter<WriteHalf>>,
    closed: Arc<AtomicBool>,
    request_timeout: Duration,
    /// Dropped with the connection, which ends its reader task.
    _stop_reader: oneshot::Sender<()>,
}

impl Drop for MemberConnection {
    fn drop(&mut self) {
        self.outgoing.abandon();
    }
}

/// Opens a link to one configured server: TCP, TLS with the server's
/// certificate pinned, the link greeting, then the hello exchange.
pub(crate) async fn open_link(
    config: &ClientConfig,
    server: &ServerEntry,
) -> Result<(hahsm_link::ClientStream, MemberInfo), ClientError> {
    let link = |source| ClientError::Link {
        server: server.name.clone(),
        source,
    };
    let identity = hahsm_link::load_identity(&config.cert, &config.key).map_err(link)?;
    let pinned = Fingerprint::parse(&server.fingerprint).map_err(link)?;
    let tls = hahsm_link::client_config(identity, pinned).map_err(link)?;
    let mut stream = hahsm_link::connect(
        &server.address,
        tls,
        config.connect_timeout(),
        config.handshake_timeout(),
    )
    .await
    .map_err(link)?;
    if let Some(idle) = config.keepalive() {
        hahsm_link::keep_alive(stream.get_ref().0, idle).map_err(|e| link(e.into()))?;
    }
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        client_software: format!("hahsm-client {}", env!("CARGO_PKG_VERSION")),
    };
    hahsm_link::write_frame(&mut stream, &encode(&hello))
        .await
        .map_err(link)?;
    let answer = tokio::time::timeout(
        config.handshake_timeout(),
        hahsm_link::read_frame(&mut stream, hahsm_proto::DEFAULT_MAX_FRAME),
    )
    .await
    .map_err(|_| link(LinkError::HandshakeTimeout))?
    .map_err(link)?
    .ok_or_else(|| ClientError::Disconnected {
        server: server.name.clone(),
    })?;
    let info = match decode::<Welcome>(&answer) {
        Ok(Welcome::Accepted(info)) => info,
        Ok(Welcome::Refused(e)) => return Err(ClientError::Remote(e)),
        Err(e) => {
            return Err(ClientError::Protocol {
                server: server.name.clone(),
                message: e.to_string(),
            })
        }
    };
    Ok((stream, info))
}

impl MemberConnection {
    /// Connects to one configured server and completes the hello exchange.
    pub async fn connect(
        config: &ClientConfig,
        server: &ServerEntry,
    ) -> Result<MemberConnection, ClientError> {
        let (stream, info) = open_link(config, server).await?;
        let (mut reader, writer) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        // The calling thread writes its own request when the socket is free:
        // no hand-off to a writer task on the way out.
        let outgoing = hahsm_link::SharedWriter::start(writer);
        let reader_pending = pending.clone();
        let reader_closed = closed.clone();
        let (stop_reader, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    f = hahsm_link::read_frame(&mut reader, u32::MAX >> 4) => f,
                    // The connection was dropped: close the socket now rather
                    // than when the member times it out.
                    _ = &mut stopped => break,
                };
                let Ok(Some(frame)) = frame else { break };
                let Ok(ResponseFrame { id, result }) = decode::<ResponseFrame>(&frame) else {
                    break;
                };
                let waiter = reader_pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(w) = waiter {
                    let _ = w.send(result);
                } else if id == 0 {
                    // An error about the connection itself; it is closing.
                    break;
                }
            }
            reader_closed.store(true, Ordering::SeqCst);
            // Wake every caller still waiting: their answers will not come.
            reader_pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        Ok(MemberConnection {
            server: server.name.clone(),
            info,
            next_id: AtomicU64::new(1),
            pending,
            outgoing,
            closed,
            request_timeout: config.request_timeout(),
            _stop_reader: stop_reader,
        })
    }

    pub fn info(&self) -> &MemberInfo {
        &self.info
    }

    pub fn server_name(&self) -> &str {
        &self.server
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.outgoing.is_broken()
    }

    /// Sends one request and waits for its answer, at most the configured
    /// request timeout.
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        self.call_with_deadline(request, self.request_timeout).await
    }

    pub async fn call_with_deadline(
        &self,
        request: Request,
        deadline: Duration,
    ) -> Result<Response, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Disconnected {
                server: self.server.clone(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let frame = encode(&RequestFrame {
            id,
            deadline_ms: deadline.as_millis().min(u32::MAX as u128) as u32,
            issued_unix_ms: hahsm_proto::client::unix_ms(),
            request,
        });
        // A member closes the link on a frame over its limit; say why instead.
        if frame.len() > hahsm_proto::DEFAULT_MAX_FRAME as usize {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(ClientError::Remote(WireError {
                code: ck::CKR_ARGUMENTS_BAD,
                message: format!(
                    "the request is {} bytes; a frame may hold at most {} (the member's limit)",
                    frame.len(),
                    hahsm_proto::DEFAULT_MAX_FRAME
                ),
            }));
        }
        // The reader clears `pending` when the connection ends; a request
        // registered just after that must not wait for its deadline.
        if self.outgoing.send(frame).await.is_err() || self.is_closed() {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(ClientError::Disconnected {
                server: self.server.clone(),
            });
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(remote))) => Err(ClientError::Remote(remote)),
            Ok(Err(_)) => Err(ClientError::Disconnected {
                server: self.server.clone(),
            }),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                Err(ClientError::Timeout {
                    server: self.server.clone(),
                    ms: deadline.as_millis() as u64,
                })
            }
        }
    }
}

/// A fresh client operation id for a write.
pub fn new_op_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    // The system RNG failing is not recoverable; an all-zero id would only
    // merge two writes' retries, so fall back to the clock and a counter.
    if aws_lc_rs::rand::fill(&mut id).is_err() {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        id[..8].copy_from_slice(&(t as u64).to_le_bytes());
        id[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    id
}
