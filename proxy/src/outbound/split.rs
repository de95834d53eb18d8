//! Weighted backend choice: each request goes to one backend with a
//! probability proportional to its weight.

use rand::Rng;

/// Picks an index of `weights` in proportion to the weights; `None` when
/// they are all zero (or the list is empty).
pub fn pick(weights: impl Iterator<Item = u32> + Clone) -> Option<usize> {
    let total: u64 = weights.clone().map(u64::from).sum();
    if total == 0 {
        return None;
    }
    let mut x = rand::rng().random_range(0..total);
    for (i, w) in weights.enumerate() {
        let w = u64::from(w);
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_weights() {
        let w = [90u32, 10];
        let mut hits = [0usize; 2];
        for _ in 0..10_000 {
            hits[pick(w.iter().copied()).unwrap()] += 1;
        }
        assert!((8_800..9_200).contains(&hits[0]), "{hits:?}");
    }

    #[test]
    fn zero_weights() {
        assert_eq!(pick([0u32, 0].iter().copied()), None);
        assert_eq!(pick(std::iter::empty()), None);
        for _ in 0..100 {
            assert_eq!(pick([0u32, 5].iter().copied()), Some(1));
        }
    }
}
