//! Encrypt, decrypt, digest, sign and verify (§5.8–5.13): the key checks at
//! init, single-part and multi-part calls, and the buffer convention.
use super::common::*;
use crate::error::{rv, Error, Result};
use crate::session::{Op, OpKind, MAX_BUFFERED};
use crate::sync::lock;
use hahsm_proto::client::{Request, Response};
use hahsm_token::{ck, MechParams, Mechanism, Ouid};

/// Most bytes of whole blocks one streaming `C_*Update` request carries; a
/// larger update is sent in parts of this size.
pub const STREAM_PART: usize = 512 * 1024;

/// `C_EncryptInit`, `C_DecryptInit`, `C_DigestInit`, `C_SignInit`, `C_VerifyInit`.
pub fn op_init(
    cx: Cx,
    kind: OpKind,
    mech: Mechanism,
    key_handle: Option<ck::CK_OBJECT_HANDLE>,
) -> Result<()> {
    let Cx { m, s } = cx;
    if lock(&s.state).has(kind) {
        return rv(ck::CKR_OPERATION_ACTIVE);
    }
    let op = match (kind, key_handle) {
        (OpKind::Digest, _) => {
            if !mech_has_flag(&s, mech.mech, ck::CKF_DIGEST) {
                return rv(ck::CKR_MECHANISM_INVALID);
            }
            Op {
                stateless: true,
                ..Op::new(mech, None, false)
            }
        }
        (_, Some(kh)) => {
            check_mechanism_for(&s, &mech, usage_of(kind))?;
            if kind == OpKind::Sign && deterministic_ml_dsa(&mech) {
                return Err(crate::Error::Token(
                    hahsm_token::TokenError::MechanismParamInvalid(
                        "deterministic ML-DSA signing is not offered: members sign hedged".into(),
                    ),
                ));
            }
            let (ouid, info) = key(&m, &s, kh)?;
            check_key_for(&mech, &info, usage_of(kind))?;
            Op {
                stateless: info.token && !info.always_authenticate,
                ..Op::new(mech, Some(ouid), info.always_authenticate)
            }
        }
        (_, None) => return rv(ck::CKR_KEY_HANDLE_INVALID),
    };
    let mut st = lock(&s.state);
    if st.has(kind) {
        return rv(ck::CKR_OPERATION_ACTIVE);
    }
    st.set(kind, op);
    Ok(())
}

/// Whether an ML-DSA signature is asked to be deterministic
/// (`CKH_DETERMINISTIC_REQUIRED`), which AWS-LC does not offer: refused at
/// `C_SignInit`, as the member would refuse it at `C_Sign`.
fn deterministic_ml_dsa(mech: &Mechanism) -> bool {
    matches!(
        mech.params,
        MechParams::SignContext {
            hedge: ck::CKH_DETERMINISTIC_REQUIRED,
            ..
        }
    )
}

/// Ends an operation (a NULL mechanism to `C_*Init`, PKCS#11 3.0 §5.2).
pub fn op_cancel(cx: Cx, kind: OpKind) -> Result<()> {
    let Cx { s, .. } = cx;
    lock(&s.state).end(kind);
    Ok(())
}

/// The input of a producing operation: single-part data, or what `C_*Update` gathered.
pub enum Input<'a> {
    Single(&'a [u8]),
    Final,
}

