//! A pod's `/etc/resolv.conf`, as the kubelet writes it (kubernetes/kubernetes
//! `pkg/kubelet/network/dns/dns.go`): from its `dnsPolicy`, its `dnsConfig`, the cluster's DNS
//! (when the node has one) and the node's own resolv.conf. No I/O.

use k8s_openapi::api::core::v1::PodSpec;

/// The cluster's DNS, as a node knows it (the kubelet's `--cluster-dns`, `--cluster-domain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDns {
    pub nameserver: std::net::IpAddr,
    /// `cluster.local`
    pub domain: String,
}

/// The kubelet's limits: 3 nameservers (glibc reads no more), 32 search domains of 2048
/// characters in all.
pub const MAX_NAMESERVERS: usize = 3;
pub const MAX_SEARCHES: usize = 32;
pub const MAX_SEARCH_CHARS: usize = 2048;

/// The nameservers, search domains and options of a resolv.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolv {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

impl Resolv {
    /// Reads a resolv.conf (`nameserver`, `search` or `domain`, `options`; the last `search`
    /// wins, as for the resolver).
    pub fn parse(text: &str) -> Resolv {
        let mut r = Resolv::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match w.next() {
                Some("nameserver") => r.nameservers.extend(w.next().map(str::to_string)),
                Some("search" | "domain") => r.searches = w.map(str::to_string).collect(),
                Some("options") => r.options.extend(w.map(str::to_string)),
                _ => {}
            }
        }
        r
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn option_name(o: &str) -> &str {
    o.split(':').next().unwrap_or(o)
}

/// The resolv.conf of a pod in `namespace` with `spec`, on a node whose own file says
/// `host` and whose cluster DNS is `cluster` (None: the node has none, and ClusterFirst
/// falls back to the node's, as the kubelet does).
pub fn pod_resolv(
    spec: &PodSpec,
    namespace: &str,
    cluster: Option<&ClusterDns>,
    host: &Resolv,
) -> Resolv {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut r = match (policy, cluster_first, cluster) {
        ("None", ..) => Resolv::default(),
        (_, true, Some(c)) => {
            let d = c.domain.trim_end_matches('.');
            let mut searches = vec![
                format!("{namespace}.svc.{d}"),
                format!("svc.{d}"),
                d.to_string(),
            ];
            searches.extend(host.searches.iter().cloned());
            Resolv {
                nameservers: vec![c.nameserver.to_string()],
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        _ => host.clone(),
    };
    if let Some(cfg) = &spec.dns_config {
        r.nameservers
            .extend(cfg.nameservers.iter().flatten().cloned());
        r.searches.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = o.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let opt = match o.value.as_deref() {
                Some(v) if !v.is_empty() => format!("{name}:{v}"),
                _ => name.to_string(),
            };
            // A pod's option replaces the one of the same name.
            r.options.retain(|x| option_name(x) != name);
            r.options.push(opt);
        }
    }
    let mut seen = std::collections::HashSet::new();
    r.nameservers.retain(|n| seen.insert(n.clone()));
    r.nameservers.truncate(MAX_NAMESERVERS);
    let mut seen = std::collections::HashSet::new();
    r.searches
        .retain(|s| seen.insert(s.trim_end_matches('.').to_ascii_lowercase()));
    r.searches.truncate(MAX_SEARCHES);
    while r.searches.join(" ").len() > MAX_SEARCH_CHARS {
        r.searches.pop();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(y: &str) -> PodSpec {
        serde_yaml::from_str(y).unwrap()
    }

    fn cluster() -> ClusterDns {
        ClusterDns {
            nameserver: "10.96.0.10".parse().unwrap(),
            domain: "cluster.local".into(),
        }
    }

    fn host() -> Resolv {
        Resolv::parse("# the node's\nnameserver 10.0.2.3\nsearch lab.example\noptions edns0\n")
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_with_the_namespace_searched_first() {
        let r = pod_resolv(&spec("containers: []"), "shop", Some(&cluster()), &host());
        assert_eq!(
            r.render(),
            "search shop.svc.cluster.local svc.cluster.local cluster.local lab.example\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        // hostNetwork: the node's own, unless ClusterFirstWithHostNet.
        let r = pod_resolv(
            &spec("containers: []\nhostNetwork: true"),
            "shop",
            Some(&cluster()),
            &host(),
        );
        assert_eq!(r, host());
        let r = pod_resolv(
            &spec("containers: []\nhostNetwork: true\ndnsPolicy: ClusterFirstWithHostNet"),
            "shop",
            Some(&cluster()),
            &host(),
        );
        assert_eq!(r.nameservers, ["10.96.0.10"]);
        // No cluster DNS on the node: ClusterFirst falls back to the node's.
        assert_eq!(
            pod_resolv(&spec("containers: []"), "shop", None, &host()),
            host()
        );
        let r = pod_resolv(
            &spec("containers: []\ndnsPolicy: Default"),
            "shop",
            Some(&cluster()),
            &host(),
        );
        assert_eq!(r, host());
    }

    #[test]
    fn dns_config_adds_to_the_policy_and_none_takes_only_it() {
        let s = spec(
            "containers: []
dnsPolicy: None
dnsConfig:
  nameservers: [1.1.1.1, 1.1.1.1, 8.8.8.8]
  searches: [a.example, A.example., b.example]
  options: [{name: ndots, value: '2'}, {name: edns0}, {name: ''}]",
        );
        let r = pod_resolv(&s, "shop", Some(&cluster()), &host());
        assert_eq!(
            r.render(),
            "search a.example b.example\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:2 edns0\n"
        );
        // With ClusterFirst: appended, an option of the same name replaced, 3 nameservers.
        let s = spec(
            "containers: []
dnsConfig:
  nameservers: [1.1.1.1, 8.8.8.8, 9.9.9.9]
  options: [{name: ndots, value: '1'}]",
        );
        let r = pod_resolv(&s, "shop", Some(&cluster()), &host());
        assert_eq!(r.nameservers, ["10.96.0.10", "1.1.1.1", "8.8.8.8"]);
        assert_eq!(r.options, ["ndots:1"]);
    }
}
