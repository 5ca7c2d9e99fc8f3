//! The etcd backend (`--datastore-endpoint http://HOST:2379`), for several API servers and
//! multi-node labs: the [`Store`] trait over etcd v3's gRPC API, through the etcd-client
//! crate. It passes the same conformance suite as the embedded store against Debian 12's
//! etcd-server 3.4.
//!
//! etcd 3.4 caveat (control-plane.md section 2): progress notifications are not trusted before
//! 3.4.25, so nothing here relies on them.

use etcd_client::{
    Client, CompareOp as EtcdCmp, DeleteOptions, EventType, GetOptions, PutOptions, TxnOp,
    TxnOpResponse, WatchOptions,
};

use super::*;

/// A store in an etcd cluster.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
}

fn kv(k: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: k.key().to_vec(),
        value: k.value().to_vec(),
        create_revision: k.create_revision(),
        mod_revision: k.mod_revision(),
        version: k.version(),
        lease: k.lease(),
    }
}

/// etcd's errors, with the two that mean something to the API server made typed.
fn error(e: etcd_client::Error, requested: Revision) -> StoreError {
    let text = e.to_string();
    if text.contains("required revision has been compacted") {
        StoreError::Compacted {
            requested,
            compacted: 0,
        }
    } else if text.contains("required revision is a future revision") {
        StoreError::FutureRevision {
            requested,
            current: 0,
        }
    } else if text.contains("requested lease not found") || text.contains("lease not found") {
        StoreError::LeaseNotFound(0)
    } else {
        StoreError::Backend(format!("etcd: {text}"))
    }
}

fn get_options(r: &KeyRange) -> GetOptions {
    let o = GetOptions::new();
    if r.end.is_empty() {
        o
    } else {
        o.with_range(r.end.clone())
    }
}

fn delete_options(r: &KeyRange) -> DeleteOptions {
    let o = DeleteOptions::new().with_prev_key();
    if r.end.is_empty() {
        o
    } else {
        o.with_range(r.end.clone())
    }
}

fn txn_op(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let mut o = PutOptions::new().with_prev_key();
            if *lease != 0 {
                o = o.with_lease(*lease);
            }
            TxnOp::put(key.clone(), value.clone(), Some(o))
        }
        Op::Delete(r) => TxnOp::delete(r.key.clone(), Some(delete_options(r))),
        Op::Get(r) => TxnOp::get(r.key.clone(), Some(get_options(r))),
    }
}

impl Etcd {
    /// Connects to `endpoints` (`http://127.0.0.1:2379`, ...).
    pub async fn connect(endpoints: &[String]) -> Result<Etcd, StoreError> {
        let client = Client::connect(endpoints, None)
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to etcd {endpoints:?}: {e}")))?;
        Ok(Etcd { client })
    }
}

#[async_trait::async_trait]
impl Store for Etcd {
    async fn revision(&self) -> Result<Revision, StoreError> {
        let r = self
            .client
            .kv_client()
            .get(*b"\0knode-revision", None)
            .await
            .map_err(|e| error(e, 0))?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        let mut o = get_options(&req.range);
        if req.revision > 0 {
            o = o.with_revision(req.revision);
        }
        if req.limit > 0 {
            o = o.with_limit(req.limit as i64);
        }
        if req.count_only {
            o = o.with_count_only();
        }
        let r = self
            .client
            .kv_client()
            .get(req.range.key.clone(), Some(o))
            .await
            .map_err(|e| error(e, req.revision))?;
        Ok(RangeResponse {
            kvs: r.kvs().iter().map(kv).collect(),
            more: r.more(),
            count: r.count().max(0) as usize,
            revision: r.header().map_or(0, |h| h.revision()),
        })
    }

