//! One connection's sending side, shared by every task that answers or asks on it.
//!
//! A dedicated writer task fed by a channel costs a thread hand-off per frame, and on a small
//! machine those wake-ups cost more than a P-256 signature. So a task that finds the socket free
//! writes its frame itself (with anything already queued). A task that finds it busy queues its
//! frame and wakes a drain task, which sends everything queued in one write: no frame waits for
//! a wake-up unless others are being written at that moment, and then they share one TLS record.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::AsyncWrite;
use tokio::sync::Notify;

use crate::frame::write_frames;
use crate::{LinkError, LinkResult};

/// Queued frames beyond which a sender waits for the socket itself: a peer that stops reading
/// slows its senders down instead of growing this queue without bound.
const QUEUE_LIMIT: usize = 256;

/// The sending side of a connection, safe to share between tasks (see the module docs).
pub struct SharedWriter<W> {
    io: tokio::sync::Mutex<W>,
    queue: Mutex<Vec<Vec<u8>>>,
    wake: Notify,
    broken: AtomicBool,
}

/// Marks the writer broken if dropped while armed: a write abandoned halfway (its task
/// cancelled) leaves a partial frame on the stream, and nothing may follow it.
struct BreakIfAbandoned<'a>(&'a AtomicBool, bool);

impl Drop for BreakIfAbandoned<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> SharedWriter<W> {
    /// Takes the sending half of a stream and starts its drain task on the current runtime.
    /// The task ends once the writer is closed or broken.
    pub fn start(io: W) -> Arc<SharedWriter<W>> {
        let writer = Arc::new(SharedWriter {
            io: tokio::sync::Mutex::new(io),
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            broken: AtomicBool::new(false),
        });
        tokio::spawn(writer.clone().drain());
        writer
    }

    fn queue(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once a write failed or was abandoned, or the writer was closed: the connection
    /// cannot carry another frame.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Sends one frame: at once if the socket is free, else with the next batch. `Ok` means the
    /// frame was written or queued behind a write in progress; a later failure of that write
    /// breaks the writer, and the connection's reader sees the connection end.
    pub async fn send(&self, frame: Vec<u8>) -> LinkResult<()> {
        if self.is_broken() {
            return Err(LinkError::Closed);
        }
        let io = match self.io.try_lock() {
            Ok(io) => io,
            Err(_) => {
                let backlog = {
                    let mut queue = self.queue();
                    queue.push(frame);
                    queue.len()
                };
                self.wake.notify_one();
                if backlog < QUEUE_LIMIT {
                    return Ok(());
                }
                // The peer is not keeping up: wait for the socket and send the backlog here.
                let mut io = self.io.lock().await;
                let batch = std::mem::take(&mut *self.queue());
                return self.write(&mut io, &batch).await;
            }
        };
        let mut io = io;
        let mut batch = std::mem::take(&mut *self.queue());
        batch.push(frame);
        let written = self.write(&mut io, &batch).await;
        drop(io);
        // Frames queued while this one was written go with the drain task.
        if !self.queue().is_empty() {
            self.wake.notify_one();
        }
        written
    }

    async fn write(&self, io: &mut W, batch: &[Vec<u8>]) -> LinkResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut armed = BreakIfAbandoned(&self.broken, true);
        let written = write_frames(io, batch).await;
        armed.1 = written.is_err();
        drop(armed);
        if written.is_err() {
            self.wake.notify_one();
        }
        written
    }

    async fn drain(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            if self.is_broken() {
                return;
            }
            let mut io = self.io.lock().await;
            loop {
                let batch = std::mem::take(&mut *self.queue());
                if batch.is_empty() {
                    break;
                }
                if self.write(&mut io, &batch).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Stops the drain task without waiting; frames still queued are dropped. For owners that
    /// are going away and cannot wait (a `Drop`).
    pub fn abandon(&self) {
        self.broken.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Sends whatever is still queued, then stops the drain task. Frames sent after this fail.
    pub async fn close(&self) -> LinkResult<()> {
        let mut io = self.io.lock().await;
        let batch = std::mem::take(&mut *self.queue());
        let written = self.write(&mut io, &batch).await;
        self.broken.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::read_frame;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_frame_from_many_tasks_arrives_whole() {
        let (a, mut b) = tokio::io::duplex(1024);
        let writer = SharedWriter::start(a);
        let mut tasks = Vec::new();
        for t in 0u8..16 {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u8..50 {
                    w.send(vec![t, i, 0xAA]).await.unwrap();
                }
            }));
        }
        let reader = tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            while seen.len() < 16 * 50 {
                let f = read_frame(&mut b, 64).await.unwrap().expect("a frame");
                assert_eq!((f.len(), f[2]), (3, 0xAA), "a frame was torn");
                assert!(seen.insert((f[0], f[1])), "a frame arrived twice");
            }
        });
        for t in tasks {
            t.await.unwrap();
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("every queued frame was sent")
            .unwrap();
    }

    #[tokio::test]
    async fn a_write_abandoned_halfway_breaks_the_writer() {
        // The peer reads nothing and the pipe holds 8 bytes: a 100-byte frame cannot finish.
        let (a, _b) = tokio::io::duplex(8);
        let writer = SharedWriter::start(a);
        let stalled = tokio::time::timeout(std::time::Duration::from_millis(50), writer.send(vec![1; 100]));
        assert!(stalled.await.is_err(), "the write should still be pending");
        assert!(writer.is_broken());
        assert!(matches!(writer.send(vec![2]).await, Err(LinkError::Closed)));
    }

    #[tokio::test]
    async fn close_sends_what_is_queued() {
        let (a, mut b) = tokio::io::duplex(1024);
        let writer = SharedWriter::start(a);
        writer.queue().push(b"queued".to_vec());
        writer.close().await.unwrap();
        assert_eq!(read_frame(&mut b, 64).await.unwrap().unwrap(), b"queued");
        assert!(writer.send(b"late".to_vec()).await.is_err());
    }
}
