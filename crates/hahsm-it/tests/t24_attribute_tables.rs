//! PKCS#11 conformance, the attribute tables (issue 19, item 6): for every
//! object class hahsm supports, one row per attribute of PKCS#11 3.0's tables
//! (common and storage §4.2–4.4, data §4.5, certificate §4.6, key §4.7,
//! public key §4.8, private key §4.9, secret key §4.10):
//!
//! - each attribute an application may give at creation is accepted, and
//!   reads back as given (unless the token computes it);
//! - each attribute only the token sets (`CKA_UNIQUE_ID`, `CKA_LOCAL`,
//!   `CKA_KEY_GEN_MECHANISM`, `CKA_ALWAYS_SENSITIVE`,
//!   `CKA_NEVER_EXTRACTABLE`) is refused at creation with
//!   `CKR_ATTRIBUTE_READ_ONLY`;
//! - each sensitive attribute of a key is refused on read with
//!   `CKR_ATTRIBUTE_SENSITIVE`.
//!
//! Objects are session objects made through the raw function list with raw
//! attribute bytes, so any attribute type can be passed; each row makes its
//! own object from its class's base template plus the row's attribute.
mod t20_pkcs11_support;

use cryptoki_sys::*;
use std::ptr::null_mut;
use t20_pkcs11_support::{run_checks, Env};

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// The P-256 base point, a valid public point.
const G: &str = concat!(
    "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
);
/// The SubjectPublicKeyInfo prefix of a P-256 key (before the 65-byte point).
const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
const AES_VALUE: [u8; 16] = [0; 16];
/// `CKA_CHECK_VALUE` of the zero AES-128 key: E(0, 0) begins 66 e9 4b.
const AES_KCV: [u8; 3] = [0x66, 0xe9, 0x4b];

fn b(v: bool) -> Vec<u8> {
    vec![u8::from(v)]
}

fn ul(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn date(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn g_point_der() -> Vec<u8> {
    let mut v = vec![0x04, 65];
    v.extend(hex::decode(G).unwrap());
    v
}

/// The classes of the tables, each with a base template that makes a valid
/// session object.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    Data,
    Certificate,
    PublicKey,
    PrivateKey,
    SecretKey,
}

fn base(class: Class) -> Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
    let mut t = vec![(CKA_TOKEN, b(false))];
    match class {
        Class::Data => {
            t.push((CKA_CLASS, ul(CKO_DATA)));
        }
        Class::Certificate => {
            t.push((CKA_CLASS, ul(CKO_CERTIFICATE)));
            t.push((CKA_CERTIFICATE_TYPE, ul(CKC_X_509)));
            t.push((CKA_SUBJECT, b"0\x0e1\x0c0\n\x06\x03U\x04\x03\x0c\x03t24".to_vec()));
            t.push((CKA_VALUE, b"not parsed by the token".to_vec()));
        }
        Class::PublicKey => {
            t.push((CKA_CLASS, ul(CKO_PUBLIC_KEY)));
            t.push((CKA_KEY_TYPE, ul(CKK_EC)));
            t.push((CKA_EC_PARAMS, P256.to_vec()));
            t.push((CKA_EC_POINT, g_point_der()));
        }
        Class::PrivateKey => {
            t.push((CKA_CLASS, ul(CKO_PRIVATE_KEY)));
            t.push((CKA_KEY_TYPE, ul(CKK_EC)));
            t.push((CKA_EC_PARAMS, P256.to_vec()));
            t.push((CKA_VALUE, vec![0x11; 32]));
        }
        Class::SecretKey => {
            t.push((CKA_CLASS, ul(CKO_SECRET_KEY)));
            t.push((CKA_KEY_TYPE, ul(CKK_AES)));
            t.push((CKA_VALUE, AES_VALUE.to_vec()));
        }
    }
    t
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Accepted at creation and read back as given.
    Accepted,
    /// Accepted at creation; the token computes or reshapes the stored
    /// value (or it is an attribute array), so it is not compared.
    AcceptedNotCompared,
    /// `CKR_ATTRIBUTE_READ_ONLY` at creation.
    ReadOnly,
}

struct Row {
    class: Class,
    attr: CK_ATTRIBUTE_TYPE,
    name: &'static str,
    value: Vec<u8>,
    want: Want,
}