/// `C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign` and their `C_*Final`.
pub fn produce(cx: Cx, kind: OpKind, input: Input<'_>, capacity: Option<usize>) -> Result<Vec<u8>> {
    let Cx { m, s } = cx;
    let (data, mech, key, stateless, digest_keys) = {
        let mut st = lock(&s.state);
        let op = st.op(kind).ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
        let data = match input {
            Input::Single(_) if op.multipart => return rv(ck::CKR_OPERATION_ACTIVE),
            Input::Single(d) if d.len() > MAX_BUFFERED => {
                crate::log::warn(&format!(
                    "{}: {} bytes of single-part input is over the limit of {MAX_BUFFERED} bytes (1000 KiB) \
                     that one request carries; use the multi-part functions (C_*Update)",
                    kind.single_part_name(),
                    d.len()
                ));
                st.end(kind);
                return rv(too_long(kind));
            }
            Input::Single(d) => d.to_vec(),
            Input::Final => op.buffer.clone(),
        };
        if op.always_authenticate && !op.context_login_done {
            st.end(kind);
            return rv(ck::CKR_USER_NOT_LOGGED_IN);
        }
        if matches!(input, Input::Final) && op.multipart && streams(kind, op.mech.mech) {
            if op.ctr_spent && !data.is_empty() {
                st.end(kind);
                return rv(too_long(kind));
            }
            // ECB, CBC and CTR have sent every whole block already; nothing is
            // left to ask the member for when no partial block remains.
            if data.is_empty() && op.mech.mech != ck::CKM_AES_CBC_PAD {
                return deliver(&mut st, kind, Vec::new(), capacity);
            }
        }
        if let Some((i, o)) = &op.cached {
            if *i == data {
                let out = o.clone();
                return deliver(&mut st, kind, out, capacity);
            }
        }
        (
            data,
            op.mech.clone(),
            op.key,
            op.stateless,
            op.digest_keys.clone(),
        )
    };
    let request = if digest_keys.is_empty() {
        op_request(&s, kind, mech, key, data.clone())
    } else {
        Request::DigestKeys {
            partition: s.slot.partition.clone(),
            mechanism: mech,
            data: data.clone(),
            keys: digest_keys,
        }
    };
    let result = if stateless {
        m.call_stateless(&s.slot, request)
    } else {
        m.call(&s.slot, request)
    };
    let mut st = lock(&s.state);
    match result {
        Ok(Response::Bytes(out)) => {
            if let Some(op) = st.op(kind) {
                op.cached = Some((data, out.clone()));
            }
            deliver(&mut st, kind, out, capacity)
        }
        Ok(_) => {
            st.end(kind);
            Err(unexpected())
        }
        Err(e) => {
            st.end(kind);
            Err(e)
        }
    }
}

/// `C_*Update`: gathers input for the request sent at `C_*Final`.
pub fn update(cx: Cx, kind: OpKind, data: &[u8]) -> Result<()> {
    let Cx { s, .. } = cx;
    let mut st = lock(&s.state);
    let op = st.op(kind).ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
    if op.buffer.len() + data.len() > MAX_BUFFERED {
        crate::log::warn(&format!(
            "{}: the multi-part input is over the limit of {MAX_BUFFERED} bytes (1000 KiB) this \
             mechanism gathers before C_*Final",
            kind.single_part_name()
        ));
        st.end(kind);
        return rv(ck::CKR_DATA_LEN_RANGE);
    }
    op.multipart = true;
    op.buffer.extend_from_slice(data);
    Ok(())
}

/// Most keys one digest may take in (`C_DigestKey`).
pub const MAX_DIGEST_KEYS: usize = 64;

/// `C_DigestKey` (§5.10): the value of a secret key goes into the active
/// digest, where `C_DigestUpdate` would put data. The value never reaches
/// the module: the digest is sent at `C_DigestFinal` as one request naming
/// the keys, and the member inserts their values. Any secret key may be
/// digested, sensitive or not (only the hash leaves the member); other
/// classes are `CKR_KEY_INDIGESTIBLE`.
pub fn digest_key(cx: Cx, key_handle: ck::CK_OBJECT_HANDLE) -> Result<()> {
    let Cx { m, s } = cx;
    if !lock(&s.state).has(OpKind::Digest) {
        return rv(ck::CKR_OPERATION_NOT_INITIALIZED);
    }
    let (ouid, info) = key(&m, &s, key_handle)?;
    if info.class != ck::CKO_SECRET_KEY {
        return rv(ck::CKR_KEY_INDIGESTIBLE);
    }
    let mut st = lock(&s.state);
    let op = st
        .op(OpKind::Digest)
        .ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
    if op.digest_keys.len() >= MAX_DIGEST_KEYS {
        st.end(OpKind::Digest);
        return rv(ck::CKR_DATA_LEN_RANGE);
    }
    op.multipart = true;
    op.digest_keys.push((op.buffer.len() as u64, ouid));
    // A session key lives on the slot's session home: the digest goes there.
    op.stateless &= info.token;
    Ok(())
}

/// Whether a multi-part operation streams: AES-ECB, AES-CBC, AES-CBC-PAD and
/// AES-CTR encryption and decryption send their whole blocks at each update.
fn streams(kind: OpKind, mech: u64) -> bool {
    matches!(kind, OpKind::Encrypt | OpKind::Decrypt)
        && matches!(
            mech,
            ck::CKM_AES_ECB | ck::CKM_AES_CBC | ck::CKM_AES_CBC_PAD | ck::CKM_AES_CTR
        )
}

