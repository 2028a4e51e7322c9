//! The HA slot: one slot for the group, served by every member, with load
//! balancing per operation, transparent failover and writes retried with
//! their operation id (report §4 and §5.1, tests 3.4.1 and 3.4.3).
//!
//! The module keeps process-wide state, so one test sets up one group and
//! runs the checks in order. Member 0 is reached through a proxy of this
//! file that can swallow the member's answers, which makes a write's failure
//! ambiguous: the member applied it, the module never heard.
mod t20_pkcs11_support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, GROUP, PARTITION, PIN};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use t20_pkcs11_support::module_path;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A TCP proxy whose answers (member to client) can be swallowed while the
/// requests still reach the member.
struct OneWay {
    addr: String,
    swallow: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl OneWay {
    fn start(target: &str) -> OneWay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = listener.local_addr().expect("address").to_string();
        let swallow = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (target, sw, cs) = (target.to_string(), swallow.clone(), conns.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                {
                    let mut c = cs.lock().unwrap();
                    c.push(inbound.try_clone().unwrap());
                    c.push(outbound.try_clone().unwrap());
                }
                let (mut up_from, mut up_to) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_from, &mut up_to);
                    let _ = up_to.shutdown(Shutdown::Write);
                });
                let (mut down_from, mut down_to) = (outbound, inbound);
                let sw = sw.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match down_from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) if !sw.load(Ordering::SeqCst) => {
                                if down_to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                    let _ = down_to.shutdown(Shutdown::Both);
                });
            }
        });
        OneWay { addr, swallow, conns }
    }

    fn swallow_answers(&self, on: bool) {
        self.swallow.store(on, Ordering::SeqCst);
    }

    /// Closes every connection through the proxy (new ones pass).
    fn reset(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// How many lines of `hahsm keys list` on member `i` name `label`.
fn count_on(c: &Cluster, i: usize, label: &str) -> usize {
    let list = c.keys(i, &["list"]).expect_ok().stdout;
    list.lines()
        .filter(|l| l.split_whitespace().any(|w| w == label))
        .count()
}

fn aes_key(s: &cryptoki::session::Session, label: &str) -> cryptoki::error::Result<ObjectHandle> {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(true),
            Attribute::ValueLen(32.into()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ],
    )
}

/// The module is process-wide: the tests of this file take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Points the module at the cluster with an HA-only config and a short
/// deadline, its log at `pkcs11.log` and its HA log at `ha.log`; returns
/// the HA log's path.
fn ha_only_config(c: &Cluster) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("request_timeout_ms") {
                "request_timeout_ms = 1500".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let conf = c.work.path().join("client/ha.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}\n")).unwrap();
    let ha_log = c.work.path().join("ha.log");
    std::env::set_var("HAHSM_CONF", &conf);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));
    std::env::set_var("HAHSM_HA_LOG", &ha_log);
    ha_log
}

/// Sends the module's traffic to member `i` through `proxy`, by rewriting
/// the member's address in the config `ha_only_config` wrote.
fn route_through(c: &Cluster, i: usize, proxy: &hahsm_it::proxy::Proxy) {
    let conf = std::path::PathBuf::from(std::env::var("HAHSM_CONF").expect("HAHSM_CONF"));
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace(&c.members[i].address, &proxy.addr)).unwrap();
}

/// Loads the module, logs in to the HA slot and makes a signing key pair.
fn ha_session(p11: &Pkcs11) -> (cryptoki::slot::Slot, cryptoki::session::Session, ObjectHandle) {
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slots = p11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 1, "only the HA slot is listed: {slots:?}");
    let slot = slots[0];
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    let (_, ec) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Verify(true),
                Attribute::Label(b"ha-loop".to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::Label(b"ha-loop".to_vec()),
            ],
        )
        .expect("key pair");
    (slot, s, ec)
}

