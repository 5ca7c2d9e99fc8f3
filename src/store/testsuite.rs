//! The conformance suite every [`Store`] backend must pass: etcd v3's semantics as
//! kube-apiserver relies on them (revisions, compare-and-swap on `mod_revision`, ranges at a
//! revision, ordered watches with replay, compaction, leases). Each backend's tests call
//! [`run`] on a fresh, empty store.

use std::sync::Arc;
use std::time::Duration;

use super::*;

/// The next batch of a watch, bounded (a store that never delivers fails the test).
async fn next(w: &mut WatchStream) -> Vec<Event> {
    match tokio::time::timeout(Duration::from_secs(30), w.recv()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("the watch failed: {e}"),
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("no event within 30 s"),
    }
}

/// Reads events until `n` have arrived.
async fn events(w: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(next(w).await);
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

fn summary(ev: &[Event]) -> Vec<(EventKind, String, Revision)> {
    ev.iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                e.kv.mod_revision,
            )
        })
        .collect()
}

/// Runs the whole suite on an empty store.
pub async fn run(s: Arc<dyn Store>) {
    revisions_and_versions(&*s).await;
    transactions(&*s).await;
    ranges(&*s).await;
    watches(&*s).await;
    compaction(&*s).await;
    leases(&*s).await;
    concurrent_compare_and_swap(s.clone()).await;
}

