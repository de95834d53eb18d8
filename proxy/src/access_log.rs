//! Optional access log (`MESH_PROXY_ACCESS_LOG=json`): one JSON line per request on
//! stdout, with the route, status, duration, attempts, upstream endpoint, both
//! identities and Envoy-style response flags. Off by default; when off, requests pay
//! nothing for it (the entry is never built).

use crate::errors::ProxyError;
use std::{
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Longest request path logged (longer ones are cut, marked with `…`).
const MAX_PATH: usize = 512;

/// One request, as logged.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    pub direction: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub duration: Duration,
    /// Tries sent to endpoints (1 without retries; 0 if none was reached).
    pub attempts: u32,
    pub upstream: Option<SocketAddr>,
    pub client_id: &'a str,
    pub server_id: &'a str,
    /// Response flags (`-` when none).
    pub flags: &'a str,
    /// Inbound: the authorization policy that allowed or denied the request
    /// (not logged when empty).
    pub policy: &'a str,
}

/// The response flag of a proxy error: `NR` no route or endpoint, `UF` upstream
/// connection failure, `UT` upstream timeout, `UO` overflow (limits), `FI` fault
/// injected, `DENY` refused by policy, `DPE` a request the proxy refused
/// as malformed (downstream protocol error).
pub fn flag(error: &ProxyError) -> &'static str {
    match error {
        ProxyError::NoAuthority
        | ProxyError::NoBackends(_)
        | ProxyError::NoEndpoints(_)
        | ProxyError::DiscoveryTimeout(_)
        | ProxyError::AllEjected(_) => "NR",
        ProxyError::Connect { .. }
        | ProxyError::ConnectTimeout(_)
        | ProxyError::Tls { .. }
        | ProxyError::Refused { .. }
        | ProxyError::Upstream { .. }
        | ProxyError::App { .. } => "UF",
        ProxyError::RequestTimeout(_) | ProxyError::BackendTimeout(_) => "UT",
        ProxyError::BreakerOpen(_) | ProxyError::Overloaded(_) => "UO",
        ProxyError::Fault(_) => "FI",
        ProxyError::Unauthorized(_) => "DENY",
        ProxyError::BadPath(_)
        | ProxyError::BadRequest(_)
        | ProxyError::BadRequestBody(_)
        | ProxyError::HeadersTooLarge(_)
        | ProxyError::MethodNotAllowed(_) => "DPE",
    }
}

/// `URX` when retries ran out on a failure, else `flag` (or `-`).
pub fn flags(error: Option<&ProxyError>, status: u16, attempts: u32) -> &'static str {
    match error {
        Some(e) => flag(e),
        None if attempts > 1 && status >= 500 => "URX",
        None => "-",
    }
}

/// Where log lines go.
pub struct AccessLog {
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessLog {
    /// A log on stdout.
    pub fn stdout() -> Self {
        Self::to(Box::new(std::io::stdout()))
    }

    /// A log into any writer (tests).
    pub fn to(out: Box<dyn std::io::Write + Send>) -> Self {
        AccessLog {
            out: Mutex::new(out),
        }
    }

    /// Writes one line; a failed write is dropped (logging never fails a request).
    pub fn write(&self, e: &Entry<'_>) {
        let line = render(e, SystemTime::now());
        let mut out = match self.out.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let _ = out.write_all(line.as_bytes());
    }
}

/// The JSON line of `e` logged at `now`.
pub fn render(e: &Entry<'_>, now: SystemTime) -> String {
    let ts = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut s = String::with_capacity(384);
    let _ = write!(
        s,
        "{{\"timestamp\":{}.{:03}",
        ts.as_secs(),
        ts.subsec_millis()
    );
    field(&mut s, "direction", e.direction);
    field(&mut s, "method", e.method);
    field(&mut s, "authority", e.authority);
    let path = if e.path.len() > MAX_PATH {
        let mut cut = MAX_PATH;
        while !e.path.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &e.path[..cut])
    } else {
        e.path.to_string()
    };
    field(&mut s, "path", &path);
    field(&mut s, "route", e.route);
    let _ = write!(
        s,
        ",\"status\":{},\"duration_ms\":{:.3},\"attempts\":{}",
        e.status,
        e.duration.as_secs_f64() * 1000.0,
        e.attempts
    );
    let upstream = e.upstream.map(|a| a.to_string()).unwrap_or_default();
    field(&mut s, "upstream", &upstream);
    field(&mut s, "client_id", e.client_id);
    field(&mut s, "server_id", e.server_id);
    field(&mut s, "flags", e.flags);
    if !e.policy.is_empty() {
        field(&mut s, "policy", e.policy);
    }
    s.push_str("}\n");
    s
}

/// Appends `,"name":"<escaped value>"`.
fn field(s: &mut String, name: &str, value: &str) {
    let _ = write!(s, ",\"{name}\":\"");
    for c in value.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_escaped_json_line() {
        let e = Entry {
            direction: "outbound",
            method: "GET",
            authority: "web.shop:80",
            path: "/a\"b\\c\n",
            route: "httproute/shop/web/0",
            status: 503,
            duration: Duration::from_micros(1500),
            attempts: 3,
            upstream: Some("10.0.0.1:8080".parse().unwrap()),
            client_id: "spiffe://cluster.local/ns/shop/sa/a",
            server_id: "",
            flags: flags(None, 503, 3),
            policy: "",
        };
        let line = render(&e, UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        assert_eq!(
            line,
            "{\"timestamp\":1700000000.123,\"direction\":\"outbound\",\"method\":\"GET\",\"authority\":\"web.shop:80\",\"path\":\"/a\\\"b\\\\c\\n\",\"route\":\"httproute/shop/web/0\",\"status\":503,\"duration_ms\":1.500,\"attempts\":3,\"upstream\":\"10.0.0.1:8080\",\"client_id\":\"spiffe://cluster.local/ns/shop/sa/a\",\"server_id\":\"\",\"flags\":\"URX\"}\n"
        );
    }

    #[test]
    fn long_paths_are_cut_on_a_char_boundary() {
        let path = "é".repeat(400);
        let e = Entry {
            path: &path,
            ..Entry::default()
        };
        let line = render(&e, UNIX_EPOCH);
        assert!(line.contains("…\""));
        assert!(line.len() < 700);
    }

    #[test]
    fn flags_follow_the_error() {
        assert_eq!(flag(&ProxyError::NoEndpoints("x".into())), "NR");
        assert_eq!(flag(&ProxyError::ConnectTimeout("x".into())), "UF");
        assert_eq!(
            flag(&ProxyError::RequestTimeout(Duration::from_secs(1))),
            "UT"
        );
        assert_eq!(flag(&ProxyError::BreakerOpen("x".into())), "UO");
        assert_eq!(flag(&ProxyError::Unauthorized("p".into())), "DENY");
        assert_eq!(flags(None, 200, 2), "-");
        assert_eq!(flags(None, 500, 1), "-");
    }
}
