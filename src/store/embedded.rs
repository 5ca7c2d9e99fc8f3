//! The embedded store: a small MVCC log on redb, in one file (`<root>/server/store.redb`).
//!
//! Why redb: pure Rust (no C to build, nothing to install), a stable file format, ACID
//! transactions with a durable commit (fsync) before a write is acknowledged, crash safety by
//! copy-on-write B-trees, and one writer at a time, which is exactly one revision counter.
//! Rejected: SQLite through rusqlite (kine's way: a C build, and kine's polling watch and
//! unbounded WAL are the failures control-plane.md lists), sled (pre-1.0, unstable format).
//!
//! Tables:
//! - `log`: (revision, index within it) -> the record of one change (key, value, create
//!   revision, version, lease, or a tombstone); the history, in revision order;
//! - `hist`: (key, revision) -> index: every revision at which a key changed (reads at an old
//!   revision, compaction);
//! - `latest`: key -> (revision, index) of its live value (reads at the current revision);
//! - `meta`: the current and the compacted revision, the next lease ID;
//! - `leases`: ID -> (TTL, expiry in ms since the epoch); `lease_keys`: (ID, key) -> ().
//!
//! Watches are served in-process: each commit's events go to a broadcast channel after the
//! commit, under the writer's lock, so they leave in revision order; a watcher replays the log
//! from its start revision first, and a watcher that falls behind the channel reads what it
//! missed from the log again rather than lose it. History before the compacted revision is
//! removed from the file (`compact`), keeping the latest value of every key.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use super::*;

const LOG: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("log");
const HIST: TableDefinition<(&[u8], u64), u32> = TableDefinition::new("hist");
const LATEST: TableDefinition<&[u8], (u64, u32)> = TableDefinition::new("latest");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<u64, (i64, u64)> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("lease_keys");

const REVISION: &str = "revision";
const COMPACTED: &str = "compacted";
const NEXT_LEASE: &str = "next_lease";

