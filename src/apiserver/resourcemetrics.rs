//! The resource metrics API (`metrics.k8s.io/v1beta1`, what metrics-server serves and
//! `kubectl top` reads): NodeMetrics and PodMetrics made on each request from the nodes'
//! `/stats/summary` (CPU as a rate over the kubelet's last sample, memory as the working
//! set), fetched from every node agent at once. Nothing is stored. A node or pod without
//! figures yet is left out, as metrics-server leaves it out; when a figure lacks its first
//! CPU rate, the summaries are read again a second later (the rate needs two samples).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::handlers::Api;
use super::request::{Query, Target};
use super::resources;
use super::status::{ApiError, ApiResult};

const API_VERSION: &str = "metrics.k8s.io/v1beta1";

fn cpu(v: &Value) -> Option<String> {
    Some(format!("{}n", v["usageNanoCores"].as_u64()?))
}

fn memory(v: &Value) -> Option<String> {
    Some(format!("{}Ki", v["workingSetBytes"].as_u64()? / 1024))
}

/// The summaries of `nodes`, by node name (a node that does not answer is left out).
async fn summaries(tls: &Arc<rustls::ClientConfig>, nodes: &[Value]) -> BTreeMap<String, Value> {
    let calls = nodes.iter().map(|n| {
        let tls = tls.clone();
        async move {
            let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
            match super::nodeproxy::kubelet_json(tls, n, "/stats/summary").await {
                Ok(s) => Some((name, s)),
                Err(e) => {
                    tracing::debug!(node = %name, error = %e.message, "resource metrics");
                    None
                }
            }
        }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn node_metrics(node: &Value, s: &Value, now: &str) -> Option<Value> {
    let n = &s["node"];
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": API_VERSION,
        "metadata": {"name": node["metadata"]["name"], "creationTimestamp": now,
            "labels": node["metadata"]["labels"]},
        "timestamp": now, "window": "1s",
        "usage": {"cpu": cpu(&n["cpu"])?, "memory": memory(&n["memory"])?},
    }))
}

fn pod_metrics(p: &Value, labels: &Value, now: &str) -> Option<Value> {
    let containers: Vec<Value> = p["containers"]
        .as_array()?
        .iter()
        .filter_map(|c| {
            Some(json!({"name": c["name"], "usage": {"cpu": cpu(&c["cpu"])?, "memory": memory(&c["memory"])?}}))
        })
        .collect();
    if containers.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "PodMetrics", "apiVersion": API_VERSION,
        "metadata": {"name": p["podRef"]["name"], "namespace": p["podRef"]["namespace"],
            "creationTimestamp": now, "labels": labels},
        "timestamp": now, "window": "1s",
        "containers": containers,
    }))
}

