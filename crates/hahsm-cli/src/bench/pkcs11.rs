//! The workloads through a PKCS#11 module (hahsm's, or SoftHSM2's for the
//! baseline), loaded with `cryptoki` as any application loads it: one module
//! per process, a logged-in session that lives as long as the bench, and one
//! session per application thread.
use super::args::{Curve, Mode, SlotChoice};
use super::driver::{Op, Workload};
use anyhow::{anyhow, bail, Context, Result};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, KeyType, MlDsaParameterSetType, MlKemParameterSetType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The token model hahsm's module gives its HA slots.
const HA_MODEL: &str = "hahsm HA group";

pub const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// A loaded and initialised module, with the slots logged in so far.
pub struct Module {
    pub path: PathBuf,
    p11: Pkcs11,
    /// One open, logged-in session per slot keeps the login for the whole run
    /// (closing a token's last session logs out).
    logins: Mutex<HashMap<u64, Session>>,
}

impl Module {
    pub fn load(path: &Path) -> Result<Module> {
        let p11 = Pkcs11::new(path).with_context(|| format!("loading {}", path.display()))?;
        p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .with_context(|| format!("C_Initialize of {} (see the module's log)", path.display()))?;
        Ok(Module {
            path: path.to_path_buf(),
            p11,
            logins: Mutex::new(HashMap::new()),
        })
    }

    /// The slot `choice` names (or, without a choice, `partition`'s, or the first).
    pub fn slot(&self, choice: Option<&SlotChoice>, partition: Option<&str>) -> Result<Slot> {
        let slots = self.p11.get_slots_with_token()?;
        let label = |s: &Slot| {
            self.p11
                .get_token_info(*s)
                .map(|t| t.label().trim().to_string())
                .unwrap_or_default()
        };
        let found = match (choice, partition) {
            (Some(SlotChoice::Ha), _) => slots.iter().find(|s| {
                self.p11
                    .get_token_info(**s)
                    .is_ok_and(|t| t.model().trim() == HA_MODEL)
            }),
            (Some(SlotChoice::Id(id)), _) => slots.iter().find(|s| s.id() == *id),
            (Some(SlotChoice::Name(name)), _) => {
                // hahsm's physical slots are described "hahsm <server> partition <p>".
                let prefix = format!("hahsm {name} partition ");
                slots.iter().find(|s| {
                    label(s) == *name
                        || self.p11.get_slot_info(**s).is_ok_and(|i| {
                            let d = i.slot_description().trim();
                            d.starts_with(&prefix) && partition.is_none_or(|p| d[prefix.len()..] == *p)
                        })
                })
            }
            (None, Some(p)) => slots.iter().find(|s| label(s) == p),
            (None, None) => slots.first(),
        };
        found.copied().ok_or_else(|| match choice {
            Some(SlotChoice::Ha) => anyhow!(
                "{} shows no HA slot (are the configured members in one HA group?)",
                self.path.display()
            ),
            Some(c) => anyhow!("no slot '{c}' in {}", self.path.display()),
            None => match partition {
                Some(p) => anyhow!("no slot for partition '{p}'"),
                None => anyhow!("{} shows no slot with a token", self.path.display()),
            },
        })
    }

