//! HTTP/1.1 upgrades (WebSocket and friends): once both sides answered
//! `101 Switching Protocols`, the two upgraded connections are spliced.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// True for a request asking to switch protocols.
pub fn is_upgrade<B>(req: &http::Request<B>) -> bool {
    req.version() <= http::Version::HTTP_11 && req.headers().contains_key(http::header::UPGRADE)
}

/// Copies bytes both ways between the two upgraded connections; `held`
/// (e.g. a connection-limit slot) is released when they close.
pub fn splice<G: Send + 'static>(downstream: OnUpgrade, upstream: OnUpgrade, held: G) {
    tokio::spawn(async move {
        let _held = held;
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(%error, "upgraded connection closed with an error");
        }
    });
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1); kept when upgrading, since
/// the upgrade travels on them.
pub fn strip_hop_headers(headers: &mut http::HeaderMap, upgrading: bool) {
    use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
    if !upgrading {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(TRANSFER_ENCODING);
    headers.remove(TRAILER);
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}
