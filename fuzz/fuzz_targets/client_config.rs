//! The client config parser, which the CLI and the PKCS#11 module run on a
//! file an administrator (or an attacker with write access) controls.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hahsm_client::ClientConfig::parse(text, std::path::Path::new("/etc/hahsm/client.toml"));
    }
});
