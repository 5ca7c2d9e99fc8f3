//! Reading the agent's local API (`<run-dir>/knode.sock`), as every verb does.

use std::path::Path;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::Value;

use crate::node::kubelet::api;

pub fn list(sock: &Path) -> Result<(Vec<Pod>, Vec<String>)> {
    let (_, body) = api::get(sock, "/pods")?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let items: Vec<Pod> = serde_json::from_value(v["items"].clone())?;
    let errors = v["manifestErrors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    Ok((items, errors))
}

pub fn services(sock: &Path) -> Result<Vec<crate::api::service::ListedService>> {
    let (code, body) = crate::node::kubelet::api::get(sock, "/services")?;
    if code != 200 {
        anyhow::bail!("agent: {}", String::from_utf8_lossy(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(serde_json::from_value(v["items"].clone())?)
}

pub fn fetch(sock: &Path, path: &str) -> Result<Value> {
    let (code, body) = api::get(sock, path)?;
    if code != 200 {
        bail!("{}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).with_context(|| format!("parsing the agent's answer to {path}"))
}

pub fn node(sock: &Path) -> Result<Node> {
    Ok(serde_json::from_value(fetch(sock, "/node")?)?)
}

pub fn condition<'a>(
    n: &'a Node,
    t: &str,
) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
}

/// The container to use when none is named: the only one, or an error listing them.
pub fn only_container(sock: &Path, namespace: &str, pod: &str) -> Result<String> {
    let (code, body) = api::get(sock, &format!("/pods/{namespace}/{pod}"))?;
    if code == 404 {
        bail!("pods {pod:?} not found");
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let p: Pod = serde_json::from_value(v["pod"].clone())?;
    let cs = p.spec.map(|s| s.containers).unwrap_or_default();
    match cs.as_slice() {
        [one] => Ok(one.name.clone()),
        _ => bail!(
            "a container name must be specified for pod {pod}, choose one of: [{}]",
            cs.iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}
