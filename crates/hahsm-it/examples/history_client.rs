//! An application that records its history for `hahsm_it::history`: several
//! threads, each with its own session on the HA slot, rename, read, use and
//! destroy HMAC keys (making new ones), and every operation is written down
//! as invoked and as it ended, with its times on one monotonic clock. Some
//! reads and uses go to keys already destroyed, so that a destroyed key
//! used again would show.
//!
//!   HAHSM_CONF=… HAHSM_PIN=… history_client MODULE OUT SECONDS [THREADS] [KEYS]
//!
//! Writes OUT (one JSON event a line) and prints one summary line.
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hahsm_it::history::{Event, Op, Outcome, Ret};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The HA slot's token model (the module's `ha` slot).
const HA_MODEL: &str = "hahsm HA group";

struct Key {
    id: u32,
    handle: ObjectHandle,
    renames: u32,
}

/// What the threads share: the keys alive, the last ones destroyed, the history.
struct World {
    started: Instant,
    live: Mutex<Vec<Key>>,
    destroyed: Mutex<Vec<(u32, ObjectHandle)>>,
    next_key: AtomicU32,
    events: Mutex<Vec<Event>>,
}

impl World {
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn record(&self, key: u32, process: u32, op: Op, invoked_us: u64, outcome: Outcome) {
        let returned_us = self.now_us();
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(Event {
            key,
            process,
            op,
            invoked_us,
            returned_us,
            outcome,
        });
    }
}

fn gone(e: &Error) -> bool {
    matches!(
        e,
        Error::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)
    )
}

/// A read's outcome: the answer, "gone", or a failure that changed nothing.
fn read_outcome(r: Result<Ret, Error>) -> Outcome {
    match r {
        Ok(ret) => Outcome::Returned(ret),
        Err(e) if gone(&e) => Outcome::Returned(Ret::Gone),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// A write's outcome: done, "gone" (every member the HA slot asked had the
/// key destroyed: another thread destroyed it meanwhile), or unknown (it may
/// have taken effect).
fn write_outcome(r: Result<(), Error>) -> Outcome {
    match r {
        Ok(()) => Outcome::Returned(Ret::Done),
        Err(e) if gone(&e) => Outcome::Returned(Ret::Gone),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

fn make_key(world: &World, s: &Session, process: u32) {
    let id = world.next_key.fetch_add(1, Ordering::SeqCst);
    let label = format!("k{id}-v0");
    let invoked = world.now_us();
    let made = s.generate_key(
        &Mechanism::GenericSecretKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::ValueLen(32.into()),
            Attribute::Label(label.clone().into_bytes()),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ],
    );
    // A key whose creation failed is not used: its fate is not in the model.
    if let Ok(handle) = made {
        world.record(
            id,
            process,
            Op::Create(label),
            invoked,
            Outcome::Returned(Ret::Done),
        );
        world.live.lock().unwrap_or_else(|p| p.into_inner()).push(Key {
            id,
            handle,
            renames: 0,
        });
    }
}

/// A small, seedable random source (xorshift), one per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn worker(world: &World, s: &Session, process: u32, keys: usize, until: Instant) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(process + 1) * 0x1000_0001));
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(40 + rng.below(60)));
        let roll = rng.below(100);
        // Now and then, a key destroyed a while ago is read or used again.
        if roll < 8 {
            let old = {
                let d = world.destroyed.lock().unwrap_or_else(|p| p.into_inner());
                (!d.is_empty()).then(|| d[rng.below(d.len() as u64) as usize])
            };
            if let Some((id, handle)) = old {
                let invoked = world.now_us();
                let r = s
                    .sign(&Mechanism::Sha256Hmac, handle, b"history")
                    .map(|_| Ret::Usable);
                world.record(id, process, Op::Use, invoked, read_outcome(r));
            }
            continue;
        }
        // A key alive now: its id, its handle, and a new label if it is renamed.
        let picked = {
            let mut live = world.live.lock().unwrap_or_else(|p| p.into_inner());
            if live.is_empty() {
                None
            } else {
                let i = rng.below(live.len() as u64) as usize;
                if roll >= 94 && live.len() > keys / 2 {
                    let k = live.swap_remove(i);
                    Some((k.id, k.handle, None, true))
                } else {
                    let k = &mut live[i];
                    let rename = (roll >= 64).then(|| {
                        k.renames += 1;
                        format!("k{}-v{}", k.id, k.renames)
                    });
                    Some((k.id, k.handle, rename, false))
                }
            }
        };
        let Some((id, handle, rename, destroy)) = picked else {
            make_key(world, s, process);
            continue;
        };
        let invoked = world.now_us();
        if destroy {
            let r = s.destroy_object(handle);
            world.record(id, process, Op::Destroy, invoked, write_outcome(r));
            world
                .destroyed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((id, handle));
            make_key(world, s, process);
        } else if let Some(label) = rename {
            let r = s.update_attributes(handle, &[Attribute::Label(label.clone().into_bytes())]);
            world.record(id, process, Op::SetLabel(label), invoked, write_outcome(r));
        } else if roll < 40 {
            let r = s
                .get_attributes(handle, &[AttributeType::Label])
                .map(|attrs| match attrs.first() {
                    Some(Attribute::Label(l)) => Ret::Label(String::from_utf8_lossy(l).into_owned()),
                    _ => Ret::Label(String::new()),
                });
            world.record(id, process, Op::ReadLabel, invoked, read_outcome(r));
        } else {
            let r = s
                .sign(&Mechanism::Sha256Hmac, handle, b"history")
                .map(|_| Ret::Usable);
            world.record(id, process, Op::Use, invoked, read_outcome(r));
        }
    }
}

