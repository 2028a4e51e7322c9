//! The module's login rules against a reference model (issue 20): random
//! sequences of open, close, login (right, wrong and NULL PIN), logout,
//! finalize and initialize, made through two library instances of one
//! process, on the calling thread or on a fresh one, against the HA slot
//! and a member's slot of a real 3-member group. After every step the
//! module's answer and each session's state match the model, and no wrong or
//! NULL PIN is ever accepted.
//!
//! The rules (PKCS#11 3.0 §5.6, §6.7): a login is the token's, for every
//! session of the application; a second login as the same user is
//! `CKR_USER_ALREADY_LOGGED_IN` whatever PIN it carries; a logout, and the
//! close of the token's last session, end it for every session.
//!
//! `HAHSM_LOGIN_CASES` and `HAHSM_LOGIN_STEPS` make a longer run (the
//! test command runs a fixed number of seeded cases); `HAHSM_LOGIN_SEED`
//! picks another seed.
mod t20_pkcs11_support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PARTITION, PIN};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use t20_pkcs11_support::module_path;

const LABEL: &[u8] = b"t56-private";

/// Steps made in all, for the run's summary.
static STEPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Wrong and NULL PINs sent while logged out (each must be refused).
static WRONG_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
enum Pin {
    Right,
    Wrong,
    Null,
}

#[derive(Debug, Clone)]
enum Step {
    Open { instance: usize, slot: usize },
    Close(usize),
    Login(usize, Pin),
    Logout(usize),
    Check(usize),
    Finalize(usize),
    Initialize(usize),
}

fn step() -> impl Strategy<Value = (Step, bool)> {
    let pin = prop_oneof![Just(Pin::Right), Just(Pin::Wrong), Just(Pin::Null)];
    let s = prop_oneof![
        4 => (0..2usize, 0..2usize).prop_map(|(instance, slot)| Step::Open { instance, slot }),
        2 => any::<usize>().prop_map(Step::Close),
        6 => (any::<usize>(), pin).prop_map(|(k, p)| Step::Login(k, p)),
        3 => any::<usize>().prop_map(Step::Logout),
        4 => any::<usize>().prop_map(Step::Check),
        1 => (0..2usize).prop_map(Step::Finalize),
        2 => (0..2usize).prop_map(Step::Initialize),
    ];
    // Each step runs on the calling thread or on a thread of its own.
    (s, any::<bool>())
}

fn code<T>(r: cryptoki::error::Result<T>) -> Option<RvError> {
    match r {
        Ok(_) => None,
        Err(Error::Pkcs11(rv, _)) => Some(rv),
        Err(e) => panic!("not a PKCS#11 error: {e}"),
    }
}

fn init(p11: &Pkcs11) -> Option<RvError> {
    code(p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)))
}

/// Runs `f` on the session, on this thread or on a fresh one (the session
/// moves there and back).
fn on_thread<R: Send + 'static>(
    fresh: bool,
    session: Session,
    f: impl FnOnce(&Session) -> R + Send + 'static,
) -> (Session, R) {
    if !fresh {
        let r = f(&session);
        return (session, r);
    }
    std::thread::spawn(move || {
        let r = f(&session);
        (session, r)
    })
    .join()
    .expect("the step's thread")
}

struct Model {
    initialized: bool,
    /// Per slot: logged in as the user.
    logged_in: [bool; 2],
    /// The open sessions, with their slot index.
    sessions: Vec<(usize, Session)>,
}

impl Model {
    /// Forgets every session without closing it: after `C_Finalize` the
    /// handles are dead, and a later module may reuse their numbers.
    fn forget_sessions(&mut self) {
        for (_, s) in self.sessions.drain(..) {
            std::mem::forget(s);
        }
        self.logged_in = [false; 2];
    }
}

