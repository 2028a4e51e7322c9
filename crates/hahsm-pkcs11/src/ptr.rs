//! Every access to memory the application passed in. Each function states
//! what it assumes of the caller's pointers, which is what PKCS#11 requires
//! of applications: a non-NULL pointer points to valid memory of the length
//! given with it, for the duration of the call.
//!
//! NULL pointers where one is required are `CKR_ARGUMENTS_BAD`, never a crash.
use crate::decode::{self, Deferred, Memory, RawAttr, MAX_VALUE_LEN};
use crate::error::{rv, Error, Result};
use crate::log;
use hahsm_proto::client::AttrResult;
use hahsm_token::{ck, AttrValue, Mechanism, Template};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs the safe half of a `C_*` function: no panic crosses `extern "C"`, and
/// the error becomes a `CK_RV` here and only here.
pub fn guard(name: &str, f: impl FnOnce() -> Result<()>) -> ck::CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ck::CKR_OK,
        Ok(Err(e)) => {
            if log::debug_enabled() {
                log::debug(&format!("{name}: {}", crate::error::describe(&e)));
            }
            e.rv()
        }
        Err(_) => {
            log::error(&format!("{name}: internal error (a panic was caught)"));
            ck::CKR_GENERAL_ERROR
        }
    }
}

/// An output the caller must provide.
///
/// # Safety
/// `p` is NULL or valid for writes of one `T`.
pub unsafe fn out<'a, T>(p: *mut T) -> Result<&'a mut T> {
    // SAFETY: the caller guarantees `p` is NULL or valid and exclusive for the call.
    unsafe { p.as_mut() }.ok_or(Error::Rv(ck::CKR_ARGUMENTS_BAD))
}

/// Input bytes: NULL is allowed only with a zero length.
///
/// # Safety
/// `p` is NULL or valid for reads of `len` bytes.
pub unsafe fn bytes<'a>(p: *const u8, len: ck::CK_ULONG) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return rv(ck::CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL, and the caller guarantees `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

/// The buffer convention of PKCS#11 3.0 §5.2 at the FFI edge. `f` gets the
/// capacity (`None` for a NULL buffer) and returns the output, deciding with
/// [`crate::error::delivers`] whether the operation ends. The length is always
/// written back: the output's, or the one needed with `CKR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `len` is NULL or valid for reads and writes; `buf` is NULL or valid for
/// writes of `*len` bytes.
pub unsafe fn output(
    buf: *mut u8,
    len: *mut ck::CK_ULONG,
    f: impl FnOnce(Option<usize>) -> Result<Vec<u8>>,
) -> Result<()> {
    // SAFETY: as documented above.
    let len = unsafe { out(len) }?;
    let capacity = (!buf.is_null()).then_some(*len as usize);
    match f(capacity) {
        Ok(data) => {
            if let Some(cap) = capacity {
                if data.len() > cap {
                    // `f` broke the convention; never write past the buffer.
                    *len = data.len() as ck::CK_ULONG;
                    return rv(ck::CKR_BUFFER_TOO_SMALL);
                }
                // SAFETY: `buf` holds `cap` >= `data.len()` writable bytes, and `data` is our own allocation, so the two do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
            }
            *len = data.len() as ck::CK_ULONG;
            Ok(())
        }
        Err(Error::BufferTooSmall { needed }) => {
            *len = needed as ck::CK_ULONG;
            rv(ck::CKR_BUFFER_TOO_SMALL)
        }
        Err(e) => Err(e),
    }
}

/// A list output (slot list, mechanism list): NULL asks for the count.
///
/// # Safety
/// `count` is NULL or valid for reads and writes; `list` is NULL or valid for
/// writes of `*count` items.
pub unsafe fn list<T: Copy>(list: *mut T, count: *mut ck::CK_ULONG, items: &[T]) -> Result<()> {
    // SAFETY: as documented above.
    let count = unsafe { out(count) }?;
    if list.is_null() {
        *count = items.len() as ck::CK_ULONG;
        return Ok(());
    }
    if (*count as usize) < items.len() {
        *count = items.len() as ck::CK_ULONG;
        return rv(ck::CKR_BUFFER_TOO_SMALL);
    }
    // SAFETY: `list` holds at least `items.len()` writable items; `items` is ours.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), list, items.len()) };
    *count = items.len() as ck::CK_ULONG;
    Ok(())
}

