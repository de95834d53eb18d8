//! The original destination of a connection iptables redirected to the
//! outbound listener (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`).

use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Where the application meant to connect, or `None` when the connection
/// was not redirected (it was made to the listener itself: explicit mode).
pub fn original_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    let local = tcp.local_addr().ok()?;
    let sock = socket2::SockRef::from(tcp);
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    // Without conntrack the option fails (ENOENT); with conntrack but no
    // NAT it returns the listener's own address. Both mean "not redirected".
    let orig = orig.ok()?.as_socket()?;
    (orig != local).then_some(orig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_is_not_redirected() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(original_dst(&s), None);
        drop(c);
    }
}
