//! Which results may be retried under a route's retry policy: configured
//! HTTP status codes and ranges, gRPC codes of trailers-only responses, and
//! failures where nothing reached the application.

use http::HeaderMap;

/// A route's retry policy, ready for requests.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first one included (≥ 1).
    pub attempts: u32,
    /// Retried status codes.
    pub statuses: Vec<u16>,
    /// Retried status ranges (inclusive).
    pub ranges: Vec<(u16, u16)>,
    /// Retried gRPC status codes (numeric).
    pub grpc: Vec<u32>,
    /// Retry connect failures and refused streams.
    pub connect_failures: bool,
    /// Backoff base.
    pub backoff_base: std::time::Duration,
    /// Backoff cap.
    pub backoff_max: std::time::Duration,
}

/// The numeric gRPC code of a lower-case, dash-separated name.
pub fn grpc_code(name: &str) -> Option<u32> {
    Some(match name {
        "cancelled" => 1,
        "unknown" => 2,
        "invalid-argument" => 3,
        "deadline-exceeded" => 4,
        "not-found" => 5,
        "already-exists" => 6,
        "permission-denied" => 7,
        "resource-exhausted" => 8,
        "failed-precondition" => 9,
        "aborted" => 10,
        "out-of-range" => 11,
        "unimplemented" => 12,
        "internal" => 13,
        "unavailable" => 14,
        "data-loss" => 15,
        "unauthenticated" => 16,
        _ => return None,
    })
}

impl RetryPolicy {
    /// Why a response with `status` and `headers` is retryable, if it is.
    pub fn retryable_response(&self, status: u16, headers: &HeaderMap) -> Option<&'static str> {
        if self.statuses.contains(&status)
            || self
                .ranges
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&status))
        {
            return Some("status");
        }
        if !self.grpc.is_empty() {
            // Only a trailers-only response carries grpc-status in its
            // headers; any other gRPC response has started streaming.
            let code = headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            if code.is_some_and(|c| self.grpc.contains(&c)) {
                return Some("grpc");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            statuses: vec![429],
            ranges: vec![(500, 599)],
            grpc: vec![grpc_code("unavailable").unwrap()],
            connect_failures: true,
            backoff_base: std::time::Duration::from_millis(25),
            backoff_max: std::time::Duration::from_millis(250),
        }
    }

    #[test]
    fn statuses_and_ranges() {
        let h = HeaderMap::new();
        assert_eq!(policy().retryable_response(503, &h), Some("status"));
        assert_eq!(policy().retryable_response(429, &h), Some("status"));
        assert_eq!(policy().retryable_response(404, &h), None);
        assert_eq!(policy().retryable_response(200, &h), None);
    }

    #[test]
    fn grpc_trailers_only() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(policy().retryable_response(200, &h), Some("grpc"));
        h.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(policy().retryable_response(200, &h), None);
        h.insert("grpc-status", "junk".parse().unwrap());
        assert_eq!(policy().retryable_response(200, &h), None);
    }

    #[test]
    fn grpc_names() {
        assert_eq!(grpc_code("deadline-exceeded"), Some(4));
        assert_eq!(grpc_code("resource-exhausted"), Some(8));
        assert_eq!(grpc_code("Unavailable"), None);
    }
}
