//! Clients to the local application, one pair (HTTP/1.1 and HTTP/2
//! prior-knowledge) per application port, pooled and kept for reuse.

use crate::body::ProxyBody;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::Duration,
};
use tokio::net::TcpStream;

use crate::connect::{fixed as connector, FixedConnector as Connector};

/// The clients for one application port.
#[derive(Clone)]
pub struct AppClient {
    /// The application address.
    pub addr: SocketAddr,
    /// For requests that were HTTP/1 at the origin.
    pub h1: Client<Connector, ProxyBody>,
    /// For HTTP/2 and gRPC.
    pub h2: Client<Connector, ProxyBody>,
}

/// The application clients by port.
pub struct AppClients {
    ip: IpAddr,
    connect_timeout: Duration,
    by_port: Mutex<HashMap<u16, AppClient>>,
}

impl AppClients {
    pub fn new(ip: IpAddr, connect_timeout: Duration) -> Self {
        AppClients {
            ip,
            connect_timeout,
            by_port: Mutex::new(HashMap::new()),
        }
    }

    /// The clients for `port` (looked up once per connection).
    pub fn for_port(&self, port: u16) -> AppClient {
        let mut map = match self.by_port.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(port)
            .or_insert_with(|| {
                let addr = SocketAddr::new(self.ip, port);
                let connector = connector(addr, self.connect_timeout);
                AppClient {
                    addr,
                    h1: Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(30))
                        .build(connector.clone()),
                    h2: Client::builder(TokioExecutor::new())
                        .http2_only(true)
                        .build(connector),
                }
            })
            .clone()
    }

    /// A raw connection to the application (opaque traffic).
    pub async fn connect(&self, port: u16) -> std::io::Result<TcpStream> {
        let addr = SocketAddr::new(self.ip, port);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}
