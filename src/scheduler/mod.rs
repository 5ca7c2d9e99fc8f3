//! The scheduler: binds each pending pod to a node through `pods/binding`, as kube-scheduler's
//! default profile does for the cases knode's users meet. Filters: the node is Ready (reported
//! as upstream reports it, the `node.kubernetes.io/not-ready` taint), not unschedulable, the
//! pod's nodeSelector and required node affinity (`matchExpressions` on labels), the node's
//! NoSchedule/NoExecute taints against the pod's tolerations, and the pod's requests (cpu,
//! memory, pod count) against what the node has left of its allocatable. Scores: least
//! allocated (the share of cpu and memory left after the pod), then fewest pods of the same
//! owner (spreading replicas), then the name, so the choice is deterministic. A pod no node
//! fits gets `PodScheduled=False` and a `FailedScheduling` event worded as upstream's
//! (`0/1 nodes are available: 1 Insufficient cpu. preemption: ...`); it is tried again when
//! nodes or pods change.
//!
//! [`schedule`] is a pure function of the pod and the nodes with their pods; [`run`] feeds it
//! from watches and applies its answer through the client.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, Taint};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;

use crate::api::pod::{node_matches, tolerates};
use crate::api::quantity::parse_quantity;

pub const NAME: &str = "default-scheduler";

/// Amounts the scheduler counts: millicores, bytes, pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amounts {
    pub cpu: u64,
    pub memory: u64,
    pub pods: u64,
}

fn quantity(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    key: &str,
    unit: u128,
) -> u64 {
    map.and_then(|m| m.get(key))
        .and_then(|q| parse_quantity(&q.0, unit).ok())
        .unwrap_or(0)
}

/// What a pod asks for: the sum of its containers' requests, or its largest init container's
/// if that is more (init containers run one at a time), plus its overhead; and one pod.
pub fn requests(pod: &Pod) -> Amounts {
    let Some(spec) = &pod.spec else {
        return Amounts {
            pods: 1,
            ..Default::default()
        };
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        (quantity(r, "cpu", 1000), quantity(r, "memory", 1))
    };
    let (mut cpu, mut memory) = spec
        .containers
        .iter()
        .map(of)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    for c in spec.init_containers.iter().flatten() {
        let (c2, m2) = of(c);
        cpu = cpu.max(c2);
        memory = memory.max(m2);
    }
    cpu += quantity(spec.overhead.as_ref(), "cpu", 1000);
    memory += quantity(spec.overhead.as_ref(), "memory", 1);
    Amounts {
        cpu,
        memory,
        pods: 1,
    }
}

/// A node's allocatable (its capacity when it reports no allocatable).
pub fn allocatable(node: &Node) -> Amounts {
    let st = node.status.as_ref();
    let m = st
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| st.and_then(|s| s.capacity.as_ref()));
    Amounts {
        cpu: quantity(m, "cpu", 1000),
        memory: quantity(m, "memory", 1),
        pods: quantity(m, "pods", 1),
    }
}

/// A node and what the pods bound to it already take.
pub struct NodeState<'a> {
    pub node: &'a Node,
    pub used: Amounts,
    /// Pods on the node per owner uid (for spreading).
    pub by_owner: HashMap<String, u32>,
}

impl NodeState<'_> {
    /// Counts `pod` as bound here.
    pub fn add(&mut self, pod: &Pod) {
        let r = requests(pod);
        self.used.cpu += r.cpu;
        self.used.memory += r.memory;
        self.used.pods += 1;
        if let Some(o) = owner(pod) {
            *self.by_owner.entry(o).or_default() += 1;
        }
    }
}

/// Why a node does not fit, as upstream's filter plugins say it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Misfit {
    Taint(String),
    Unschedulable,
    Selector,
    Insufficient(&'static str),
    TooManyPods,
    VolumeAffinity,
}

impl Misfit {
    fn reason(&self) -> String {
        match self {
            Misfit::Taint(t) => format!("node(s) had untolerated taint {t}"),
            Misfit::Unschedulable => "node(s) were unschedulable".into(),
            Misfit::Selector => "node(s) didn't match Pod's node affinity/selector".into(),
            Misfit::Insufficient(r) => format!("Insufficient {r}"),
            Misfit::TooManyPods => "Too many pods".into(),
            Misfit::VolumeAffinity => "node(s) had volume node affinity conflict".into(),
        }
    }

