//! Keeps one control-plane server stream alive: opens it, hands every
//! message on, and when the stream breaks or cannot be opened, keeps what
//! was received (the caller's state is untouched) and retries with capped
//! exponential backoff, until the readers are gone.

use prometheus_client::metrics::gauge::Gauge;
use std::{future::Future, time::Duration};
use tonic::{Response, Status, Streaming};

/// The wait before reconnecting after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.min(5)).min(Duration::from_secs(3))
}

/// Runs the stream loop. `open` starts a stream; `on_message` gets each
/// message and whether it is the first of its stream; `closed` completes
/// when nobody reads the results any more; `gauge` counts open streams.
pub async fn run<M, O, Fut>(
    what: &'static str,
    target: &str,
    mut open: O,
    mut on_message: impl FnMut(M, bool),
    closed: impl Future<Output = ()>,
    gauge: Gauge,
) where
    O: FnMut() -> Fut,
    Fut: Future<Output = Result<Response<Streaming<M>>, Status>>,
{
    tokio::pin!(closed);
    let mut failures = 0u32;
    loop {
        let opened = tokio::select! {
            r = open() => r,
            _ = &mut closed => return,
        };
        match opened {
            Ok(rsp) => {
                gauge.inc();
                let mut stream = rsp.into_inner();
                let mut first = true;
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        _ = &mut closed => { gauge.dec(); return; }
                    };
                    match msg {
                        Ok(Some(m)) => {
                            failures = 0;
                            on_message(m, first);
                            first = false;
                        }
                        Ok(None) => {
                            tracing::info!(%target, what, "stream ended; reconnecting");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(%target, what, code = ?status.code(), message = status.message(), "stream failed; keeping the last state");
                            break;
                        }
                    }
                }
                gauge.dec();
            }
            Err(status) => {
                tracing::warn!(%target, what, code = ?status.code(), message = status.message(), "controller unreachable; keeping the last state");
            }
        }
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff(failures)) => {}
            _ = &mut closed => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert!(backoff(3) > backoff(2));
        assert_eq!(backoff(100), Duration::from_secs(3));
    }
}
