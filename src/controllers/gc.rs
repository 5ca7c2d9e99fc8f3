//! The garbage collector: objects whose owners are gone go too (background propagation); an
//! owner deleted with `propagationPolicy: Foreground` waits, under the `foregroundDeletion`
//! finalizer, until the dependents that block it are gone; one deleted with `Orphan` (or
//! `--cascade=orphan`, or a v1 ReplicationController's default) waits, under the `orphan`
//! finalizer, until its dependents no longer name it. The API server adds the finalizers
//! and sets `deletionTimestamp` at once, so an owner's controller stops (it sees the owner
//! being deleted) before a single dependent changes: nothing is created anew in between.
//!
//! [`plan`] is pure: the objects the collector watches in, the writes out. The loop in
//! `run.rs` applies them and checks, with a live read, that an owner missing from the
//! caches is really gone before its dependents go (a cache may lag behind another one), as
//! upstream's `attemptToDeleteItem` does.

use std::collections::HashMap;

pub use crate::api::{FOREGROUND_DELETION as FOREGROUND, ORPHAN_DEPENDENTS as ORPHAN};

/// An object's identity: enough to read, patch or delete it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// One reference from an object to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub block_owner_deletion: bool,
}

/// What the collector needs of one watched object.
#[derive(Clone, Debug)]
pub struct Item {
    pub this: Ref,
    pub resource_version: String,
    pub owners: Vec<OwnerRef>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

/// How a dependent is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Background,
    Foreground,
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Delete a dependent whose owners are all gone (after a live check of `absent`), or
    /// one whose owner is deleted in the foreground.
    Delete {
        this: Ref,
        policy: Policy,
        absent: Vec<OwnerRef>,
    },
    /// Take the references to `uids` out of `this`: its owner orphans it, or (after a live
    /// check of `absent`) they name owners that are gone while others remain.
    Unown {
        this: Ref,
        resource_version: String,
        uids: Vec<String>,
        absent: Vec<OwnerRef>,
    },
    /// Take `finalizer` out of an owner being deleted: its part is done.
    Finalize {
        this: Ref,
        resource_version: String,
        finalizers: Vec<String>,
        finalizer: &'static str,
    },
}

