//! `knode explain pod/NAME`: the kernel objects behind a pod on this node, for learners. A
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

/// `knode explain pod/NAME -n NS`, printed.
pub fn explain(sock: &Path, root: &Path, what: &str, namespace: &str) -> Result<()> {
    let name = match what.split_once('/') {
        Some(("pod" | "pods" | "po", n)) if !n.is_empty() => n,
        _ => bail!("knode explain takes pod/NAME (for example pod/web), not {what:?}"),
    };
    print!("{}", pod(sock, root, namespace, name)?);
    Ok(())
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
