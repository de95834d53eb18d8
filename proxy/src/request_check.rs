//! Requests the proxy refuses itself, before routing: methods it cannot
//! proxy (`CONNECT`: no tunnels), an ambiguous target (several `Host`
//! headers) and heads larger than the hop between proxies carries. Each is a
//! client error (`400`, `405`, `431`), never an upstream failure.

use crate::{errors::ProxyError, serve::MAX_HEADER_BYTES};
use http::{header::HOST, Method, Request};

/// Checks a request's head.
pub fn check<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
    }
    let headers = req.headers();
    let mut hosts = headers.get_all(HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::BadRequest("several Host headers"));
    }
    // As HTTP/2 counts a header list: name, value and 32 bytes each.
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    if size > MAX_HEADER_BYTES {
        return Err(ProxyError::HeadersTooLarge(size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_requests_pass() {
        let req = Request::get("http://web/")
            .header(HOST, "web")
            .body(())
            .unwrap();
        assert!(check(&req).is_ok());
        let req = Request::get("/x")
            .header("cookie", "a".repeat(MAX_HEADER_BYTES - 100))
            .body(())
            .unwrap();
        assert!(check(&req).is_ok(), "a large cookie under the limit");
    }

    #[test]
    fn refusals_are_client_errors() {
        let connect = Request::connect("web:443").body(()).unwrap();
        let e = check(&connect).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.reason()),
            (405, "method not allowed")
        );

        let two_hosts = Request::get("/")
            .header(HOST, "web")
            .header(HOST, "admin")
            .body(())
            .unwrap();
        let e = check(&two_hosts).unwrap_err();
        assert_eq!((e.status().as_u16(), e.reason()), (400, "bad request"));

        let huge = Request::get("/")
            .header("x-big", "a".repeat(100 * 1024))
            .body(())
            .unwrap();
        let e = check(&huge).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.reason()),
            (431, "headers too large")
        );
        assert!(e.is_client_error());
        assert_eq!(e.to_response(true).headers()["grpc-status"], "8");
    }
}