/// Application threads signing in a loop through the HA slot, counting
/// signatures and failures until stopped.
struct Signers {
    done: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    /// The slowest signature so far, in milliseconds.
    slowest_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Signers {
    fn start(p11: &Pkcs11, slot: cryptoki::slot::Slot, key: ObjectHandle, n: usize) -> Signers {
        let done = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|t| {
                let (p11, failures, done, stop) = (p11.clone(), failures.clone(), done.clone(), stop.clone());
                let slowest = slowest_ms.clone();
                std::thread::spawn(move || {
                    let s = p11.open_ro_session(slot).expect("session");
                    let mut k = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let signed = s.sign(&Mechanism::EcdsaSha256, key, format!("{t}-{k}").as_bytes());
                        slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::SeqCst);
                        match signed {
                            Ok(_) => done.fetch_add(1, Ordering::SeqCst),
                            Err(e) => {
                                eprintln!("thread {t}: sign {k} failed: {e}");
                                failures.fetch_add(1, Ordering::SeqCst)
                            }
                        };
                        k += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Signers {
            done,
            failures,
            slowest_ms,
            stop,
            threads,
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `more` further signatures were made, at most `limit`.
    fn wait_for(&self, more: u64, limit: Duration) -> bool {
        let target = self.done() + more;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.done() >= target {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the threads; returns the number of failed signatures.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("signer");
        }
        self.failures.load(Ordering::SeqCst)
    }
}

/// 3.4.3 with a black hole: member 2's client link stays open but carries
/// nothing (no reset), as when a member's network or process freezes. Twelve
/// signing threads lose no operation: each call stuck on member 2 fails at
/// its deadline and is retried on another member at once.
#[test]
fn twelve_signers_lose_nothing_when_a_member_is_black_holed() {
    let _one = one_at_a_time();
    let c = Cluster::new(3);
    let ha_log = ha_only_config(&c);
    let proxy = hahsm_it::proxy::Proxy::start(&c.members[2].address);
    route_through(&c, 2, &proxy);

    let p11 = Pkcs11::new(module_path()).expect("module loads");
    let (slot, s, ec) = ha_session(&p11);
    let signers = Signers::start(&p11, slot, ec, 12);
    assert!(
        signers.wait_for(200, Duration::from_secs(30)),
        "no signing before the fault"
    );
    proxy.set(hahsm_it::proxy::Mode::BlackHole);
    let blackholed = Instant::now();
    assert!(
        signers.wait_for(300, Duration::from_secs(30)),
        "signing stalled after the black hole ({:?})",
        blackholed.elapsed()
    );
    let slowest = Duration::from_millis(signers.slowest_ms.load(Ordering::SeqCst));
    let failures = signers.stop();
    let ha = std::fs::read_to_string(&ha_log).unwrap_or_default();
    assert_eq!(failures, 0, "operations failed across the black hole\n{ha}");
    assert!(
        ha.contains("dropped"),
        "the black-holed member was never taken out of the rotation:\n{ha}"
    );
    // One deadline (1.5 s here) and a new connection's handshake limit at
    // most, not a hang.
    assert!(slowest < Duration::from_secs(10), "a signature took {slowest:?}");
    drop(s);
    p11.finalize().expect("C_Finalize");
}

/// Under the quorum write concern a member cut off from its peers refuses
/// writes (before making them once it knows, or because no majority
/// confirmed them); the HA slot completes each on another member with the
/// same operation id, and the application sees none of it. For a moment
/// after a refusal the slot sends writes to the other members first.
#[test]
fn writes_a_cut_off_member_refuses_for_want_of_a_quorum_complete_elsewhere() {
    let _one = one_at_a_time();
    let c = Cluster::with_group_options(3, &["--quorum"]);
    ha_only_config(&c);
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    let (_slot, s, _ec) = ha_session(&p11);
    c.isolate(0, hahsm_it::proxy::Mode::Cut);
    let module_log = || std::fs::read_to_string(c.work.path().join("pkcs11.log")).unwrap_or_default();
    const KEYS: usize = 24;
    for n in 0..KEYS {
        if let Err(e) = aes_key(&s, &format!("cut-off-{n}")) {
            panic!("key generation {n} failed: {e}\n{}", module_log());
        }
    }
    let log = module_log();
    let refusals = log
        .matches("hsm0: generate-key refused for want of a quorum")
        .count();
    assert!(
        refusals > 0,
        "member 0 was never asked, so the retry went untested:\n{log}"
    );
    // After a refusal, writes go to the other members first for a second:
    // the member that answers refusals fastest must not draw every write.
    assert!(
        refusals <= KEYS / 4,
        "member 0 was asked first for {refusals} of {KEYS} writes:\n{log}"
    );
    // Each key exists once on the majority side (a refused one that member 0
    // made anyway has the same object id, and merges into it later).
    let list = c.keys(1, &["list"]).expect_ok().stdout;
    for n in 0..KEYS {
        let label = format!("cut-off-{n}");
        let copies = list
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == label))
            .count();
        assert_eq!(copies, 1, "{label} on member 1:\n{list}");
    }
    drop(s);
    p11.finalize().expect("C_Finalize");
}

/// When every member the slot can reach refuses for want of a quorum (here
/// the one left alive of three), the HA slot asks again until the request's
/// deadline instead of failing at once: a key generated while the group has
/// no majority is made, once, when a second member is back.
#[test]
fn a_write_with_no_quorum_in_reach_waits_for_one_until_its_deadline() {
    let _one = one_at_a_time();
    let mut c = Cluster::with_group_options(3, &["--quorum"]);
    ha_only_config(&c);
    let conf = std::path::PathBuf::from(std::env::var("HAHSM_CONF").expect("HAHSM_CONF"));
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace("request_timeout_ms = 1500", "request_timeout_ms = 20000"),
    )
    .unwrap();
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    let (_slot, s, _ec) = ha_session(&p11);
    c.members[1].kill9();
    c.members[2].kill9();
    let module_log = || std::fs::read_to_string(c.work.path().join("pkcs11.log")).unwrap_or_default();
    let made = std::thread::scope(|scope| {
        let second = &mut c.members[1];
        let back = scope.spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            second.spawn();
        });
        let made = aes_key(&s, "made-once-a-quorum-is-back");
        back.join().expect("the member restarts");
        made
    });
    let log = module_log();
    if let Err(e) = made {
        panic!("the key generation failed instead of waiting for a quorum: {e}\n{log}");
    }
    assert!(
        log.contains("generate-key refused for want of a quorum"),
        "member 0 never refused, so the wait went untested:\n{log}"
    );
    assert!(
        c.wait(Duration::from_secs(30), || count_on(
            &c,
            1,
            "made-once-a-quorum-is-back"
        ) == 1),
        "the key is not on member 1 once"
    );
    drop(s);
    p11.finalize().expect("C_Finalize");
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// Report §4.1: a member added to the group while the application signs
/// through the HA slot takes load without an application restart. Proved by
/// killing the three original members afterwards: the new one serves alone.
#[test]
fn a_member_added_while_the_application_runs_takes_operations() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(3);
    let ha_log = ha_only_config(&c);
    let read_ha = || std::fs::read_to_string(&ha_log).unwrap_or_default();
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    let (slot, s, ec) = ha_session(&p11);
    let signers = Signers::start(&p11, slot, ec, 2);
    assert!(
        signers.wait_for(20, Duration::from_secs(5)),
        "no signing before the growth"
    );

