//! Sessions and logins (§5.6): open, close, info, login, logout, cancel.
use super::common::*;
use crate::error::{rv, Result};
use crate::module::Module;
use crate::session::{OpKind, Session};
use crate::sync::lock;
use hahsm_proto::client::{Request, Response};
use hahsm_proto::Secret;
use hahsm_token::ck;

pub fn open_session(cx: SlotCx, flags: ck::CK_FLAGS) -> Result<ck::CK_SESSION_HANDLE> {
    let SlotCx { m, slot } = cx;
    if flags & ck::CKF_SERIAL_SESSION == 0 {
        return rv(ck::CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    }
    if !lock(&slot.info).activated {
        return rv(ck::CKR_TOKEN_NOT_PRESENT);
    }
    let rw = flags & ck::CKF_RW_SESSION != 0;
    if !rw && slot.login() == Some(ck::CKU_SO) {
        return rv(ck::CKR_SESSION_READ_WRITE_SO_EXISTS);
    }
    Ok(m.sessions.add(|handle| Session {
        handle,
        slot,
        rw,
        state: Default::default(),
    }))
}

pub fn close_session(cx: Cx) -> Result<()> {
    close(&cx.m, cx.s.handle)
}

fn close(m: &Module, h: ck::CK_SESSION_HANDLE) -> Result<()> {
    let s = m.sessions.remove(h)?;
    // Session objects die with the session that made them (§4.4), logged
    // in or not, destroyable or not.
    let owned = m.handles.owned_by(h);
    m.release_session_objects(&s.slot, owned.iter().map(|(_, o)| *o).collect());
    for (handle, _) in owned {
        m.handles.forget(handle);
    }
    // Closing the token's last session logs the application out (§5.6).
    if m.sessions.of_slot(s.slot.id).is_empty() && s.slot.login().is_some() {
        let _ = m.logout(&s.slot);
    }
    Ok(())
}

pub fn close_all_sessions(cx: SlotCx) -> Result<()> {
    let SlotCx { m, slot } = cx;
    for s in m.sessions.of_slot(slot.id) {
        let _ = close(&m, s.handle);
    }
    Ok(())
}

pub fn session_info(cx: Cx) -> Result<ck::CK_SESSION_INFO> {
    let Cx { s, .. } = cx;
    Ok(ck::CK_SESSION_INFO {
        slotID: s.slot.id,
        state: s.ck_state(),
        flags: ck::CKF_SERIAL_SESSION | if s.rw { ck::CKF_RW_SESSION } else { 0 },
        ulDeviceError: 0,
    })
}

pub fn login(cx: Cx, user_type: ck::CK_USER_TYPE, pin: &[u8]) -> Result<()> {
    let Cx { m, s } = cx;
    let slot = &s.slot;
    let wire_pin = Secret::new(pin.to_vec());
    match user_type {
        ck::CKU_CONTEXT_SPECIFIC => {
            if slot.login() != Some(ck::CKU_USER) {
                return rv(ck::CKR_USER_NOT_LOGGED_IN);
            }
            // Any member can check the PIN (they share it); in an HA slot the
            // operation that follows may then run on any member.
            if lock(&s.state).any_key_op().is_none() {
                return rv(ck::CKR_OPERATION_NOT_INITIALIZED);
            }
            expect(
                m.call(
                    slot,
                    Request::Login {
                        partition: slot.partition.clone(),
                        user_type: hahsm_proto::client::USER_CONTEXT_SPECIFIC,
                        pin: wire_pin,
                    },
                ),
                Response::Done,
            )?;
            if let Some(op) = lock(&s.state).any_key_op() {
                op.context_login_done = true;
            }
            Ok(())
        }
        ck::CKU_USER | ck::CKU_SO => {
            match slot.login() {
                Some(u) if u == user_type => return rv(ck::CKR_USER_ALREADY_LOGGED_IN),
                Some(_) => return rv(ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
                None => {}
            }
            if user_type == ck::CKU_SO && m.sessions.of_slot(slot.id).iter().any(|s| !s.rw) {
                return rv(ck::CKR_SESSION_READ_ONLY_EXISTS);
            }
            m.login(slot, user_type, wire_pin)
        }
        _ => rv(ck::CKR_USER_TYPE_INVALID),
    }
}

pub fn logout(cx: Cx) -> Result<()> {
    let Cx { m, s } = cx;
    m.logout(&s.slot)
}

/// `C_SessionCancel` (§5.6, 3.0): ends the operations `flags` names.
pub fn session_cancel(cx: Cx, flags: ck::CK_FLAGS) -> Result<()> {
    let Cx { s, .. } = cx;
    let mut st = lock(&s.state);
    for kind in OpKind::ALL {
        if flags & kind.cancel_flag() != 0 {
            st.end(kind);
        }
    }
    if flags & ck::CKF_FIND_OBJECTS != 0 {
        st.find = None;
    }
    if flags & ck::CKF_WRAP != 0 {
        st.pending_wrap = None;
    }
    Ok(())
}