fn row(class: Class, attr: CK_ATTRIBUTE_TYPE, name: &'static str, value: Vec<u8>, want: Want) -> Row {
    Row {
        class,
        attr,
        name,
        value,
        want,
    }
}

/// An attribute array holds `CK_ATTRIBUTE`s: such rows are built in
/// [`create`] from this marker value.
const ARRAY: &[u8] = b"<array: CKA_SENSITIVE true>";

/// The tables. Storage attributes are listed for every class (each class is
/// a storage object); key attributes for each key class.
fn rows() -> Vec<Row> {
    use Class::*;
    use Want::*;
    let mut v = Vec::new();
    for class in [Data, Certificate, PublicKey, PrivateKey, SecretKey] {
        // §4.4 storage objects (CKA_TOKEN is in every base template).
        v.push(row(class, CKA_PRIVATE, "CKA_PRIVATE", b(class != Data), Accepted));
        v.push(row(class, CKA_MODIFIABLE, "CKA_MODIFIABLE", b(true), Accepted));
        v.push(row(class, CKA_LABEL, "CKA_LABEL", b"t24".to_vec(), Accepted));
        v.push(row(class, CKA_COPYABLE, "CKA_COPYABLE", b(false), Accepted));
        v.push(row(class, CKA_DESTROYABLE, "CKA_DESTROYABLE", b(true), Accepted));
        v.push(row(
            class,
            CKA_UNIQUE_ID,
            "CKA_UNIQUE_ID",
            b"chosen".to_vec(),
            ReadOnly,
        ));
    }
    // §4.5 data objects.
    v.push(row(
        Data,
        CKA_APPLICATION,
        "CKA_APPLICATION",
        b"t24-app".to_vec(),
        Accepted,
    ));
    v.push(row(
        Data,
        CKA_OBJECT_ID,
        "CKA_OBJECT_ID",
        vec![0x06, 0x01, 0x2a],
        Accepted,
    ));
    v.push(row(Data, CKA_VALUE, "CKA_VALUE", b"data".to_vec(), Accepted));
    // §4.6 certificates, X.509 public key certificates (§4.6.3).
    for (attr, name, value) in [
        (CKA_TRUSTED, "CKA_TRUSTED", b(false)),
        (CKA_CERTIFICATE_CATEGORY, "CKA_CERTIFICATE_CATEGORY", ul(2)),
        (CKA_CHECK_VALUE, "CKA_CHECK_VALUE", vec![1, 2, 3]),
        (CKA_START_DATE, "CKA_START_DATE", date("20260101")),
        (CKA_END_DATE, "CKA_END_DATE", date("20361231")),
        (CKA_PUBLIC_KEY_INFO, "CKA_PUBLIC_KEY_INFO", vec![0x30, 0x00]),
        (CKA_ID, "CKA_ID", vec![0x24]),
        (CKA_ISSUER, "CKA_ISSUER", b"issuer".to_vec()),
        (CKA_SERIAL_NUMBER, "CKA_SERIAL_NUMBER", vec![0x02, 0x01, 0x05]),
        (CKA_URL, "CKA_URL", b"https://example.test/c.der".to_vec()),
        (
            CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
            "CKA_HASH_OF_SUBJECT_PUBLIC_KEY",
            vec![0xaa; 20],
        ),
        (
            CKA_HASH_OF_ISSUER_PUBLIC_KEY,
            "CKA_HASH_OF_ISSUER_PUBLIC_KEY",
            vec![0xbb; 20],
        ),
        (
            CKA_JAVA_MIDP_SECURITY_DOMAIN,
            "CKA_JAVA_MIDP_SECURITY_DOMAIN",
            ul(0),
        ),
        (CKA_NAME_HASH_ALGORITHM, "CKA_NAME_HASH_ALGORITHM", ul(CKM_SHA256)),
    ] {
        v.push(row(Certificate, attr, name, value, Accepted));
    }
    // CKA_TRUSTED true is the SO's to give (§4.6.3, §4.8, §4.10 footnotes);
    // these rows run in a user session.
    for class in [Certificate, PublicKey, SecretKey] {
        v.push(row(
            class,
            CKA_TRUSTED,
            "CKA_TRUSTED true by the user",
            b(true),
            ReadOnly,
        ));
    }
    // §4.7 keys.
    for class in [PublicKey, PrivateKey, SecretKey] {
        v.push(row(class, CKA_ID, "CKA_ID", vec![0x24, 0x07], Accepted));
        v.push(row(
            class,
            CKA_START_DATE,
            "CKA_START_DATE",
            date("20260101"),
            Accepted,
        ));
        v.push(row(
            class,
            CKA_END_DATE,
            "CKA_END_DATE",
            date("20361231"),
            Accepted,
        ));
        v.push(row(class, CKA_DERIVE, "CKA_DERIVE", b(true), Accepted));
        v.push(row(
            class,
            CKA_ALLOWED_MECHANISMS,
            "CKA_ALLOWED_MECHANISMS",
            [CKM_ECDSA_SHA256, CKM_AES_CBC_PAD]
                .iter()
                .flat_map(|m| m.to_ne_bytes())
                .collect(),
            Accepted,
        ));
        v.push(row(class, CKA_LOCAL, "CKA_LOCAL", b(true), ReadOnly));
        v.push(row(
            class,
            CKA_KEY_GEN_MECHANISM,
            "CKA_KEY_GEN_MECHANISM",
            ul(CKM_EC_KEY_PAIR_GEN),
            ReadOnly,
        ));
    }
    // §4.8 public keys.
    for (attr, name, value, want) in [
        (CKA_SUBJECT, "CKA_SUBJECT", b"subject".to_vec(), Accepted),
        (CKA_ENCRYPT, "CKA_ENCRYPT", b(true), Accepted),
        (CKA_VERIFY, "CKA_VERIFY", b(true), Accepted),
        (CKA_VERIFY_RECOVER, "CKA_VERIFY_RECOVER", b(false), Accepted),
        (CKA_WRAP, "CKA_WRAP", b(true), Accepted),
        (CKA_TRUSTED, "CKA_TRUSTED", b(false), Accepted),
        (
            CKA_WRAP_TEMPLATE,
            "CKA_WRAP_TEMPLATE",
            ARRAY.to_vec(),
            AcceptedNotCompared,
        ),
        (
            CKA_PUBLIC_KEY_INFO,
            "CKA_PUBLIC_KEY_INFO",
            hex::decode(format!("{P256_SPKI_PREFIX}{G}")).unwrap(),
            Accepted,
        ),
    ] {
        v.push(row(PublicKey, attr, name, value, want));
    }
    // §4.9 private keys.
    for (attr, name, value, want) in [
        (CKA_SUBJECT, "CKA_SUBJECT", b"subject".to_vec(), Accepted),
        (CKA_SENSITIVE, "CKA_SENSITIVE", b(true), Accepted),
        (CKA_DECRYPT, "CKA_DECRYPT", b(true), Accepted),
        (CKA_SIGN, "CKA_SIGN", b(true), Accepted),
        (CKA_SIGN_RECOVER, "CKA_SIGN_RECOVER", b(false), Accepted),
        (CKA_UNWRAP, "CKA_UNWRAP", b(true), Accepted),
        (CKA_EXTRACTABLE, "CKA_EXTRACTABLE", b(true), Accepted),
        (CKA_WRAP_WITH_TRUSTED, "CKA_WRAP_WITH_TRUSTED", b(true), Accepted),
        (
            CKA_UNWRAP_TEMPLATE,
            "CKA_UNWRAP_TEMPLATE",
            ARRAY.to_vec(),
            AcceptedNotCompared,
        ),
        (
            CKA_DERIVE_TEMPLATE,
            "CKA_DERIVE_TEMPLATE",
            ARRAY.to_vec(),
            AcceptedNotCompared,
        ),
        (
            CKA_ALWAYS_AUTHENTICATE,
            "CKA_ALWAYS_AUTHENTICATE",
            b(true),
            Accepted,
        ),
        // The token puts the key's own SubjectPublicKeyInfo there.
        (
            CKA_PUBLIC_KEY_INFO,
            "CKA_PUBLIC_KEY_INFO",
            vec![0x30, 0x00],
            AcceptedNotCompared,
        ),
        (CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", b(true), ReadOnly),
        (CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", b(true), ReadOnly),
    ] {
        v.push(row(PrivateKey, attr, name, value, want));
    }
    // §4.10 secret keys.
    for (attr, name, value, want) in [
        (CKA_SENSITIVE, "CKA_SENSITIVE", b(false), Accepted),
        (CKA_ENCRYPT, "CKA_ENCRYPT", b(true), Accepted),
        (CKA_DECRYPT, "CKA_DECRYPT", b(false), Accepted),
        (CKA_SIGN, "CKA_SIGN", b(true), Accepted),
        (CKA_VERIFY, "CKA_VERIFY", b(true), Accepted),
        (CKA_WRAP, "CKA_WRAP", b(false), Accepted),
        (CKA_UNWRAP, "CKA_UNWRAP", b(false), Accepted),
        (CKA_EXTRACTABLE, "CKA_EXTRACTABLE", b(true), Accepted),
        (CKA_CHECK_VALUE, "CKA_CHECK_VALUE", AES_KCV.to_vec(), Accepted),
        (CKA_WRAP_WITH_TRUSTED, "CKA_WRAP_WITH_TRUSTED", b(true), Accepted),
        (CKA_TRUSTED, "CKA_TRUSTED", b(false), Accepted),
        (
            CKA_WRAP_TEMPLATE,
            "CKA_WRAP_TEMPLATE",
            ARRAY.to_vec(),
            AcceptedNotCompared,
        ),
        (
            CKA_UNWRAP_TEMPLATE,
            "CKA_UNWRAP_TEMPLATE",
            ARRAY.to_vec(),
            AcceptedNotCompared,
        ),
        (
            CKA_DERIVE_TEMPLATE,
            "CKA_DERIVE_TEMPLATE",
            ARRAY.to_vec(),
            AcceptedNotCompared,
        ),
        (CKA_VALUE_LEN, "CKA_VALUE_LEN", ul(16), Accepted),
        (CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", b(true), ReadOnly),
        (CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", b(true), ReadOnly),
    ] {
        v.push(row(SecretKey, attr, name, value, want));
    }
    v
}

/// `C_CreateObject` from raw attributes (an [`ARRAY`] value becomes an
/// attribute array holding `CKA_SENSITIVE` true): the handle or the code.
fn create(
    env: &Env,
    h: CK_SESSION_HANDLE,
    attrs: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut yes = [1u8];
    let mut inner = [CK_ATTRIBUTE {
        type_: CKA_SENSITIVE,
        pValue: yes.as_mut_ptr() as *mut std::ffi::c_void,
        ulValueLen: 1,
    }];
    let mut t: Vec<CK_ATTRIBUTE> = attrs
        .iter()
        .map(|(ty, v)| {
            if v == ARRAY {
                CK_ATTRIBUTE {
                    type_: *ty,
                    pValue: inner.as_mut_ptr() as *mut std::ffi::c_void,
                    ulValueLen: std::mem::size_of_val(&inner) as CK_ULONG,
                }
            } else {
                CK_ATTRIBUTE {
                    type_: *ty,
                    pValue: v.as_ptr() as *mut std::ffi::c_void,
                    ulValueLen: v.len() as CK_ULONG,
                }
            }
        })
        .collect();
    let mut o = 0;
    // Every pValue points to a live buffer of ulValueLen bytes (the array's to
    // `inner`), which the module only reads.
    // SAFETY: the template's buffers are valid for their lengths (above).
    match unsafe { env.raw.C_CreateObject.unwrap()(h, t.as_mut_ptr(), t.len() as CK_ULONG, &mut o) } {
        CKR_OK => Ok(o),
        rv => Err(rv),
    }
}

/// `C_GetAttributeValue` of one attribute: its bytes or the code.
fn get(
    env: &Env,
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    ty: CK_ATTRIBUTE_TYPE,
) -> Result<Vec<u8>, CK_RV> {
    let f = env.raw.C_GetAttributeValue.unwrap();
    let mut a = CK_ATTRIBUTE {
        type_: ty,
        pValue: null_mut(),
        ulValueLen: 0,
    };
    // SAFETY: one attribute with a NULL value asks for its length.
    let r = unsafe { f(h, o, &mut a, 1) };
    if r != CKR_OK {
        return Err(r);
    }
    let mut buf = vec![0u8; a.ulValueLen as usize];
    a.pValue = buf.as_mut_ptr() as *mut std::ffi::c_void;
    // SAFETY: `buf` holds ulValueLen writable bytes.
    let r = unsafe { f(h, o, &mut a, 1) };
    if r != CKR_OK {
        return Err(r);
    }
    Ok(buf)
}

fn destroy(env: &Env, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) {
    // SAFETY: plain handles.
    unsafe { env.raw.C_DestroyObject.unwrap()(h, o) };
}

/// Every row of [`rows`]: the names of those that failed, with what happened.
fn creation_rows(env: &Env) {
    let s = env.user();
    let h = s.handle();
    let mut failed = Vec::new();
    let all = rows();
    for r in &all {
        let mut t = base(r.class);
        t.retain(|(a, _)| *a != r.attr);
        t.push((r.attr, r.value.clone()));
        let label = format!("{:?} {} ({:?})", r.class, r.name, r.want);
        match (r.want, create(env, h, &t)) {
            (Want::ReadOnly, Err(CKR_ATTRIBUTE_READ_ONLY)) => {}
            (Want::ReadOnly, other) => {
                failed.push(format!("{label}: {other:x?}, want CKR_ATTRIBUTE_READ_ONLY"))
            }
            (Want::Accepted | Want::AcceptedNotCompared, Err(rv)) => {
                failed.push(format!("{label}: refused with {rv:#x}"))
            }
            (want, Ok(o)) => {
                if want == Want::Accepted {
                    match get(env, h, o, r.attr) {
                        Ok(v) if v == r.value => {}
                        other => failed.push(format!("{label}: reads back {other:x?}, given {:x?}", r.value)),
                    }
                }
                destroy(env, h, o);
            }
        }
    }
    eprintln!("{} of {} attribute-table rows failed", failed.len(), all.len());
    assert!(failed.is_empty(), "{failed:#?}");
}

/// The sensitive attributes of each key class: `CKR_ATTRIBUTE_SENSITIVE` on read.
fn sensitive_rows(env: &Env) {
    let s = env.user();
    let h = s.handle();
    let mut failed = Vec::new();
    let rsa = s
        .generate_key_pair(
            &cryptoki::mechanism::Mechanism::RsaPkcsKeyPairGen,
            &[
                cryptoki::object::Attribute::Token(false),
                cryptoki::object::Attribute::ModulusBits(2048.into()),
            ],
            &[cryptoki::object::Attribute::Token(false)],
        )
        .expect("RSA pair")
        .1
        .handle();
    let ec = create(env, h, &base(Class::PrivateKey)).expect("EC private key");
    let mut ed = base(Class::PrivateKey);
    ed.retain(|(a, _)| !matches!(*a, CKA_KEY_TYPE | CKA_EC_PARAMS));
    ed.push((CKA_KEY_TYPE, ul(CKK_EC_EDWARDS)));
    let ed = create(env, h, &ed).expect("Ed25519 private key");
    let aes = create(env, h, &base(Class::SecretKey)).expect("sensitive AES key");
    let mut t = base(Class::SecretKey);
    t.push((CKA_SENSITIVE, b(false)));
    t.push((CKA_EXTRACTABLE, b(false)));
    let unextractable = create(env, h, &t).expect("unextractable AES key");
    let mut cases = vec![];
    for (attr, name) in [
        (CKA_PRIVATE_EXPONENT, "CKA_PRIVATE_EXPONENT"),
        (CKA_PRIME_1, "CKA_PRIME_1"),
        (CKA_PRIME_2, "CKA_PRIME_2"),
        (CKA_EXPONENT_1, "CKA_EXPONENT_1"),
        (CKA_EXPONENT_2, "CKA_EXPONENT_2"),
        (CKA_COEFFICIENT, "CKA_COEFFICIENT"),
    ] {
        cases.push(("RSA private key", rsa, attr, name));
    }
    cases.push(("EC private key", ec, CKA_VALUE, "CKA_VALUE"));
    cases.push(("Ed25519 private key", ed, CKA_VALUE, "CKA_VALUE"));
    cases.push(("sensitive AES key", aes, CKA_VALUE, "CKA_VALUE"));
    cases.push(("unextractable AES key", unextractable, CKA_VALUE, "CKA_VALUE"));
    for (what, o, attr, name) in &cases {
        match get(env, h, *o, *attr) {
            Err(CKR_ATTRIBUTE_SENSITIVE) => {}
            other => failed.push(format!("{what} {name}: {other:x?}, want CKR_ATTRIBUTE_SENSITIVE")),
        }
    }
    eprintln!("{} of {} sensitive rows failed", failed.len(), cases.len());
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn each_attribute_of_the_standard_tables_is_accepted_refused_or_hidden_as_it_says() {
    let env = Env::new();
    run_checks(
        &env,
        &[
            ("creation_rows", creation_rows),
            ("sensitive_rows", sensitive_rows),
        ],
    );
}
