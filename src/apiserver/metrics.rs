//! `/metrics` in the Prometheus text format, with the names the real API server uses:
//! `apiserver_request_total` and `apiserver_request_duration_seconds` per verb and resource,
//! `apiserver_longrunning_requests` for open watches, and
//! `etcd_request_duration_seconds` for the store (either backend) per operation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::store::{
    KeyRange, RangeRequest, RangeResponse, Revision, Store, StoreError, Txn, TxnResponse,
    WatchStream,
};

const BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; 13],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BOUNDS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        for (i, b) in BOUNDS.iter().enumerate() {
            out.push_str(&format!(
                "{name}_bucket{{{labels},le=\"{b}\"}} {}\n",
                self.buckets[i]
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}\n",
            self.count
        ));
        out.push_str(&format!("{name}_sum{{{labels}}} {}\n", self.sum));
        out.push_str(&format!("{name}_count{{{labels}}} {}\n", self.count));
    }
}

type RequestKey = (String, String, String, String);

#[derive(Default)]
struct Inner {
    /// (verb, group, resource, subresource) -> code -> count
    requests: BTreeMap<RequestKey, BTreeMap<u16, u64>>,
    durations: BTreeMap<RequestKey, Histogram>,
    store: BTreeMap<&'static str, Histogram>,
    watches: BTreeMap<(String, String), i64>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    pub watchers: AtomicI64,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One finished request; WATCH requests are counted but not timed (they last minutes).
    pub fn request(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        code: u16,
        secs: f64,
    ) {
        let key = (
            verb.to_string(),
            group.to_string(),
            resource.to_string(),
            sub.to_string(),
        );
        let mut i = self.lock();
        *i.requests
            .entry(key.clone())
            .or_default()
            .entry(code)
            .or_default() += 1;
        if verb != "WATCH" {
            i.durations.entry(key).or_default().observe(secs);
        }
    }

    /// A watch opened (+1) or closed (-1).
    pub fn watch(&self, group: &str, resource: &str, delta: i64) {
        self.watchers.fetch_add(delta, Ordering::Relaxed);
        *self
            .lock()
            .watches
            .entry((group.to_string(), resource.to_string()))
            .or_default() += delta;
    }

    fn store(&self, op: &'static str, secs: f64) {
        self.lock().store.entry(op).or_default().observe(secs);
    }

    pub fn render(&self) -> String {
        let i = self.lock();
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, resource, subresource and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((verb, group, res, sub), codes) in &i.requests {
            for (code, n) in codes {
                out.push_str(&format!(
                    "apiserver_request_total{{verb=\"{}\",group=\"{}\",resource=\"{}\",subresource=\"{}\",code=\"{code}\"}} {n}\n",
                    esc(verb), esc(group), esc(res), esc(sub)
                ));
            }
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, resource and subresource.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, group, res, sub), h) in &i.durations {
            let labels = format!(
                "verb=\"{}\",group=\"{}\",resource=\"{}\",subresource=\"{}\"",
                esc(verb),
                esc(group),
                esc(res),
                esc(sub)
            );
            h.render("apiserver_request_duration_seconds", &labels, &mut out);
        }
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests (watches) broken out by group and resource.\n# TYPE apiserver_longrunning_requests gauge\n");
        for ((group, res), n) in &i.watches {
            out.push_str(&format!(
                "apiserver_longrunning_requests{{verb=\"WATCH\",group=\"{}\",resource=\"{}\"}} {n}\n",
                esc(group),
                esc(res)
            ));
        }
        out.push_str("# HELP etcd_request_duration_seconds Storage request latency in seconds for each operation (embedded store or etcd).\n# TYPE etcd_request_duration_seconds histogram\n");
        for (op, h) in &i.store {
            h.render(
                "etcd_request_duration_seconds",
                &format!("operation=\"{op}\""),
                &mut out,
            );
        }
        out
    }
}

/// A store that records the latency of every call.
pub struct Metered {
    pub inner: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

impl Metered {
    fn done(&self, op: &'static str, t: Instant) {
        self.metrics.store(op, t.elapsed().as_secs_f64());
    }
}

#[async_trait::async_trait]
impl Store for Metered {
    async fn revision(&self) -> Result<Revision, StoreError> {
        let t = Instant::now();
        let r = self.inner.revision().await;
        self.done("revision", t);
        r
    }
    async fn range(&self, r: RangeRequest) -> Result<RangeResponse, StoreError> {
        let t = Instant::now();
        let out = self.inner.range(r).await;
        self.done("range", t);
        out
    }
    async fn txn(&self, x: Txn) -> Result<TxnResponse, StoreError> {
        let t = Instant::now();
        let out = self.inner.txn(x).await;
        self.done("txn", t);
        out
    }
    async fn watch(
        &self,
        range: KeyRange,
        start: Revision,
        prev: bool,
    ) -> Result<WatchStream, StoreError> {
        let t = Instant::now();
        let out = self.inner.watch(range, start, prev).await;
        self.done("watch", t);
        out
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let t = Instant::now();
        let out = self.inner.compact(revision).await;
        self.done("compact", t);
        out
    }
    async fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, id: i64) -> Result<(), StoreError> {
        self.inner.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: i64) -> Result<(), StoreError> {
        self.inner.lease_revoke(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_counts_buckets_and_gauges() {
        let m = Metrics::default();
        m.request("GET", "apps", "deployments", "", 200, 0.003);
        m.request("GET", "apps", "deployments", "", 404, 0.2);
        m.watch("", "pods", 1);
        let t = m.render();
        assert!(t.contains("apiserver_request_total{verb=\"GET\",group=\"apps\",resource=\"deployments\",subresource=\"\",code=\"404\"} 1"), "{t}");
        assert!(t.contains("apiserver_request_duration_seconds_bucket{verb=\"GET\",group=\"apps\",resource=\"deployments\",subresource=\"\",le=\"0.005\"} 1"), "{t}");
        assert!(t.contains("apiserver_request_duration_seconds_count{verb=\"GET\",group=\"apps\",resource=\"deployments\",subresource=\"\"} 2"), "{t}");
        assert!(
            t.contains(
                "apiserver_longrunning_requests{verb=\"WATCH\",group=\"\",resource=\"pods\"} 1"
            ),
            "{t}"
        );
    }
}
