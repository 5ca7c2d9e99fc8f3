//! `knode explain pod/NAME`: the kernel objects behind a pod on this node, for learners.
//! `knode explain svc/NAME`: the nftables path a connection to a service takes on this node
//! (map element, service chain, endpoint pick, DNAT), with the live counters. A
//! pod is not a thing the kernel knows: it is namespaces its containers share, a veth pair
//! with one end on the node's bridge, a cgroup with limits, an overlay of image layers per
//! container, and processes. This view names each one where a learner can look at it
//! (`/proc/PID/ns`, `ip link`, `/sys/fs/cgroup/...`, `/proc/PID/mountinfo`, `ps`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::node::kubelet::api;
use crate::node::proxy::nft::DEFAULT_TABLE;

/// `knode explain pod/NAME -n NS`, printed.
pub fn explain(sock: &Path, root: &Path, what: &str, namespace: &str) -> Result<()> {
    match what.split_once('/') {
        Some(("pod" | "pods" | "po", n)) if !n.is_empty() => {
            print!("{}", pod(sock, root, namespace, n)?)
        }
        Some(("service" | "services" | "svc", n)) if !n.is_empty() => {
            print!("{}", service(namespace, n)?)
        }
        _ => bail!("knode explain takes pod/NAME or svc/NAME (for example pod/web), not {what:?}"),
    }
    Ok(())
}

/// `nft ARGS` (nftables' own tool, for a learner to run again), its output.
fn nft(args: &[&str]) -> Result<String> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .context("running nft (install nftables)")?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The elements of map `map` of the proxy's table, as `nft -j` gives them (key, value).
fn map_elements(map: &str) -> Result<Vec<(Value, Value)>> {
    let text = nft(&["-j", "list", "map", "ip", DEFAULT_TABLE, map])?;
    let v: Value = serde_json::from_str(&text).context("nft -j output")?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["map"]["elem"].as_array())
        .flatten()
        .filter_map(|e| Some((e.get(0)?.clone(), e.get(1)?.clone())))
        .collect())
}

/// A key or value of a map as nft writes it: `10.96.0.1 . tcp . 443`.
fn nft_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if o.contains_key("concat") => o["concat"]
            .as_array()
            .into_iter()
            .flatten()
            .map(nft_value)
            .collect::<Vec<_>>()
            .join(" . "),
        Value::Object(o) if o.contains_key("goto") => {
            format!("goto {}", o["goto"]["target"].as_str().unwrap_or("?"))
        }
        other => other.to_string(),
    }
}

/// The rules of chain `chain` of the proxy's table, as `nft list chain` prints them.
fn chain_rules(chain: &str) -> Result<Vec<String>> {
    let text = nft(&["list", "chain", "ip", DEFAULT_TABLE, chain])?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("table ") && !l.starts_with("chain ") && *l != "}"
        })
        .map(str::to_string)
        .collect())
}

/// The elements of a verdict map that go to a chain whose name contains `needle`: each
/// key as nft writes it, and the chain.
fn gotos_to(elements: &[(Value, Value)], needle: &str) -> Vec<(String, String)> {
    elements
        .iter()
        .filter_map(|(k, v)| {
            let target = v["goto"]["target"].as_str()?;
            target
                .contains(needle)
                .then(|| (nft_value(k), target.to_string()))
        })
        .collect()
}

/// The `counter packets N bytes M` of a rule, if it has one.
fn counter(rule: &str) -> Option<(u64, u64)> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let i = words.windows(2).position(|w| w == ["counter", "packets"])?;
    Some((
        words.get(i + 2)?.parse().ok()?,
        words.get(i + 4)?.parse().ok()?,
    ))
}

