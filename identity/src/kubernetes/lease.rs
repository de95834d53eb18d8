//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several replicas
//! (`mesh install --ha`) only one writes: the trust-bundle ConfigMaps and the Events.
//! Every replica keeps serving `Certify` and watching the issuer Secret.
//!
//! [`decide`] and [`next_spec`] are the pure part: from the Lease as read (or none),
//! this replica's identity and the time, what to do and what to write. [`start`] runs
//! the loop around them: GET the Lease, then POST it (none yet) or PUT it with the
//! resourceVersion read (renew, or take over an expired one); a 409 means another
//! replica wrote first. Leadership is published on a `watch` channel ([`is_leader`]) and
//! the `mesh_identity_leader` gauge; a leader that cannot renew within the lease
//! duration minus the renew interval steps down before anyone else may take over.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Name of the Lease, in the control-plane namespace.
pub const LEASE_NAME: &str = "mesh-identity";
/// How long a lease lasts after its last renewal (`spec.leaseDurationSeconds`).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a replica that is not the leader (or a leader that failed to renew)
/// tries again.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);
/// The field manager named in writes.
const FIELD_MANAGER: &str = "mesh-identity";

/// Why election settings were refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LeaseSettingsError {
    /// The holder identity is empty.
    #[error("the holder identity is empty")]
    EmptyIdentity,
    /// The lease duration is not a whole number of seconds ≥ 1.
    #[error("the lease duration must be a whole number of seconds, at least 1 (got {0:?})")]
    LeaseDuration(Duration),
    /// The renew interval leaves no time to renew before stepping down.
    #[error("the renew interval ({renew:?}) must be non-zero and under half the lease duration ({lease:?})")]
    RenewEvery {
        /// The renew interval.
        renew: Duration,
        /// The lease duration.
        lease: Duration,
    },
    /// The retry interval is zero.
    #[error("the retry interval must be non-zero")]
    RetryEvery,
}

/// Who this replica is and the election's timings (validated by the constructors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    identity: String,
    lease_duration: Duration,
    renew_every: Duration,
    retry_every: Duration,
}

// === impl LeaseSettings ===

impl LeaseSettings {
    /// `identity` (see [`holder_identity`]) with the default timings: [`LEASE_DURATION`],
    /// [`RENEW_EVERY`], [`RETRY_EVERY`].
    pub fn new(identity: impl Into<String>) -> Result<Self, LeaseSettingsError> {
        Self::with_timings(identity, LEASE_DURATION, RENEW_EVERY, RETRY_EVERY)
    }

    /// Other timings: `lease_duration` whole seconds ≥ 1 s, `renew_every` non-zero and
    /// under half of it (the leader steps down `lease_duration - renew_every` after its
    /// last renewal), `retry_every` non-zero.
    pub fn with_timings(
        identity: impl Into<String>,
        lease_duration: Duration,
        renew_every: Duration,
        retry_every: Duration,
    ) -> Result<Self, LeaseSettingsError> {
        let identity = identity.into();
        if identity.is_empty() {
            return Err(LeaseSettingsError::EmptyIdentity);
        }
        if lease_duration.as_secs() == 0 || lease_duration.subsec_nanos() != 0 {
            return Err(LeaseSettingsError::LeaseDuration(lease_duration));
        }
        if renew_every.is_zero() || renew_every * 2 >= lease_duration {
            return Err(LeaseSettingsError::RenewEvery {
                renew: renew_every,
                lease: lease_duration,
            });
        }
        if retry_every.is_zero() {
            return Err(LeaseSettingsError::RetryEvery);
        }
        Ok(Self {
            identity,
            lease_duration,
            renew_every,
            retry_every,
        })
    }

    /// This replica's `holderIdentity`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How long after its last successful renewal the leader stops writing.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration - self.renew_every
    }
}

/// This replica's identity: env `POD_NAME` (the downward API), else the hostname (the
/// pod name in Kubernetes), else a random id.
pub fn holder_identity() -> String {
    let env = |name: &str| std::env::var(name).ok();
    let kernel = || std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    first_named([env("POD_NAME"), env("HOSTNAME"), kernel()]).unwrap_or_else(random_id)
}

/// The first candidate that is not blank, trimmed.
fn first_named(candidates: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .map(|c| c.trim().to_string())
        .find(|c| !c.is_empty())
}

fn random_id() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // Unique enough without a random source: the process and the time.
        let nanos = Timestamp::now().as_nanosecond();
        return format!("mesh-identity-{}-{nanos:x}", std::process::id());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("mesh-identity-{hex}")
}