    /// Logs in as the user on `slot`, once.
    pub fn login(&self, slot: Slot, pin: &str) -> Result<()> {
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        if logins.contains_key(&slot.id()) {
            return Ok(());
        }
        let session = self.p11.open_rw_session(slot)?;
        match session.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
            // hahsm's HA slot and a member's physical slot share the member's
            // login: logging in to one may already have logged in the other.
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(e).context("C_Login"),
        }
        logins.insert(slot.id(), session);
        Ok(())
    }

    /// Whether the token in `slot` offers the mechanism `mode` measures.
    pub fn offers(&self, slot: Slot, mode: Mode) -> Result<bool> {
        let wanted = match mode {
            Mode::RsaSign(_) => MechanismType::SHA256_RSA_PKCS,
            Mode::RsaKeygen(_) => MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            Mode::EcdsaSign(Curve::P256) => MechanismType::ECDSA_SHA256,
            Mode::EcdsaSign(Curve::P384) => MechanismType::ECDSA_SHA384,
            Mode::EddsaSign => MechanismType::EDDSA,
            Mode::AesGcm => MechanismType::AES_GCM,
            Mode::Hmac => MechanismType::SHA256_HMAC,
            Mode::Ecdh(_) => MechanismType::ECDH1_DERIVE,
            Mode::MlDsaSign(_) => MechanismType::ML_DSA,
            Mode::MlKemDecap(_) => MechanismType::ML_KEM,
        };
        let offered = self.p11.get_mechanism_list(slot)?;
        Ok(offered.contains(&wanted)
            || matches!(mode, Mode::EcdsaSign(_)) && offered.contains(&MechanismType::ECDSA))
    }

    /// ECDSA with the hash done by the application (`CKM_ECDSA` over a digest),
    /// for tokens such as SoftHSM2 that lack `CKM_ECDSA_SHA256`/`SHA384`.
    fn ecdsa_prehash(&self, slot: Slot, mode: Mode) -> Result<bool> {
        let wanted = match mode {
            Mode::EcdsaSign(Curve::P256) => MechanismType::ECDSA_SHA256,
            Mode::EcdsaSign(Curve::P384) => MechanismType::ECDSA_SHA384,
            _ => return Ok(false),
        };
        Ok(!self.p11.get_mechanism_list(slot)?.contains(&wanted))
    }

    /// Makes the keys `mode` needs on `slot`, ready for `threads` to use.
    pub fn prepare(&self, slot: Slot, mode: Mode, bytes: usize) -> Result<Pkcs11Workload<'_>> {
        let prehash = self.ecdsa_prehash(slot, mode)?;
        let s = self.p11.open_rw_session(slot)?;
        let label = next_label();
        let mut keys = Vec::new();
        let mut operand = Vec::new();
        let key = match mode {
            Mode::RsaSign(bits) => {
                let (public, private) = s.generate_key_pair(
                    &Mechanism::RsaPkcsKeyPairGen,
                    &rsa_public_template(bits, &label),
                    &private_template(&label, Attribute::Sign(true)),
                )?;
                keys.extend([public, private]);
                Some(private)
            }
            Mode::EcdsaSign(curve) | Mode::Ecdh(curve) => {
                let usage = match mode {
                    Mode::Ecdh(_) => Attribute::Derive(true),
                    _ => Attribute::Sign(true),
                };
                let (public, private) = s.generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &ec_public_template(curve_oid(curve), &label),
                    &private_template(&label, usage),
                )?;
                keys.extend([public, private]);
                if matches!(mode, Mode::Ecdh(_)) {
                    operand = super::raw::ec_peer_point(curve)?;
                }
                Some(private)
            }
            Mode::EddsaSign => {
                let (public, private) = s.generate_key_pair(
                    &Mechanism::EccEdwardsKeyPairGen,
                    &ec_public_template(ED25519_OID, &label),
                    &private_template(&label, Attribute::Sign(true)),
                )?;
                keys.extend([public, private]);
                Some(private)
            }
            Mode::AesGcm | Mode::Hmac => {
                let (mechanism, usage) = match mode {
                    Mode::AesGcm => (
                        Mechanism::AesKeyGen,
                        [Attribute::Encrypt(true), Attribute::Decrypt(true)],
                    ),
                    _ => (
                        Mechanism::GenericSecretKeyGen,
                        [Attribute::Sign(true), Attribute::Verify(true)],
                    ),
                };
                let mut template = vec![
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(label.clone().into_bytes()),
                ];
                template.extend(usage);
                let key = s.generate_key(&mechanism, &template)?;
                keys.push(key);
                Some(key)
            }
            Mode::MlDsaSign(set) => {
                let (public, private) = s.generate_key_pair(
                    &Mechanism::MlDsaKeyPairGen,
                    &ml_public_template(ml_dsa_set(set)?, &label),
                    &private_template(&label, Attribute::Sign(true)),
                )?;
                keys.extend([public, private]);
                Some(private)
            }
            Mode::MlKemDecap(set) => {
                let (public, private) = s.generate_key_pair(
                    &Mechanism::MlKemKeyPairGen,
                    &ml_public_template(ml_kem_set(set)?, &label),
                    &private_template(&label, Attribute::Decapsulate(true)),
                )?;
                keys.extend([public, private]);
                // One ciphertext, made once and decapsulated by every thread.
                let session_secret = [Attribute::Token(false)];
                let (ct, secret) = s.encapsulate_key(&Mechanism::MlKem, public, &session_secret)?;
                s.destroy_object(secret)?;
                operand = ct;
                Some(private)
            }
            Mode::RsaKeygen(_) => None,
        };
        Ok(Pkcs11Workload {
            module: self,
            slot,
            mode,
            key,
            prehash,
            operand,
            data: vec![0x5a; bytes],
            label,
            made: Mutex::new(keys),
        })
    }
}

