//! The controllers `knode server` runs, each a pure plan (`reconcile(owner, cache) ->
//! writes`) and a loop applying it through the client, as the scheduler is. So far: the
//! ReplicaSet and ReplicationController controllers, and the garbage collector's part for
//! their pods; Deployments; Endpoints and EndpointSlices.

#![forbid(unsafe_code)]

pub mod deployment;
pub mod endpoints;
pub mod replicaset;
mod run;

/// Runs every controller until the process ends.
pub async fn run(client: kube::Client) {
    tokio::spawn(run::endpoints(client.clone()));
    run::run(client).await
}
