//! A gRPC channel over mutual TLS to a control-plane server, which must
//! present exactly the SPIFFE ID expected (the controller's): the workload
//! proves its own identity with its current certificate. The channel dials
//! only once the workload has a certificate, and reconnects by itself.

use super::{client_config, CertStore, TlsError, TrustBundle};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::{sync::Arc, time::Duration};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// A lazily connected channel to `addr` (`host:port`, or a URL whose scheme
/// is ignored: the connection is always mutual TLS).
pub fn mtls_channel(
    addr: &str,
    certs: Arc<CertStore>,
    bundle: Arc<TrustBundle>,
    expected: &str,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    let hostport = addr
        .split_once("://")
        .map_or(addr, |(_, rest)| rest)
        .trim_end_matches('/');
    let endpoint = Endpoint::from_shared(format!("http://{hostport}"))
        .map_err(|e| TlsError::Anchors(format!("control-plane address {addr:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let config = client_config(certs.clone(), bundle, expected)?;
    let connector = tower::service_fn(move |uri: Uri| {
        let (certs, config) = (certs.clone(), config.clone());
        async move {
            certs.installed().await;
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let tcp =
                tokio::time::timeout(connect_timeout, TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout")
                    })??;
            let _ = tcp.set_nodelay(true);
            // Verification reads the SPIFFE ID; the SNI only has to be valid.
            let sni = ServerName::try_from(host.clone())
                .or_else(|_| super::server_name())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio::time::timeout(
                connect_timeout,
                TlsConnector::from(config).connect(sni.to_owned(), tcp),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout")
            })??;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
