//! Checks a history that `history_client` wrote, as t75 does, outside the
//! test: the end-state checks against a member's `hahsm keys list` output,
//! and, unless `--no-search`, stateright's linearizability check key by key,
//! each key's search given 2 s (on a key that is not linearizable it can run
//! very long, as under `all-reachable`; such a key is reported undecided).
//!
//!   check_history HISTORY KEYS_LIST LEASE_MS MAX_OFFSET_MS [--no-search]
use hahsm_it::history::{self, Bounds, Outcome};
use std::collections::BTreeMap;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, list, lease, offset, rest @ ..] = args.as_slice() else {
        panic!("usage: check_history HISTORY KEYS_LIST LEASE_MS MAX_OFFSET_MS [--no-search]");
    };
    let bounds = Bounds::of(
        lease.parse().expect("LEASE_MS"),
        offset.parse().expect("MAX_OFFSET_MS"),
    );
    let events = history::read(std::path::Path::new(path));
    let text = std::fs::read_to_string(list).expect("the keys list");
    let labels: BTreeMap<u32, String> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|l| {
            let key = l.strip_prefix('k')?.split_once("-v")?.0.parse().ok()?;
            Some((key, l.to_string()))
        })
        .collect();
    let lost = history::lost_writes(&events, &labels, bounds.write_us);
    let used_after = history::used_after_destroy(&events, bounds.read_us);
    let failed = events
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Failed(_)))
        .count();
    let unknown = events
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Unknown(_)))
        .count();
    println!(
        "{} operations: {failed} failed reads, {unknown} writes of unknown outcome; {} acknowledged writes lost; \
         {used_after} uses of a key more than {} ms after its destroy returned",
        events.len(),
        lost.len(),
        bounds.read_us / 1000
    );
    for l in &lost {
        println!("  {l}");
    }
    if rest.iter().any(|a| a == "--no-search") {
        return;
    }
    // Key by key, each search given 2 s: the tester's search on a key that
    // is not linearizable can run very long, and is then left undecided.
    let mut by_key: BTreeMap<u32, Vec<history::Event>> = BTreeMap::new();
    for e in &events {
        by_key.entry(e.key).or_default().push(e.clone());
    }
    let (mut anomalies, mut undecided) = (Vec::new(), Vec::new());
    for (key, mut ops) in by_key {
        ops.sort_by_key(|e| (!matches!(e.op, history::Op::Create(_)), e.invoked_us));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(history::key_is_consistent(&ops, bounds));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(2)) {
            Ok(true) => {}
            Ok(false) => anomalies.push(key),
            Err(_) => undecided.push(key),
        }
        if undecided.len() >= 20 {
            println!("20 keys undecided: stopping");
            break;
        }
    }
    println!(
        "keys not linearizable up to the bounds: {} {anomalies:?}; undecided after 2 s each: {} {undecided:?}",
        anomalies.len(),
        undecided.len()
    );
    std::process::exit(0);
}
