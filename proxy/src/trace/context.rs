//! Trace context headers: W3C `traceparent` and B3 (the single `b3` header and
//! the `x-b3-*` multi headers), parsed into a [`TraceContext`] and written back.
//! No proxy knowledge and no allocation beyond the header values written.

use http::{HeaderMap, HeaderValue};

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor state header (passed through untouched).
pub const TRACESTATE: &str = "tracestate";
/// The B3 single header.
pub const B3: &str = "b3";
/// The B3 multi headers.
pub const B3_TRACE_ID: &str = "x-b3-traceid";
pub const B3_SPAN_ID: &str = "x-b3-spanid";
pub const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const B3_SAMPLED: &str = "x-b3-sampled";
pub const B3_FLAGS: &str = "x-b3-flags";

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// A remote span: the caller's trace id, its span id (our parent) and its
/// sampling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// Never all zeros.
    pub trace_id: [u8; 16],
    /// Never all zeros.
    pub span_id: [u8; 8],
    /// `Some(true)` sampled, `Some(false)` not, `None` when the caller left the
    /// decision to us (B3 without a sampling state).
    pub sampled: Option<bool>,
}

/// Which header family a context came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    TraceParent,
    B3Single,
    B3Multi,
}

impl TraceContext {
    /// The context carried by `headers`: `traceparent` first, then `b3`, then
    /// the `x-b3-*` headers. Malformed headers count as absent.
    pub fn from_headers(headers: &HeaderMap) -> Option<(Self, Format)> {
        let get = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
        if let Some(cx) = get(TRACEPARENT).and_then(parse_traceparent) {
            return Some((cx, Format::TraceParent));
        }
        if let Some(cx) = get(B3).and_then(parse_b3_single) {
            return Some((cx, Format::B3Single));
        }
        let trace_id = get(B3_TRACE_ID)?;
        let span_id = get(B3_SPAN_ID)?;
        parse_b3_multi(trace_id, span_id, get(B3_SAMPLED), get(B3_FLAGS))
            .map(|cx| (cx, Format::B3Multi))
    }

    /// The `traceparent` value (version 00) for this context.
    pub fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[..2].copy_from_slice(b"00");
        hex_into(&self.trace_id, &mut out[3..35]);
        hex_into(&self.span_id, &mut out[36..52]);
        out[53..].copy_from_slice(if self.sampled == Some(true) {
            b"01"
        } else {
            b"00"
        });
        out
    }

    /// The `b3` single value `{trace}-{span}-{0|1}` for this context.
    pub fn b3(&self) -> [u8; 51] {
        let mut out = [b'-'; 51];
        hex_into(&self.trace_id, &mut out[..32]);
        hex_into(&self.span_id, &mut out[33..49]);
        out[50] = if self.sampled == Some(true) {
            b'1'
        } else {
            b'0'
        };
        out
    }

    /// Writes this context into `headers` as `traceparent`, and rewrites the
    /// B3 headers the request carries (single or multi), so that apps that
    /// only speak B3 see the same parent. `tracestate` is left as it came.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let put = |headers: &mut HeaderMap, name: &'static str, v: &[u8]| {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.insert(name, v);
            }
        };
        put(headers, TRACEPARENT, &self.traceparent());
        if headers.contains_key(B3) {
            put(headers, B3, &self.b3());
        }
        if headers.contains_key(B3_TRACE_ID) {
            let mut id = [0u8; 32];
            hex_into(&self.trace_id, &mut id);
            put(headers, B3_TRACE_ID, &id);
            hex_into(&self.span_id, &mut id[..16]);
            put(headers, B3_SPAN_ID, &id[..16]);
            let sampled: &[u8] = if self.sampled == Some(true) {
                b"1"
            } else {
                b"0"
            };
            put(headers, B3_SAMPLED, sampled);
            headers.remove(B3_PARENT_SPAN_ID);
            headers.remove(B3_FLAGS);
        }
    }
}

