//! The persistent volume controller's plan, with the local-path provisioner and the
//! protection of claims and volumes in use: from all claims, volumes, classes, nodes and
//! pods, the writes kube-controller-manager's binder, k3s's local-path provisioner and the
//! pvc/pv-protection controllers would make.
//!
//! - A pending claim binds to the smallest Available volume of its class that is big enough
//!   and has its access modes (or to the volume already promised to it by `claimRef`).
//! - Otherwise, if its class is `knode.io/local-path`, a volume `pvc-<uid>` is provisioned: a
//!   `hostPath` directory `pvc-<uid>_<namespace>_<name>` in the storage directory the chosen
//!   node publishes, pinned to that node. The node is the one the scheduler picked for the
//!   claim's first pod (`WaitForFirstConsumer`) or, for `Immediate`, the first Ready node.
//! - A volume whose claim is gone is Released; with reclaim policy Delete it is deleted (the
//!   node then removes its directory).
//! - A claim or volume being deleted keeps its finalizer while a pod uses it (a volume:
//!   while Bound).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{json, Value};

use crate::api::quantity::parse_quantity;
use crate::api::{LOCAL_PATH_PROVISIONER, SELECTED_NODE, STORAGE_DIR_ANNOTATION};

pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// What a write is on: a claim (namespace, name) or a volume (name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Claim(String, String),
    Volume(String),
}

#[derive(Debug, PartialEq)]
pub enum Write {
    /// A merge patch of the object (`status: true`: of its status subresource).
    Patch {
        on: Target,
        patch: Value,
        status: bool,
    },
    CreateVolume(Value),
    DeleteVolume(String),
    /// An event on a claim: type, reason, message.
    Event {
        on: Target,
        uid: String,
        kind: &'static str,
        reason: &'static str,
        message: String,
    },
}

