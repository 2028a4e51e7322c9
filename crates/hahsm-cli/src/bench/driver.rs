//! Runs a workload: threads in this process, or worker processes of
//! `hahsm bench` itself whose samples are merged. Each thread warms up, then
//! counts the operations that complete inside one fixed window and records
//! their latencies; progress shows on stderr while it runs.
use super::stats::Sample;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// One thread's operation, run again and again.
pub type Op<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// Something to measure: it makes each thread's operation on that thread
/// (a PKCS#11 session is not shared between threads).
pub trait Workload: Sync {
    fn thread_op(&self, thread: usize) -> Result<Op<'_>>;
}

/// How long: a warm-up (not counted), then the measured window.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
}

/// Measures `workload` on `threads` threads of this process. `counter` counts
/// measured operations as they complete (for progress).
pub fn measure(
    workload: &dyn Workload,
    threads: usize,
    timing: Timing,
    counter: &AtomicU64,
) -> Result<Sample> {
    let ready = Barrier::new(threads + 1);
    let go = Barrier::new(threads + 1);
    let start = Mutex::new(Instant::now());
    let first_error = Mutex::new(None::<String>);
    let results: Vec<Result<Sample>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (ready, go, start, first_error) = (&ready, &go, &start, &first_error);
                scope.spawn(move || -> Result<Sample> {
                    let op = workload.thread_op(i);
                    ready.wait();
                    go.wait();
                    let mut op = op?;
                    let begin = *start.lock().unwrap_or_else(|p| p.into_inner());
                    let (warm_end, end) = (begin + timing.warmup, begin + timing.warmup + timing.window);
                    let mut sample = Sample::empty(timing.window.as_secs_f64());
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let result = op();
                        let t1 = Instant::now();
                        let counted = t1 > warm_end && t1 <= end;
                        match result {
                            Ok(()) if counted => {
                                let us = (t1 - t0).as_micros().clamp(1, u128::from(u64::MAX)) as u64;
                                sample.latency_us.saturating_record(us);
                                sample.ops += 1;
                                counter.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(()) => {}
                            Err(e) => {
                                if counted {
                                    sample.errors += 1;
                                }
                                first_error
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert_with(|| format!("{e:#}"));
                                // Failing fast must not turn into a busy loop.
                                std::thread::sleep(Duration::from_millis(2));
                            }
                        }
                    }
                    Ok(sample)
                })
            })
            .collect();
        ready.wait();
        *start.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        go.wait();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a bench thread panicked")))
            })
            .collect()
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        eprintln!("hahsm bench: an operation failed: {e}");
    }
    let mut total = Sample::empty(timing.window.as_secs_f64());
    for r in results {
        total.merge(&r?)?;
    }
    Ok(total)
}

/// Live progress on stderr while a point runs: on a terminal, one line
/// rewritten every second; otherwise a line every 10 s, for long runs only.
pub struct Progress {
    pub counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: String, timing: Timing) -> Progress {
        let counter = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let total = timing.warmup + timing.window;
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        let thread = (tty || total >= Duration::from_secs(30)).then(|| {
            let (counter, stop) = (counter.clone(), stop.clone());
            std::thread::spawn(move || {
                let begin = Instant::now();
                let mut last = (Instant::now(), 0u64);
                let mut next = begin + every;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let now = Instant::now();
                    if now < next {
                        continue;
                    }
                    next += every;
                    let n = counter.load(Ordering::Relaxed);
                    let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64();
                    last = (now, n);
                    let phase = if now - begin < timing.warmup {
                        "warm-up"
                    } else {
                        "measuring"
                    };
                    let line = format!(
                        "  {label}: {phase} {:.0}/{:.0} s, {rate:.0} ops/s",
                        (now - begin).as_secs_f64(),
                        total.as_secs_f64()
                    );
                    if tty {
                        eprint!("\r{line:<78}");
                    } else {
                        eprintln!("{line}");
                    }
                }
                if tty {
                    eprint!("\r{:<78}\r", "");
                }
            })
        });
        Progress {
            counter,
            stop,
            thread,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// The worker protocol, on the worker's stdin and stdout, one line each:
// worker → "ready" once its keys and sessions are set up; parent → "go";
// worker → "progress N" now and then; worker → "result {json}" at the end.

/// The worker's side: set up, say ready, wait for go, measure, report.
pub fn serve_as_worker(workload: &dyn Workload, threads: usize, timing: Timing) -> Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        bail!("the parent bench went away");
    }
    let counter = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reporter = {
        let (counter, done) = (counter.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                println!("progress {}", counter.load(Ordering::Relaxed));
            }
        })
    };
    let sample = measure(workload, threads, timing, &counter);
    done.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    println!("result {}", sample?.to_wire()?);
    Ok(())
}

