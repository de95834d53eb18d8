//! The transport header a client proxy writes right after the mTLS handshake.
//!
//! It tells the server proxy which application port the connection is for and
//! which protocol follows, so meshed traffic needs no iptables on the server
//! side. Layout (big endian):
//!
//! ```text
//! magic "mesh" | version u8 (1) | protocol u8 | port u16 | name_len u16 | name
//! ```
//!
//! `name` is the logical authority the client meant (may be empty).

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

const MAGIC: &[u8; 4] = b"mesh";
const VERSION: u8 = 1;
/// Bytes before the name.
const PREFIX_LEN: usize = 4 + 1 + 1 + 2 + 2;
/// The longest name accepted; an authority is far shorter in practice.
pub const MAX_NAME_LEN: usize = 1024;

/// What follows the header on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionProtocol {
    /// HTTP/1.1 (used for requests that upgrade, e.g. WebSocket).
    Http1,
    /// HTTP/2, the default between proxies.
    Http2,
    /// Opaque bytes, forwarded unchanged.
    Opaque,
}

/// A decoded transport header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    /// The application port on the server's workload; never 0.
    pub port: u16,
    /// The protocol that follows.
    pub protocol: SessionProtocol,
    /// The logical authority the client meant (may be empty).
    pub name: String,
}

/// Why a header could not be decoded or encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("transport header: bad magic (not a mesh proxy?)")]
    BadMagic,
    #[error("transport header: unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("transport header: unknown protocol {0}")]
    UnknownProtocol(u8),
    #[error("transport header: port 0")]
    PortZero,
    #[error("transport header: name of {0} bytes exceeds {MAX_NAME_LEN}")]
    NameTooLong(usize),
    #[error("transport header: name is not UTF-8")]
    NameNotUtf8,
    #[error("transport header: connection closed after {0} bytes")]
    Truncated(usize),
    #[error("transport header: read failed: {0}")]
    Io(String),
}

/// Result of decoding from a buffer that may hold only part of a header.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// More bytes are needed; at least this many in total.
    Incomplete(usize),
    /// A complete header and the number of bytes it used.
    Complete(TransportHeader, usize),
}

impl SessionProtocol {
    fn to_u8(self) -> u8 {
        match self {
            SessionProtocol::Http1 => 0,
            SessionProtocol::Http2 => 1,
            SessionProtocol::Opaque => 2,
        }
    }

    fn from_u8(b: u8) -> Result<Self, HeaderError> {
        match b {
            0 => Ok(SessionProtocol::Http1),
            1 => Ok(SessionProtocol::Http2),
            2 => Ok(SessionProtocol::Opaque),
            other => Err(HeaderError::UnknownProtocol(other)),
        }
    }
}

// === impl TransportHeader ===

impl TransportHeader {
    /// Encodes the header; fails on port 0 or an oversized name.
    pub fn encode(&self) -> Result<Bytes, HeaderError> {
        if self.port == 0 {
            return Err(HeaderError::PortZero);
        }
        let name = self.name.as_bytes();
        if name.len() > MAX_NAME_LEN {
            return Err(HeaderError::NameTooLong(name.len()));
        }
        let mut buf = BytesMut::with_capacity(PREFIX_LEN + name.len());
        buf.put_slice(MAGIC);
        buf.put_u8(VERSION);
        buf.put_u8(self.protocol.to_u8());
        buf.put_u16(self.port);
        buf.put_u16(name.len() as u16);
        buf.put_slice(name);
        Ok(buf.freeze())
    }

