//! A gRPC channel over mutual TLS to a control-plane server, which must
//! present exactly the SPIFFE ID expected (the controller's): the workload
//! proves its own identity with its current certificate. The channel dials
//! only once the workload has a certificate, and reconnects by itself.

use super::{client_config, CertStore, TlsError, TrustBundle};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::{sync::Arc, time::Duration};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};
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
    let hostport = host_port(addr);
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
            // Verification reads the SPIFFE ID; the SNI only has to be valid.
            dial_tls(&uri, config, None, connect_timeout).await
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A channel to one workload's admin port (tap): our certificate, any peer
/// of the mesh (its certificate chains to the bundle and names a SPIFFE ID).
pub fn mtls_channel_any_workload(
    addr: &str,
    certs: Arc<CertStore>,
    bundle: Arc<TrustBundle>,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    let hostport = host_port(addr);
    let endpoint = Endpoint::from_shared(format!("http://{hostport}"))
        .map_err(|e| TlsError::Anchors(format!("address {addr:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let config = super::client::client_config_any_workload(certs, bundle)?;
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move { dial_tls(&uri, config, None, connect_timeout).await }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// `host:port` of a URL or an address (the scheme and a trailing slash dropped).
pub(super) fn host_port(addr: &str) -> &str {
    addr.split_once("://")
        .map_or(addr, |(_, rest)| rest)
        .trim_end_matches('/')
}

/// Dials `uri` and completes a TLS handshake under `config`, each within `timeout`.
/// The SNI is `sni`, else the URI's host (or the mesh's placeholder name when the host
/// is not a valid server name).
pub(super) async fn dial_tls(
    uri: &Uri,
    config: Arc<ClientConfig>,
    sni: Option<ServerName<'static>>,
    timeout: Duration,
) -> std::io::Result<TokioIo<TlsStream<TcpStream>>> {
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let timed_out = |what| std::io::Error::new(std::io::ErrorKind::TimedOut, what);
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| timed_out("connect timeout"))??;
    let _ = tcp.set_nodelay(true);
    let sni = match sni {
        Some(sni) => sni,
        None => ServerName::try_from(host)
            .or_else(|_| super::server_name())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
    };
    let tls = tokio::time::timeout(timeout, TlsConnector::from(config).connect(sni, tcp))
        .await
        .map_err(|_| timed_out("TLS handshake timeout"))??;
    Ok(TokioIo::new(tls))
}
