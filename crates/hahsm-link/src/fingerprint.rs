//! SHA-256 certificate fingerprints: the only trust anchor of a link.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;

use crate::{LinkError, LinkResult};

/// SHA-256 fingerprint of a DER certificate.
///
/// Displays as uppercase colon-separated hex, like
/// `openssl x509 -noout -fingerprint -sha256`; [`Fingerprint::to_hex`] gives the compact form.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint(pub [u8; 32]);

/// Prefixes accepted (case-insensitively) in front of a fingerprint. The first is what OpenSSL 3
/// prints (`sha256 Fingerprint=`), OpenSSL 1.1 prints it in uppercase.
const PREFIXES: &[&str] = &["sha256 fingerprint=", "sha256:"];

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(cert_der: &[u8]) -> Fingerprint {
        let digest = digest::digest(&digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        // SHA-256 digests are always 32 bytes, so the lengths match.
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// Parses `AB:CD:…` or `abcd…` (64 hex digits), case-insensitively, with an optional
    /// `sha256:` or `SHA256 Fingerprint=` prefix and surrounding whitespace. Colons, when present,
    /// must separate every byte.
    pub fn parse(s: &str) -> LinkResult<Fingerprint> {
        let mut body = s.trim();
        for prefix in PREFIXES {
            // Both are ASCII, so a byte-length slice is on a char boundary once the prefix matched.
            if body.len() >= prefix.len()
                && body.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            {
                body = body[prefix.len()..].trim_start();
                break;
            }
        }
        let hex_digits: String = if body.contains(':') {
            let mut joined = String::with_capacity(64);
            for pair in body.split(':') {
                if pair.len() != 2 {
                    return Err(LinkError::InvalidFingerprint(format!(
                        "{s:?}: expected 32 colon-separated pairs of hex digits"
                    )));
                }
                joined.push_str(pair);
            }
            joined
        } else {
            body.to_owned()
        };
        let mut out = [0u8; 32];
        hex::decode_to_slice(&hex_digits, &mut out).map_err(|_| {
            LinkError::InvalidFingerprint(format!("{s:?}: expected a SHA-256 fingerprint of 64 hex digits"))
        })?;
        Ok(Fingerprint(out))
    }

    /// Lowercase hex without separators (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    /// Uppercase colon-separated hex, as OpenSSL prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl FromStr for Fingerprint {
    type Err = LinkError;

    fn from_str(s: &str) -> LinkResult<Fingerprint> {
        Fingerprint::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fingerprint {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(0xA5);
        }
        Fingerprint(bytes)
    }

    #[test]
    fn display_is_uppercase_colon_separated_and_parses_back() {
        let fp = sample();
        let shown = fp.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert!(shown
            .chars()
            .all(|c| c == ':' || c.is_ascii_digit() || c.is_ascii_uppercase()));
        assert_eq!(Fingerprint::parse(&shown).unwrap(), fp);
        assert_eq!(Fingerprint::parse(&shown.to_lowercase()).unwrap(), fp);
    }

    #[test]
    fn to_hex_is_lowercase_compact_and_parses_back() {
        let fp = sample();
        let hex = fp.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(Fingerprint::parse(&hex).unwrap(), fp);
        assert_eq!(Fingerprint::parse(&hex.to_uppercase()).unwrap(), fp);
        assert_eq!(hex.parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn accepts_prefixes_and_whitespace() {
        let fp = sample();
        for text in [
            format!("sha256 Fingerprint={fp}\n"),
            format!("SHA256 Fingerprint={fp}"),
            format!("sha256:{}", fp.to_hex()),
            format!("SHA256: {fp}"),
            format!("  {}  ", fp.to_hex()),
        ] {
            assert_eq!(Fingerprint::parse(&text).unwrap(), fp, "{text:?}");
        }
    }

    #[test]
    fn rejects_malformed_input() {
        let fp = sample();
        let hex = fp.to_hex();
        let shown = fp.to_string();
        for bad in [
            String::new(),
            hex[..62].to_owned(),
            format!("{hex}00"),
            format!("{}zz", &hex[..62]),
            shown.replacen(':', "", 1),
            format!("{shown}:"),
            format!("md5:{hex}"),
        ] {
            assert!(
                matches!(Fingerprint::parse(&bad), Err(LinkError::InvalidFingerprint(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn of_der_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            Fingerprint::of_der(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
