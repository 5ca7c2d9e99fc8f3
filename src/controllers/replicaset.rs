//! ReplicaSets and ReplicationControllers: as many live pods as `spec.replicas`, made from the
//! template (named `<owner>-<5 characters>`, labelled as the template, owned by a controller
//! ownerReference) and removed when there are too many (unscheduled, then pending, then not
//! ready, then the newest first, as upstream ranks them), and the status counts
//! (`replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`,
//! `observedGeneration`) that `kubectl get rs|rc` and `rollout status` read.
//!
//! [`plan`] is pure: the owner and the pods it owns in, the writes out. The loop in `run.rs`
//! applies them, and remembers the creations and deletions it has asked for until the cache
//! shows them (upstream's "expectations"), so a pass that runs before the watch catches up
//! does not create or delete twice.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use serde_json::{json, Value};

use crate::api::selector::{from_label_selector, Labels};

/// The owner kinds this controller runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ReplicaSet,
    ReplicationController,
}

impl Kind {
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::ReplicaSet => "apps/v1",
            Kind::ReplicationController => "v1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::ReplicaSet => "ReplicaSet",
            Kind::ReplicationController => "ReplicationController",
        }
    }
}

/// What the controller needs of a ReplicaSet or a ReplicationController.
#[derive(Clone, Debug)]
pub struct Owner {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub replicas: i32,
    pub selector: Labels,
    pub template: Option<PodTemplateSpec>,
    pub min_ready_seconds: i32,
    pub deleting: bool,
    /// The status as stored (to write only a change).
    pub status: Value,
}

impl Owner {
    pub fn from_replica_set(rs: &k8s_openapi::api::apps::v1::ReplicaSet) -> Option<Owner> {
        let spec = &rs.spec;
        Some(Owner {
            kind: Kind::ReplicaSet,
            namespace: rs.metadata.namespace.clone()?,
            name: rs.metadata.name.clone()?,
            uid: rs.metadata.uid.clone()?,
            generation: rs.metadata.generation.unwrap_or(0),
            replicas: spec.replicas.unwrap_or(1),
            selector: from_label_selector(&spec.selector).ok()?,
            template: spec.template.clone(),
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            deleting: rs.metadata.deletion_timestamp.is_some(),
            status: serde_json::to_value(&rs.status).unwrap_or(Value::Null),
        })
    }

    pub fn from_replication_controller(
        rc: &k8s_openapi::api::core::v1::ReplicationController,
    ) -> Option<Owner> {
        let spec = rc.spec.as_ref()?;
        // An RC's selector defaults to its template's labels (the server set it).
        let sel = LabelSelector {
            match_labels: spec.selector.clone(),
            ..Default::default()
        };
        Some(Owner {
            kind: Kind::ReplicationController,
            namespace: rc.metadata.namespace.clone()?,
            name: rc.metadata.name.clone()?,
            uid: rc.metadata.uid.clone()?,
            generation: rc.metadata.generation.unwrap_or(0),
            replicas: spec.replicas.unwrap_or(1),
            selector: from_label_selector(&sel).ok()?,
            template: spec.template.clone(),
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            deleting: rc.metadata.deletion_timestamp.is_some(),
            status: serde_json::to_value(&rc.status).unwrap_or(Value::Null),
        })
    }

    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.kind.api_version().into(),
            kind: self.kind.name().into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

/// The writes one pass makes for one owner.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// New pods (bodies for a create in the owner's namespace).
    pub create: Vec<Value>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// The new status, when it changed.
    pub status: Option<Value>,
}

/// What an owner does with an object of its namespace (upstream's `ClaimObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Its controller is the owner and its labels match: it counts.
    Owned,
    /// No controller, labels that match: the owner takes it (a bare pod labelled as a
    /// ReplicaSet's template, or what a `--cascade=orphan` left behind).
    Adopt,
    /// Its controller is the owner, its labels no longer match (relabelled to take it out
    /// of service): the owner lets it go and replaces it.
    Release,
    /// Someone else's, or nothing to do.
    Ignore,
}

