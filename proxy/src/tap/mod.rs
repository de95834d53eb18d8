//! Tap: a live sample of the requests this proxy handles, streamed to the
//! identities allowed to tap (`mesh tap`, `mesh top`, the dashboard).
//!
//! Nobody tapping costs a request one relaxed atomic load ([`Tap::is_active`]).
//! A tapped request copies its method, authority and path once, and its
//! response body is wrapped to count bytes and read the gRPC status; the event
//! is offered to each matching tap, within its rate, when the body ends.
//! Events carry no header values and no bodies.

mod body;
mod filter;
pub mod server;

pub use body::TapBody;
pub use filter::{Filter, FilterError};

use crate::body::ProxyBody;
use mesh_proto::tap::TapEvent;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Instant,
};
use tokio::sync::mpsc;

/// Longest path sent (longer ones are cut).
const MAX_PATH: usize = 512;
/// Longest authority sent.
const MAX_AUTHORITY: usize = 256;
/// Longest method sent.
const MAX_METHOD: usize = 32;
/// Events buffered per tap before a slow reader loses them.
const QUEUE: usize = 256;

/// How many may tap, and how fast.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Concurrent taps; more are refused (`RESOURCE_EXHAUSTED`).
    pub max_taps: usize,
    /// Events per second of a tap that asks for no rate.
    pub default_rps: u32,
    /// Events per second at most, whatever a tap asks.
    pub max_rps: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_taps: 8,
            default_rps: 100,
            max_rps: 1_000,
        }
    }
}

/// The taps of this proxy.
#[derive(Debug)]
pub struct Tap {
    /// Open taps: the only thing a request reads when it is zero.
    active: AtomicUsize,
    taps: RwLock<Vec<Arc<Subscriber>>>,
    limits: Limits,
    /// The SPIFFE IDs that may tap (empty: nobody).
    allowed: Vec<String>,
}

/// Why a tap was not opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    #[error("{0} taps are open on this proxy already")]
    TooMany(usize),
}

impl Tap {
    /// A proxy's taps, for the `allowed` identities; lives as long as the process.
    pub fn leak(limits: Limits, allowed: Vec<String>) -> &'static Tap {
        Box::leak(Box::new(Tap {
            active: AtomicUsize::new(0),
            taps: RwLock::new(Vec::new()),
            limits,
            allowed,
        }))
    }

    /// Whether anyone taps: the whole cost of tap on a request when nobody does.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) != 0
    }

    /// Whether `identity` may tap.
    pub fn allows(&self, identity: Option<&str>) -> bool {
        identity.is_some_and(|id| self.allowed.iter().any(|a| a == id))
    }

    /// The identities that may tap.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    /// Opens a tap; it closes when the returned [`Subscription`] is dropped.
    pub fn subscribe(
        &'static self,
        filter: Filter,
        max_rps: u32,
    ) -> Result<(Subscription, mpsc::Receiver<TapEvent>), TapError> {
        let rps = match max_rps {
            0 => self.limits.default_rps,
            n => n,
        }
        .min(self.limits.max_rps);
        let (tx, rx) = mpsc::channel(QUEUE);
        let sub = Arc::new(Subscriber {
            filter,
            tx,
            bucket: Mutex::new(Bucket::new(rps)),
            dropped: AtomicU64::new(0),
        });
        let mut taps = write(&self.taps);
        if taps.len() >= self.limits.max_taps {
            return Err(TapError::TooMany(taps.len()));
        }
        taps.push(sub.clone());
        self.active.store(taps.len(), Ordering::Relaxed);
        Ok((Subscription { tap: self, sub }, rx))
    }

    /// A request begins (call only when [`Tap::is_active`]): the taps whose
    /// request filters it matches, or `None`.
    pub fn start(&self, head: &Head<'_>) -> Option<Box<Tapped>> {
        let taps = read(&self.taps);
        let subs: Vec<Arc<Subscriber>> = taps
            .iter()
            .filter(|s| s.filter.matches_head(head))
            .cloned()
            .collect();
        drop(taps);
        if subs.is_empty() {
            return None;
        }
        // Never credentials (`user:password@host`) nor the query.
        let authority = head.authority.rsplit('@').next().unwrap_or_default();
        let path = head.path.split('?').next().unwrap_or_default();
        Some(Box::new(Tapped {
            subs,
            direction: head.direction,
            method: cut(head.method.as_str(), MAX_METHOD),
            authority: cut(authority, MAX_AUTHORITY),
            path: cut(path, MAX_PATH),
            start: Instant::now(),
        }))
    }
}

/// A response the proxy made itself (a refusal): the request's taps, if
/// any, hear of it with the outcome `outcome` gives for its status.
pub fn refusal<'a>(
    tapped: Option<Box<Tapped>>,
    rsp: http::Response<ProxyBody>,
    outcome: impl FnOnce(u16) -> Outcome<'a>,
) -> http::Response<ProxyBody> {
    match tapped {
        None => rsp,
        Some(t) => {
            let o = outcome(rsp.status().as_u16());
            t.respond(&o, rsp)
        }
    }
}

