//! The controllers `knode server` runs, each a pure plan (`reconcile(owner, cache) ->
//! writes`) and a loop applying it through the client, as the scheduler is. So far: the
//! ReplicaSet and ReplicationController controllers, and the garbage collector's part for
//! their pods.

#![forbid(unsafe_code)]

pub mod deployment;
pub mod replicaset;
mod run;

pub use run::run;
