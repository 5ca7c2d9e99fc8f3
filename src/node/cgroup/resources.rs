//! Requests and limits as the kubelet reads them: quantities, defaulting, QoS classes, and
//! their cgroup v2 values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::api::quantity::parse_quantity;

/// A container's requests and limits that cannot be read or do not hold together, each
/// problem naming its field and value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ResourceError(pub Vec<String>);

impl crate::api::error::Classify for ResourceError {
    fn class(&self) -> crate::api::error::ErrorClass {
        crate::api::error::ErrorClass::Invalid
    }
}

/// The period of cpu.max, as the kubelet uses it (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;
/// cgroup v1 cpu.shares bounds; cpu.weight is derived from shares as runc and the kubelet do.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
/// The largest cpu.max quota the kernel takes (`MAX_BW`, 2^44 - 1 µs).
const MAX_QUOTA_US: u64 = (1 << 44) - 1;

/// One container's requests and limits, after Kubernetes' defaulting (a limit without a
/// request makes the request equal to the limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerResources {
    pub cpu_request_milli: Option<u64>,
    pub cpu_limit_milli: Option<u64>,
    pub memory_request: Option<u64>,
    pub memory_limit: Option<u64>,
    /// `hugepages-<size>` limits: page size as cgroup v2 names it (`2MB`, `1GB`) and bytes.
    pub hugepages: BTreeMap<String, u64>,
}

/// The pod's QoS class, computed as Kubernetes does (`status.qosClass`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// `hugepages-2Mi` -> `2MB`, the name of cgroup v2's hugetlb files.
fn hugetlb_size(name: &str) -> Option<String> {
    let q = name.strip_prefix("hugepages-")?;
    let bytes = parse_quantity(q, 1).ok()?;
    Some(match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MB", b >> 20),
        b => format!("{}KB", b >> 10),
    })
}

