//! A fault-injecting TCP proxy for the links between members: it passes
//! traffic, cuts the link (connections closed, new ones refused), black-holes
//! it (connections stay open, nothing gets through, no reset), or delays it.
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass = 0,
    Cut = 1,
    BlackHole = 2,
}

struct State {
    mode: AtomicU8,
    delay_ms: AtomicU64,
    /// Bytes passed on, both ways: how much a member behind this proxy served.
    forwarded: AtomicU64,
    /// Bumped on every mode change: forwarding tasks of an older generation stop.
    generation: tokio::sync::watch::Sender<u64>,
}

pub struct Proxy {
    pub addr: String,
    state: Arc<State>,
}

/// One runtime for every proxy in the test process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime")
    })
}

impl Proxy {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub fn start(target: &str) -> Proxy {
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let state = Arc::new(State {
            mode: AtomicU8::new(0),
            delay_ms: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            generation,
        });
        let listener = runtime()
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let target = target.to_string();
        let st = state.clone();
        runtime().spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let st = st.clone();
                let target = target.clone();
                tokio::spawn(async move { forward(st, inbound, target).await });
            }
        });
        Proxy { addr, state }
    }

    /// Changes the mode. Only a change ends the connections forwarded so far:
    /// healing every link must not reset the links that were never cut.
    pub fn set(&self, mode: Mode) {
        if self.state.mode.swap(mode as u8, Ordering::SeqCst) != mode as u8 {
            self.state.generation.send_modify(|g| *g += 1);
        }
    }

    /// Bytes passed on so far, both ways.
    pub fn forwarded_bytes(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

fn mode(st: &State) -> Mode {
    match st.mode.load(Ordering::SeqCst) {
        1 => Mode::Cut,
        2 => Mode::BlackHole,
        _ => Mode::Pass,
    }
}

async fn forward(st: Arc<State>, mut inbound: TcpStream, target: String) {
    let mut generation = st.generation.subscribe();
    match mode(&st) {
        Mode::Cut => return,
        Mode::BlackHole => {
            // Accept and swallow everything; never answer, never reset.
            let mut buf = [0u8; 4096];
            while let Ok(n) = inbound.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
            return;
        }
        Mode::Pass => {}
    }
    let Ok(outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut ri, mut wi) = inbound.into_split();
    let (mut ro, mut wo) = outbound.into_split();
    let st1 = st.clone();
    let up = async move { pump(&st1, &mut ri, &mut wo).await };
    let st2 = st.clone();
    let down = async move { pump(&st2, &mut ro, &mut wi).await };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = generation.changed() => {
            if mode(&st) == Mode::BlackHole {
                // Keep the sockets open but move nothing, like a dead router.
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn pump(
    st: &State,
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = st.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        st.forwarded.fetch_add(n as u64, Ordering::SeqCst);
    }
}
