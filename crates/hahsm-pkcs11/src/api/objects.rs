//! Object management (§5.7): create, copy, destroy, sizes, attributes, find.
use super::common::*;
use crate::decode::Deferred;
use crate::error::{rv, Error, Result};
use crate::session::{Find, ReadWithFind};
use crate::sync::lock;
use hahsm_client::connection::new_op_id;
use hahsm_proto::client::{AttrResult, Request, Response};
use hahsm_token::{ck, AttrType, Ouid, Template};
use std::time::Instant;

pub fn create_object(cx: Cx, template: Deferred<Template>) -> Result<ck::CK_OBJECT_HANDLE> {
    let Cx { m, s } = cx;
    let token = template.flag(ck::CKA_TOKEN, false);
    check_writable(&s, token)?;
    check_login_for(&s, &template, ck::CKO_DATA)?;
    let template = template.get()?;
    let r = m.call(
        &s.slot,
        Request::CreateObject {
            partition: s.slot.partition.clone(),
            template,
            op_id: new_op_id(),
        },
    );
    object_created(&m, &s, r, token)
}

pub fn copy_object(
    cx: Cx,
    object: ck::CK_OBJECT_HANDLE,
    template: Deferred<Template>,
) -> Result<ck::CK_OBJECT_HANDLE> {
    let Cx { m, s } = cx;
    let (ouid, known) = m.handles.object(s.slot.id, object)?;
    let token = match template.bool(ck::CKA_TOKEN) {
        Some(t) => t,
        None => is_token_object(&m, &s, ouid, known)?,
    };
    check_writable(&s, token)?;
    let template = template.get()?;
    let r = m.call(
        &s.slot,
        Request::CopyObject {
            partition: s.slot.partition.clone(),
            object: ouid,
            template,
            op_id: new_op_id(),
        },
    );
    object_created(&m, &s, r, token)
}

pub fn destroy_object(cx: Cx, object: ck::CK_OBJECT_HANDLE) -> Result<()> {
    let Cx { m, s } = cx;
    let (ouid, known) = m.handles.object(s.slot.id, object)?;
    check_writable(&s, is_token_object(&m, &s, ouid, known)?)?;
    expect(
        m.call(
            &s.slot,
            Request::DestroyObject {
                partition: s.slot.partition.clone(),
                object: ouid,
                op_id: new_op_id(),
            },
        ),
        Response::Done,
    )?;
    m.handles.forget(object);
    Ok(())
}

/// `C_GetObjectSize`: the size of the object's readable attributes, an
/// approximation the specification allows (§5.7).
pub fn object_size(cx: Cx, object: ck::CK_OBJECT_HANDLE) -> Result<u64> {
    let Cx { m, s } = cx;
    let (ouid, _) = m.handles.object(s.slot.id, object)?;
    let attrs = attributes(&m, &s, ouid, SIZED.to_vec())?;
    Ok(attrs
        .iter()
        .map(|(_, r)| match r {
            AttrResult::Value(v) => v.to_raw().len() as u64 + 16,
            _ => 0,
        })
        .sum())
}

pub fn get_attributes(cx: Cx, object: ck::CK_OBJECT_HANDLE, types: Vec<AttrType>) -> Result<Vec<AttrResult>> {
    let Cx { m, s } = cx;
    let (ouid, _) = m.handles.object(s.slot.id, object)?;
    let n = types.len();
    let got = match found_attributes(&m, &s, ouid, &types) {
        Some(got) => got,
        None => attributes(&m, &s, ouid, types.clone())?,
    };
    // Answer in the caller's order, whatever the member's.
    let out: Vec<AttrResult> = types
        .iter()
        .map(|t| {
            got.iter()
                .find(|(a, _)| a == t)
                .map(|(_, r)| r.clone())
                .unwrap_or(AttrResult::Invalid)
        })
        .collect();
    debug_assert_eq!(out.len(), n);
    Ok(out)
}

pub fn set_attributes(cx: Cx, object: ck::CK_OBJECT_HANDLE, template: Deferred<Template>) -> Result<()> {
    let Cx { m, s } = cx;
    let (ouid, known) = m.handles.object(s.slot.id, object)?;
    check_writable(&s, is_token_object(&m, &s, ouid, known)?)?;
    let template = template.get()?;
    let r = m.call(
        &s.slot,
        Request::SetAttributes {
            partition: s.slot.partition.clone(),
            object: ouid,
            template,
            op_id: new_op_id(),
        },
    );
    // Usage flags may have changed: read them again at the next use.
    m.handles.set_key_info(object, None);
    expect(r, Response::Done)
}

/// `C_FindObjectsInit`; `None` is a template naming an attribute hahsm does
/// not know, which matches nothing. The member sends the attributes of the
/// first objects found with them, for the reads that follow a look-up.
pub fn find_init(cx: Cx, template: Deferred<Option<Template>>) -> Result<()> {
    let Cx { m, s } = cx;
    if lock(&s.state).find.is_some() {
        return rv(ck::CKR_OPERATION_ACTIVE);
    }
    // Counted before the request: a change that overlaps it makes what it
    // brings stale.
    let changes = m.changes();
    let (found, read) = match template.get()? {
        None => (Vec::new(), None),
        Some(template) => match m.call(
            &s.slot,
            Request::FindObjects {
                partition: s.slot.partition.clone(),
                template,
                limit: FIND_LIMIT,
                read: READ_WITH_FIND,
            },
        )? {
            Response::Objects(o) => (o, None),
            Response::Found { objects, attributes } => {
                let read = ReadWithFind {
                    at: Instant::now(),
                    changes,
                    attributes: objects.iter().copied().zip(attributes).collect(),
                };
                (objects, Some(read))
            }
            _ => return Err(unexpected()),
        },
    };
    let mut st = lock(&s.state);
    st.find = Some(Find { found, next: 0 });
    st.read_with_find = read;
    Ok(())
}

pub fn find(cx: Cx, max: usize) -> Result<Vec<ck::CK_OBJECT_HANDLE>> {
    let Cx { m, s } = cx;
    let page: Vec<Ouid> = {
        let mut st = lock(&s.state);
        let f = st
            .find
            .as_mut()
            .ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
        let end = f.found.len().min(f.next.saturating_add(max));
        let page = f.found[f.next..end].to_vec();
        f.next = end;
        page
    };
    Ok(page
        .into_iter()
        .map(|o| m.handles.handle_for(s.slot.id, o))
        .collect())
}

pub fn find_final(cx: Cx) -> Result<()> {
    let Cx { s, .. } = cx;
    let found = lock(&s.state).find.take();
    found
        .map(|_| ())
        .ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))
}
