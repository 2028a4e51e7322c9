//! The mechanisms against known answers and each other.
use super::cipher::ctr_fits;
use super::derive::*;
use super::params::*;
use hahsm_awslc_ffi::Hash;

#[test]
fn digest_info_prefixes_have_consistent_lengths() {
    for h in [Hash::Sha1, Hash::Sha224, Hash::Sha256, Hash::Sha384, Hash::Sha512] {
        let di = digest_info(h, b"x");
        // Outer SEQUENCE length covers everything after the 2-byte header,
        // and the OCTET STRING length is the digest length.
        assert_eq!(usize::from(di[1]) + 2, di.len());
        let p = digest_info_prefix(h);
        assert_eq!(usize::from(p[p.len() - 1]), h.output_len());
    }
}

#[test]
fn left_pad_pads_and_never_panics() {
    assert_eq!(&left_pad(&[1, 2], 4)[..], &[0, 0, 1, 2]);
    assert_eq!(&left_pad(&[], 2)[..], &[0, 0]);
    assert_eq!(&left_pad(&[1, 2, 3], 2)[..], &[2, 3]);
}

#[test]
fn x963_known_answer() {
    // SEC 1 / ANSI X9.63 vector (NIST CAVS, SHA-256, 256-bit Z, no shared
    // info): Z = 96c0..., key = 4432...
    let z = hex::decode("96c05619d56c328ab95fe84b18264b08725b85e33fd34f08").unwrap();
    let out = x963_kdf(Hash::Sha256, &z, &[], 16);
    assert_eq!(hex::encode(out.expose()), "443024c3dae66b95e6f5670601558f71");
}

#[test]
fn ctr_counter_may_not_wrap_its_width() {
    let mut cb = [0u8; 16];
    cb[15] = 0xfe;
    // An 8-bit counter at 0xfe has two blocks left.
    assert!(ctr_fits(&cb, 8, 32));
    assert!(!ctr_fits(&cb, 8, 33));
    assert!(ctr_fits(&cb, 128, 1 << 20));
    assert!(ctr_fits(&[0xff; 16], 128, 16));
    assert!(!ctr_fits(&[0xff; 16], 128, 17));
}
