//! `mesh dashboard`: a small web application served by the CLI: the topology
//! of workloads with an edge per caller → callee (success rate, RPS, p99,
//! coloured by health), golden-signal tables with sparklines, and a live tap
//! view. The page is static (vendored uPlot, no build step, nothing fetched
//! from elsewhere) and polls `api/summary` and `api/tap`.

mod summary;
mod tap_view;

use crate::tap::client::Source;
use anyhow::Context;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// `mesh dashboard` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to serve the page (loopback by default: it shows traffic).
    #[arg(long, default_value = "127.0.0.1:8084")]
    pub addr: SocketAddr,
    /// Only this namespace (every namespace when omitted).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Read metrics from this Prometheus instead of scraping the proxies.
    #[arg(long)]
    pub prometheus: Option<String>,
    /// How often the numbers are refreshed (also the window of the rates).
    #[arg(long, default_value = "5s")]
    pub refresh: String,
    /// Where the proxies are (for metrics without --prometheus, and for tap).
    #[command(flatten)]
    pub source: Source,
}

/// What the server shares between requests.
struct App {
    source: Source,
    namespace: Option<String>,
    summary: Mutex<Result<serde_json::Value, String>>,
    tap: Arc<tap_view::TapView>,
    /// `Host` values accepted (DNS rebinding: a page elsewhere must not read this).
    hosts: Vec<String>,
}

const INDEX: &str = include_str!("static/index.html");
const FILES: [(&str, &str, &str); 5] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("static/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("static/app.css"),
    ),
    (
        "uplot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("static/uplot.iife.min.js"),
    ),
    (
        "uplot.min.css",
        "text/css; charset=utf-8",
        include_str!("static/uplot.min.css"),
    ),
    (
        "uplot.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("static/uplot.LICENSE"),
    ),
];

/// Runs `mesh dashboard` until interrupted.
pub fn run(args: Args) -> anyhow::Result<()> {
    let refresh = crate::stat::parse_window(&args.refresh).context("--refresh")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let addr = listener.local_addr()?;
        let app = Arc::new(App {
            source: args.source.clone(),
            namespace: args.namespace.clone(),
            summary: Mutex::new(Err("loading: the first numbers take one refresh".into())),
            tap: Arc::default(),
            hosts: hosts(addr),
        });
        let data = crate::stat::Data {
            prometheus: args.prometheus.clone(),
            targets: args.source.targets.clone(),
        };
        tokio::spawn(refresh_loop(app.clone(), data, refresh));
        println!("mesh dashboard on http://{addr}/ (Ctrl-C to stop)");
        serve(listener, app).await
    })
}

/// The `Host` values of a page served on `addr`.
fn hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut h = vec![addr.to_string()];
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        h.extend([
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]);
    }
    h
}

async fn refresh_loop(app: Arc<App>, data: crate::stat::Data, every: Duration) {
    let mut summaries = summary::Summaries::default();
    let ns = app.namespace.clone();
    loop {
        let started = std::time::Instant::now();
        let r = summary::read(&data, ns.as_deref(), every).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let value = r
            .map(|(answers, n)| {
                summaries.update(&answers, n, ns.as_deref(), every.as_secs_f64(), now)
            })
            .map_err(|e| format!("{e:#}"));
        if let Err(e) = &value {
            tracing::warn!(error = %e, "dashboard refresh failed");
        }
        match app.summary.lock() {
            Ok(mut g) => merge(&mut g, value),
            Err(p) => merge(&mut p.into_inner(), value),
        }
        // Prometheus answers at once: wait out the rest of the period.
        if let Some(rest) = every.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

/// A failed refresh keeps the last numbers (the page says it failed).
fn merge(slot: &mut Result<serde_json::Value, String>, new: Result<serde_json::Value, String>) {
    match (slot.as_mut(), new) {
        (Ok(old), Err(e)) => {
            old["error"] = serde_json::Value::String(e);
        }
        (_, new) => *slot = new,
    }
}

async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) -> anyhow::Result<()> {
    let open = Arc::new(tokio::sync::Semaphore::new(256));
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut interrupted => return Ok(()),
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, &req)) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(64 * 1024);
            let conn = b.serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
            drop(permit);
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    rsp
}

