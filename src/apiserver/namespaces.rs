//! Namespace deletion: a namespace being deleted is `Terminating` (no new objects), then
//! everything in it is deleted, then the namespace itself. Kubernetes runs this loop in the
//! controller manager; knode's server runs it itself so that `kubectl delete namespace`
//! completes without one. Objects that wait for something (a pod for its node agent, a
//! finalizer) are retried until they are gone.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::handlers::Api;
use super::registry::ListOptions;
use super::request::{Query, Target};
use super::resources::{self, RESOURCES};
use super::status::ApiResult;

/// Starts the loop; namespaces sent to the returned channel (and those already
/// Terminating) are emptied and removed.
pub fn start(api: Arc<Api>) -> tokio::sync::mpsc::UnboundedSender<String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let resume = tx.clone();
    let a = api.clone();
    tokio::spawn(async move {
        let nsr = resources::find("", "v1", "namespaces").expect("namespaces are served");
        if let Ok(list) = a.reg.list(nsr, None, &ListOptions::default()).await {
            for n in list.items {
                if n["status"]["phase"] == "Terminating" {
                    let _ = resume.send(n["metadata"]["name"].as_str().unwrap_or("").to_string());
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(ns) = rx.recv().await {
            let api = api.clone();
            tokio::spawn(async move {
                loop {
                    match finalize(&api, &ns).await {
                        Ok(true) => return,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(namespace = %ns, error = %e, "emptying a namespace")
                        }
                    }
                    // Requeue: something in it waits for a node agent or a finalizer.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
        }
    });
    tx
}

/// One pass: deletes what is left; true when the namespace is gone.
async fn finalize(api: &Api, ns: &str) -> ApiResult<bool> {
    let mut left = 0;
    let q = Query::default();
    // Events of both groups are one store; core's covers them.
    for r in RESOURCES
        .iter()
        .filter(|r| r.namespaced && r.stored() && r.group != "events.k8s.io")
    {
        let list = api.reg.list(r, Some(ns), &ListOptions::default()).await?;
        for o in list.items {
            let t = Target {
                resource: r,
                namespace: Some(ns.to_string()),
                name: o["metadata"]["name"].as_str().map(str::to_string),
                sub: None,
                rest: String::new(),
                watch_prefix: false,
            };
            match api
                .delete(&t, &q, json!({"propagationPolicy": "Background"}))
                .await
            {
                Ok((_, v))
                    if v["kind"] != "Status" && !v["metadata"]["deletionTimestamp"].is_null() =>
                {
                    left += 1
                }
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(_) => left += 1,
            }
        }
    }
    if left > 0 {
        return Ok(false);
    }
    let nsr = resources::find("", "v1", "namespaces").expect("namespaces are served");
    match api.reg.get_kv(nsr, None, ns).await? {
        Some((obj, rev)) => {
            api.reg.delete(nsr, None, obj, rev, vec![]).await?;
            Ok(true)
        }
        None => Ok(true),
    }
}