    // A 4th appliance, with the client registered on it, joins the group.
    let (domain, owner) = (c.domain_secret.clone(), c.owner_secret.clone());
    let j = c.add_appliance(3, &domain, &owner);
    c.so_login(j);
    let owner_s = owner.to_str().unwrap().to_string();
    c.ha(
        j,
        &["prepare", "--partition", PARTITION, "--owner-secret", &owner_s],
    )
    .expect_ok();
    let cert = c.conf.with_file_name("app1.pem");
    c.admin(
        j,
        &[
            "client",
            "register",
            "--client",
            "app1",
            "--cert",
            cert.to_str().unwrap(),
        ],
    )
    .expect_ok();
    c.admin(
        j,
        &[
            "client",
            "assign-partition",
            "--client",
            "app1",
            "--partition",
            PARTITION,
        ],
    )
    .expect_ok();
    let joined = Instant::now();
    c.add_member(j).expect_ok();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));
    let serial = c.serials[j].to_string();
    assert!(
        wait_until(Duration::from_secs(8), || read_ha().lines().any(|l| l
            .contains("HA group: haGroup has added member:")
            && l.ends_with(&serial))),
        "the module never took the new member in:\n{}",
        read_ha()
    );
    eprintln!("the new member serves {:?} after add-member", joined.elapsed());
    assert!(
        signers.wait_for(20, Duration::from_secs(5)),
        "signing stalled after the growth"
    );

    // The original members die: the new member alone serves the application.
    for i in 0..3 {
        c.members[i].kill9();
    }
    assert!(
        signers.wait_for(50, Duration::from_secs(6)),
        "signing stopped with only the new member left\n{}",
        read_ha()
    );
    let failures = signers.stop();
    assert_eq!(failures, 0, "operations failed\n{}", read_ha());
    assert!(
        c.members[j].log().contains("client connected"),
        "the new member never saw the client"
    );
    s.sign(&Mechanism::EcdsaSha256, ec, b"after")
        .expect("sign on the new member alone");
    drop(s);
    p11.finalize().expect("C_Finalize");
}

