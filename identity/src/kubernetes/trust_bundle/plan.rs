//! What the trust-bundle reconciler must do, computed from what it has seen: no I/O, so
//! every case (new namespace, stale data, up to date, excluded or deleted namespace) is
//! a plain unit test.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;

use crate::kubernetes::{EXCLUDED_NAMESPACES, TRUST_ROOTS_CONFIG_MAP, TRUST_ROOTS_KEY};

/// One API call that brings a namespace's trust-roots ConfigMap up to date.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// The namespace has no managed ConfigMap: create it.
    Create {
        /// The namespace.
        namespace: String,
    },
    /// The namespace's managed ConfigMap holds other data: merge-patch it.
    Patch {
        /// The namespace.
        namespace: String,
    },
}

/// Whether the bundle belongs in `namespace`: not an excluded system namespace, and
/// not being deleted (the API server refuses new objects there).
fn wanted(namespace: &Namespace) -> bool {
    let name = namespace.name_any();
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Terminating");
    !name.is_empty() && !EXCLUDED_NAMESPACES.contains(&name.as_str()) && !terminating
}

/// The actions that make every wanted namespace hold exactly `bundle` under
/// [`TRUST_ROOTS_KEY`] in ConfigMap [`TRUST_ROOTS_CONFIG_MAP`], given the managed
/// ConfigMaps that exist. ConfigMaps in namespaces that are gone or excluded are left
/// alone (they go with their namespace). Sorted by namespace.
pub fn plan<'a>(
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    config_maps: impl IntoIterator<Item = &'a ConfigMap>,
    bundle: &str,
) -> Vec<Action> {
    let existing: BTreeMap<String, Option<&str>> = config_maps
        .into_iter()
        .filter(|cm| cm.name_any() == TRUST_ROOTS_CONFIG_MAP)
        .filter_map(|cm| {
            let data = cm
                .data
                .as_ref()
                .and_then(|d| d.get(TRUST_ROOTS_KEY))
                .map(String::as_str);
            Some((cm.namespace()?, data))
        })
        .collect();
    let mut actions: Vec<Action> = namespaces
        .into_iter()
        .filter(|ns| wanted(ns))
        .filter_map(|ns| {
            let namespace = ns.name_any();
            match existing.get(&namespace) {
                None => Some(Action::Create { namespace }),
                Some(data) if *data != Some(bundle) => Some(Action::Patch { namespace }),
                Some(_) => None,
            }
        })
        .collect();
    actions.sort();
    actions.dedup();
    actions
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    fn ns(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn cm(namespace: &str, name: &str, data: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            data: data.map(|d| BTreeMap::from([(TRUST_ROOTS_KEY.to_string(), d.to_string())])),
            ..ConfigMap::default()
        }
    }

    fn roots(namespace: &str, data: &str) -> ConfigMap {
        cm(namespace, TRUST_ROOTS_CONFIG_MAP, Some(data))
    }

    fn create(namespace: &str) -> Action {
        Action::Create {
            namespace: namespace.to_string(),
        }
    }

    fn patch(namespace: &str) -> Action {
        Action::Patch {
            namespace: namespace.to_string(),
        }
    }

    #[test]
    fn a_new_namespace_gets_a_config_map() {
        let namespaces = [ns("default"), ns("shop")];
        let cms = [roots("default", BUNDLE)];
        assert_eq!(plan(&namespaces, &cms, BUNDLE), [create("shop")]);
    }

    #[test]
    fn nothing_exists_yet_every_namespace_is_created_in_order() {
        let namespaces = [ns("shop"), ns("default"), ns("mesh-system")];
        assert_eq!(
            plan(&namespaces, &[], BUNDLE),
            [create("default"), create("mesh-system"), create("shop")]
        );
    }

    #[test]
    fn stale_or_missing_data_is_patched() {
        let namespaces = [ns("a"), ns("b"), ns("c"), ns("d")];
        let cms = [
            roots("a", "old bundle"),
            cm("b", TRUST_ROOTS_CONFIG_MAP, None),
            roots("c", BUNDLE.trim_end()),
            roots("d", BUNDLE),
        ];
        assert_eq!(
            plan(&namespaces, &cms, BUNDLE),
            [patch("a"), patch("b"), patch("c")]
        );
    }

    #[test]
    fn up_to_date_namespaces_need_nothing() {
        let namespaces = [ns("default"), ns("shop")];
        let cms = [roots("default", BUNDLE), roots("shop", BUNDLE)];
        assert!(plan(&namespaces, &cms, BUNDLE).is_empty());
        // A rotated bundle makes every one stale.
        assert_eq!(
            plan(&namespaces, &cms, "new"),
            [patch("default"), patch("shop")]
        );
    }

    #[test]
    fn system_namespaces_are_excluded() {
        let namespaces = [
            ns("kube-system"),
            ns("kube-public"),
            ns("kube-node-lease"),
            ns("kube-flannel"),
        ];
        assert_eq!(plan(&namespaces, &[], BUNDLE), [create("kube-flannel")]);
        // A stale ConfigMap in an excluded namespace is not touched either.
        let cms = [roots("kube-system", "old")];
        assert!(plan(&namespaces[..3], &cms, BUNDLE).is_empty());
    }

    #[test]
    fn deleted_and_terminating_namespaces_are_left_alone() {
        // `gone` was deleted: its ConfigMap is still cached, but nothing is planned.
        let cms = [roots("gone", "old"), roots("default", BUNDLE)];
        assert!(plan(&[ns("default")], &cms, BUNDLE).is_empty());

        let mut deleting = ns("deleting");
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mut terminating = ns("terminating");
        terminating.status = Some(NamespaceStatus {
            phase: Some("Terminating".to_string()),
            ..NamespaceStatus::default()
        });
        assert!(plan(&[deleting, terminating], &[], BUNDLE).is_empty());
    }

    #[test]
    fn other_config_maps_do_not_count() {
        // A managed-looking ConfigMap with another name is not the trust roots.
        let cms = [cm("shop", "something-else", Some(BUNDLE))];
        assert_eq!(plan(&[ns("shop")], &cms, BUNDLE), [create("shop")]);
    }
}
