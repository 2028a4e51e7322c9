//! Logins and PINs across an HA group, through the built module's HA slot
//! and through each member directly (issue 20):
//! - a wrong or NULL PIN is never accepted, whatever another session or
//!   library instance of the process holds;
//! - `C_InitPIN` and `C_SetPIN` change the PIN on every member, also on one
//!   that was down during the change (it refuses the old PIN once back);
//! - the failed-login limit (partition policy 15) holds for the group: wrong
//!   PINs spread over the members lock the PIN on every member, and the
//!   owner secret unlocks every member.
//!
//! The module keeps process-wide state, so the tests of this file take turns.
mod t20_pkcs11_support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PARTITION, PIN};
use hahsm_it::{hahsm_env, Run};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use t20_pkcs11_support::module_path;

const SO_PIN: &str = "haSo-98765";
const WRONG: &str = "not-the-pin-000";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Points the module at the cluster, listing only the HA slot.
fn ha_only(c: &Cluster) {
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let conf = c.work.path().join("client/ha.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}\n")).unwrap();
    std::env::set_var("HAHSM_CONF", &conf);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));
}

fn pin(p: &str) -> AuthPin {
    AuthPin::new(p.to_string().into())
}

/// The PKCS#11 code of a failed call, `None` for success.
fn code<T>(r: cryptoki::error::Result<T>) -> Option<RvError> {
    match r {
        Ok(_) => None,
        Err(Error::Pkcs11(rv, _)) => Some(rv),
        Err(e) => panic!("not a PKCS#11 error: {e}"),
    }
}

/// A login with `pin` straight to member `i` (a new `hahsm` process, so a
/// new connection that nothing else logged in).
fn login_on(c: &Cluster, i: usize, pin: &str) -> Run {
    let server = format!("hsm{i}");
    hahsm_env(
        Some(&c.conf),
        &["keys", "--server", &server, "list"],
        &[("HAHSM_PIN", pin), ("HAHSM_PARTITION", PARTITION)],
    )
}

fn refused_as(run: &Run, what: &str) -> bool {
    !run.ok && run.stderr.contains(what)
}

/// Member `i` accepts `good` and refuses `bad`. No waiting: the change was
/// acknowledged, so every reachable member holds it (and a retry loop would
/// spend the failed-login allowance).
#[track_caller]
fn accepts_only(c: &Cluster, i: usize, good: &str, bad: &str) {
    let new = login_on(c, i, good);
    assert!(new.ok, "member {i} does not accept the new PIN: {}", new.stderr);
    let old = login_on(c, i, bad);
    assert!(
        refused_as(&old, "incorrect PIN"),
        "member {i} accepts the old PIN: {old:?}"
    );
}

/// The module, loaded and initialized; finalized when dropped, also when a
/// test fails, so that the next test can initialize it again.
struct Loaded(Option<Pkcs11>);

impl Loaded {
    fn new() -> Loaded {
        let p11 = Pkcs11::new(module_path()).expect("loads the module");
        p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        Loaded(Some(p11))
    }
}

impl std::ops::Deref for Loaded {
    type Target = Pkcs11;
    fn deref(&self) -> &Pkcs11 {
        self.0.as_ref().expect("loaded")
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(p11) = self.0.take() {
            let _ = p11.finalize();
        }
    }
}

/// The HA slot's only slot.
fn ha_slot(p11: &Pkcs11) -> cryptoki::slot::Slot {
    let slots = p11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 1, "only the HA slot is listed: {slots:?}");
    slots[0]
}

fn private_objects(s: &Session) -> usize {
    s.find_objects(&[Attribute::Class(ObjectClass::DATA), Attribute::Private(true)])
        .map(|v| v.len())
        .unwrap_or(0)
}