fn backend<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// One change, as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    key: Vec<u8>,
    value: Vec<u8>,
    create_revision: i64,
    version: i64,
    lease: i64,
    deleted: bool,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(29 + self.key.len() + self.value.len());
        b.push(self.deleted as u8);
        b.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.key);
        b.extend_from_slice(&self.create_revision.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.lease.to_le_bytes());
        b.extend_from_slice(&self.value);
        b
    }

    fn decode(b: &[u8]) -> Result<Record, StoreError> {
        let bad = || StoreError::Backend("a corrupt record in the store's log".into());
        let (&deleted, b) = b.split_first().ok_or_else(bad)?;
        let n =
            u32::from_le_bytes(b.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
        let key = b.get(4..4 + n).ok_or_else(bad)?.to_vec();
        let rest = b.get(4 + n..).ok_or_else(bad)?;
        let int = |i: usize| -> Result<i64, StoreError> {
            Ok(i64::from_le_bytes(
                rest.get(i * 8..i * 8 + 8)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            ))
        };
        Ok(Record {
            key,
            create_revision: int(0)?,
            version: int(1)?,
            lease: int(2)?,
            value: rest.get(24..).ok_or_else(bad)?.to_vec(),
            deleted: deleted != 0,
        })
    }

    fn kv(&self, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<TxnResponse, StoreError>>;

/// A transaction waiting for the group commit.
struct Pending {
    txn: Txn,
    reply: Reply,
}

/// The most transactions one commit takes.
const MAX_BATCH: usize = 256;

struct Inner {
    db: Database,
    /// Transactions for the writer thread (group commit).
    queue: std::sync::mpsc::Sender<Pending>,
    /// Serializes writers with the broadcast of their events (so events leave in revision
    /// order).
    writer: Mutex<()>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
}

/// The embedded store. Cheap to clone (shared).
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn meta(t: &impl ReadableTable<&'static str, u64>, k: &str) -> Result<u64, StoreError> {
    Ok(t.get(k).map_err(backend)?.map(|v| v.value()).unwrap_or(0))
}

/// The record of `key` as of `rev` (none if it did not exist then).
fn at_revision(
    hist: &impl ReadableTable<(&'static [u8], u64), u32>,
    log: &impl ReadableTable<(u64, u32), &'static [u8]>,
    key: &[u8],
    rev: u64,
) -> Result<Option<(u64, Record)>, StoreError> {
    let mut it = hist.range((key, 0u64)..=(key, rev)).map_err(backend)?.rev();
    let Some(e) = it.next() else {
        return Ok(None);
    };
    let (k, idx) = e.map_err(backend)?;
    let r = k.value().1;
    let rec = log.get((r, idx.value())).map_err(backend)?;
    let rec = match rec {
        Some(b) => Record::decode(b.value())?,
        None => return Ok(None),
    };
    Ok((!rec.deleted).then_some((r, rec)))
}

impl Embedded {
    /// Opens (or creates) the store in `dir` (made 0700: it holds Secrets).
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(e.to_string()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| StoreError::Backend(e.to_string()))?;
        }
        let db = Database::create(dir.join("store.redb")).map_err(backend)?;
        let w = db.begin_write().map_err(backend)?;
        for t in [
            w.open_table(LOG).map(|_| ()),
            w.open_table(HIST).map(|_| ()),
            w.open_table(LATEST).map(|_| ()),
            w.open_table(META).map(|_| ()),
            w.open_table(LEASES).map(|_| ()),
            w.open_table(LEASE_KEYS).map(|_| ()),
        ] {
            t.map_err(backend)?;
        }
        w.commit().map_err(backend)?;
        let (events, _) = broadcast::channel(1024);
        let (queue, rx) = std::sync::mpsc::channel::<Pending>();
        let s = Embedded {
            inner: Arc::new(Inner {
                db,
                queue,
                writer: Mutex::new(()),
                events,
            }),
        };
        // The writer thread holds the store weakly: it ends when the store is dropped (the
        // queue's sender with it).
        let weak = Arc::downgrade(&s.inner);
        std::thread::Builder::new()
            .name("knode-store".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter().take(MAX_BATCH - 1));
                    let answers = match weak.upgrade() {
                        Some(inner) => Embedded { inner }.write_batch(batch),
                        None => return,
                    };
                    for (reply, r) in answers {
                        let _ = reply.send(r);
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the store's writer: {e}")))?;
        Ok(s)
    }

    /// Expires leases whose time is up (deleting their keys), every `every`, for as long as
    /// the store lives. Needs a tokio runtime.
    pub fn spawn_lease_reaper(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let s = Embedded { inner };
                let _ = tokio::task::spawn_blocking(move || s.reap_leases()).await;
            }
        });
    }

    fn reap_leases(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let expired: Vec<u64> = {
            let r = self.inner.db.begin_read().map_err(backend)?;
            let t = r.open_table(LEASES).map_err(backend)?;
            let mut out = Vec::new();
            for e in t.iter().map_err(backend)? {
                let (id, v) = e.map_err(backend)?;
                if v.value().1 <= now {
                    out.push(id.value());
                }
            }
            out
        };
        for id in expired {
            self.revoke(id as i64)?;
        }
        Ok(())
    }

    fn read_range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let r = self.inner.db.begin_read().map_err(backend)?;
        let m = r.open_table(META).map_err(backend)?;
        let current = meta(&m, REVISION)?;
        let compacted = meta(&m, COMPACTED)?;
        let at = match req.revision {
            0 => current,
            rev if rev < 0 => return Err(StoreError::Backend("negative revision".into())),
            rev if (rev as u64) > current => {
                return Err(StoreError::FutureRevision {
                    requested: rev,
                    current: current as i64,
                })
            }
            rev if (rev as u64) < compacted => {
                return Err(StoreError::Compacted {
                    requested: rev,
                    compacted: compacted as i64,
                })
            }
            rev => rev as u64,
        };
        let log = r.open_table(LOG).map_err(backend)?;
        let mut kvs = Vec::new();
        let mut count = 0usize;
        let mut push = |kv: KeyValue| {
            count += 1;
            if !req.count_only && (req.limit == 0 || kvs.len() < req.limit) {
                kvs.push(kv);
            }
        };
        if at == current {
            let latest = r.open_table(LATEST).map_err(backend)?;
            let mut visit = |k: &[u8], (rev, idx): (u64, u32)| -> Result<(), StoreError> {
                let b = log
                    .get((rev, idx))
                    .map_err(backend)?
                    .ok_or_else(|| StoreError::Backend(format!("no log record at {rev}")))?;
                let rec = Record::decode(b.value())?;
                debug_assert_eq!(rec.key, k);
                push(rec.kv(rev as i64));
                Ok(())
            };
            if req.range.end.is_empty() {
                if let Some(v) = latest.get(req.range.key.as_slice()).map_err(backend)? {
                    visit(&req.range.key, v.value())?;
                }
            } else {
                let iter = if req.range.end == [0] {
                    latest.range(req.range.key.as_slice()..).map_err(backend)?
                } else {
                    latest
                        .range(req.range.key.as_slice()..req.range.end.as_slice())
                        .map_err(backend)?
                };
                for e in iter {
                    let (k, v) = e.map_err(backend)?;
                    visit(k.value(), v.value())?;
                }
            }
        } else {
            // An older revision: every key that ever changed in the range, as of `at`.
            let hist = r.open_table(HIST).map_err(backend)?;
            let mut keys: Vec<Vec<u8>> = Vec::new();
            if req.range.end.is_empty() {
                keys.push(req.range.key.clone());
            } else {
                let start = (req.range.key.as_slice(), 0u64);
                let iter = hist.range(start..).map_err(backend)?;
                for e in iter {
                    let (k, _) = e.map_err(backend)?;
                    let key = k.value().0;
                    if !req.range.contains(key) {
                        break;
                    }
                    if keys.last().map(Vec::as_slice) != Some(key) {
                        keys.push(key.to_vec());
                    }
                }
            }
            for k in keys {
                if let Some((rev, rec)) = at_revision(&hist, &log, &k, at)? {
                    push(rec.kv(rev as i64));
                }
            }
        }
        Ok(RangeResponse {
            more: req.limit > 0 && count > req.limit && !req.count_only,
            kvs,
            count,
            revision: current as i64,
        })
    }

    /// One transaction, alone: its own redb transaction and commit.
    fn write(&self, t: &Txn) -> Result<TxnResponse, StoreError> {
        let _w = self.inner.writer.lock().expect("writer");
        let w = self.inner.db.begin_write().map_err(backend)?;
        let (resp, events) = self.apply(&w, t)?;
        w.commit().map_err(backend)?;
        if !events.is_empty() {
            // Nobody listening is fine.
            let _ = self.inner.events.send(Arc::new(events));
        }
        Ok(resp)
    }

    /// Group commit: the transactions waiting are applied one after another, each at its
    /// own revision, in one redb transaction and one fsync; then each is answered and its
    /// events sent, in order. A transaction that fails (a missing lease) fails before it
    /// changes anything, so the others still commit; a failed commit fails them all.
    /// Returns the answers, to be sent once the caller no longer holds the store (so that a
    /// caller who drops the store after its last write finds the file closed).
    fn write_batch(&self, batch: Vec<Pending>) -> Vec<(Reply, Result<TxnResponse, StoreError>)> {
        let _w = self.inner.writer.lock().expect("writer");
        let mut results = Vec::with_capacity(batch.len());
        let fail_all = |batch: Vec<Pending>, e: String| {
            batch
                .into_iter()
                .map(|p| (p.reply, Err(StoreError::Backend(e.clone()))))
                .collect()
        };
        let w = match self.inner.db.begin_write() {
            Ok(w) => w,
            Err(e) => return fail_all(batch, backend(e).to_string()),
        };
        for p in &batch {
            results.push(self.apply(&w, &p.txn));
        }
        if let Err(e) = w.commit() {
            return fail_all(batch, backend(e).to_string());
        }
        batch
            .into_iter()
            .zip(results)
            .map(|(p, r)| match r {
                Ok((resp, events)) => {
                    if !events.is_empty() {
                        let _ = self.inner.events.send(Arc::new(events));
                    }
                    (p.reply, Ok(resp))
                }
                Err(e) => (p.reply, Err(e)),
            })
            .collect()
    }

    /// Applies `t` inside the open write transaction `w`.
    fn apply(
        &self,
        w: &redb::WriteTransaction,
        t: &Txn,
    ) -> Result<(TxnResponse, Vec<Event>), StoreError> {
        {
            let mut m = w.open_table(META).map_err(backend)?;
            let mut log = w.open_table(LOG).map_err(backend)?;
            let mut hist = w.open_table(HIST).map_err(backend)?;
            let mut latest = w.open_table(LATEST).map_err(backend)?;
            let leases = w.open_table(LEASES).map_err(backend)?;
            let mut lease_keys = w.open_table(LEASE_KEYS).map_err(backend)?;
            let current = meta(&m, REVISION)?;
            let get = |latest: &redb::Table<&[u8], (u64, u32)>,
                       log: &redb::Table<(u64, u32), &[u8]>,
                       k: &[u8]|
             -> Result<Option<KeyValue>, StoreError> {
                let Some(v) = latest.get(k).map_err(backend)? else {
                    return Ok(None);
                };
                let (rev, idx) = v.value();
                let b = log
                    .get((rev, idx))
                    .map_err(backend)?
                    .ok_or_else(|| StoreError::Backend(format!("no log record at {rev}")))?;
                Ok(Some(Record::decode(b.value())?.kv(rev as i64)))
            };
            let mut ok = true;
            for c in &t.compare {
                if !c.holds(get(&latest, &log, &c.key)?.as_ref()) {
                    ok = false;
                    break;
                }
            }
            let ops = if ok { &t.success } else { &t.failure };
            // Checked before anything is written: in a group commit, a failed transaction
            // must leave no trace.
            for op in ops {
                if let Op::Put { lease, .. } = op {
                    if *lease != 0 && leases.get(*lease as u64).map_err(backend)?.is_none() {
                        return Err(StoreError::LeaseNotFound(*lease));
                    }
                }
            }
            let writes = ops.iter().any(|o| !matches!(o, Op::Get(_)));
            let rev = if writes { current + 1 } else { current };
            let mut idx = 0u32;
            let mut events = Vec::new();
            let mut responses = Vec::new();
            for op in ops {
                match op {
                    Op::Get(range) => {
                        let mut kvs = Vec::new();
                        if range.end.is_empty() {
                            kvs.extend(get(&latest, &log, &range.key)?);
                        } else {
                            let keys: Vec<Vec<u8>> = latest
                                .range(range.key.as_slice()..)
                                .map_err(backend)?
                                .map(|e| e.map(|(k, _)| k.value().to_vec()))
                                .take_while(|k| k.as_ref().map_or(true, |k| range.contains(k)))
                                .collect::<Result<_, _>>()
                                .map_err(backend)?;
                            for k in keys {
                                kvs.extend(get(&latest, &log, &k)?);
                            }
                        }
                        responses.push(OpResponse::Get { kvs });
                    }
                    Op::Put { key, value, lease } => {
                        if *lease != 0 && leases.get(*lease as u64).map_err(backend)?.is_none() {
                            return Err(StoreError::LeaseNotFound(*lease));
                        }
                        let prev = get(&latest, &log, key)?;
                        let rec = Record {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: prev
                                .as_ref()
                                .map_or(rev as i64, |p| p.create_revision),
                            version: prev.as_ref().map_or(1, |p| p.version + 1),
                            lease: *lease,
                            deleted: false,
                        };
                        if let Some(p) = &prev {
                            if p.lease != 0 {
                                lease_keys
                                    .remove((p.lease as u64, key.as_slice()))
                                    .map_err(backend)?;
                            }
                        }
                        if *lease != 0 {
                            lease_keys
                                .insert((*lease as u64, key.as_slice()), ())
                                .map_err(backend)?;
                        }
                        log.insert((rev, idx), rec.encode().as_slice())
                            .map_err(backend)?;
                        hist.insert((key.as_slice(), rev), idx).map_err(backend)?;
                        latest.insert(key.as_slice(), (rev, idx)).map_err(backend)?;
                        idx += 1;
                        events.push(Event {
                            kind: EventKind::Put,
                            kv: rec.kv(rev as i64),
                            prev: prev.clone(),
                        });
                        responses.push(OpResponse::Put { prev });
                    }
                    Op::Delete(range) => {
                        let keys: Vec<Vec<u8>> = if range.end.is_empty() {
                            vec![range.key.clone()]
                        } else {
                            latest
                                .range(range.key.as_slice()..)
                                .map_err(backend)?
                                .map(|e| e.map(|(k, _)| k.value().to_vec()))
                                .take_while(|k| k.as_ref().map_or(true, |k| range.contains(k)))
                                .collect::<Result<_, _>>()
                                .map_err(backend)?
                        };
                        let mut deleted = Vec::new();
                        for k in keys {
                            let Some(prev) = get(&latest, &log, &k)? else {
                                continue;
                            };
                            let rec = Record {
                                key: k.clone(),
                                value: Vec::new(),
                                create_revision: 0,
                                version: 0,
                                lease: 0,
                                deleted: true,
                            };
                            if prev.lease != 0 {
                                lease_keys
                                    .remove((prev.lease as u64, k.as_slice()))
                                    .map_err(backend)?;
                            }
                            log.insert((rev, idx), rec.encode().as_slice())
                                .map_err(backend)?;
                            hist.insert((k.as_slice(), rev), idx).map_err(backend)?;
                            latest.remove(k.as_slice()).map_err(backend)?;
                            idx += 1;
                            events.push(Event {
                                kind: EventKind::Delete,
                                kv: KeyValue {
                                    key: k.clone(),
                                    value: Vec::new(),
                                    create_revision: 0,
                                    mod_revision: rev as i64,
                                    version: 0,
                                    lease: 0,
                                },
                                prev: Some(prev.clone()),
                            });
                            deleted.push(prev);
                        }
                        responses.push(OpResponse::Delete { deleted });
                    }
                }
            }
            if writes {
                m.insert(REVISION, rev).map_err(backend)?;
            }
            Ok((
                TxnResponse {
                    succeeded: ok,
                    revision: rev as i64,
                    responses,
                },
                events,
            ))
        }
    }

    /// The events of revisions `from..=to` for keys in `range`, from the log.
    fn history(
        &self,
        range: &KeyRange,
        from: u64,
        to: u64,
        prev: bool,
    ) -> Result<Vec<Event>, StoreError> {
        let r = self.inner.db.begin_read().map_err(backend)?;
        let compacted = meta(&r.open_table(META).map_err(backend)?, COMPACTED)?;
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from as i64,
                compacted: compacted as i64,
            });
        }
        let log = r.open_table(LOG).map_err(backend)?;
        let hist = r.open_table(HIST).map_err(backend)?;
        let mut out = Vec::new();
        for e in log.range((from, 0u32)..=(to, u32::MAX)).map_err(backend)? {
            let (k, v) = e.map_err(backend)?;
            let rec = Record::decode(v.value())?;
            if !range.contains(&rec.key) {
                continue;
            }
            let rev = k.value().0;
            let before = if prev || rec.deleted {
                at_revision(&hist, &log, &rec.key, rev - 1)?.map(|(r, p)| p.kv(r as i64))
            } else {
                None
            };
            out.push(if rec.deleted {
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: rec.key.clone(),
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: rev as i64,
                        version: 0,
                        lease: 0,
                    },
                    prev: if prev { before } else { None },
                }
            } else {
                Event {
                    kind: EventKind::Put,
                    kv: rec.kv(rev as i64),
                    prev: before,
                }
            });
        }
        Ok(out)
    }

    fn compact_to(&self, to: u64) -> Result<(), StoreError> {
        let _w = self.inner.writer.lock().expect("writer");
        let w = self.inner.db.begin_write().map_err(backend)?;
        {
            let mut m = w.open_table(META).map_err(backend)?;
            let current = meta(&m, REVISION)?;
            let compacted = meta(&m, COMPACTED)?;
            if to > current {
                return Err(StoreError::FutureRevision {
                    requested: to as i64,
                    current: current as i64,
                });
            }
            if to <= compacted {
                return Err(StoreError::Compacted {
                    requested: to as i64,
                    compacted: compacted as i64,
                });
            }
            let mut log = w.open_table(LOG).map_err(backend)?;
            let mut hist = w.open_table(HIST).map_err(backend)?;
            // Every change before `to` that a later change at or before `to` replaced, and
            // every deletion before `to`, goes; the value each key had at `to` stays.
            let old: Vec<(u64, u32, Vec<u8>, bool)> = log
                .range((0u64, 0u32)..(to, 0u32))
                .map_err(backend)?
                .map(|e| {
                    let (k, v) = e.map_err(backend)?;
                    let rec = Record::decode(v.value())?;
                    Ok((k.value().0, k.value().1, rec.key, rec.deleted))
                })
                .collect::<Result<_, StoreError>>()?;
            for (rev, idx, key, deleted) in old {
                let newer = hist
                    .range((key.as_slice(), rev + 1)..=(key.as_slice(), to))
                    .map_err(backend)?
                    .next()
                    .is_some();
                if newer || deleted {
                    log.remove((rev, idx)).map_err(backend)?;
                    hist.remove((key.as_slice(), rev)).map_err(backend)?;
                }
            }
            m.insert(COMPACTED, to).map_err(backend)?;
        }
        w.commit().map_err(backend)?;
        Ok(())
    }

    fn grant(&self, ttl: i64) -> Result<i64, StoreError> {
        let _w = self.inner.writer.lock().expect("writer");
        let w = self.inner.db.begin_write().map_err(backend)?;
        let id = {
            let mut m = w.open_table(META).map_err(backend)?;
            let id = meta(&m, NEXT_LEASE)?.max(1);
            m.insert(NEXT_LEASE, id + 1).map_err(backend)?;
            let mut l = w.open_table(LEASES).map_err(backend)?;
            l.insert(id, (ttl, now_ms() + ttl.max(1) as u64 * 1000))
                .map_err(backend)?;
            id
        };
        w.commit().map_err(backend)?;
        Ok(id as i64)
    }

    fn keep_alive(&self, id: i64) -> Result<(), StoreError> {
        let _w = self.inner.writer.lock().expect("writer");
        let w = self.inner.db.begin_write().map_err(backend)?;
        {
            let mut l = w.open_table(LEASES).map_err(backend)?;
            let ttl = match l.get(id as u64).map_err(backend)? {
                Some(v) => v.value().0,
                None => return Err(StoreError::LeaseNotFound(id)),
            };
            l.insert(id as u64, (ttl, now_ms() + ttl.max(1) as u64 * 1000))
                .map_err(backend)?;
        }
        w.commit().map_err(backend)?;
        Ok(())
    }

    fn revoke(&self, id: i64) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = {
            let r = self.inner.db.begin_read().map_err(backend)?;
            if r.open_table(LEASES)
                .map_err(backend)?
                .get(id as u64)
                .map_err(backend)?
                .is_none()
            {
                return Err(StoreError::LeaseNotFound(id));
            }
            let t = r.open_table(LEASE_KEYS).map_err(backend)?;
            let lo: &[u8] = &[];
            let iter = t.range((id as u64, lo)..).map_err(backend)?;
            let mut out = Vec::new();
            for e in iter {
                let (k, _) = e.map_err(backend)?;
                if k.value().0 != id as u64 {
                    break;
                }
                out.push(k.value().1.to_vec());
            }
            out
        };
        // The keys go in one revision, as etcd deletes them.
        if !keys.is_empty() {
            self.write(&Txn {
                success: keys
                    .into_iter()
                    .map(|k| Op::Delete(KeyRange::key(k)))
                    .collect(),
                ..Default::default()
            })?;
        }
        let _w = self.inner.writer.lock().expect("writer");
        let w = self.inner.db.begin_write().map_err(backend)?;
        w.open_table(LEASES)
            .map_err(backend)?
            .remove(id as u64)
            .map_err(backend)?;
        w.commit().map_err(backend)?;
        Ok(())
    }

    fn current(&self) -> Result<u64, StoreError> {
        let r = self.inner.db.begin_read().map_err(backend)?;
        meta(&r.open_table(META).map_err(backend)?, REVISION)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("a store task failed: {e}")))?
}

