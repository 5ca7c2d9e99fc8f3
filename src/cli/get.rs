//! `knode get pods|services|endpoints|nodes`.

use std::path::Path;

use anyhow::{bail, Result};

use super::local::{condition, list, node, services};
use super::print::{age, status_column, table};

pub fn get_pods(sock: &Path, namespace: Option<&str>, output: Option<&str>) -> Result<()> {
    let (mut pods, errors) = list(sock)?;
    pods.retain(|p| namespace.is_none_or(|ns| p.metadata.namespace.as_deref() == Some(ns)));
    pods.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    match output {
        Some("json") => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods})
            )?
        ),
        Some("yaml") => print!(
            "{}",
            serde_yaml::to_string(
                &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods})
            )?
        ),
        Some("wide") | None => {
            let wide = output == Some("wide");
            let all_ns = namespace.is_none();
            let mut rows = vec![];
            let mut head = vec![];
            if all_ns {
                head.push("NAMESPACE".to_string());
            }
            head.extend(["NAME", "READY", "STATUS", "RESTARTS", "AGE"].map(String::from));
            if wide {
                head.extend(["IP", "NODE"].map(String::from));
            }
            rows.push(head);
            for p in &pods {
                let st = p.status.clone().unwrap_or_default();
                let cs = st.container_statuses.clone().unwrap_or_default();
                let mut r = vec![];
                if all_ns {
                    r.push(p.metadata.namespace.clone().unwrap_or_default());
                }
                r.push(p.metadata.name.clone().unwrap_or_default());
                r.push(format!(
                    "{}/{}",
                    cs.iter().filter(|c| c.ready).count(),
                    cs.len()
                ));
                r.push(status_column(p));
                r.push(cs.iter().map(|c| c.restart_count).sum::<i32>().to_string());
                r.push(age(p.metadata.creation_timestamp.as_ref()));
                if wide {
                    r.push(st.pod_ip.clone().unwrap_or_else(|| "<none>".into()));
                    r.push(
                        p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_else(|| "<none>".into()),
                    );
                }
                rows.push(r);
            }
            if pods.is_empty() {
                eprintln!("No resources found");
            } else {
                table(&rows);
            }
        }
        Some(o) => bail!("unknown output format {o:?}: use wide, yaml or json"),
    }
    for e in errors {
        eprintln!("warning: manifest: {e}");
    }
    Ok(())
}

/// Prints one row per service of `namespace` (all namespaces: a NAMESPACE column first).
fn service_table(
    sock: &Path,
    namespace: Option<&str>,
    header: &[&str],
    row: impl Fn(&crate::api::service::ServiceState) -> Vec<String>,
) -> Result<()> {
    let mut header = header.to_vec();
    header.push("AGE");
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    if namespace.is_none() {
        rows[0].insert(0, "NAMESPACE".into());
    }
    for listed in services(sock)? {
        let s = &listed.state;
        if namespace.is_some_and(|n| n != s.service.namespace) {
            continue;
        }
        let mut r = row(s);
        if namespace.is_none() {
            r.insert(0, s.service.namespace.clone());
        }
        let created = listed
            .created
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| crate::api::time::time(t.to_utc()));
        r.push(age(created.as_ref()));
        rows.push(r);
    }
    table(&rows);
    Ok(())
}

/// `knode get services`, with kubectl's columns.
pub fn get_services(sock: &Path, namespace: Option<&str>) -> Result<()> {
    let header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"];
    service_table(sock, namespace, &header, |s| {
        let v = &s.service;
        let kind = match v.ports.iter().any(|p| p.node_port.is_some()) {
            true => "NodePort",
            false => "ClusterIP",
        };
        let ports: Vec<String> = v
            .ports
            .iter()
            .map(|p| match p.node_port {
                Some(np) => format!("{}:{np}/{}", p.port, p.protocol.k8s()),
                None => format!("{}/{}", p.port, p.protocol.k8s()),
            })
            .collect();
        vec![
            v.name.clone(),
            kind.into(),
            v.cluster_ip.map_or("None".into(), |i| i.to_string()),
            "<none>".into(),
            match ports.is_empty() {
                true => "<none>".into(),
                false => ports.join(","),
            },
        ]
    })
}

/// `knode get endpoints`, with kubectl's columns (ready addresses; three, then "+ N more...").
pub fn get_endpoints(sock: &Path, namespace: Option<&str>) -> Result<()> {
    service_table(sock, namespace, &["NAME", "ENDPOINTS"], |s| {
        let mut eps: Vec<String> = s
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.ready)
            .map(|e| format!("{}:{}", e.ip, e.port))
            .collect();
        eps.sort();
        eps.dedup();
        let shown = match eps.len() {
            0 => "<none>".to_string(),
            n if n > 3 => format!("{} + {} more...", eps[..3].join(","), n - 3),
            _ => eps.join(","),
        };
        vec![s.service.name.clone(), shown]
    })
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