fn ha_slot(p11: &Pkcs11) -> Slot {
    let slots = p11.get_slots_with_token().expect("C_GetSlotList");
    *slots
        .iter()
        .find(|s| {
            p11.get_token_info(**s)
                .is_ok_and(|t| t.model().trim() == HA_MODEL)
        })
        .expect("the HA slot")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, module, out, seconds, rest @ ..] = args.as_slice() else {
        panic!("usage: history_client MODULE OUT SECONDS [THREADS] [KEYS]");
    };
    let seconds: u64 = seconds.parse().expect("SECONDS");
    let threads: u32 = rest.first().map_or(3, |t| t.parse().expect("THREADS"));
    let keys: usize = rest.get(1).map_or(16, |k| k.parse().expect("KEYS"));
    let pin = std::env::var("HAHSM_PIN").expect("HAHSM_PIN");
    let p11 = Pkcs11::new(module).expect("the module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = ha_slot(&p11);
    let world = Arc::new(World {
        started: Instant::now(),
        live: Mutex::new(Vec::new()),
        destroyed: Mutex::new(Vec::new()),
        next_key: AtomicU32::new(1),
        events: Mutex::new(Vec::new()),
    });
    let first = p11.open_rw_session(slot).expect("C_OpenSession");
    first
        .login(UserType::User, Some(&AuthPin::new(pin.into())))
        .expect("C_Login");
    for _ in 0..keys {
        make_key(&world, &first, 0);
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let handles: Vec<_> = (1..=threads)
        .map(|process| {
            let (world, p11) = (world.clone(), p11.clone());
            std::thread::spawn(move || {
                let s = p11.open_rw_session(slot).expect("C_OpenSession");
                worker(&world, &s, process, keys, until);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a worker thread panicked");
    }
    drop(first);
    let events = world.events.lock().unwrap_or_else(|p| p.into_inner());
    let text: String = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("an event encodes") + "\n")
        .collect();
    std::fs::write(out, text).expect("the history is written");
    let unknown = events
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Unknown(_)))
        .count();
    let failed = events
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Failed(_)))
        .count();
    println!(
        "{} operations on {} keys: {failed} reads failed, {unknown} writes of unknown outcome",
        events.len(),
        world.next_key.load(Ordering::SeqCst) - 1
    );
}