/// Report failure 1: a second library instance of the process logs in and
/// out while the first keeps its session; after a NULL PIN, a wrong PIN was
/// answered `CKR_OK` and the session saw the private objects.
#[test]
fn a_wrong_or_null_pin_is_never_accepted_through_the_ha_slot() {
    let _turn = one_at_a_time();
    let c = Cluster::new(3);
    ha_only(&c);
    let p11a = Loaded::new();
    // The same library loaded a second time in the process: it shares the
    // module's state, so C_Initialize says it is initialized already.
    let p11b = Pkcs11::new(module_path()).expect("loads the module again");
    let again = p11b.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    assert_eq!(code(again), Some(RvError::CryptokiAlreadyInitialized));
    let slot = ha_slot(&p11a);

    let s1 = p11a.open_rw_session(slot).expect("session 1");
    s1.login(UserType::User, Some(&pin(PIN))).expect("login");
    s1.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(b"t55-private".to_vec()),
        Attribute::Value(b"secret-ish".to_vec()),
    ])
    .expect("private data object");

    let s2 = p11b.open_rw_session(slot).expect("session 2");
    let mut accepted_wrong = Vec::new();
    for round in 0..4 {
        // The token is logged in (s1 did, or the last round did).
        assert_eq!(
            code(s2.login(UserType::User, Some(&pin(PIN)))),
            Some(RvError::UserAlreadyLoggedIn),
            "round {round}"
        );
        s2.logout().expect("logout");
        assert_eq!(
            s1.get_session_info().unwrap().session_state(),
            SessionState::RwPublic
        );
        s2.login(UserType::User, Some(&pin(PIN)))
            .expect("login with the right PIN");
        s2.logout().expect("logout");
        for (what, given) in [("NULL", None), ("wrong", Some(pin(WRONG)))] {
            let r = code(s2.login(UserType::User, given.as_ref()));
            if r.is_none() {
                accepted_wrong.push(format!("round {round}: {what} PIN accepted"));
            } else {
                assert_eq!(r, Some(RvError::PinIncorrect), "round {round}, {what} PIN");
            }
            let state = s2.get_session_info().unwrap().session_state();
            if state != SessionState::RwPublic || private_objects(&s2) != 0 {
                accepted_wrong.push(format!(
                    "round {round}: after a {what} PIN the session is {state:?} and sees {} private objects",
                    private_objects(&s2)
                ));
            }
        }
        s2.login(UserType::User, Some(&pin(PIN)))
            .expect("login with the right PIN");
        assert_eq!(
            private_objects(&s1),
            1,
            "round {round}: the login is the token's, s1 sees it"
        );
    }
    assert!(accepted_wrong.is_empty(), "{accepted_wrong:#?}");
    drop((s1, s2));
}

/// Report failure 2: `C_InitPIN` as the partition SO through the HA slot
/// changed one member only. Also `C_SetPIN`, and a member down during the
/// change: once back, it refuses the old PIN before it serves any login.
#[test]
fn init_pin_and_set_pin_change_every_member() {
    let _turn = one_at_a_time();
    let mut c = Cluster::new(3);
    for i in 0..3 {
        let owner = c.owner_secret.to_str().unwrap().to_string();
        c.admin(
            i,
            &[
                "partition",
                "change-so-pin",
                "--partition",
                PARTITION,
                "--owner-secret",
                &owner,
                "--new-pin",
                SO_PIN,
            ],
        )
        .expect_ok();
    }
    ha_only(&c);
    let p11 = Loaded::new();
    let slot = ha_slot(&p11);
    const NEW: &str = "haPwd-init-2";
    {
        let so = p11.open_rw_session(slot).expect("session");
        so.login(UserType::So, Some(&pin(SO_PIN))).expect("SO login");
        so.init_pin(&pin(NEW)).expect("C_InitPIN");
        so.logout().expect("logout");
    }
    for i in 0..3 {
        accepts_only(&c, i, NEW, PIN);
    }
    assert!(
        c.wait_in_sync(0, Duration::from_secs(10)),
        "in sync: {}",
        c.status(0)
    );

    // Member 2 is down while the user changes the PIN.
    c.members[2].kill9();
    const NEWER: &str = "haPwd-set-3";
    {
        let s = p11.open_rw_session(slot).expect("session");
        s.login(UserType::User, Some(&pin(NEW))).expect("login");
        s.set_pin(&pin(NEW), &pin(NEWER)).expect("C_SetPIN");
        s.logout().expect("logout");
    }
    for i in 0..2 {
        accepts_only(&c, i, NEWER, NEW);
    }
    c.members[2].spawn();
    // From its first answer on, the returning member refuses the PIN it
    // missed the change of; it accepts the new one once caught up.
    let started = Instant::now();
    let mut accepted_new = false;
    while started.elapsed() < Duration::from_secs(20) && !accepted_new {
        let old = login_on(&c, 2, NEW);
        assert!(!old.ok, "the returning member accepted the old PIN");
        accepted_new = login_on(&c, 2, NEWER).ok;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(accepted_new, "the returning member never accepted the new PIN");
    accepts_only(&c, 2, NEWER, NEW);
    assert!(
        c.wait_in_sync(0, Duration::from_secs(10)),
        "in sync: {}",
        c.status(0)
    );
}

/// Report failure 3: the lockout split across members. With policy 15 at 6,
/// six wrong PINs, two on each member, lock the PIN on every member; the
/// owner secret, on one member, unlocks all.
#[test]
fn wrong_pins_spread_over_the_members_lock_every_member() {
    let _turn = one_at_a_time();
    let c = Cluster::new(3);
    const LIMIT: usize = 6;
    for i in 0..3 {
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
                &LIMIT.to_string(),
            ],
        )
        .expect_ok();
    }
    for n in 0..LIMIT {
        let run = login_on(&c, n % 3, WRONG);
        assert!(!run.ok, "wrong PIN {n} accepted");
    }
    for i in 0..3 {
        let run = login_on(&c, i, PIN);
        assert!(
            refused_as(&run, "locked"),
            "member {i} is not locked after {LIMIT} wrong PINs over the group: {run:?}"
        );
    }
    ha_only(&c);
    {
        let p11 = Loaded::new();
        let s = p11.open_rw_session(ha_slot(&p11)).expect("session");
        assert_eq!(
            code(s.login(UserType::User, Some(&pin(PIN)))),
            Some(RvError::PinLocked),
            "the HA slot"
        );
    }
    // The owner secret clears the lockout, on one member, for the group.
    const RESET: &str = "haPwd-reset-4";
    let owner = c.owner_secret.to_str().unwrap().to_string();
    c.admin(
        1,
        &[
            "partition",
            "change-pin",
            "--partition",
            PARTITION,
            "--owner-secret",
            &owner,
            "--new-pin",
            RESET,
        ],
    )
    .expect_ok();
    for i in 0..3 {
        accepts_only(&c, i, RESET, PIN);
    }
    assert!(
        c.wait_in_sync(0, Duration::from_secs(10)),
        "in sync: {}",
        c.status(0)
    );
}

