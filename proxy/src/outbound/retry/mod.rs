//! Retries: which results are retried (`classify`), how long to wait
//! (`backoff`), how many retries the target can afford (`Budget`), and the
//! body copy that makes a second attempt possible (`replay`).

pub mod backoff;
pub mod classify;
mod policy;
pub mod replay;

pub use policy::Retries;

use std::time::Duration;
use tower::retry::budget::{Budget as _, TpsBudget};

/// A retry budget: every request deposits, every retry withdraws; retries
/// stay within `ratio` of requests plus `min_per_second`, over `ttl`.
#[derive(Debug)]
pub struct Budget(TpsBudget);

/// Budget parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Retries per request (0.0–1.0).
    pub ratio: f32,
    /// Retries per second always allowed.
    pub min_per_second: u32,
    /// Window over which deposits count.
    pub ttl: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl Budget {
    /// A budget; out-of-range parameters are clamped (the controller
    /// validates them, so this only guards against a buggy peer).
    pub fn new(cfg: BudgetConfig) -> Self {
        let ttl = cfg
            .ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if cfg.ratio.is_finite() {
            cfg.ratio.clamp(0.0, 1.0)
        } else {
            0.2
        };
        Budget(TpsBudget::new(ttl, cfg.min_per_second, ratio))
    }

    /// Counts a request.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Takes one retry from the budget; false when it is exhausted.
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_the_ratio_plus_the_reserve() {
        let b = Budget::new(BudgetConfig {
            ratio: 0.2,
            min_per_second: 0,
            ttl: Duration::from_secs(10),
        });
        for _ in 0..100 {
            b.deposit();
        }
        let allowed = (0..100).filter(|_| b.withdraw()).count();
        assert!((19..=21).contains(&allowed), "allowed {allowed}");

        let reserve = Budget::new(BudgetConfig {
            ratio: 0.0,
            min_per_second: 10,
            ttl: Duration::from_secs(1),
        });
        let allowed = (0..100).filter(|_| reserve.withdraw()).count();
        assert!((9..=11).contains(&allowed), "reserve allowed {allowed}");
    }

    #[test]
    fn bad_parameters_do_not_panic() {
        let b = Budget::new(BudgetConfig {
            ratio: f32::NAN,
            min_per_second: 0,
            ttl: Duration::ZERO,
        });
        b.deposit();
        let _ = b.withdraw();
    }
}