/// Labels unique to this process and this preparation, so workers running side
/// by side never touch each other's keys.
fn next_label() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "hahsm-bench-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn curve_oid(c: Curve) -> &'static [u8] {
    match c {
        Curve::P256 => P256_OID,
        Curve::P384 => P384_OID,
    }
}

/// Token objects: in an HA slot only they are on every member (session objects
/// stay on the member that made them), and they make key generation durable,
/// as an application's keys are.
/// The `CKA_PARAMETER_SET` of ML-DSA-`set`.
fn ml_dsa_set(set: u16) -> Result<Attribute> {
    Ok(Attribute::ParameterSet(
        match set {
            44 => MlDsaParameterSetType::ML_DSA_44,
            65 => MlDsaParameterSetType::ML_DSA_65,
            87 => MlDsaParameterSetType::ML_DSA_87,
            _ => bail!("ML-DSA-{set} is not offered"),
        }
        .into(),
    ))
}

/// The `CKA_PARAMETER_SET` of ML-KEM-`set`.
fn ml_kem_set(set: u16) -> Result<Attribute> {
    Ok(Attribute::ParameterSet(
        match set {
            512 => MlKemParameterSetType::ML_KEM_512,
            768 => MlKemParameterSetType::ML_KEM_768,
            1024 => MlKemParameterSetType::ML_KEM_1024,
            _ => bail!("ML-KEM-{set} is not offered"),
        }
        .into(),
    ))
}

fn ml_public_template(set: Attribute, label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(false),
        set,
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn private_template(label: &str, usage: Attribute) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Label(label.as_bytes().to_vec()),
        usage,
    ]
}

