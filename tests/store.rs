//! The store's conformance suite (`src/store/testsuite.rs`) against a real etcd: Debian 12's
//! etcd-server 3.4, started by the test on free loopback ports with a data directory of its
//! own, and stopped (and removed) at the end. The embedded backend runs the same suite in its
//! unit tests.

mod support;

use std::sync::Arc;

use knode::store::etcd::Etcd;
use knode::store::Store;
use support::etcd::{connect, free_port, start_etcd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_store_conformance_suite() {
    let e = start_etcd();
    let s = connect(&e).await;
    knode::store::testsuite::run(Arc::new(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_a_clear_error() {
    let port = free_port();
    let r = match Etcd::connect(&[format!("http://127.0.0.1:{port}")]).await {
        Ok(s) => s.revision().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let e = r.expect_err("nothing listens there");
    assert!(e.to_string().contains("etcd"), "{e}");
}
