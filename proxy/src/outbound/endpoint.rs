//! The client for one endpoint. Meshed endpoints get one pooled HTTP/2
//! connection over mTLS to the peer proxy (transport header first);
//! upgrade requests get a dedicated HTTP/1.1 connection; unmeshed endpoints
//! are reached in plaintext.

use crate::{
    body::ProxyBody,
    discovery::EndpointMeta,
    errors::ProxyError,
    metrics::Str,
    tls::CertStore,
    transport_header::{SessionProtocol, TransportHeader},
};
use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::{client::TlsStream, TlsConnector};

/// Shared settings for building endpoint clients.
#[derive(Clone)]
pub struct EndpointSettings {
    pub certs: Arc<CertStore>,
    pub bundle: Arc<crate::tls::TrustBundle>,
    pub connect_timeout: Duration,
}

/// Per-endpoint state kept while the endpoint is in the set.
pub struct EndpointClient {
    /// The endpoint's address (what the app meant).
    pub addr: SocketAddr,
    /// The identity the peer must present (`""` if unmeshed).
    pub identity: Str,
    /// The workload and namespace behind the endpoint (metric labels).
    pub workload: Str,
    pub namespace: Str,
    mtls: Option<Mtls>,
    /// Pooled plaintext to an unmeshed endpoint: HTTP/1.1, and HTTP/2 with
    /// prior knowledge for requests that are HTTP/2 at the origin (gRPC).
    plain: Option<PlainEndpoint>,
    connect_timeout: Duration,
    h2: std::sync::Mutex<Option<SendRequest<ProxyBody>>>,
    /// Held while dialing, so concurrent requests share one new connection.
    dialing: tokio::sync::Mutex<()>,
    health: super::balance::Health,
    /// Connections open to the endpoint (the pooled HTTP/2 one and any
    /// upgraded HTTP/1.1 ones).
    connections: Arc<AtomicUsize>,
}

/// Counts a connection as open until dropped.
pub struct ConnGuard(Arc<AtomicUsize>);

/// Plaintext clients of an unmeshed endpoint, by protocol.
struct PlainEndpoint {
    h1: hyper_util::client::legacy::Client<crate::connect::FixedConnector, ProxyBody>,
    h2: hyper_util::client::legacy::Client<crate::connect::FixedConnector, ProxyBody>,
}

/// A byte stream to an endpoint: mTLS to its proxy, or plain TCP.
pub trait OpaqueIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> OpaqueIo for T {}