// === decision (pure) ===

/// What a replica does with the Lease it has just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, held by this replica.
    Create,
    /// This replica holds it: renew it.
    Renew,
    /// Released (no holder) or expired: take it over, one more transition.
    Acquire,
    /// Another replica holds a live lease.
    Wait {
        /// Its holder.
        holder: String,
    },
}

/// Decides from the Lease as read (`None`: it does not exist), this replica's identity
/// `me` and `now`. A lease expires `spec.leaseDurationSeconds` (else `duration`) after
/// `spec.renewTime`; one without a renew time counts as expired.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp, duration: Duration) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let unset = LeaseSpec::default();
    let spec = lease.spec.as_ref().unwrap_or(&unset);
    let holder = match spec.holder_identity.as_deref() {
        None | Some("") => return Decision::Acquire,
        Some(holder) if holder == me => return Decision::Renew,
        Some(holder) => holder.to_string(),
    };
    let lasts = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map_or(duration, |s| Duration::from_secs(s.unsigned_abs().into()));
    let lasts = SignedDuration::try_from(lasts).unwrap_or(SignedDuration::MAX);
    let live = spec
        .renew_time
        .as_ref()
        .is_some_and(|renewed| now.duration_since(renewed.0) < lasts);
    if live {
        Decision::Wait { holder }
    } else {
        Decision::Acquire
    }
}

/// The spec to write for `decision` (`None` for [`Decision::Wait`]): held by `me`,
/// renewed `now` for `duration`; taking over also sets the acquire time and counts a
/// transition, renewing keeps both.
pub fn next_spec(
    current: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> Option<LeaseSpec> {
    let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
    let held = LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        renew_time: Some(MicroTime(now)),
        ..LeaseSpec::default()
    };
    match decision {
        Decision::Create => Some(LeaseSpec {
            acquire_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..held
        }),
        Decision::Renew => Some(LeaseSpec {
            acquire_time: current
                .and_then(|s| s.acquire_time.clone())
                .or(Some(MicroTime(now))),
            lease_transitions: Some(transitions),
            ..held
        }),
        Decision::Acquire => Some(LeaseSpec {
            acquire_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions.saturating_add(1)),
            ..held
        }),
        Decision::Wait { .. } => None,
    }
}

// === the elector (I/O) ===

/// Whether `leader` (from [`start`]) says this replica leads now; `false` once the
/// elector is gone.
pub fn is_leader(leader: &watch::Receiver<bool>) -> bool {
    leader.has_changed().is_ok() && *leader.borrow()
}

/// Starts electing in `namespace`. The receiver reads `true` while this replica leads;
/// it is notified after the first round even if still `false`. Abort the task to stop.
pub fn start(
    client: Client,
    namespace: &str,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (leader, task, _release) = start_releasable(client, namespace, settings, metrics);
    // The release handle is dropped: this election runs until aborted.
    (leader, task)
}

/// Asks an election to end: a leader hands the Lease back (holder cleared)
/// so that another replica takes over at once instead of after the lease
/// duration; then the election task returns.
#[derive(Clone, Debug)]
pub struct Release(Arc<watch::Sender<bool>>);

impl Release {
    /// Steps down (once).
    pub fn release(&self) {
        self.0.send_replace(true);
    }
}

/// [`start`], with the handle that ends the election cleanly.
pub fn start_releasable(
    client: Client,
    namespace: &str,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
) -> (watch::Receiver<bool>, JoinHandle<()>, Release) {
    let (tx, rx) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let elector = Elector {
        api: Api::namespaced(client, namespace),
        namespace: namespace.to_string(),
        settings,
        metrics,
        leader: tx,
        stop,
    };
    (rx, tokio::spawn(elector.run()), Release(Arc::new(stop_tx)))
}

/// The running election of one replica.
struct Elector {
    api: Api<Lease>,
    namespace: String,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
    leader: watch::Sender<bool>,
    /// `true` when the replica is stopping ([`Release`]).
    stop: watch::Receiver<bool>,
}

// === impl Elector ===