    /// Whether preempting lower-priority pods could help (upstream says which).
    fn resources(&self) -> bool {
        matches!(self, Misfit::Insufficient(_) | Misfit::TooManyPods)
    }
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether `pod` fits on `n`, and if not the first reason upstream would give.
pub fn fits(pod: &Pod, want: Amounts, n: &NodeState) -> Result<(), Misfit> {
    let node = n.node;
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    if !ready(node) {
        let t = Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerates(&tols, &t) {
            return Err(Misfit::Taint("{node.kubernetes.io/not-ready: }".into()));
        }
    }
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        let t = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerates(&tols, &t) {
            return Err(Misfit::Unschedulable);
        }
    }
    if !node_matches(pod, node) {
        return Err(Misfit::Selector);
    }
    for t in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&tols, t) {
            return Err(Misfit::Taint(format!(
                "{{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            )));
        }
    }
    let alloc = allocatable(node);
    if n.used.pods + 1 > alloc.pods {
        return Err(Misfit::TooManyPods);
    }
    if want.cpu > 0 && n.used.cpu + want.cpu > alloc.cpu {
        return Err(Misfit::Insufficient("cpu"));
    }
    if want.memory > 0 && n.used.memory + want.memory > alloc.memory {
        return Err(Misfit::Insufficient("memory"));
    }
    Ok(())
}

fn owner(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// The claims, volumes and classes the VolumeBinding filter reads.
#[derive(Default)]
pub struct Storage<'a> {
    pub claims: HashMap<(String, String), &'a PersistentVolumeClaim>,
    pub volumes: HashMap<String, &'a PersistentVolume>,
    pub classes: HashMap<String, &'a StorageClass>,
}

/// What a pod's claims ask of its node.
#[derive(Debug, Default)]
pub struct VolumeNeeds {
    /// For each bound volume with node affinity, a pod carrying that affinity (matched as a
    /// pod's own).
    pins: Vec<Pod>,
    /// Claims waiting for their first consumer: the chosen node is written on them.
    pub select: Vec<String>,
}

impl VolumeNeeds {
    /// `claim` was given `node` earlier in this pass: the pod goes there too.
    pub fn chosen(&mut self, claim: &str, node: &str) {
        if let Some(i) = self.select.iter().position(|c| c == claim) {
            self.select.remove(i);
            self.pins.extend(pin_to(node));
        }
    }
}

/// A pod whose only wish is `node` (matched as a pod's own node affinity).
fn pin_to(node: &str) -> Option<Pod> {
    serde_json::from_value::<Pod>(json!({"metadata": {}, "spec": {"containers": [],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}}}))
    .ok()
}

