//! `--source kubernetes` against a fake API server at the HTTP layer: TokenReview
//! decides who gets a certificate (real `Certify` calls over TLS), and the issuer Secret
//! is reloaded without a restart (a bad one refused with an Event).

mod support;

use support::*;

#[tokio::test]
async fn token_review_decides_who_gets_a_certificate() {
    let anchor = anchor();
    let (api, first) = cluster(&anchor).await;
    let mut r = start(&api, &anchor).await;
    let web = spiffe_id(TD, "shop", "web");

    // Authenticated, audience-bound, for the requested account: a leaf from the issuer.
    let resp = certify(&mut r.client, "web-token", &web).await.unwrap();
    assert_signed_by(&resp, &first.0);
    let reviews: Vec<Value> = api
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST" && c.path == TOKEN_REVIEWS)
        .map(|c| c.body.unwrap())
        .collect();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["spec"]["token"], "web-token");
    assert_eq!(
        reviews[0]["spec"]["audiences"],
        json!(["identity.mesh.dev"])
    );

    // Not authenticated: UNAUTHENTICATED, saying why.
    let err = certify(&mut r.client, "stolen", &web).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(
        err.message(),
        "token rejected: the API server did not authenticate it: invalid bearer token"
    );
    // Authenticated but for another audience: refused too.
    let err = certify(&mut r.client, "api-token", &web).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("do not include identity.mesh.dev"),
        "{err:?}"
    );

    // A valid token for shop/web asking for another account: PERMISSION_DENIED.
    let admin = spiffe_id(TD, "shop", "admin");
    let err = certify(&mut r.client, "web-token", &admin)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "token is for spiffe://cluster.local/ns/shop/sa/web but the request asks for \
         spiffe://cluster.local/ns/shop/sa/admin"
    );

    // The API server failing: UNAVAILABLE, naming it.
    let err = certify(&mut r.client, "down", &web).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(
            "the Kubernetes API refused the TokenReview (500 InternalError): etcd is unhappy"
        ),
        "{err:?}"
    );

    let text = metrics(r.admin).await;
    for line in [
        "mesh_identity_certificates_issued_total 1",
        "mesh_identity_certify_errors_total{code=\"UNAUTHENTICATED\"} 2",
        "mesh_identity_certify_errors_total{code=\"PERMISSION_DENIED\"} 1",
        "mesh_identity_certify_errors_total{code=\"UNAVAILABLE\"} 1",
        "mesh_identity_issuer_reloads_total{result=\"ok\"} 1",
    ] {
        assert!(has_line(&text, line), "{line} missing in\n{text}");
    }
    assert_eq!(r.service.issued_total(), 1);
    assert_eq!(r.service.errors_total(), 4);
}

#[tokio::test]
async fn an_unreachable_api_server_is_unavailable() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let reviewer = TokenReviewer::new(kube::Client::try_from(config).unwrap());
    let err = reviewer.authenticate(b"web-token").await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Unavailable(m) if m.contains("cannot reach the Kubernetes API")),
        "{err:?}"
    );
    assert_eq!(Status::from(err).code(), Code::Unavailable);
}

#[tokio::test]
async fn a_changed_issuer_secret_is_signing_without_a_restart() {
    let anchor = anchor();
    let (api, first) = cluster(&anchor).await;
    let mut r = start(&api, &anchor).await;
    let web = spiffe_id(TD, "shop", "web");
    assert_signed_by(
        &certify(&mut r.client, "web-token", &web).await.unwrap(),
        &first.0,
    );

    // MODIFIED: a new issuer under the same anchor.
    let second = issuer(&anchor);
    api.apply(SECRETS, issuer_secret(&second));
    let want = der(&second.0);
    let service = r.service.clone();
    eventually("the new issuer is loaded", || {
        service.issuer().issuer_cert_der() == want.as_slice()
    })
    .await;
    // The same connection, the same process: leaves now chain to the new issuer.
    assert_signed_by(
        &certify(&mut r.client, "web-token", &web).await.unwrap(),
        &second.0,
    );
    // New connections are served with a certificate from the new issuer too.
    let chain = serving_chain(r.addr, &anchor.cert).await;
    assert_eq!(chain.len(), 2);
    assert_eq!(
        chain[1], want,
        "the serving certificate comes from the new issuer"
    );
    let mut fresh = connect(r.addr, &anchor.cert).await;
    assert_signed_by(
        &certify(&mut fresh, "web-token", &web).await.unwrap(),
        &second.0,
    );

    let text = metrics(r.admin).await;
    assert!(
        has_line(&text, "mesh_identity_issuer_reloads_total{result=\"ok\"} 2"),
        "{text}"
    );
    let not_after = X509Certificate::from_der(&want)
        .unwrap()
        .1
        .validity()
        .not_after
        .timestamp();
    assert!(
        has_line(
            &text,
            &format!("mesh_identity_issuer_expiry_timestamp_seconds {not_after}")
        ),
        "{text}"
    );
    eventually("an IssuerUpdated event is posted", || {
        api.objects(EVENTS)
            .iter()
            .any(|e| e["reason"] == "IssuerUpdated" && e["type"] == "Normal")
    })
    .await;
}