impl Elector {
    async fn run(self) {
        let mut leading = false;
        let mut first = true;
        // When the last successful claim started (its renewTime is no earlier).
        let mut claimed_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let deadline = match claimed_at {
                Some(at) if leading => at + self.settings.renew_deadline(),
                _ => started + self.settings.lease_duration,
            };
            match tokio::time::timeout_at(deadline, self.attempt()).await {
                Ok(Ok(true)) => claimed_at = Some(started),
                Ok(Ok(false)) => claimed_at = None,
                Ok(Err(error)) => {
                    warn!(%error, lease = %self.lease(), "cannot read or write the lease")
                }
                Err(_) => warn!(lease = %self.lease(), "no answer from the Kubernetes API in time"),
            }
            let now_leading =
                claimed_at.is_some_and(|at| Instant::now() < at + self.settings.renew_deadline());
            self.report(leading, now_leading, first);
            leading = now_leading;
            first = false;
            // A leader that could not renew this round tries again sooner.
            let pause = if claimed_at == Some(started) {
                self.settings.renew_every
            } else {
                self.settings.retry_every
            };
            let mut stop = self.stop.clone();
            let released = async move {
                // A dropped handle never releases.
                if stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = released => {
                    if leading {
                        match tokio::time::timeout(self.settings.renew_every, self.hand_back()).await {
                            Ok(Ok(())) => info!(lease = %self.lease(), "stepped down: lease handed back"),
                            Ok(Err(error)) => warn!(%error, lease = %self.lease(), "cannot hand the lease back; it will expire"),
                            Err(_) => warn!(lease = %self.lease(), "no answer in time handing the lease back; it will expire"),
                        }
                    }
                    self.report(leading, false, false);
                    return;
                }
            }
        }
    }

    /// Clears the holder of the Lease this replica holds, so that another
    /// replica may take it at once (conditional on the version read).
    async fn hand_back(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let mine = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.settings.identity());
        if !mine {
            return Ok(());
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        self.api
            .replace(LEASE_NAME, &params, &lease)
            .await
            .map(|_| ())
    }

    /// `namespace/name` of the Lease.
    fn lease(&self) -> String {
        format!("{}/{LEASE_NAME}", self.namespace)
    }

    /// Publishes leadership: logged and counted when it changes, always sent after the
    /// first round.
    fn report(&self, was: bool, now: bool, first: bool) {
        let identity = self.settings.identity();
        if now && !was {
            info!(%identity, lease = %self.lease(), "became the leader: publishing the trust bundle and Events");
        } else if was && !now {
            warn!(%identity, lease = %self.lease(), "no longer the leader: writes stopped");
        }
        self.metrics.set_leader(now);
        self.leader.send_if_modified(|v| {
            let notify = first || *v != now;
            *v = now;
            notify
        });
    }

    /// One round: reads the Lease and claims it if [`decide`] says so. `Ok(true)`: this
    /// replica holds it, renewed now.
    async fn attempt(&self) -> Result<bool, kube::Error> {
        let me = self.settings.identity();
        let duration = self.settings.lease_duration;
        let current = self.api.get_opt(LEASE_NAME).await?;
        let now = Timestamp::now();
        let decision = decide(current.as_ref(), me, now, duration);
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let Some(spec) = next_spec(spec, &decision, me, now, duration) else {
            debug!(?decision, lease = %self.lease(), "the lease is held by another replica");
            return Ok(false);
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        let transitions = spec.lease_transitions;
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.to_string()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&params, &lease).await
            }
            // The resourceVersion read makes the PUT conditional.
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api.replace(LEASE_NAME, &params, &lease).await
            }
        };
        match written {
            Ok(_) => {
                if decision == Decision::Acquire {
                    info!(?transitions, lease = %self.lease(), "took over the lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(?decision, lease = %self.lease(), "another replica wrote the lease first");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, seconds: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed.map(|s| MicroTime(at(s))),
                acquire_time: Some(MicroTime(at(-100))),
                lease_duration_seconds: seconds,
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    fn wait(holder: &str) -> Decision {
        Decision::Wait {
            holder: holder.to_string(),
        }
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "a", at(0), DURATION), Decision::Create);
        let spec = next_spec(None, &Decision::Create, "a", at(0), DURATION).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(0))));
    }

    #[test]
    fn my_lease_is_renewed_even_when_expired() {
        let mine = lease(Some("a"), Some(0), Some(15));
        assert_eq!(decide(Some(&mine), "a", at(1), DURATION), Decision::Renew);
        assert_eq!(decide(Some(&mine), "a", at(60), DURATION), Decision::Renew);
        let spec = next_spec(mine.spec.as_ref(), &Decision::Renew, "a", at(5), DURATION).unwrap();
        assert_eq!(spec.renew_time, Some(MicroTime(at(5))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(-100))), "kept");
        assert_eq!(spec.lease_transitions, Some(3), "not a transition");
    }

    #[test]
    fn another_holders_live_lease_is_waited_for() {
        let theirs = lease(Some("b"), Some(0), Some(15));
        for now in [0, 1, 14] {
            assert_eq!(decide(Some(&theirs), "a", at(now), DURATION), wait("b"));
        }
        // Renewed "in the future" (clock skew): still live.
        assert_eq!(decide(Some(&theirs), "a", at(-5), DURATION), wait("b"));
        assert_eq!(
            next_spec(theirs.spec.as_ref(), &wait("b"), "a", at(0), DURATION),
            None
        );
    }

    #[test]
    fn another_holders_expired_lease_is_taken_over() {
        let theirs = lease(Some("b"), Some(0), Some(15));
        assert_eq!(
            decide(Some(&theirs), "a", at(15), DURATION),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&theirs), "a", at(99), DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn the_leases_own_duration_counts_else_ours() {
        let short = lease(Some("b"), Some(0), Some(2));
        assert_eq!(decide(Some(&short), "a", at(1), DURATION), wait("b"));
        assert_eq!(
            decide(Some(&short), "a", at(2), DURATION),
            Decision::Acquire
        );
        for unset in [None, Some(0), Some(-1)] {
            let theirs = lease(Some("b"), Some(0), unset);
            assert_eq!(decide(Some(&theirs), "a", at(14), DURATION), wait("b"));
            assert_eq!(
                decide(Some(&theirs), "a", at(15), DURATION),
                Decision::Acquire
            );
        }
    }

    #[test]
    fn a_lease_without_renew_time_or_holder_is_taken_over() {
        let never_renewed = lease(Some("b"), None, Some(15));
        assert_eq!(
            decide(Some(&never_renewed), "a", at(0), DURATION),
            Decision::Acquire
        );
        for released in [
            lease(None, Some(0), Some(15)),
            lease(Some(""), Some(0), None),
        ] {
            assert_eq!(
                decide(Some(&released), "a", at(0), DURATION),
                Decision::Acquire
            );
        }
        let empty = Lease::default();
        assert_eq!(
            decide(Some(&empty), "a", at(0), DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let theirs = lease(Some("b"), Some(0), Some(15));
        let spec = next_spec(
            theirs.spec.as_ref(),
            &Decision::Acquire,
            "a",
            at(20),
            DURATION,
        )
        .unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(20))));
        // A lease that never counted one starts from zero.
        let spec = next_spec(
            Some(&LeaseSpec::default()),
            &Decision::Acquire,
            "a",
            at(0),
            DURATION,
        )
        .unwrap();
        assert_eq!(spec.lease_transitions, Some(1));
    }

    #[test]
    fn settings_are_validated() {
        let ok = LeaseSettings::new("pod-0").unwrap();
        assert_eq!(ok.identity(), "pod-0");
        assert_eq!(ok.renew_deadline(), Duration::from_secs(10));
        let ms = Duration::from_millis;
        assert!(LeaseSettings::with_timings("a", ms(1000), ms(200), ms(100)).is_ok());
        assert_eq!(
            LeaseSettings::new(""),
            Err(LeaseSettingsError::EmptyIdentity)
        );
        for bad in [ms(0), ms(1500)] {
            assert_eq!(
                LeaseSettings::with_timings("a", bad, ms(100), ms(100)),
                Err(LeaseSettingsError::LeaseDuration(bad))
            );
        }
        for renew in [ms(0), ms(500), ms(900)] {
            assert!(matches!(
                LeaseSettings::with_timings("a", ms(1000), renew, ms(100)),
                Err(LeaseSettingsError::RenewEvery { .. })
            ));
        }
        assert_eq!(
            LeaseSettings::with_timings("a", ms(1000), ms(200), ms(0)),
            Err(LeaseSettingsError::RetryEvery)
        );
    }

    #[test]
    fn the_identity_is_the_first_name_given() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(first_named([s("pod-0"), s("host")]), s("pod-0"));
        assert_eq!(first_named([None, s(" \n"), s("host\n")]), s("host"));
        assert_eq!(first_named([None, None]), None);
        let random = random_id();
        assert!(random.starts_with("mesh-identity-"), "{random}");
        assert_ne!(random, random_id());
    }

    #[test]
    fn leadership_ends_with_the_elector() {
        let (tx, rx) = watch::channel(true);
        assert!(is_leader(&rx));
        tx.send_replace(false);
        assert!(!is_leader(&rx));
        tx.send_replace(true);
        drop(tx);
        assert!(!is_leader(&rx), "no elector, no leader");
    }
}