/// Session objects live in one connection on one member: the HA slot sends
/// every request that makes, names or searches them to that member, so they
/// work like any object; when that member dies they are gone (the handle is
/// refused), while token objects carry on.
#[test]
fn session_objects_stay_on_their_member_and_die_with_it() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(3);
    ha_only_config(&c);
    let module_log = c.work.path().join("pkcs11.log");
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    let (_slot, s, ec) = ha_session(&p11);
    let key = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(b"ha-session-aes".to_vec()),
            ],
        )
        .expect("session key");
    let iv = [7u8; 16];
    for k in 0..30 {
        let plain = format!("session object use {k:02}..").into_bytes();
        let ct = s
            .encrypt(&Mechanism::AesCbcPad(iv), key, &plain)
            .unwrap_or_else(|e| panic!("encrypt {k}: {e}"));
        assert_eq!(
            s.decrypt(&Mechanism::AesCbcPad(iv), key, &ct)
                .unwrap_or_else(|e| panic!("decrypt {k}: {e}")),
            plain
        );
        let found = s
            .find_objects(&[Attribute::Label(b"ha-session-aes".to_vec())])
            .unwrap_or_else(|e| panic!("find {k}: {e}"));
        assert_eq!(found, vec![key], "find {k}");
    }
    // The home member, as the module's log names it.
    let log = std::fs::read_to_string(&module_log).unwrap_or_default();
    let home = (0..3)
        .find(|&i| log.contains(&format!("session objects live on member {}", c.serials[i])))
        .unwrap_or_else(|| panic!("no session home in the log:\n{log}"));
    c.members[home].kill9();
    let err = s
        .encrypt(&Mechanism::AesCbcPad(iv), key, b"after the home died")
        .expect_err("the session key died with its member");
    let code = t20_pkcs11_support::rv(&err);
    assert!(
        matches!(
            code,
            cryptoki::error::RvError::KeyHandleInvalid
                | cryptoki::error::RvError::ObjectHandleInvalid
                | cryptoki::error::RvError::DeviceRemoved
                | cryptoki::error::RvError::DeviceError
        ),
        "{err}"
    );
    // Context-specific login works in the HA slot: a key that needs the PIN
    // for each use signs after C_Login(CKU_CONTEXT_SPECIFIC), not without.
    let (_, always) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(true), Attribute::EcParams(P256.to_vec())],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::AlwaysAuthenticate(true),
            ],
        )
        .expect("always-authenticate key");
    let refused = s
        .sign(&Mechanism::EcdsaSha256, always, b"no context login")
        .expect_err("needs a context-specific login");
    assert_eq!(
        t20_pkcs11_support::rv(&refused),
        cryptoki::error::RvError::UserNotLoggedIn
    );
    // cryptoki's sign() cannot log in between C_SignInit and C_Sign: call
    // C_Sign through the raw function list of the same loaded module.
    let (_lib, raw) = t20_pkcs11_support::raw_functions();
    for k in 0..3 {
        s.sign_init(&Mechanism::EcdsaSha256, always).expect("sign init");
        s.login(
            UserType::ContextSpecific,
            Some(&AuthPin::new(PIN.to_string().into())),
        )
        .unwrap_or_else(|e| panic!("context-specific login {k}: {e}"));
        let (mut sig, mut n) = ([0u8; 64], 64);
        let (c_sign, data) = (raw.C_Sign.unwrap(), b"x".as_ptr() as *mut u8);
        // SAFETY: `sig` holds `n` bytes; the session is open in this module.
        let r = unsafe { c_sign(s.handle(), data, 1, sig.as_mut_ptr(), &mut n) };
        assert_eq!(r, 0, "C_Sign after a context-specific login ({k})");
    }
    // Token objects are untouched, and new session objects get a new home.
    for k in 0..5 {
        s.sign(&Mechanism::EcdsaSha256, ec, format!("token key {k}").as_bytes())
            .unwrap_or_else(|e| panic!("token key after the home died, {k}: {e}"));
    }
    let again = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(16.into()),
                Attribute::Encrypt(true),
            ],
        )
        .expect("a new session key");
    for k in 0..10 {
        s.encrypt(&Mechanism::AesEcb, again, &[k as u8; 16])
            .unwrap_or_else(|e| panic!("new session key {k}: {e}"));
    }
    drop(s);
    p11.finalize().expect("C_Finalize");
}

