//! The resources knode serves: one table from which discovery, routing, storage keys and
//! OpenAPI are all derived. Names, short names, categories, verbs and subresources are the
//! real API server's (`api/discovery/*.json` in kubernetes/kubernetes).

/// A subresource and the kind it speaks.
#[derive(Debug)]
pub struct Sub {
    pub name: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub subs: &'static [Sub],
    /// The first segment of its keys under `/registry/` (Kubernetes' own layout: the events
    /// of both groups share `events`).
    pub storage: &'static str,
    /// The definition name in the OpenAPI schemas.
    pub definition: &'static str,
}

pub const ALL: &[&str] = &["all"];
pub const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NS_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const CREATE: &[&str] = &["create"];
const GPU: &[&str] = &["get", "patch", "update"];
const CG: &[&str] = &["create", "get"];
const GL: &[&str] = &["get", "list"];
const PROXY: &[&str] = &["create", "delete", "get", "patch", "update"];

const fn status(group: &'static str, version: &'static str, kind: &'static str) -> Sub {
    Sub {
        name: "status",
        group,
        version,
        kind,
        verbs: GPU,
    }
}

const fn scale() -> Sub {
    Sub {
        name: "scale",
        group: "autoscaling",
        version: "v1",
        kind: "Scale",
        verbs: GPU,
    }
}

macro_rules! res {
    ($g:expr, $v:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr, $short:expr, $cat:expr, $verbs:expr, $subs:expr, $storage:expr, $def:expr) => {
        Resource {
            group: $g,
            version: $v,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short: $short,
            categories: $cat,
            verbs: $verbs,
            subs: $subs,
            storage: $storage,
            definition: $def,
        }
    };
}

