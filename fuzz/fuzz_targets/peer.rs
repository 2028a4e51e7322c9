//! The replication messages a member decodes from its peers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hahsm_proto::decode::<hahsm_proto::peer::PeerRequestFrame>(data);
    let _ = hahsm_proto::decode::<hahsm_proto::peer::PeerResponseFrame>(data);
});