/// Latency breaks ties: with one application thread (so every member has
/// nothing in flight), a member whose link adds 20 ms each way serves far
/// fewer signatures than the two fast ones, though it stays in the rotation.
#[test]
fn latency_breaks_ties_between_idle_members() {
    let _one = one_at_a_time();
    let c = Cluster::new(3);
    ha_only_config(&c);
    let proxies: Vec<hahsm_it::proxy::Proxy> = (0..3)
        .map(|i| hahsm_it::proxy::Proxy::start(&c.members[i].address))
        .collect();
    for (i, p) in proxies.iter().enumerate() {
        route_through(&c, i, p);
    }
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    let (_slot, s, ec) = ha_session(&p11);
    let sign = |n: usize| {
        for k in 0..n {
            s.sign(&Mechanism::EcdsaSha256, ec, format!("tie {k}").as_bytes())
                .unwrap_or_else(|e| panic!("sign {k}: {e}"));
        }
    };
    // Every member serves and is measured (its pooled connections opened).
    sign(60);
    proxies[2].set_delay(Duration::from_millis(20));
    sign(10);
    let before: Vec<u64> = proxies.iter().map(|p| p.forwarded_bytes()).collect();
    sign(150);
    let served: Vec<u64> = proxies
        .iter()
        .zip(&before)
        .map(|(p, b)| p.forwarded_bytes() - b)
        .collect();
    let fast = served[0] + served[1];
    assert!(
        served[2] * 5 < fast,
        "the slow member served about as much as the fast ones (bytes {served:?})"
    );
    drop(s);
    p11.finalize().expect("C_Finalize");
}