/// Reads and checks one container's `resources`; `at` is its path in the pod
/// (`spec.containers[0]`). Errors name the field and the value. Warnings list resources knode
/// does not enforce.
pub fn container(
    c: &Container,
    at: &str,
) -> Result<(ContainerResources, Vec<String>), ResourceError> {
    let mut r = ContainerResources::default();
    let mut warnings = Vec::new();
    let Some(res) = &c.resources else {
        return Ok((r, warnings));
    };
    let mut problems = Vec::new();
    let mut read = |kind: &str,
                    map: &Option<
        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for (name, q) in map.iter().flatten() {
            let field = format!("{at}.resources.{kind}.{name}");
            let unit = if name == "cpu" { 1000 } else { 1 };
            match parse_quantity(&q.0, unit) {
                Ok(v) => {
                    out.insert(name.clone(), v);
                }
                Err(why) => problems.push(format!("{field}: invalid value {:?}: {why}", q.0)),
            }
            if !(name == "cpu" || name == "memory" || name.starts_with("hugepages-")) {
                warnings.push(format!(
                    "{field} is not enforced by knode (only cpu, memory and hugepages are)"
                ));
            }
        }
        out
    };
    let limits = read("limits", &res.limits);
    let mut requests = read("requests", &res.requests);
    if let Some(claims) = &res.claims {
        if !claims.is_empty() {
            warnings.push(format!(
                "{at}.resources.claims is not supported by knode and is ignored"
            ));
        }
    }
    // Kubernetes defaulting: a limit without a request sets the request.
    for (k, v) in &limits {
        requests.entry(k.clone()).or_insert(*v);
    }
    for (k, req) in &requests {
        if let Some(lim) = limits.get(k) {
            if req > lim {
                let raw = |m: &Option<
                    BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                >| {
                    m.as_ref()
                        .and_then(|m| m.get(k))
                        .map(|q| q.0.clone())
                        .unwrap_or_default()
                };
                problems.push(format!(
                    "{at}.resources.requests.{k}: invalid value {:?}: must be less than or equal to the {k} limit {:?}",
                    raw(&res.requests),
                    raw(&res.limits)
                ));
            }
        }
        if k.starts_with("hugepages-") && limits.get(k) != Some(req) {
            problems.push(format!(
                "{at}.resources.requests.{k}: invalid value {req}: hugepages requests must equal their limit ({})",
                limits.get(k).map(|l| l.to_string()).unwrap_or_else(|| "none".into())
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ResourceError(problems));
    }
    // A zero request or limit counts as none, as in the kubelet (for QoS and for cgroups).
    let nonzero = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().filter(|v| *v > 0);
    r.cpu_request_milli = nonzero(&requests, "cpu");
    r.cpu_limit_milli = nonzero(&limits, "cpu");
    r.memory_request = nonzero(&requests, "memory");
    r.memory_limit = nonzero(&limits, "memory");
    for (k, v) in &limits {
        if let Some(size) = hugetlb_size(k) {
            r.hugepages.insert(size, *v);
        }
    }
    Ok((r, warnings))
}

/// Every container of a pod (init containers first) with its resources, or the problems.
pub fn pod(pod: &Pod) -> Result<Vec<(String, ContainerResources)>, ResourceError> {
    let Some(spec) = &pod.spec else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (list, cs) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in cs.iter().enumerate() {
            match container(c, &format!("spec.{list}[{i}]")) {
                Ok((r, _)) => out.push((c.name.clone(), r)),
                Err(e) => problems.extend(e.0),
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ResourceError(problems))
    }
}

/// Kubernetes' QoS rules: Guaranteed when every container has cpu and memory limits equal to
/// its requests; BestEffort when no container has any cpu or memory request or limit;
/// Burstable otherwise.
pub fn qos(containers: &[ContainerResources]) -> QosClass {
    let any = containers.iter().any(|c| {
        c.cpu_request_milli.is_some()
            || c.cpu_limit_milli.is_some()
            || c.memory_request.is_some()
            || c.memory_limit.is_some()
    });
    if !any {
        return QosClass::BestEffort;
    }
    let guaranteed = containers.iter().all(|c| {
        c.cpu_limit_milli.is_some()
            && c.memory_limit.is_some()
            && c.cpu_request_milli == c.cpu_limit_milli
            && c.memory_request == c.memory_limit
    });
    if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// The pod-level values: the sum over app containers, or the largest init container when
/// that is larger (init containers run one at a time), as the kubelet computes them. A limit
/// counts only when every container has one.
pub fn pod_total(init: &[ContainerResources], apps: &[ContainerResources]) -> ContainerResources {
    fn total(
        init: &[ContainerResources],
        apps: &[ContainerResources],
        f: impl Fn(&ContainerResources) -> Option<u64>,
        all: bool,
    ) -> Option<u64> {
        let vals: Vec<Option<u64>> = apps.iter().map(&f).collect();
        if all && (vals.iter().any(Option::is_none) || init.iter().any(|c| f(c).is_none())) {
            return None;
        }
        let sum = vals
            .iter()
            .flatten()
            .fold(0u64, |a, v| a.saturating_add(*v));
        let max_init = init.iter().filter_map(&f).max().unwrap_or(0);
        let v = sum.max(max_init);
        (all || v > 0).then_some(v)
    }
    let mut hugepages = BTreeMap::new();
    for c in apps {
        for (k, v) in &c.hugepages {
            let e = hugepages.entry(k.clone()).or_insert(0u64);
            *e = e.saturating_add(*v);
        }
    }
    ContainerResources {
        cpu_request_milli: total(init, apps, |c| c.cpu_request_milli, false),
        cpu_limit_milli: total(init, apps, |c| c.cpu_limit_milli, true),
        memory_request: total(init, apps, |c| c.memory_request, false),
        memory_limit: total(init, apps, |c| c.memory_limit, true),
        hugepages,
    }
}

/// cpu.shares for a cpu request, as the kubelet computes it (no request: the minimum, 2).
pub fn cpu_shares(request_milli: Option<u64>) -> u64 {
    match request_milli {
        None | Some(0) => MIN_SHARES,
        Some(m) => (m.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES),
    }
}

/// cpu.weight from cpu.shares: runc's and the kubelet's linear mapping of [2, 262144] onto
/// [1, 10000] (1024 shares, one CPU, give 39).
pub fn cpu_weight(shares: u64) -> u64 {
    let s = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((s - MIN_SHARES) * 9999) / (MAX_SHARES - MIN_SHARES)
}

/// cpu.max for a cpu limit: `<quota> <period>`, the quota at least 1 ms as the kubelet does;
/// `max <period>` without a limit.
pub fn cpu_max(limit_milli: Option<u64>) -> String {
    match limit_milli {
        Some(m) => format!(
            "{} {CPU_PERIOD_US}",
            (m.saturating_mul(CPU_PERIOD_US) / 1000).clamp(1000, MAX_QUOTA_US)
        ),
        None => format!("max {CPU_PERIOD_US}"),
    }
}

/// A count as cgroup files take it (`max` for none).
pub fn or_max(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "max".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Container {
        let m = |v: &[(&str, &str)]| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|(k, q)| {
                        (
                            k.to_string(),
                            k8s_openapi::apimachinery::pkg::api::resource::Quantity(q.to_string()),
                        )
                    })
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: m(req),
                limits: m(lim),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let e = container(&ctr(&[], &[("cpu", "12x")]), "spec.containers[1]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.containers[1].resources.limits.cpu"), "{e}");
        assert!(e.contains("\"12x\""), "{e}");
        let e = container(&ctr(&[("memory", "-5Mi")], &[]), "spec.containers[0]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.containers[0].resources.requests.memory") && e.contains("\"-5Mi\""),
            "{e}"
        );
        let e = container(&ctr(&[("cpu", "2")], &[("cpu", "1")]), "spec.containers[0]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resources.requests.cpu: invalid value \"2\": must be less than or equal to the cpu limit \"1\""), "{e}");
        let (_, w) = container(
            &ctr(&[("ephemeral-storage", "1Gi")], &[]),
            "spec.containers[0]",
        )
        .unwrap();
        assert!(w[0].contains("ephemeral-storage is not enforced"), "{w:?}");
    }

    #[test]
    fn defaulting_and_qos_classes() {
        let (g, _) = container(&ctr(&[], &[("cpu", "500m"), ("memory", "64Mi")]), "c").unwrap();
        assert_eq!(
            g.cpu_request_milli,
            Some(500),
            "a limit defaults the request"
        );
        assert_eq!(qos(std::slice::from_ref(&g)), QosClass::Guaranteed);
        let (b, _) = container(&ctr(&[("cpu", "100m")], &[]), "c").unwrap();
        assert_eq!(qos(&[g.clone(), b.clone()]), QosClass::Burstable);
        let (b2, _) = container(
            &ctr(
                &[("cpu", "100m"), ("memory", "1Mi")],
                &[("cpu", "200m"), ("memory", "1Mi")],
            ),
            "c",
        )
        .unwrap();
        assert_eq!(qos(&[b2]), QosClass::Burstable, "requests below limits");
        let (e, _) = container(&ctr(&[("ephemeral-storage", "1Gi")], &[]), "c").unwrap();
        assert_eq!(
            qos(&[e.clone(), ContainerResources::default()]),
            QosClass::BestEffort
        );
        let t = pod_total(&[], &[g.clone(), b]);
        assert_eq!(t.cpu_request_milli, Some(600));
        assert_eq!(t.cpu_limit_milli, None, "one container has no cpu limit");
        assert_eq!(t.memory_limit, None);
        let t = pod_total(&[], &[g.clone(), g.clone()]);
        assert_eq!(
            (t.cpu_limit_milli, t.memory_limit),
            (Some(1000), Some(128 << 20))
        );
        let (big_init, _) = container(&ctr(&[], &[("cpu", "2"), ("memory", "1Gi")]), "c").unwrap();
        let t = pod_total(&[big_init], &[g]);
        assert_eq!(
            (t.cpu_limit_milli, t.memory_limit),
            (Some(2000), Some(1 << 30)),
            "the larger init container counts"
        );
    }

    #[test]
    fn zero_means_none_and_huge_values_saturate() {
        let (z, _) = container(&ctr(&[("cpu", "0")], &[("memory", "0")]), "c").unwrap();
        assert_eq!(z, ContainerResources::default());
        assert_eq!(
            qos(&[z]),
            QosClass::BestEffort,
            "zero requests are no requests"
        );
        let (big, _) = container(&ctr(&[], &[("cpu", "2e11"), ("memory", "7Ei")]), "c").unwrap();
        let t = pod_total(&[], &[big.clone(), big.clone(), big.clone()]);
        assert_eq!(t.memory_limit, Some(u64::MAX));
        assert_eq!(cpu_shares(big.cpu_request_milli), 262_144);
        assert_eq!(
            cpu_max(t.cpu_limit_milli),
            format!("{} 100000", (1u64 << 44) - 1)
        );
        let e = container(
            &ctr(&[("hugepages-2Mi", "2Mi")], &[("hugepages-2Mi", "4Mi")]),
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("invalid value 2097152") && e.contains("(4194304)"),
            "{e}"
        );
    }

    #[test]
    fn cgroup_values_as_the_kubelet_writes_them() {
        assert_eq!(cpu_shares(None), 2);
        assert_eq!(cpu_shares(Some(1000)), 1024);
        assert_eq!(cpu_shares(Some(500)), 512);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(512), 20);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_max(Some(200)), "20000 100000");
        assert_eq!(cpu_max(Some(1)), "1000 100000", "at least 1 ms");
        assert_eq!(cpu_max(None), "max 100000");
        assert_eq!(hugetlb_size("hugepages-2Mi").as_deref(), Some("2MB"));
        assert_eq!(hugetlb_size("hugepages-1Gi").as_deref(), Some("1GB"));
    }
}