/// How the owner with `uid` and `selector` (being deleted: `deleting`) claims an object
/// with metadata `m`. An empty selector claims nothing.
pub fn claim(
    uid: &str,
    deleting: bool,
    selector: &Labels,
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Claim {
    let empty = BTreeMap::new();
    let matches = !selector.is_empty() && selector.matches(m.labels.as_ref().unwrap_or(&empty));
    let controller = m
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match controller {
        Some(c) if c.uid == uid => {
            if matches {
                Claim::Owned
            } else if deleting {
                Claim::Ignore
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None if matches && !deleting && m.deletion_timestamp.is_none() => Claim::Adopt,
        None => Claim::Ignore,
    }
}

/// A pod that counts: not finished, not being deleted.
pub fn active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn condition_since(pod: &Pod, kind: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(crate::api::time::chrono)
            .unwrap_or_default(),
    )
}

fn ready(pod: &Pod) -> bool {
    condition_since(pod, "Ready").is_some()
}

fn available(pod: &Pod, min_ready: i32, now: chrono::DateTime<chrono::Utc>) -> bool {
    condition_since(pod, "Ready").is_some_and(|since| {
        min_ready <= 0 || now - since >= chrono::Duration::seconds(min_ready.into())
    })
}

/// Upstream's order for removal: the first to go first.
fn removal_rank(pod: &Pod) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let unscheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
        .is_empty();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| crate::api::time::rfc3339(crate::api::time::chrono(t)))
        .unwrap_or_default();
    (
        u8::from(!unscheduled),
        match phase {
            Some("Pending") | None => 0,
            Some("Unknown") => 1,
            _ => 2,
        },
        u8::from(ready(pod)),
        std::cmp::Reverse(created),
    )
}

