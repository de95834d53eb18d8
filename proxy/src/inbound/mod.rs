//! The inbound side: peers connect to 4143 with mutual TLS, send the
//! transport header, then HTTP/2 (or HTTP/1.1 for upgrades, or opaque
//! bytes); requests go to the application on `<app ip>:<port>` carrying the
//! caller's SPIFFE ID in `x-mesh-client-id`.

mod app;
mod http;

use crate::{
    metered::Metered,
    metrics::{Direction, Metrics, RequestLabels, Str, TcpLabels},
    tls::spiffe::spiffe_id,
    transport_header::{SessionProtocol, TransportHeader},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{net::IpAddr, sync::Arc, time::Duration};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Everything the inbound side shares across connections.
pub struct Inbound {
    acceptor: TlsAcceptor,
    metrics: Arc<Metrics>,
    identity: Str,
    header_timeout: Duration,
    apps: app::AppClients,
    local: crate::metrics::Local,
    access_log: Option<Arc<crate::access_log::AccessLog>>,
    trace: Option<crate::trace::Tracing>,
}

/// How the inbound side reaches the app and what it records.
pub struct InboundSettings {
    /// The IP the app listens on.
    pub app_ip: IpAddr,
    /// How long a peer may take for its handshake and transport header.
    pub header_timeout: Duration,
    /// Connect timeout to the app.
    pub connect_timeout: Duration,
    /// This proxy's workload (the destination labels of its requests).
    pub local: crate::metrics::Local,
    /// Where access log lines go, when enabled.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// Request spans, when tracing is on.
    pub trace: Option<crate::trace::Tracing>,
}

impl Inbound {
    /// Builds the inbound side.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        metrics: Arc<Metrics>,
        identity: &str,
        settings: InboundSettings,
    ) -> Self {
        Inbound {
            acceptor: TlsAcceptor::from(tls),
            metrics,
            identity: identity.into(),
            header_timeout: settings.header_timeout,
            apps: app::AppClients::new(settings.app_ip, settings.connect_timeout),
            local: settings.local,
            access_log: settings.access_log,
            trace: settings.trace,
        }
    }

    /// Accepts peer connections forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(%error, "inbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(reason) = this.connection(tcp).await {
                    this.metrics.error(Direction::inbound, reason.0);
                    tracing::info!(%peer, error = %reason.1, "inbound connection refused");
                }
            });
        }
    }

    /// Handles one connection; the error is (metric reason, message).
    async fn connection(&self, tcp: TcpStream) -> Result<(), (&'static str, String)> {
        let tcp = Metered::new(
            tcp,
            self.metrics.clone(),
            TcpLabels {
                direction: Direction::inbound,
                ..TcpLabels::default()
            },
        );
        // The whole preamble (handshake + header) is bounded, so an idle or
        // slow client cannot hold a connection open.
        let preamble = async {
            let mut tls = self
                .acceptor
                .accept(tcp)
                .await
                .map_err(|e| ("tls handshake", format!("tls handshake failed: {e}")))?;
            let client_id = {
                let (_, session) = tls.get_ref();
                let cert = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .ok_or(("tls handshake", "client sent no certificate".to_string()))?;
                spiffe_id(cert).map_err(|e| ("client identity", e))?
            };
            let header = TransportHeader::read(&mut tls)
                .await
                .map_err(|e| ("transport header", e.to_string()))?;
            Ok::<_, (&'static str, String)>((tls, client_id, header))
        };
        let (mut tls, client_id, header) = tokio::time::timeout(self.header_timeout, preamble)
            .await
            .map_err(|_| ("timeout", "no handshake and header in time".to_string()))??;
        tls.get_mut().0.open(TcpLabels {
            direction: Direction::inbound,
            dst_service: Str::from(header.name.as_str()),
            tls: true,
        });

        let labels = RequestLabels {
            direction: Direction::inbound,
            dst_service: Str::from(header.name.as_str()),
            src_identity: Str::from(client_id.as_str()),
            src_namespace: crate::metrics::identity_namespace(&client_id),
            src_workload: Str::default(),
            dst_identity: self.identity.clone(),
            dst_namespace: self.local.namespace.clone(),
            dst_workload: self.local.workload.clone(),
            tls: true,
            route: Str::default(),
        };
        let conn = http::Connection {
            app: self.apps.for_port(header.port),
            metrics: self.metrics.clone(),
            client_id: ::http::HeaderValue::from_str(&client_id)
                .map_err(|_| ("client identity", "identity is not a header value".into()))?,
            recorder: Arc::new(self.metrics.recorder(labels)),
            access_log: self.access_log.clone(),
            trace: self.trace,
        };
        let io = TokioIo::new(tls);
        match header.protocol {
            SessionProtocol::Http2 => {
                let svc = hyper::service::service_fn(move |req| conn.clone().handle(req));
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .adaptive_window(true)
                    .serve_connection(io, svc)
                    .await
                    .map_err(|e| ("http", e.to_string()))
            }
            SessionProtocol::Http1 => {
                let svc = hyper::service::service_fn(move |req| conn.clone().handle(req));
                hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await
                    .map_err(|e| ("http", e.to_string()))
            }
            SessionProtocol::Opaque => {
                let mut app = self
                    .apps
                    .connect(header.port)
                    .await
                    .map_err(|e| ("app connect", e.to_string()))?;
                let mut io = io.into_inner();
                tokio::io::copy_bidirectional(&mut io, &mut app)
                    .await
                    .map(|_| ())
                    .map_err(|e| ("opaque", e.to_string()))
            }
        }
    }
}