fn run_case(
    instances: &[Pkcs11; 2],
    slots: [cryptoki::slot::Slot; 2],
    steps: Vec<(Step, bool)>,
) -> Result<(), TestCaseError> {
    let mut m = Model {
        initialized: init(&instances[0]).is_none(),
        logged_in: [false; 2],
        sessions: Vec::new(),
    };
    prop_assert!(m.initialized, "the case starts with C_Initialize");
    let result = (|| {
        for (n, (step, fresh)) in steps.into_iter().enumerate() {
            STEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let at = format!("step {n}: {step:?} (own thread: {fresh})");
            match step {
                Step::Open { instance, slot } => {
                    let r = instances[instance].open_rw_session(slots[slot]);
                    match (m.initialized, r) {
                        (true, Ok(s)) => m.sessions.push((slot, s)),
                        (false, r) => {
                            prop_assert_eq!(code(r), Some(RvError::CryptokiNotInitialized), "{}", at)
                        }
                        (true, Err(e)) => prop_assert!(false, "{at}: {e}"),
                    }
                }
                Step::Close(k) if !m.sessions.is_empty() => {
                    let (slot, s) = m.sessions.remove(k % m.sessions.len());
                    // Dropping the session closes it (C_CloseSession).
                    if fresh {
                        std::thread::spawn(move || drop(s))
                            .join()
                            .expect("the step's thread");
                    } else {
                        drop(s);
                    }
                    if !m.sessions.iter().any(|(t, _)| *t == slot) {
                        m.logged_in[slot] = false;
                    }
                }
                Step::Login(k, pin) if !m.sessions.is_empty() => {
                    let i = k % m.sessions.len();
                    let (slot, s) = m.sessions.remove(i);
                    let given = match pin {
                        Pin::Right => Some(AuthPin::new(PIN.to_string().into())),
                        Pin::Wrong => Some(AuthPin::new("wrong-pin-99".to_string().into())),
                        Pin::Null => None,
                    };
                    let (s, r) = on_thread(fresh, s, move |s| code(s.login(UserType::User, given.as_ref())));
                    m.sessions.insert(i, (slot, s));
                    let want = match (m.logged_in[slot], pin) {
                        (true, _) => Some(RvError::UserAlreadyLoggedIn),
                        (false, Pin::Right) => None,
                        (false, _) => Some(RvError::PinIncorrect),
                    };
                    if !matches!(pin, Pin::Right) && !m.logged_in[slot] {
                        WRONG_SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        prop_assert!(r.is_some(), "{at}: a {pin:?} PIN was accepted");
                    }
                    prop_assert_eq!(r, want, "{}", at);
                    if want.is_none() {
                        m.logged_in[slot] = true;
                    }
                }
                Step::Logout(k) if !m.sessions.is_empty() => {
                    let i = k % m.sessions.len();
                    let (slot, s) = m.sessions.remove(i);
                    let (s, r) = on_thread(fresh, s, |s| code(s.logout()));
                    m.sessions.insert(i, (slot, s));
                    let want = (!m.logged_in[slot]).then_some(RvError::UserNotLoggedIn);
                    prop_assert_eq!(r, want, "{}", at);
                    m.logged_in[slot] = false;
                }
                Step::Check(k) if !m.sessions.is_empty() => {
                    let i = k % m.sessions.len();
                    let (slot, s) = m.sessions.remove(i);
                    let (s, (state, private)) = on_thread(fresh, s, |s| {
                        let state = s.get_session_info().map(|i| i.session_state());
                        let private = s
                            .find_objects(&[
                                Attribute::Class(ObjectClass::DATA),
                                Attribute::Label(LABEL.to_vec()),
                            ])
                            .map(|v| v.len());
                        (state.ok(), private.ok())
                    });
                    m.sessions.insert(i, (slot, s));
                    let logged = m.logged_in[slot];
                    let want_state = if logged {
                        SessionState::RwUser
                    } else {
                        SessionState::RwPublic
                    };
                    prop_assert_eq!(state, Some(want_state), "{}", at);
                    prop_assert_eq!(private, Some(usize::from(logged)), "{}: private objects seen", at);
                }
                Step::Finalize(instance) => {
                    let r = code(instances[instance].clone().finalize());
                    let want = (!m.initialized).then_some(RvError::CryptokiNotInitialized);
                    prop_assert_eq!(r, want, "{}", at);
                    m.initialized = false;
                    m.forget_sessions();
                }
                Step::Initialize(instance) => {
                    let r = init(&instances[instance]);
                    let want = m.initialized.then_some(RvError::CryptokiAlreadyInitialized);
                    prop_assert_eq!(r, want, "{}", at);
                    m.initialized = true;
                }
                // A step on a session when there is none.
                _ => {}
            }
        }
        Ok(())
    })();
    if m.initialized {
        m.forget_sessions();
        let _ = instances[0].clone().finalize();
    }
    result
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_login_rules_hold_for_random_sequences_across_instances_and_threads() {
    let c = Cluster::new(3);
    for i in 0..3 {
        // No lockout: the sequences make many wrong logins on purpose.
        c.admin(
            i,
            &[
                "partition",
                "change-policy",
                "--partition",
                PARTITION,
                "--policy",
                "15",
                "--value",
                "0",
            ],
        )
        .expect_ok();
    }
    std::env::set_var("HAHSM_CONF", &c.conf);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));
    let instances = [
        Pkcs11::new(module_path()).expect("loads the module"),
        Pkcs11::new(module_path()).expect("loads the module again"),
    ];
    // The HA slot first, then the members' slots: take the HA slot and one
    // member's, two tokens with a login each.
    assert_eq!(init(&instances[0]), None);
    let all = instances[0].get_slots_with_token().expect("slots");
    assert!(all.len() >= 2, "the HA slot and the members' slots: {all:?}");
    let slots = [all[0], all[1]];
    {
        let s = instances[0].open_rw_session(slots[0]).expect("session");
        s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
            .expect("login");
        s.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(LABEL.to_vec()),
            Attribute::Value(b"only after login".to_vec()),
        ])
        .expect("a private object");
    }
    instances[0].clone().finalize().expect("C_Finalize");

    let seed: u64 = std::env::var("HAHSM_LOGIN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_261_206);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: env_or("HAHSM_LOGIN_CASES", 24),
        failure_persistence: None,
        ..Config::default()
    };
    let steps = env_or("HAHSM_LOGIN_STEPS", 60) as usize;
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let result = runner.run(&proptest::collection::vec(step(), 1..steps), |case| {
        run_case(&instances, slots, case)
    });
    let (made, wrong) = (
        STEPS.load(std::sync::atomic::Ordering::Relaxed),
        WRONG_SENT.load(std::sync::atomic::Ordering::Relaxed),
    );
    println!("{made} steps, {wrong} wrong or NULL PINs sent logged out, none accepted unless reported");
    if let Err(e) = result {
        panic!("{e}\nmodule log: {}", c.work.path().join("pkcs11.log").display());
    }
}
