//! Length-delimited frames: a `u32` big-endian length, then that many bytes.
//!
//! Frames are opaque here; the message encoding lives in `hahsm-proto`.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::{LinkError, LinkResult};

/// Size of a frame header.
pub const FRAME_HEADER_LEN: usize = 4;

/// The most bytes allocated ahead of their arrival, so that a header announcing a large frame
/// costs memory only as its bytes really come in.
const PREALLOCATE_MAX: u32 = 64 * 1024;

/// Reads one frame.
///
/// Returns `Ok(None)` on a clean end of stream at a frame boundary. A length above `max_len` is
/// refused with [`LinkError::FrameTooLarge`] before anything is allocated or read past the header.
/// An end of stream inside a frame is an [`LinkError::Io`] error of kind `UnexpectedEof`; a TLS
/// peer that hangs up at a frame boundary without a close_notify gives [`LinkError::Closed`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max_len: u32) -> LinkResult<Option<Vec<u8>>> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < FRAME_HEADER_LEN {
        match r.read(&mut header[filled..]).await {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(LinkError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("end of stream after {filled} of {FRAME_HEADER_LEN} frame header bytes"),
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if filled == 0 && e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(LinkError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
    }

    let len = u32::from_be_bytes(header);
    if len > max_len {
        return Err(LinkError::FrameTooLarge { len, max: max_len });
    }
    let mut payload = Vec::with_capacity(len.min(PREALLOCATE_MAX) as usize);
    let got = (&mut *r).take(u64::from(len)).read_to_end(&mut payload).await?;
    if got != len as usize {
        return Err(LinkError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("end of stream after {got} of {len} frame payload bytes"),
        )));
    }
    Ok(Some(payload))
}

/// Writes one frame (header and payload in a single `write_all`, so a TLS stream emits them in as
/// few records as possible), then flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> LinkResult<()> {
    let len = u32::try_from(payload.len()).map_err(|_| LinkError::PayloadTooLarge { len: payload.len() })?;
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Writes several frames with one `write_all` and one flush: a writer task that
/// finds several answers queued sends them in as few TLS records as possible,
/// which under load saves a record (and its encryption) per frame.
pub async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, payloads: &[Vec<u8>]) -> LinkResult<()> {
    let total: usize = payloads.iter().map(|p| FRAME_HEADER_LEN + p.len()).sum();
    let mut buf = Vec::with_capacity(total);
    for payload in payloads {
        let len =
            u32::try_from(payload.len()).map_err(|_| LinkError::PayloadTooLarge { len: payload.len() })?;
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(payload);
    }
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1 << 20;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn frames_round_trip_in_order_then_clean_eof() {
        let mut wire = Vec::new();
        for payload in [&b"first"[..], b"", &[7u8; 70_000][..]] {
            write_frame(&mut wire, payload).await.unwrap();
        }
        let mut r = &wire[..];
        assert_eq!(read_frame(&mut r, MAX).await.unwrap().unwrap(), b"first");
        assert_eq!(read_frame(&mut r, MAX).await.unwrap().unwrap(), b"");
        assert_eq!(read_frame(&mut r, MAX).await.unwrap().unwrap(), vec![7u8; 70_000]);
        assert!(read_frame(&mut r, MAX).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn write_frames_is_the_same_bytes_as_one_frame_at_a_time() {
        let payloads = vec![b"one".to_vec(), Vec::new(), vec![9u8; 300]];
        let mut batched = Vec::new();
        write_frames(&mut batched, &payloads).await.unwrap();
        let mut single = Vec::new();
        for p in &payloads {
            write_frame(&mut single, p).await.unwrap();
        }
        assert_eq!(batched, single);
    }

    #[tokio::test]
    async fn write_frame_uses_big_endian_length() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"abc").await.unwrap();
        assert_eq!(wire, [0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[tokio::test]
    async fn oversized_frame_header_is_refused_before_reading_the_payload() {
        // A header announcing 4 GiB - 1 bytes. Reading (or allocating) before checking would
        // either try to read 4 GiB or fail with UnexpectedEof instead of FrameTooLarge.
        let mut wire = u32::MAX.to_be_bytes().to_vec();
        wire.extend_from_slice(b"payload bytes that must stay unread");
        let mut r = &wire[..];
        match read_frame(&mut r, MAX).await {
            Err(LinkError::FrameTooLarge { len, max }) => {
                assert_eq!((len, max), (u32::MAX, MAX));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(r, b"payload bytes that must stay unread", "payload was consumed");
    }

    #[tokio::test]
    async fn frame_of_exactly_max_len_is_accepted() {
        let wire = framed(&[1u8; 16]);
        assert_eq!(read_frame(&mut &wire[..], 16).await.unwrap().unwrap().len(), 16);
        assert!(matches!(
            read_frame(&mut &wire[..], 15).await,
            Err(LinkError::FrameTooLarge { len: 16, max: 15 })
        ));
    }

    #[tokio::test]
    async fn truncated_payload_is_unexpected_eof() {
        let wire = framed(b"0123456789");
        let mut r = &wire[..wire.len() - 3];
        match read_frame(&mut r, MAX).await {
            Err(LinkError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected Io(UnexpectedEof), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn truncated_header_is_unexpected_eof() {
        let wire = framed(b"0123456789");
        let mut r = &wire[..2];
        match read_frame(&mut r, MAX).await {
            Err(LinkError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected Io(UnexpectedEof), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn header_split_across_reads_is_reassembled() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let wire = framed(b"split");
        let writer = tokio::spawn(async move {
            for byte in wire {
                a.write_all(&[byte]).await.unwrap();
                a.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(read_frame(&mut b, MAX).await.unwrap().unwrap(), b"split");
        writer.await.unwrap();
        assert!(read_frame(&mut b, MAX).await.unwrap().is_none());
    }
}