/// How many of the `held` bytes (what the operation kept plus the new input)
/// an update processes: the whole blocks. CBC-PAD decryption keeps the last
/// whole block too, when nothing follows it, for `C_DecryptFinal` to unpad.
fn ready(kind: OpKind, mech: u64, held: usize) -> usize {
    let whole = held / 16 * 16;
    if kind == OpKind::Decrypt && mech == ck::CKM_AES_CBC_PAD && whole == held && whole > 0 {
        whole - 16
    } else {
        whole
    }
}

/// `CKR_DATA_LEN_RANGE`, or `CKR_ENCRYPTED_DATA_LEN_RANGE` for decryption.
fn too_long(kind: OpKind) -> ck::CK_RV {
    if kind == OpKind::Decrypt {
        ck::CKR_ENCRYPTED_DATA_LEN_RANGE
    } else {
        ck::CKR_DATA_LEN_RANGE
    }
}

/// `C_EncryptUpdate` and `C_DecryptUpdate`. For the mechanisms that stream
/// ([`streams`]) the whole blocks go to a member now (in requests of at most
/// [`STREAM_PART`] bytes) and their output comes back at once; only a
/// partial block stays in the module (and, for CBC-PAD decryption, the last
/// block), so what the module holds is bounded by 32 bytes. The operation's
/// mechanism then carries the chaining value (CBC's IV, CTR's counter
/// block) for the next part and for `C_*Final`. CBC-PAD's middle parts go as
/// `MechParams::IvPart`, which the member runs as unpadded CBC while
/// checking the key against `CKM_AES_CBC_PAD`. Other ciphers gather as
/// [`update`] does and output nothing. `capacity` `None` asks only for the
/// output length; nothing is consumed.
pub fn update_cipher(cx: Cx, kind: OpKind, data: &[u8], capacity: Option<usize>) -> Result<Vec<u8>> {
    let Cx { m, s } = cx;
    let (mut mech, key, stateless, input) = {
        let mut st = lock(&s.state);
        let op = st.op(kind).ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
        if !streams(kind, op.mech.mech) {
            if capacity.is_some() {
                drop(st);
                update(Cx { m, s }, kind, data)?;
            }
            return Ok(Vec::new());
        }
        let take = ready(kind, op.mech.mech, op.buffer.len() + data.len());
        let Some(cap) = capacity else {
            return Ok(vec![0; take]);
        };
        if cap < take {
            return Err(Error::BufferTooSmall { needed: take });
        }
        if op.always_authenticate && !op.context_login_done {
            st.end(kind);
            return rv(ck::CKR_USER_NOT_LOGGED_IN);
        }
        if op.ctr_spent && !data.is_empty() {
            st.end(kind);
            return rv(too_long(kind));
        }
        op.multipart = true;
        let mut input = std::mem::take(&mut op.buffer);
        input.extend_from_slice(data);
        op.buffer = input.split_off(take);
        (op.mech.clone(), op.key, op.stateless, input)
    };
    let mut out = Vec::with_capacity(input.len());
    let mut spent = false;
    for part in input.chunks(STREAM_PART) {
        if spent {
            lock(&s.state).end(kind);
            return rv(too_long(kind));
        }
        let request = op_request(&s, kind, part_mechanism(&mech), key, part.to_vec());
        let result = if stateless {
            m.call_stateless(&s.slot, request)
        } else {
            m.call(&s.slot, request)
        };
        match result {
            Ok(Response::Bytes(o)) if o.len() == part.len() => {
                spent = advance(&mut mech, kind, part, &o);
                out.extend_from_slice(&o);
            }
            Ok(_) => {
                lock(&s.state).end(kind);
                return Err(unexpected());
            }
            Err(e) => {
                lock(&s.state).end(kind);
                return Err(e);
            }
        }
    }
    let mut st = lock(&s.state);
    if let Some(op) = st.op(kind) {
        op.mech = mech;
        op.ctr_spent |= spent;
    }
    Ok(out)
}