/// Every resource, in discovery order (the order `kubectl get all` lists them in).
pub static RESOURCES: &[Resource] = &[
    res!(
        "",
        "v1",
        "Binding",
        "bindings",
        "binding",
        true,
        &[],
        &[],
        CREATE,
        &[],
        "bindings",
        "io.k8s.api.core.v1.Binding"
    ),
    res!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        &[],
        CRUD,
        &[],
        "configmaps",
        "io.k8s.api.core.v1.ConfigMap"
    ),
    res!(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        &[],
        CRUD,
        &[],
        "services/endpoints",
        "io.k8s.api.core.v1.Endpoints"
    ),
    res!(
        "",
        "v1",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        &[],
        CRUD,
        &[],
        "events",
        "io.k8s.api.core.v1.Event"
    ),
    res!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        &[],
        NS_VERBS,
        &[
            Sub {
                name: "finalize",
                group: "",
                version: "v1",
                kind: "Namespace",
                verbs: &["update"]
            },
            status("", "v1", "Namespace"),
        ],
        "namespaces",
        "io.k8s.api.core.v1.Namespace"
    ),
    res!(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        &[],
        CRUD,
        &[
            Sub {
                name: "proxy",
                group: "",
                version: "v1",
                kind: "NodeProxyOptions",
                verbs: PROXY
            },
            status("", "v1", "Node"),
        ],
        "minions",
        "io.k8s.api.core.v1.Node"
    ),
    res!(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        &["pvc"],
        &[],
        CRUD,
        &[status("", "v1", "PersistentVolumeClaim"),],
        "persistentvolumeclaims",
        "io.k8s.api.core.v1.PersistentVolumeClaim"
    ),
    res!(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        false,
        &["pv"],
        &[],
        CRUD,
        &[status("", "v1", "PersistentVolume"),],
        "persistentvolumes",
        "io.k8s.api.core.v1.PersistentVolume"
    ),
    res!(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        ALL,
        CRUD,
        &[
            Sub {
                name: "attach",
                group: "",
                version: "v1",
                kind: "PodAttachOptions",
                verbs: CG
            },
            Sub {
                name: "binding",
                group: "",
                version: "v1",
                kind: "Binding",
                verbs: CREATE
            },
            Sub {
                name: "eviction",
                group: "policy",
                version: "v1",
                kind: "Eviction",
                verbs: CREATE
            },
            Sub {
                name: "exec",
                group: "",
                version: "v1",
                kind: "PodExecOptions",
                verbs: CG
            },
            Sub {
                name: "log",
                group: "",
                version: "v1",
                kind: "Pod",
                verbs: &["get"]
            },
            Sub {
                name: "portforward",
                group: "",
                version: "v1",
                kind: "PodPortForwardOptions",
                verbs: CG
            },
            Sub {
                name: "proxy",
                group: "",
                version: "v1",
                kind: "PodProxyOptions",
                verbs: PROXY
            },
            status("", "v1", "Pod"),
        ],
        "pods",
        "io.k8s.api.core.v1.Pod"
    ),
    res!(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        true,
        &["rc"],
        ALL,
        CRUD,
        &[scale(), status("", "v1", "ReplicationController"),],
        "controllers",
        "io.k8s.api.core.v1.ReplicationController"
    ),
    res!(
        "",
        "v1",
        "Secret",
        "secrets",
        "secret",
        true,
        &[],
        &[],
        CRUD,
        &[],
        "secrets",
        "io.k8s.api.core.v1.Secret"
    ),
    res!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        &[],
        CRUD,
        &[Sub {
            name: "token",
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: CREATE,
        }],
        "serviceaccounts",
        "io.k8s.api.core.v1.ServiceAccount"
    ),
    res!(
        "",
        "v1",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        ALL,
        CRUD,
        &[
            Sub {
                name: "proxy",
                group: "",
                version: "v1",
                kind: "ServiceProxyOptions",
                verbs: PROXY
            },
            status("", "v1", "Service"),
        ],
        "services/specs",
        "io.k8s.api.core.v1.Service"
    ),
    res!(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        &[],
        &[],
        CRUD,
        &[],
        "controllerrevisions",
        "io.k8s.api.apps.v1.ControllerRevision"
    ),
    res!(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        ALL,
        CRUD,
        &[status("apps", "v1", "DaemonSet"),],
        "daemonsets",
        "io.k8s.api.apps.v1.DaemonSet"
    ),
    res!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        ALL,
        CRUD,
        &[scale(), status("apps", "v1", "Deployment"),],
        "deployments",
        "io.k8s.api.apps.v1.Deployment"
    ),
    res!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        ALL,
        CRUD,
        &[scale(), status("apps", "v1", "ReplicaSet"),],
        "replicasets",
        "io.k8s.api.apps.v1.ReplicaSet"
    ),
    res!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
        ALL,
        CRUD,
        &[scale(), status("apps", "v1", "StatefulSet"),],
        "statefulsets",
        "io.k8s.api.apps.v1.StatefulSet"
    ),
    res!(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview",
        false,
        &[],
        &[],
        CREATE,
        &[],
        "",
        "io.k8s.api.authentication.v1.SelfSubjectReview"
    ),
    res!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        false,
        &[],
        &[],
        CREATE,
        &[],
        "",
        "io.k8s.api.authorization.v1.SelfSubjectAccessReview"
    ),
    res!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        true,
        &[],
        &[],
        CREATE,
        &[],
        "",
        "io.k8s.api.authorization.v1.SelfSubjectRulesReview"
    ),
    res!(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        true,
        &["cj"],
        ALL,
        CRUD,
        &[status("batch", "v1", "CronJob"),],
        "cronjobs",
        "io.k8s.api.batch.v1.CronJob"
    ),
    res!(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        true,
        &[],
        ALL,
        CRUD,
        &[status("batch", "v1", "Job"),],
        "jobs",
        "io.k8s.api.batch.v1.Job"
    ),
    res!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        &[],
        CRUD,
        &[],
        "leases",
        "io.k8s.api.coordination.v1.Lease"
    ),
    res!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
        &[],
        CRUD,
        &[],
        "endpointslices",
        "io.k8s.api.discovery.v1.EndpointSlice"
    ),
    res!(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        &[],
        CRUD,
        &[],
        "events",
        "io.k8s.api.events.v1.Event"
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        &[],
        &[],
        CRUD,
        &[],
        "clusterrolebindings",
        "io.k8s.api.rbac.v1.ClusterRoleBinding"
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        &[],
        &[],
        CRUD,
        &[],
        "clusterroles",
        "io.k8s.api.rbac.v1.ClusterRole"
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        &[],
        &[],
        CRUD,
        &[],
        "rolebindings",
        "io.k8s.api.rbac.v1.RoleBinding"
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        true,
        &[],
        &[],
        CRUD,
        &[],
        "roles",
        "io.k8s.api.rbac.v1.Role"
    ),
    res!(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        "storageclass",
        false,
        &["sc"],
        &[],
        CRUD,
        &[],
        "storageclasses",
        "io.k8s.api.storage.v1.StorageClass"
    ),
    // The resource metrics API (metrics-server's), answered from the nodes' usage: never
    // stored (see `resourcemetrics.rs`).
    res!(
        "metrics.k8s.io",
        "v1beta1",
        "NodeMetrics",
        "nodes",
        "nodemetrics",
        false,
        &[],
        &[],
        GL,
        &[],
        "",
        "io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics"
    ),
    res!(
        "metrics.k8s.io",
        "v1beta1",
        "PodMetrics",
        "pods",
        "podmetrics",
        true,
        &[],
        &[],
        GL,
        &[],
        "",
        "io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics"
    ),
];

