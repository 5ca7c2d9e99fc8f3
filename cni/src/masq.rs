//! knode's own nftables table (`ip knode`) for the pod network, one atomic `nft -f`
//! transaction, idempotent; no other table is touched:
//! - masquerading for pod traffic that leaves the cluster: pods keep their addresses for
//!   pod-to-pod traffic (also across nodes, which is why the test is "not in the cluster CIDR"
//!   rather than "not in this node's subnet");
//! - where the kernel has no `br_netfilter`, the equivalent for Services: traffic from a pod
//!   that was DNATed back onto the bridge is masqueraded to the gateway, so the endpoint's
//!   replies come back through the node and are un-NATed (with `br_netfilter`, bridged
//!   replies pass conntrack and pods keep their source addresses).

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use ipnet::Ipv4Net;

/// Applying knode's masquerade table failed (`nft`'s own words), or a cluster CIDR is
/// not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MasqError(pub String);

impl From<String> for MasqError {
    fn from(s: String) -> MasqError {
        MasqError(s)
    }
}

impl From<&str> for MasqError {
    fn from(s: &str) -> MasqError {
        MasqError(s.to_string())
    }
}

/// What the table must hold for one pod network (one base chain per bridge, so networks on
/// one node do not overwrite each other).
pub struct Rules<'a> {
    /// The network's bridge.
    pub bridge: &'a str,
    /// This node's pod subnet.
    pub pods: Ipv4Net,
    /// Masquerade traffic from `pods` to outside this cluster CIDR.
    pub masquerade_outside: Option<Ipv4Net>,
    /// Masquerade DNATed pod traffic going back out of the bridge (no `br_netfilter`).
    pub service_fallback: bool,
}

impl Rules<'_> {
    fn script(&self) -> String {
        let (br, pods) = (self.bridge, self.pods);
        let mut s = format!(
            "add table ip knode\n\
             add chain ip knode pods-{br} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             flush chain ip knode pods-{br}\n",
        );
        if let Some(cluster) = self.masquerade_outside {
            s += &format!("add rule ip knode pods-{br} ip saddr {pods} ip daddr != {cluster} masquerade fully-random\n");
        }
        if self.service_fallback {
            s += &format!("add rule ip knode pods-{br} ip saddr {pods} oifname \"{br}\" ct status dnat masquerade\n");
        }
        s
    }
}

/// Ensures the rules. A process applies a given rule set once (the agent runs knode's plugin
/// in-process for every pod; the table is rebuilt whole when it does run).
pub fn ensure(rules: &Rules) -> Result<(), MasqError> {
    static APPLIED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let script = rules.script();
    let mut applied = APPLIED.lock().map_err(|e| e.to_string())?;
    if applied.get_or_insert_with(HashSet::new).contains(&script) {
        return Ok(());
    }
    apply(&script)?;
    applied.get_or_insert_with(HashSet::new).insert(script);
    Ok(())
}

fn apply(script: &str) -> Result<(), MasqError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft (install nftables): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("nft stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(MasqError(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The cluster CIDR: configured, or the pod subnet widened to a /16 (10.244.0.0/24 gives
/// 10.244.0.0/16, Kubernetes' usual layout of per-node /24s in a cluster /16).
pub fn cluster_cidr(pods: &Ipv4Net, configured: Option<&str>) -> Result<Ipv4Net, MasqError> {
    match configured {
        Some(c) => c
            .parse()
            .map_err(|e| MasqError(format!("clusterCIDR {c:?}: {e}"))),
        None => Ok(Ipv4Net::new(pods.network(), pods.prefix_len().min(16))
            .map_err(|e| e.to_string())?
            .trunc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_cover_what_is_asked() {
        let pods: Ipv4Net = "10.244.0.0/24".parse().unwrap();
        let both = Rules {
            bridge: "knode0",
            pods,
            masquerade_outside: Some("10.244.0.0/16".parse().unwrap()),
            service_fallback: true,
        }
        .script();
        assert!(both.contains("add chain ip knode pods-knode0"), "{both}");
        assert!(
            both.contains("ip daddr != 10.244.0.0/16 masquerade"),
            "{both}"
        );
        assert!(
            both.contains("oifname \"knode0\" ct status dnat masquerade"),
            "{both}"
        );
        let none = Rules {
            bridge: "knode0",
            pods,
            masquerade_outside: None,
            service_fallback: false,
        }
        .script();
        assert!(!none.contains("masquerade"), "{none}");
    }
}
