//! The API server's storage, shaped like etcd v3 (what kube-apiserver uses of it): keys with
//! revisions, ranges read at a revision, transactions that compare a key's `mod_revision`, watches
//! from a revision with ordered events, compaction, and leases.
//!
//! Every write is one revision of the whole store (a transaction's operations share it). A
//! key's `create_revision`, `mod_revision` and `version` follow etcd's rules, so that
//! `resourceVersion` can be the revision and optimistic concurrency is a compare on
//! `mod_revision`. Two backends implement [`Store`]: [`embedded`] (the default: one redb file
//! under `<root>/server/`) and, for several servers, etcd. [`testsuite`] is the conformance suite
//! both must pass (containerd's snapshotter testsuite is the model).

#![forbid(unsafe_code)]

pub mod embedded;
pub mod etcd;
pub mod testsuite;

use crate::api::error::{Classify, ErrorClass};

/// A store revision (etcd's `int64`; 0 means "none" or "now", as in etcd).
pub type Revision = i64;

/// A key's value at some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// The revision of its last write.
    pub mod_revision: Revision,
    /// Writes since it was created: 1 after the create.
    pub version: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// Keys from `key` up to (not including) `end`; `end` empty: only `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub end: Vec<u8>,
}

impl KeyRange {
    pub fn key(key: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            key: key.into(),
            end: Vec::new(),
        }
    }

    /// Every key starting with `prefix` (etcd's `WithPrefix`).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> KeyRange {
        let key = prefix.into();
        let end = prefix_end(&key);
        KeyRange { key, end }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            return k == self.key.as_slice();
        }
        k >= self.key.as_slice() && (self.end == [0] || k < self.end.as_slice())
    }
}

/// The end of a prefix range: the prefix with its last byte below 0xff incremented (`[0]`,
/// every key, when there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// Read at this revision (0: the current one).
    pub revision: Revision,
    /// At most this many keys (0: no limit); `more` says if there were others.
    pub limit: usize,
    pub count_only: bool,
}

impl Default for KeyRange {
    fn default() -> KeyRange {
        KeyRange::key(Vec::new())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    /// Keys in the range (all of them, whatever the limit).
    pub count: usize,
    /// The store's revision when the read was made.
    pub revision: Revision,
}

/// What a transaction compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    ModRevision(Revision),
    CreateRevision(Revision),
    Version(i64),
    Value(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// `key`'s field `op` target (a missing key has revisions and version 0 and no value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CmpOp,
    pub target: Target,
}

impl Compare {
    /// The key's `mod_revision` equals `rev` (0: the key does not exist).
    pub fn mod_revision(key: impl Into<Vec<u8>>, rev: Revision) -> Compare {
        Compare {
            key: key.into(),
            op: CmpOp::Equal,
            target: Target::ModRevision(rev),
        }
    }

    /// Whether `kv` (none: the key is missing) satisfies it.
    pub fn holds(&self, kv: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ord = match &self.target {
            Target::ModRevision(r) => kv.map_or(0, |k| k.mod_revision).cmp(r),
            Target::CreateRevision(r) => kv.map_or(0, |k| k.create_revision).cmp(r),
            Target::Version(v) => kv.map_or(0, |k| k.version).cmp(v),
            Target::Value(v) => match kv {
                None => return false,
                Some(k) => k.value.as_slice().cmp(v.as_slice()),
            },
        };
        match self.op {
            CmpOp::Equal => ord == Ordering::Equal,
            CmpOp::NotEqual => ord != Ordering::Equal,
            CmpOp::Less => ord == Ordering::Less,
            CmpOp::Greater => ord == Ordering::Greater,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(KeyRange),
    Get(KeyRange),
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }
}

/// If every compare holds, `success` runs, else `failure`; writes share one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// The key's previous value, if it had one.
    Put {
        prev: Option<KeyValue>,
    },
    /// The keys deleted, as they were.
    Delete {
        deleted: Vec<KeyValue>,
    },
    Get {
        kvs: Vec<KeyValue>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The store's revision after the transaction (its own, if it wrote).
    pub revision: Revision,
    pub responses: Vec<OpResponse>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change: for a delete, `kv` holds the key and the deletion's revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

/// What a watch delivers: the events of one or more revisions, in order, or why it ended.
pub type WatchStream = tokio::sync::mpsc::Receiver<Result<Vec<Event>, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The revision asked for was compacted away (kube-apiserver answers 410 Gone).
    #[error("required revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The revision asked for is newer than the store's.
    #[error("required revision {requested} is a future revision (current {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
    /// The watch could not keep up and was ended; start a new one from the last revision seen.
    #[error("the watch fell behind and was closed")]
    WatchClosed,
    /// The backend failed (a disk error, a corrupt file, an unreachable etcd).
    #[error("storage: {0}")]
    Backend(String),
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            StoreError::Compacted { .. } => ErrorClass::Expired,
            StoreError::FutureRevision { .. } => ErrorClass::Transient,
            StoreError::LeaseNotFound(_) => ErrorClass::NotFound,
            StoreError::WatchClosed => ErrorClass::Transient,
            StoreError::Backend(_) => ErrorClass::Internal,
        }
    }
}

/// An etcd-v3-shaped key-value store.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;
    async fn range(&self, r: RangeRequest) -> Result<RangeResponse, StoreError>;
    async fn txn(&self, t: Txn) -> Result<TxnResponse, StoreError>;
    /// Events for keys in `range` from `start` on (0: from the next write); `prev` asks for
    /// the previous value with each event. Starting before the compacted revision fails with
    /// `Compacted`.
    async fn watch(
        &self,
        range: KeyRange,
        start: Revision,
        prev: bool,
    ) -> Result<WatchStream, StoreError>;
    /// Forgets the history before `revision` (the latest value of every key stays).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
    /// A lease that expires `ttl` seconds after its grant or last keep-alive, deleting the keys
    /// attached to it. Returns its ID.
    async fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError>;
    async fn lease_keep_alive(&self, id: i64) -> Result<(), StoreError>;
    async fn lease_revoke(&self, id: i64) -> Result<(), StoreError>;

    /// Puts `value` at `key`; returns the new revision.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<Revision, StoreError> {
        let r = self
            .txn(Txn {
                success: vec![Op::put(key, value)],
                ..Default::default()
            })
            .await?;
        Ok(r.revision)
    }

    /// The latest value of `key`.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .range(RangeRequest {
                range: KeyRange::key(key),
                ..Default::default()
            })
            .await?;
        Ok(r.kvs.into_iter().next())
    }
}
