//! What every listener of the proxy shares: a connection cap that sheds
//! silent connections first (`mesh_proto::net::accept`), a first-bytes wait
//! that allocates nothing for clients that say nothing, the HTTP server
//! settings that bound a connection (header read timeout, HTTP/2 keep-alive
//! pings, header list size), and the per-connection request timers
//! (`mesh_proto::net::idle`).

use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_proto::net::accept::Slot;
pub use mesh_proto::net::idle;
use std::time::Duration;
use tokio::net::TcpStream;

pub use mesh_proto::net::accept::Limited;
pub use mesh_proto::net::idle::{Activity, Ended};

/// The answer a full HTTP listener gives before closing a connection.
pub const HTTP_REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nx-mesh-proxy-error: connection limit\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The largest request head the proxy accepts from the app (header names
/// and values, as HTTP/2 counts them); larger gets `431`.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// HTTP/1 read buffer cap: a head larger than this is refused by hyper
/// itself (with `431`), and a slow client cannot make a connection hold more.
const MAX_H1_BUF: usize = 2 * MAX_HEADER_BYTES;

/// Streams one HTTP/2 connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 1000;

/// How long connections may stay silent.
#[derive(Clone, Copy, Debug)]
pub struct ConnTimeouts {
    /// Until the first request (or transport header), and for every HTTP/1
    /// request head.
    pub header: Duration,
    /// Without a new request after that.
    pub idle: Duration,
}

impl ConnTimeouts {
    /// The request timers of a connection.
    pub fn requests(&self) -> idle::Timeouts {
        idle::Timeouts {
            first: self.header,
            idle: self.idle,
            grace: Duration::from_secs(1),
        }
    }
}

/// What a new connection did first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum First {
    /// It sent bytes.
    Data,
    /// It closed (or failed) without a byte.
    Closed,
    /// It stayed silent for the whole wait.
    Silent,
    /// It was shed to make room for a new connection.
    Shed,
}

/// Waits until `tcp` has bytes to read (at most `timeout`). Nothing is
/// allocated for a connection until it speaks; the slot stays pending.
pub async fn first(tcp: &TcpStream, slot: &mut Slot, timeout: Duration) -> First {
    // `readable()` alone may report a fresh socket ready; a peek waits for
    // a byte (or the close) for real.
    let mut byte = [0u8; 1];
    tokio::select! {
        r = tcp.peek(&mut byte) => match r {
            Ok(n) if n > 0 => First::Data,
            _ => First::Closed,
        },
        () = slot.shed() => First::Shed,
        () = tokio::time::sleep(timeout) => First::Silent,
    }
}

/// [`first`], true only when data arrived.
pub async fn first_bytes(tcp: &TcpStream, slot: &mut Slot, timeout: Duration) -> bool {
    first(tcp, slot, timeout).await == First::Data
}

/// An HTTP/1 server for the app or an admin client: request heads must
/// arrive within `header` and fit in [`MAX_H1_BUF`].
pub fn http1(header: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header)
        .max_buf_size(MAX_H1_BUF);
    b
}

/// An HTTP/2 server: keep-alive pings find dead peers, the header list and
/// the streams are bounded.
pub fn http2() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(header_list_size())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    b
}

/// HTTP/2 counts 32 bytes per header on top of name and value: room for a
/// head the outbound side accepted to cross the hop between proxies.
pub fn header_list_size() -> u32 {
    (MAX_HEADER_BYTES * 2) as u32
}

/// Both, for a connection whose protocol hyper detects (the app's).
pub fn auto(header: Duration) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header)
        .max_buf_size(MAX_H1_BUF);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(header_list_size())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    b
}

/// Raises the soft limit on open files to the hard limit, so the
/// connection caps, not the descriptor limit, bound a flood.
pub fn raise_fd_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Tells every listener and connection that the proxy is shutting down:
/// listeners stop accepting, HTTP connections shut down gracefully (HTTP/2
/// `GOAWAY`, HTTP/1 `Connection: close`), requests in flight finish.
#[derive(Clone, Debug)]
pub struct Drain(tokio::sync::watch::Receiver<bool>);

/// Starts a drain.
#[derive(Debug)]
pub struct DrainSignal(tokio::sync::watch::Sender<bool>);

impl Drain {
    /// A drain and the signal that starts it.
    pub fn new() -> (DrainSignal, Drain) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (DrainSignal(tx), Drain(rx))
    }

    /// A drain that never starts (tests).
    pub fn never() -> Drain {
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::mem::forget(tx);
        Drain(rx)
    }

    /// True once the drain started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when the drain starts.
    pub async fn signaled(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|d| *d).await.is_err() {
            // The signal is gone without a drain: never.
            std::future::pending::<()>().await;
        }
    }
}

impl DrainSignal {
    /// Starts the drain.
    pub fn start(&self) {
        self.0.send_replace(true);
    }
}

/// Requests in flight on one side of the proxy, bounded: past `max`, new
/// requests are shed at once (`503 overloaded`) rather than queued.
#[derive(Debug)]
pub struct InFlight {
    n: std::sync::atomic::AtomicUsize,
    max: usize,
}

/// A request's place among those in flight; freed when dropped.
#[derive(Debug)]
pub struct InFlightGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl InFlight {
    /// At most `max` requests in flight (at least 1).
    pub fn new(max: usize) -> Self {
        InFlight {
            n: std::sync::atomic::AtomicUsize::new(0),
            max: max.max(1),
        }
    }

    /// A place, or the number in flight when there is none.
    pub fn try_acquire(&self) -> Result<InFlightGuard<'_>, usize> {
        use std::sync::atomic::Ordering;
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        if n >= self.max {
            self.n.fetch_sub(1, Ordering::Relaxed);
            return Err(n);
        }
        Ok(InFlightGuard(&self.n))
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_requests_are_bounded() {
        let limit = InFlight::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert_eq!(limit.try_acquire().err(), Some(2));
        drop(a);
        assert!(limit.try_acquire().is_ok());
    }
}
