//! Definitions of one kind by key, from every source file that defines them. The
//! definition read last (greatest file path, then position in the file) is the one in
//! force, so replacing or removing one file touches only the keys it defines instead of
//! rebuilding the whole index.

use std::collections::BTreeMap;
use std::ops::RangeBounds;
use std::path::Path;

use super::Origin;

/// Definitions of one kind, keyed by `K`; each key keeps every definition sorted by
/// origin, and the last one is in force.
#[derive(Clone, Debug)]
pub(super) struct Defs<K, T> {
    map: BTreeMap<K, Vec<(Origin, T)>>,
}

impl<K, T> Default for Defs<K, T> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, T> Defs<K, T> {
    /// Adds the definition of `key` read at `origin`. Returns true when another file or
    /// position already defines the key (a duplicate worth a warning).
    pub fn insert(&mut self, key: K, origin: Origin, value: T) -> bool {
        let defs = self.map.entry(key).or_default();
        let at = defs.partition_point(|(o, _)| *o < origin);
        let dup = defs.iter().any(|(o, _)| *o != origin);
        if defs.get(at).is_some_and(|(o, _)| *o == origin) {
            defs[at].1 = value;
        } else {
            defs.insert(at, (origin, value));
        }
        dup
    }

    /// Forgets every definition of `key` read from `file`.
    pub fn remove(&mut self, key: &K, file: &Path) {
        if let Some(defs) = self.map.get_mut(key) {
            defs.retain(|(o, _)| o.file != file);
            if defs.is_empty() {
                self.map.remove(key);
            }
        }
    }

    /// The definition of `key` in force.
    pub fn get(&self, key: &K) -> Option<&T> {
        self.map.get(key)?.last().map(|(_, v)| v)
    }

    /// Whether some file defines `key`.
    pub fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// How many keys are defined.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The definitions in force, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &T)> {
        self.map
            .iter()
            .filter_map(|(k, defs)| defs.last().map(|(_, v)| (k, v)))
    }

    /// The definitions in force, ordered by key.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, v)| v)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }

    /// The definitions in force of the keys in `range`, with their origins.
    pub fn range<R: RangeBounds<K>>(&self, range: R) -> impl Iterator<Item = (&K, &Origin, &T)> {
        self.map
            .range(range)
            .filter_map(|(k, defs)| defs.last().map(|(o, v)| (k, o, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn at(file: &str, position: usize) -> Origin {
        Origin {
            file: PathBuf::from(file),
            position,
        }
    }

    #[test]
    fn the_last_definition_is_in_force_and_removal_is_per_file() {
        let mut d: Defs<&str, u32> = Defs::default();
        assert!(!d.insert("a", at("/b.yaml", 0), 2));
        assert!(d.insert("a", at("/a.yaml", 3), 1), "a duplicate");
        assert!(d.insert("a", at("/b.yaml", 1), 3));
        assert_eq!(d.get(&"a"), Some(&3));
        d.remove(&"a", Path::new("/b.yaml"));
        assert_eq!(d.get(&"a"), Some(&1));
        d.remove(&"a", Path::new("/a.yaml"));
        assert_eq!(d.get(&"a"), None);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn reinserting_at_the_same_origin_replaces() {
        let mut d: Defs<&str, u32> = Defs::default();
        d.insert("a", at("/a.yaml", 0), 1);
        d.insert("a", at("/a.yaml", 0), 2);
        assert_eq!(d.get(&"a"), Some(&2));
        assert_eq!(d.values().count(), 1);
    }
}
