//! A connector for pooled HTTP clients that always dials one address,
//! whatever the request URI says, so a request keeps the logical authority
//! the application used while going to the endpoint discovery chose.

use hyper_util::rt::TokioIo;
use std::{net::SocketAddr, time::Duration};
use tokio::net::TcpStream;

/// A connector bound to one address.
pub type FixedConnector = tower::util::BoxCloneSyncService<
    http::Uri,
    TokioIo<TcpStream>,
    Box<dyn std::error::Error + Send + Sync>,
>;

/// Dials `addr` (with `timeout`) for every connection the pool opens.
pub fn fixed(addr: SocketAddr, timeout: Duration) -> FixedConnector {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |_uri: http::Uri| async move {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))??;
        let _ = tcp.set_nodelay(true);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(tcp))
    }))
}