impl Resource {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, or `pods`: how errors name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Deployment.apps`, or `Pod`: how Invalid errors name the kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub fn sub(&self, name: &str) -> Option<&'static Sub> {
        self.subs.iter().find(|s| s.name == name)
    }

    pub fn has_status(&self) -> bool {
        self.sub("status").is_some()
    }

    /// Whether objects are stored (the reviews are answered, never kept).
    pub fn stored(&self) -> bool {
        !self.storage.is_empty() && self.plural != "bindings"
    }

    /// Spec changes bump `metadata.generation` (workloads and pods).
    pub fn generation(&self) -> bool {
        matches!(
            self.plural,
            "pods"
                | "replicationcontrollers"
                | "deployments"
                | "replicasets"
                | "daemonsets"
                | "statefulsets"
                | "jobs"
                | "cronjobs"
        )
    }

    /// The storage key of one object, or the prefix of a namespace's or of all objects.
    pub fn key(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let mut k = format!("/registry/{}/", self.storage);
        if let Some(ns) = namespace.filter(|_| self.namespaced) {
            k.push_str(ns);
            k.push('/');
        }
        if let Some(n) = name {
            k.push_str(n);
        }
        k
    }
}

/// The resource served at `group`/`version` named `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of a kind (the first group serving it: core before events.k8s.io).
pub fn by_kind(group: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// The groups other than core, in the order `/apis` lists them.
pub fn groups() -> Vec<&'static str> {
    let mut gs: Vec<&str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !gs.contains(&r.group) {
            gs.push(r.group);
        }
    }
    gs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_is_unique_and_its_keys_do_not_overlap() {
        let mut seen = std::collections::BTreeSet::new();
        for r in RESOURCES {
            assert!(seen.insert((r.group, r.plural)), "{} twice", r.plural);
            for s in r.subs {
                assert!(!s.kind.is_empty(), "{}/{} without a kind", r.plural, s.name);
            }
        }
        // Prefixes of different resources must not contain each other (a LIST of one would
        // return the other's objects), except the events shared by two groups.
        let stored: Vec<&Resource> = RESOURCES.iter().filter(|r| r.stored()).collect();
        for a in &stored {
            for b in &stored {
                if a.storage != b.storage {
                    assert!(
                        !a.key(None, None).starts_with(&b.key(None, None)),
                        "{} inside {}",
                        a.storage,
                        b.storage
                    );
                }
            }
        }
        assert_eq!(
            find("apps", "v1", "deployments").unwrap().qualified(),
            "deployments.apps"
        );
        assert_eq!(
            find("", "v1", "pods")
                .unwrap()
                .key(Some("default"), Some("web")),
            "/registry/pods/default/web"
        );
        assert_eq!(
            find("", "v1", "nodes").unwrap().key(Some("x"), Some("n1")),
            "/registry/minions/n1"
        );
    }
}
