//! Value checks shared by the traffic-management kinds: Gateway API durations, regular
//! expressions, HTTP status codes, percentages and gRPC status names. Each check returns an
//! [`Invalid`] naming the offending field, which the parser turns into a [`super::ParseError`]
//! naming the resource too.

use std::str::FromStr;

/// A field whose value is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Invalid {
    /// Path of the field, e.g. `spec.rules[0].matches[1].path.value`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    /// An error about the field at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The gRPC status names a retry policy may list, in the proto's spelling.
pub const GRPC_CODES: &[&str] = &[
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// A Gateway API duration (GEP-2257: `100ms`, `1s`, `1m30s`, `1h`) in milliseconds.
pub fn duration_ms(value: &str, path: &str) -> Result<u32, Invalid> {
    let d = gateway_api::Duration::from_str(value).map_err(|e| {
        Invalid::new(
            path,
            format!("invalid duration {value:?} (expected e.g. 100ms, 1s, 1m30s): {e}"),
        )
    })?;
    u32::try_from(d.as_millis())
        .map_err(|_| Invalid::new(path, format!("duration {value:?} is too long")))
}

/// Checks that `re` is a valid regular expression for the proxy's engine (regex-lite:
/// RE2-like syntax without Unicode classes such as `\p{L}`).
pub fn regex(re: &str, path: &str) -> Result<(), Invalid> {
    regex_lite::Regex::new(re)
        .map(drop)
        .map_err(|e| Invalid::new(path, format!("invalid regular expression {re:?}: {e}")))
}

/// An HTTP status code, 100–599.
pub fn status_code(code: i64, path: &str) -> Result<u32, Invalid> {
    match u32::try_from(code) {
        Ok(c) if (100..=599).contains(&c) => Ok(c),
        _ => Err(Invalid::new(
            path,
            format!("status code {code} is outside 100-599"),
        )),
    }
}

/// A percentage, 0–100.
pub fn percent(p: f64, path: &str) -> Result<f32, Invalid> {
    if (0.0..=100.0).contains(&p) {
        Ok(p as f32)
    } else {
        Err(Invalid::new(
            path,
            format!("percentage {p} is outside 0-100"),
        ))
    }
}

/// A gRPC status name, normalised to lower case with dashes (`DEADLINE_EXCEEDED` →
/// `deadline-exceeded`); must be one of [`GRPC_CODES`].
pub fn grpc_code(name: &str, path: &str) -> Result<String, Invalid> {
    let norm = name.trim().to_ascii_lowercase().replace('_', "-");
    if GRPC_CODES.contains(&norm.as_str()) {
        Ok(norm)
    } else {
        Err(Invalid::new(
            path,
            format!(
                "unknown gRPC status {name:?} (expected one of {})",
                GRPC_CODES.join(", ")
            ),
        ))
    }
}

/// A non-negative integer that fits a `u32`, at most `max`.
pub fn bounded(value: i64, max: u32, path: &str) -> Result<u32, Invalid> {
    match u32::try_from(value) {
        Ok(v) if v <= max => Ok(v),
        _ => Err(Invalid::new(path, format!("{value} is outside 0-{max}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_ms("100ms", "x"), Ok(100));
        assert_eq!(duration_ms("1s", "x"), Ok(1_000));
        assert_eq!(duration_ms("1m", "x"), Ok(60_000));
        assert_eq!(duration_ms("1h", "x"), Ok(3_600_000));
        assert_eq!(duration_ms("1m30s", "x"), Ok(90_000));
        assert_eq!(duration_ms("0s", "x"), Ok(0));
        for bad in ["", "1", "1.5s", "-1s", "1d", "10us", "1 s", "99999h"] {
            let err = duration_ms(bad, "spec.x").unwrap_err();
            assert_eq!(err.path, "spec.x", "{bad}");
        }
    }

    #[test]
    fn regexes() {
        assert!(regex("/api/v[0-9]+/.*", "p").is_ok());
        let err = regex("/api/(", "spec.p").unwrap_err();
        assert_eq!(err.path, "spec.p");
        assert!(err.message.contains("invalid regular expression"), "{err}");
    }

    #[test]
    fn codes_and_percentages() {
        assert_eq!(status_code(100, "c"), Ok(100));
        assert_eq!(status_code(599, "c"), Ok(599));
        assert!(status_code(99, "c").is_err());
        assert!(status_code(600, "c").is_err());
        assert!(status_code(-503, "c").is_err());
        assert_eq!(percent(0.0, "p"), Ok(0.0));
        assert_eq!(percent(100.0, "p"), Ok(100.0));
        assert!(percent(100.5, "p").is_err());
        assert!(percent(-1.0, "p").is_err());
        assert!(percent(f64::NAN, "p").is_err());
        assert_eq!(bounded(7, 10, "b"), Ok(7));
        assert!(bounded(11, 10, "b").is_err());
        assert!(bounded(-1, 10, "b").is_err());
    }

    #[test]
    fn grpc_codes() {
        assert_eq!(grpc_code("unavailable", "g").as_deref(), Ok("unavailable"));
        assert_eq!(
            grpc_code(" DEADLINE_EXCEEDED", "g").as_deref(),
            Ok("deadline-exceeded")
        );
        let err = grpc_code("unavaliable", "g").unwrap_err();
        assert!(err.message.contains("unknown gRPC status"), "{err}");
    }
}
