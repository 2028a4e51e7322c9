//! The store's record decoding: an object's replicated state and an op-log
//! entry, as a member decodes them after opening a record. A decoded op is
//! also planned against an empty replica, which must never panic.
#![no_main]
use hahsm_replica::{ObjectState, Replica};
use hahsm_token::oplog::Op;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<ObjectState<Vec<u8>>>(data);
    if let Ok(op) = postcard::from_bytes::<Op>(data) {
        let mut replica: Replica<Vec<u8>> = Replica::new();
        let _ = replica.apply(&op);
    }
});
