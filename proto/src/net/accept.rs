//! An accept loop that a flood of idle connections cannot exhaust.
//!
//! Every connection takes a slot; at most `max` are open. A new connection
//! starts *pending* until its owner calls [`Slot::activate`] (it has sent
//! something worth serving). When the listener is full, the oldest pending
//! connection is shed to make room, so silent clients cannot lock out real
//! ones (a kubelet probe, a peer proxy); only when every connection is
//! active is a new one refused, with `refusal` written to it first. Accept
//! errors from descriptor or memory exhaustion (`EMFILE`, `ENFILE`,
//! `ENOBUFS`, `ENOMEM`) back off exponentially instead of spinning.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

/// The first and the longest pause after an exhaustion error.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Linux errno values of resource exhaustion on `accept`.
const ENOMEM: i32 = 12;
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;
const ENOBUFS: i32 = 105;

/// A listener with a cap on open connections.
pub struct Limited {
    listener: TcpListener,
    slots: Arc<Slots>,
    refusal: &'static [u8],
}

/// What a listener did, read at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections open now.
    pub open: usize,
    /// Connections refused because every slot was active.
    pub refused: u64,
    /// Pending connections closed to make room for new ones.
    pub shed: u64,
    /// Accepts that failed for lack of descriptors or memory.
    pub exhausted: u64,
}

/// A handle on a listener's counters.
#[derive(Clone)]
pub struct StatsHandle(Arc<Slots>);

impl StatsHandle {
    /// The counters now.
    pub fn get(&self) -> Stats {
        let s = &self.0;
        Stats {
            open: s.open.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            shed: s.shed.load(Ordering::Relaxed),
            exhausted: s.exhausted.load(Ordering::Relaxed),
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.0.max
    }
}

struct Slots {
    max: usize,
    open: AtomicUsize,
    next_id: AtomicU64,
    /// Pending connections by age (ids grow), with the way to shed each.
    pending: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    refused: AtomicU64,
    shed: AtomicU64,
    exhausted: AtomicU64,
}

/// One open connection's place in its listener; frees it when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    /// Fires when the connection is shed; `None` once active.
    shed: Option<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("id", &self.id)
            .field("pending", &self.shed.is_some())
            .finish()
    }
}

// === impl Limited ===

impl Limited {
    /// Caps `listener` at `max` open connections (at least 1); a refused
    /// connection is sent `refusal` (e.g. an HTTP 503) before it is closed.
    pub fn new(listener: TcpListener, max: usize, refusal: &'static [u8]) -> Self {
        Limited {
            listener,
            slots: Arc::new(Slots {
                max: max.max(1),
                open: AtomicUsize::new(0),
                next_id: AtomicU64::new(0),
                pending: Mutex::new(BTreeMap::new()),
                refused: AtomicU64::new(0),
                shed: AtomicU64::new(0),
                exhausted: AtomicU64::new(0),
            }),
            refusal,
        }
    }

    /// The listener's counters, shared.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle(self.slots.clone())
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection that gets a slot. Never fails: exhaustion errors
    /// back off, other accept errors (a client that reset first) are skipped.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, Slot) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    backoff = BACKOFF_MIN;
                    match self.slots.take() {
                        Some(slot) => return (tcp, peer, slot),
                        None => {
                            // Best effort: a full socket buffer just gets the close.
                            let _ = tcp.try_write(self.refusal);
                        }
                    }
                }
                Err(e) if is_exhaustion(&e) => {
                    self.slots.exhausted.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(_) => {}
            }
        }
    }
}

fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

// === impl Slots ===

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        match self.pending.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A slot for a new connection, shedding the oldest pending one when
    /// full; `None` (refused) when every open connection is active.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.lock();
        if open >= self.max {
            // The victim's slot is released when its task sees the signal,
            // so `open` briefly exceeds `max` by the connections being shed.
            match pending.pop_first() {
                Some((_, victim)) => {
                    let _ = victim.send(());
                    self.shed.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    drop(pending);
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        pending.insert(id, tx);
        Some(Slot {
            slots: self.clone(),
            id,
            shed: Some(rx),
        })
    }
}

// === impl Slot ===

impl Slot {
    /// The connection is in use: it is never shed from now on.
    pub fn activate(&mut self) {
        if self.shed.take().is_some() {
            self.slots.lock().remove(&self.id);
        }
    }

    /// True until [`Slot::activate`].
    pub fn is_pending(&self) -> bool {
        self.shed.is_some()
    }

    /// Completes when the listener sheds this (pending) connection; never
    /// once it is active.
    pub async fn shed(&mut self) {
        if let Some(rx) = self.shed.as_mut() {
            if rx.await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.shed.take().is_some() {
            self.slots.lock().remove(&self.id);
        }
        self.slots.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn listener(max: usize) -> (Limited, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (
            Limited::new(l, max, b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            addr,
        )
    }

    #[tokio::test]
    async fn full_listeners_shed_the_oldest_pending_connection() {
        let (l, addr) = listener(2).await;
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let (_, _, mut s1) = l.accept().await;
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let (_, _, mut s2) = l.accept().await;
        assert_eq!(l.stats().get().open, 2);

        // Full: the third connection sheds the oldest pending one (s1).
        let _c3 = TcpStream::connect(addr).await.unwrap();
        let (_, _, s3) = l.accept().await;
        tokio::time::timeout(Duration::from_secs(1), s1.shed())
            .await
            .expect("s1 shed");
        drop(s1);
        assert_eq!(l.stats().get().shed, 1);
        assert_eq!(l.stats().get().open, 2);

        // Active connections are never shed: with s2 and s3 active, a new
        // one is refused and told so.
        s2.activate();
        let mut s3 = s3;
        s3.activate();
        let mut c4 = TcpStream::connect(addr).await.unwrap();
        let accepting = tokio::time::timeout(Duration::from_millis(300), l.accept());
        let mut got = Vec::new();
        let (accepted, _) = tokio::join!(accepting, c4.read_to_end(&mut got));
        assert!(accepted.is_err(), "no slot was handed out");
        assert!(got.starts_with(b"HTTP/1.1 503"), "{got:?}");
        assert_eq!(l.stats().get().refused, 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), s2.shed())
                .await
                .is_err(),
            "an active slot is never shed"
        );

        // Closing one frees its slot.
        drop(s2);
        let _c5 = TcpStream::connect(addr).await.unwrap();
        let (_, _, s5) = l.accept().await;
        assert!(s5.is_pending());
        assert_eq!(l.stats().get().open, 2);
    }

    #[test]
    fn exhaustion_errors_are_recognised() {
        for errno in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            assert!(is_exhaustion(&std::io::Error::from_raw_os_error(errno)));
        }
        // ECONNABORTED: a client gone before accept; just skipped.
        assert!(!is_exhaustion(&std::io::Error::from_raw_os_error(103)));
    }
}