fn route<B>(app: &App, req: &Request<B>) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !app.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return respond(
            StatusCode::MISDIRECTED_REQUEST,
            "text/plain",
            "unexpected Host\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let path = req.uri().path();
    // A page of another site may not even start a tap (its fetch is marked
    // cross-site by the browser); tools that send no such header are fine.
    let site = req
        .headers()
        .get("sec-fetch-site")
        .map(HeaderValue::as_bytes);
    if path.starts_with("/api/") && site.is_some_and(|s| s != b"same-origin" && s != b"none") {
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "same-origin requests only\n",
        );
    }
    match path {
        "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        "/api/summary" => {
            let (status, body) = match app.summary.lock().as_deref() {
                Ok(Ok(v)) => (StatusCode::OK, v.to_string()),
                Ok(Err(e)) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "error": e }).to_string(),
                ),
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "{}".into()),
            };
            respond(status, "application/json", body)
        }
        "/api/tap" => {
            let workload = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("workload="))
                    .map(percent_decode)
                    .filter(|w| !w.is_empty() && w.len() <= 253)
            });
            let wanted = workload
                .as_deref()
                .and_then(|w| w.split_once('/'))
                .map(|(ns, _)| ns);
            if let (Some(own), Some(w)) = (&app.namespace, wanted) {
                if own != w {
                    let e = format!("this dashboard shows namespace {own} only");
                    let body = serde_json::json!({ "error": e }).to_string();
                    return respond(StatusCode::BAD_REQUEST, "application/json", body);
                }
            }
            let v = app
                .tap
                .read(&app.source, app.namespace.as_deref(), workload);
            respond(StatusCode::OK, "application/json", v.to_string())
        }
        _ => match path
            .strip_prefix("/static/")
            .and_then(|f| FILES.iter().find(|(n, _, _)| *n == f))
        {
            Some((_, ct, body)) => respond(StatusCode::OK, ct, *body),
            None => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        },
    }
}

/// `%XX` escapes and `+` decoded; bad escapes kept as they are.
fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        App {
            source: Source {
                targets: None,
                tap_cert: None,
                tap_key: None,
                trust_anchors: None,
                admin_port: 4191,
            },
            namespace: Some("demo".into()),
            summary: Mutex::new(Ok(serde_json::json!({"workloads": []}))),
            tap: Arc::default(),
            hosts: hosts("127.0.0.1:8084".parse().unwrap()),
        }
    }

    fn get(app: &App, path: &str, host: &str) -> Response<Full<Bytes>> {
        route(
            app,
            &Request::get(path).header("host", host).body(()).unwrap(),
        )
    }

    #[test]
    fn routes() {
        let a = app();
        let ok = |p: &str| get(&a, p, "127.0.0.1:8084").status();
        assert_eq!(ok("/"), StatusCode::OK);
        assert_eq!(ok("/static/app.js"), StatusCode::OK);
        assert_eq!(ok("/static/uplot.iife.min.js"), StatusCode::OK);
        assert_eq!(ok("/api/summary"), StatusCode::OK);
        assert_eq!(ok("/static/../Cargo.toml"), StatusCode::NOT_FOUND);
        assert_eq!(ok("/nope"), StatusCode::NOT_FOUND);
        assert_eq!(get(&a, "/", "localhost:8084").status(), StatusCode::OK);
        // A rebinding attacker's name.
        assert_eq!(
            get(&a, "/api/summary", "evil.example:8084").status(),
            StatusCode::MISDIRECTED_REQUEST
        );
        let post = route(
            &a,
            &Request::post("/api/summary")
                .header("host", "127.0.0.1:8084")
                .body(())
                .unwrap(),
        );
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(INDEX.contains("static/app.js"));
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("demo%2Fapi"), "demo/api");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%2"), "end%2");
        assert_eq!(percent_decode("%"), "%");
    }
}
