//! An accepted connection that counts itself into the `mesh_tcp_*` metrics. The labels
//! may be settled after accepting (once the handshake or the original destination tells
//! them); until then bytes are summed in plain fields, afterwards they go straight to
//! the counters (one uncontended atomic add per read or write), so long-lived
//! connections show their traffic as it flows.

use crate::metrics::{Metrics, TcpLabels, TcpSeries};
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream counted into the TCP metrics.
pub struct Metered<T> {
    inner: T,
    /// Bytes seen before the labels were settled.
    read: u64,
    written: u64,
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    /// The connection's series, once open.
    counters: Option<Arc<TcpSeries>>,
}

impl<T> Metered<T> {
    /// Wraps `inner`; `labels` stand until [`Metered::open`] settles them.
    pub fn new(inner: T, metrics: Arc<Metrics>, labels: TcpLabels) -> Self {
        Metered {
            inner,
            read: 0,
            written: 0,
            metrics,
            labels,
            counters: None,
        }
    }

    /// Settles the labels and counts the connection as open (once).
    pub fn open(&mut self, labels: TcpLabels) {
        if self.counters.is_some() {
            return;
        }
        self.labels = labels;
        let series = self.metrics.tcp(&self.labels);
        series.open.inc();
        series.open_connections.inc();
        series.read.inc_by(std::mem::take(&mut self.read));
        series.write.inc_by(std::mem::take(&mut self.written));
        self.counters = Some(series);
    }

    fn count_read(&mut self, n: u64) {
        match &self.counters {
            Some(s) => {
                s.read.inc_by(n);
            }
            None => self.read += n,
        }
    }

    fn count_written(&mut self, n: u64) {
        match &self.counters {
            Some(s) => {
                s.write.inc_by(n);
            }
            None => self.written += n,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T> Drop for Metered<T> {
    fn drop(&mut self) {
        if self.counters.is_none() {
            let labels = self.labels.clone();
            self.open(labels);
        }
        if let Some(s) = &self.counters {
            s.close.inc();
            s.open_connections.dec();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.count_read(n);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            self.count_written(*n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.count_written(*n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Direction;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_bytes_and_the_connection_with_settled_labels() {
        let metrics = Arc::new(Metrics::new());
        let (a, mut b) = tokio::io::duplex(64);
        let mut m = Metered::new(a, metrics.clone(), TcpLabels::default());
        let settled = TcpLabels {
            direction: Direction::inbound,
            dst_service: "web.shop.svc.cluster.local:80".into(),
            tls: true,
        };
        m.write_all(b"early").await.unwrap();
        m.open(settled.clone());
        assert_eq!(metrics.tcp(&settled).open_connections.get(), 1);
        m.write_all(b"hello").await.unwrap();
        b.write_all(b"hi!").await.unwrap();
        let mut buf = [0u8; 3];
        m.read_exact(&mut buf).await.unwrap();
        // Visible while the connection is still open.
        assert_eq!(metrics.tcp(&settled).write.get(), 10);
        assert_eq!(metrics.tcp(&settled).read.get(), 3);
        drop(m);
        assert_eq!(metrics.tcp(&settled).open.get(), 1);
        assert_eq!(metrics.tcp(&settled).close.get(), 1);
        assert_eq!(metrics.tcp(&settled).open_connections.get(), 0);
        assert_eq!(metrics.tcp(&settled).write.get(), 10);
    }

    #[tokio::test]
    async fn an_unsettled_connection_counts_with_its_first_labels() {
        let metrics = Arc::new(Metrics::new());
        let (a, _b) = tokio::io::duplex(8);
        drop(Metered::new(a, metrics.clone(), TcpLabels::default()));
        let l = TcpLabels::default();
        assert_eq!(metrics.tcp(&l).open.get(), 1);
        assert_eq!(metrics.tcp(&l).close.get(), 1);
        assert_eq!(metrics.tcp(&l).open_connections.get(), 0);
    }
}
