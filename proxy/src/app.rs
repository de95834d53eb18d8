//! Wires the proxy together: admin first, then the certificate, then the
//! inbound and outbound listeners once a certificate is installed.

use crate::{
    admin,
    config::{grpc_url, Config},
    discovery::Resolver,
    identity::{self, IdentityClient},
    inbound::{policy::InboundPolicies, Inbound, InboundSettings},
    metrics::Metrics,
    outbound::{EndpointClient, EndpointSettings, Outbound, OutboundSettings},
    tls::{self, CertStore},
};
use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Runs the proxy until the process is told to stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::with_limits(config.series));
    let access_log = config
        .access_log
        .then(|| Arc::new(crate::access_log::AccessLog::stdout()));
    let trace = config
        .trace
        .as_ref()
        .map(|t| crate::trace::Tracing::new(t.sampling));
    let local = crate::metrics::Local {
        namespace: config.namespace.as_str().into(),
        workload: config.workload.as_str().into(),
    };
    let bundle = tls::TrustBundle::from_pem(&config.trust_anchors_pem)
        .context("MESH_PROXY_TRUST_ANCHORS_FILE")?;
    match &config.trust_anchors_file {
        Some(path) => {
            tokio::spawn(identity::bundle::watch(
                bundle.clone(),
                path.clone(),
                config.trust_anchors_poll,
                metrics.clone(),
            ));
        }
        None => identity::bundle::export(&bundle.current(), &metrics),
    }
    let certs = Arc::new(CertStore::default());
    let tap = crate::tap::Tap::leak(config.tap.limits.clone(), config.tap.identities.clone());

    // Bind everything first so a port conflict fails at once.
    let admin_l = bind(config.admin_addr, "MESH_PROXY_ADMIN_ADDR").await?;
    let inbound_l = bind(config.inbound_addr, "MESH_PROXY_INBOUND_ADDR").await?;
    let outbound_l = bind(config.outbound_addr, "MESH_PROXY_OUTBOUND_ADDR").await?;
    // Redirected IPv6 connections arrive on the IPv6 twin of each address.
    let outbound_l6 = bind_v6_twin(config.outbound_addr);
    let inbound_l6 = bind_v6_twin(config.inbound_addr);

    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);

    let client = IdentityClient::new(
        &grpc_url(&config.identity_addr, true),
        &config.identity_server_name,
        bundle.clone(),
        config.identity.clone(),
        config.token.clone(),
    )
    .context("MESH_PROXY_IDENTITY_ADDR")?;
    tokio::spawn(identity::run(
        client,
        certs.clone(),
        metrics.clone(),
        ready_tx,
    ));

    let (drain_signal, drain) = crate::serve::Drain::new();
    let timeouts = crate::serve::ConnTimeouts {
        header: config.header_timeout,
        idle: config.idle_timeout,
    };
    let settings = EndpointSettings {
        certs: certs.clone(),
        bundle: bundle.clone(),
        connect_timeout: config.connect_timeout,
    };
    // Mutual TLS with the workload's certificate, to the controller's
    // identity: the channel dials once the first certificate is in.
    let controller = mesh_proto::workload::mtls_channel(
        &config.destination_addr,
        certs.clone(),
        bundle.clone(),
        &config.destination_identity,
        config
            .connect_timeout
            .max(std::time::Duration::from_secs(2)),
    )
    .context("MESH_PROXY_DESTINATION_ADDR")?;
    let resolver = Resolver::new(
        controller,
        format!("{} {}", config.identity, config.workload),
        Arc::new(move |meta| EndpointClient::new(meta, &settings)),
        metrics.clone(),
        config.max_targets,
    )
    .context("MESH_PROXY_DESTINATION_ADDR")?;
    let resolver_channel = resolver.channel();
    let outbound = Arc::new(Outbound::new(
        resolver,
        metrics.clone(),
        &config.identity,
        OutboundSettings {
            discovery_timeout: config.discovery_timeout,
            detect_timeout: config.detect_timeout,
            connect_timeout: config.connect_timeout,
            opaque_ports: config.opaque_ports.clone(),
            local: local.clone(),
            timeouts,
            drain: drain.clone(),
            max_in_flight: config.max_in_flight,
            access_log: access_log.clone(),
            trace,
            tap,
        },
    ));
    let refresh: admin::Refresh = {
        let (outbound, metrics) = (outbound.clone(), metrics.clone());
        Arc::new(move || outbound.export_balancer_gauges(&metrics))
    };
    let admin_l = limited(
        &metrics,
        "admin",
        admin_l,
        config.admin_max_connections,
        crate::serve::HTTP_REFUSAL,
    );
    tokio::spawn(admin::serve(
        admin_l,
        metrics.clone(),
        ready_rx.clone(),
        refresh,
        admin::Tls {
            certs: certs.clone(),
            bundle: bundle.clone(),
            tap: (!config.tap.identities.is_empty())
                .then(|| {
                    mesh_proto::workload::server_config_optional_client(
                        certs.clone(),
                        bundle.clone(),
                    )
                    .map(|c| admin::TapListener {
                        tap,
                        acceptor: tokio_rustls::TlsAcceptor::from(c),
                        idle: std::time::Duration::from_secs(60),
                    })
                })
                .transpose()
                .context("tap TLS")?,
        },
        config.header_timeout,
        drain.clone(),
    ));
    let policies = InboundPolicies::new(
        resolver_channel,
        format!("{}/{}", config.namespace, config.pod_name),
        config.default_inbound_policy,
        metrics.clone(),
        config.discovery_timeout,
    );
    policies.prefetch(config.inbound_ports.as_deref().unwrap_or_default());
    let inbound = Arc::new(Inbound::new(
        tls::server_config(certs.clone(), bundle)?,
        metrics.clone(),
        &config.identity,
        policies,
        InboundSettings {
            app_ip: config.app_ip,
            app_ports: crate::inbound::target::AppPorts::new(
                &[
                    config.inbound_addr.port(),
                    config.outbound_addr.port(),
                    config.admin_addr.port(),
                ],
                config.inbound_ports.as_deref(),
            ),
            timeouts,
            detect_timeout: config.detect_timeout,
            opaque_ports: config.opaque_ports.clone(),
            probes: config.inbound_probes.clone(),
            connect_timeout: config.connect_timeout,
            local,
            access_log,
            trace,
            tap,
            drain,
            max_in_flight: config.max_in_flight,
        },
    ));

    tracing::info!(
        identity = %config.identity,
        outbound = %config.outbound_addr,
        inbound = %config.inbound_addr,
        admin = %config.admin_addr,
        "waiting for the first certificate"
    );
    tokio::select! {
        r = ready_rx.wait_for(|r| *r) => { r.context("identity task ended")?; }
        _ = shutdown() => return Ok(()),
    }
    let max = config.max_connections;
    let http = crate::serve::HTTP_REFUSAL;
    // The traffic listeners' connection counts, to wait for at shutdown.
    let mut open = Vec::new();
    if let Some(l) = inbound_l6 {
        let l = limited(&metrics, "inbound", l, max, b"");
        open.push(l.stats());
        tokio::spawn(inbound.clone().serve(l));
    }
    if let Some(l) = outbound_l6 {
        let l = limited(&metrics, "outbound", l, max, http);
        open.push(l.stats());
        tokio::spawn(outbound.clone().serve(l));
    }
    let l = limited(&metrics, "inbound", inbound_l, max, b"");
    open.push(l.stats());
    tokio::spawn(inbound.serve(l));
    let l = limited(&metrics, "outbound", outbound_l, max, http);
    open.push(l.stats());
    tokio::spawn(outbound.serve(l));
    tracing::info!("proxy ready");
    shutdown().await;
    drain_connections(&drain_signal, &open, config.shutdown_grace).await;
    Ok(())
}

