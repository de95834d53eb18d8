//! Connections iptables redirected to the outbound port. The original
//! destination is the target; what discovery knows about it decides the
//! rest: unknown destinations get exactly the connection the app asked for,
//! opaque ports get opaque TCP to an endpoint, everything else is detected
//! and, when it is HTTP, served by the same route stacks as explicit mode.

use super::{http::Connection, opaque, Outbound};
use crate::{
    detect::{self, Protocol},
    errors::ProxyError,
    metered::Metered,
    metrics::{Direction, Str, TcpLabels},
};
use std::{net::SocketAddr, sync::Arc};
use tokio::net::TcpStream;

/// Handles one redirected connection until it closes.
pub async fn serve(ob: Arc<Outbound>, mut io: Metered<TcpStream>, dst: SocketAddr) {
    let target = dst.to_string();
    let dest = ob.resolver.resolve(&target);
    let known = dest
        .endpoints(ob.discovery_timeout)
        .await
        .is_some_and(|set| set.exists);
    if !known {
        // Not part of the mesh (or discovery is unreachable for a target
        // never seen): the app gets the connection it asked for.
        tracing::debug!(%dst, "destination unknown to the mesh; forwarding unchanged");
        // Outside addresses are unbounded: labelled by kind and port.
        io.open(tcp_labels(
            crate::outbound::logical::external_label(&target),
            false,
        ));
        let r = opaque::forward_plain(io, dst, ob.connect_timeout).await;
        report(&ob, &target, r);
        return;
    }

    let watch = ob.policies.resolve(&target);
    let policy = watch.current(ob.discovery_timeout).await;
    let opaque = policy.as_ref().is_some_and(|p| p.opaque)
        || detect::skips_detection(dst.port(), &ob.opaque_ports);
    let protocol = if opaque {
        Protocol::Opaque
    } else {
        detect::detect(io.get_ref(), ob.detect_timeout)
            .await
            .unwrap_or(Protocol::Opaque)
    };
    // The target is known (above): named by the controller, or by its
    // address until the policy arrives.
    let name = policy
        .and_then(|p| p.authority.clone())
        .unwrap_or_else(|| Str::from(target.as_str()));
    match protocol {
        Protocol::Opaque => {
            let Some(set) = dest.endpoints(ob.discovery_timeout).await else {
                report(&ob, &target, Err(ProxyError::NoEndpoints(target.clone())));
                return;
            };
            let r = opaque::forward(io, &set, &name).await;
            report(&ob, &name.0, r);
        }
        Protocol::Http1 | Protocol::Http2 => {
            let authority = target.parse().ok();
            io.open(tcp_labels(name.clone(), false));
            let (timeouts, drain) = (ob.timeouts, ob.drain.clone());
            let conn = Connection::fixed(ob, name, watch, authority);
            super::serve_http(conn, io, dst, timeouts, drain).await;
        }
    }
}

fn tcp_labels(dst_service: Str, tls: bool) -> TcpLabels {
    TcpLabels {
        direction: Direction::outbound,
        dst_service,
        tls,
    }
}

/// Logs and counts how an opaque session ended.
fn report(ob: &Outbound, target: &str, r: Result<(u64, u64), ProxyError>) {
    match r {
        Ok((sent, received)) => {
            tracing::debug!(%target, sent, received, "opaque connection closed");
        }
        Err(error) => {
            ob.metrics.error(Direction::outbound, error.reason());
            tracing::info!(%target, %error, "opaque connection failed");
        }
    }
}
