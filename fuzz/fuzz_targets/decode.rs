//! Random attribute templates and mechanism parameters into the PKCS#11
//! module's argument decoding (`hahsm_pkcs11::decode`), the code every
//! application-supplied `CK_ATTRIBUTE` array and `CK_MECHANISM` goes through.
//!
//! Input layout: byte 0 picks the mechanism from the supported list (or a
//! random type); the rest is split at byte 1 into the parameter bytes and a
//! template of (type index, length, bytes) records. Pointers inside
//! parameters resolve into the input itself, as the FFI layer's reader would
//! resolve them into application memory.
#![no_main]
use hahsm_pkcs11::decode::{self, Memory};
use hahsm_pkcs11::Result;
use libfuzzer_sys::fuzz_target;

/// Serves "addresses" as offsets into the fuzz input (address 0 is NULL).
struct Input<'a>(&'a [u8]);

impl Memory for Input<'_> {
    fn read(&mut self, addr: usize, len: usize) -> Result<Vec<u8>> {
        let start = addr.saturating_sub(1).min(self.0.len());
        let end = start.saturating_add(len).min(self.0.len());
        let mut v = self.0[start..end].to_vec();
        v.resize(len, 0);
        Ok(v)
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let supported = hahsm_token::mechanism::supported();
    let mech = match supported.get(data[0] as usize) {
        Some((m, _)) => *m,
        None => u64::from(data[0]) << 4,
    };
    let split = (data[1] as usize).min(data.len() - 2);
    let (param, rest) = data[2..].split_at(split);
    let _ = decode::mechanism(mech, param, &mut Input(data));

    // A template: records of [type index, length, bytes…].
    let kinds = [
        hahsm_token::ck::CKA_CLASS,
        hahsm_token::ck::CKA_TOKEN,
        hahsm_token::ck::CKA_LABEL,
        hahsm_token::ck::CKA_EC_POINT,
        hahsm_token::ck::CKA_ALLOWED_MECHANISMS,
        hahsm_token::ck::CKA_VALUE_LEN,
        0x8000_0000,
    ];
    let mut attrs = Vec::new();
    let mut rest = rest;
    while rest.len() >= 2 {
        let t = kinds[rest[0] as usize % kinds.len()];
        let n = (rest[1] as usize).min(rest.len() - 2);
        let value = if rest[1] == 0xff {
            None
        } else {
            Some(&rest[2..2 + n])
        };
        attrs.push((t, value));
        rest = &rest[2 + n..];
    }
    let _ = decode::template(&attrs);
    let _ = decode::search_template(&attrs);
    if let Some(point) = attrs.first().and_then(|a| a.1) {
        let der = decode::ec_point_der(point);
        if decode::RAW_POINT_LENS.contains(&point.len()) {
            // A raw point is wrapped once, and the wrapped form is kept.
            assert_eq!(der.len(), point.len() + if point.len() < 0x80 { 2 } else { 3 });
            assert_eq!(decode::ec_point_der(&der), der);
        }
    }
});
