//! The tokio runtime that carries the module's network I/O, started by
//! `C_Initialize` and stopped by `C_Finalize`, and the hand-off that runs a
//! future on it from any application thread under a time limit. It knows
//! nothing of members, slots or sessions.
use crate::error::{rv, Error, Result};
use crate::log;
use crate::sync::lock;
use hahsm_token::ck;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

pub struct Runtime {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

impl Runtime {
    /// A runtime with a few worker threads (2 to 4, by the cores there are).
    pub fn start() -> Result<Runtime> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("hahsm-pkcs11")
            .enable_all()
            .build()
            .map_err(|e| {
                log::error(&format!("C_Initialize: cannot start the I/O runtime: {e}"));
                Error::Rv(ck::CKR_GENERAL_ERROR)
            })?;
        Ok(Runtime {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// Whether `shutdown` has not been called yet.
    pub fn is_running(&self) -> bool {
        lock(&self.runtime).is_some()
    }

    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(fut);
    }

    /// Runs a future on the runtime and waits for it, never longer than
    /// `limit` (then `CKR_DEVICE_ERROR`). Works from any application thread,
    /// including one that is itself inside another tokio runtime.
    pub fn block<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let bounded = async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => rv(ck::CKR_DEVICE_ERROR),
            }
        };
        let outside_any_runtime = match tokio::runtime::Handle::try_current() {
            Ok(_) => false,
            // During thread-local destruction (a session closed from a TLS
            // destructor) tokio cannot enter the runtime on this thread:
            // hand the future to a worker instead.
            Err(e) => !e.is_thread_local_destroyed(),
        };
        if outside_any_runtime {
            // The common case: drive the future on this thread; the runtime's
            // workers carry the socket I/O and the timers.
            return self.handle.block_on(bounded);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(bounded.await);
        });
        rx.recv_timeout(limit + Duration::from_secs(1))
            .unwrap_or_else(|_| rv(ck::CKR_DEVICE_ERROR))
    }

    /// Stops the runtime's threads: on the calling thread when it may (the
    /// common case, which starts no thread: a forked child that starts one
    /// can meet the parent's half-updated thread tables), else from a thread
    /// of our own, as when the caller is inside an async context or in a
    /// thread-local destructor, where tokio forbids it. With no thread to be
    /// had (the process is exiting), the runtime's threads are left to the exit.
    pub fn shutdown(&self) {
        if let Some(rt) = lock(&self.runtime).take() {
            let here =
                matches!(tokio::runtime::Handle::try_current(), Err(e) if !e.is_thread_local_destroyed());
            if here {
                rt.shutdown_timeout(Duration::from_secs(2));
            } else if let Ok(stopper) =
                std::thread::Builder::new().spawn(move || rt.shutdown_timeout(Duration::from_secs(2)))
            {
                let _ = stopper.join();
            }
        }
    }
}
