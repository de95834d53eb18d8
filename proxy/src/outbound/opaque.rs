//! Opaque TCP on the outbound side: one endpoint per connection (round
//! robin, the next one when connecting fails), reached over mTLS with an
//! `opaque` transport header, or in plaintext when unmeshed; then bytes are
//! copied both ways until either side closes.

use super::EndpointClient;
use crate::{
    discovery::EndpointSet,
    errors::ProxyError,
    metered::Metered,
    metrics::{Direction, Str, TcpLabels},
};
use std::{net::SocketAddr, time::Duration};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How many endpoints a connection tries before giving up.
const MAX_TRIES: usize = 3;

/// Carries `io` to one of `set`'s endpoints; the connection counts as open (with
/// `name` and whether the hop is mTLS) once an endpoint is connected.
pub async fn forward(
    mut io: Metered<TcpStream>,
    set: &EndpointSet<EndpointClient>,
    name: &Str,
) -> Result<(u64, u64), ProxyError> {
    let tries = set.endpoints.len().min(MAX_TRIES);
    let mut last = ProxyError::NoEndpoints(name.0.to_string());
    for _ in 0..tries {
        let Some(ep) = set.pick() else { break };
        match ep.open_opaque(&name.0, 0).await {
            Ok(mut conn) => {
                io.open(TcpLabels {
                    direction: Direction::outbound,
                    dst_service: name.clone(),
                    tls: ep.is_meshed(),
                });
                return tokio::io::copy_bidirectional(&mut io, &mut conn.io)
                    .await
                    .map_err(|e| ProxyError::Upstream {
                        addr: ep.addr.to_string(),
                        reason: e.to_string(),
                    });
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.addr, error = %e, "opaque connect failed");
                last = e;
            }
        }
    }
    Err(last)
}

/// Carries `tcp` unchanged to `dst` (a destination outside the mesh).
pub async fn forward_plain<I: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: I,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<(u64, u64), ProxyError> {
    let mut upstream = tokio::time::timeout(timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| ProxyError::ConnectTimeout(dst.to_string()))?
        .map_err(|e| ProxyError::Connect {
            addr: dst.to_string(),
            reason: e.to_string(),
        })?;
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut tcp, &mut upstream)
        .await
        .map_err(|e| ProxyError::Upstream {
            addr: dst.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn plain_forwarding_copies_both_ways_and_reports_bytes() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            s.write_all(b"banner\n").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let fwd = tokio::spawn(async move {
            let (tcp, _) = front.accept().await.unwrap();
            forward_plain(tcp, dst, Duration::from_secs(1)).await
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut banner = [0u8; 7];
        c.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"banner\n");
        c.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        c.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        drop(c);
        let (up, down) = fwd.await.unwrap().unwrap();
        assert_eq!((up, down), (4, 11));
    }

    #[tokio::test]
    async fn plain_forwarding_to_a_closed_port_is_a_connect_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = l.local_addr().unwrap();
        drop(l);
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = front.accept().await.unwrap();
        let err = forward_plain(tcp, dst, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "connect failed", "{err}");
    }
}
