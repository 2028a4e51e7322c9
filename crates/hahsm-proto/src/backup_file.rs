//! The framing of a backup file, which the CLI reads and writes and the
//! member seals and opens (`hahsmd::backup`). Nothing here is secret or
//! checked cryptographically; the member authenticates every byte:
//!
//! ```text
//! magic "hahsm-backup-v2\n"
//! u32 LE header length, header (postcard; in clear, bound to every chunk)
//! then chunk records, in order, until the one marked last:
//!   u8 last (0 or 1), u32 LE sealed length, sealed chunk (AES-256-GCM)
//! ```
//!
//! Each chunk is sealed with the magic, the header, its number and its
//! `last` flag as associated data, so a changed, missing, reordered or
//! duplicated chunk, a file cut short or one with bytes after its last
//! chunk refuses the whole restore. Format 1 (before chunks) is one record
//! after its header, under `MAGIC_V1`.
use std::io::{self, Read};

pub const MAGIC_V1: &[u8; 16] = b"hahsm-backup-v1\n";
pub const MAGIC_V2: &[u8; 16] = b"hahsm-backup-v2\n";

/// No header or chunk is larger: a length above it is a damaged file.
pub const MAX_PART: usize = 64 << 20;

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a backup record is larger than any hahsm writes",
    )
}

fn read_len(r: &mut impl Read) -> io::Result<usize> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PART {
        return Err(too_large());
    }
    Ok(len)
}

/// The file's head, as written: magic, header length and header.
pub fn head(magic: &[u8; 16], header: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out
}

/// The header inside a head made by [`head`] with `magic`, if it is one.
pub fn parse_head<'a>(magic: &[u8; 16], bytes: &'a [u8]) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(&magic[..])?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let header = rest.get(4..)?;
    (header.len() == len).then_some(header)
}

/// The header at the start of `bytes` (a head made with `magic`, then
/// whatever follows it), if it is one.
pub fn parse_head_prefix<'a>(magic: &[u8; 16], bytes: &'a [u8]) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(&magic[..])?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    rest.get(4..4 + len)
}

/// Reads a file's head (whichever magic), returning its bytes as [`head`] made them.
pub fn read_head(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic)?;
    let len = read_len(r)?;
    let mut header = vec![0u8; len];
    r.read_exact(&mut header)?;
    Ok(head(&magic, &header))
}

/// One chunk record, as written.
pub fn record(last: bool, sealed: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(last)];
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    out.extend_from_slice(sealed);
    out
}

/// `(last, sealed chunk)` of a record made by [`record`], if it is one.
pub fn parse_record(bytes: &[u8]) -> Option<(bool, &[u8])> {
    let last = match bytes.first()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let len = u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
    let sealed = bytes.get(5..)?;
    (sealed.len() == len).then_some((last, sealed))
}

/// Reads the next chunk record; `None` at the end of the file.
pub fn read_record(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut last = [0u8; 1];
    if r.read(&mut last)? == 0 {
        return Ok(None);
    }
    let len = read_len(r)?;
    let mut sealed = vec![0u8; len];
    r.read_exact(&mut sealed)?;
    let mut out = vec![last[0]];
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&sealed);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_records_read_back_as_written() {
        let mut file = head(MAGIC_V2, b"the header");
        file.extend(record(false, b"first"));
        file.extend(record(true, b"second"));
        let mut r = &file[..];
        let h = read_head(&mut r).expect("head");
        assert_eq!(parse_head(MAGIC_V2, &h), Some(&b"the header"[..]));
        assert_eq!(parse_head(MAGIC_V1, &h), None);
        let first = read_record(&mut r).expect("read").expect("a record");
        assert_eq!(parse_record(&first), Some((false, &b"first"[..])));
        let second = read_record(&mut r).expect("read").expect("a record");
        assert_eq!(parse_record(&second), Some((true, &b"second"[..])));
        assert!(read_record(&mut r).expect("read").is_none());
    }

    #[test]
    fn damaged_framing_is_an_error_not_a_panic() {
        assert_eq!(parse_record(&[2, 0, 0, 0, 0]), None);
        assert_eq!(parse_record(&[1, 9, 0, 0, 0, 1]), None);
        assert_eq!(parse_head(MAGIC_V2, b"hahsm-backup-v2\n\x05\x00"), None);
        let cut = record(false, b"abcdef");
        assert!(read_record(&mut &cut[..4]).is_err());
        let huge = [0u8, 0xff, 0xff, 0xff, 0xff];
        assert!(read_record(&mut &huge[..]).is_err());
    }
}
