//! ClusterIP and NodePort allocation for Services, kept in the store beside the Services:
//! one key per address or port taken (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`), created in the same transaction as the
//! Service (on the condition that the key does not exist yet) and deleted with it. Two
//! servers racing for one address cannot both win, and nothing leaks when a write fails.
//!
//! The search follows knode's rules (node `proxy::alloc`): a start derived from the
//! Service's name, probing on; the CIDR's first address is the `kubernetes` Service's.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::status::{ApiError, ApiResult};
use crate::api::service::NODE_PORTS;
use crate::api::validation as v;
use crate::store::{Compare, KeyRange, Op, RangeRequest, Store, Target};

const IPS: &str = "/registry/ranges/serviceips/";
const PORTS: &str = "/registry/ranges/servicenodeports/";

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x01000193)
    })
}

async fn taken(store: &dyn Store, prefix: &str) -> ApiResult<BTreeSet<String>> {
    let r = store
        .range(RangeRequest {
            range: KeyRange::prefix(prefix.as_bytes().to_vec()),
            ..Default::default()
        })
        .await?;
    Ok(r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
        .collect())
}

fn create_if_absent(key: String, owner: &str) -> (Compare, Op) {
    (
        Compare {
            key: key.clone().into_bytes(),
            op: crate::store::CmpOp::Equal,
            target: Target::CreateRevision(0),
        },
        Op::put(key, owner.as_bytes().to_vec()),
    )
}

/// What a Service holds: its cluster IP and node ports.
pub fn held(svc: &Value) -> (Option<String>, Vec<u16>) {
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .map(str::to_string);
    let ports = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    (ip, ports)
}

/// The deletes that release what `svc` holds.
pub fn release(svc: &Value) -> Vec<Op> {
    let (ip, ports) = held(svc);
    ip.map(|ip| format!("{IPS}{ip}"))
        .into_iter()
        .chain(ports.iter().map(|p| format!("{PORTS}{p}")))
        .map(|k| Op::Delete(KeyRange::key(k.into_bytes())))
        .collect()
}

/// Fills in the Service's cluster IP and node ports and returns the store writes that take
/// them (and release what `old` held and `svc` no longer does).
pub async fn assign(
    store: &dyn Store,
    cidr: Ipv4Net,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<(Vec<Compare>, Vec<Op>), Vec<v::FieldError>> {
    let owner = format!(
        "{}/{}",
        svc["metadata"]["namespace"].as_str().unwrap_or(""),
        svc["metadata"]["name"].as_str().unwrap_or("")
    );
    let internal = |e: ApiError| vec![v::invalid("spec", "", e.message)];
    let (old_ip, old_ports) = old.map(held).unwrap_or_default();
    let (mut cmps, mut ops) = (Vec::new(), Vec::new());
    let ty = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    let mut errs = Vec::new();

    // The cluster IP.
    let want = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    let ip: Option<String> = if ty == "ExternalName" {
        None
    } else if want == "None" {
        Some("None".into())
    } else if old_ip.is_some() && (want.is_empty() || Some(&want) == old_ip.as_ref()) {
        old_ip.clone()
    } else {
        let used = taken(store, IPS).await.map_err(internal)?;
        let (first, last) = (
            u32::from(cidr.network()) + 1,
            u32::from(cidr.broadcast()) - 1,
        );
        if !want.is_empty() {
            match want.parse::<Ipv4Addr>() {
                Ok(ip) if (first..=last).contains(&u32::from(ip)) => {
                    if used.contains(&want) {
                        errs.push(v::invalid(
                            "spec.clusterIPs",
                            want.as_str(),
                            "failed to allocate IP: provided IP is already allocated",
                        ));
                    }
                    Some(want.clone())
                }
                _ => {
                    errs.push(v::invalid(
                        "spec.clusterIPs",
                        want.as_str(),
                        format!("failed to allocate IP {want}: the provided IP ({want}) is not in the valid range. The range of valid IPs is {cidr}"),
                    ));
                    None
                }
            }
        } else {
            let size = last.saturating_sub(first).max(1);
            let start = fnv(&owner) % size;
            let found = (0..size)
                .map(|i| Ipv4Addr::from(first + 1 + (start + i) % size).to_string())
                .find(|ip| !used.contains(ip));
            match found {
                Some(ip) => Some(ip),
                None => {
                    errs.push(v::invalid(
                        "spec.clusterIPs",
                        "",
                        format!("failed to allocate a serviceIP: range is full ({cidr})"),
                    ));
                    None
                }
            }
        }
    };
    if let Some(ip) = &ip {
        svc["spec"]["clusterIP"] = json!(ip);
        svc["spec"]["clusterIPs"] = json!([ip]);
        if ip != "None" && old_ip.as_ref() != Some(ip) {
            let (c, o) = create_if_absent(format!("{IPS}{ip}"), &owner);
            cmps.push(c);
            ops.push(o);
        }
    }
    if let Some(o) = &old_ip {
        if ip.as_ref() != Some(o) {
            ops.push(Op::Delete(KeyRange::key(format!("{IPS}{o}").into_bytes())));
        }
    }

    // Node ports.
    let node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let mut mine: Vec<u16> = Vec::new();
    if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
        let used = if node_ports {
            taken(store, PORTS).await.map_err(internal)?
        } else {
            BTreeSet::new()
        };
        let span = (NODE_PORTS.end() - NODE_PORTS.start() + 1) as u32;
        for (i, p) in ports.iter_mut().enumerate() {
            if !node_ports {
                if p.get("nodePort").is_some_and(|n| !n.is_null()) {
                    errs.push(v::forbidden(
                        &format!("spec.ports[{i}].nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                }
                continue;
            }
            let requested = p["nodePort"].as_u64().filter(|n| *n > 0);
            let np = match requested {
                Some(n) => {
                    let n16 = u16::try_from(n).unwrap_or(0);
                    if !NODE_PORTS.contains(&n16) {
                        errs.push(v::invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            n as i64,
                            format!("provided port is not in the valid range. The range of valid ports is {}-{}", NODE_PORTS.start(), NODE_PORTS.end()),
                        ));
                        continue;
                    }
                    if (used.contains(&n.to_string()) && !old_ports.contains(&n16))
                        || mine.contains(&n16)
                    {
                        errs.push(v::invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            n as i64,
                            "provided port is already allocated",
                        ));
                        continue;
                    }
                    n16
                }
                None => {
                    let start = fnv(&format!("{owner}/{i}")) % span;
                    match (0..span)
                        .map(|k| NODE_PORTS.start() + ((start + k) % span) as u16)
                        .find(|n| !used.contains(&n.to_string()) && !mine.contains(n))
                    {
                        Some(n) => n,
                        None => {
                            errs.push(v::invalid(
                                &format!("spec.ports[{i}].nodePort"),
                                "",
                                "range is full",
                            ));
                            continue;
                        }
                    }
                }
            };
            p["nodePort"] = json!(np);
            mine.push(np);
        }
    }
    for n in &mine {
        if !old_ports.contains(n) {
            let (c, o) = create_if_absent(format!("{PORTS}{n}"), &owner);
            cmps.push(c);
            ops.push(o);
        }
    }
    for n in &old_ports {
        if !mine.contains(n) {
            ops.push(Op::Delete(KeyRange::key(
                format!("{PORTS}{n}").into_bytes(),
            )));
        }
    }
    if errs.is_empty() {
        Ok((cmps, ops))
    } else {
        Err(errs)
    }
}
