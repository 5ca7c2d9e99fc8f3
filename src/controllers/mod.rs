//! The controllers `knode server` runs, each a pure plan (`reconcile(owner, cache) ->
//! writes`) and a loop applying it through the client, as the scheduler is. So far: the
//! ReplicaSet and ReplicationController controllers; the garbage collector (background,
//! foreground and orphaning deletion); Deployments; Endpoints and EndpointSlices; node lifecycle (unreachable nodes and
//! the eviction of their pods); the default ServiceAccount of every namespace; Jobs (with
//! their TTL after finishing), CronJobs, DaemonSets and StatefulSets; persistent volumes (binding, the
//! local-path provisioner, reclaiming, protection).

#![forbid(unsafe_code)]

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod nodelifecycle;
pub mod replicaset;
mod run;
pub mod statefulset;
pub mod volumes;
mod workloads;

/// Whether a computed status says something the stored one does not (a zero the stored
/// status leaves out, as the API server omits empty counts, is the same).
pub fn status_differs(stored: &serde_json::Value, status: &serde_json::Value) -> bool {
    status.as_object().is_some_and(|m| {
        m.iter()
            .any(|(k, v)| &stored[k] != v && !(v == 0 && stored[k].is_null()))
    })
}

/// What the controllers are configured with.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long a node's agent may stay quiet before the node is Unknown
    /// (`--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace: std::time::Duration,
    /// The cluster CA (PEM) published in every namespace as the ConfigMap `kube-root-ca.crt`.
    pub root_ca: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            node_monitor_grace: std::time::Duration::from_secs(40),
            root_ca: None,
        }
    }
}

/// Runs every controller until the process ends.
pub async fn run(inf: std::sync::Arc<crate::client::Informers>, opts: Options) {
    tokio::spawn(run::endpoints(inf.clone()));
    tokio::spawn(run::garbage_collector(inf.clone()));
    tokio::spawn(run::node_lifecycle(inf.clone(), opts.node_monitor_grace));
    tokio::spawn(run::service_accounts(inf.clone(), opts.root_ca.clone()));
    tokio::spawn(workloads::jobs(inf.clone()));
    tokio::spawn(workloads::cronjobs(inf.clone()));
    tokio::spawn(workloads::daemonsets(inf.clone()));
    tokio::spawn(workloads::volumes(inf.clone()));
    tokio::spawn(workloads::statefulsets(inf.clone()));
    run::run(inf).await
}