/// An opaque TCP session to an endpoint, counted as open until dropped.
pub struct OpaqueConn {
    pub io: Box<dyn OpaqueIo>,
    _open: ConnGuard,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl super::balance::HasHealth for EndpointClient {
    fn health(&self) -> &super::balance::Health {
        &self.health
    }
}

/// A request that failed: why, and the request itself when it never left
/// (then another endpoint may take it, whatever its body).
pub struct SendError {
    pub error: ProxyError,
    pub unsent: Option<Request<ProxyBody>>,
}

impl From<ProxyError> for SendError {
    fn from(error: ProxyError) -> Self {
        SendError {
            error,
            unsent: None,
        }
    }
}

/// Maps a failed send: a stream the peer refused never reached the
/// application, so it may be retried.
fn send_error(addr: String, e: hyper::Error) -> ProxyError {
    let refused = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        == Some(h2::Reason::REFUSED_STREAM);
    if refused {
        ProxyError::Refused {
            addr,
            reason: e.to_string(),
        }
    } else {
        ProxyError::exchange(addr, &e)
    }
}

struct Mtls {
    proxy_addr: SocketAddr,
    config: Arc<ClientConfig>,
}

impl EndpointClient {
    /// Builds the state for an endpoint discovery announced.
    pub fn new(meta: &EndpointMeta, settings: &EndpointSettings) -> Self {
        let (identity, mtls) = match &meta.tls {
            Some(t) => {
                let config = crate::tls::client_config(
                    settings.certs.clone(),
                    settings.bundle.clone(),
                    &t.identity,
                );
                match config {
                    Ok(config) => (
                        Str::from(t.identity.as_str()),
                        Some(Mtls {
                            proxy_addr: t.proxy_addr,
                            config,
                        }),
                    ),
                    Err(error) => {
                        // Cannot happen with a valid root store; fail closed.
                        tracing::error!(%error, addr = %meta.addr, "cannot build TLS config; endpoint unusable");
                        (Str::from(t.identity.as_str()), None)
                    }
                }
            }
            None => (Str::default(), None),
        };
        let plain = meta.tls.is_none().then(|| {
            let connector = crate::connect::fixed(meta.addr, settings.connect_timeout);
            PlainEndpoint {
                h1: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(connector.clone()),
                h2: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .http2_only(true)
                    .build(connector),
            }
        });
        EndpointClient {
            addr: meta.addr,
            identity,
            workload: meta.workload.clone(),
            namespace: meta.namespace.clone(),
            mtls,
            plain,
            connect_timeout: settings.connect_timeout,
            h2: std::sync::Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            health: Default::default(),
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// True when traffic to the endpoint is mutual TLS.
    pub fn is_meshed(&self) -> bool {
        self.mtls.is_some()
    }

    /// Takes a connection slot, or fails when `max` (if non-zero) are open.
    fn connection_slot(&self, max: usize) -> Result<ConnGuard, ProxyError> {
        let n = self.connections.fetch_add(1, Ordering::Relaxed);
        let guard = ConnGuard(self.connections.clone());
        if max > 0 && n >= max {
            return Err(ProxyError::BreakerOpen(format!(
                "{} ({n} connections open, limit {max})",
                self.addr
            )));
        }
        Ok(guard)
    }

    fn dial_addr(&self) -> SocketAddr {
        self.mtls.as_ref().map_or(self.addr, |m| m.proxy_addr)
    }

    async fn tcp(&self) -> Result<TcpStream, ProxyError> {
        let addr = self.dial_addr();
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::ConnectTimeout(addr.to_string()))?
            .map_err(|e| ProxyError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// Opens an mTLS session to the peer proxy and sends the transport header.
    async fn mtls(
        &self,
        mtls: &Mtls,
        protocol: SessionProtocol,
        name: &str,
    ) -> Result<TlsStream<TcpStream>, ProxyError> {
        let addr = mtls.proxy_addr.to_string();
        let tcp = self.tcp().await?;
        let connector = TlsConnector::from(mtls.config.clone());
        let sni = crate::tls::server_name().map_err(|e| ProxyError::Tls {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        let mut tls = tokio::time::timeout(self.connect_timeout, connector.connect(sni, tcp))
            .await
            .map_err(|_| ProxyError::ConnectTimeout(addr.clone()))?
            .map_err(|e| ProxyError::Tls {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let header = TransportHeader {
            port: self.addr.port(),
            protocol,
            name: name.to_string(),
        }
        .encode()
        .map_err(|e| ProxyError::Upstream {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        let write = async {
            tls.write_all(&header).await?;
            tls.flush().await
        };
        write.await.map_err(|e| ProxyError::Upstream {
            addr,
            reason: e.to_string(),
        })?;
        Ok(tls)
    }

    /// Returns a ready HTTP/2 sender, connecting if there is none.
    async fn h2(
        &self,
        mtls: &Mtls,
        name: &str,
        max_connections: usize,
    ) -> Result<SendRequest<ProxyBody>, ProxyError> {
        // The common case: an open connection, under a lock held for a clone.
        if let Some(s) = self.open_h2() {
            return Ok(s);
        }
        // Boxed: the dial's state (TLS and HTTP/2 handshakes) would otherwise
        // sit in every request's future, copied on every move.
        Box::pin(self.dial_h2(mtls, name, max_connections)).await
    }

    /// Connects to the peer proxy, unless another request already has.
    async fn dial_h2(
        &self,
        mtls: &Mtls,
        name: &str,
        max_connections: usize,
    ) -> Result<SendRequest<ProxyBody>, ProxyError> {
        let _dialing = self.dialing.lock().await;
        // Another request may have connected while this one waited.
        if let Some(s) = self.open_h2() {
            return Ok(s);
        }
        let guard = self.connection_slot(max_connections)?;
        let tls = self.mtls(mtls, SessionProtocol::Http2, name).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake::<_, ProxyBody>(TokioIo::new(tls))
            .await
            .map_err(|e| ProxyError::Upstream {
                addr: mtls.proxy_addr.to_string(),
                reason: e.to_string(),
            })?;
        let peer = mtls.proxy_addr;
        tokio::spawn(async move {
            let _open = guard;
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "peer connection closed");
            }
        });
        *self.h2_slot() = Some(sender.clone());
        Ok(sender)
    }

    fn h2_slot(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<ProxyBody>>> {
        self.h2
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn open_h2(&self) -> Option<SendRequest<ProxyBody>> {
        self.h2_slot().as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Sends a request (absolute URI); a meshed endpoint gets it in the
    /// HTTP/2 form proxies speak to each other. A request that could not be
    /// sent (no connection, a closed one, one going away) comes back in the
    /// error, in its original form.
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
        name: &str,
        max_connections: usize,
    ) -> Result<Response<ProxyBody>, SendError> {
        let Some(mtls) = &self.mtls else {
            // Plain HTTP/1.1 to an unmeshed endpoint uses one pooled
            // connection per request in flight (this one included), so the
            // in-flight count is the number of connections in use.
            let in_use = super::balance::HasHealth::health(self).in_flight();
            if max_connections > 0 && in_use > max_connections {
                return Err(ProxyError::BreakerOpen(format!(
                    "{} ({} connections in use, limit {max_connections})",
                    self.addr,
                    in_use - 1
                ))
                .into());
            }
            let Some(plain) = &self.plain else {
                // Meshed but without a usable TLS config: fail closed.
                return Err(ProxyError::Tls {
                    addr: self.addr.to_string(),
                    reason: "no TLS configuration for this endpoint".into(),
                }
                .into());
            };
            let client = if req.version() == http::Version::HTTP_2 {
                &plain.h2
            } else {
                &plain.h1
            };
            return client
                .request(req)
                .await
                .map(|r| r.map(ProxyBody::from))
                .map_err(|e| {
                    let addr = self.addr.to_string();
                    if e.is_connect() {
                        ProxyError::Connect {
                            addr,
                            reason: e.to_string(),
                        }
                    } else {
                        ProxyError::exchange(addr, &e)
                    }
                    .into()
                });
        };
        let addr = || mtls.proxy_addr.to_string();
        let mut sender = match self.h2(mtls, name, max_connections).await {
            Ok(s) => s,
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(req),
                })
            }
        };
        if let Err(e) = sender.ready().await {
            // The connection closed (or is going away) before this request.
            return Err(SendError {
                error: ProxyError::Refused {
                    addr: addr(),
                    reason: e.to_string(),
                },
                unsent: Some(req),
            });
        }
        super::http::for_h2_hop(&mut req);
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok(rsp.map(ProxyBody::from)),
            Err(mut e) => {
                let unsent = e.take_message().map(|mut r| {
                    super::http::from_h2_hop(&mut r);
                    r
                });
                Err(SendError {
                    error: send_error(addr(), e.into_error()),
                    unsent,
                })
            }
        }
    }

    /// Opens an opaque TCP session: mTLS to the peer proxy with an `opaque`
    /// transport header naming the endpoint's port, or plain TCP to an
    /// unmeshed endpoint.
    pub async fn open_opaque(
        &self,
        name: &str,
        max_connections: usize,
    ) -> Result<OpaqueConn, ProxyError> {
        let open = self.connection_slot(max_connections)?;
        let io: Box<dyn OpaqueIo> = match (&self.mtls, &self.plain) {
            (Some(mtls), _) => Box::new(self.mtls(mtls, SessionProtocol::Opaque, name).await?),
            (None, Some(_)) => Box::new(self.tcp().await?),
            (None, None) => {
                // Meshed but without a usable TLS config: fail closed.
                return Err(ProxyError::Tls {
                    addr: self.addr.to_string(),
                    reason: "no TLS configuration for this endpoint".into(),
                });
            }
        };
        Ok(OpaqueConn { io, _open: open })
    }

    /// Sends an upgrade request on its own HTTP/1.1 connection and splices
    /// the connections if the server switches protocols.
    pub async fn upgrade(
        &self,
        mut req: Request<ProxyBody>,
        downstream: hyper::upgrade::OnUpgrade,
        name: &str,
        max_connections: usize,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let guard = self.connection_slot(max_connections)?;
        let upstream_err = |e: hyper::Error| ProxyError::Upstream {
            addr: self.dial_addr().to_string(),
            reason: e.to_string(),
        };
        let mut sender = match &self.mtls {
            Some(mtls) => {
                let tls = self.mtls(mtls, SessionProtocol::Http1, name).await?;
                handshake_h1(TokioIo::new(tls))
                    .await
                    .map_err(upstream_err)?
            }
            None => {
                let tcp = self.tcp().await?;
                handshake_h1(TokioIo::new(tcp))
                    .await
                    .map_err(upstream_err)?
            }
        };
        // HTTP/1 on the wire: origin-form URI, authority in Host.
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = http::Uri::from(pq);
        }
        let mut rsp = sender.send_request(req).await.map_err(upstream_err)?;
        if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            crate::upgrade::splice(downstream, hyper::upgrade::on(&mut rsp), guard);
        }
        Ok(rsp.map(ProxyBody::from))
    }
}

async fn handshake_h1<I>(
    io: I,
) -> Result<hyper::client::conn::http1::SendRequest<ProxyBody>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "upgrade connection closed");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> EndpointClient {
        let meta = EndpointMeta {
            addr: "127.0.0.1:1".parse().unwrap(),
            tls: None,
            workload: Default::default(),
            namespace: Default::default(),
        };
        EndpointClient::new(
            &meta,
            &EndpointSettings {
                certs: Arc::new(CertStore::default()),
                bundle: crate::tls::TrustBundle::trusting_no_one(),
                connect_timeout: Duration::from_millis(100),
            },
        )
    }

    #[test]
    fn connection_limit_fails_fast_and_frees_slots() {
        let c = client();
        let a = c.connection_slot(2).unwrap();
        let _b = c.connection_slot(2).unwrap();
        let e = c.connection_slot(2).err().unwrap();
        assert_eq!(e.reason(), "breaker open");
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        drop(a);
        assert!(c.connection_slot(2).is_ok());
        assert!(c.connection_slot(0).is_ok(), "0 means unlimited");
    }
}