#[async_trait::async_trait]
impl Store for Embedded {
    async fn revision(&self) -> Result<Revision, StoreError> {
        // One key of a read transaction: read here (see `range`).
        self.current().map(|r| r as i64)
    }

    async fn range(&self, r: RangeRequest) -> Result<RangeResponse, StoreError> {
        // A single key is one B-tree lookup in pages the kernel almost always has cached:
        // read here rather than hand it to a blocking thread and back (two context switches
        // per read, a fifth of the server's time under 50 concurrent creates). Ranges may be
        // long and go to a blocking thread.
        if r.range.end.is_empty() {
            return self.read_range(&r);
        }
        let s = self.clone();
        blocking(move || s.read_range(&r)).await
    }

    async fn txn(&self, t: Txn) -> Result<TxnResponse, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.inner
            .queue
            .send(Pending { txn: t, reply })
            .map_err(|_| StoreError::Backend("the store's writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the store's writer has stopped".into()))?
    }

    async fn watch(
        &self,
        range: KeyRange,
        start: Revision,
        prev: bool,
    ) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the history: nothing committed in between is missed (what
        // both deliver is sent once, by revision).
        let mut live = self.inner.events.subscribe();
        let s = self.clone();
        let current = s.current()?;
        let from = if start <= 0 {
            current + 1
        } else {
            start as u64
        };
        let backlog = if from <= current {
            let (s2, r2) = (s.clone(), range.clone());
            blocking(move || s2.history(&r2, from, current, prev)).await?
        } else {
            Vec::new()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            // Everything up to `last` has been delivered (the backlog covers `from..=current`).
            let mut last = current.max(from - 1);
            if !backlog.is_empty() && tx.send(Ok(backlog)).await.is_err() {
                return;
            }
            loop {
                let batch = match live.recv().await {
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Closed) => return,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Read what was missed from the log.
                        let (s2, r2) = (s.clone(), range.clone());
                        let now = match s.current() {
                            Ok(n) => n,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        };
                        let missed = blocking(move || s2.history(&r2, last + 1, now, prev)).await;
                        match missed {
                            Ok(ev) => {
                                last = now;
                                if !ev.is_empty() && tx.send(Ok(ev)).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                };
                let rev = batch.first().map_or(0, |e| e.kv.mod_revision as u64);
                if rev <= last {
                    continue;
                }
                last = rev;
                let mine: Vec<Event> = batch
                    .iter()
                    .filter(|e| range.contains(&e.kv.key))
                    .map(|e| Event {
                        prev: if prev { e.prev.clone() } else { None },
                        ..e.clone()
                    })
                    .collect();
                if !mine.is_empty() && tx.send(Ok(mine)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let s = self.clone();
        blocking(move || s.compact_to(revision.max(0) as u64)).await
    }

    async fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError> {
        let s = self.clone();
        blocking(move || s.grant(ttl)).await
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<(), StoreError> {
        let s = self.clone();
        blocking(move || s.keep_alive(id)).await
    }

    async fn lease_revoke(&self, id: i64) -> Result<(), StoreError> {
        let s = self.clone();
        blocking(move || s.revoke(id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            key: b"/registry/pods/default/web".to_vec(),
            value: b"{\"kind\":\"Pod\"}".to_vec(),
            create_revision: 7,
            version: 3,
            lease: 0,
            deleted: false,
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert!(Record::decode(&r.encode()[..10]).is_err());
    }

    fn store() -> (tempfile::TempDir, Embedded) {
        let d = tempfile::tempdir().unwrap();
        let s = Embedded::open(&d.path().join("server")).unwrap();
        (d, s)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let (_d, s) = store();
        s.spawn_lease_reaper(Duration::from_millis(100));
        super::super::testsuite::run(Arc::new(s)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_survive_a_reopen_and_the_file_is_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("server");
        {
            let s = Embedded::open(&dir).unwrap();
            s.put(b"/a", b"1").await.unwrap();
            s.put(b"/a", b"2").await.unwrap();
        }
        let s = Embedded::open(&dir).unwrap();
        let kv = s.get(b"/a").await.unwrap().unwrap();
        assert_eq!(
            (kv.value.as_slice(), kv.version, kv.mod_revision),
            (&b"2"[..], 2, 2)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
