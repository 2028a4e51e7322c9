//! A member whose key cache holds 2 parsed keys serves 6 keys used in
//! turn: every signature verifies, the cache never holds more than 2
//! parsed keys, and each use of a key that was pushed out parses it again
//! (the member's metrics `hahsm_partition_parsed_keys` and
//! `hahsm_partition_key_loads`).
mod t20_pkcs11_support;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use hahsm_it::Standalone;
use t20_pkcs11_support::Env;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const KEYS: usize = 6;
const ROUNDS: usize = 3;

/// The value of `name{partition="…"}` in the member's metrics.
fn metric(st: &Standalone, name: &str) -> f64 {
    let text = String::from_utf8(hahsm_it::http_get(&st.member.metrics_url())).unwrap();
    let prefix = format!("{name}{{partition=\"{}\"}} ", st.partition);
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the metrics:\n{text}"))
}

#[test]
fn a_bounded_key_cache_still_signs_with_every_key() {
    let st = Standalone::with_limits("key_cache_entries = 2");
    std::env::set_var("HAHSM_CONF", &st.conf);
    std::env::set_var("HAHSM_PKCS11_LOG", st.path("pkcs11.log"));
    let env = Env::with(st);
    let s = env.user();
    let pairs: Vec<_> = (0..KEYS)
        .map(|i| {
            s.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::EcParams(P256.to_vec()),
                    Attribute::Verify(true),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Sign(true),
                    Attribute::Label(format!("cached-{i}").into_bytes()),
                ],
            )
            .expect("key pair")
        })
        .collect();
    let loads_before = metric(&env.st, "hahsm_partition_key_loads");
    for round in 0..ROUNDS {
        for (i, (public, private)) in pairs.iter().enumerate() {
            let data = format!("round {round}, key {i}");
            let sig = s
                .sign(&Mechanism::EcdsaSha256, *private, data.as_bytes())
                .unwrap_or_else(|e| panic!("key {i} signs in round {round}: {e}"));
            s.verify(&Mechanism::EcdsaSha256, *public, data.as_bytes(), &sig)
                .unwrap_or_else(|e| panic!("key {i}'s signature of round {round}: {e}"));
        }
    }
    let parsed = metric(&env.st, "hahsm_partition_parsed_keys");
    let loads = metric(&env.st, "hahsm_partition_key_loads") - loads_before;
    eprintln!(
        "{} signatures with {KEYS} keys: {loads} key parses, {parsed} keys parsed at the end",
        KEYS * ROUNDS
    );
    assert!(parsed <= 2.0, "the cache holds {parsed} parsed keys, over its 2");
    // Used in turn, each key was pushed out before its next use.
    assert!(
        loads >= (KEYS * ROUNDS) as f64,
        "{loads} parses for {} uses of {KEYS} keys through a cache of 2",
        KEYS * ROUNDS
    );
}
