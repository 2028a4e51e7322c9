//! General information, slots and tokens (PKCS#11 3.0 §5.4, §5.5): the
//! library, slot and token descriptions, mechanisms, `C_InitToken`,
//! `C_InitPIN` and `C_SetPIN`.
use super::common::*;
use crate::error::{rv, Error, Result};
use crate::module::Module;
use crate::slots::SlotKind;
use crate::sync::lock;
use hahsm_client::connection::new_op_id;
use hahsm_proto::client::{Request, Response};
use hahsm_proto::Secret;
use hahsm_token::ck;
use hahsm_token::mechanism::{self};

pub fn info() -> ck::CK_INFO {
    ck::CK_INFO {
        cryptokiVersion: ck::CK_VERSION { major: 3, minor: 2 },
        manufacturerID: padded(MANUFACTURER),
        flags: 0,
        libraryDescription: padded(library_description()),
        libraryVersion: version(),
    }
}

pub fn slot_list(m: &Module, token_present: bool) -> Vec<ck::CK_SLOT_ID> {
    m.refresh_slots();
    m.slots()
        .iter()
        .filter(|s| !token_present || lock(&s.info).activated)
        .map(|s| s.id)
        .collect()
}

pub fn slot_info(cx: SlotCx) -> ck::CK_SLOT_INFO {
    let slot = cx.slot;
    let present = lock(&slot.info).activated;
    ck::CK_SLOT_INFO {
        slotDescription: padded(&match &slot.kind {
            SlotKind::Ha(g) => format!("hahsm HA group {} partition {}", g.label, slot.partition),
            SlotKind::Member => {
                format!("hahsm {} partition {}", slot.server.entry.name, slot.partition)
            }
        }),
        manufacturerID: padded(MANUFACTURER),
        flags: ck::CKF_HW_SLOT | ck::CKF_REMOVABLE_DEVICE | if present { ck::CKF_TOKEN_PRESENT } else { 0 },
        hardwareVersion: version(),
        firmwareVersion: version(),
    }
}

pub fn token_info(cx: SlotCx) -> Result<ck::CK_TOKEN_INFO> {
    let SlotCx { m, slot } = cx;
    let id = slot.id;
    let info = m.refresh_info(&slot);
    if !info.activated {
        return rv(ck::CKR_TOKEN_NOT_PRESENT);
    }
    let sessions = m.sessions.of_slot(id);
    let rw = sessions.iter().filter(|s| s.rw).count() as u64;
    let mut flags =
        ck::CKF_RNG | ck::CKF_LOGIN_REQUIRED | ck::CKF_USER_PIN_INITIALIZED | ck::CKF_TOKEN_INITIALIZED;
    if info.pin_locked {
        flags |= ck::CKF_USER_PIN_LOCKED;
    }
    // COUNT_LOW, FINAL_TRY and LOCKED of both PINs, as the member counts the
    // group's failed logins.
    flags |= info.pin_flags & PIN_FLAGS;
    Ok(ck::CK_TOKEN_INFO {
        label: padded(slot.label()),
        manufacturerID: padded(MANUFACTURER),
        model: padded(if slot.is_ha() {
            "hahsm HA group"
        } else {
            "hahsmd partition"
        }),
        serialNumber: padded(&format!("{:016x}", slot.serial)),
        flags,
        ulMaxSessionCount: ck::CK_EFFECTIVELY_INFINITE,
        ulSessionCount: sessions.len() as u64,
        ulMaxRwSessionCount: ck::CK_EFFECTIVELY_INFINITE,
        ulRwSessionCount: rw,
        ulMaxPinLen: MAX_PIN_LEN,
        ulMinPinLen: MIN_PIN_LEN,
        ulTotalPublicMemory: ck::CK_UNAVAILABLE_INFORMATION,
        ulFreePublicMemory: ck::CK_UNAVAILABLE_INFORMATION,
        ulTotalPrivateMemory: ck::CK_UNAVAILABLE_INFORMATION,
        ulFreePrivateMemory: ck::CK_UNAVAILABLE_INFORMATION,
        hardwareVersion: version(),
        firmwareVersion: version(),
        utcTime: [b' '; 16],
    })
}

/// The token flags a member reports for the PINs.
const PIN_FLAGS: u64 = ck::CKF_USER_PIN_COUNT_LOW
    | ck::CKF_USER_PIN_FINAL_TRY
    | ck::CKF_USER_PIN_LOCKED
    | ck::CKF_SO_PIN_COUNT_LOW
    | ck::CKF_SO_PIN_FINAL_TRY
    | ck::CKF_SO_PIN_LOCKED;

/// What the slot's partition offers: the legacy mechanisms only under its
/// policy. `C_GetMechanismList` asks a member now; `C_GetMechanismInfo`,
/// which applications call once per mechanism, uses that last answer.
pub fn mechanism_list(cx: SlotCx) -> Vec<ck::CK_MECHANISM_TYPE> {
    let info = cx.m.refresh_info(&cx.slot);
    mechanism::offered(info.legacy_mechanisms, info.fips)
        .iter()
        .map(|(m, _)| *m)
        .collect()
}

pub fn mechanism_info(cx: SlotCx, mech: ck::CK_MECHANISM_TYPE) -> Result<ck::CK_MECHANISM_INFO> {
    let (legacy, fips) = {
        let info = lock(&cx.slot.info);
        (info.legacy_mechanisms, info.fips)
    };
    let (_, i) = mechanism::offered(legacy, fips)
        .into_iter()
        .find(|(m, _)| *m == mech)
        .ok_or(Error::Rv(ck::CKR_MECHANISM_INVALID))?;
    Ok(ck::CK_MECHANISM_INFO {
        ulMinKeySize: i.min_key,
        ulMaxKeySize: i.max_key,
        flags: i.flags,
    })
}

/// `C_InitToken`: partitions are created and cleared by the appliance's
/// administrator (`hahsm appliance partition …`), who holds the owner secret;
/// an application cannot re-initialize one.
pub fn init_token(_cx: SlotCx) -> Result<()> {
    crate::log::warn("C_InitToken: partitions are initialized by the appliance administrator");
    rv(ck::CKR_FUNCTION_NOT_SUPPORTED)
}

pub fn init_pin(cx: Cx, pin: &[u8]) -> Result<()> {
    let Cx { m, s } = cx;
    if s.slot.login() != Some(ck::CKU_SO) {
        return rv(ck::CKR_USER_NOT_LOGGED_IN);
    }
    expect(
        m.call(
            &s.slot,
            Request::InitPin {
                partition: s.slot.partition.clone(),
                new_pin: Secret::new(pin.to_vec()),
                op_id: new_op_id(),
            },
        ),
        Response::Done,
    )
}

pub fn set_pin(cx: Cx, old: &[u8], new: &[u8]) -> Result<()> {
    let Cx { m, s } = cx;
    if !s.rw {
        return rv(ck::CKR_SESSION_READ_ONLY);
    }
    expect(
        m.call(
            &s.slot,
            Request::SetPin {
                partition: s.slot.partition.clone(),
                old_pin: Secret::new(old.to_vec()),
                new_pin: Secret::new(new.to_vec()),
                op_id: new_op_id(),
            },
        ),
        Response::Done,
    )?;
    m.pin_changed(&s.slot, Secret::new(new.to_vec()));
    Ok(())
}
