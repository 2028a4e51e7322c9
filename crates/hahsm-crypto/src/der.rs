//! Just enough DER to read and write the key containers hahsm handles
//! (SubjectPublicKeyInfo, the outer layer of PKCS#8 / PKCS#1 / SEC1, and
//! CKA_EC_POINT / CKA_EC_PARAMS values). Every read is bounds-checked and
//! returns `None` on malformed input; nothing here panics.

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
/// `[0]` constructed, context-specific (SEC1 `parameters`).
pub(crate) const TAG_CONTEXT_0: u8 = 0xa0;

/// A cursor over DER bytes.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// Reads one tag-length-value and returns the tag and the contents.
    /// Only single-byte tags and definite lengths of up to 4 bytes.
    pub(crate) fn read_any(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.data.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // multi-byte tag numbers: never used by our formats
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None; // indefinite or absurd length
            }
            let (len_bytes, rest) = rest.split_at(n);
            if len_bytes[0] == 0 {
                return None; // non-minimal length
            }
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len < 0x80 {
                return None; // non-minimal length
            }
            (len, rest)
        };
        if rest.len() < len {
            return None;
        }
        let (value, rest) = rest.split_at(len);
        self.data = rest;
        Some((tag, value))
    }

    /// Reads one element that must have `tag`.
    pub(crate) fn read(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.read_any()? {
            (t, v) if t == tag => Some(v),
            _ => None,
        }
    }

    /// Reads an element with `tag` if the next element has it.
    pub(crate) fn read_optional(&mut self, tag: u8) -> Option<&'a [u8]> {
        if self.peek_tag() == Some(tag) {
            self.read(tag)
        } else {
            None
        }
    }
}

/// Parses `data` as exactly one element with `tag` and returns its contents.
pub(crate) fn parse_single(data: &[u8], tag: u8) -> Option<&[u8]> {
    let mut r = Reader::new(data);
    let v = r.read(tag)?;
    r.is_empty().then_some(v)
}

/// Encodes one tag-length-value.
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        // Lossless: len < 0x80.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = &bytes[skip..];
        // Lossless: a usize has at most 8 bytes.
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(value);
    out
}

/// Encodes the concatenation of `parts` as a SEQUENCE.
pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &parts.concat())
}

/// Encodes a non-negative big-endian integer as a DER INTEGER.
pub(crate) fn unsigned_integer(be: &[u8]) -> Vec<u8> {
    let trimmed = strip_leading_zeros(be);
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(TAG_INTEGER, &content)
}

/// Decodes a DER INTEGER's contents as a non-negative big-endian number
/// without leading zeros. `None` for negative numbers.
pub(crate) fn integer_to_unsigned(content: &[u8]) -> Option<&[u8]> {
    match content.first() {
        None => None,
        Some(b) if b & 0x80 != 0 => None,
        Some(_) => Some(strip_leading_zeros(content)),
    }
}

/// A BIT STRING with no unused bits.
pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(TAG_BIT_STRING, &content)
}

/// The bytes of a BIT STRING's contents; it must have no unused bits.
pub(crate) fn bit_string_bytes(content: &[u8]) -> Option<&[u8]> {
    match content.split_first() {
        Some((0, rest)) => Some(rest),
        _ => None,
    }
}

const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;

/// The end of an X.509 certificate's validity (`notAfter`), in seconds
/// since 1970-01-01 UTC; `None` for anything that is not a certificate with
/// a valid DER time there.
pub fn certificate_not_after(cert_der: &[u8]) -> Option<i64> {
    let cert = parse_single(cert_der, TAG_SEQUENCE)?;
    let tbs = Reader::new(cert).read(TAG_SEQUENCE)?;
    let mut r = Reader::new(tbs);
    r.read_optional(TAG_CONTEXT_0); // version
    r.read(TAG_INTEGER)?; // serialNumber
    r.read(TAG_SEQUENCE)?; // signature
    r.read(TAG_SEQUENCE)?; // issuer
    let mut validity = Reader::new(r.read(TAG_SEQUENCE)?);
    validity.read_any()?; // notBefore
    let (tag, time) = validity.read_any()?;
    validity.is_empty().then_some(())?;
    der_time(tag, time)
}

