//! `knode describe pod|node NAME`.

use std::path::Path;

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Pod;

use super::local::node;
use super::print::{age, table};
use crate::node::kubelet::api;

pub fn describe_pod(sock: &Path, namespace: &str, name: &str) -> Result<()> {
    let (code, body) = api::get(sock, &format!("/pods/{namespace}/{name}"))?;
    if code == 404 {
        bail!("pods {name:?} not found");
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let p: Pod = serde_json::from_value(v["pod"].clone())?;
    let st = p.status.clone().unwrap_or_default();
    let spec = p.spec.clone().unwrap_or_default();
    println!(
        "Name:         {}",
        p.metadata.name.clone().unwrap_or_default()
    );
    println!(
        "Namespace:    {}",
        p.metadata.namespace.clone().unwrap_or_default()
    );
    println!(
        "Node:         {}",
        spec.node_name.clone().unwrap_or_default()
    );
    println!(
        "Start Time:   {}",
        st.start_time
            .as_ref()
            .map(crate::api::time::rfc2822)
            .unwrap_or_else(|| "<unset>".into())
    );
    println!(
        "UID:          {}",
        p.metadata.uid.clone().unwrap_or_default()
    );
    println!("Status:       {}", st.phase.clone().unwrap_or_default());
    if let Some(r) = &st.reason {
        println!("Reason:       {r}");
    }
    if let Some(m) = &st.message {
        println!("Message:      {m}");
    }
    println!(
        "Restart Policy: {}",
        spec.restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into())
    );
    let show = |title: &str,
                specs: &[k8s_openapi::api::core::v1::Container],
                statuses: &[k8s_openapi::api::core::v1::ContainerStatus]| {
        if specs.is_empty() {
            return;
        }
        println!("{title}:");
        for c in specs {
            println!("  {}:", c.name);
            println!(
                "    Image:          {}",
                c.image.clone().unwrap_or_default()
            );
            if let Some(cmd) = &c.command {
                println!("    Command:        {}", cmd.join(" "));
            }
            if let Some(a) = &c.args {
                println!("    Args:           {}", a.join(" "));
            }
            if let Some(s) = statuses.iter().find(|s| s.name == c.name) {
                let state = |st: &k8s_openapi::api::core::v1::ContainerState| -> String {
                    if let Some(w) = &st.waiting {
                        format!(
                            "Waiting\n      Reason:       {}{}",
                            w.reason.clone().unwrap_or_default(),
                            w.message
                                .as_ref()
                                .map(|m| format!("\n      Message:      {m}"))
                                .unwrap_or_default()
                        )
                    } else if let Some(r) = &st.running {
                        format!(
                            "Running\n      Started:      {}",
                            r.started_at
                                .as_ref()
                                .map(crate::api::time::rfc2822)
                                .unwrap_or_default()
                        )
                    } else if let Some(t) = &st.terminated {
                        format!("Terminated\n      Reason:       {}\n      Exit Code:    {}\n      Finished:     {}", t.reason.clone().unwrap_or_default(), t.exit_code, t.finished_at.as_ref().map(crate::api::time::rfc2822).unwrap_or_default())
                    } else {
                        "Unknown".into()
                    }
                };
                println!(
                    "    State:          {}",
                    state(&s.state.clone().unwrap_or_default())
                );
                if let Some(l) = &s.last_state {
                    println!("    Last State:     {}", state(l));
                }
                println!("    Ready:          {}", s.ready);
                println!("    Restart Count:  {}", s.restart_count);
            }
        }
    };
    show(
        "Init Containers",
        spec.init_containers.as_deref().unwrap_or(&[]),
        st.init_container_statuses.as_deref().unwrap_or(&[]),
    );
    show(
        "Containers",
        &spec.containers,
        st.container_statuses.as_deref().unwrap_or(&[]),
    );
    if let Some(w) = v["warnings"].as_array().filter(|w| !w.is_empty()) {
        println!("Warnings:");
        for x in w {
            println!("  {}", x.as_str().unwrap_or_default());
        }
    }
    println!("Events:");
    let events = v["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        println!("  <none>");
    } else {
        let mut rows = vec![vec![
            "  Type".to_string(),
            "Reason".into(),
            "Age".into(),
            "Message".into(),
        ]];
        for e in events {
            let t: Option<chrono::DateTime<chrono::Utc>> =
                serde_json::from_value(e["time"].clone()).ok();
            rows.push(vec![
                format!("  {}", e["kind"].as_str().unwrap_or_default()),
                e["reason"].as_str().unwrap_or_default().into(),
                age(t.map(crate::api::time::time).as_ref()),
                e["message"].as_str().unwrap_or_default().into(),
            ]);
        }
        table(&rows);
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
        println!("CreationTimestamp:  {}", crate::api::time::rfc2822(t));
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
