//! A watched collection, by `namespace/name`: fed by watcher events (a list or relist
//! replaces the contents when it completes, so objects deleted meanwhile go) and by the
//! reconciler's own writes (so a write is known before its watch event arrives).

use std::collections::BTreeMap;

use kube::runtime::watcher::Event;
use kube::ResourceExt;

/// The objects of one watch.
#[derive(Debug)]
pub(super) struct Cache<K> {
    items: BTreeMap<String, K>,
    /// Objects of a (re)list in progress.
    listing: Option<BTreeMap<String, K>>,
    /// Whether a first list has completed.
    listed: bool,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            listing: None,
            listed: false,
        }
    }
}

fn key<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

// === impl Cache ===

impl<K: kube::Resource> Cache<K> {
    /// Applies a watcher event; returns whether the contents are complete and may have
    /// changed (the time to plan again).
    pub(super) fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&obj), obj);
                false
            }
            Event::InitDone => {
                self.items = self.listing.take().unwrap_or_default();
                self.listed = true;
                true
            }
            Event::Apply(obj) => {
                self.insert(obj);
                self.listed
            }
            Event::Delete(obj) => {
                self.items.remove(&key(&obj));
                self.listed
            }
        }
    }

    /// Records an object the reconciler has just written.
    pub(super) fn insert(&mut self, obj: K) {
        self.items.insert(key(&obj), obj);
    }

    /// Whether a first list has completed.
    pub(super) fn listed(&self) -> bool {
        self.listed
    }

    /// The objects.
    pub(super) fn values(&self) -> impl Iterator<Item = &K> {
        self.items.values()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn ns(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn names(c: &Cache<Namespace>) -> Vec<String> {
        c.values().map(|n| n.name_any()).collect()
    }

    #[test]
    fn a_relist_replaces_the_contents_when_done() {
        let mut c = Cache::default();
        assert!(!c.apply(Event::Apply(ns("early"))), "not listed yet");
        assert!(!c.apply(Event::Init));
        assert!(!c.apply(Event::InitApply(ns("a"))));
        assert!(!c.apply(Event::InitApply(ns("b"))));
        assert!(!c.listed());
        assert!(c.apply(Event::InitDone));
        assert_eq!(names(&c), ["a", "b"]);
        assert!(c.apply(Event::Apply(ns("c"))));
        assert!(c.apply(Event::Delete(ns("a"))));
        assert_eq!(names(&c), ["b", "c"]);
        // A relist after a 410: `b` went while the watch was down.
        c.apply(Event::Init);
        c.apply(Event::InitApply(ns("c")));
        assert_eq!(names(&c), ["b", "c"], "kept until the relist completes");
        assert!(c.apply(Event::InitDone));
        assert_eq!(names(&c), ["c"]);
        c.insert(ns("d"));
        assert_eq!(names(&c), ["c", "d"]);
    }
}