/// The mechanism a streaming part is sent with: the operation's, except that
/// CBC-PAD's middle parts are unpadded ([`MechParams::IvPart`]).
fn part_mechanism(mech: &Mechanism) -> Mechanism {
    match (&mech.params, mech.mech) {
        (MechParams::Iv(iv), ck::CKM_AES_CBC_PAD) => {
            Mechanism::with(mech.mech, MechParams::IvPart(iv.clone()))
        }
        _ => mech.clone(),
    }
}

/// Moves a streaming operation's chaining value past one part (`input` in,
/// `output` out): CBC's next IV is the part's last ciphertext block; CTR's
/// counter advances by the part's blocks within its `ulCounterBits`. True
/// when the CTR counter has used its last value.
fn advance(mech: &mut Mechanism, kind: OpKind, input: &[u8], output: &[u8]) -> bool {
    match &mut mech.params {
        MechParams::Iv(iv) => {
            let cipher = if kind == OpKind::Encrypt { output } else { input };
            if let Some(last) = cipher.len().checked_sub(16).map(|i| &cipher[i..]) {
                *iv = last.to_vec();
            }
            false
        }
        MechParams::Ctr { counter_bits, cb } => {
            let Ok(block) = <[u8; 16]>::try_from(cb.as_slice()) else {
                return true;
            };
            let (next, wrapped) = ctr_advance(block, *counter_bits as u32, input.len() / 16);
            *cb = next.to_vec();
            wrapped
        }
        _ => false,
    }
}

/// The counter block `blocks` blocks on, counting in the low `bits` bits;
/// true when the counter came round to its start (it has no value left).
fn ctr_advance(cb: [u8; 16], bits: u32, blocks: usize) -> ([u8; 16], bool) {
    let v = u128::from_be_bytes(cb);
    let mask = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let low = v & mask;
    let (sum, overflow) = low.overflowing_add(blocks as u128);
    let wrapped = overflow || (bits < 128 && sum > mask);
    let next = (v & !mask) | (sum & mask);
    (next.to_be_bytes(), wrapped)
}

/// `C_Verify` and `C_VerifyFinal`. The operation ends either way.
pub fn verify(cx: Cx, input: Input<'_>, signature: &[u8]) -> Result<()> {
    let Cx { m, s } = cx;
    let (data, mech, key, stateless) = {
        let mut st = lock(&s.state);
        let op = st
            .op(OpKind::Verify)
            .ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
        let data = match input {
            Input::Single(_) if op.multipart => return rv(ck::CKR_OPERATION_ACTIVE),
            Input::Single(d) => d.to_vec(),
            Input::Final => std::mem::take(&mut op.buffer),
        };
        let r = (
            data,
            op.mech.clone(),
            op.key.unwrap_or(Ouid([0; 16])),
            op.stateless,
        );
        st.end(OpKind::Verify);
        r
    };
    let request = Request::Verify {
        partition: s.slot.partition.clone(),
        key,
        mechanism: mech,
        data,
        signature: signature.to_vec(),
    };
    let result = if stateless {
        m.call_stateless(&s.slot, request)
    } else {
        m.call(&s.slot, request)
    };
    expect(result, Response::Verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_blocks_go_out_and_cbc_pad_decryption_keeps_the_last() {
        assert_eq!(ready(OpKind::Encrypt, ck::CKM_AES_CBC_PAD, 47), 32);
        assert_eq!(ready(OpKind::Encrypt, ck::CKM_AES_CBC_PAD, 48), 48);
        assert_eq!(ready(OpKind::Decrypt, ck::CKM_AES_CBC_PAD, 48), 32);
        assert_eq!(ready(OpKind::Decrypt, ck::CKM_AES_CBC_PAD, 50), 48);
        assert_eq!(ready(OpKind::Decrypt, ck::CKM_AES_CBC, 48), 48);
        assert_eq!(ready(OpKind::Encrypt, ck::CKM_AES_CTR, 15), 0);
    }

    #[test]
    fn the_ctr_counter_advances_in_its_bits_and_says_when_spent() {
        let mut cb = [0xaa; 16];
        cb[15] = 0xfe;
        let (next, spent) = ctr_advance(cb, 8, 1);
        assert_eq!((next[15], next[14], spent), (0xff, 0xaa, false));
        let (next, spent) = ctr_advance(cb, 8, 2);
        assert_eq!((next[15], next[14], spent), (0x00, 0xaa, true));
        let (next, spent) = ctr_advance([0; 16], 128, 3);
        assert_eq!((next[15], spent), (3, false));
    }
}
