use super::*;
use http_body_util::BodyExt;
use mesh_proto::tap::Match;

fn tap(max_taps: usize, rps: u32) -> &'static Tap {
    Tap::leak(
        Limits {
            max_taps,
            default_rps: rps,
            max_rps: 1_000,
        },
        vec!["spiffe://td/ns/mesh-system/sa/mesh-tap".into()],
    )
}

fn head<'a>(m: &'a http::Method, path: &'a str) -> Head<'a> {
    Head {
        direction: "inbound",
        method: m,
        authority: "api.demo.svc.cluster.local:8080",
        path,
    }
}

/// Runs a request through `t` with a response body of `body` bytes; the
/// event sent when the body is read to its end.
async fn request(t: &'static Tap, path: &str, status: u16, body: &'static [u8]) {
    let get = http::Method::GET;
    let Some(tapped) = t.start(&head(&get, path)) else {
        return;
    };
    let rsp = http::Response::builder()
        .status(status)
        .header("authorization", "Bearer secret-token")
        .body(ProxyBody::full(body))
        .unwrap();
    let rsp = tapped.respond(
        &Outcome {
            status,
            src_identity: "spiffe://td/ns/demo/sa/web",
            dst_workload: "api",
            dst_namespace: "demo",
            ..Outcome::default()
        },
        rsp,
    );
    rsp.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn idle_until_someone_taps_and_again_after() {
    let t = tap(2, 100);
    assert!(!t.is_active());
    let (sub, mut rx) = t.subscribe(Filter::default(), 0).unwrap();
    assert!(t.is_active());
    request(t, "/items?token=abc", 200, b"hello").await;
    let e = rx.try_recv().unwrap();
    assert_eq!((e.method.as_str(), e.path.as_str()), ("GET", "/items"));
    assert_eq!((e.status, e.response_bytes, e.grpc_status), (200, 5, -1));
    assert_eq!(e.dst_workload, "api");
    assert!(e.timestamp_us > 0);
    // Nothing of the headers or the body travels.
    let text = format!("{e:?}");
    assert!(!text.contains("secret") && !text.contains("hello") && !text.contains("token"));
    drop(sub);
    assert!(!t.is_active());
    assert!(t.start(&head(&http::Method::GET, "/")).is_none());
}

#[tokio::test]
async fn filters_choose_the_events() {
    let t = tap(4, 100);
    let filter = |m: Match| Filter::parse(&m).unwrap();
    let (_a, mut items) = t
        .subscribe(
            filter(Match {
                path_prefix: "/items".into(),
                ..Match::default()
            }),
            0,
        )
        .unwrap();
    let (_b, mut web) = t
        .subscribe(
            filter(Match {
                src_identity: "spiffe://td/ns/demo/sa/other".into(),
                ..Match::default()
            }),
            0,
        )
        .unwrap();
    request(t, "/items/1", 200, b"").await;
    request(t, "/health", 200, b"").await;
    assert_eq!(items.try_recv().unwrap().path, "/items/1");
    assert!(items.try_recv().is_err());
    assert!(web.try_recv().is_err(), "identity filter must not match");
}

#[tokio::test]
async fn taps_are_capped_and_rate_limited() {
    let t = tap(1, 5);
    let (_sub, mut rx) = t.subscribe(Filter::default(), 0).unwrap();
    assert_eq!(
        t.subscribe(Filter::default(), 0).unwrap_err(),
        TapError::TooMany(1)
    );
    for _ in 0..50 {
        request(t, "/", 200, b"x").await;
    }
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push(e);
    }
    // A burst of at most the rate (the bucket refills a little meanwhile).
    assert!((5..=6).contains(&got.len()), "{}", got.len());
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    request(t, "/", 200, b"x").await;
    let e = rx.try_recv().unwrap();
    assert!(
        e.dropped >= 40,
        "the dropped ones are counted: {}",
        e.dropped
    );
}

