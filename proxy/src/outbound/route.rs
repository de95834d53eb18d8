//! Route matching: the first route whose match list fits the request wins;
//! a match fits when its path, method, headers and query all do.

use http::Request;
use regex_lite::Regex;

/// How a path is matched.
#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Prefix at a segment boundary.
    Prefix(String),
    Regex(Regex),
}

/// How a header or query value is matched.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

/// One compiled match.
#[derive(Clone, Debug, Default)]
pub struct Match {
    pub path: Option<PathMatch>,
    pub method: Option<http::Method>,
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

impl ValueMatch {
    fn is_match(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => e == v,
            ValueMatch::Regex(r) => full_match(r, v),
        }
    }
}

/// Regexes are compiled anchored (`^(?:…)$`, see `logical::regex`), so a
/// match is a match of the whole value.
fn full_match(r: &Regex, v: &str) -> bool {
    r.is_match(v)
}

/// True when `path` starts with `prefix` at a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.starts_with(prefix)
        && matches!(
            path.as_bytes().get(prefix.len()),
            None | Some(b'/') | Some(b'?')
        )
}

impl Match {
    /// True when the request fits every part of the match.
    pub fn is_match<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => p == path,
            Some(PathMatch::Prefix(p)) => prefix_matches(p, path),
            Some(PathMatch::Regex(r)) => full_match(r, path),
        };
        if !path_ok {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m != req.method()) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, vm)| {
            req.headers()
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| vm.is_match(v)))
        });
        if !headers_ok {
            return false;
        }
        self.query.iter().all(|(name, vm)| {
            query_value(req.uri().query().unwrap_or(""), name).is_some_and(|v| vm.is_match(v))
        })
    }
}

/// The first value of query parameter `name` (not percent-decoded).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// True when any of `matches` fits (an empty list fits everything).
pub fn any_match<B>(matches: &[Match], req: &Request<B>) -> bool {
    matches.is_empty() || matches.iter().any(|m| m.is_match(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> Request<()> {
        Request::get(uri)
            .header("x-canary", "true")
            .body(())
            .unwrap()
    }

    #[test]
    fn paths() {
        let m = |p| Match {
            path: Some(p),
            ..Default::default()
        };
        assert!(m(PathMatch::Exact("/a".into())).is_match(&req("/a")));
        assert!(!m(PathMatch::Exact("/a".into())).is_match(&req("/a/b")));
        assert!(m(PathMatch::Prefix("/a".into())).is_match(&req("/a/b")));
        assert!(m(PathMatch::Prefix("/a/".into())).is_match(&req("/a")));
        assert!(!m(PathMatch::Prefix("/a".into())).is_match(&req("/ab")));
        assert!(m(PathMatch::Prefix("/".into())).is_match(&req("/anything")));
        let r = Regex::new("^(?:/users/[0-9]+)$").unwrap();
        assert!(m(PathMatch::Regex(r.clone())).is_match(&req("/users/42")));
        assert!(
            !m(PathMatch::Regex(r)).is_match(&req("/users/42/x")),
            "regex is whole-path"
        );
    }

    #[test]
    fn method_headers_query() {
        let m = Match {
            method: Some(http::Method::GET),
            headers: vec![(
                http::HeaderName::from_static("x-canary"),
                ValueMatch::Exact("true".into()),
            )],
            query: vec![("v".into(), ValueMatch::Regex(Regex::new("[12]").unwrap()))],
            ..Default::default()
        };
        assert!(m.is_match(&req("/?a=b&v=2")));
        assert!(!m.is_match(&req("/?v=3")));
        assert!(!m.is_match(&req("/")));
        let post = Request::post("/?v=1")
            .header("x-canary", "true")
            .body(())
            .unwrap();
        assert!(!m.is_match(&post));
        let no_header = Request::get("/?v=1").body(()).unwrap();
        assert!(!m.is_match(&no_header));
    }

    #[test]
    fn empty_match_list_matches_all() {
        assert!(any_match(&[], &req("/x")));
    }
}