/// The writes for `items`, every object of the kinds in `watched` (kind names). A reference
/// to a kind not watched is left alone: the collector cannot tell whether that owner is
/// there.
pub fn plan(items: &[Item], watched: &[&str]) -> Vec<Action> {
    let by_uid: HashMap<&str, &Item> = items.iter().map(|i| (i.this.uid.as_str(), i)).collect();
    let mut dependents: HashMap<&str, Vec<&Item>> = HashMap::new();
    for i in items {
        for o in &i.owners {
            dependents.entry(o.uid.as_str()).or_default().push(i);
        }
    }
    let mut out = Vec::new();
    for owner in items.iter().filter(|i| i.deleting) {
        let deps = dependents
            .get(owner.this.uid.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let has = |f: &str| owner.finalizers.iter().any(|x| x == f);
        // Orphan first, as upstream does when both are set: what it keeps, foreground does
        // not see.
        if has(ORPHAN) {
            for d in deps {
                out.push(Action::Unown {
                    this: d.this.clone(),
                    resource_version: d.resource_version.clone(),
                    uids: vec![owner.this.uid.clone()],
                    absent: vec![],
                });
            }
            if deps.is_empty() {
                out.push(finalize(owner, ORPHAN));
            }
        } else if has(FOREGROUND) {
            for d in deps.iter().filter(|d| !d.deleting) {
                let owns = dependents.contains_key(d.this.uid.as_str());
                out.push(Action::Delete {
                    this: d.this.clone(),
                    policy: if owns {
                        Policy::Foreground
                    } else {
                        Policy::Background
                    },
                    absent: vec![],
                });
            }
            let blocking = deps.iter().any(|d| {
                d.owners
                    .iter()
                    .any(|o| o.uid == owner.this.uid && o.block_owner_deletion)
            });
            if !blocking {
                out.push(finalize(owner, FOREGROUND));
            }
        }
    }
    for i in items.iter().filter(|i| !i.deleting && !i.owners.is_empty()) {
        let absent: Vec<OwnerRef> = i
            .owners
            .iter()
            .filter(|o| watched.contains(&o.kind.as_str()) && !by_uid.contains_key(o.uid.as_str()))
            .cloned()
            .collect();
        if absent.is_empty() {
            continue;
        }
        if absent.len() == i.owners.len() {
            out.push(Action::Delete {
                this: i.this.clone(),
                policy: Policy::Background,
                absent,
            });
        } else {
            out.push(Action::Unown {
                this: i.this.clone(),
                resource_version: i.resource_version.clone(),
                uids: absent.iter().map(|o| o.uid.clone()).collect(),
                absent,
            });
        }
    }
    out
}

fn finalize(owner: &Item, finalizer: &'static str) -> Action {
    Action::Finalize {
        this: owner.this.clone(),
        resource_version: owner.resource_version.clone(),
        finalizers: owner
            .finalizers
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect(),
        finalizer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: &str, name: &str, owners: &[(&str, &str, bool)]) -> Item {
        Item {
            this: Ref {
                api_version: "v1".into(),
                kind: kind.into(),
                namespace: Some("default".into()),
                name: name.into(),
                uid: format!("uid-{name}"),
            },
            resource_version: "7".into(),
            owners: owners
                .iter()
                .map(|(k, n, block)| OwnerRef {
                    api_version: "v1".into(),
                    kind: (*k).into(),
                    name: (*n).into(),
                    uid: format!("uid-{n}"),
                    block_owner_deletion: *block,
                })
                .collect(),
            deleting: false,
            finalizers: vec![],
        }
    }

    fn deleting(mut i: Item, finalizers: &[&str]) -> Item {
        i.deleting = true;
        i.finalizers = finalizers.iter().map(|f| f.to_string()).collect();
        i
    }

    const WATCHED: &[&str] = &["Deployment", "ReplicaSet", "Pod", "Node"];

    #[test]
    fn dependents_of_a_gone_owner_go_after_a_live_check() {
        let items = [
            item("Pod", "a", &[("ReplicaSet", "web", true)]),
            item("ReplicaSet", "live", &[]),
            item("Pod", "b", &[("ReplicaSet", "live", true)]),
        ];
        let acts = plan(&items, WATCHED);
        assert_eq!(acts.len(), 1, "{acts:?}");
        let Action::Delete {
            this,
            policy,
            absent,
        } = &acts[0]
        else {
            panic!("{acts:?}")
        };
        assert_eq!(this.name, "a");
        assert_eq!(*policy, Policy::Background);
        assert_eq!(absent[0].name, "web");
    }

    #[test]
    fn a_gone_owner_among_live_ones_is_only_unnamed() {
        let items = [
            item(
                "Pod",
                "a",
                &[("ReplicaSet", "gone", false), ("Node", "n1", false)],
            ),
            item("Node", "n1", &[]),
        ];
        let acts = plan(&items, WATCHED);
        assert!(
            matches!(&acts[..], [Action::Unown { this, uids, .. }] if this.name == "a" && uids == &["uid-gone"]),
            "{acts:?}"
        );
    }

    #[test]
    fn owners_of_kinds_not_watched_are_left_alone() {
        let items = [item("EndpointSlice", "s", &[("Service", "web", true)])];
        assert_eq!(plan(&items, WATCHED), vec![]);
    }

    #[test]
    fn an_orphaning_owner_lets_go_of_its_dependents_then_of_its_finalizer() {
        let rs = deleting(item("ReplicaSet", "web", &[]), &[ORPHAN, "other"]);
        let pod = item("Pod", "a", &[("ReplicaSet", "web", true)]);
        let acts = plan(&[rs.clone(), pod], WATCHED);
        assert!(
            matches!(&acts[..], [Action::Unown { this, uids, absent, .. }] if this.name == "a" && uids == &["uid-web"] && absent.is_empty()),
            "{acts:?}"
        );
        // Once no dependent names it, the finalizer goes (and only that one).
        let acts = plan(&[rs], WATCHED);
        assert_eq!(
            acts,
            vec![Action::Finalize {
                this: item("ReplicaSet", "web", &[]).this,
                resource_version: "7".into(),
                finalizers: vec!["other".into()],
                finalizer: ORPHAN,
            }]
        );
    }

    #[test]
    fn a_foreground_owner_waits_for_its_blocking_dependents() {
        let d = deleting(item("Deployment", "web", &[]), &[FOREGROUND]);
        let rs = item("ReplicaSet", "web-1", &[("Deployment", "web", true)]);
        let pod = item("Pod", "web-1-a", &[("ReplicaSet", "web-1", true)]);
        let acts = plan(&[d.clone(), rs.clone(), pod.clone()], WATCHED);
        // The ReplicaSet owns pods: it goes in the foreground too; the Deployment waits.
        assert_eq!(
            acts,
            vec![Action::Delete {
                this: rs.this.clone(),
                policy: Policy::Foreground,
                absent: vec![]
            }]
        );
        // Being deleted, the ReplicaSet is not deleted again; the pod goes under it.
        let rs = deleting(rs, &[FOREGROUND]);
        let acts = plan(&[d.clone(), rs.clone(), pod], WATCHED);
        assert_eq!(
            acts,
            vec![Action::Delete {
                this: item("Pod", "web-1-a", &[]).this,
                policy: Policy::Background,
                absent: vec![]
            }]
        );
        // The pod gone, the ReplicaSet's finalizer goes; the Deployment still waits.
        let acts = plan(&[d.clone(), rs], WATCHED);
        assert!(
            matches!(&acts[..], [Action::Finalize { this, finalizer: FOREGROUND, .. }] if this.name == "web-1"),
            "{acts:?}"
        );
        let acts = plan(&[d], WATCHED);
        assert!(
            matches!(&acts[..], [Action::Finalize { this, .. }] if this.name == "web"),
            "{acts:?}"
        );
    }

    #[test]
    fn a_dependent_that_does_not_block_does_not_hold_a_foreground_owner() {
        let d = deleting(item("Deployment", "web", &[]), &[FOREGROUND]);
        let rs = deleting(
            item("ReplicaSet", "web-1", &[("Deployment", "web", false)]),
            &[],
        );
        let acts = plan(&[d, rs], WATCHED);
        assert!(
            matches!(&acts[..], [Action::Finalize { this, .. }] if this.name == "web"),
            "{acts:?}"
        );
    }
}