fn rsa_public_template(bits: u32, label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::ModulusBits(u64::from(bits).into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn ec_public_template(oid: &[u8], label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::EcParams(oid.to_vec()),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// One mode's keys on one slot, and what each thread does with them.
pub struct Pkcs11Workload<'m> {
    module: &'m Module,
    slot: Slot,
    mode: Mode,
    /// The key the operations use (none for key generation).
    key: Option<ObjectHandle>,
    /// Sign with `CKM_ECDSA` over a digest made here.
    prehash: bool,
    /// What each operation takes besides its key: the peer's public point
    /// (ECDH), or the one ciphertext every decapsulation opens (ML-KEM).
    operand: Vec<u8>,
    data: Vec<u8>,
    label: String,
    /// Every object made for or by the bench, destroyed at the end.
    made: Mutex<Vec<ObjectHandle>>,
}

impl Pkcs11Workload<'_> {
    /// Destroys the keys the bench made (key generation makes many), so a
    /// partition is left as it was found.
    pub fn cleanup(self) -> Result<()> {
        let made = self.made.into_inner().unwrap_or_else(|p| p.into_inner());
        if made.is_empty() {
            return Ok(());
        }
        let s = self.module.p11.open_rw_session(self.slot)?;
        let mut failed = 0;
        for object in made {
            if s.destroy_object(object).is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            bail!(
                "{failed} of the bench's objects (label {}) could not be destroyed",
                self.label
            );
        }
        Ok(())
    }
}

impl Workload for Pkcs11Workload<'_> {
    fn thread_op(&self, thread: usize) -> Result<Op<'_>> {
        let s = self.module.p11.open_rw_session(self.slot)?;
        let data = &self.data[..];
        let key = || {
            self.key
                .ok_or_else(|| anyhow!("no key prepared for {}", self.mode))
        };
        let sign = |s: Session, m: Mechanism<'static>| -> Result<Op<'_>> {
            let key = key()?;
            Ok(Box::new(move || {
                s.sign(&m, key, data)?;
                Ok(())
            }))
        };
        Ok(match self.mode {
            Mode::RsaSign(_) => sign(s, Mechanism::Sha256RsaPkcs)?,
            Mode::EcdsaSign(curve) if self.prehash => {
                let key = key()?;
                let hash = match curve {
                    Curve::P256 => &aws_lc_rs::digest::SHA256,
                    Curve::P384 => &aws_lc_rs::digest::SHA384,
                };
                Box::new(move || {
                    let digest = aws_lc_rs::digest::digest(hash, data);
                    s.sign(&Mechanism::Ecdsa, key, digest.as_ref())?;
                    Ok(())
                })
            }
            Mode::EcdsaSign(Curve::P256) => sign(s, Mechanism::EcdsaSha256)?,
            Mode::EcdsaSign(Curve::P384) => sign(s, Mechanism::EcdsaSha384)?,
            Mode::EddsaSign => sign(s, Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)))?,
            Mode::Hmac => sign(s, Mechanism::Sha256Hmac)?,
            Mode::AesGcm => {
                let key = key()?;
                // A fresh IV per encryption: this thread's number, then a counter.
                let mut counter = 0u64;
                Box::new(move || {
                    counter += 1;
                    let mut iv = [0u8; 12];
                    iv[..4].copy_from_slice(&(thread as u32).to_be_bytes());
                    iv[4..].copy_from_slice(&counter.to_be_bytes());
                    let params = GcmParams::new(&mut iv, &[], 128.into())?;
                    s.encrypt(&Mechanism::AesGcm(params), key, data)?;
                    Ok(())
                })
            }
            Mode::Ecdh(_) => {
                let key = key()?;
                let peer = &self.operand[..];
                // The derived secret is a session object: it goes when the session closes.
                let template = [
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(false),
                ];
                Box::new(move || {
                    let params = Ecdh1DeriveParams::new(EcKdf::null(), peer);
                    s.derive_key(&Mechanism::Ecdh1Derive(params), key, &template)?;
                    Ok(())
                })
            }
            Mode::MlDsaSign(_) => sign(
                s,
                Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None)),
            )?,
            Mode::MlKemDecap(_) => {
                let key = key()?;
                let ciphertext = &self.operand[..];
                // The shared secret is a session object: it goes when the session closes.
                let template = [Attribute::Token(false)];
                Box::new(move || {
                    s.decapsulate_key(&Mechanism::MlKem, key, &template, ciphertext)?;
                    Ok(())
                })
            }
            Mode::RsaKeygen(bits) => {
                let (public, private) = (
                    rsa_public_template(bits, &self.label),
                    private_template(&self.label, Attribute::Sign(true)),
                );
                Box::new(move || {
                    let (pubk, privk) =
                        s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
                    self.made
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend([pubk, privk]);
                    Ok(())
                })
            }
        })
    }
}
