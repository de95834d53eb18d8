//! Protocol detection by peeking at the first bytes a client sends: the
//! HTTP/2 connection preface, an HTTP/1.x request line, or anything else
//! (opaque TCP). Waiting is bounded; a client that sends nothing in time is
//! treated as opaque, and well-known server-speaks-first ports skip
//! detection entirely so their clients never wait.

use crate::init::rules::PortRange;
use std::time::Duration;
use tokio::net::TcpStream;

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Request-line prefixes of HTTP/1.x methods.
const H1_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Ports whose servers speak first (SMTP, MySQL, PostgreSQL, Redis, …):
/// their clients wait for a banner, so detection would only stall them.
pub const SERVER_FIRST_PORTS: &[u16] = &[25, 587, 3306, 4222, 5432, 6379, 11211, 27017];

/// Classifies the bytes seen so far; `None` means more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    let mut undecided = false;
    for m in H1_METHODS {
        let n = buf.len().min(m.len());
        if buf[..n] == m[..n] {
            if n == m.len() {
                return Some(Protocol::Http1);
            }
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(Protocol::Opaque)
    }
}

/// True when `port` is configured (or known) to skip detection.
pub fn skips_detection(port: u16, opaque_ports: &[PortRange]) -> bool {
    SERVER_FIRST_PORTS.contains(&port)
        || opaque_ports
            .iter()
            .any(|PortRange(lo, hi)| (*lo..=*hi).contains(&port))
}

/// Peeks at `tcp` until the protocol is known or `timeout` passes (then it
/// is opaque). Nothing is consumed: the bytes stay for whoever reads next.
pub async fn detect(tcp: &TcpStream, timeout: Duration) -> std::io::Result<Protocol> {
    let mut buf = [0u8; 32];
    let peeking = async {
        loop {
            let n = tcp.peek(&mut buf).await?;
            if n == 0 {
                // Closed before saying anything.
                return Ok(Protocol::Opaque);
            }
            if let Some(p) = classify(&buf[..n]) {
                return Ok(p);
            }
            if n == buf.len() {
                return Ok(Protocol::Opaque);
            }
            // Wait for more bytes without spinning.
            tcp.readable().await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    match tokio::time::timeout(timeout, peeking).await {
        Ok(r) => r,
        Err(_) => Ok(Protocol::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), None, "preface prefix needs more");
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"P"), None, "PRI, POST, PUT or PATCH");
        assert_eq!(classify(b""), None);
        assert_eq!(
            classify(b"\x16\x03\x01\x02"),
            Some(Protocol::Opaque),
            "TLS hello"
        );
        assert_eq!(
            classify(b"*2\r\n$4\r\nPING"),
            Some(Protocol::Opaque),
            "redis"
        );
        assert_eq!(classify(b"GETX"), Some(Protocol::Opaque));
        assert_eq!(classify(b"PRI * HTTP/1.1"), Some(Protocol::Opaque));
    }

    #[test]
    fn server_first_ports_skip_detection() {
        assert!(skips_detection(5432, &[]));
        let opaque = [PortRange(9000, 9000), PortRange(7000, 7010)];
        assert!(skips_detection(9000, &opaque));
        assert!(skips_detection(7005, &opaque));
        assert!(!skips_detection(8080, &opaque));
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn detects_over_a_socket_without_consuming() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET /x HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(
            detect(&s, Duration::from_secs(1)).await.unwrap(),
            Protocol::Http1
        );
        let mut first = [0u8; 3];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET", "the peeked bytes are still there");
    }

    #[tokio::test]
    async fn a_request_split_across_writes_is_still_detected() {
        let (mut c, s) = pair().await;
        c.write_all(b"PRI * HT").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.write_all(&H2_PREFACE[8..]).await.unwrap();
            c
        });
        assert_eq!(
            detect(&s, Duration::from_secs(1)).await.unwrap(),
            Protocol::Http2
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let (_c, s) = pair().await;
        let start = std::time::Instant::now();
        assert_eq!(
            detect(&s, Duration::from_millis(100)).await.unwrap(),
            Protocol::Opaque
        );
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(500),
            "{took:?}"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Any bytes classify (or ask for more) without panicking, and a
            /// decision never changes when more bytes arrive.
            #[test]
            fn classification_is_total_and_stable(
                bytes in proptest::collection::vec(any::<u8>(), 0..40),
                more in proptest::collection::vec(any::<u8>(), 0..40),
            ) {
                if let Some(p) = classify(&bytes) {
                    let mut longer = bytes.clone();
                    longer.extend_from_slice(&more);
                    prop_assert_eq!(classify(&longer), Some(p));
                }
            }

            /// A request line of any method detected is HTTP/1 however it
            /// is split; the HTTP/2 preface is HTTP/2.
            #[test]
            fn requests_are_detected_from_any_prefix(
                method in proptest::sample::select(H1_METHODS.to_vec()),
                path in "/[a-z0-9/]{0,20}",
                cut in 0usize..64,
            ) {
                let line = [method, path.as_bytes(), b" HTTP/1.1\r\n"].concat();
                let cut = cut.min(line.len());
                match classify(&line[..cut]) {
                    None => prop_assert!(cut < method.len()),
                    Some(p) => prop_assert_eq!(p, Protocol::Http1),
                }
                prop_assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
            }
        }
    }
}
