//! `knode top node|pods [--containers]`.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use super::local::{fetch, node};
use super::print::table;

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
        .and_then(|q| crate::api::quantity::parse_quantity(&q.0, 1).ok())
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
