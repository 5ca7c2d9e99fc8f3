//! Masquerading for pod traffic that leaves the cluster, in knode's own nftables table
//! (`ip knode`): pods keep their addresses for pod-to-pod traffic (also across nodes, which is
//! why the test is "not in the cluster CIDR" rather than "not in this node's subnet"). One
//! atomic `nft -f` transaction, idempotent; no other table is touched.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

/// Ensures the rule for `pods` (this node's pod subnet) leaving `cluster`.
pub fn ensure(pods: &Ipv4Net, cluster: &Ipv4Net) -> Result<(), String> {
    let script = format!(
        "add table ip knode\n\
         add chain ip knode postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain ip knode postrouting\n\
         add rule ip knode postrouting ip saddr {pods} ip daddr != {cluster} masquerade fully-random\n"
    );
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
        return Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The cluster CIDR: configured, or the pod subnet widened to a /16 (10.244.0.0/24 gives
/// 10.244.0.0/16, Kubernetes' usual layout of per-node /24s in a cluster /16).
pub fn cluster_cidr(pods: &Ipv4Net, configured: Option<&str>) -> Result<Ipv4Net, String> {
    match configured {
        Some(c) => c.parse().map_err(|e| format!("clusterCIDR {c:?}: {e}")),
        None => Ok(Ipv4Net::new(pods.network(), pods.prefix_len().min(16))
            .map_err(|e| e.to_string())?
            .trunc()),
    }
}