fn bytes(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> u64 {
    q.and_then(|q| parse_quantity(&q.0, 1).ok()).unwrap_or(0)
}

fn claim_request(c: &PersistentVolumeClaim) -> u64 {
    bytes(
        c.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    )
}

fn class_of(c: &PersistentVolumeClaim) -> String {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

fn modes(m: &Option<Vec<String>>) -> Vec<String> {
    m.clone().unwrap_or_default()
}

fn phase_pv(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn phase_pvc(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn key(c: &PersistentVolumeClaim) -> (String, String) {
    (
        c.metadata.namespace.clone().unwrap_or_default(),
        c.metadata.name.clone().unwrap_or_default(),
    )
}

/// The claims pods use that are not finished: (namespace, claim name).
pub fn claims_in_use(pods: &[&Pod]) -> std::collections::BTreeSet<(String, String)> {
    pods.iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .flat_map(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .filter_map(move |v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .map(|c| (ns.clone(), c.claim_name.clone()))
                })
        })
        .collect()
}

fn without(list: &Option<Vec<String>>, f: &str) -> Vec<String> {
    list.iter().flatten().filter(|x| *x != f).cloned().collect()
}

/// The volume the local-path provisioner makes for `c` on `node` (in `dir`).
pub fn provisioned(
    c: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    dir: &str,
) -> Value {
    let (ns, name) = key(c);
    let uid = c.metadata.uid.clone().unwrap_or_default();
    let spec = c.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("pvc-{uid}"),
            "annotations": {"pv.kubernetes.io/provisioned-by": LOCAL_PATH_PROVISIONER,
                "local.path.provisioner/selected-node": node}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.metadata.name,
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
            "hostPath": {"path": format!("{}/pvc-{uid}_{ns}_{name}", dir.trim_end_matches('/')), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns,
                "name": name, "uid": uid},
        },
    })
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The writes for the cluster's claims and volumes.
pub fn plan(
    claims: &[&PersistentVolumeClaim],
    volumes: &[&PersistentVolume],
    classes: &[&StorageClass],
    nodes: &[&Node],
    pods: &[&Pod],
) -> Vec<Write> {
    let mut out = Vec::new();
    let in_use = claims_in_use(pods);
    let by_key: HashMap<(String, String), &PersistentVolumeClaim> =
        claims.iter().map(|c| (key(c), *c)).collect();
    let class_named: BTreeMap<String, &StorageClass> = classes
        .iter()
        .filter_map(|c| Some((c.metadata.name.clone()?, *c)))
        .collect();
    // Volumes taken: named by a claim, or in this pass.
    let mut taken: Vec<String> = claims
        .iter()
        .filter_map(|c| c.spec.as_ref()?.volume_name.clone())
        .filter(|v| !v.is_empty())
        .collect();

    // Volumes: their phase from their claim; reclaim; protection.
    for v in volumes {
        let Some(vname) = v.metadata.name.clone() else {
            continue;
        };
        let spec = v.spec.clone().unwrap_or_default();
        let claim = spec.claim_ref.as_ref().and_then(|r| {
            let c = by_key.get(&(r.namespace.clone()?, r.name.clone()?))?;
            (r.uid.is_none() || r.uid == c.metadata.uid).then_some(*c)
        });
        let want = match (&spec.claim_ref, claim) {
            (None, _) => "Available",
            (Some(_), Some(c))
                if c.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                    == Some(vname.as_str()) =>
            {
                "Bound"
            }
            // Promised to a claim that has not taken it yet.
            (Some(_), Some(_)) => "Available",
            (Some(r), None) if r.uid.is_none() => "Available",
            (Some(_), None) => "Released",
        };
        let deleting = v.metadata.deletion_timestamp.is_some();
        if want != phase_pv(v) && !deleting {
            out.push(Write::Patch {
                on: Target::Volume(vname.clone()),
                patch: json!({"status": {"phase": want}}),
                status: true,
            });
        }
        if want == "Released"
            && spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete")
            && !deleting
        {
            out.push(Write::DeleteVolume(vname.clone()));
        }
        let fins = &v.metadata.finalizers;
        if deleting && want != "Bound" && fins.iter().flatten().any(|f| f == PV_PROTECTION) {
            out.push(Write::Patch {
                on: Target::Volume(vname.clone()),
                patch: json!({"metadata": {"finalizers": without(fins, PV_PROTECTION),
                    "resourceVersion": v.metadata.resource_version}}),
                status: false,
            });
        }
    }

    for c in claims {
        let (ns, name) = key(c);
        let uid = c.metadata.uid.clone().unwrap_or_default();
        let on = Target::Claim(ns.clone(), name.clone());
        let event = |kind, reason, message: String| Write::Event {
            on: on.clone(),
            uid: uid.clone(),
            kind,
            reason,
            message,
        };
        let fins = &c.metadata.finalizers;
        if c.metadata.deletion_timestamp.is_some() {
            if !in_use.contains(&(ns.clone(), name.clone()))
                && fins.iter().flatten().any(|f| f == PVC_PROTECTION)
            {
                out.push(Write::Patch {
                    on: on.clone(),
                    patch: json!({"metadata": {"finalizers": without(fins, PVC_PROTECTION),
                        "resourceVersion": c.metadata.resource_version}}),
                    status: false,
                });
            }
            continue;
        }
        let spec = c.spec.clone().unwrap_or_default();
        // Named a volume (bound, or asked for by name): the volume must name it back.
        if let Some(vn) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
            let vol = volumes
                .iter()
                .find(|v| v.metadata.name.as_deref() == Some(vn));
            let names_me = |v: &PersistentVolume| {
                v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).map(|r| {
                    r.namespace.as_deref() == Some(ns.as_str())
                        && r.name.as_deref() == Some(name.as_str())
                        && (r.uid.is_none() || r.uid.as_deref() == Some(uid.as_str()))
                })
            };
            match vol {
                // A free volume asked for by name: it is promised to this claim first.
                Some(v) if names_me(v).is_none() && !taken.contains(&vn.to_string()) => {
                    taken.push(vn.to_string());
                    out.push(Write::Patch {
                        on: Target::Volume(vn.to_string()),
                        patch: json!({"metadata": {"resourceVersion": v.metadata.resource_version},
                            "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                            "namespace": ns, "name": name, "uid": uid,
                            "resourceVersion": c.metadata.resource_version}}}),
                        status: false,
                    });
                }
                Some(v) if names_me(v) == Some(true) && phase_pvc(c) != "Bound" => {
                    let vs = v.spec.clone().unwrap_or_default();
                    out.push(Write::Patch {
                        on: on.clone(),
                        patch: json!({"status": {"phase": "Bound", "accessModes": vs.access_modes,
                            "capacity": vs.capacity}}),
                        status: true,
                    });
                }
                Some(v) if names_me(v) == Some(true) => {}
                // Another claim's volume: never this one's.
                Some(_) if phase_pvc(c) == "Bound" => {
                    out.push(Write::Patch {
                        on: on.clone(),
                        patch: json!({"status": {"phase": "Lost"}}),
                        status: true,
                    });
                    out.push(event(
                        "Warning",
                        "ClaimMisbound",
                        "Two claims are bound to the same volume, this one is bound incorrectly"
                            .into(),
                    ));
                }
                Some(_) => out.push(event(
                    "Warning",
                    "FailedBinding",
                    format!("volume \"{vn}\" already bound to a different claim."),
                )),
                None if phase_pvc(c) == "Bound" => {
                    out.push(Write::Patch {
                        on: on.clone(),
                        patch: json!({"status": {"phase": "Lost"}}),
                        status: true,
                    });
                    out.push(event(
                        "Warning",
                        "ClaimLost",
                        "Bound claim has lost its PersistentVolume. Data on the volume is lost!"
                            .into(),
                    ));
                }
                None => {}
            }
            continue;
        }
        let class = class_of(c);
        let request = claim_request(c);
        let want_modes = modes(&spec.access_modes);
        // A volume promised to this claim, else the smallest that fits.
        let promised = volumes.iter().find(|v| {
            v.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some_and(|r| {
                    r.namespace.as_deref() == Some(ns.as_str())
                        && r.name.as_deref() == Some(name.as_str())
                        && (r.uid.is_none() || r.uid.as_deref() == Some(uid.as_str()))
                })
                && v.metadata.deletion_timestamp.is_none()
        });
        // The node the scheduler chose for the claim's first pod: a volume must reach it.
        let chosen_node = c
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SELECTED_NODE))
            .and_then(|n| {
                nodes
                    .iter()
                    .find(|x| x.metadata.name.as_deref() == Some(n.as_str()))
            });
        let reaches = |vs: &k8s_openapi::api::core::v1::PersistentVolumeSpec| {
            let (Some(node), Some(req)) = (
                chosen_node,
                vs.node_affinity.as_ref().and_then(|a| a.required.clone()),
            ) else {
                return true;
            };
            serde_json::from_value::<Pod>(json!({"metadata": {}, "spec": {"containers": [],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": req}}}}))
                .is_ok_and(|pin| crate::api::pod::node_matches(&pin, node))
        };
        let fits = |v: &&&PersistentVolume| {
            let vs = v.spec.clone().unwrap_or_default();
            reaches(&vs)
                && vs.claim_ref.is_none()
                && v.metadata.deletion_timestamp.is_none()
                && phase_pv(v) != "Released"
                && vs.storage_class_name.clone().unwrap_or_default() == class
                && bytes(vs.capacity.as_ref().and_then(|c| c.get("storage"))) >= request
                && want_modes
                    .iter()
                    .all(|m| modes(&vs.access_modes).contains(m))
                && vs.volume_mode.as_deref().unwrap_or("Filesystem")
                    == spec.volume_mode.as_deref().unwrap_or("Filesystem")
                && !taken.contains(&v.metadata.name.clone().unwrap_or_default())
        };
        let chosen = promised.or_else(|| {
            volumes.iter().filter(fits).min_by_key(|v| {
                bytes(
                    v.spec
                        .as_ref()
                        .and_then(|s| s.capacity.as_ref())
                        .and_then(|c| c.get("storage")),
                )
            })
        });
        if let Some(v) = chosen {
            let vname = v.metadata.name.clone().unwrap_or_default();
            taken.push(vname.clone());
            let vs = v.spec.clone().unwrap_or_default();
            if vs.claim_ref.as_ref().and_then(|r| r.uid.as_deref()) != Some(uid.as_str()) {
                out.push(Write::Patch {
                    on: Target::Volume(vname.clone()),
                    patch: json!({"metadata": {"annotations": {"pv.kubernetes.io/bound-by-controller": "yes"},
                        "resourceVersion": v.metadata.resource_version},
                        "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                        "namespace": ns, "name": name, "uid": uid,
                        "resourceVersion": c.metadata.resource_version}}}),
                    status: false,
                });
            }
            out.push(Write::Patch {
                on: on.clone(),
                patch: json!({"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes"}},
                    "spec": {"volumeName": vname}}),
                status: false,
            });
            continue;
        }
        if class.is_empty() {
            out.push(event(
                "Normal",
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set".into(),
            ));
            continue;
        }
        let Some(sc) = class_named.get(&class) else {
            out.push(event(
                "Warning",
                "ProvisioningFailed",
                format!("storageclass.storage.k8s.io \"{class}\" not found"),
            ));
            continue;
        };
        if sc.provisioner != LOCAL_PATH_PROVISIONER {
            out.push(event("Normal", "ExternalProvisioning", format!("Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.", sc.provisioner)));
            continue;
        }
        let selected = c
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SELECTED_NODE).cloned());
        let node_name = match (selected, sc.volume_binding_mode.as_deref()) {
            (Some(n), _) => n,
            (None, Some("WaitForFirstConsumer")) => {
                out.push(event(
                    "Normal",
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding".into(),
                ));
                continue;
            }
            (None, _) => match nodes
                .iter()
                .filter(|n| ready(n))
                .filter_map(|n| n.metadata.name.clone())
                .min()
            {
                Some(n) => n,
                None => continue,
            },
        };
        let dir = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node_name.as_str()))
            .and_then(|n| {
                n.metadata
                    .annotations
                    .as_ref()?
                    .get(STORAGE_DIR_ANNOTATION)
                    .cloned()
            });
        // The directory a node publishes must be a plain absolute path.
        let dir = dir.filter(|d| {
            d.starts_with('/')
                && !d.ends_with('/')
                && d[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..")
        });
        let Some(dir) = dir else {
            out.push(event("Warning", "ProvisioningFailed", format!("failed to provision volume with StorageClass \"{class}\": node \"{node_name}\" does not publish a storage directory that is a plain absolute path (annotation {STORAGE_DIR_ANNOTATION})")));
            continue;
        };
        if volumes
            .iter()
            .any(|v| v.metadata.name.as_deref() == Some(format!("pvc-{uid}").as_str()))
        {
            continue;
        }
        out.push(event(
            "Normal",
            "Provisioning",
            format!("External provisioner is provisioning volume for claim \"{ns}/{name}\""),
        ));
        out.push(Write::CreateVolume(provisioned(c, sc, &node_name, &dir)));
        out.push(event(
            "Normal",
            "ProvisioningSucceeded",
            format!("Successfully provisioned volume pvc-{uid}"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(
        name: &str,
        class: Option<&str>,
        size: &str,
        annotations: Value,
    ) -> PersistentVolumeClaim {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
            "annotations": annotations, "finalizers": [PVC_PROTECTION]},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}},
                "storageClassName": class, "volumeMode": "Filesystem"},
            "status": {"phase": "Pending"}}),
        )
        .unwrap()
    }

    fn class(mode: &str) -> StorageClass {
        serde_json::from_value(
            json!({"metadata": {"name": "local-path"}, "provisioner": LOCAL_PATH_PROVISIONER,
            "reclaimPolicy": "Delete", "volumeBindingMode": mode}),
        )
        .unwrap()
    }

    fn node() -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1", "annotations": {STORAGE_DIR_ANNOTATION: "/var/lib/knode/storage"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap()
    }

    fn volume(name: &str, size: &str, class: &str) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadWriteMany"], "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": class, "hostPath": {"path": "/data"}}, "status": {"phase": "Available"}}))
        .unwrap()
    }

    fn reasons(w: &[Write]) -> Vec<&str> {
        w.iter()
            .filter_map(|w| match w {
                Write::Event { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_claim_binds_the_smallest_volume_that_fits() {
        let c = claim("data", Some("manual"), "1Gi", json!({}));
        let (small, big, other) = (
            volume("small", "512Mi", "manual"),
            volume("big", "10Gi", "manual"),
            volume("fit", "2Gi", "manual"),
        );
        let w = plan(&[&c], &[&small, &big, &other], &[], &[], &[]);
        assert!(
            w.contains(&Write::Patch {
                on: Target::Claim("default".into(), "data".into()),
                patch: json!({"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes"}}, "spec": {"volumeName": "fit"}}),
                status: false
            }),
            "{w:?}"
        );
    }

    #[test]
    fn local_path_waits_for_its_consumer_then_provisions_on_its_node() {
        let sc = class("WaitForFirstConsumer");
        let n = node();
        let c = claim("data", Some("local-path"), "1Gi", json!({}));
        let w = plan(&[&c], &[], &[&sc], &[&n], &[]);
        assert_eq!(reasons(&w), ["WaitForFirstConsumer"]);
        let c = claim(
            "data",
            Some("local-path"),
            "1Gi",
            json!({SELECTED_NODE: "n1"}),
        );
        let w = plan(&[&c], &[], &[&sc], &[&n], &[]);
        let Some(Write::CreateVolume(v)) = w.iter().find(|w| matches!(w, Write::CreateVolume(_)))
        else {
            panic!("{w:?}")
        };
        assert_eq!(v["metadata"]["name"], "pvc-u-data");
        assert_eq!(
            v["spec"]["hostPath"]["path"],
            "/var/lib/knode/storage/pvc-u-data_default_data"
        );
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(v["spec"]["claimRef"]["uid"], "u-data");
        let unknown = claim("x", Some("fast"), "1Gi", json!({}));
        let w = plan(&[&unknown], &[], &[&sc], &[&n], &[]);
        let Some(Write::Event {
            reason, message, ..
        }) = w.first()
        else {
            panic!()
        };
        assert_eq!(
            (*reason, message.as_str()),
            (
                "ProvisioningFailed",
                "storageclass.storage.k8s.io \"fast\" not found"
            )
        );
    }

    #[test]
    fn a_released_volume_is_deleted_or_kept_by_its_policy_and_protection_holds_while_used() {
        let mut v = volume("pvc-1", "1Gi", "local-path");
        v.spec.as_mut().unwrap().claim_ref = Some(
            serde_json::from_value(
                json!({"namespace": "default", "name": "gone", "uid": "u-gone"}),
            )
            .unwrap(),
        );
        v.status.as_mut().unwrap().phase = Some("Bound".into());
        let w = plan(&[], &[&v], &[], &[], &[]);
        assert!(
            !w.contains(&Write::DeleteVolume("pvc-1".into())),
            "Retain keeps it"
        );
        assert!(w.iter().any(
            |w| matches!(w, Write::Patch { patch, .. } if patch["status"]["phase"] == "Released")
        ));
        v.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Delete".into());
        assert!(plan(&[], &[&v], &[], &[], &[]).contains(&Write::DeleteVolume("pvc-1".into())));

        let mut c = claim("data", Some("local-path"), "1Gi", json!({}));
        c.metadata.deletion_timestamp = Some(crate::api::time::time(chrono::Utc::now()));
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]},
            "status": {"phase": "Running"}})).unwrap();
        assert!(
            plan(&[&c], &[], &[], &[], &[&pod]).is_empty(),
            "held while used"
        );
        assert_eq!(plan(&[&c], &[], &[], &[], &[]).len(), 1, "let go when not");
    }

    #[test]
    fn a_claim_cannot_take_a_volume_meant_for_another() {
        // Pre-bound by an admin to a/data (no uid): a claim in b naming it gets nothing.
        let mut v = volume("precious", "1Gi", "manual");
        v.spec.as_mut().unwrap().claim_ref =
            Some(serde_json::from_value(json!({"namespace": "a", "name": "data"})).unwrap());
        let mut thief = claim("data", Some("manual"), "1Gi", json!({}));
        thief.metadata.namespace = Some("b".into());
        thief.spec.as_mut().unwrap().volume_name = Some("precious".into());
        let w = plan(&[&thief], &[&v], &[], &[], &[]);
        assert!(
            !w.iter().any(|w| matches!(
                w,
                Write::Patch {
                    on: Target::Claim(..),
                    ..
                }
            )),
            "{w:?}"
        );
        assert_eq!(reasons(&w), ["FailedBinding"]);
        // A volume another claim names is not offered to a second one.
        let free = volume("free", "1Gi", "manual");
        let mut first = claim("one", Some("manual"), "1Gi", json!({}));
        first.spec.as_mut().unwrap().volume_name = Some("free".into());
        let second = claim("two", Some("manual"), "1Gi", json!({}));
        let w = plan(&[&first, &second], &[&free], &[], &[], &[]);
        assert!(
            !w.iter()
                .any(|w| matches!(w, Write::Patch { on: Target::Claim(_, n), .. } if n == "two")),
            "{w:?}"
        );
    }
}