/// `knode explain svc/NAME`: the path the first packet of a connection to the service takes
/// through this node's nftables (the proxy's table), with the DNAT rules' live counters.
fn service(ns: &str, name: &str) -> Result<String> {
    let table = DEFAULT_TABLE;
    let ips = map_elements("service-ips").map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n(no table ip {table} in this network namespace: run knode explain where the node runs)"
        )
    })?;
    // Chains are named service-<hash>-<ns>/<name>/<proto>/<port name>.
    let needle = format!("-{ns}/{name}/");
    let ports = gotos_to(&ips, &needle);
    let mut out = String::new();
    writeln!(
        out,
        "Service {ns}/{name} in this node's nftables (nft list table ip {table}):"
    )?;
    if ports.is_empty() {
        writeln!(
            out,
            "\nNo element of map service-ips goes to it: no such service, no ClusterIP (headless),
or no ready endpoint (then its ClusterIP's element is in map no-endpoint-services, which
rejects the connection)."
        )?;
        return Ok(out);
    }
    writeln!(
        out,
        "\nThe first packet of a new connection enters chain nat-prerouting (from a pod or
another host) or nat-output (from this node), which jump to chain services; there the
destination address, protocol and port are looked up in map service-ips:"
    )?;
    for (key, chain) in &ports {
        writeln!(out, "  {key} : goto {chain}")?;
    }
    let node_ports = gotos_to(&map_elements("service-nodeports")?, &needle);
    if !node_ports.is_empty() {
        writeln!(
            out,
            "A packet to one of this node's own addresses is looked up by protocol and port
in map service-nodeports (its chain marks it for masquerade, then goes to the service
chain):"
        )?;
        for (key, chain) in &node_ports {
            writeln!(out, "  {key} : goto {chain}")?;
        }
    }
    let mut total = (0, 0);
    for (key, chain) in &ports {
        writeln!(out, "\nChain {chain} (port {key}):")?;
        let rules = chain_rules(chain)?;
        for rule in &rules {
            writeln!(out, "  {rule}")?;
            if let Some((p, b)) = counter(rule) {
                total = (total.0 + p, total.1 + b);
            }
            // `... numgen random mod N offset K map @endpoint-picks-...`: keys K..K+N.
            let words: Vec<&str> = rule.split_whitespace().collect();
            let after = |w: &str| {
                words
                    .iter()
                    .position(|x| *x == w)
                    .and_then(|i| words.get(i + 1))
            };
            if let (Some(n), Some(offset), Some(map)) = (
                after("mod").and_then(|n| n.parse::<u64>().ok()),
                after("offset").and_then(|o| o.parse::<u64>().ok()),
                after("map").map(|m| m.trim_start_matches('@')),
            ) {
                writeln!(
                    out,
                    "  -> a random key from {offset} to {} in map {map}, whose value is the endpoint:",
                    offset + n - 1
                )?;
                for (k, v) in map_elements(map)? {
                    if k.as_u64()
                        .is_some_and(|k| (offset..offset + n).contains(&k))
                    {
                        writeln!(out, "       {} : {}", nft_value(&k), nft_value(&v))?;
                    }
                }
            }
        }
        writeln!(
            out,
            "  The DNAT rewrites the destination to the endpoint picked; conntrack sends the rest
  of the connection, and the replies, the same way without these rules."
        )?;
    }
    writeln!(
        out,
        "\nCounters: {} new connection(s) to {ns}/{name} went through its DNAT rules
({} bytes in their first packets) since its endpoints last changed (that rewrites the
chain). Run this again after a request to see them grow.",
        total.0, total.1
    )?;
    Ok(out)
}

fn pod(sock: &Path, root: &Path, ns: &str, name: &str) -> Result<String> {
    let (code, body) = api::get(sock, &format!("/pods/{ns}/{name}"))?;
    if code == 404 {
        bail!("pod {ns}/{name} is not on this node (knode explain shows a pod where it runs)");
    }
    let v: Value = serde_json::from_slice(&body)?;
    let p = &v["pod"];
    let mut out = String::new();
    writeln!(
        out,
        "Pod {ns}/{name} (uid {}) on node {}: {}",
        p["metadata"]["uid"].as_str().unwrap_or("?"),
        p["spec"]["nodeName"].as_str().unwrap_or("?"),
        p["status"]["phase"].as_str().unwrap_or("?"),
    )?;
    let mut first_pid = None;
    let store = crate::node::images::store_at(root).ok();
    for c in p["spec"]["containers"].as_array().into_iter().flatten() {
        let cname = c["name"].as_str().unwrap_or_default();
        let (code, body) = api::get(sock, &format!("/execInfo/{ns}/{name}/{cname}"))?;
        if code != 200 {
            writeln!(
                out,
                "\nContainer {cname}: not running ({})",
                String::from_utf8_lossy(&body).trim()
            )?;
            continue;
        }
        let info: Value = serde_json::from_slice(&body)?;
        let pid = info["pid"].as_i64().context("no pid")? as i32;
        if first_pid.is_none() {
            first_pid = Some(pid);
            shared(&mut out, pid, p)?;
        }
        container(
            &mut out,
            pid,
            cname,
            c["image"].as_str().unwrap_or(""),
            store.as_ref(),
        )?;
    }
    if first_pid.is_none() {
        writeln!(
            out,
            "\nNo container runs: nothing to show in the kernel yet."
        )?;
    }
    Ok(out)
}

