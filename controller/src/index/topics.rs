//! Per-target fan-out of index changes. Each index change records which Services,
//! workloads and addresses it may have altered ([`Changes`]); every stream waits on the
//! topic of the one thing it watches ([`Interest`]), so a change wakes only the streams it
//! concerns, and all streams of one target share one topic.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::sync::watch;

use super::{Key, Target};

/// What a stream's answer depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Interest {
    /// The Service `(namespace, name)`: its ports, endpoints and client policy.
    Service(Key),
    /// The workload `(namespace, name)`: its inbound policy.
    Workload(Key),
    /// What an `ip:port` target resolves to (a Service cluster IP or a workload address).
    Addr(IpAddr),
    /// Nothing in the index (a name that can never be a Service here).
    Nothing,
}

impl Interest {
    /// What the answer for `target` depends on.
    pub fn of_target(target: &Target) -> Self {
        match target {
            Target::Service {
                namespace, name, ..
            } => Interest::Service((namespace.clone(), name.clone())),
            Target::Addr(addr) => Interest::Addr(addr.ip()),
            Target::Other { .. } => Interest::Nothing,
        }
    }

    /// The interest of the inbound policy of `workload` (`namespace/name`).
    pub fn of_workload(workload: &str) -> Self {
        match workload.split_once('/') {
            Some((ns, name)) => Interest::Workload((ns.to_string(), name.to_string())),
            None => Interest::Nothing,
        }
    }
}

/// What one index change may have altered. Coarse where fine tracking would not pay
/// (routes and faults are rare: they wake every Service and address stream).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services whose endpoints or policy may differ.
    pub services: BTreeSet<Key>,
    /// Workloads whose inbound policy may differ.
    pub workloads: BTreeSet<Key>,
    /// Namespaces in which every workload's inbound policy may differ.
    pub workload_namespaces: BTreeSet<String>,
    /// Addresses whose resolution may differ.
    pub addrs: BTreeSet<IpAddr>,
    /// Every Service's and address's policy may differ (a route or fault changed).
    pub all_policies: bool,
}

impl Changes {
    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.workloads.is_empty()
            && self.workload_namespaces.is_empty()
            && self.addrs.is_empty()
            && !self.all_policies
    }

    /// Whether a stream with `interest` must look again.
    pub fn concerns(&self, interest: &Interest) -> bool {
        match interest {
            Interest::Service(k) => self.all_policies || self.services.contains(k),
            Interest::Addr(ip) => self.all_policies || self.addrs.contains(ip),
            Interest::Workload(k) => {
                self.workloads.contains(k) || self.workload_namespaces.contains(&k.0)
            }
            Interest::Nothing => false,
        }
    }
}

/// The topics streams wait on, one per distinct interest.
#[derive(Debug, Default)]
pub struct Topics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    topics: HashMap<Interest, watch::Sender<()>>,
    /// Set when the index writer is gone: topics end (and with them the streams).
    closed: bool,
    /// The size past which topics nobody waits on are dropped.
    prune_at: usize,
}

/// Least size before topics without waiters are dropped (amortized: at most once per
/// doubling).
const MIN_PRUNE: usize = 1024;

impl Topics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A receiver that is told of every change concerning `interest`. It fails once the
    /// index writer is gone.
    pub fn watch(&self, interest: Interest) -> watch::Receiver<()> {
        let mut inner = self.lock();
        if inner.closed {
            return watch::channel(()).1;
        }
        let rx = inner
            .topics
            .entry(interest)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        if inner.topics.len() > inner.prune_at.max(MIN_PRUNE) {
            inner.topics.retain(|_, tx| tx.receiver_count() > 0);
            inner.prune_at = inner.topics.len() * 2;
        }
        rx
    }

    /// Wakes the streams `changes` concerns. Returns how many topics it woke.
    pub fn notify(&self, changes: &Changes) -> usize {
        if changes.is_empty() {
            return 0;
        }
        let mut inner = self.lock();
        let mut woken = 0;
        let mut wake = |tx: &watch::Sender<()>| {
            tx.send_replace(());
            woken += 1;
        };
        if changes.all_policies || !changes.workload_namespaces.is_empty() {
            // Coarse changes: look at every topic (there is one per watched target).
            inner.topics.retain(|interest, tx| {
                if tx.receiver_count() == 0 {
                    return false;
                }
                if changes.concerns(interest) {
                    wake(tx);
                }
                true
            });
            return woken;
        }
        let keys = changes
            .services
            .iter()
            .map(|k| Interest::Service(k.clone()))
            .chain(
                changes
                    .workloads
                    .iter()
                    .map(|k| Interest::Workload(k.clone())),
            )
            .chain(changes.addrs.iter().map(|ip| Interest::Addr(*ip)));
        let mut gone = Vec::new();
        for interest in keys {
            match inner.topics.get(&interest) {
                Some(tx) if tx.receiver_count() == 0 => gone.push(interest),
                Some(tx) => wake(tx),
                None => {}
            }
        }
        for interest in gone {
            inner.topics.remove(&interest);
        }
        woken
    }

    /// Ends every topic: streams waiting on one end.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.topics.clear();
    }

    /// How many topics exist (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().topics.len()
    }

    /// True when no topic exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Interest {
        Interest::Service(("shop".into(), name.into()))
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_topics_it_concerns() {
        let topics = Topics::default();
        let mut web = topics.watch(svc("web"));
        let web2 = topics.watch(svc("web"));
        let mut api = topics.watch(svc("api"));
        let mut pod = topics.watch(Interest::Workload(("shop".into(), "web-1".into())));
        assert_eq!(topics.len(), 3, "one topic per interest");
        let changes = Changes {
            services: [("shop".into(), "web".into())].into(),
            ..Default::default()
        };
        assert_eq!(topics.notify(&changes), 1);
        assert!(web.has_changed().unwrap());
        assert!(web2.has_changed().unwrap());
        assert!(!api.has_changed().unwrap());
        assert!(!pod.has_changed().unwrap());
        web.mark_unchanged();
        let ns = Changes {
            workload_namespaces: ["shop".into()].into(),
            ..Default::default()
        };
        topics.notify(&ns);
        assert!(pod.has_changed().unwrap());
        assert!(!web.has_changed().unwrap());
        let routes = Changes {
            all_policies: true,
            ..Default::default()
        };
        topics.notify(&routes);
        assert!(api.has_changed().unwrap());
        pod.mark_unchanged();
        assert!(!pod.has_changed().unwrap());
        topics.close();
        api.mark_unchanged();
        assert!(api.changed().await.is_err(), "closing ends the topics");
        assert!(topics.watch(svc("new")).changed().await.is_err());
    }

    #[test]
    fn topics_nobody_waits_on_are_dropped() {
        let topics = Topics::default();
        for i in 0..5 * MIN_PRUNE {
            drop(topics.watch(svc(&format!("s{i}"))));
        }
        assert!(
            topics.len() <= MIN_PRUNE + 1,
            "{} topics kept",
            topics.len()
        );
        let _kept = topics.watch(svc("kept"));
        let changes = Changes {
            all_policies: true,
            ..Default::default()
        };
        topics.notify(&changes);
        assert_eq!(topics.len(), 1);
    }
}
