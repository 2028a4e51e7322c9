//! The admin-socket client: the operator's console on the member's host.
use hahsm_proto::admin::{AdminRequest, AdminResponse};
use hahsm_proto::{decode, encode};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the member's admin socket {path}: {source} (is hahsmd running?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("admin socket: {0}")]
    Link(#[from] hahsm_link::LinkError),
    #[error("the member did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the member closed the admin connection")]
    Closed,
    #[error("malformed answer: {0}")]
    Decode(String),
    /// The member refused the command; the text says why.
    #[error("{0}")]
    Refused(String),
}

pub struct AdminClient {
    stream: UnixStream,
    timeout: Duration,
}

impl AdminClient {
    pub async fn connect(path: &Path) -> Result<AdminClient, AdminError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| AdminError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        // Partition activation decrypts every object, and key generation can
        // be slow: give admin commands a generous deadline.
        Ok(AdminClient {
            stream,
            timeout: Duration::from_secs(120),
        })
    }

    pub async fn call(&mut self, req: AdminRequest) -> Result<AdminResponse, AdminError> {
        let fut = async {
            hahsm_link::write_frame(&mut self.stream, &encode(&req)).await?;
            let frame = hahsm_link::read_frame(&mut self.stream, hahsm_proto::DEFAULT_MAX_FRAME * 16)
                .await?
                .ok_or(AdminError::Closed)?;
            decode::<AdminResponse>(&frame).map_err(|e| AdminError::Decode(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(AdminError::Timeout(self.timeout)),
            Ok(Ok(AdminResponse::Error(msg))) => Err(AdminError::Refused(msg)),
            Ok(r) => r,
        }
    }
}