#[tokio::test]
async fn grpc_status_and_early_ends() {
    let t = tap(1, 100);
    let (_sub, mut rx) = t.subscribe(Filter::default(), 0).unwrap();
    let post = http::Method::POST;
    let tapped = t.start(&head(&post, "/pkg.Svc/Call")).unwrap();
    // Trailers-only: the status is in the head.
    let rsp = http::Response::builder()
        .header("grpc-status", "14")
        .body(ProxyBody::Empty)
        .unwrap();
    let rsp = tapped.respond(
        &Outcome {
            status: 200,
            grpc: true,
            ..Outcome::default()
        },
        rsp,
    );
    rsp.into_body().collect().await.unwrap();
    let e = rx.try_recv().unwrap();
    assert_eq!((e.grpc_status, e.response_bytes), (14, 0));

    // A gRPC body that ends without a status is UNKNOWN.
    let tapped = t.start(&head(&post, "/pkg.Svc/Cut")).unwrap();
    let rsp = tapped.respond(
        &Outcome {
            status: 200,
            grpc: true,
            ..Outcome::default()
        },
        http::Response::new(ProxyBody::full("abc")),
    );
    rsp.into_body().collect().await.unwrap();
    let e = rx.try_recv().unwrap();
    assert_eq!((e.grpc_status, e.response_bytes), (2, 3));

    // A client that goes away before the end still yields its event.
    let tapped = t.start(&head(&post, "/gone")).unwrap();
    let rsp = tapped.respond(
        &Outcome::default(),
        http::Response::new(ProxyBody::full("abc")),
    );
    drop(rsp);
    assert_eq!(rx.try_recv().unwrap().path, "/gone");
}

#[tokio::test]
async fn no_credentials_no_default_beyond_the_cap_and_gone_clients() {
    let t = Tap::leak(
        Limits {
            max_taps: 2,
            default_rps: 100,
            max_rps: 3,
        },
        Vec::new(),
    );
    assert!(!t.allows(None) && !t.allows(Some("spiffe://td/ns/mesh-system/sa/mesh-tap")));
    let (_sub, mut rx) = t.subscribe(Filter::default(), 0).unwrap();
    let get = http::Method::GET;
    for _ in 0..10 {
        let tapped = t
            .start(&Head {
                direction: "outbound",
                method: &get,
                authority: "user:hunter2@api.demo.svc:80",
                path: "/x",
            })
            .unwrap();
        // Dropped before a response: the client went away.
        drop(tapped);
    }
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push(e);
    }
    assert_eq!(got.len(), 3, "the default rate is capped by max_rps");
    assert_eq!(got[0].authority, "api.demo.svc:80");
    assert_eq!(got[0].proxy_error, CLIENT_GONE);
    assert!(!format!("{got:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_body_cut_short_is_reported() {
    let t = tap(1, 100);
    let (_sub, mut rx) = t.subscribe(Filter::default(), 0).unwrap();
    let post = http::Method::POST;
    let tapped = t.start(&head(&post, "/pkg.Svc/Long")).unwrap();
    let rsp = tapped.respond(
        &Outcome {
            status: 200,
            grpc: true,
            ..Outcome::default()
        },
        http::Response::new(ProxyBody::full("not read")),
    );
    drop(rsp);
    let e = rx.try_recv().unwrap();
    assert_eq!((e.grpc_status, e.proxy_error.as_str()), (1, CLIENT_GONE));
}

#[test]
fn service_filters_match_the_resolved_destination() {
    let f = Filter::parse(&Match {
        dst_service: "api.demo.svc".into(),
        ..Match::default()
    })
    .unwrap();
    let o = |svc| Outcome {
        dst_service: svc,
        ..Outcome::default()
    };
    assert!(f.matches_outcome(&o("api.demo.svc.cluster.local:80")));
    assert!(!f.matches_outcome(&o("web.demo.svc.cluster.local:80")));
    assert!(!f.matches_outcome(&o("")));
}