/// Guesses one member answers before it says the PIN is locked: the
/// answers "incorrect PIN" it gives to wrong PINs, up to `cap`.
fn guesses_until_locked(c: &Cluster, members: &[usize], cap: usize) -> usize {
    let mut incorrect = 0;
    for n in 0..cap {
        let run = login_on(c, members[n % members.len()], WRONG);
        assert!(!run.ok, "a wrong PIN was accepted");
        if refused_as(&run, "locked") {
            return incorrect;
        }
        if refused_as(&run, "incorrect PIN") {
            incorrect += 1;
        }
    }
    incorrect
}

/// During a partition a guesser gets at most the limit on each side, under
/// both write concerns; once the sides meet again, the failures of both
/// count, and the PIN is locked on every member.
#[test]
fn a_partition_gives_a_guesser_at_most_the_limit_on_each_side() {
    let _turn = one_at_a_time();
    for options in [&[][..], &["--quorum"][..]] {
        let c = Cluster::with_group_options(3, options);
        const LIMIT: usize = 4;
        for i in 0..3 {
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
                    &LIMIT.to_string(),
                ],
            )
            .expect_ok();
        }
        c.isolate(2, hahsm_it::proxy::Mode::Cut);
        let apart = c.wait(Duration::from_secs(10), || {
            c.state_of(0, 2) == "down" && c.state_of(2, 0) == "down" && c.state_of(2, 1) == "down"
        });
        assert!(apart, "{options:?}: the sides never saw each other down");
        let majority = guesses_until_locked(&c, &[0, 1], 3 * LIMIT);
        let minority = guesses_until_locked(&c, &[2], 3 * LIMIT);
        assert!(
            majority < LIMIT && minority < LIMIT,
            "{options:?}: {majority} wrong PINs answered on the majority side, {minority} on the minority side, limit {LIMIT}"
        );
        c.heal_all();
        assert!(
            c.wait_in_sync(0, Duration::from_secs(20)),
            "{options:?}: in sync: {}",
            c.status(0)
        );
        for i in 0..3 {
            let run = login_on(&c, i, PIN);
            assert!(
                refused_as(&run, "locked"),
                "{options:?}: member {i} after the partition: {run:?}"
            );
        }
    }
}

