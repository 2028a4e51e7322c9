//! Encrypt, decrypt, digest, sign and verify (§5.8–5.13): the key checks at
//! init, single-part and multi-part calls, and the buffer convention.
use super::common::*;
use crate::error::{rv, Error, Result};
use crate::session::{Op, OpKind, MAX_BUFFERED};
use crate::sync::lock;
use hahsm_proto::client::{Request, Response};
use hahsm_token::{ck, Mechanism, Ouid};

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
            if !mech_has_flag(mech.mech, ck::CKF_DIGEST) {
                return rv(ck::CKR_MECHANISM_INVALID);
            }
            Op {
                stateless: true,
                ..Op::new(mech, None, false)
            }
        }
        (_, Some(kh)) => {
            check_mechanism_for(&mech, usage_of(kind))?;
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
    let (data, mech, key, stateless) = {
        let mut st = lock(&s.state);
        let op = st.op(kind).ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
        let data = match input {
            Input::Single(_) if op.multipart => return rv(ck::CKR_OPERATION_ACTIVE),
            Input::Single(d) => d.to_vec(),
            Input::Final => op.buffer.clone(),
        };
        if op.always_authenticate && !op.context_login_done {
            st.end(kind);
            return rv(ck::CKR_USER_NOT_LOGGED_IN);
        }
        if let Some((i, o)) = &op.cached {
            if *i == data {
                let out = o.clone();
                return deliver(&mut st, kind, out, capacity);
            }
        }
        (data, op.mech.clone(), op.key, op.stateless)
    };
    let request = op_request(&s, kind, mech, key, data.clone());
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
        st.end(kind);
        return rv(ck::CKR_DATA_LEN_RANGE);
    }
    op.multipart = true;
    op.buffer.extend_from_slice(data);
    Ok(())
}

/// A length query on `C_*Update`: the operation must be active; nothing is consumed.
pub fn update_check(cx: Cx, kind: OpKind) -> Result<()> {
    let Cx { s, .. } = cx;
    let mut st = lock(&s.state);
    st.op(kind)
        .map(|_| ())
        .ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))
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