    async fn txn(&self, t: Txn) -> Result<TxnResponse, StoreError> {
        let compares: Vec<etcd_client::Compare> = t
            .compare
            .iter()
            .map(|c| {
                let op = match c.op {
                    CmpOp::Equal => EtcdCmp::Equal,
                    CmpOp::NotEqual => EtcdCmp::NotEqual,
                    CmpOp::Less => EtcdCmp::Less,
                    CmpOp::Greater => EtcdCmp::Greater,
                };
                match &c.target {
                    Target::ModRevision(r) => {
                        etcd_client::Compare::mod_revision(c.key.clone(), op, *r)
                    }
                    Target::CreateRevision(r) => {
                        etcd_client::Compare::create_revision(c.key.clone(), op, *r)
                    }
                    Target::Version(v) => etcd_client::Compare::version(c.key.clone(), op, *v),
                    Target::Value(v) => etcd_client::Compare::value(c.key.clone(), op, v.clone()),
                }
            })
            .collect();
        let txn = etcd_client::Txn::new()
            .when(compares)
            .and_then(t.success.iter().map(txn_op).collect::<Vec<_>>())
            .or_else(t.failure.iter().map(txn_op).collect::<Vec<_>>());
        let lease = t.success.iter().chain(&t.failure).find_map(|o| match o {
            Op::Put { lease, .. } if *lease != 0 => Some(*lease),
            _ => None,
        });
        let r = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| match error(e, 0) {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease.unwrap_or(0)),
                e => e,
            })?;
        let responses = r
            .op_responses()
            .into_iter()
            .map(|o| match o {
                TxnOpResponse::Put(p) => OpResponse::Put {
                    prev: p.prev_key().map(kv),
                },
                TxnOpResponse::Delete(d) => OpResponse::Delete {
                    deleted: d.prev_kvs().iter().map(kv).collect(),
                },
                TxnOpResponse::Get(g) => OpResponse::Get {
                    kvs: g.kvs().iter().map(kv).collect(),
                },
                TxnOpResponse::Txn(_) => OpResponse::Get { kvs: Vec::new() },
            })
            .collect();
        Ok(TxnResponse {
            succeeded: r.succeeded(),
            revision: r.header().map_or(0, |h| h.revision()),
            responses,
        })
    }

    async fn watch(
        &self,
        range: KeyRange,
        start: Revision,
        prev: bool,
    ) -> Result<WatchStream, StoreError> {
        // etcd reports a compacted start only in the watch's first response; a read at that
        // revision tells at once, as the embedded store does.
        // (A start after the current revision is a watch for the next writes: fine.)
        if start > 0 {
            match self
                .range(RangeRequest {
                    range: range.clone(),
                    revision: start,
                    count_only: true,
                    ..Default::default()
                })
                .await
            {
                Ok(_) | Err(StoreError::FutureRevision { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut o = WatchOptions::new();
        if !range.end.is_empty() {
            o = o.with_range(range.end.clone());
        }
        if start > 0 {
            o = o.with_start_revision(start);
        }
        if prev {
            o = o.with_prev_key();
        }
        let mut stream = self
            .client
            .watch_client()
            .watch(range.key.clone(), Some(o))
            .await
            .map_err(|e| error(e, start))?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    m = stream.message() => m,
                    () = tx.closed() => return,
                };
                let resp = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx.send(Err(StoreError::WatchClosed)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(error(e, start))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            requested: start,
                            compacted: resp.compact_revision(),
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    let _ = tx.send(Err(StoreError::WatchClosed)).await;
                    return;
                }
                let events: Vec<Event> = resp
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let k = kv(e.kv()?);
                        Some(Event {
                            kind: match e.event_type() {
                                EventType::Put => EventKind::Put,
                                EventType::Delete => EventKind::Delete,
                            },
                            kv: k,
                            prev: e.prev_kv().map(kv),
                        })
                    })
                    .collect();
                if !events.is_empty() && tx.send(Ok(events)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .compact(revision, None)
            .await
            .map_err(|e| error(e, revision))?;
        Ok(())
    }

    async fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError> {
        let r = self
            .client
            .lease_client()
            .grant(ttl, None)
            .await
            .map_err(|e| error(e, 0))?;
        Ok(r.id())
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<(), StoreError> {
        let (mut keeper, mut stream) =
            self.client
                .lease_client()
                .keep_alive(id)
                .await
                .map_err(|e| match error(e, 0) {
                    StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(id),
                    e => e,
                })?;
        let gone = |e| match error(e, 0) {
            StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(id),
            e => e,
        };
        keeper.keep_alive().await.map_err(gone)?;
        match stream.message().await.map_err(gone)? {
            // A lease that is gone answers with a TTL of 0 or less.
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn lease_revoke(&self, id: i64) -> Result<(), StoreError> {
        self.client
            .lease_client()
            .revoke(id)
            .await
            .map_err(|e| match error(e, 0) {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(id),
                e => e,
            })?;
        Ok(())
    }
}
