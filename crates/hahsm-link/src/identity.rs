//! Certificates and keys: generating, loading and storing a link identity.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{config::provider, Fingerprint, LinkError, LinkResult};

/// Validity of a generated certificate, in days (about ten years).
const VALIDITY_DAYS: i64 = 3652;

/// A certificate and its private key: what one end of a link presents.
///
/// `Debug` shows only the certificate's fingerprint, never the key.
pub struct Identity {
    /// The DER certificate (self-signed; peers pin its fingerprint).
    pub cert_der: CertificateDer<'static>,
    /// The DER private key (PKCS#8, SEC1 or PKCS#1).
    pub key_der: PrivateKeyDer<'static>,
}

impl Identity {
    /// Parses a certificate PEM and a private key PEM, and checks that the key belongs to the
    /// certificate and is usable by the crypto provider.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> LinkResult<Identity> {
        let cert_der = cert_from_pem(cert_pem)?;
        let key_der = key_from_pem(key_pem)?;
        let identity = Identity { cert_der, key_der };
        identity.check_consistent()?;
        Ok(identity)
    }

    /// Fingerprint of this identity's certificate (what peers pin or register).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.cert_der)
    }

    /// Checks that the private key is usable and matches the certificate's public key.
    fn check_consistent(&self) -> LinkResult<()> {
        CertifiedKey::from_der(vec![self.cert_der.clone()], self.key_der.clone_key(), &provider())
            .map(drop)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    LinkError::BadCertificate("the private key does not belong to the certificate".to_owned())
                }
                other => LinkError::BadCertificate(format!("unusable certificate or key: {other}")),
            })
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint().to_string())
            .finish_non_exhaustive()
    }
}

/// Makes a self-signed ECDSA P-256 certificate valid for about ten years (from yesterday, to
/// tolerate clock skew), with `common_name` as CN and `subject_alt_names` as SANs (each an IP
/// address or a DNS name). Returns PEM strings `(certificate, PKCS#8 private key)`.
pub fn generate_self_signed(common_name: &str, subject_alt_names: &[String]) -> LinkResult<(String, String)> {
    if common_name.trim().is_empty() {
        return Err(LinkError::Config(
            "a certificate needs a non-empty common name".to_owned(),
        ));
    }
    let mut params = CertificateParams::new(subject_alt_names.to_vec()).map_err(|e| {
        LinkError::Config(format!(
            "invalid subject alternative name in {subject_alt_names:?}: {e}"
        ))
    })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;

    let today = days_since_epoch(SystemTime::now());
    let (y, m, d) = civil_from_days(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + VALIDITY_DAYS);
    params.not_after = rcgen::date_time_ymd(y, m, d);

    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| LinkError::Config(format!("cannot generate a P-256 key: {e}")))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| LinkError::Config(format!("cannot sign the certificate: {e}")))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Loads an identity from a certificate PEM file and a private key PEM file, and checks that they
/// belong together.
pub fn load_identity(cert_pem_path: &Path, key_pem_path: &Path) -> LinkResult<Identity> {
    let cert_der = load_cert_pem(cert_pem_path)?;
    let key_pem = read_to_string(key_pem_path)?;
    let key_der = key_from_pem(&key_pem).map_err(|e| with_path(e, key_pem_path))?;
    let identity = Identity { cert_der, key_der };
    identity.check_consistent().map_err(|e| match e {
        LinkError::BadCertificate(msg) => LinkError::BadCertificate(format!(
            "{} and {}: {msg}",
            cert_pem_path.display(),
            key_pem_path.display()
        )),
        other => other,
    })?;
    Ok(identity)
}

/// Loads the first certificate of a PEM file.
pub fn load_cert_pem(path: &Path) -> LinkResult<CertificateDer<'static>> {
    let pem = read_to_string(path)?;
    cert_from_pem(&pem).map_err(|e| with_path(e, path))
}

/// Parses the first `CERTIFICATE` block of a PEM string.
pub fn cert_from_pem(pem: &str) -> LinkResult<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            LinkError::BadCertificate("no CERTIFICATE block found in the PEM text".to_owned())
        }
        other => LinkError::BadCertificate(format!("malformed certificate PEM: {other}")),
    })
}

/// Parses the first private key block (PKCS#8, SEC1 or PKCS#1) of a PEM string.
fn key_from_pem(pem: &str) -> LinkResult<PrivateKeyDer<'static>> {
    // The pem error never contains key material, only structural complaints.
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            LinkError::BadCertificate("no PRIVATE KEY block found in the PEM text".to_owned())
        }
        other => LinkError::BadCertificate(format!("malformed private key PEM: {other}")),
    })
}

fn read_to_string(path: &Path) -> LinkResult<String> {
    fs::read_to_string(path).map_err(|e| {
        LinkError::Io(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        ))
    })
}

fn with_path(err: LinkError, path: &Path) -> LinkError {
    match err {
        LinkError::BadCertificate(msg) => LinkError::BadCertificate(format!("{}: {msg}", path.display())),
        other => other,
    }
}

/// Writes a file readable only by its owner (mode 0600), replacing any existing file atomically:
/// the contents go to a fresh temporary file in the same directory, which is fsynced, renamed
/// over `path`, and then the directory is fsynced. A reader sees the old file or the new one,
/// never a partial one.
pub fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let mut options = OpenOptions::new();
    // create_new: never follow or reuse whatever already sits at the temporary name.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;

    let result = (|| {
        // The umask can only clear bits of 0600, but set it explicitly anyway.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn days_since_epoch(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        // A clock before 1970 is broken; the certificate then simply starts in 1969.
        Err(_) => 0,
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_from_days_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn identity_debug_does_not_show_the_key() {
        let (cert, key) = generate_self_signed("debug-test", &[]).unwrap();
        let identity = Identity::from_pem(&cert, &key).unwrap();
        let shown = format!("{identity:?}");
        assert!(shown.contains(&identity.fingerprint().to_string()));
        let key_der = identity.key_der.secret_der();
        assert!(!shown.contains(&hex::encode(key_der)));
        assert!(!shown.contains("PRIVATE"));
        assert!(!shown.to_lowercase().contains("key_der"));
    }
}
