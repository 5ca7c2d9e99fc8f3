//! The StatefulSet controller's plan, as kube-controller-manager's: pods with stable names
//! (`<set>-<ordinal>`), each its own hostname under the set's governing Service, and for
//! each `volumeClaimTemplate` its own claim (`<template>-<set>-<ordinal>`) made before it and
//! kept after it (the default retention policy, Retain), so that a pod made again finds its
//! data. `OrderedReady` makes pods one at a time in ordinal order, each once the ones before
//! are Running and Ready, and removes them highest first; `Parallel` does all at once. A
//! RollingUpdate replaces pods of an older revision from the highest ordinal down to the
//! `partition`, one at a time, each once all are Ready; the revisions are kept as
//! ControllerRevisions (`kubectl rollout history/undo` read them), and pods below the
//! partition are made from their current revision.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";
pub const REVISION: &str = "controller-revision-hash";

#[derive(Debug, PartialEq)]
pub enum Write {
    CreateRevision(Value),
    CreateClaim(Value),
    CreatePod(Value),
    DeletePod(String),
    Status(Value),
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

/// The name of the revision of the set's current template (`<set>-<hash>`).
pub fn update_revision(sts: &Value) -> String {
    format!(
        "{}-{}",
        name(sts),
        super::deployment::template_hash(&sts["spec"]["template"], 0)
    )
}

/// The ControllerRevision holding the set's template, numbered `revision`.
pub fn new_revision(sts: &Value, revision: i64) -> Value {
    let rev = update_revision(sts);
    let hash = rev.rsplit('-').next().unwrap_or("").to_string();
    let mut labels = sts["spec"]["selector"]["matchLabels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert("controller.kubernetes.io/hash".into(), json!(hash));
    let mut template = sts["spec"]["template"].clone();
    template["$patch"] = json!("replace");
    json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": rev, "namespace": sts["metadata"]["namespace"], "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name(sts),
                "uid": sts["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]},
        "data": {"spec": {"template": template}}, "revision": revision})
}

fn ordinal_of(set: &str, pod: &str) -> Option<i64> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn claim_name(template: &Value, set: &str, ordinal: i64) -> String {
    format!("{}-{set}-{ordinal}", name(template))
}

/// The claim of `template` for pod `ordinal`.
pub fn new_claim(sts: &Value, template: &Value, ordinal: i64) -> Value {
    let mut labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (k, v) in sts["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        labels.insert(k.clone(), v.clone());
    }
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim_name(template, name(sts), ordinal),
            "namespace": sts["metadata"]["namespace"], "labels": labels,
            "annotations": template["metadata"]["annotations"]},
        "spec": template["spec"]})
}

/// The pod for `ordinal` from `template` (of revision `rev`).
pub fn new_pod(sts: &Value, template: &Value, rev: &str, ordinal: i64) -> Value {
    let set = name(sts);
    let pod = format!("{set}-{ordinal}");
    let mut labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(REVISION.into(), json!(rev));
    labels.insert(POD_NAME.into(), json!(pod));
    labels.insert(POD_INDEX.into(), json!(ordinal.to_string()));
    let mut spec = template["spec"].clone();
    spec["hostname"] = json!(pod);
    if let Some(svc) = sts["spec"]["serviceName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        spec["subdomain"] = json!(svc);
    }
    let mut volumes: Vec<Value> = spec["volumes"].as_array().cloned().unwrap_or_default();
    for t in sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        volumes.retain(|v| v["name"] != t["metadata"]["name"]);
        volumes.push(json!({"name": t["metadata"]["name"],
            "persistentVolumeClaim": {"claimName": claim_name(t, set, ordinal)}}));
    }
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    let mut meta = json!({"name": pod, "namespace": sts["metadata"]["namespace"], "labels": labels,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": set,
            "uid": sts["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]});
    if let Some(a) = template["metadata"]["annotations"].as_object() {
        meta["annotations"] = json!(a);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn ready_since(p: &Pod) -> Option<chrono::DateTime<chrono::Utc>> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(crate::api::time::chrono)
            .unwrap_or_default(),
    )
}

fn revision_of(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION).cloned())
        .unwrap_or_default()
}

