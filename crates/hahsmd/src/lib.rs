//! `hahsmd`, the appliance daemon: one per HSM member.
//!
//! It keeps the member's encrypted store, performs every cryptographic operation
//! itself, serves clients over mutual TLS with pinned certificates, and takes the
//! operator's commands on a local admin socket.
//!
//! The pieces:
//! - [`appliance`]: the member's state: HSM initialisation, the SO login, policies,
//!   partitions and their activation, registered clients;
//! - [`partition`]: an activated partition: its master key, its objects in memory,
//!   and the write path that commits each change with its op-log entry;
//! - [`keyops`]: one client request against a partition;
//! - [`server`]: the TLS listener and the multiplexed connection loop;
//! - [`replication`]: HA groups: dual-control keys, the join handshake, the
//!   peer listener, heartbeats, failure detection and anti-entropy;
//! - [`admin`]: the admin socket;
//! - [`journal`]: the hash-chained audit journal of administrative actions;
//! - [`custody`]: the domain secret from a whole file or M-of-N shares, and
//!   encrypted partition backups;
//! - [`monitor`]: monitoring with no application: the metrics endpoint
//!   ([`metrics`]), alerts ([`alerts`]) and the loop that watches the groups.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod alerts;
pub mod appliance;
pub mod backup;
pub mod compaction;
pub mod config;
pub mod custody;
pub mod endpoint;
pub mod error;
pub mod health;
pub mod journal;
pub mod key_cache;
pub mod keyops;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod object_index;
pub mod partition;
pub mod pin_records;
pub mod pins;
pub mod recent_ops;
pub mod replication;
pub mod server;
pub mod sync;
pub mod watch;

pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch, for hybrid logical clocks.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes a file that scripts poll for (the bound addresses): to a temporary
/// name, then renamed, so a reader never sees it empty or half written.
pub fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// How work that must never stop halfway ended, as its caller saw it.
pub enum Completion<T> {
    Done(T),
    /// The task failed (it panicked): it did not finish.
    Failed,
    /// The deadline passed; the work goes on to its end in the background.
    StillRunning,
}

/// Runs `work` in a task of its own and waits for it at most `deadline`.
/// For writes: dropping a write's future at its deadline could leave the
/// member's memory ahead of its store, so the deadline bounds only the wait.
pub async fn run_to_completion<T: Send + 'static>(
    deadline: std::time::Duration,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Completion<T> {
    match tokio::time::timeout(deadline, tokio::spawn(work)).await {
        Ok(Ok(r)) => Completion::Done(r),
        Ok(Err(_)) => Completion::Failed,
        Err(_) => Completion::StillRunning,
    }
}