/// The attributes a template pointer and count name: `CKR_ARGUMENTS_BAD` for
/// a NULL pointer with a count, or a count beyond [`decode::MAX_TEMPLATE_LEN`].
///
/// # Safety
/// `p` is NULL or valid for reads of `n` attributes.
unsafe fn attr_slice<'a>(p: *const ck::CK_ATTRIBUTE, n: ck::CK_ULONG) -> Result<&'a [ck::CK_ATTRIBUTE]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() || n as usize > decode::MAX_TEMPLATE_LEN {
        return rv(ck::CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL and the caller guarantees `n` readable attributes.
    Ok(unsafe { std::slice::from_raw_parts(p, n as usize) })
}

/// The bytes of one attribute's value: `None` for a NULL `pValue` with a
/// length. A value too long for a frame is `CKR_ATTRIBUTE_VALUE_INVALID`.
///
/// # Safety
/// `a.pValue` is NULL or valid for reads of `a.ulValueLen` bytes.
unsafe fn value_bytes<'a>(a: &ck::CK_ATTRIBUTE) -> Result<Option<&'a [u8]>> {
    let len = a.ulValueLen as usize;
    if a.pValue.is_null() {
        Ok((len == 0).then_some(&[][..]))
    } else if len > MAX_VALUE_LEN {
        Err(Error::Token(hahsm_token::TokenError::AttributeValueInvalid(
            a.type_,
        )))
    } else {
        // SAFETY: non-NULL, and the caller guarantees `len` readable bytes.
        Ok(Some(unsafe {
            std::slice::from_raw_parts(a.pValue as *const u8, len)
        }))
    }
}

/// The value of an attribute array (`CKA_UNWRAP_TEMPLATE` …), whose `pValue`
/// points to a `CK_ATTRIBUTE[]` of `ulValueLen` bytes, in the flat layout of
/// `hahsm_token::attr::flatten_array`; `None` for a NULL `pValue` with a length.
/// A length that is not a whole number of attributes, a NULL nested value
/// with a length, or more than [`MAX_VALUE_LEN`] bytes in all is
/// `CKR_ATTRIBUTE_VALUE_INVALID`.
///
/// # Safety
/// `a.pValue` is NULL or valid for reads of `a.ulValueLen` bytes holding
/// attributes whose own `pValue` are NULL or valid for their lengths.
unsafe fn flat_array(a: &ck::CK_ATTRIBUTE) -> Result<Option<Vec<u8>>> {
    let invalid = || Error::Token(hahsm_token::TokenError::AttributeValueInvalid(a.type_));
    let size = std::mem::size_of::<ck::CK_ATTRIBUTE>();
    let len = a.ulValueLen as usize;
    if a.pValue.is_null() {
        return Ok((len == 0).then(Vec::new));
    }
    if len % size != 0 || len / size > decode::MAX_TEMPLATE_LEN {
        return Err(invalid());
    }
    // SAFETY: non-NULL, and the caller guarantees `len` readable bytes of attributes (PKCS#11 3.0 §4.8: pValue of an array attribute is a CK_ATTRIBUTE_PTR); `len` is a whole number of them.
    let nested = unsafe { std::slice::from_raw_parts(a.pValue as *const ck::CK_ATTRIBUTE, len / size) };
    let mut values = Vec::with_capacity(nested.len());
    let mut total = 0usize;
    for n in nested {
        // SAFETY: forwarded contract for the nested attributes.
        let v = unsafe { value_bytes(n) }?.ok_or_else(invalid)?;
        total = total.saturating_add(v.len() + 16);
        if total > MAX_VALUE_LEN {
            return Err(invalid());
        }
        values.push((n.type_, v));
    }
    Ok(Some(hahsm_token::attr::flatten_array(values)))
}

/// The attribute arrays of a template, flattened (`None` for the others), for
/// [`raw_attrs`] to borrow.
///
/// # Safety
/// As for [`flat_array`], for each attribute that is an array.
unsafe fn flat_arrays(attrs: &[ck::CK_ATTRIBUTE]) -> Result<Vec<Option<Option<Vec<u8>>>>> {
    attrs
        .iter()
        .map(|a| {
            if hahsm_token::attr::is_array(a.type_) {
                // SAFETY: forwarded contract.
                unsafe { flat_array(a) }.map(Some)
            } else {
                Ok(None)
            }
        })
        .collect()
}

/// The attributes of a template, as (type, value bytes) pairs; an attribute
/// array's value is its flat form in `flat` (from [`flat_arrays`]).
///
/// # Safety
/// Each attribute's `pValue` is NULL or valid for reads of `ulValueLen` bytes.
unsafe fn raw_attrs<'a>(
    attrs: &[ck::CK_ATTRIBUTE],
    flat: &'a [Option<Option<Vec<u8>>>],
) -> Result<Vec<RawAttr<'a>>> {
    attrs
        .iter()
        .zip(flat)
        .map(|(a, f)| {
            let value = match f {
                Some(v) => v.as_deref(),
                // SAFETY: forwarded contract.
                None => unsafe { value_bytes(a) }?,
            };
            Ok((a.type_, value))
        })
        .collect()
}