/// The PIN flags of `C_GetTokenInfo` (issue 19), as (user, SO) triples of
/// (count low, final try, locked).
type PinFlags = ((bool, bool, bool), (bool, bool, bool));

fn pin_flags(p11: &Pkcs11, slot: cryptoki::slot::Slot) -> PinFlags {
    let t = p11.get_token_info(slot).expect("C_GetTokenInfo");
    (
        (
            t.user_pin_count_low(),
            t.user_pin_final_try(),
            t.user_pin_locked(),
        ),
        (t.so_pin_count_low(), t.so_pin_final_try(), t.so_pin_locked()),
    )
}

/// Waits until every slot (the HA slot and each member's) reports `want`;
/// a member that has not applied the last failure yet catches up within the
/// replication timeout. Returns each slot's flags when they differ.
#[track_caller]
fn flags_everywhere(p11: &Pkcs11, slots: &[cryptoki::slot::Slot], want: PinFlags, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<PinFlags> = slots.iter().map(|s| pin_flags(p11, *s)).collect();
        if got.iter().all(|g| *g == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: want {want:?} on every slot, got {got:?} (HA slot first)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `CKF_USER_PIN_COUNT_LOW` after a wrong PIN, `CKF_USER_PIN_FINAL_TRY` one
/// try before the lock, `CKF_USER_PIN_LOCKED` at it, and the SO flags, on
/// the HA slot and on every member's slot alike, whichever member counted
/// the failures; a good login clears them.
#[test]
fn token_flags_count_failed_logins_for_the_group() {
    let _turn = one_at_a_time();
    let c = Cluster::new(3);
    const LIMIT: &str = "4";
    let owner = c.owner_secret.to_str().unwrap().to_string();
    for i in 0..3 {
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
                LIMIT,
            ],
        )
        .expect_ok();
        c.admin(
            i,
            &[
                "partition",
                "change-so-pin",
                "--partition",
                PARTITION,
                "--owner-secret",
                &owner,
                "--new-pin",
                SO_PIN,
            ],
        )
        .expect_ok();
    }
    // The HA slot and the three members' slots.
    std::env::set_var("HAHSM_CONF", &c.conf);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));
    let p11 = Loaded::new();
    let slots = p11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 4, "the HA slot and three member slots: {slots:?}");
    let ha = slots
        .iter()
        .copied()
        .find(|s| p11.get_token_info(*s).unwrap().model().contains("HA group"))
        .expect("the HA slot");
    let s = p11.open_rw_session(ha).expect("session");
    let none = ((false, false, false), (false, false, false));
    flags_everywhere(&p11, &slots, none, "before any failure");

    assert_eq!(
        code(s.login(UserType::User, Some(&pin(WRONG)))),
        Some(RvError::PinIncorrect)
    );
    flags_everywhere(&p11, &slots, ((true, false, false), none.1), "one wrong user PIN");
    s.login(UserType::User, Some(&pin(PIN))).expect("login");
    flags_everywhere(&p11, &slots, none, "after a good login");
    s.logout().expect("logout");

    // Three of the four allowed, on three members: the next one locks.
    assert_eq!(
        code(s.login(UserType::User, Some(&pin(WRONG)))),
        Some(RvError::PinIncorrect)
    );
    assert!(!login_on(&c, 1, WRONG).ok);
    assert!(!login_on(&c, 2, WRONG).ok);
    flags_everywhere(
        &p11,
        &slots,
        ((true, true, false), (false, true, false)),
        "one try before the lock",
    );
    s.login(UserType::User, Some(&pin(PIN))).expect("login");
    flags_everywhere(&p11, &slots, none, "after a good login");
    s.logout().expect("logout");

    // A wrong SO PIN is the SO's count; the lock is shared.
    assert_eq!(
        code(s.login(UserType::So, Some(&pin(WRONG)))),
        Some(RvError::PinIncorrect)
    );
    flags_everywhere(
        &p11,
        &slots,
        ((false, false, false), (true, false, false)),
        "one wrong SO PIN",
    );
    for i in 0..3 {
        assert!(!login_on(&c, i, WRONG).ok);
    }
    flags_everywhere(&p11, &slots, ((true, false, true), (true, false, true)), "locked");
    assert_eq!(
        code(s.login(UserType::User, Some(&pin(PIN)))),
        Some(RvError::PinLocked)
    );
}
