//! Request paths as policies see them. A path rule compares strings, so
//! `/public/../admin`, `//admin` or `/%61dmin` must not slip past a rule
//! the application (which normalizes) would read differently: on ports whose
//! policies match paths, the proxy normalizes the path, matches and forwards
//! the normalized form, and refuses paths that stay ambiguous.

use std::borrow::Cow;

/// A path the proxy will not forward on a port with path rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the path has an encoded or backward slash")]
    Slash,
    #[error("the path has a malformed percent-encoding")]
    Encoding,
}

/// The path with percent-encoded unreserved characters decoded, other
/// escapes upper-cased, repeated slashes merged and `.`/`..` segments
/// resolved (RFC 3986 §6.2.2). Encoded slashes and backslashes are refused.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path)); // `*` (OPTIONS) or authority-form
    }
    let suspicious =
        path.contains('%') || path.contains('\\') || path.contains("//") || path.contains("/.");
    if !suspicious {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" | "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing || out.is_empty() {
        normal.push('/');
    }
    if normal == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(normal))
    }
}

fn decode_unreserved(path: &str) -> Result<String, BadPath> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(BadPath::Slash),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(BadPath::Encoding)?;
                let hex = std::str::from_utf8(hex).map_err(|_| BadPath::Encoding)?;
                let b = u8::from_str_radix(hex, 16).map_err(|_| BadPath::Encoding)?;
                match b {
                    b'/' | b'\\' => return Err(BadPath::Slash),
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                        out.push(char::from(b));
                    }
                    b => {
                        out.push('%');
                        out.push_str(&format!("{b:02X}"));
                    }
                }
                i += 3;
            }
            _ => {
                // Multi-byte characters are copied whole.
                let len = utf8_len(bytes[i]);
                out.push_str(path.get(i..i + len).ok_or(BadPath::Encoding)?);
                i += len;
            }
        }
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, BadPath> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize("/balance"),
            Ok(Cow::Borrowed("/balance"))
        ));
        assert!(matches!(normalize("/a/b/"), Ok(Cow::Borrowed("/a/b/"))));
        assert!(matches!(normalize("*"), Ok(Cow::Borrowed("*"))));
    }

    #[test]
    fn tricks_are_undone() {
        assert_eq!(n("/public/../admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("//transfer").unwrap(), "/transfer");
        assert_eq!(n("/./transfer").unwrap(), "/transfer");
        assert_eq!(n("/%74ransfer").unwrap(), "/transfer");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/../../x").unwrap(), "/x");
        assert_eq!(n("/a//b///").unwrap(), "/a/b/");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/%").unwrap_err(), BadPath::Encoding);
        assert_eq!(n("/%zz").unwrap_err(), BadPath::Encoding);
        assert_eq!(n("/a%2Fb").unwrap_err(), BadPath::Slash);
        assert_eq!(n("/a%5cb").unwrap_err(), BadPath::Slash);
        assert_eq!(n("/a\\b").unwrap_err(), BadPath::Slash);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Paths built from the pieces that make normalization hard.
        fn tricky_path() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/".to_string()),
                Just("//".to_string()),
                Just("/.".to_string()),
                Just("/..".to_string()),
                Just("%2e".to_string()),
                Just("%2E".to_string()),
                Just("%61".to_string()),
                Just("%2f".to_string()),
                Just("%5C".to_string()),
                Just("%".to_string()),
                Just("%zz".to_string()),
                Just("\\".to_string()),
                "[a-z]{1,4}",
            ];
            proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4_000))]

            /// Normalizing never panics; a normal path is a fixed point,
            /// absolute, with no empty, `.` or `..` segment left.
            #[test]
            fn normal_paths_are_fixed_points(path in tricky_path()) {
                if let Ok(normal) = normalize(&path) {
                    let normal = normal.into_owned();
                    prop_assert!(normal.starts_with('/'));
                    prop_assert_eq!(normalize(&normal).unwrap().into_owned(), normal.clone());
                    let inner = normal.trim_end_matches('/');
                    for seg in inner.split('/').skip(1) {
                        prop_assert!(seg != "." && seg != ".." && !seg.is_empty(), "{}", normal);
                    }
                    prop_assert!(!normal.contains('\\'));
                }
            }

            /// Any string at all: an answer, never a panic.
            #[test]
            fn any_string_is_answered(path in ".{0,40}") {
                let _ = normalize(&path);
            }
        }
    }
}