    /// Decodes a header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
        // Reject garbage as early as possible, even before the prefix is complete.
        let seen = buf.len().min(MAGIC.len());
        if buf[..seen] != MAGIC[..seen] {
            return Err(HeaderError::BadMagic);
        }
        if buf.len() < PREFIX_LEN {
            return Ok(Decoded::Incomplete(PREFIX_LEN));
        }
        let (protocol, port, name_len) = Self::decode_prefix(&buf[..PREFIX_LEN])?;
        let total = PREFIX_LEN + name_len;
        if buf.len() < total {
            return Ok(Decoded::Incomplete(total));
        }
        let name = std::str::from_utf8(&buf[PREFIX_LEN..total])
            .map_err(|_| HeaderError::NameNotUtf8)?
            .to_string();
        Ok(Decoded::Complete(
            TransportHeader {
                port,
                protocol,
                name,
            },
            total,
        ))
    }

    /// Validates the fixed prefix and returns protocol, port and name length.
    fn decode_prefix(p: &[u8]) -> Result<(SessionProtocol, u16, usize), HeaderError> {
        if &p[..4] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if p[4] != VERSION {
            return Err(HeaderError::UnsupportedVersion(p[4]));
        }
        let protocol = SessionProtocol::from_u8(p[5])?;
        let port = u16::from_be_bytes([p[6], p[7]]);
        if port == 0 {
            return Err(HeaderError::PortZero);
        }
        let name_len = u16::from_be_bytes([p[8], p[9]]) as usize;
        if name_len > MAX_NAME_LEN {
            return Err(HeaderError::NameTooLong(name_len));
        }
        Ok((protocol, port, name_len))
    }

    /// Reads exactly one header from `io`, consuming no byte past it.
    pub async fn read<R: AsyncRead + Unpin>(io: &mut R) -> Result<Self, HeaderError> {
        let mut prefix = [0u8; PREFIX_LEN];
        read_exact(io, &mut prefix).await?;
        let (protocol, port, name_len) = Self::decode_prefix(&prefix)?;
        let mut name = vec![0u8; name_len];
        if let Err(HeaderError::Truncated(n)) = read_exact(io, &mut name).await {
            return Err(HeaderError::Truncated(PREFIX_LEN + n));
        }
        let name = String::from_utf8(name).map_err(|_| HeaderError::NameNotUtf8)?;
        Ok(TransportHeader {
            port,
            protocol,
            name,
        })
    }
}