/// A creation template: `CKR_ARGUMENTS_BAD` now for a NULL pointer with a
/// count; what is wrong inside the template waits in the [`Deferred`] for
/// its turn in the check order.
///
/// # Safety
/// `p` is NULL or valid for reads of `n` attributes, each `pValue` NULL or
/// valid for reads of `ulValueLen` bytes (for an attribute array, of
/// attributes that are themselves valid so).
pub unsafe fn template(p: *const ck::CK_ATTRIBUTE, n: ck::CK_ULONG) -> Result<Deferred<Template>> {
    // SAFETY: forwarded contract.
    let attrs = unsafe { attr_slice(p, n) }?;
    // SAFETY: forwarded contract.
    let flat = match unsafe { flat_arrays(attrs) } {
        Ok(flat) => flat,
        Err(e) => return Ok(Deferred::new(Err(e), Template::new())),
    };
    // SAFETY: forwarded contract.
    Ok(match unsafe { raw_attrs(attrs, &flat) } {
        Ok(raw) => Deferred::new(decode::template(&raw), decode::hints(&raw)),
        Err(e) => Deferred::new(Err(e), Template::new()),
    })
}

/// A search template (`None`: it names an attribute no object has), deferred
/// like [`template`].
///
/// # Safety
/// As for [`template`].
pub unsafe fn search_template(
    p: *const ck::CK_ATTRIBUTE,
    n: ck::CK_ULONG,
) -> Result<Deferred<Option<Template>>> {
    // SAFETY: forwarded contract.
    let attrs = unsafe { attr_slice(p, n) }?;
    // SAFETY: forwarded contract.
    let raw = unsafe { flat_arrays(attrs) }.and_then(|flat| {
        // SAFETY: forwarded contract.
        let raw = unsafe { raw_attrs(attrs, &flat) }?;
        decode::search_template(&raw)
    });
    Ok(Deferred::new(raw, Template::new()))
}

/// A pointer the function requires: `CKR_ARGUMENTS_BAD` when NULL. For the
/// argument checks that come before the mechanism and the objects (§5.1).
pub fn required<T>(p: *const T) -> Result<()> {
    if p.is_null() {
        return rv(ck::CKR_ARGUMENTS_BAD);
    }
    Ok(())
}

/// Reads buffers that mechanism parameters point to, in the application's memory.
struct AppMemory;