/// A namespace of `pid`, as `/proc/PID/ns/KIND` names it (`net:[4026532301]`).
fn ns_of(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

/// What the pod's containers share: namespaces, network, cgroup.
fn shared(out: &mut String, pid: i32, p: &Value) -> Result<()> {
    let host_net = p["spec"]["hostNetwork"] == true;
    writeln!(
        out,
        "\nNamespaces the containers share (ls -l /proc/{pid}/ns):"
    )?;
    for kind in ["net", "ipc", "uts"] {
        writeln!(out, "  {}", ns_of(pid, kind))?;
    }
    writeln!(out, "\nNetwork:")?;
    if host_net {
        writeln!(out, "  hostNetwork: the node's own network namespace")?;
    } else {
        let link = nsenter_ip(pid, &["-o", "link", "show", "eth0"]);
        let addr = nsenter_ip(pid, &["-o", "-4", "addr", "show", "eth0"]);
        let ip = addr
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or("?")
            .to_string();
        writeln!(out, "  eth0 {ip} in {}", ns_of(pid, "net"))?;
        // `eth0@if23`: the peer's index in the node's namespace.
        let peer = link
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.trim_end_matches(':').split_once("@if"))
            .map(|(_, i)| i.to_string());
        match peer.and_then(|i| host_link(&i)) {
            Some((veth, master)) => writeln!(
                out,
                "  its veth peer on the node: {veth}{} (ip link show {veth})",
                master
                    .map(|m| format!(", a port of bridge {m}"))
                    .unwrap_or_default()
            )?,
            None => writeln!(out, "  its veth peer on the node: not found")?,
        }
        let route = nsenter_ip(pid, &["route", "show", "default"]);
        if let Some(gw) = route.split_whitespace().skip_while(|w| *w != "via").nth(1) {
            writeln!(out, "  default route via {gw} (the bridge's address)")?;
        }
    }
    writeln!(out, "\nCgroup (cat /proc/{pid}/cgroup):")?;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let path = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("?")
        .to_string();
    if path == "/" || path == "?" {
        writeln!(
            out,
            "  {path}: no cgroup of its own (limits are off on this node: no cgroup v2 controllers)"
        )?;
    } else {
        let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        let pod_dir = dir.parent().unwrap_or(&dir);
        writeln!(out, "  {}", pod_dir.display())?;
        for f in ["memory.max", "cpu.max", "cpu.weight", "pids.max"] {
            if let Ok(v) = std::fs::read_to_string(pod_dir.join(f)) {
                writeln!(out, "    {f} = {}", v.trim())?;
            }
        }
    }
    Ok(())
}

/// `ip ARGS` in the network namespace of `pid`, its output ("" on failure).
fn nsenter_ip(pid: i32, args: &[&str]) -> String {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ip"])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The link with index `index` in this namespace, and its bridge.
fn host_link(index: &str) -> Option<(String, Option<String>)> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.split(':').next().map(str::trim) == Some(index))?;
    let name = line
        .split(':')
        .nth(1)?
        .trim()
        .split('@')
        .next()?
        .to_string();
    let words: Vec<&str> = line.split_whitespace().collect();
    let master = words
        .iter()
        .position(|w| *w == "master")
        .and_then(|i| words.get(i + 1))
        .map(|m| m.to_string());
    Some((name, master))
}

/// One container: its root filesystem, its mounts, its processes.
fn container(
    out: &mut String,
    pid: i32,
    name: &str,
    image: &str,
    store: Option<&oci::image::ImageStore>,
) -> Result<()> {
    writeln!(
        out,
        "\nContainer {name} (image {image}), main process {pid}:"
    )?;
    writeln!(
        out,
        "  its own namespaces: {} {}",
        ns_of(pid, "mnt"),
        ns_of(pid, "pid")
    )?;
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let mounts: Vec<(&str, &str, &str)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let _source = r.next();
            Some((point, fstype, r.next().unwrap_or("")))
        })
        .collect();
    if let Some((_, fstype, opts)) = mounts.iter().find(|(p, _, _)| *p == "/") {
        let upper = opts
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir="))
            .unwrap_or("?");
        writeln!(out, "  root: {fstype}, writes go to {upper}")?;
    }
    if let Some(rec) = store.and_then(|s| s.get(image).ok()) {
        writeln!(
            out,
            "  read-only layers ({} from {}, bottom first):",
            rec.layers.len(),
            rec.name
        )?;
        for l in &rec.layers {
            let dir = store
                .map(|s| s.snapshots().fs_dir(&l.chain_id))
                .unwrap_or_default();
            writeln!(out, "    {}", dir.display())?;
        }
    }
    let others: Vec<String> = mounts
        .iter()
        .filter(|(p, _, _)| *p != "/")
        .map(|(p, t, _)| format!("{p} ({t})"))
        .collect();
    writeln!(
        out,
        "  other mounts ({}): {}",
        others.len(),
        others.join(", ")
    )?;
    // Its processes: every process in its PID namespace.
    let pidns = ns_of(pid, "pid");
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if ns_of(p, "pid") != pidns {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        procs.push((p, cmd));
    }
    procs.sort();
    writeln!(out, "  processes (node PIDs; ps -p ...):")?;
    for (p, cmd) in procs {
        writeln!(out, "    {p} {cmd}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_counter_and_map_values_read_as_nft_prints_them() {
        let rule = "meta l4proto tcp counter packets 10 bytes 600 dnat ip to numgen random mod 3 offset 65536 map @endpoint-picks-tcp-0";
        assert_eq!(counter(rule), Some((10, 600)));
        assert_eq!(counter("meta l4proto tcp dnat to 10.244.0.2:80"), None);
        let key = serde_json::json!({"concat": ["10.96.0.1", "tcp", 443]});
        assert_eq!(nft_value(&key), "10.96.0.1 . tcp . 443");
        let v = serde_json::json!({"goto": {"target": "service-X-default/web/tcp/"}});
        assert_eq!(nft_value(&v), "goto service-X-default/web/tcp/");
        assert_eq!(nft_value(&serde_json::json!(65536)), "65536");
    }

    #[test]
    fn only_pods_and_services_are_explained() {
        let err = explain(
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
            "deploy/web",
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("pod/NAME or svc/NAME") && err.contains("deploy/web"),
            "{err}"
        );
    }
}