/// A member that missed writes while it was down serves again only once it
/// has applied them: with its peer links cut it cannot catch up, and the
/// module keeps it out of the rotation; healed, it catches up and re-enters.
#[test]
fn a_returning_member_waits_out_of_the_rotation_until_it_has_caught_up() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(3);
    let ha_log = ha_only_config(&c);
    let module_log = c.work.path().join("pkcs11.log");
    let read_ha = || std::fs::read_to_string(&ha_log).unwrap_or_default();
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    let (_slot, s, ec) = ha_session(&p11);
    let serial = c.serials[1].to_string();
    let recovered = || {
        read_ha()
            .lines()
            .any(|l| l.contains("succeeded for member:") && l.ends_with(&serial))
    };

    // Keys every member holds; renaming them later changes no object count,
    // so only the replication progress shows that member 1 missed it.
    let keys: Vec<ObjectHandle> = (0..10)
        .map(|k| aes_key(&s, &format!("early-{k}")).expect("keygen"))
        .collect();
    assert!(
        c.wait_in_sync(1, Duration::from_secs(20)),
        "member 1 never got the keys"
    );
    c.members[1].kill9();
    // Sign until the module has found member 1 gone.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let _ = s.sign(&Mechanism::EcdsaSha256, ec, b"find the dead member");
            read_ha().contains(&format!("has dropped member: {serial}"))
        }),
        "member 1 was never dropped:\n{}",
        read_ha()
    );
    for (k, key) in keys.iter().enumerate() {
        s.update_attributes(*key, &[Attribute::Label(format!("renamed-{k}").into_bytes())])
            .unwrap_or_else(|e| panic!("rename {k}: {e}"));
    }
    c.isolate(1, hahsm_it::proxy::Mode::Cut);
    c.members[1].spawn();
    // Reachable, activated, as many objects as the others, but 10 renames
    // behind: probes fail as catching up.
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_to_string(&module_log)
            .unwrap_or_default()
            .contains("catching up")),
        "no probe saw member 1 behind:\n{}",
        std::fs::read_to_string(&module_log).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !recovered(),
        "member 1 re-entered before catching up:\n{}",
        read_ha()
    );
    assert_eq!(
        count_on(&c, 1, "renamed-9"),
        0,
        "member 1 caught up through a cut link"
    );

    c.heal_all();
    assert!(
        wait_until(Duration::from_secs(40), recovered),
        "member 1 never re-entered after the links healed:\n{}",
        read_ha()
    );
    for k in 0..10 {
        assert_eq!(
            count_on(&c, 1, &format!("renamed-{k}")),
            1,
            "member 1 lacks renamed-{k}"
        );
    }
    drop(s);
    p11.finalize().expect("C_Finalize");
}

/// A member killed with SIGKILL and restarted re-enters the rotation by
/// itself: the module probes it with back-off, writes the report's HA log
/// lines, and the member then serves again (shown by killing the others).
#[test]
fn a_restarted_member_reenters_the_rotation_by_itself() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(3);
    let ha_log = ha_only_config(&c);
    let read_ha = || std::fs::read_to_string(&ha_log).unwrap_or_default();
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    let (slot, s, ec) = ha_session(&p11);
    let signers = Signers::start(&p11, slot, ec, 2);
    assert!(
        signers.wait_for(20, Duration::from_secs(5)),
        "no signing before the kill"
    );

    let serial = c.serials[1].to_string();
    c.members[1].kill9();
    assert!(
        wait_until(Duration::from_secs(5), || read_ha().lines().any(|l| l
            .contains("HA group: haGroup has dropped member:")
            && l.ends_with(&serial))),
        "member 1 was never dropped:\n{}",
        read_ha()
    );
    assert!(
        wait_until(Duration::from_secs(4), || read_ha()
            .lines()
            .any(|l| l.contains("recovery attempt #")
                && l.contains("failed for member:")
                && l.ends_with(&serial))),
        "no failed recovery attempt while member 1 was down:\n{}",
        read_ha()
    );
    c.members[1].spawn();
    assert!(
        wait_until(Duration::from_secs(8), || read_ha()
            .lines()
            .any(|l| l.contains("recovery attempt #")
                && l.contains("succeeded for member:")
                && l.ends_with(&serial))),
        "member 1 never re-entered:\n{}",
        read_ha()
    );
    let jsonl = std::fs::read_to_string(ha_log.with_extension("log.jsonl")).unwrap_or_default();
    assert!(
        jsonl.lines().any(|l| l.contains("\"event\":\"recovered\"")),
        "no JSON line for the recovery:\n{jsonl}"
    );
    // Member 1 serves again: with the others gone, signing goes on through it.
    c.members[0].kill9();
    c.members[2].kill9();
    assert!(
        signers.wait_for(50, Duration::from_secs(6)),
        "signing stopped with only the restarted member left\n{}",
        read_ha()
    );
    let failures = signers.stop();
    assert_eq!(failures, 0, "operations failed\n{}", read_ha());
    drop(s);
    p11.finalize().expect("C_Finalize");
}