impl Memory for AppMemory {
    fn read(&mut self, addr: usize, len: usize) -> Result<Vec<u8>> {
        // `decode` checked that `addr` is not NULL and `len` is bounded.
        // SAFETY: the application guarantees that a pointer inside a mechanism parameter is valid for reads of the length given beside it.
        Ok(unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec())
    }
}

/// A mechanism; `None` for a NULL pointer (which ends an operation in 3.0).
///
/// # Safety
/// `p` is NULL or valid for reads of a `CK_MECHANISM` whose parameter is NULL
/// or valid for `ulParameterLen` bytes, with any buffers it points to valid.
pub unsafe fn mechanism(p: *const ck::CK_MECHANISM) -> Result<Option<Mechanism>> {
    // SAFETY: the caller guarantees `p` is NULL or valid.
    let Some(m) = (unsafe { p.as_ref() }) else {
        return Ok(None);
    };
    // The mechanism's type before its parameter (§5.1).
    if hahsm_token::mechanism::info(m.mechanism).is_none() {
        return Err(hahsm_token::TokenError::MechanismInvalid(m.mechanism).into());
    }
    let len = m.ulParameterLen as usize;
    if len > MAX_VALUE_LEN || (m.pParameter.is_null() && len > 0) {
        return rv(ck::CKR_MECHANISM_PARAM_INVALID);
    }
    // SAFETY: checked non-NULL when `len` > 0; the caller guarantees `len` bytes.
    let param = unsafe { bytes(m.pParameter as *const u8, len as ck::CK_ULONG) }?;
    decode::mechanism(m.mechanism, param, &mut AppMemory).map(Some)
}

/// A mechanism that must be given.
///
/// # Safety
/// As for [`mechanism`].
pub unsafe fn required_mechanism(p: *const ck::CK_MECHANISM) -> Result<Mechanism> {
    // SAFETY: forwarded contract.
    unsafe { mechanism(p) }?.ok_or(Error::Rv(ck::CKR_ARGUMENTS_BAD))
}

/// The attribute types a `C_GetAttributeValue` template asks for.
///
/// # Safety
/// `p` is NULL or valid for reads of `n` attributes.
pub unsafe fn attribute_types(p: *const ck::CK_ATTRIBUTE, n: ck::CK_ULONG) -> Result<Vec<u64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() || n as usize > decode::MAX_TEMPLATE_LEN {
        return rv(ck::CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL and the caller guarantees `n` readable attributes.
    Ok(unsafe { std::slice::from_raw_parts(p, n as usize) }
        .iter()
        .map(|a| a.type_)
        .collect())
}

/// Fills a `C_GetAttributeValue` template (§5.7): each attribute gets its value
/// or its length, or `CK_UNAVAILABLE_INFORMATION` with the matching code. Every
/// attribute is processed; the code returned is the most significant one.
///
/// # Safety
/// `p` is valid for reads and writes of `results.len()` attributes, each
/// `pValue` NULL or valid for writes of `ulValueLen` bytes.
pub unsafe fn write_attributes(p: *mut ck::CK_ATTRIBUTE, results: &[AttrResult]) -> Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    // SAFETY: the caller guarantees `results.len()` attributes at `p` (the types were read from them), which we alone access during the call.
    let attrs = unsafe { std::slice::from_raw_parts_mut(p, results.len()) };
    let (mut sensitive, mut invalid, mut small) = (false, false, false);
    for (a, r) in attrs.iter_mut().zip(results) {
        match r {
            AttrResult::Sensitive => {
                a.ulValueLen = ck::CK_UNAVAILABLE_INFORMATION;
                sensitive = true;
            }
            AttrResult::Invalid => {
                a.ulValueLen = ck::CK_UNAVAILABLE_INFORMATION;
                invalid = true;
            }
            AttrResult::Value(v) => {
                // SAFETY: forwarded contract for this attribute.
                small |= !unsafe { write_value(a, v) };
            }
        }
    }
    match (sensitive, invalid, small) {
        (true, _, _) => rv(ck::CKR_ATTRIBUTE_SENSITIVE),
        (_, true, _) => rv(ck::CKR_ATTRIBUTE_TYPE_INVALID),
        (_, _, true) => rv(ck::CKR_BUFFER_TOO_SMALL),
        _ => Ok(()),
    }
}