/// What a request is known by when it begins.
#[derive(Debug)]
pub struct Head<'a> {
    pub direction: &'static str,
    pub method: &'a http::Method,
    pub authority: &'a str,
    /// The path, without the query.
    pub path: &'a str,
}

/// What is known of a request once its response head is in.
#[derive(Debug, Default)]
pub struct Outcome<'a> {
    pub status: u16,
    pub src_identity: &'a str,
    pub dst_identity: &'a str,
    pub src_addr: Option<SocketAddr>,
    pub dst_addr: Option<SocketAddr>,
    pub src_namespace: &'a str,
    pub src_workload: &'a str,
    pub dst_namespace: &'a str,
    pub dst_workload: &'a str,
    /// Outbound: the logical destination (`name.ns.svc.cluster.local:port`).
    pub dst_service: &'a str,
    pub tls: bool,
    pub route: &'a str,
    pub proxy_error: Option<&'static str>,
    /// A gRPC request: the status is read from the trailers.
    pub grpc: bool,
}

/// A request some tap is watching.
#[derive(Debug)]
pub struct Tapped {
    subs: Vec<Arc<Subscriber>>,
    direction: &'static str,
    method: String,
    authority: String,
    path: String,
    start: Instant,
}

impl Tapped {
    /// The response head is in: the taps that still match get an event when
    /// the body ends (its bytes counted, its gRPC status read).
    pub fn respond(
        mut self,
        o: &Outcome<'_>,
        rsp: http::Response<ProxyBody>,
    ) -> http::Response<ProxyBody> {
        let subs: Vec<Arc<Subscriber>> = std::mem::take(&mut self.subs)
            .into_iter()
            .filter(|s| s.filter.matches_outcome(o))
            .collect();
        if subs.is_empty() {
            return rsp;
        }
        let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let grpc_status = if o.grpc {
            crate::grpc_status::code(rsp.headers()).map_or(-1, i32::from)
        } else {
            -1
        };
        let event = TapEvent {
            timestamp_us: 0,
            direction: self.direction.to_string(),
            method: std::mem::take(&mut self.method),
            authority: std::mem::take(&mut self.authority),
            path: std::mem::take(&mut self.path),
            status: u32::from(o.status),
            grpc_status,
            latency_us: 0,
            response_bytes: 0,
            src_identity: o.src_identity.to_string(),
            dst_identity: o.dst_identity.to_string(),
            src_addr: addr(o.src_addr),
            dst_addr: addr(o.dst_addr),
            src_namespace: o.src_namespace.to_string(),
            src_workload: o.src_workload.to_string(),
            dst_namespace: o.dst_namespace.to_string(),
            dst_workload: o.dst_workload.to_string(),
            tls: o.tls,
            route: o.route.to_string(),
            proxy_error: o.proxy_error.unwrap_or_default().to_string(),
            dropped: 0,
        };
        let (parts, inner) = rsp.into_parts();
        let body = TapBody::new(inner, event, subs, self.start, o.grpc);
        http::Response::from_parts(parts, ProxyBody::Tapped(Box::new(body)))
    }
}

impl Drop for Tapped {
    /// A request dropped before its response (the client went away): its
    /// taps still hear of it.
    fn drop(&mut self) {
        if self.subs.is_empty() {
            return;
        }
        let event = TapEvent {
            timestamp_us: body::now_us(),
            direction: self.direction.to_string(),
            method: std::mem::take(&mut self.method),
            authority: std::mem::take(&mut self.authority),
            path: std::mem::take(&mut self.path),
            grpc_status: -1,
            latency_us: body::micros(self.start.elapsed().as_micros()),
            proxy_error: CLIENT_GONE.to_string(),
            ..TapEvent::default()
        };
        for s in &self.subs {
            s.offer(event.clone());
        }
    }
}

/// The proxy error of a request whose client went away first.
pub const CLIENT_GONE: &str = "client went away";

/// One open tap.
#[derive(Debug)]
pub struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<TapEvent>,
    bucket: Mutex<Bucket>,
    /// Matching requests not sent since the last event.
    dropped: AtomicU64,
}

impl Subscriber {
    /// Sends `event` if the rate and the reader allow, else counts it.
    fn offer(&self, mut event: TapEvent) {
        let now = Instant::now();
        let allowed = match self.bucket.lock() {
            Ok(mut b) => b.take(now),
            Err(p) => p.into_inner().take(now),
        };
        if !allowed {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        event.dropped = self.dropped.swap(0, Ordering::Relaxed);
        let before = event.dropped;
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(before + 1, Ordering::Relaxed);
        }
    }
}

/// Keeps a tap open; closes it when dropped.
#[derive(Debug)]
pub struct Subscription {
    tap: &'static Tap,
    sub: Arc<Subscriber>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut taps = write(&self.tap.taps);
        taps.retain(|s| !Arc::ptr_eq(s, &self.sub));
        self.tap.active.store(taps.len(), Ordering::Relaxed);
    }
}

/// A token bucket: `rps` a second, bursts of up to `rps`.
#[derive(Debug)]
struct Bucket {
    rps: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rps: u32) -> Self {
        let rps = f64::from(rps.max(1));
        Bucket {
            rps,
            tokens: rps,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rps).min(self.rps);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests;