/// The writes for `sts`, given the pods and ControllerRevisions it owns and the names of
/// the claims in its namespace.
pub fn plan(
    sts: &Value,
    pods: &[&Pod],
    revisions: &[&Value],
    claims: &BTreeSet<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Write> {
    let mut out = Vec::new();
    if !sts["metadata"]["deletionTimestamp"].is_null() {
        return out;
    }
    let set = name(sts).to_string();
    let spec = &sts["spec"];
    let replicas = spec["replicas"].as_i64().unwrap_or(1).max(0);
    let start = spec["ordinals"]["start"].as_i64().unwrap_or(0).max(0);
    let parallel = spec["podManagementPolicy"] == "Parallel";
    let min_ready = spec["minReadySeconds"].as_i64().unwrap_or(0);
    let update = update_revision(sts);
    let current = sts["status"]["currentRevision"]
        .as_str()
        .filter(|c| !c.is_empty())
        .unwrap_or(&update)
        .to_string();

    // The revision of the template, kept.
    if !revisions.iter().any(|r| name(r) == update) {
        let next = revisions
            .iter()
            .filter_map(|r| r["revision"].as_i64())
            .max()
            .unwrap_or(0)
            + 1;
        out.push(Write::CreateRevision(new_revision(sts, next)));
    }
    let template_of = |rev: &str| -> Value {
        if rev == update {
            return spec["template"].clone();
        }
        revisions
            .iter()
            .find(|r| name(r) == rev)
            .map(|r| {
                let mut t = r["data"]["spec"]["template"].clone();
                if let Some(o) = t.as_object_mut() {
                    o.remove("$patch");
                }
                t
            })
            .unwrap_or_else(|| spec["template"].clone())
    };
    let partition = if spec["updateStrategy"]["type"] == "OnDelete" {
        i64::MAX
    } else {
        spec["updateStrategy"]["rollingUpdate"]["partition"]
            .as_i64()
            .unwrap_or(0)
    };

    let mut by_ordinal: BTreeMap<i64, &Pod> = BTreeMap::new();
    for p in pods {
        if let Some(o) = p.metadata.name.as_deref().and_then(|n| ordinal_of(&set, n)) {
            by_ordinal.insert(o, p);
        }
    }
    let healthy = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none() && phase(p) == "Running" && ready_since(p).is_some()
    };
    let wanted = start..start + replicas;
    let mut blocked = false;
    let terminating = by_ordinal
        .values()
        .any(|p| p.metadata.deletion_timestamp.is_some());

    // Make up the pods (and their claims) that are missing, in order.
    for i in wanted.clone() {
        match by_ordinal.get(&i) {
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                if !parallel {
                    blocked = true;
                    break;
                }
            }
            Some(p) if matches!(phase(p), "Failed" | "Succeeded") => {
                out.push(Write::DeletePod(
                    p.metadata.name.clone().unwrap_or_default(),
                ));
                if !parallel {
                    blocked = true;
                    break;
                }
            }
            Some(p) => {
                if !parallel && !healthy(p) {
                    blocked = true;
                    break;
                }
            }
            None => {
                for t in spec["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if !claims.contains(&claim_name(t, &set, i)) {
                        out.push(Write::CreateClaim(new_claim(sts, t, i)));
                    }
                }
                // Below the partition, a pod is made again at its current revision (with
                // OnDelete, a deleted pod comes back at the update revision).
                let on_delete = spec["updateStrategy"]["type"] == "OnDelete";
                let rev = if !on_delete && i - start < partition && current != update {
                    current.clone()
                } else {
                    update.clone()
                };
                out.push(Write::CreatePod(new_pod(sts, &template_of(&rev), &rev, i)));
                if !parallel {
                    blocked = true;
                    break;
                }
            }
        }
    }

    // Scale down: highest first (all at once when Parallel).
    let extra: Vec<&&Pod> = by_ordinal
        .iter()
        .rev()
        .filter(|(o, _)| !wanted.contains(o))
        .map(|(_, p)| p)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    if parallel {
        for p in &extra {
            out.push(Write::DeletePod(
                p.metadata.name.clone().unwrap_or_default(),
            ));
        }
    } else if let Some(p) = extra.first() {
        if !blocked && !terminating {
            out.push(Write::DeletePod(
                p.metadata.name.clone().unwrap_or_default(),
            ));
            blocked = true;
        }
    }

    // The rolling update: the highest pod of an old revision at or above the partition.
    let all_healthy = wanted
        .clone()
        .all(|i| by_ordinal.get(&i).is_some_and(|p| healthy(p)));
    if !blocked && !terminating && all_healthy && extra.is_empty() {
        if let Some(p) = wanted
            .clone()
            .rev()
            .filter(|i| i - start >= partition)
            .filter_map(|i| by_ordinal.get(&i))
            .find(|p| revision_of(p) != update)
        {
            out.push(Write::DeletePod(
                p.metadata.name.clone().unwrap_or_default(),
            ));
        }
    }

    // Status.
    let live: Vec<&&Pod> = by_ordinal
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let ready = live.iter().filter(|p| healthy(p)).count();
    let available = live
        .iter()
        .filter(|p| {
            healthy(p)
                && ready_since(p).is_some_and(|t| {
                    min_ready <= 0 || now - t >= chrono::Duration::seconds(min_ready)
                })
        })
        .count();
    let updated = live.iter().filter(|p| revision_of(p) == update).count() as i64;
    let at_current = live.iter().filter(|p| revision_of(p) == current).count() as i64;
    let (cur_name, cur_count) = if updated == replicas && live.len() as i64 == replicas {
        (update.clone(), updated)
    } else {
        (current.clone(), at_current)
    };
    let status = json!({
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "currentReplicas": cur_count,
        "updatedReplicas": updated,
        "currentRevision": cur_name,
        "updateRevision": update,
        "collisionCount": 0,
    });
    if super::status_differs(&sts["status"], &status) {
        out.push(Write::Status(status));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: i64, policy: &str) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "s1", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "nginx", "podManagementPolicy": policy,
                "selector": {"matchLabels": {"app": "nginx"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                "template": {"metadata": {"labels": {"app": "nginx"}}, "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}]},
            "status": {}})
    }

    fn pod(s: &Value, i: i64, ready: bool) -> Pod {
        let mut p = new_pod(s, &s["spec"]["template"], &update_revision(s), i);
        p["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
            "lastTransitionTime": "2026-12-01T09:00:00Z"}]});
        serde_json::from_value(p).unwrap()
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn made(w: &[Write]) -> Vec<String> {
        w.iter()
            .filter_map(|w| match w {
                Write::CreatePod(p) => Some(name(p).to_string()),
                Write::CreateClaim(c) => Some(format!("claim {}", name(c))),
                Write::DeletePod(n) => Some(format!("delete {n}")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ordered_ready_makes_one_pod_at_a_time_with_its_claim() {
        let s = sts(3, "OrderedReady");
        let w = plan(&s, &[], &[], &BTreeSet::new(), now());
        assert!(matches!(w[0], Write::CreateRevision(_)));
        assert_eq!(made(&w), ["claim www-web-0", "web-0"]);
        let Some(Write::CreatePod(p)) = w.iter().find(|w| matches!(w, Write::CreatePod(_))) else {
            panic!()
        };
        assert_eq!(p["spec"]["hostname"], "web-0");
        assert_eq!(p["spec"]["subdomain"], "nginx");
        assert_eq!(
            p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "www-web-0"
        );
        let rev = new_revision(&s, 1);
        let revs = [&rev];
        let p0 = pod(&s, 0, false);
        let claims: BTreeSet<String> = ["www-web-0".to_string()].into();
        assert!(
            made(&plan(&s, &[&p0], &revs, &claims, now())).is_empty(),
            "web-0 not ready yet"
        );
        let p0 = pod(&s, 0, true);
        assert_eq!(
            made(&plan(&s, &[&p0], &revs, &claims, now())),
            ["claim www-web-1", "web-1"]
        );
        // Parallel: all at once; the claim kept from before is reused.
        let w = plan(&sts(3, "Parallel"), &[], &revs, &claims, now());
        assert_eq!(
            made(&w),
            [
                "web-0",
                "claim www-web-1",
                "web-1",
                "claim www-web-2",
                "web-2"
            ]
        );
    }

    #[test]
    fn scale_down_goes_highest_first_and_updates_go_down_to_the_partition() {
        let s = sts(2, "OrderedReady");
        let rev = new_revision(&s, 1);
        let revs = [&rev];
        let claims = BTreeSet::new();
        let pods = [pod(&s, 0, true), pod(&s, 1, true), pod(&s, 2, true)];
        let refs: Vec<&Pod> = pods.iter().collect();
        assert_eq!(
            made(&plan(&s, &refs, &revs, &claims, now())),
            ["delete web-2"]
        );

        let mut s2 = sts(3, "OrderedReady");
        s2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        s2["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(1);
        s2["status"]["currentRevision"] = json!(update_revision(&s));
        let w = plan(&s2, &refs, &revs, &claims, now());
        assert!(matches!(w[0], Write::CreateRevision(_)));
        assert_eq!(made(&w), ["delete web-2"]);
        // web-2 updated: web-1 next; web-0 is below the partition.
        let mut p2 = pod(&s2, 2, true);
        p2.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(REVISION.into(), update_revision(&s2));
        let new_rev = new_revision(&s2, 2);
        let revs = [&rev, &new_rev];
        let pods = [pod(&s, 0, true), pod(&s, 1, true), p2];
        let refs: Vec<&Pod> = pods.iter().collect();
        assert_eq!(
            made(&plan(&s2, &refs, &revs, &claims, now())),
            ["delete web-1"]
        );
        // web-0 deleted: made again from its current revision.
        let pods = [pods[1].clone(), pods[2].clone()];
        let refs: Vec<&Pod> = pods.iter().collect();
        let w = plan(&s2, &refs, &revs, &claims, now());
        let Some(Write::CreatePod(p)) = w.iter().find(|w| matches!(w, Write::CreatePod(_))) else {
            panic!("{w:?}")
        };
        assert_eq!(p["spec"]["containers"][0]["image"], "nginx");
        assert_eq!(p["metadata"]["labels"][REVISION], update_revision(&s));
    }
}