/// Drains: `/ready` fails, the listeners close, HTTP connections shut down
/// gracefully; returns once every connection is closed, or after `grace`.
async fn drain_connections(
    signal: &crate::serve::DrainSignal,
    open: &[mesh_proto::net::accept::StatsHandle],
    grace: std::time::Duration,
) {
    let count = || open.iter().map(|s| s.get().open).sum::<usize>();
    tracing::info!(
        connections = count(),
        grace = ?grace,
        "shutting down: draining connections"
    );
    signal.start();
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let left = count();
        if left == 0 {
            tracing::info!("drained; exiting");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                connections = left,
                "grace period over; exiting with connections open"
            );
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            // A second signal cuts the wait short.
            () = shutdown() => {
                tracing::warn!(connections = left, "second signal; exiting now");
                return;
            }
        }
    }
}

/// Caps `listener` at `max` connections, its counters exported as `name`.
fn limited(
    metrics: &Metrics,
    name: &'static str,
    listener: TcpListener,
    max: usize,
    refusal: &'static [u8],
) -> crate::serve::Limited {
    let l = crate::serve::Limited::new(listener, max, refusal);
    metrics.listen(name, l.stats());
    l
}

async fn bind(addr: std::net::SocketAddr, var: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{var}: cannot listen on {addr}"))
}

/// For `127.0.0.1:p` a listener on `[::1]:p`, for `0.0.0.0:p` one on
/// `[::]:p` (IPv6 only, so it does not clash with the IPv4 one); `None` for
/// other addresses or when the host has no IPv6.
fn bind_v6_twin(addr: std::net::SocketAddr) -> Option<TcpListener> {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => Ipv6Addr::LOCALHOST,
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv6Addr::UNSPECIFIED,
        _ => return None,
    };
    let twin = SocketAddr::new(IpAddr::V6(ip), addr.port());
    let bind = || -> std::io::Result<TcpListener> {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_only_v6(true)?;
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&twin.into())?;
        sock.listen(1024)?;
        TcpListener::from_std(sock.into())
    };
    match bind() {
        Ok(l) => Some(l),
        Err(error) => {
            tracing::debug!(%twin, %error, "no IPv6 listener");
            None
        }
    }
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