#[test]
fn the_ha_slot_balances_fails_over_and_retries_writes_once() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(3);
    std::env::set_var("HAHSM_HA_LOG", c.work.path().join("ha.log"));
    // The module's config: HA only, a short deadline, member 0 behind the proxy.
    let proxy = OneWay::start(&c.members[0].address);
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("request_timeout_ms") {
                "request_timeout_ms = 1500".to_string()
            } else if l.contains(&c.members[0].address) {
                l.replace(&c.members[0].address, &proxy.addr)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    // Top-level keys must come before the first table.
    let conf = c.work.path().join("client/ha.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}\n")).unwrap();
    let log = c.work.path().join("pkcs11.log");
    std::env::set_var("HAHSM_CONF", &conf);
    std::env::set_var("HAHSM_PKCS11_LOG", &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let p11 = Pkcs11::new(module_path()).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");

    // (1) One slot, the group's, and nothing else.
    let slots = p11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 1, "only the HA slot is listed: {slots:?}");
    assert_eq!(p11.get_all_slots().unwrap().len(), 1);
    let token = p11.get_token_info(slots[0]).expect("token info");
    assert_eq!(token.label(), GROUP);
    let slot = slots[0];
    let pin = AuthPin::new(PIN.to_string().into());
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&pin)).expect("login");

    // (2) 3.4.1 through the HA slot: the key is on every member on return,
    // and the same handle works whichever member serves the next call.
    let aes = aes_key(&s, "ha-341").expect("keygen");
    for i in 0..3 {
        assert_eq!(count_on(&c, i, "ha-341"), 1, "member {i} lacks the key");
    }
    for k in 0..9 {
        let got = s
            .get_attributes(aes, &[cryptoki::object::AttributeType::Label])
            .unwrap_or_else(|e| panic!("attributes {k}: {e}"));
        assert_eq!(got, vec![Attribute::Label(b"ha-341".to_vec())]);
        s.generate_random_vec(8)
            .unwrap_or_else(|e| panic!("random {k}: {e}"));
    }
    let (_, ec) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Verify(true),
                Attribute::Label(b"ha-ec".to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::Label(b"ha-ec".to_vec()),
            ],
        )
        .expect("key pair");
    for k in 0..9 {
        s.sign(&Mechanism::EcdsaSha256, ec, format!("m{k}").as_bytes())
            .unwrap_or_else(|e| panic!("sign {k} through the HA slot: {e}"));
    }

    // (4) An ambiguous failure: member 0 applies the keygen but its answer
    // is lost. The module retries on another member with the same operation
    // id, and the group holds exactly one key per call.
    // Member 0 is also cut off from its peers, so its copy of the key cannot
    // reach them before the retry does: the two attempts must still end as
    // one object once the links heal.
    c.isolate(0, hahsm_it::proxy::Mode::Cut);
    proxy.swallow_answers(true);
    let mut labels = Vec::new();
    for k in 0..8 {
        let label = format!("ha-once-{k}");
        aes_key(&s, &label).unwrap_or_else(|e| panic!("keygen {label} with member 0 mute: {e}"));
        labels.push(label);
        if read_log().contains("generate-key failed") {
            break;
        }
    }
    assert!(
        read_log().contains("generate-key failed"),
        "no keygen was ever routed to the mute member:\n{}",
        read_log()
    );
    proxy.swallow_answers(false);
    proxy.reset();
    c.heal_all();
    assert!(
        c.wait(Duration::from_secs(60), || (0..3)
            .all(|i| c.status(i)["in_sync"] == true)),
        "the group did not converge after the links healed"
    );
    for label in &labels {
        for i in 0..3 {
            assert_eq!(
                count_on(&c, i, label),
                1,
                "member {i}: key {label} not exactly once"
            );
        }
    }

    // (4b) The same for an ML-KEM encapsulation, which is randomized: member
    // 0 (not cut off this time) makes the secret key and replicates it, its
    // answer is lost, and the retry on another member with the same
    // operation id must answer that key with the ciphertext it was made
    // with, not a new encapsulation.
    let (kem_public, kem_private) = s
        .generate_key_pair(
            &Mechanism::MlKemKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::ParameterSet(cryptoki::object::MlKemParameterSetType::ML_KEM_768.into()),
                Attribute::Label(b"ha-kem".to_vec()),
            ],
            &[Attribute::Token(true), Attribute::Label(b"ha-kem".to_vec())],
        )
        .expect("ML-KEM pair");
    // Member 0 was dropped from the rotation above: wait until the module
    // has taken it back (as many recoveries logged as drops).
    let serial0 = c.serials[0];
    let back_in = || {
        let ha = std::fs::read_to_string(c.work.path().join("ha.log")).unwrap_or_default();
        let count = |what: &str| ha.matches(&format!("{what} member: {serial0}")).count();
        count("succeeded for") >= count("has dropped")
    };
    assert!(
        c.wait(Duration::from_secs(60), back_in),
        "member 0 never re-entered the rotation"
    );
    // Connections to member 0 and the key's details in the module, before
    // member 0 goes mute (a handshake or a look-up through it would just
    // drop it again).
    for _ in 0..12 {
        s.encapsulate_key(&Mechanism::MlKem, kem_public, &[Attribute::Token(false)])
            .expect("encapsulation with every member answering");
    }
    proxy.swallow_answers(true);
    let mut encapsulated = Vec::new();
    for k in 0..8 {
        let label = format!("ha-kem-secret-{k}");
        let template = [
            Attribute::Token(true),
            Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::GENERIC_SECRET),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let (ct, key) = s
            .encapsulate_key(&Mechanism::MlKem, kem_public, &template)
            .unwrap_or_else(|e| panic!("encapsulation {k} with member 0 mute: {e}"));
        encapsulated.push((label, ct, key));
        if read_log().contains("encapsulate-key failed") {
            break;
        }
    }
    assert!(
        read_log().contains("encapsulate-key failed"),
        "no encapsulation was ever routed to the mute member:\n{}",
        read_log()
    );
    proxy.swallow_answers(false);
    proxy.reset();
    assert!(
        c.wait(Duration::from_secs(60), || (0..3)
            .all(|i| c.status(i)["in_sync"] == true)),
        "the group did not converge after member 0 spoke again"
    );
    let value = |o: ObjectHandle| match s.get_attributes(o, &[cryptoki::object::AttributeType::Value]) {
        Ok(mut v) => match v.pop() {
            Some(Attribute::Value(v)) => v,
            other => panic!("no value: {other:?}"),
        },
        Err(e) => panic!("value: {e}"),
    };
    for (label, ct, key) in &encapsulated {
        for i in 0..3 {
            assert_eq!(count_on(&c, i, label), 1, "member {i}: {label} not exactly once");
        }
        let opened = s
            .decapsulate_key(
                &Mechanism::MlKem,
                kem_private,
                &[
                    Attribute::Token(false),
                    Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
                    Attribute::KeyType(cryptoki::object::KeyType::GENERIC_SECRET),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ],
                ct,
            )
            .expect("decapsulate");
        assert_eq!(
            value(opened),
            value(*key),
            "{label}: the ciphertext answered does not carry the key answered"
        );
    }

    // (3) 3.4.3 failover: 12 threads sign while member 1 is killed; no
    // operation fails.
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..12)
        .map(|t| {
            let (p11, failures, done, stop) = (p11.clone(), failures.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let s = p11.open_ro_session(slot).expect("session");
                let mut k = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match s.sign(&Mechanism::EcdsaSha256, ec, format!("{t}-{k}").as_bytes()) {
                        Ok(_) => done.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("thread {t}: sign {k} failed: {e}");
                            failures.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                    k += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let before = done.load(Ordering::SeqCst);
    c.members[1].kill9();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("worker");
    }
    let total = done.load(Ordering::SeqCst);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "operations failed across the kill\n{}",
        read_log()
    );
    assert!(before > 0, "no signature before the kill");
    assert!(
        total > before + 50,
        "signing stalled after the kill: {before} before, {total} in all ({:?})",
        killed.elapsed()
    );
    assert!(read_log().contains("sign failed"), "the kill was never seen");
    assert!(!read_log().contains(PIN), "the PIN reached the module's log");
    drop(s);
    p11.finalize().expect("C_Finalize");
}