/// Writes one value into an attribute of a `C_GetAttributeValue` template,
/// or its length when `pValue` is NULL; false when the buffer is too small
/// (the length is then `CK_UNAVAILABLE_INFORMATION`). An attribute array's
/// `pValue` is a `CK_ATTRIBUTE[]` (§4.8): its length is counted in
/// attributes, and each gets its type and, by the same rule, its value.
///
/// # Safety
/// `a.pValue` is NULL or valid for writes of `a.ulValueLen` bytes (for an
/// array, of as many attributes, each `pValue` NULL or valid the same way).
unsafe fn write_value(a: &mut ck::CK_ATTRIBUTE, v: &AttrValue) -> bool {
    if let AttrValue::Array(t) = v {
        let need = t.len() * std::mem::size_of::<ck::CK_ATTRIBUTE>();
        if a.pValue.is_null() {
            a.ulValueLen = need as ck::CK_ULONG;
            return true;
        }
        if (a.ulValueLen as usize) < need {
            a.ulValueLen = ck::CK_UNAVAILABLE_INFORMATION;
            return false;
        }
        // SAFETY: `pValue` holds `ulValueLen` >= `t.len()` attributes the application lent us for the call.
        let nested = unsafe { std::slice::from_raw_parts_mut(a.pValue as *mut ck::CK_ATTRIBUTE, t.len()) };
        let mut fits = true;
        for (n, (attr, value)) in nested.iter_mut().zip(t.iter()) {
            n.type_ = *attr as ck::CK_ATTRIBUTE_TYPE;
            // SAFETY: forwarded contract for the nested attribute (arrays do not nest).
            fits &= unsafe { write_value(n, value) };
        }
        a.ulValueLen = need as ck::CK_ULONG;
        return fits;
    }
    let raw = v.to_raw();
    if a.pValue.is_null() {
        a.ulValueLen = raw.len() as ck::CK_ULONG;
    } else if (a.ulValueLen as usize) < raw.len() {
        a.ulValueLen = ck::CK_UNAVAILABLE_INFORMATION;
        return false;
    } else {
        // SAFETY: `pValue` holds `ulValueLen` >= `raw.len()` writable bytes; `raw` is our own allocation.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), a.pValue as *mut u8, raw.len()) };
        a.ulValueLen = raw.len() as ck::CK_ULONG;
    }
    true
}

/// Reads `CK_C_INITIALIZE_ARGS` (§5.4): NULL, or arguments asking for OS
/// locking (or for none). Application-supplied mutexes without
/// `CKF_OS_LOCKING_OK` cannot be honoured: `CKR_CANT_LOCK`.
///
/// # Safety
/// `p` is NULL or valid for reads of a `CK_C_INITIALIZE_ARGS`.
pub unsafe fn init_args(p: *const ck::CK_C_INITIALIZE_ARGS) -> Result<()> {
    // SAFETY: the caller guarantees `p` is NULL or valid.
    let Some(args) = (unsafe { p.as_ref() }) else {
        return Ok(());
    };
    if !args.pReserved.is_null() {
        return rv(ck::CKR_ARGUMENTS_BAD);
    }
    let given = [
        args.CreateMutex.is_some(),
        args.DestroyMutex.is_some(),
        args.LockMutex.is_some(),
        args.UnlockMutex.is_some(),
    ];
    let all = given.iter().all(|g| *g);
    let none = given.iter().all(|g| !*g);
    if !all && !none {
        return rv(ck::CKR_ARGUMENTS_BAD);
    }
    if all && args.flags & ck::CKF_OS_LOCKING_OK == 0 {
        return rv(ck::CKR_CANT_LOCK);
    }
    Ok(())
}
