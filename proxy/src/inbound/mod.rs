//! The inbound side. Peers connect to 4143 with mutual TLS, send the
//! transport header, then HTTP/2 (or HTTP/1.1 for upgrades, or opaque
//! bytes); requests go to the application on `<app ip>:<port>` carrying the
//! caller's SPIFFE ID in `x-mesh-client-id`. Connections iptables redirected
//! from an application port come from outside the mesh: plaintext, served
//! only where the port's mTLS mode is permissive. Every request (or opaque
//! connection) is authorized by the port's policy first.

mod app;
pub mod authz;
mod http;
pub mod policy;
pub mod target;

use self::authz::{Call, Caller, TlsMode};
use self::policy::{InboundPolicies, PortPolicy};
use crate::serve::{idle, Ended};
use crate::{
    detect::{self, Protocol},
    init::rules::PortRange,
    metered::Metered,
    metrics::{Direction, Metrics, RequestLabels, Str, TcpLabels},
    tls::spiffe::spiffe_id,
    transport_header::{SessionProtocol, TransportHeader},
};
use hyper_util::rt::TokioIo;
use mesh_proto::net::accept::Slot;
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// Everything the inbound side shares across connections.
pub struct Inbound {
    acceptor: TlsAcceptor,
    metrics: Arc<Metrics>,
    identity: Str,
    timeouts: crate::serve::ConnTimeouts,
    detect_timeout: Duration,
    opaque_ports: Vec<PortRange>,
    apps: app::AppClients,
    /// The ports callers may reach.
    ports: target::AppPorts,
    policies: InboundPolicies,
    /// The application's probe paths by port.
    probes: std::collections::HashMap<u16, Arc<[String]>>,
    local: crate::metrics::Local,
    access_log: Option<Arc<crate::access_log::AccessLog>>,
    trace: Option<crate::trace::Tracing>,
    tap: &'static crate::tap::Tap,
    drain: crate::serve::Drain,
    in_flight: Arc<crate::serve::InFlight>,
}

/// How the inbound side reaches the app and what it records.
pub struct InboundSettings {
    /// The IP the app listens on.
    pub app_ip: IpAddr,
    /// The ports callers may reach (never the proxy's own).
    pub app_ports: target::AppPorts,
    /// How long a peer may take for its handshake and transport header (and
    /// then its first request), and how long a connection may stay idle.
    pub timeouts: crate::serve::ConnTimeouts,
    /// How long a plaintext client may take to show its protocol.
    pub detect_timeout: Duration,
    /// Ports whose plaintext traffic is opaque (no detection).
    pub opaque_ports: Vec<PortRange>,
    /// Connect timeout to the app.
    pub connect_timeout: Duration,
    /// The application's HTTP probe endpoints (`port`, `path`), always
    /// allowed to plaintext callers.
    pub probes: Vec<(u16, String)>,
    /// This proxy's workload (the destination labels of its requests).
    pub local: crate::metrics::Local,
    /// Where access log lines go, when enabled.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// Request spans, when tracing is on.
    pub trace: Option<crate::trace::Tracing>,
    /// The proxy's taps.
    pub tap: &'static crate::tap::Tap,
    /// Shutting down: stop accepting, close connections gracefully.
    pub drain: crate::serve::Drain,
    /// Requests in flight to the app, at most.
    pub max_in_flight: usize,
}

/// The trust domain of a SPIFFE ID (`""` when it is not one).
fn trust_domain(id: &str) -> &str {
    id.strip_prefix("spiffe://")
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .unwrap_or_default()
}