/// The VolumeBinding plugin's PreFilter: the pod's claims must exist and not be going, and
/// be bound or wait for their first consumer. `Err` is the whole pod's reason.
pub fn volume_needs(pod: &Pod, st: &Storage) -> Result<VolumeNeeds, String> {
    let mut needs = VolumeNeeds::default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(c) = &v.persistent_volume_claim else {
            continue;
        };
        let name = &c.claim_name;
        let Some(claim) = st.claims.get(&(ns.clone(), name.clone())) else {
            return Err(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let spec = claim.spec.clone().unwrap_or_default();
        match spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
            Some(vn) => {
                let Some(vol) = st.volumes.get(vn) else {
                    return Err(format!("persistentvolume \"{vn}\" not found"));
                };
                if let Some(req) = vol
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_affinity.as_ref())
                    .and_then(|a| a.required.clone())
                {
                    let pin = serde_json::from_value::<Pod>(
                        json!({"metadata": {}, "spec": {"containers": [],
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": req}}}}),
                    );
                    needs.pins.extend(pin.ok());
                }
            }
            None => {
                let waits = spec
                    .storage_class_name
                    .as_ref()
                    .and_then(|c| st.classes.get(c))
                    .is_some_and(|c| {
                        c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
                    });
                if !waits {
                    return Err("pod has unbound immediate PersistentVolumeClaims".into());
                }
                let chosen = claim
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(crate::api::SELECTED_NODE));
                match chosen {
                    // Chosen for an earlier pod: this one goes there too.
                    Some(node) => needs.pins.extend(pin_to(node)),
                    None => needs.select.push(name.clone()),
                }
            }
        }
    }
    Ok(needs)
}

/// The node for `pod`, or the FailedScheduling message.
pub fn schedule(pod: &Pod, nodes: &[NodeState]) -> Result<String, String> {
    schedule_with(pod, nodes, &VolumeNeeds::default())
}

/// The FailedScheduling message of a reason that holds for the whole pod.
pub fn unresolvable(total: usize, reason: &str) -> String {
    format!("0/{total} nodes are available: {reason}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.")
}

/// The node for `pod` whose claims need `vols`, or the FailedScheduling message.
pub fn schedule_with(pod: &Pod, nodes: &[NodeState], vols: &VolumeNeeds) -> Result<String, String> {
    if nodes.is_empty() {
        return Err("no nodes available to schedule pods".into());
    }
    let want = requests(pod);
    let mut misfits: Vec<Misfit> = Vec::new();
    // (free share, u32::MAX - siblings, reversed name): higher is better.
    type Rank = (u64, u32, std::cmp::Reverse<String>);
    let mut best: Option<(Rank, String)> = None;
    let own = owner(pod);
    for n in nodes {
        let fit = fits(pod, want, n).and_then(|()| {
            if vols.pins.iter().all(|pin| node_matches(pin, n.node)) {
                Ok(())
            } else {
                Err(Misfit::VolumeAffinity)
            }
        });
        match fit {
            Err(m) => misfits.push(m),
            Ok(()) => {
                let alloc = allocatable(n.node);
                // Least allocated: the mean share (per mille) of cpu and memory left.
                let left = |total: u64, used: u64| {
                    (total.saturating_sub(used) * 1000)
                        .checked_div(total)
                        .unwrap_or(0)
                };
                let free = (left(alloc.cpu, n.used.cpu + want.cpu)
                    + left(alloc.memory, n.used.memory + want.memory))
                    / 2;
                let same = own
                    .as_ref()
                    .and_then(|o| n.by_owner.get(o))
                    .copied()
                    .unwrap_or(0);
                let name = n.node.metadata.name.clone().unwrap_or_default();
                // Higher is better: more free, fewer siblings, then the first name.
                let key = (free, u32::MAX - same, std::cmp::Reverse(name.clone()));
                if best.as_ref().is_none_or(|(k, _)| key > *k) {
                    best = Some((key, name));
                }
            }
        }
    }
    if let Some((_, name)) = best {
        return Ok(name);
    }
    Err(unschedulable_message(nodes.len(), &misfits))
}

/// Upstream's FailedScheduling text: reasons counted and sorted, then what preemption found.
pub fn unschedulable_message(total: usize, misfits: &[Misfit]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for m in misfits {
        *counts.entry(m.reason()).or_default() += 1;
    }
    let mut reasons: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    reasons.sort();
    let victims = misfits.iter().filter(|m| m.resources()).count();
    let mut pre = Vec::new();
    if victims > 0 {
        pre.push(format!(
            "{victims} No preemption victims found for incoming pod"
        ));
    }
    if misfits.len() > victims {
        pre.push(format!(
            "{} Preemption is not helpful for scheduling",
            misfits.len() - victims
        ));
    }
    pre.sort();
    format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {}.",
        reasons.join(", "),
        pre.join(", ")
    )
}

/// Whether the scheduler should place this pod: ours, unbound, alive.
pub fn pending(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.node_name.as_deref().unwrap_or("").is_empty()
        && spec.scheduler_name.as_deref().unwrap_or(NAME) == NAME
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// The node states from the nodes and every pod (bound, not finished).
pub fn node_states<'a>(nodes: &'a [Arc<Node>], pods: &[Arc<Pod>]) -> Vec<NodeState<'a>> {
    let mut out: Vec<NodeState> = nodes
        .iter()
        .map(|n| NodeState {
            node: n,
            used: Amounts::default(),
            by_owner: HashMap::new(),
        })
        .collect();
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((n.metadata.name.as_deref()?, i)))
        .collect();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let done = matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let Some(&i) = index.get(node) else { continue };
        if done {
            continue;
        }
        out[i].add(p);
    }
    out
}

mod run;
pub use run::run;

#[cfg(test)]
mod tests;

/// An Event about a pod, from the scheduler.
fn event(pod: &Pod, kind: &str, reason: &str, message: &str) -> serde_json::Value {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = crate::api::time::rfc3339(chrono::Utc::now());
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": name,
                           "uid": pod.metadata.uid, "apiVersion": "v1",
                           "resourceVersion": pod.metadata.resource_version},
        "reason": reason, "message": message, "type": kind,
        "source": {"component": NAME},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": NAME, "reportingInstance": NAME,
    })
}
