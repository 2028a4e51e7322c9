//! A connection that the calling thread drives itself: one request at a time,
//! written and answered on that thread with blocking socket calls.
//!
//! The multiplexed [`MemberConnection`](crate::MemberConnection) hands every
//! answer from its reader task to the waiting thread; on a small machine those
//! wake-ups cost as much as a signature. For the hot path (stateless
//! operations on token keys) a caller takes one of these from a pool instead,
//! and the kernel wakes it directly when its answer arrives.
//!
//! The link is opened exactly as for the multiplexed connection (pinned TLS,
//! greeting, hello), then taken off the async runtime. A connection whose call
//! failed or timed out is left in an unknown state and must be dropped: the
//! methods return an error and the owner does not return it to its pool.
use crate::connection::{open_link, ClientError};
use crate::{ClientConfig, ServerEntry};
use hahsm_link::rustls::{ClientConnection, StreamOwned};
use hahsm_link::{LinkError, FRAME_HEADER_LEN};
use hahsm_proto::client::{MemberInfo, Request, RequestFrame, Response, ResponseFrame};
use hahsm_proto::{decode, encode};
use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The largest answer accepted (as for the multiplexed connection).
const MAX_ANSWER: u32 = u32::MAX >> 4;

pub struct BlockingConnection {
    server: String,
    info: MemberInfo,
    stream: StreamOwned<ClientConnection, TcpStream>,
    next_id: u64,
}

impl BlockingConnection {
    /// Opens the link on the current tokio runtime (the handshake's deadlines
    /// are async timers), then detaches the socket from that runtime.
    pub async fn connect(config: &ClientConfig, server: &ServerEntry) -> Result<Self, ClientError> {
        let (stream, info) = open_link(config, server).await?;
        let (tcp, tls) = stream.into_inner();
        let detach = |e: io::Error| ClientError::Link {
            server: server.name.clone(),
            source: LinkError::Io(e),
        };
        let tcp = tcp.into_std().map_err(detach)?;
        tcp.set_nonblocking(false).map_err(detach)?;
        Ok(BlockingConnection {
            server: server.name.clone(),
            info,
            stream: StreamOwned::new(tls, tcp),
            next_id: 1,
        })
    }

    pub fn info(&self) -> &MemberInfo {
        &self.info
    }

    /// Sends one request and waits for its answer, all within `deadline`.
    pub fn call(&mut self, request: Request, deadline: Duration) -> Result<Response, ClientError> {
        let until = Instant::now() + deadline;
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode(&RequestFrame {
            id,
            deadline_ms: deadline.as_millis().min(u128::from(u32::MAX)) as u32,
            request,
        });
        let len = u32::try_from(frame.len()).map_err(|_| self.protocol("request too large"))?;
        let mut wire = Vec::with_capacity(FRAME_HEADER_LEN + frame.len());
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend_from_slice(&frame);
        self.stream
            .sock
            .set_write_timeout(Some(remaining(until)))
            .map_err(|e| self.io_error(e, deadline))?;
        self.stream
            .write_all(&wire)
            .and_then(|()| self.stream.flush())
            .map_err(|e| self.io_error(e, deadline))?;
        let answer = self.read_frame(until, deadline)?;
        let ResponseFrame { id: got, result } =
            decode::<ResponseFrame>(&answer).map_err(|e| self.protocol(&e.to_string()))?;
        match (got, result) {
            (got, result) if got == id => result.map_err(ClientError::Remote),
            // The member refused the connection itself and is closing it.
            (0, Err(e)) => Err(ClientError::Remote(e)),
            // Answers to earlier requests cannot come: one request at a time,
            // and a failed call drops the connection.
            _ => Err(self.protocol("an answer to another request")),
        }
    }

    fn read_frame(&mut self, until: Instant, deadline: Duration) -> Result<Vec<u8>, ClientError> {
        self.stream
            .sock
            .set_read_timeout(Some(remaining(until)))
            .map_err(|e| self.io_error(e, deadline))?;
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| self.io_error(e, deadline))?;
        let len = u32::from_be_bytes(header);
        if len > MAX_ANSWER {
            return Err(self.protocol(&format!("answer of {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut payload)
            .map_err(|e| self.io_error(e, deadline))?;
        Ok(payload)
    }

    fn io_error(&self, e: io::Error, deadline: Duration) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                server: self.server.clone(),
                ms: deadline.as_millis() as u64,
            },
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                ClientError::Disconnected {
                    server: self.server.clone(),
                }
            }
            _ => ClientError::Link {
                server: self.server.clone(),
                source: LinkError::Io(e),
            },
        }
    }

    fn protocol(&self, message: &str) -> ClientError {
        ClientError::Protocol {
            server: self.server.clone(),
            message: message.to_string(),
        }
    }
}

/// Time left before `until`; never zero, which a socket timeout would read as "none".
fn remaining(until: Instant) -> Duration {
    until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}
