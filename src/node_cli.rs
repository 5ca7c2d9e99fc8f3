//! `knode get nodes`, `knode describe node`, `knode top node` and `knode top pods`: the node
//! object and the usage summary of the agent's API, shown as kubectl shows them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Node;
use serde_json::Value;

use crate::kubelet::api;
use crate::pod_cli::{age, table};

fn fetch(sock: &Path, path: &str) -> Result<Value> {
    let (code, body) = api::get(sock, path)?;
    if code != 200 {
        bail!("{}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).with_context(|| format!("parsing the agent's answer to {path}"))
}

fn node(sock: &Path) -> Result<Node> {
    Ok(serde_json::from_value(fetch(sock, "/node")?)?)
}

fn condition<'a>(n: &'a Node, t: &str) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
}

pub fn get_nodes(sock: &Path, output: Option<&str>) -> Result<()> {
    let n = node(sock)?;
    match output {
        Some("json") => println!("{}", serde_json::to_string_pretty(&n)?),
        Some("yaml") => print!("{}", serde_yaml::to_string(&n)?),
        _ => {
            let ready = condition(&n, "Ready").is_some_and(|c| c.status == "True");
            let info = n
                .status
                .as_ref()
                .and_then(|s| s.node_info.clone())
                .unwrap_or_default();
            let mut head = vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"];
            let mut row = vec![
                n.metadata.name.clone().unwrap_or_default(),
                if ready { "Ready" } else { "NotReady" }.to_string(),
                "<none>".into(),
                age(n.metadata.creation_timestamp.as_ref()),
                info.kubelet_version.clone(),
            ];
            if output == Some("wide") {
                head.extend(["OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]);
                row.extend([
                    info.os_image,
                    info.kernel_version,
                    info.container_runtime_version,
                ]);
            }
            table(&[head.into_iter().map(str::to_string).collect(), row]);
        }
    }
    Ok(())
}

pub fn describe_node(sock: &Path, name: &str) -> Result<()> {
    let n = node(sock)?;
    let own = n.metadata.name.clone().unwrap_or_default();
    if name != own {
        bail!("node {name:?} not found (this agent is node {own:?})");
    }
    let st = n.status.clone().unwrap_or_default();
    println!("Name:               {own}");
    for (k, v) in n.metadata.labels.clone().unwrap_or_default() {
        println!("Labels:             {k}={v}");
    }
    if let Some(t) = &n.metadata.creation_timestamp {
        println!("CreationTimestamp:  {}", t.0.to_rfc2822());
    }
    println!("Conditions:\n  Type             Status  Reason            Message");
    for c in st.conditions.iter().flatten() {
        println!(
            "  {:<16} {:<7} {:<17} {}",
            c.type_,
            c.status,
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default()
        );
    }
    for (title, m) in [("Capacity", &st.capacity), ("Allocatable", &st.allocatable)] {
        println!("{title}:");
        for (k, v) in m.iter().flatten() {
            println!(
                "  {k}:{:<w$}{}",
                "",
                v.0,
                w = 18usize.saturating_sub(k.len())
            );
        }
    }
    if let Some(i) = &st.node_info {
        println!("System Info:");
        println!("  Kernel Version:             {}", i.kernel_version);
        println!("  OS Image:                   {}", i.os_image);
        println!("  Architecture:               {}", i.architecture);
        println!(
            "  Container Runtime Version:  {}",
            i.container_runtime_version
        );
        println!("  Kubelet Version:            {}", i.kubelet_version);
    }
    Ok(())
}

/// `250m`, as kubectl top shows cores.
fn millicores(nano: u64) -> String {
    format!("{}m", nano / 1_000_000)
}

/// `12Mi`, as kubectl top shows memory.
fn mebibytes(b: u64) -> String {
    format!("{}Mi", b >> 20)
}

fn cpu_mem(v: &Value) -> Option<(u64, u64)> {
    Some((
        v["cpu"]["usageNanoCores"].as_u64()?,
        v["memory"]["workingSetBytes"].as_u64()?,
    ))
}

pub fn top_node(sock: &Path) -> Result<()> {
    let s = fetch(sock, "/stats/summary")?;
    let n = node(sock)?;
    let Some((cpu, mem)) = cpu_mem(&s["node"]) else {
        bail!("metrics not available yet: the agent needs two samples a second apart; try again");
    };
    let alloc = n.status.and_then(|s| s.allocatable).unwrap_or_default();
    let cpus: u64 = alloc.get("cpu").and_then(|q| q.0.parse().ok()).unwrap_or(1);
    let mem_alloc = alloc
        .get("memory")
        .and_then(|q| crate::cgroup::resources::parse_quantity(&q.0, 1).ok())
        .unwrap_or(1)
        .max(1);
    table(&[
        ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]
            .map(str::to_string)
            .to_vec(),
        vec![
            n.metadata.name.unwrap_or_default(),
            millicores(cpu),
            format!("{}%", cpu / 10_000_000 / cpus.max(1)),
            mebibytes(mem),
            format!("{}%", mem * 100 / mem_alloc),
        ],
    ]);
    Ok(())
}

pub fn top_pods(sock: &Path, namespace: Option<&str>, containers: bool) -> Result<()> {
    let s = fetch(sock, "/stats/summary")?;
    if s["cgroups"] == "disabled" {
        bail!(
            "pod metrics are not available: {}",
            s["message"]
                .as_str()
                .unwrap_or("cgroups are disabled on this node")
        );
    }
    let mut rows: Vec<Vec<String>> = vec![];
    let all = namespace.is_none();
    for p in s["pods"].as_array().into_iter().flatten() {
        let ns = p["podRef"]["namespace"].as_str().unwrap_or_default();
        if namespace.is_some_and(|n| n != ns) {
            continue;
        }
        let name = p["podRef"]["name"].as_str().unwrap_or_default().to_string();
        let mut prefix = if all { vec![ns.to_string()] } else { vec![] };
        if containers {
            prefix.push(name);
            for c in p["containers"].as_array().into_iter().flatten() {
                if let Some((cpu, mem)) = cpu_mem(c) {
                    let mut r = prefix.clone();
                    r.extend([
                        c["name"].as_str().unwrap_or_default().to_string(),
                        millicores(cpu),
                        mebibytes(mem),
                    ]);
                    rows.push(r);
                }
            }
        } else if let Some((cpu, mem)) = cpu_mem(p) {
            prefix.extend([name, millicores(cpu), mebibytes(mem)]);
            rows.push(prefix);
        }
    }
    if rows.is_empty() {
        bail!("no metrics available yet: pods need to run for a second or more (a rate needs two samples)");
    }
    let mut head: Vec<String> = vec![];
    if all {
        head.push("NAMESPACE".into());
    }
    if containers {
        head.extend(["POD".into(), "NAME".into()]);
    } else {
        head.push("NAME".into());
    }
    head.extend(["CPU(cores)".into(), "MEMORY(bytes)".into()]);
    rows.insert(0, head);
    table(&rows);
    Ok(())
}
