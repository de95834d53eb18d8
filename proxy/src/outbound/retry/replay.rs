//! A request body that can be sent again. The first attempt streams the
//! body as it arrives while keeping a copy of up to `limit` bytes; a retry
//! replays the copy and then continues with whatever the client has not
//! sent yet. Once the body outgrows the limit, it cannot be replayed and
//! the request is not retried.

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

/// The largest body replayed by default.
pub const DEFAULT_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
struct Shared {
    /// The data seen so far (cleared once over the limit).
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    capped: bool,
    /// The client's body; held by whichever attempt reads it.
    inner: Option<crate::body::ProxyBody>,
    /// Trailers, once read.
    trailers: Option<HeaderMap>,
    /// The client's body has ended.
    done: bool,
}

/// One attempt's view of a replayable body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// The next chunk of `chunks` this attempt replays.
    pos: usize,
    /// The client's body while this attempt reads it.
    inner: Option<crate::body::ProxyBody>,
    trailers_sent: bool,
}

impl ReplayBody {
    /// Wraps `body`, keeping up to `limit` bytes for replays.
    pub fn new(body: crate::body::ProxyBody, limit: usize) -> Self {
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                chunks: Vec::new(),
                len: 0,
                limit,
                capped: false,
                inner: Some(body),
                trailers: None,
                done: false,
            })),
            pos: 0,
            inner: None,
            trailers_sent: false,
        }
    }

    /// A fresh view for another attempt, or `None` when the body grew past
    /// the limit.
    pub fn try_clone(&self) -> Option<Self> {
        let s = lock(&self.shared);
        if s.capped {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            inner: None,
            trailers_sent: false,
        })
    }

    /// True when the body can no longer be replayed.
    pub fn is_capped(&self) -> bool {
        lock(&self.shared).capped
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        // Hand the unread rest of the client's body to the next attempt.
        if let Some(inner) = self.inner.take() {
            lock(&self.shared).inner = Some(inner);
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        {
            let mut s = lock(&this.shared);
            if this.pos < s.chunks.len() {
                let chunk = s.chunks[this.pos].clone();
                this.pos += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if s.done {
                if !this.trailers_sent {
                    this.trailers_sent = true;
                    if let Some(t) = s.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
                return Poll::Ready(None);
            }
            if this.inner.is_none() {
                match s.inner.take() {
                    Some(inner) => this.inner = Some(inner),
                    // A previous attempt still holds the stream; it hands it
                    // over when dropped, which happens before a retry starts.
                    None => return Poll::Ready(None),
                }
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(f) => f,
        };
        let mut s = lock(&this.shared);
        match frame {
            None => {
                s.done = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !s.capped {
                        if s.len + data.len() > s.limit {
                            s.capped = true;
                            s.chunks.clear();
                        } else {
                            s.len += data.len();
                            s.chunks.push(data.clone());
                            this.pos = s.chunks.len();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        s.done && self.pos >= s.chunks.len() && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        if s.done {
            let rest: usize = s.chunks[self.pos.min(s.chunks.len())..]
                .iter()
                .map(|c| c.len())
                .sum();
            return SizeHint::with_exact(rest as u64);
        }
        s.inner
            .as_ref()
            .or(self.inner.as_ref())
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::ProxyBody;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn replays_what_the_first_attempt_sent() {
        let first = ReplayBody::new(ProxyBody::full("hello world"), DEFAULT_LIMIT);
        let second = first.try_clone().unwrap();
        let a = first.collect().await.unwrap().to_bytes();
        assert_eq!(&a[..], b"hello world");
        let b = second.collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"hello world");
    }

    #[tokio::test]
    async fn a_retry_continues_where_the_first_attempt_stopped() {
        // The first attempt is dropped before reading anything (e.g. a
        // connect failure): the retry reads the client's body itself.
        let first = ReplayBody::new(ProxyBody::full("abc"), DEFAULT_LIMIT);
        let second = first.try_clone().unwrap();
        drop(first);
        let b = second.collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"abc");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_not_replayable() {
        let first = ReplayBody::new(ProxyBody::full(vec![7u8; 100]), 64);
        let probe = first.try_clone().unwrap();
        let a = first.collect().await.unwrap().to_bytes();
        assert_eq!(a.len(), 100, "the first attempt still gets everything");
        assert!(probe.is_capped());
        assert!(probe.try_clone().is_none());
    }

    #[tokio::test]
    async fn exactly_the_limit_is_replayable() {
        let first = ReplayBody::new(ProxyBody::full(vec![1u8; 64]), 64);
        let keep = first.try_clone().unwrap();
        let _ = first.collect().await.unwrap();
        assert!(!keep.is_capped());
        assert_eq!(keep.collect().await.unwrap().to_bytes().len(), 64);
    }
}