/// The new pod for `o`.
pub fn new_pod(o: &Owner) -> Value {
    let t = o.template.clone().unwrap_or_default();
    let meta = t.metadata.unwrap_or_default();
    let mut m = json!({
        "generateName": format!("{}-", o.name),
        "namespace": o.namespace,
        "ownerReferences": [o.owner_reference()],
    });
    if let Some(l) = meta.labels {
        m["labels"] = json!(l);
    }
    if let Some(a) = meta.annotations {
        m["annotations"] = json!(a);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": t.spec})
}

/// The writes for `o`, given the pods of its namespace it owns.
pub fn plan(o: &Owner, owned: &[&Pod], now: chrono::DateTime<chrono::Utc>) -> Plan {
    let mut p = Plan::default();
    let mut live: Vec<&Pod> = owned.iter().copied().filter(|x| active(x)).collect();
    if !o.deleting {
        let want = o.replicas.max(0) as usize;
        if live.len() < want {
            // Upstream creates in slow-start batches; a pass here asks for them all and the
            // expectations hold the next pass until they are seen.
            p.create = (live.len()..want).map(|_| new_pod(o)).collect();
        } else if live.len() > want {
            live.sort_by_key(|x| removal_rank(x));
            let extra = live.len() - want;
            p.delete = live
                .drain(..extra)
                .filter_map(|x| x.metadata.name.clone())
                .collect();
        }
    }
    let counted: Vec<&Pod> = owned.iter().copied().filter(|x| active(x)).collect();
    let labelled = counted
        .iter()
        .filter(|x| {
            let empty = BTreeMap::new();
            o.selector
                .matches(x.metadata.labels.as_ref().unwrap_or(&empty))
        })
        .count();
    let status = json!({
        "replicas": counted.len(),
        "fullyLabeledReplicas": labelled,
        "readyReplicas": counted.iter().filter(|x| ready(x)).count(),
        "availableReplicas": counted.iter().filter(|x| available(x, o.min_ready_seconds, now)).count(),
        "observedGeneration": o.generation,
    });
    // Zero counts are left out, as Go's omitempty stores them: null in the merge patch.
    let mut status = status;
    if let Some(m) = status.as_object_mut() {
        for (k, v) in m.iter_mut() {
            if k != "replicas" && v == &json!(0) {
                *v = Value::Null;
            }
        }
    }
    let same = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .all(|k| {
        o.status.get(*k).and_then(Value::as_i64).unwrap_or(0)
            == status.get(*k).and_then(Value::as_i64).unwrap_or(0)
    });
    if !same {
        p.status = Some(status);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(replicas: i32) -> Owner {
        let rs: k8s_openapi::api::apps::v1::ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "u1", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
            "status": {"replicas": 0}
        }))
        .unwrap();
        Owner::from_replica_set(&rs).unwrap()
    }

    fn pod(name: &str, node: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
                         "creationTimestamp": created,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u1", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": if node.is_empty() { "Pending" } else { "Running" },
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    #[test]
    fn too_few_pods_are_made_from_the_template_and_owned() {
        let o = owner(3);
        let a = pod("a", "n1", true, "2026-01-01T00:00:00Z");
        let p = plan(&o, &[&a], chrono::Utc::now());
        assert_eq!(p.create.len(), 2);
        let m = &p.create[0]["metadata"];
        assert_eq!(m["generateName"], "web-abc-");
        assert_eq!(m["labels"]["app"], "web");
        assert_eq!(m["ownerReferences"][0]["uid"], "u1");
        assert_eq!(m["ownerReferences"][0]["controller"], true);
        assert_eq!(p.create[0]["spec"]["containers"][0]["image"], "nginx");
        let st = p.status.unwrap();
        assert_eq!(
            st,
            json!({"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 2})
        );
    }

    #[test]
    fn too_many_pods_go_unscheduled_then_not_ready_then_newest_first() {
        let o = owner(1);
        let old_ready = pod("old-ready", "n1", true, "2026-01-01T00:00:00Z");
        let new_ready = pod("new-ready", "n1", true, "2026-01-02T00:00:00Z");
        let not_ready = pod("not-ready", "n1", false, "2026-01-01T00:00:00Z");
        let unscheduled = pod("unscheduled", "", false, "2026-01-01T00:00:00Z");
        let p = plan(
            &o,
            &[&old_ready, &new_ready, &not_ready, &unscheduled],
            chrono::Utc::now(),
        );
        assert_eq!(p.delete, ["unscheduled", "not-ready", "new-ready"]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn finished_and_deleted_pods_do_not_count_and_a_deleted_owner_makes_none() {
        let mut o = owner(2);
        let mut done = pod("done", "n1", false, "2026-01-01T00:00:00Z");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let p = plan(&o, &[&done], chrono::Utc::now());
        assert_eq!(p.create.len(), 2);
        o.deleting = true;
        assert!(plan(&o, &[&done], chrono::Utc::now()).create.is_empty());
    }

    #[test]
    fn owners_adopt_orphans_that_match_and_release_what_no_longer_does() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let sel = crate::api::selector::parse_labels("app=web").unwrap();
        let meta = |labels: &[(&str, &str)], owner: Option<&str>| ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: owner.map(|uid| {
                vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        };
        let web = [("app", "web")];
        assert_eq!(
            claim("u1", false, &sel, &meta(&web, Some("u1"))),
            Claim::Owned
        );
        assert_eq!(claim("u1", false, &sel, &meta(&web, None)), Claim::Adopt);
        assert_eq!(
            claim("u1", false, &sel, &meta(&web, Some("u2"))),
            Claim::Ignore
        );
        let debug = [("app", "debug")];
        assert_eq!(
            claim("u1", false, &sel, &meta(&debug, Some("u1"))),
            Claim::Release
        );
        assert_eq!(claim("u1", false, &sel, &meta(&debug, None)), Claim::Ignore);
        // An owner being deleted takes nothing and lets nothing go.
        assert_eq!(claim("u1", true, &sel, &meta(&web, None)), Claim::Ignore);
        assert_eq!(
            claim("u1", true, &sel, &meta(&debug, Some("u1"))),
            Claim::Ignore
        );
        // Nor does an empty selector take everything.
        let all = crate::api::selector::Labels::default();
        assert_eq!(claim("u1", false, &all, &meta(&web, None)), Claim::Ignore);
        let mut gone = meta(&web, None);
        gone.deletion_timestamp = Some(crate::api::time::time(chrono::Utc::now()));
        assert_eq!(claim("u1", false, &sel, &gone), Claim::Ignore);
    }
}