enum Event {
    Ready,
    Progress(usize, u64),
    Result(usize, Result<Sample>),
    Gone(usize),
}

/// Kills the workers still running when the parent gives up on them.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Starts one worker per command, releases them together once every one is
/// ready, and merges their samples. `counter` follows their progress.
pub fn run_workers(commands: Vec<Command>, timing: Timing, counter: &AtomicU64) -> Result<Sample> {
    let n = commands.len();
    let (tx, rx) = mpsc::channel();
    let mut workers = Workers(Vec::new());
    for (i, mut cmd) in commands.into_iter().enumerate() {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker process")?;
        let stdout = child.stdout.take().context("a worker's stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = if line == "ready" {
                    Event::Ready
                } else if let Some(n) = line.strip_prefix("progress ") {
                    Event::Progress(i, n.parse().unwrap_or(0))
                } else if let Some(r) = line.strip_prefix("result ") {
                    Event::Result(i, Sample::from_wire(r))
                } else {
                    continue;
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::Gone(i));
        });
        workers.0.push(child);
    }
    drop(tx);
    // Setting up can take a while (RSA-4096 keys, logins replayed on members).
    let setup_deadline = Instant::now() + Duration::from_secs(300);
    let mut ready = 0;
    while ready < n {
        let wait = setup_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Event::Ready) => ready += 1,
            Ok(Event::Gone(i)) => bail!(
                "worker {} exited before it was ready (see its errors above)",
                i + 1
            ),
            Ok(_) => {}
            Err(_) => bail!("the workers were not ready after 5 minutes"),
        }
    }
    for c in &mut workers.0 {
        let stdin = c.stdin.as_mut().context("a worker's stdin")?;
        writeln!(stdin, "go")?;
        stdin.flush()?;
    }
    let mut progress = vec![0u64; n];
    let mut results: Vec<Option<Sample>> = vec![None; n];
    // Generous: key generation on many threads can overrun the window by a lot.
    let deadline = Instant::now() + timing.warmup + timing.window * 2 + Duration::from_secs(300);
    while results.iter().any(Option::is_none) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Event::Progress(i, p)) => {
                progress[i] = p;
                counter.store(progress.iter().sum(), Ordering::Relaxed);
            }
            Ok(Event::Result(i, r)) => results[i] = Some(r?),
            Ok(Event::Gone(i)) if results[i].is_none() => {
                bail!("worker {} exited without a result (see its errors above)", i + 1)
            }
            Ok(_) => {}
            Err(_) => bail!("the workers did not finish in time"),
        }
    }
    // Let them clean up their keys before the next point starts.
    for c in &mut workers.0 {
        let _ = c.wait();
    }
    let mut total = Sample::empty(timing.window.as_secs_f64());
    for r in results.into_iter().flatten() {
        total.merge(&r)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleepy;

    impl Workload for Sleepy {
        fn thread_op(&self, thread: usize) -> Result<Op<'_>> {
            let mut n = 0u32;
            Ok(Box::new(move || {
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
                // Thread 1 fails one operation in ten.
                if thread == 1 && n % 10 == 9 {
                    bail!("planned failure");
                }
                Ok(())
            }))
        }
    }

    #[test]
    fn measure_counts_ops_and_errors_inside_the_window_only() {
        let timing = Timing {
            warmup: Duration::from_millis(100),
            window: Duration::from_millis(400),
        };
        let counter = AtomicU64::new(0);
        let s = measure(&Sleepy, 2, timing, &counter).unwrap();
        assert_eq!(counter.load(Ordering::Relaxed), s.ops);
        // At most 400 ms / 2 ms per thread, and surely more than a few.
        assert!(s.ops > 20 && s.ops <= 400, "{}", s.ops);
        assert!(s.errors > 0, "thread 1's failures were counted");
        assert_eq!(s.latency_us.len(), s.ops);
        assert!(s.latency_us.value_at_quantile(0.5) >= 2000);
    }
}
