//! Fault injection on a route, for testing how clients cope: answer some
//! requests with an error status, or delay some.

use rand::Rng;
use std::time::Duration;

/// A route's fault settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// Status to answer with, and the share of requests (0–100).
    pub abort: Option<(http::StatusCode, f32)>,
    /// Delay, and the share of requests (0–100).
    pub delay: Option<(Duration, f32)>,
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub abort: Option<http::StatusCode>,
    pub delay: Option<Duration>,
}

fn hit(percent: f32) -> bool {
    percent > 0.0 && (percent >= 100.0 || rand::rng().random_range(0.0..100.0) < percent)
}

impl Fault {
    /// Rolls the dice for one request.
    pub fn decide(&self) -> Decision {
        Decision {
            abort: self.abort.and_then(|(s, p)| hit(p).then_some(s)),
            delay: self.delay.and_then(|(d, p)| hit(p).then_some(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_respected() {
        let f = Fault {
            abort: Some((http::StatusCode::SERVICE_UNAVAILABLE, 25.0)),
            delay: Some((Duration::from_millis(5), 100.0)),
        };
        let aborted = (0..10_000).filter(|_| f.decide().abort.is_some()).count();
        assert!((2_200..2_800).contains(&aborted), "{aborted}");
        assert!((0..100).all(|_| f.decide().delay == Some(Duration::from_millis(5))));
        let none = Fault {
            abort: Some((http::StatusCode::OK, 0.0)),
            delay: None,
        };
        assert!((0..100).all(|_| none.decide().abort.is_none()));
    }
}
