//! Which application port a caller may reach. A peer names the port in its
//! transport header and a redirected client by the port it dialled; either
//! way the inbound side only forwards to the application: never to the
//! proxy's own listeners (a request through the outbound port would leave
//! with this workload's identity), and, when the app's ports are declared
//! (`MESH_PROXY_INBOUND_PORTS`), only to those.

use std::fmt;

/// Why a port was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRefused {
    /// Port 0 is never a target.
    #[error("target port 0")]
    Zero,
    /// One of the proxy's own listeners.
    #[error("port {0} is the proxy's own")]
    Proxy(u16),
    /// Not among the app's declared ports.
    #[error("port {0} is not one of the application's ports")]
    Undeclared(u16),
}

impl PortRefused {
    /// The metric reason.
    pub fn reason(&self) -> &'static str {
        match self {
            PortRefused::Zero | PortRefused::Undeclared(_) => "undeclared port",
            PortRefused::Proxy(_) => "proxy port",
        }
    }
}

/// The ports inbound traffic may be forwarded to.
#[derive(Clone, Default)]
pub struct AppPorts {
    /// The proxy's listeners (inbound, outbound, admin).
    own: Vec<u16>,
    /// The app's ports; `None` when not declared (then any other port).
    declared: Option<Vec<u16>>,
}

impl fmt::Debug for AppPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "own {:?}, declared {:?}", self.own, self.declared)
    }
}

impl AppPorts {
    /// `own` are the proxy's listener ports; `declared` the app's (`None`:
    /// not declared; empty: the app serves nothing).
    pub fn new(own: &[u16], declared: Option<&[u16]>) -> Self {
        let sorted = |ports: &[u16]| {
            let mut v = ports.to_vec();
            v.sort_unstable();
            v.dedup();
            v
        };
        AppPorts {
            own: sorted(own),
            declared: declared.map(sorted),
        }
    }

    /// Whether `port` may be forwarded to.
    pub fn check(&self, port: u16) -> Result<(), PortRefused> {
        if port == 0 {
            return Err(PortRefused::Zero);
        }
        // A declared port that is also the proxy's stays refused.
        if self.own.contains(&port) {
            return Err(PortRefused::Proxy(port));
        }
        if let Some(declared) = &self.declared {
            if declared.binary_search(&port).is_err() {
                return Err(PortRefused::Undeclared(port));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_ports_are_never_targets() {
        let ports = AppPorts::new(&[4143, 4140, 4191], None);
        for p in [4140, 4143, 4191] {
            assert_eq!(ports.check(p), Err(PortRefused::Proxy(p)));
        }
        assert_eq!(ports.check(0), Err(PortRefused::Zero));
        assert_eq!(ports.check(8080), Ok(()), "undeclared: any other port");
        assert_eq!(ports.check(65535), Ok(()));
    }

    #[test]
    fn declared_ports_are_the_only_targets() {
        let ports = AppPorts::new(&[4143, 4140, 4191], Some(&[9090, 8080, 4191]));
        assert_eq!(ports.check(8080), Ok(()));
        assert_eq!(ports.check(9090), Ok(()));
        assert_eq!(ports.check(8081), Err(PortRefused::Undeclared(8081)));
        assert_eq!(
            ports.check(4191),
            Err(PortRefused::Proxy(4191)),
            "declaring the admin port does not open it"
        );
        let nothing = AppPorts::new(&[4143], Some(&[]));
        assert_eq!(nothing.check(8080), Err(PortRefused::Undeclared(8080)));
        assert_eq!(PortRefused::Proxy(1).reason(), "proxy port");
        assert_eq!(PortRefused::Undeclared(1).reason(), "undeclared port");
    }
}
