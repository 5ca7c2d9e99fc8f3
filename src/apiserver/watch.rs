//! Watches: store events turned into the API's ADDED / MODIFIED / DELETED events, filtered
//! by selectors (an object leaving the selection is DELETED for the watcher, one entering it
//! ADDED, as with the real watch cache), with bookmarks and the watch-list start.

use serde_json::{json, Value};

use super::registry::{decode, selected, Registry};
use super::resources::Resource;
use super::status::{ApiError, ApiResult};
use crate::api::selector::{Fields, Labels};
use crate::store::{EventKind, KeyRange, Revision, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    pub kind: &'static str,
    pub object: Value,
}

pub struct Watch {
    rx: crate::store::WatchStream,
    r: &'static Resource,
    prefix: Vec<u8>,
    labels: Labels,
    fields: Fields,
    pending: std::collections::VecDeque<WatchEvent>,
    pub last: Revision,
}

impl Watch {
    /// Events after `after` (the client's resourceVersion).
    pub async fn start(
        reg: &Registry,
        r: &'static Resource,
        ns: Option<&str>,
        after: Revision,
        labels: Labels,
        fields: Fields,
    ) -> ApiResult<Watch> {
        let prefix = r.key(ns, None).into_bytes();
        let rx = match reg
            .store
            .watch(KeyRange::prefix(prefix.clone()), after + 1, true)
            .await
        {
            Ok(rx) => rx,
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {} ({})",
                    requested - 1,
                    compacted
                )))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Watch {
            rx,
            r,
            prefix,
            labels,
            fields,
            pending: Default::default(),
            last: after,
        })
    }

    /// The next event; `None` when the store ended the watch (the client re-watches from
    /// its last revision).
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ApiError>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            let batch = match self.rx.recv().await? {
                Ok(b) => b,
                Err(StoreError::Compacted {
                    requested,
                    compacted,
                }) => {
                    return Some(Err(ApiError::gone(format!(
                        "too old resource version: {} ({compacted})",
                        requested - 1
                    ))))
                }
                Err(_) => return None,
            };
            for ev in batch {
                if !ev.kv.key.starts_with(&self.prefix) {
                    continue;
                }
                self.last = self.last.max(ev.kv.mod_revision);
                if let Some(e) = self.convert(ev) {
                    self.pending.push_back(e);
                }
            }
        }
    }

    fn sel(&self, v: &Value) -> bool {
        selected(self.r, v, &self.labels, &self.fields)
    }

    fn convert(&self, ev: crate::store::Event) -> Option<WatchEvent> {
        let r = self.r;
        let prev = ev.prev.as_ref().and_then(|p| decode(r, p).ok());
        let prev_in = prev.as_ref().is_some_and(|p| self.sel(p));
        match ev.kind {
            EventKind::Put => {
                let obj = decode(r, &ev.kv).ok()?;
                let now_in = self.sel(&obj);
                let kind = match (prev.is_some() && prev_in, now_in) {
                    (false, true) => "ADDED",
                    (true, true) => "MODIFIED",
                    (true, false) => "DELETED",
                    (false, false) => return None,
                };
                Some(WatchEvent { kind, object: obj })
            }
            EventKind::Delete => {
                let mut obj = prev?;
                if !prev_in {
                    return None;
                }
                super::registry::stamp(r, &mut obj, ev.kv.mod_revision);
                Some(WatchEvent {
                    kind: "DELETED",
                    object: obj,
                })
            }
        }
    }
}

/// A BOOKMARK at `rev`; `initial_end` marks the end of a watch-list's initial events.
pub fn bookmark(r: &Resource, rev: Revision, initial_end: bool) -> WatchEvent {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    WatchEvent {
        kind: "BOOKMARK",
        object: json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": meta}),
    }
}
