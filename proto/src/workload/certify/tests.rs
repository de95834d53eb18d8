use super::*;
use crate::workload::{renewal_directive, Bundle};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use std::sync::Mutex;

#[test]
fn renews_at_seventy_percent_within_ten_percent() {
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(renew_after(day, 0.0), Duration::from_secs(60480));
    assert_eq!(renew_after(day, 1.0), day.mul_f64(0.77));
    assert_eq!(renew_after(day, -1.0), day.mul_f64(0.63));
    assert_eq!(renew_after(day, 7.0), day.mul_f64(0.77), "clamped");
    for _ in 0..1000 {
        let u = random_unit();
        assert!((-1.0..=1.0).contains(&u), "{u}");
    }
}

#[test]
fn backoff_grows_is_capped_and_bounded_by_the_lifetime_left() {
    assert_eq!(backoff(1, None), Duration::from_secs(1));
    assert!(backoff(2, None) > backoff(1, None));
    assert_eq!(backoff(30, None), Duration::from_secs(30));
    assert_eq!(
        backoff(30, Some(Duration::from_secs(9))),
        Duration::from_secs(3)
    );
    assert_eq!(
        backoff(30, Some(Duration::ZERO)),
        Duration::from_millis(100),
        "never a busy loop"
    );
    assert_eq!(
        backoff(1, Some(Duration::from_secs(3600))),
        Duration::from_secs(1)
    );
}

/// A certifier that records when it was called and answers from a script.
struct Scripted {
    calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
    outcome: fn() -> Result<Issued, CertifyError>,
}

impl Certifier for Scripted {
    fn certify(
        &mut self,
        _store: &CertStore,
    ) -> impl Future<Output = Result<Issued, CertifyError>> + Send {
        self.calls.lock().unwrap().push(tokio::time::Instant::now());
        let outcome = (self.outcome)();
        async move { outcome }
    }
}

fn valid_for_100s() -> Result<Issued, CertifyError> {
    Ok(Issued {
        valid_until: SystemTime::now() + Duration::from_secs(100),
        lifetime: Duration::from_secs(100),
    })
}

fn unavailable() -> Result<Issued, CertifyError> {
    Err(CertifyError::Rpc(tonic::Status::unavailable("down")))
}

fn gaps(calls: &Mutex<Vec<tokio::time::Instant>>) -> Vec<Duration> {
    let calls = calls.lock().unwrap();
    calls.windows(2).map(|w| w[1] - w[0]).collect()
}

fn a_bundle() -> Arc<TrustBundle> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    TrustBundle::from_pem(&params.self_signed(&key).unwrap().pem()).unwrap()
}

/// A store holding a self-signed certificate that expires `left` from now.
fn store_expiring_in(left: Duration) -> CertStore {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.not_after = (SystemTime::now() + left).into();
    let cert = params.self_signed(&key).unwrap();
    let store = CertStore::default();
    store.set(super::super::certified_key(&cert.pem(), &key.serialize_pem()).unwrap());
    store
}

#[tokio::test(start_paused = true)]
async fn renewals_are_spread_between_63_and_77_percent_of_the_lifetime() {
    let calls = Arc::default();
    let certifier = Scripted {
        calls: Arc::clone(&calls),
        outcome: valid_for_100s,
    };
    let (store, bundle) = (CertStore::default(), a_bundle());
    let run = renewal_loop(certifier, &store, &bundle, |_, _| {});
    let _ = tokio::time::timeout(Duration::from_secs(100 * 70), run).await;
    let gaps = gaps(&calls);
    assert!(gaps.len() > 90, "{}", gaps.len());
    for gap in &gaps {
        assert!(
            (Duration::from_secs(63)..=Duration::from_secs(77)).contains(gap),
            "{gap:?}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = gaps.iter().map(|g| g.as_secs()).collect();
    assert!(distinct.len() > 5, "jittered: {distinct:?}");
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_retry_faster_as_the_certificate_runs_out() {
    let calls = Arc::default();
    let certifier = Scripted {
        calls: Arc::clone(&calls),
        outcome: unavailable,
    };
    // Nothing installed: the plain backoff, up to 30 s.
    let (store, bundle) = (CertStore::default(), a_bundle());
    let run = renewal_loop(certifier, &store, &bundle, |_, _| {});
    let _ = tokio::time::timeout(Duration::from_secs(300), run).await;
    let waits = gaps(&calls);
    assert_eq!(waits[0], Duration::from_secs(1));
    assert_eq!(*waits.last().unwrap(), Duration::from_secs(30));

    // 9 s left (real clock): every wait at most a third of that.
    let calls = Arc::default();
    let certifier = Scripted {
        calls: Arc::clone(&calls),
        outcome: unavailable,
    };
    let store = store_expiring_in(Duration::from_secs(9));
    let run = renewal_loop(certifier, &store, &bundle, |_, _| {});
    let _ = tokio::time::timeout(Duration::from_secs(60), run).await;
    let waits = gaps(&calls);
    assert!(waits.len() >= 15, "{waits:?}");
    assert!(
        waits.iter().all(|w| *w <= Duration::from_secs(3)),
        "{waits:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bundle_asking_for_renewal_renews_within_its_spread() {
    let calls = Arc::default();
    let certifier = Scripted {
        calls: Arc::clone(&calls),
        outcome: valid_for_100s,
    };
    // The store says when the certificate was installed; the scripted certifier does not
    // install one, so give it one installed now.
    let store = store_expiring_in(Duration::from_secs(3600));
    let bundle = a_bundle();
    let pem = |directive: String| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        format!("{directive}\n{}", params.self_signed(&key).unwrap().pem())
    };
    let run = renewal_loop(certifier, &store, &bundle, |_, _| {});
    tokio::pin!(run);
    // First certificate.
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut run).await;
    assert_eq!(calls.lock().unwrap().len(), 1);

    // A bundle with a directive naming a time before the install: no renewal.
    let past = store.installed_at().unwrap() - Duration::from_secs(60);
    bundle.replace(Bundle::parse(&pem(renewal_directive(past, Duration::from_secs(10)))).unwrap());
    let _ = tokio::time::timeout(Duration::from_secs(20), &mut run).await;
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "installed after: not renewed"
    );

    // One after it: renewed within the 10 s spread, once.
    let later = SystemTime::now() + Duration::from_secs(1);
    let asked = tokio::time::Instant::now();
    bundle.replace(Bundle::parse(&pem(renewal_directive(later, Duration::from_secs(10)))).unwrap());
    let _ = tokio::time::timeout(Duration::from_secs(30), &mut run).await;
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2, "renewed once");
    assert!(
        calls[1] - asked <= Duration::from_secs(10),
        "{:?}",
        calls[1] - asked
    );
}