/// Whether a summary has a figure still without its first CPU rate.
fn lacks_rate(s: &Value) -> bool {
    s["node"]["cpu"]["usageNanoCores"].is_null()
        || s["pods"].as_array().into_iter().flatten().any(|p| {
            p["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["cpu"]["usageNanoCores"].is_null() && !c["cpu"].is_null())
        })
}

async fn answer(
    api: &Api,
    tls: Arc<rustls::ClientConfig>,
    t: &Target,
    q: &Query,
) -> ApiResult<Value> {
    let nodes_r = resources::find("", "v1", "nodes").expect("served");
    let mut nodes = api
        .reg
        .list(nodes_r, None, &Default::default())
        .await?
        .items;
    if t.resource.plural == "nodes" {
        if let Some(n) = &t.name {
            nodes.retain(|x| x["metadata"]["name"] == n.as_str());
        }
    }
    let selector = crate::api::selector::parse_labels(q.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut sums = summaries(&tls, &nodes).await;
    if sums.values().any(lacks_rate) {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        sums = summaries(&tls, &nodes).await;
    }
    let now = crate::api::time::rfc3339(chrono::Utc::now());
    let labels_of = |v: &Value| -> BTreeMap<String, String> {
        serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
    };
    let (kind, items): (&str, Vec<Value>) = if t.resource.plural == "nodes" {
        let items = nodes
            .iter()
            .filter(|n| selector.matches(&labels_of(n)))
            .filter_map(|n| {
                let name = n["metadata"]["name"].as_str()?;
                node_metrics(n, sums.get(name)?, &now)
            })
            .collect();
        ("NodeMetricsList", items)
    } else {
        let pods_r = resources::find("", "v1", "pods").expect("served");
        let pods = api
            .reg
            .list(pods_r, t.namespace.as_deref(), &Default::default())
            .await?
            .items;
        let by_key: BTreeMap<(String, String), &Value> = pods
            .iter()
            .map(|p| {
                (
                    (
                        p["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    ),
                    p,
                )
            })
            .collect();
        let items = sums
            .iter()
            .flat_map(|(node, s)| {
                s["pods"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |p| (node.clone(), p))
            })
            .filter_map(|(node, p)| {
                let key = (
                    p["podRef"]["namespace"].as_str()?.to_string(),
                    p["podRef"]["name"].as_str()?.to_string(),
                );
                // Only pods the API has (in the namespace asked for) on the node that tells
                // of them, matching the selector.
                let pod = by_key.get(&key)?;
                if pod["spec"]["nodeName"].as_str() != Some(node.as_str()) {
                    return None;
                }
                if t.name.as_deref().is_some_and(|n| n != key.1)
                    || !selector.matches(&labels_of(pod))
                {
                    return None;
                }
                pod_metrics(&p, &pod["metadata"]["labels"], &now)
            })
            .collect();
        ("PodMetricsList", items)
    };
    if let Some(name) = &t.name {
        return items.into_iter().next().ok_or_else(|| {
            let what = match &t.namespace {
                Some(ns) if t.resource.namespaced => format!("{ns}/{name}"),
                _ => name.clone(),
            };
            ApiError::new(
                404,
                "NotFound",
                format!(
                    "{}.metrics.k8s.io \"{what}\" not found",
                    t.resource.singular
                ),
            )
        });
    }
    Ok(json!({"kind": kind, "apiVersion": API_VERSION, "metadata": {}, "items": items}))
}

/// Serves a GET (one object or a list) of `nodes` or `pods` in `metrics.k8s.io`.
pub async fn serve(
    api: &Api,
    tls: Arc<rustls::ClientConfig>,
    t: &Target,
    q: &Query,
    method: &axum::http::Method,
) -> Response {
    if method != axum::http::Method::GET {
        return ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .into_response();
    }
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource (watch)",
        )
        .into_response();
    }
    match answer(api, tls, t, q).await {
        Ok(v) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&v).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_become_metrics_and_figures_without_a_rate_are_left_out() {
        let s = json!({"node": {"cpu": {"usageNanoCores": 250_000_000u64}, "memory": {"workingSetBytes": 2_097_152u64}},
            "pods": [{"podRef": {"name": "web", "namespace": "default"}, "containers": [
                {"name": "a", "cpu": {"usageNanoCores": 5_000_000u64}, "memory": {"workingSetBytes": 1_048_576u64}},
                {"name": "b", "cpu": {"usageCoreNanoSeconds": 7u64}, "memory": {"workingSetBytes": 4096u64}}]}]});
        let node = json!({"metadata": {"name": "n1", "labels": {"a": "b"}}});
        let m = node_metrics(&node, &s, "2026-12-01T00:00:00Z").unwrap();
        assert_eq!(m["usage"], json!({"cpu": "250000000n", "memory": "2048Ki"}));
        let p = pod_metrics(&s["pods"][0], &json!({}), "2026-12-01T00:00:00Z").unwrap();
        assert_eq!(
            p["containers"],
            json!([{"name": "a", "usage": {"cpu": "5000000n", "memory": "1024Ki"}}])
        );
        assert!(lacks_rate(&s));
    }
}