async fn read_exact<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) -> Result<(), HeaderError> {
    let mut filled = 0;
    while filled < buf.len() {
        match io.read(&mut buf[filled..]).await {
            Ok(0) => return Err(HeaderError::Truncated(filled)),
            Ok(n) => filled += n,
            Err(e) => return Err(HeaderError::Io(e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str) -> TransportHeader {
        TransportHeader {
            port: 8080,
            protocol: SessionProtocol::Http2,
            name: name.to_string(),
        }
    }

    #[test]
    fn round_trip() {
        for proto in [
            SessionProtocol::Http1,
            SessionProtocol::Http2,
            SessionProtocol::Opaque,
        ] {
            let h = TransportHeader {
                protocol: proto,
                ..header("web.demo.svc.cluster.local:80")
            };
            let bytes = h.encode().expect("encodes");
            let mut with_trailer = bytes.to_vec();
            with_trailer.extend_from_slice(b"GET / HTTP/1.1\r\n");
            match TransportHeader::decode(&with_trailer).expect("decodes") {
                Decoded::Complete(d, used) => {
                    assert_eq!(d, h);
                    assert_eq!(used, bytes.len());
                }
                other => panic!("expected complete, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_truncation_is_incomplete_never_a_panic() {
        let bytes = header("abc").encode().expect("encodes");
        for cut in 0..bytes.len() {
            match TransportHeader::decode(&bytes[..cut]) {
                Ok(Decoded::Incomplete(n)) => assert!(n > cut),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn oversized_name_is_an_error() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            header(&long).encode(),
            Err(HeaderError::NameTooLong(MAX_NAME_LEN + 1))
        );
        let mut raw = header("").encode().expect("encodes").to_vec();
        raw[8..10].copy_from_slice(&(u16::MAX).to_be_bytes());
        assert_eq!(
            TransportHeader::decode(&raw),
            Err(HeaderError::NameTooLong(u16::MAX as usize))
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            TransportHeader::decode(b"GET / HTTP/1.1\r\n"),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(TransportHeader::decode(b"mex"), Err(HeaderError::BadMagic));
        let mut raw = header("x").encode().expect("encodes").to_vec();
        raw[4] = 9;
        assert_eq!(
            TransportHeader::decode(&raw),
            Err(HeaderError::UnsupportedVersion(9))
        );
        raw[4] = VERSION;
        raw[5] = 7;
        assert_eq!(
            TransportHeader::decode(&raw),
            Err(HeaderError::UnknownProtocol(7))
        );
        raw[5] = 1;
        raw[6..8].copy_from_slice(&[0, 0]);
        assert_eq!(TransportHeader::decode(&raw), Err(HeaderError::PortZero));
        let mut bad_utf8 = header("ab").encode().expect("encodes").to_vec();
        let n = bad_utf8.len();
        bad_utf8[n - 1] = 0xff;
        assert_eq!(
            TransportHeader::decode(&bad_utf8),
            Err(HeaderError::NameNotUtf8)
        );
    }

    #[test]
    fn random_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && buf.len() >= 4 {
                buf[..4].copy_from_slice(MAGIC);
            }
            let _ = TransportHeader::decode(&buf);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn protocol() -> impl Strategy<Value = SessionProtocol> {
            prop_oneof![
                Just(SessionProtocol::Http1),
                Just(SessionProtocol::Http2),
                Just(SessionProtocol::Opaque),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Whatever a peer sends, decoding ends in a header, a request
            /// for more bytes, or an error: never a panic, never a name
            /// over the limit, never port 0.
            #[test]
            fn decoding_any_bytes_is_total(
                magic in any::<bool>(),
                mut bytes in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                if magic && bytes.len() >= 4 {
                    bytes[..4].copy_from_slice(MAGIC);
                }
                match TransportHeader::decode(&bytes) {
                    Ok(Decoded::Complete(h, used)) => {
                        prop_assert!(used <= bytes.len());
                        prop_assert!(h.port != 0);
                        prop_assert!(h.name.len() <= MAX_NAME_LEN);
                    }
                    Ok(Decoded::Incomplete(need)) => prop_assert!(need > bytes.len()),
                    Err(_) => {}
                }
            }

            /// Every header that encodes decodes to itself, from a buffer
            /// and from a stream, and every cut of it is incomplete.
            #[test]
            fn encoding_round_trips(
                port in 1u16..,
                protocol in protocol(),
                name in "[a-z0-9.:-]{0,80}",
                rest in proptest::collection::vec(any::<u8>(), 0..16),
            ) {
                let h = TransportHeader { port, protocol, name };
                let bytes = h.encode().unwrap();
                for cut in 0..bytes.len() {
                    prop_assert!(
                        matches!(TransportHeader::decode(&bytes[..cut]), Ok(Decoded::Incomplete(_))),
                        "cut at {}", cut
                    );
                }
                let mut buf = bytes.to_vec();
                buf.extend_from_slice(&rest);
                prop_assert_eq!(
                    TransportHeader::decode(&buf).unwrap(),
                    Decoded::Complete(h.clone(), bytes.len())
                );
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let mut io = &buf[..];
                let read = rt.block_on(TransportHeader::read(&mut io)).unwrap();
                prop_assert_eq!(read, h);
                prop_assert_eq!(io, &rest[..]);
            }
        }
    }

    #[tokio::test]
    async fn read_consumes_only_the_header() {
        let mut raw = header("svc:80").encode().expect("encodes").to_vec();
        raw.extend_from_slice(b"rest");
        let mut io = &raw[..];
        let h = TransportHeader::read(&mut io).await.expect("reads");
        assert_eq!(h, header("svc:80"));
        assert_eq!(io, b"rest");
    }

    #[tokio::test]
    async fn read_reports_truncation() {
        let raw = header("svc:80").encode().expect("encodes");
        let mut io = &raw[..raw.len() - 2];
        assert_eq!(
            TransportHeader::read(&mut io).await,
            Err(HeaderError::Truncated(raw.len() - 2))
        );
    }
}
