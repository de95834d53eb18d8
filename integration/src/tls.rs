//! Raw TLS clients that dial a proxy's inbound listener directly, to check
//! what it accepts and refuses.

use mesh_identity::files;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use std::{path::Path, sync::Arc, time::Duration};

/// Accepts any server certificate: these clients test the server's checks
/// of *them*, not the other way round.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client certificate for `identity` issued by the CA in `identity_dir`.
pub fn client_cert(identity_dir: &Path, identity: &str) -> (String, String) {
    let issuer = files::load_issuer(identity_dir).expect("issuer");
    issuer
        .issue_serving_cert(&[], &[], identity, Duration::from_secs(3600))
        .expect("client cert")
}

/// A TLS client config presenting `cert` (chain PEM, key PEM), or none.
pub fn client_config(cert: Option<(String, String)>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
    };
    Arc::new(config)
}

/// A transport header (what a client proxy sends after the handshake) for
/// application `port`: `protocol` 0 is HTTP/1.1, 1 HTTP/2, 2 opaque.
pub fn transport_header(protocol: u8, port: u16, name: &str) -> Vec<u8> {
    let mut h = b"mesh\x01".to_vec();
    h.push(protocol);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&(name.len() as u16).to_be_bytes());
    h.extend_from_slice(name.as_bytes());
    h
}

/// Writes `bytes` to `io`, then returns what came back before the
/// connection ended (at most 5 s).
pub async fn exchange<S>(mut io: S, bytes: &[u8]) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.write_all(bytes).await;
    let _ = io.flush().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// Dials a proxy's inbound listener with TLS (presenting `cert`, if any),
/// sends a transport header for `port` and an HTTP/1.1 `GET /x`, and
/// returns the answer (or why the handshake failed).
pub async fn tls_request(
    inbound: std::net::SocketAddr,
    cert: Option<(String, String)>,
    port: u16,
) -> String {
    let mut bytes = transport_header(0, port, "");
    bytes.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    tls_exchange(inbound, cert, &bytes).await
}

/// Dials `inbound` with TLS (presenting `cert`, if any) and exchanges `bytes`.
pub async fn tls_exchange(
    inbound: std::net::SocketAddr,
    cert: Option<(String, String)>,
    bytes: &[u8],
) -> String {
    let tcp = tokio::net::TcpStream::connect(inbound)
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(client_config(cert));
    let name = ServerName::try_from("proxy.mesh.local").expect("name");
    match connector.connect(name, tcp).await {
        Ok(tls) => exchange(tls, bytes).await,
        Err(e) => format!("handshake failed: {e}"),
    }
}
