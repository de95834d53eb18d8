//! Human-friendly durations for flags such as `--cert-lifetime 24h` and
//! `--ttl 8760h`: an integer followed by `s`, `m`, `h` or `d`, possibly
//! several in a row (`1h30m`).

use std::time::Duration;
use thiserror::Error;

/// Why a duration string could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected e.g. 20s, 90m, 24h, 1d or 1h30m")]
pub struct ParseDurationError(pub String);

/// Parses `20s`, `90m`, `24h`, `1d`, `1h30m`; zero is refused.
pub fn parse(input: &str) -> Result<Duration, ParseDurationError> {
    let err = || ParseDurationError(input.to_string());
    let s = input.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(err()),
        };
        let n: u64 = digits.parse().map_err(|_| err())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    if !digits.is_empty() || total == 0 {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("8760h").unwrap(), Duration::from_secs(8760 * 3600));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "24",
            "h",
            "1x",
            "0s",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