#[tokio::test]
async fn an_issuer_that_does_not_chain_to_the_anchors_is_refused() {
    let anchor = anchor();
    let (api, first) = cluster(&anchor).await;
    let mut r = start(&api, &anchor).await;
    let web = spiffe_id(TD, "shop", "web");

    let foreign = issuer(&self::anchor());
    api.apply(SECRETS, issuer_secret(&foreign));
    eventually("an IssuerRejected event is posted", || {
        api.objects(EVENTS)
            .iter()
            .any(|e| e["reason"] == "IssuerRejected")
    })
    .await;
    let events = api.objects(EVENTS);
    let event = events
        .iter()
        .find(|e| e["reason"] == "IssuerRejected")
        .unwrap();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["action"], "Reload");
    assert_eq!(event["reportingController"], "mesh-identity");
    assert_eq!(event["metadata"]["namespace"], CONTROL_NS);
    assert_eq!(event["regarding"]["kind"], "Secret");
    assert_eq!(event["regarding"]["name"], SECRET);
    assert_eq!(event["regarding"]["namespace"], CONTROL_NS);
    let message = event["note"].as_str().unwrap();
    assert!(
        message.contains("keeping the current issuer")
            && message.contains(
                "is not signed by any trust anchor of the bundle: CN=root.cluster.local (sha256 "
            ),
        "{message}"
    );
    assert!(api.calls().iter().any(|c| c.method == "POST"
        && c.path == "/apis/events.k8s.io/v1/namespaces/mesh-system/events"
        && c.body.as_ref().unwrap()["reason"] == "IssuerRejected"));

    // Seen again (every relist delivers the same Secret): one Event with a series
    // count, not a new Event each time.
    api.expire();
    eventually("the repeat is folded into a series", || {
        api.objects(EVENTS)
            .iter()
            .any(|e| e["reason"] == "IssuerRejected" && e["series"]["count"] == 2)
    })
    .await;
    let rejected: Vec<Value> = api
        .objects(EVENTS)
        .into_iter()
        .filter(|e| e["reason"] == "IssuerRejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");

    // The old issuer keeps signing.
    assert_eq!(
        r.service.issuer().issuer_cert_der(),
        der(&first.0).as_slice()
    );
    assert_signed_by(
        &certify(&mut r.client, "web-token", &web).await.unwrap(),
        &first.0,
    );
    let text = metrics(r.admin).await;
    for line in [
        "mesh_identity_issuer_reloads_total{result=\"ok\"} 1",
        "mesh_identity_issuer_reloads_total{result=\"rejected\"} 1",
    ] {
        assert!(has_line(&text, line), "{line} missing in\n{text}");
    }
}

#[tokio::test]
async fn startup_fails_clearly_without_a_valid_issuer() {
    let anchor = anchor();
    let api = KubeApi::start(PATHS).await;
    let settings = settings(&anchor, Duration::from_millis(1500));
    let metrics = Arc::new(Metrics::new());
    let err = kubernetes::start(api.client(), settings.clone(), metrics.clone())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no valid issuer in Secret mesh-system/mesh-identity-issuer within 1.5s: \
         Secret mesh-system/mesh-identity-issuer not found"
    );

    let foreign = issuer(&self::anchor());
    api.apply(SECRETS, issuer_secret(&foreign));
    let err = kubernetes::start(api.client(), settings, metrics)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "is not signed by any trust anchor of the bundle: CN=root.cluster.local (sha256 "
        ),
        "{err}"
    );
}
