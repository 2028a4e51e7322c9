//! The floor under any per-call protocol between two processes on this
//! machine: CPU time per round trip of a bare 100-byte ping-pong, with no TLS,
//! no framing and no work, over loopback TCP and over a Unix socket. Eight
//! client threads, each on its own connection to a server thread, as in
//! `cpu_per_op`. A signature through the module can cost no less than this
//! plus the signature itself (BENCHMARKS.md, issue 3's section).
//!
//!   cargo build --release -p hahsm-it --example loopback_floor
//!   target/release/examples/loopback_floor [SECONDS] [THREADS]
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MESSAGE: usize = 100;

/// User plus system CPU time of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Echoes fixed-size messages until the peer closes.
fn echo(mut s: impl Read + Write) {
    let mut buf = [0u8; MESSAGE];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            return;
        }
    }
}

/// The server process: `loopback_floor serve tcp|unix ADDRESS`.
fn serve(kind: &str, address: &str) {
    if kind == "tcp" {
        let listener = TcpListener::bind(address).expect("binds");
        for s in listener.incoming().flatten() {
            s.set_nodelay(true).expect("nodelay");
            std::thread::spawn(move || echo(s));
        }
    } else {
        let listener = UnixListener::bind(address).expect("binds");
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || echo(s));
        }
    }
}

fn connect(kind: &str, address: &str) -> Box<dyn ReadWrite> {
    for _ in 0..100 {
        if kind == "tcp" {
            if let Ok(s) = TcpStream::connect(address) {
                s.set_nodelay(true).expect("nodelay");
                return Box::new(s);
            }
        } else if let Ok(s) = UnixStream::connect(address) {
            return Box::new(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot connect to {address}");
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

fn measure(kind: &str, address: &str, seconds: f64, threads: usize) {
    let mut server = std::process::Command::new(std::env::current_exe().expect("this program"))
        .args(["serve", kind, address])
        .spawn()
        .expect("server starts");
    let stop = AtomicBool::new(false);
    let trips = AtomicU64::new(0);
    let mut conns: Vec<Box<dyn ReadWrite>> = (0..threads).map(|_| connect(kind, address)).collect();
    let (c0, s0) = (cpu_ticks(std::process::id()), cpu_ticks(server.id()));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for conn in conns.iter_mut() {
            let (stop, trips) = (&stop, &trips);
            scope.spawn(move || {
                let mut buf = [7u8; MESSAGE];
                while !stop.load(Ordering::Relaxed) {
                    conn.write_all(&buf).expect("write");
                    conn.read_exact(&mut buf).expect("read");
                    trips.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let (c1, s1) = (cpu_ticks(std::process::id()), cpu_ticks(server.id()));
    let _ = server.kill();
    let _ = server.wait();
    let n = trips.load(Ordering::Relaxed) as f64;
    let us = |ticks: u64| ticks as f64 * 10_000.0 / n;
    println!(
        "{kind:<5} {:>9.0} {:>8.1} {:>8.1} {:>8.1}",
        n / elapsed,
        us(c1 - c0),
        us(s1 - s0),
        us(c1 - c0 + s1 - s0)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        serve(&args[2], &args[3]);
        return;
    }
    let seconds: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let dir = std::env::temp_dir().join(format!("loopback_floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("echo.sock");
    println!("{threads} threads, {seconds} s each; CPU in µs per round trip of {MESSAGE} bytes each way");
    println!("link  trips/s   client   server    total");
    let free_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    measure("tcp", &format!("127.0.0.1:{free_port}"), seconds, threads);
    measure("unix", socket.to_str().expect("utf-8 path"), seconds, threads);
    let _ = std::fs::remove_dir_all(&dir);
}