/// A connection's failure: (metric reason, message).
type Refusal = (&'static str, String);

/// Who is on the other end of a connection, once known.
struct Peer {
    addr: SocketAddr,
    /// The verified SPIFFE ID (`None`: plaintext).
    identity: Option<Str>,
    /// The target the peer's proxy named (`""` for plaintext).
    dst_service: Str,
    /// Plaintext: the port's probe paths, if it has any.
    probes: Option<Arc<[String]>>,
}

impl Inbound {
    /// Builds the inbound side.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        metrics: Arc<Metrics>,
        identity: &str,
        policies: InboundPolicies,
        settings: InboundSettings,
    ) -> Self {
        Inbound {
            acceptor: TlsAcceptor::from(tls),
            metrics,
            identity: identity.into(),
            timeouts: settings.timeouts,
            detect_timeout: settings.detect_timeout,
            opaque_ports: settings.opaque_ports,
            apps: app::AppClients::new(settings.app_ip, settings.connect_timeout),
            ports: settings.app_ports,
            policies,
            probes: {
                let mut by_port = std::collections::HashMap::<u16, Vec<String>>::new();
                for (port, path) in settings.probes {
                    by_port.entry(port).or_default().push(path);
                }
                by_port.into_iter().map(|(p, v)| (p, v.into())).collect()
            },
            local: settings.local,
            access_log: settings.access_log,
            trace: settings.trace,
            tap: settings.tap,
            drain: settings.drain,
            in_flight: Arc::new(crate::serve::InFlight::new(settings.max_in_flight)),
        }
    }

    /// Accepts connections forever.
    pub async fn serve(self: Arc<Self>, listener: crate::serve::Limited) {
        let listen_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        loop {
            let (tcp, peer, slot) = tokio::select! {
                c = listener.accept() => c,
                () = self.drain.signaled() => return,
            };
            let _ = tcp.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                // Peers dial the inbound port itself; a connection redirected
                // from an application port comes from outside the mesh.
                let redirected = crate::orig_dst::original_dst(&tcp)
                    .map(|a| a.port())
                    .filter(|p| *p != listen_port);
                let result = match redirected {
                    Some(port) => this.plaintext(tcp, peer, port, slot).await,
                    None => {
                        // The handshake's state is allocated only for a
                        // client that sends something.
                        let deadline = tokio::time::Instant::now() + this.timeouts.header;
                        let mut slot = slot;
                        if crate::serve::first_bytes(&tcp, &mut slot, this.timeouts.header).await {
                            Box::pin(this.mutual_tls(tcp, peer, slot, deadline)).await
                        } else {
                            Err(("timeout", "peer sent nothing in time".into()))
                        }
                    }
                };
                if let Err(reason) = result {
                    this.metrics.error(Direction::inbound, reason.0);
                    tracing::info!(%peer, error = %reason.1, "inbound connection refused");
                }
            });
        }
    }

    /// A peer proxy's connection: handshake, transport header, session.
    async fn mutual_tls(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        mut slot: Slot,
        deadline: tokio::time::Instant,
    ) -> Result<(), Refusal> {
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
            // Anchors shared with another trust domain do not make its
            // workloads ours.
            if trust_domain(&client_id) != trust_domain(&self.identity.0) {
                return Err((
                    "client identity",
                    format!("client {client_id} is not in this mesh's trust domain"),
                ));
            }
            let header = TransportHeader::read(&mut tls)
                .await
                .map_err(|e| ("transport header", e.to_string()))?;
            Ok::<_, Refusal>((tls, client_id, header))
        };
        // Until the header is in, the connection may be shed for a new one.
        let preamble = async {
            tokio::select! {
                r = tokio::time::timeout_at(deadline, preamble) => r
                    .map_err(|_| ("timeout", "no handshake and header in time".to_string()))?,
                () = slot.shed() => Err(("shed", "closed to make room for a new connection".into())),
            }
        };
        let (mut tls, client_id, header) = preamble.await?;
        slot.activate();
        self.check_port(header.port, Some(&client_id), addr)?;
        let policy = self.policies.get(header.port).await;
        let dst_service = policy.current().known_name(&header.name);
        tls.get_mut().0.open(TcpLabels {
            direction: Direction::inbound,
            dst_service: dst_service.clone(),
            tls: true,
        });
        let protocol = match header.protocol {
            SessionProtocol::Http2 => Protocol::Http2,
            SessionProtocol::Http1 => Protocol::Http1,
            SessionProtocol::Opaque => Protocol::Opaque,
        };
        let peer = Peer {
            addr,
            identity: Some(Str::from(client_id.as_str())),
            dst_service,
            probes: None,
        };
        self.session(TokioIo::new(tls), protocol, header.port, peer, policy)
            .await
    }

    /// A client outside the mesh, redirected from application port `port`.
    async fn plaintext(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        port: u16,
        mut slot: Slot,
    ) -> Result<(), Refusal> {
        self.check_port(port, None, addr)?;
        let policy = self.policies.get(port).await;
        let probes = self.probes.get(&port).cloned();
        let refuse = || {
            let authz = policy.current();
            let by = authz.refuse_plaintext().clone();
            Err((
                "plaintext refused",
                format!(
                    "plaintext connection to port {port} refused: mTLS is strict ({})",
                    by.0
                ),
            ))
        };
        // A strict port still takes plaintext HTTP when it has probe
        // endpoints; every other request on it is refused one by one.
        let strict = policy.current().tls_mode() == TlsMode::Strict;
        if strict && probes.is_none() {
            return refuse();
        }
        let mut opaque = detect::skips_detection(port, &self.opaque_ports);
        // Clients of server-speaks-first ports wait for the app; a client of
        // another port that stays silent is one too, as far as we know.
        if !opaque {
            use crate::serve::First;
            match crate::serve::first(&tcp, &mut slot, self.detect_timeout).await {
                First::Data => {}
                First::Silent => opaque = true,
                First::Closed => return Ok(()),
                First::Shed => return Err(("shed", "closed to make room".into())),
            }
        }
        slot.activate();
        let protocol = if opaque {
            Protocol::Opaque
        } else {
            detect::detect(&tcp, self.detect_timeout)
                .await
                .map_err(|e| ("detect", e.to_string()))?
        };
        if strict && protocol == Protocol::Opaque {
            return refuse();
        }
        let mut tcp = Metered::new(tcp, self.metrics.clone(), TcpLabels::default());
        tcp.open(TcpLabels {
            direction: Direction::inbound,
            dst_service: Str::default(),
            tls: false,
        });
        let peer = Peer {
            addr,
            identity: None,
            dst_service: Str::default(),
            probes,
        };
        Box::pin(self.session(TokioIo::new(tcp), protocol, port, peer, policy)).await
    }

    /// Refuses a port the app does not serve (the proxy's own, or one it
    /// did not declare), logging who asked.
    fn check_port(&self, port: u16, client: Option<&str>, addr: SocketAddr) -> Result<(), Refusal> {
        self.ports.check(port).map_err(|refused| {
            tracing::warn!(
                client = client.unwrap_or("-"),
                %addr,
                port,
                %refused,
                "inbound connection to a port the application does not serve refused"
            );
            (refused.reason(), refused.to_string())
        })
    }

    /// An opaque session: authorized once, then bytes both ways until
    /// either side closes or a policy change denies the caller (the session
    /// is then closed).
    async fn opaque<I>(
        &self,
        mut io: I,
        port: u16,
        peer: &Peer,
        mut policy: PortPolicy,
    ) -> Result<(), Refusal>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let caller = Caller {
            identity: peer.identity.as_ref().map(|s| &*s.0),
            addr: peer.addr.ip(),
        };
        let call = Call { port, http: None };
        let denied = |by: &Str| {
            Err((
                "unauthorized",
                format!(
                    "opaque connection to port {port} from {} denied by {}",
                    caller.identity.unwrap_or("a plaintext client"),
                    by.0
                ),
            ))
        };
        {
            let authz = policy.current_and_update();
            let decision = authz.decide(&caller, &call);
            if !decision.allowed {
                return denied(decision.policy);
            }
        }
        let mut app = self
            .apps
            .connect(port)
            .await
            .map_err(|e| ("app connect", e.to_string()))?;
        let revoked = async {
            loop {
                policy.changed().await;
                let authz = policy.current_and_update();
                let decision = authz.recheck(&caller, &call);
                if !decision.allowed {
                    return decision.policy.clone();
                }
            }
        };
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut io, &mut app) => {
                r.map(|_| ()).map_err(|e| ("opaque", e.to_string()))
            }
            by = revoked => denied(&by),
        }
    }

    /// Serves one session to application port `port`.
    async fn session<I>(
        &self,
        io: TokioIo<I>,
        protocol: Protocol,
        port: u16,
        peer: Peer,
        policy: PortPolicy,
    ) -> Result<(), Refusal>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if protocol == Protocol::Opaque {
            return self.opaque(io.into_inner(), port, &peer, policy).await;
        }
        let src_identity = peer.identity.clone().unwrap_or_default();
        let labels = RequestLabels {
            direction: Direction::inbound,
            dst_service: peer.dst_service,
            src_namespace: crate::metrics::identity_namespace(&src_identity.0),
            src_identity,
            src_workload: Str::default(),
            dst_identity: self.identity.clone(),
            dst_namespace: self.local.namespace.clone(),
            dst_workload: self.local.workload.clone(),
            tls: peer.identity.is_some(),
            route: Str::default(),
        };
        let client_id = match &peer.identity {
            Some(id) => Some(
                ::http::HeaderValue::from_str(&id.0)
                    .map_err(|_| ("client identity", "identity is not a header value".into()))?,
            ),
            None => None,
        };
        // Shared by the connection's requests: one reference count per request.
        let conn = Arc::new(http::Connection {
            app: self.apps.for_port(port),
            metrics: self.metrics.clone(),
            client_id,
            identity: peer.identity,
            probes: peer.probes,
            peer: peer.addr,
            port,
            policy,
            recorder: Arc::new(self.metrics.recorder(labels)),
            in_flight: self.in_flight.clone(),
            access_log: self.access_log.clone(),
            trace: self.trace,
            tap: self.tap,
        });
        let activity = crate::serve::Activity::default();
        let counted = activity.clone();
        let svc = hyper::service::service_fn(move |req| {
            counted.request();
            conn.clone().handle(req)
        });
        let timeouts = self.timeouts.requests();
        let draining = self.drain.signaled();
        let ended = if protocol == Protocol::Http2 {
            let conn = crate::serve::http2().serve_connection(io, svc);
            idle::watch_until(
                conn,
                &activity,
                timeouts,
                |c| c.graceful_shutdown(),
                draining,
            )
            .await
        } else {
            let conn = crate::serve::http1(self.timeouts.header)
                .serve_connection(io, svc)
                .with_upgrades();
            idle::watch_until(
                conn,
                &activity,
                timeouts,
                |c| c.graceful_shutdown(),
                draining,
            )
            .await
        };
        match ended {
            Ended::Closed(r) | Ended::Idle(r) => r.map_err(|e| ("http", e.to_string())),
            Ended::NoRequest => Err(("timeout", "no request in time".into())),
        }
    }
}