/// A DER UTCTime (`YYMMDDHHMMSSZ`, 1950 to 2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), as RFC 5280 writes them, in Unix seconds.
fn der_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, rest) = match (tag, text.len()) {
        (TAG_UTC_TIME, 13) => {
            let yy = digits(&text[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (TAG_GENERALIZED_TIME, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn strip_leading_zeros(be: &[u8]) -> &[u8] {
    let skip = be.iter().take_while(|b| **b == 0).count();
    &be[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times_are_unix_seconds() {
        assert_eq!(der_time(TAG_UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(der_time(TAG_UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(
            der_time(TAG_GENERALIZED_TIME, b"20240229123456Z"),
            Some(1_709_210_096)
        );
        assert_eq!(
            der_time(TAG_GENERALIZED_TIME, b"99991231235959Z"),
            Some(253_402_300_799)
        );
        for bad in [
            &b"20240229123456"[..],
            b"2024022912345Z",
            b"20241329123456Z",
            b"2024022912345xZ",
        ] {
            assert_eq!(der_time(TAG_GENERALIZED_TIME, bad), None, "{bad:?}");
        }
        assert_eq!(der_time(TAG_OCTET_STRING, b"700101000000Z"), None);
    }

    #[test]
    fn a_certificates_not_after_and_garbage() {
        let time = |t: &[u8]| tlv(TAG_GENERALIZED_TIME, t);
        let tbs = sequence(&[
            &tlv(TAG_CONTEXT_0, &unsigned_integer(&[2])),
            &unsigned_integer(&[7]),
            &sequence(&[]),
            &sequence(&[]),
            &sequence(&[&tlv(TAG_UTC_TIME, b"240101000000Z"), &time(b"20340101000000Z")]),
            &sequence(&[]),
        ]);
        let cert = sequence(&[&tbs, &sequence(&[]), &bit_string(&[1])]);
        assert_eq!(certificate_not_after(&cert), Some(2_019_686_400));
        assert_eq!(certificate_not_after(&cert[..cert.len() - 1]), None);
        assert_eq!(certificate_not_after(b"not a certificate"), None);
        assert_eq!(certificate_not_after(&[]), None);
    }

    #[test]
    fn lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let v = vec![0xabu8; len];
            let enc = tlv(TAG_OCTET_STRING, &v);
            assert_eq!(parse_single(&enc, TAG_OCTET_STRING), Some(&v[..]), "len {len}");
        }
    }

    #[test]
    fn malformed_input_is_rejected_not_panicking() {
        let cases: &[&[u8]] = &[
            &[],
            &[0x04],
            &[0x04, 0x05, 1, 2],
            &[0x04, 0x80],
            &[0x04, 0x81, 0x05, 1, 2, 3, 4, 5],
            &[0x04, 0x82, 0x00, 0x90],
            &[0x04, 0x85, 1, 1, 1, 1, 1],
            &[0x1f, 0x01, 0x00],
        ];
        for c in cases {
            assert_eq!(parse_single(c, TAG_OCTET_STRING), None, "{c:02x?}");
        }
        assert_eq!(
            parse_single(&[0x04, 0x01, 0xff, 0x00], TAG_OCTET_STRING),
            None,
            "trailing data"
        );
    }

    #[test]
    fn integers() {
        assert_eq!(unsigned_integer(&[0, 0, 0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(
            unsigned_integer(&[0x01, 0x00, 0x01]),
            vec![0x02, 0x03, 0x01, 0x00, 0x01]
        );
        assert_eq!(unsigned_integer(&[]), vec![0x02, 0x01, 0x00]);
        assert_eq!(integer_to_unsigned(&[0x00, 0x80]), Some(&[0x80u8][..]));
        assert_eq!(integer_to_unsigned(&[0x80]), None);
    }
}