/// Parses a `traceparent` value: `version-traceid-spanid-flags`, lowercase
/// hex. Version `ff` is invalid; version 00 is exactly 55 bytes; a later
/// version may be longer, with a `-` after the flags.
pub fn parse_traceparent(v: &[u8]) -> Option<TraceContext> {
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != TRACEPARENT_LEN) {
        return None;
    }
    if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = hex_array::<16>(&v[3..35])?;
    let span_id = hex_array::<8>(&v[36..52])?;
    let flags = hex_byte(&v[53..55])?;
    valid(trace_id, span_id, Some(flags & 1 == 1))
}

/// Parses a `b3` single value: `{traceid}-{spanid}[-{sampling}[-{parent}]]`
/// with a 64- or 128-bit trace id. A lone sampling state (`0`, `1`, `d`)
/// carries no context.
pub fn parse_b3_single(v: &[u8]) -> Option<TraceContext> {
    let mut parts = v.split(|b| *b == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = hex_array::<8>(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(b3_sampling(s)?),
    };
    if let Some(parent) = parts.next() {
        hex_array::<8>(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    valid(trace_id, span_id, sampled)
}

/// Parses the `x-b3-*` multi headers; `x-b3-flags: 1` (debug) means sampled.
pub fn parse_b3_multi(
    trace_id: &[u8],
    span_id: &[u8],
    sampled: Option<&[u8]>,
    flags: Option<&[u8]>,
) -> Option<TraceContext> {
    let trace_id = b3_trace_id(trace_id)?;
    let span_id = hex_array::<8>(span_id)?;
    let sampled = if flags == Some(b"1") {
        Some(true)
    } else {
        match sampled {
            None => None,
            Some(b"1") | Some(b"true") => Some(true),
            Some(b"0") | Some(b"false") => Some(false),
            Some(_) => return None,
        }
    };
    valid(trace_id, span_id, sampled)
}

fn valid(trace_id: [u8; 16], span_id: [u8; 8], sampled: Option<bool>) -> Option<TraceContext> {
    (trace_id != [0; 16] && span_id != [0; 8]).then_some(TraceContext {
        trace_id,
        span_id,
        sampled,
    })
}

/// A B3 trace id: 16 hex digits (left-padded to 128 bits) or 32.
fn b3_trace_id(v: &[u8]) -> Option<[u8; 16]> {
    match v.len() {
        32 => hex_array::<16>(v),
        16 => {
            let low = hex_array::<8>(v)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

fn b3_sampling(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

/// Lowercase hex digits into exactly `N` bytes.
fn hex_array<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    if v.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(v.chunks_exact(2)) {
        *o = hex_byte(pair)?;
    }
    Some(out)
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    match pair {
        [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
        _ => None,
    }
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = HEX[usize::from(b >> 4)];
        o[1] = HEX[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn tp(s: &str) -> Option<TraceContext> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn traceparent_round_trips() {
        let cx = tp(TP).expect("valid");
        assert_eq!(cx.trace_id[0], 0x4b);
        assert_eq!(cx.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(cx.sampled, Some(true));
        assert_eq!(&cx.traceparent()[..], TP.as_bytes());
        let unsampled = tp(&TP.replace("-01", "-00")).expect("valid");
        assert_eq!(unsampled.sampled, Some(false));
        // Only bit 0 of the flags means sampled.
        assert_eq!(
            tp(&TP.replace("-01", "-03")).map(|c| c.sampled),
            Some(Some(true))
        );
        assert_eq!(
            tp(&TP.replace("-01", "-02")).map(|c| c.sampled),
            Some(Some(false))
        );
    }

    #[test]
    fn traceparent_versions_and_lengths() {
        assert!(tp(&TP.replacen("00", "ff", 1)).is_none(), "version ff");
        assert!(
            tp(&format!("{TP}-extra")).is_none(),
            "v00 is exactly 55 bytes"
        );
        assert!(tp(&TP[..54]).is_none(), "short");
        let future = TP.replacen("00", "01", 1);
        assert!(tp(&future).is_some());
        assert!(tp(&format!("{future}-what-comes-next")).is_some());
        assert!(tp(&format!("{future}x")).is_none(), "no dash after flags");
        assert!(tp(&TP.to_uppercase()).is_none(), "uppercase hex");
        assert!(tp(&TP.replace('-', "_")).is_none());
        assert!(tp("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01").is_none());
        assert!(tp(&TP.replace("4bf9", "4bg9")).is_none());
    }

    #[test]
    fn all_zero_ids_are_rejected() {
        assert!(tp("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01").is_none());
        assert!(parse_b3_single(b"0000000000000000-00f067aa0ba902b7-1").is_none());
        assert!(parse_b3_multi(b"4bf92f3577b34da6", b"0000000000000000", None, None).is_none());
    }

    #[test]
    fn b3_single() {
        let cx =
            parse_b3_single(b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1").expect("valid");
        assert_eq!(cx, tp(TP).expect("valid"));
        assert_eq!(
            &cx.b3()[..],
            b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"
        );
        let cx = parse_b3_single(b"a3ce929d0e0e4736-00f067aa0ba902b7").expect("64-bit id");
        assert_eq!(cx.trace_id[..8], [0; 8]);
        assert_eq!(cx.trace_id[8], 0xa3);
        assert_eq!(cx.sampled, None);
        let with_parent = b"a3ce929d0e0e4736-00f067aa0ba902b7-d-05e3ac9a4f6e3b90";
        assert_eq!(
            parse_b3_single(with_parent).map(|c| c.sampled),
            Some(Some(true))
        );
        let unsampled = b"a3ce929d0e0e4736-00f067aa0ba902b7-0";
        assert_eq!(
            parse_b3_single(unsampled).map(|c| c.sampled),
            Some(Some(false))
        );
        assert!(parse_b3_single(b"1").is_none(), "sampling only");
        assert!(parse_b3_single(b"a3ce929d0e0e4736-00f067aa0ba902b7-x").is_none());
        assert!(parse_b3_single(b"a3ce929d0e0e47-00f067aa0ba902b7-1").is_none());
    }

    #[test]
    fn b3_multi() {
        let parse = |s: Option<&str>, f: Option<&str>| {
            parse_b3_multi(
                b"a3ce929d0e0e4736",
                b"00f067aa0ba902b7",
                s.map(str::as_bytes),
                f.map(str::as_bytes),
            )
            .map(|c| c.sampled)
        };
        assert_eq!(parse(Some("1"), None), Some(Some(true)));
        assert_eq!(parse(Some("true"), None), Some(Some(true)));
        assert_eq!(parse(Some("0"), None), Some(Some(false)));
        assert_eq!(parse(None, None), Some(None));
        assert_eq!(parse(Some("0"), Some("1")), Some(Some(true)), "debug");
        assert_eq!(parse(Some("yes"), None), None);
    }

    #[test]
    fn headers_prefer_traceparent_and_inject_in_kind() {
        let mut h = HeaderMap::new();
        h.insert(B3_TRACE_ID, HeaderValue::from_static("a3ce929d0e0e4736"));
        h.insert(B3_SPAN_ID, HeaderValue::from_static("00f067aa0ba902b7"));
        h.insert(
            B3_PARENT_SPAN_ID,
            HeaderValue::from_static("05e3ac9a4f6e3b90"),
        );
        let (cx, from) = TraceContext::from_headers(&h).expect("multi");
        assert_eq!(from, Format::B3Multi);
        let child = TraceContext {
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            sampled: Some(true),
            ..cx
        };
        h.insert(B3, HeaderValue::from_static("1"));
        child.inject(&mut h);
        assert_eq!(h[B3].as_bytes(), &child.b3()[..]);
        assert_eq!(h[B3_SPAN_ID], "0102030405060708");
        assert_eq!(h[B3_TRACE_ID], "0000000000000000a3ce929d0e0e4736");
        assert_eq!(h[B3_SAMPLED], "1");
        assert!(h.get(B3_PARENT_SPAN_ID).is_none());
        assert_eq!(
            h[TRACEPARENT],
            "00-0000000000000000a3ce929d0e0e4736-0102030405060708-01"
        );
        // Now traceparent wins.
        let (again, from) = TraceContext::from_headers(&h).expect("traceparent");
        assert_eq!((again, from), (child, Format::TraceParent));
        assert!(TraceContext::from_headers(&HeaderMap::new()).is_none());
    }
}
