//! Every frame a client can send a member, and every admin request: the
//! decoders the member runs on bytes from the network and the admin socket.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hahsm_proto::decode::<hahsm_proto::client::Hello>(data);
    let _ = hahsm_proto::decode::<hahsm_proto::client::RequestFrame>(data);
    let _ = hahsm_proto::decode::<hahsm_proto::client::ResponseFrame>(data);
    let _ = hahsm_proto::decode::<hahsm_proto::admin::AdminRequest>(data);
});
