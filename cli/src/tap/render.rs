//! A tap event as a line of text (like Linkerd's tap) or as JSON.

use mesh_proto::tap::TapEvent;
use serde_json::{json, Value};

/// `ns/name`, or `""` when the workload is unknown.
fn workload(ns: &str, name: &str) -> String {
    match (ns, name) {
        (_, "") => String::new(),
        ("", n) => n.to_string(),
        (ns, n) => format!("{ns}/{n}"),
    }
}

/// The event as JSON (what `-o json`, the dashboard and `mesh top` read).
pub fn to_json(proxy: &str, e: &TapEvent) -> Value {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    json!({
        "timestamp": e.timestamp_us as f64 / 1e6,
        "proxy": proxy,
        "direction": e.direction,
        "method": e.method,
        "authority": e.authority,
        "path": e.path,
        "status": e.status,
        "grpc_status": (e.grpc_status >= 0).then_some(e.grpc_status),
        "latency_ms": e.latency_us as f64 / 1e3,
        "response_bytes": e.response_bytes,
        "src_identity": e.src_identity,
        "dst_identity": e.dst_identity,
        "src_addr": e.src_addr,
        "dst_addr": e.dst_addr,
        "src_workload": workload(&e.src_namespace, &e.src_workload),
        "dst_workload": workload(&e.dst_namespace, &e.dst_workload),
        "tls": e.tls,
        "route": e.route,
        "proxy_error": opt(&e.proxy_error),
        "dropped": e.dropped,
    })
}

/// `s` without control characters (a proxy's strings are not trusted to
/// drive the terminal).
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One line of text, with no control characters.
pub fn to_text(proxy: &str, e: &TapEvent) -> String {
    printable(&line(proxy, e))
}

fn line(proxy: &str, e: &TapEvent) -> String {
    let dir = if e.direction == "inbound" {
        "in "
    } else {
        "out"
    };
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut line = format!(
        "{dir} proxy={proxy} src={} dst={} tls={} :method={} :authority={} :path={} :status={}",
        or_dash(&e.src_addr),
        or_dash(&e.dst_addr),
        e.tls,
        e.method,
        e.authority,
        e.path,
        e.status,
    );
    if e.grpc_status >= 0 {
        line.push_str(&format!(" grpc-status={}", e.grpc_status));
    }
    line.push_str(&format!(
        " latency={}µs response-bytes={} src_id={} dst_id={}",
        e.latency_us,
        e.response_bytes,
        or_dash(&e.src_identity),
        or_dash(&e.dst_identity)
    ));
    let dst = workload(&e.dst_namespace, &e.dst_workload);
    if !dst.is_empty() {
        line.push_str(&format!(" dst_workload={dst}"));
    }
    if !e.route.is_empty() {
        line.push_str(&format!(" route={}", e.route));
    }
    if !e.proxy_error.is_empty() {
        line.push_str(&format!(" proxy_error={:?}", e.proxy_error));
    }
    if e.dropped > 0 {
        line.push_str(&format!(" (dropped {} before)", e.dropped));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let e = TapEvent {
            timestamp_us: 1_500_000,
            direction: "inbound".into(),
            method: "GET".into(),
            authority: "api:80".into(),
            path: "/items".into(),
            status: 200,
            grpc_status: -1,
            latency_us: 1234,
            response_bytes: 42,
            src_identity: "spiffe://td/ns/demo/sa/web".into(),
            dst_namespace: "demo".into(),
            dst_workload: "api".into(),
            tls: true,
            ..TapEvent::default()
        };
        let j = to_json("api-1", &e);
        assert_eq!(j["timestamp"], 1.5);
        assert_eq!(j["latency_ms"], 1.234);
        assert_eq!(j["grpc_status"], Value::Null);
        assert_eq!(j["proxy_error"], Value::Null);
        assert_eq!(j["dst_workload"], "demo/api");
        assert_eq!(j["src_workload"], "");
        let t = to_text("api-1", &e);
        assert!(
            t.starts_with("in  proxy=api-1 src=- dst=- tls=true :method=GET"),
            "{t}"
        );
        assert!(
            t.contains(":status=200 latency=1234µs response-bytes=42"),
            "{t}"
        );
        assert!(t.contains("dst_workload=demo/api"), "{t}");
        let hostile = TapEvent {
            path: "/\u{1b}[2J\u{7}x".into(),
            ..e
        };
        let t = to_text("api-1", &hostile);
        assert!(t.contains(":path=/?[2J?x") && !t.contains('\u{1b}'), "{t}");
    }
}