async fn revisions_and_versions(s: &dyn Store) {
    let r0 = s.revision().await.unwrap();
    let r1 = s.put(b"/t/a", b"1").await.unwrap();
    assert_eq!(r1, r0 + 1, "a put is one revision");
    let r2 = s.put(b"/t/a", b"2").await.unwrap();
    let kv = s.get(b"/t/a").await.unwrap().unwrap();
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.as_slice()
        ),
        (r1, r2, 2, &b"2"[..])
    );
    // A deleted and re-created key starts again at version 1.
    let d = s
        .txn(Txn {
            success: vec![Op::Delete(KeyRange::key(*b"/t/a"))],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        matches!(&d.responses[0], OpResponse::Delete { deleted } if deleted.len() == 1 && deleted[0].value == b"2")
    );
    assert_eq!(s.get(b"/t/a").await.unwrap(), None);
    let r4 = s.put(b"/t/a", b"3").await.unwrap();
    let kv = s.get(b"/t/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.version), (r4, 1));
    // A read-only transaction does not move the revision.
    let before = s.revision().await.unwrap();
    let t = s
        .txn(Txn {
            success: vec![Op::Get(KeyRange::key(*b"/t/a"))],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(t.revision, before);
    assert_eq!(s.revision().await.unwrap(), before);
}

async fn transactions(s: &dyn Store) {
    // kube-apiserver's create: only if absent, else read what is there.
    let create = |v: &'static [u8]| Txn {
        compare: vec![Compare::mod_revision(*b"/t/obj", 0)],
        success: vec![Op::put(*b"/t/obj", v)],
        failure: vec![Op::Get(KeyRange::key(*b"/t/obj"))],
    };
    let c = s.txn(create(b"v1")).await.unwrap();
    assert!(c.succeeded);
    let again = s.txn(create(b"other")).await.unwrap();
    assert!(!again.succeeded, "a second create must fail");
    let OpResponse::Get { kvs } = &again.responses[0] else {
        panic!("{again:?}")
    };
    assert_eq!(kvs[0].value, b"v1");
    // Its update: only at the revision it read.
    let rev = kvs[0].mod_revision;
    let update = |at: Revision, v: &'static [u8]| Txn {
        compare: vec![Compare::mod_revision(*b"/t/obj", at)],
        success: vec![Op::put(*b"/t/obj", v)],
        failure: vec![Op::Get(KeyRange::key(*b"/t/obj"))],
    };
    let u = s.txn(update(rev, b"v2")).await.unwrap();
    assert!(u.succeeded);
    let stale = s.txn(update(rev, b"v3")).await.unwrap();
    assert!(!stale.succeeded, "an update at a stale revision must fail");
    assert_eq!(s.get(b"/t/obj").await.unwrap().unwrap().value, b"v2");
    // Several writes in one transaction share one revision.
    let before = s.revision().await.unwrap();
    let m = s
        .txn(Txn {
            success: vec![
                Op::put(*b"/t/m/1", *b"x"),
                Op::put(*b"/t/m/2", *b"y"),
                Op::Delete(KeyRange::key(*b"/t/obj")),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(m.revision, before + 1);
    for k in [&b"/t/m/1"[..], b"/t/m/2"] {
        assert_eq!(s.get(k).await.unwrap().unwrap().mod_revision, before + 1);
    }
    // Compares on value, version and create revision.
    let kv = s.get(b"/t/m/1").await.unwrap().unwrap();
    for (c, want) in [
        (Target::Value(b"x".to_vec()), true),
        (Target::Value(b"z".to_vec()), false),
        (Target::Version(1), true),
        (Target::CreateRevision(kv.create_revision), true),
    ] {
        let t = s
            .txn(Txn {
                compare: vec![Compare {
                    key: b"/t/m/1".to_vec(),
                    op: CmpOp::Equal,
                    target: c.clone(),
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(t.succeeded, want, "{c:?}");
    }
}

async fn ranges(s: &dyn Store) {
    for i in 0..5 {
        s.put(format!("/r/pods/p{i}").as_bytes(), b"{}")
            .await
            .unwrap();
    }
    s.put(b"/r/podsX", b"not a pod").await.unwrap();
    s.put(b"/r/services/s", b"{}").await.unwrap();
    let all = s
        .range(RangeRequest {
            range: KeyRange::prefix(*b"/r/pods/"),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<String> = all
        .kvs
        .iter()
        .map(|k| String::from_utf8_lossy(&k.key).into_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "/r/pods/p0",
            "/r/pods/p1",
            "/r/pods/p2",
            "/r/pods/p3",
            "/r/pods/p4"
        ]
    );
    assert_eq!((all.count, all.more), (5, false));
    let page = s
        .range(RangeRequest {
            range: KeyRange::prefix(*b"/r/pods/"),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((page.kvs.len(), page.count, page.more), (2, 5, true));
    let count = s
        .range(RangeRequest {
            range: KeyRange::prefix(*b"/r/"),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((count.count, count.kvs.len()), (7, 0));
    // At an old revision: the values of then, deleted keys included.
    let then = s.revision().await.unwrap();
    s.put(b"/r/pods/p0", b"changed").await.unwrap();
    s.txn(Txn {
        success: vec![Op::Delete(KeyRange::key(*b"/r/pods/p1"))],
        ..Default::default()
    })
    .await
    .unwrap();
    let old = s
        .range(RangeRequest {
            range: KeyRange::prefix(*b"/r/pods/"),
            revision: then,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(old.kvs.len(), 5);
    assert_eq!(old.kvs[0].value, b"{}");
    assert!(
        old.revision > then,
        "the response carries the current revision"
    );
    let now = s
        .range(RangeRequest {
            range: KeyRange::prefix(*b"/r/pods/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(now.kvs.len(), 4);
    let future = s
        .range(RangeRequest {
            range: KeyRange::key(*b"/r/pods/p0"),
            revision: now.revision + 100,
            ..Default::default()
        })
        .await;
    assert!(
        matches!(future, Err(StoreError::FutureRevision { .. })),
        "{future:?}"
    );
}

async fn watches(s: &dyn Store) {
    let start = s.revision().await.unwrap() + 1;
    let a = s.put(b"/w/x/a", b"1").await.unwrap();
    let b = s.put(b"/w/y/b", b"1").await.unwrap();
    let c = s.put(b"/w/x/a", b"2").await.unwrap();
    // From the past: the backlog in order, then what comes next; other prefixes are not seen.
    let mut w = s
        .watch(KeyRange::prefix(*b"/w/x/"), start, true)
        .await
        .unwrap();
    let mut live = s.watch(KeyRange::prefix(*b"/w/"), 0, false).await.unwrap();
    let ev = events(&mut w, 2).await;
    assert_eq!(
        summary(&ev),
        [
            (EventKind::Put, "/w/x/a".into(), a),
            (EventKind::Put, "/w/x/a".into(), c)
        ]
    );
    assert_eq!(
        ev[1].prev.as_ref().map(|p| p.value.clone()),
        Some(b"1".to_vec())
    );
    let d = s
        .txn(Txn {
            success: vec![Op::Delete(KeyRange::key(*b"/w/x/a"))],
            ..Default::default()
        })
        .await
        .unwrap()
        .revision;
    let ev = events(&mut w, 1).await;
    assert_eq!(summary(&ev), [(EventKind::Delete, "/w/x/a".into(), d)]);
    assert_eq!(
        ev[0].prev.as_ref().map(|p| p.value.clone()),
        Some(b"2".to_vec())
    );
    // A watch from now sees only what came after it began, without prev values.
    let ev = events(&mut live, 1).await;
    assert_eq!(summary(&ev), [(EventKind::Delete, "/w/x/a".into(), d)]);
    assert_eq!(ev[0].prev, None);
    let _ = b;
    // Many watchers each get every event, in order.
    let mut many = Vec::new();
    for _ in 0..50 {
        many.push(
            s.watch(KeyRange::prefix(*b"/w/many/"), 0, false)
                .await
                .unwrap(),
        );
    }
    let mut revs = Vec::new();
    for i in 0..20 {
        revs.push(
            s.put(format!("/w/many/{i}").as_bytes(), b"x")
                .await
                .unwrap(),
        );
    }
    for w in &mut many {
        let got: Vec<Revision> = events(w, 20)
            .await
            .iter()
            .map(|e| e.kv.mod_revision)
            .collect();
        assert_eq!(got, revs);
    }
    // From the revision after the current one (a client resuming at the latest revision it
    // saw): the next write.
    let next = s.revision().await.unwrap() + 1;
    let mut w = s
        .watch(KeyRange::prefix(*b"/w/next/"), next, true)
        .await
        .unwrap();
    let e = s.put(b"/w/next/a", b"1").await.unwrap();
    assert_eq!(
        summary(&events(&mut w, 1).await),
        [(EventKind::Put, "/w/next/a".into(), e)]
    );
}

async fn compaction(s: &dyn Store) {
    s.put(b"/c/k", b"1").await.unwrap();
    let mid = s.put(b"/c/k", b"2").await.unwrap();
    s.put(b"/c/k", b"3").await.unwrap();
    s.put(b"/c/other", b"x").await.unwrap();
    let top = s.revision().await.unwrap();
    s.compact(top).await.unwrap();
    let old = s
        .range(RangeRequest {
            range: KeyRange::key(*b"/c/k"),
            revision: mid,
            ..Default::default()
        })
        .await;
    assert!(matches!(old, Err(StoreError::Compacted { .. })), "{old:?}");
    let w = s.watch(KeyRange::prefix(*b"/c/"), mid, false).await;
    assert!(
        matches!(w, Err(StoreError::Compacted { .. })),
        "a watch from a compacted revision must fail"
    );
    // The latest values stay, readable at the compacted revision itself.
    let at = s
        .range(RangeRequest {
            range: KeyRange::prefix(*b"/c/"),
            revision: top,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(at.kvs.len(), 2);
    assert_eq!(s.get(b"/c/k").await.unwrap().unwrap().value, b"3");
    assert_eq!(s.get(b"/c/k").await.unwrap().unwrap().version, 3);
    // Compacting again at or below is refused; a watch from the compacted revision works.
    assert!(s.compact(top).await.is_err());
    let mut w = s
        .watch(KeyRange::prefix(*b"/c/"), top, false)
        .await
        .unwrap();
    let ev = events(&mut w, 1).await;
    assert_eq!(summary(&ev), [(EventKind::Put, "/c/other".into(), top)]);
}

async fn leases(s: &dyn Store) {
    let id = s.lease_grant(60).await.unwrap();
    s.txn(Txn {
        success: vec![Op::Put {
            key: b"/l/a".to_vec(),
            value: b"1".to_vec(),
            lease: id,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.get(b"/l/a").await.unwrap().unwrap().lease, id);
    s.lease_keep_alive(id).await.unwrap();
    let mut w = s.watch(KeyRange::prefix(*b"/l/"), 0, false).await.unwrap();
    s.lease_revoke(id).await.unwrap();
    let ev = events(&mut w, 1).await;
    assert_eq!(ev[0].kind, EventKind::Delete);
    assert_eq!(s.get(b"/l/a").await.unwrap(), None);
    let gone = s.lease_keep_alive(id).await;
    assert!(
        matches!(gone, Err(StoreError::LeaseNotFound(_))),
        "{gone:?}"
    );
    let bogus = s
        .txn(Txn {
            success: vec![Op::Put {
                key: b"/l/b".to_vec(),
                value: b"1".to_vec(),
                lease: 999_999,
            }],
            ..Default::default()
        })
        .await;
    assert!(
        matches!(bogus, Err(StoreError::LeaseNotFound(_))),
        "{bogus:?}"
    );
    // A lease nobody keeps alive expires and takes its keys (an Event's TTL).
    let short = s.lease_grant(1).await.unwrap();
    s.txn(Txn {
        success: vec![Op::Put {
            key: b"/l/ttl".to_vec(),
            value: b"1".to_vec(),
            lease: short,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let ev = events(&mut w, 2).await;
    assert_eq!(summary(&ev)[1].0, EventKind::Delete, "{ev:?}");
}

async fn concurrent_compare_and_swap(s: Arc<dyn Store>) {
    s.put(b"/cas/n", b"0").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                loop {
                    let kv = s.get(b"/cas/n").await.unwrap().unwrap();
                    let n: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
                    let t = s
                        .txn(Txn {
                            compare: vec![Compare::mod_revision(*b"/cas/n", kv.mod_revision)],
                            success: vec![Op::put(*b"/cas/n", (n + 1).to_string())],
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    if t.succeeded {
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kv = s.get(b"/cas/n").await.unwrap().unwrap();
    assert_eq!(kv.value, b"80", "no increment may be lost");
    assert_eq!(kv.version, 81);
}
