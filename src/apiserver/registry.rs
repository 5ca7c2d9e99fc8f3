//! Objects in the store: keys, encoding, and reads and writes with the API's rules for
//! resourceVersion (the store's revision), lists with selectors and continue tokens, and
//! conditional writes.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; it is set from the key's
//! `mod_revision` on every read, as the real API server does with etcd.

use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};

use super::resources::Resource;
use super::status::{ApiError, ApiResult};
use crate::api::selector::{Fields, Labels};
use crate::store::{
    Compare, KeyRange, KeyValue, Op, OpResponse, RangeRequest, Revision, Store, Txn,
};

/// Now, as `creationTimestamp` is written.
pub fn now() -> String {
    crate::api::time::rfc3339(chrono::Utc::now())
}

/// The object a stored value holds, with its resourceVersion, kind and apiVersion.
pub fn decode(r: &Resource, kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "stored object {} is not JSON: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    if r.group == "events.k8s.io" {
        v = rename(v, EVENT_FIELDS, false);
    }
    stamp(r, &mut v, kv.mod_revision);
    Ok(v)
}

/// core/v1 Event fields and their events.k8s.io/v1 names: both groups' Events are one
/// object in the store, kept in the core form (as Kubernetes converts them).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(mut v: Value, pairs: &[(&str, &str)], to_core: bool) -> Value {
    if let Some(m) = v.as_object_mut() {
        for (core, ev) in pairs {
            let (from, to) = if to_core { (ev, core) } else { (core, ev) };
            if let Some(x) = m.remove(*from) {
                m.insert(to.to_string(), x);
            }
        }
    }
    v
}

/// The stored form of an object of `r`: with its kind and apiVersion (the core ones for
/// events.k8s.io Events), without its resourceVersion.
pub fn to_storage(r: &Resource, v: &Value) -> Vec<u8> {
    let mut v = if r.group == "events.k8s.io" {
        rename(v.clone(), EVENT_FIELDS, true)
    } else {
        v.clone()
    };
    if let Some(m) = v.as_object_mut() {
        let (kind, api_version) = if r.group == "events.k8s.io" {
            ("Event".to_string(), "v1".to_string())
        } else {
            (r.kind.to_string(), r.api_version())
        };
        m.insert("kind".into(), json!(kind));
        m.insert("apiVersion".into(), json!(api_version));
    }
    encode(&v)
}

/// Sets kind, apiVersion and resourceVersion.
pub fn stamp(r: &Resource, v: &mut Value, rev: Revision) {
    if let Some(m) = v.as_object_mut() {
        m.insert("kind".into(), json!(r.kind));
        m.insert("apiVersion".into(), json!(r.api_version()));
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rev.to_string()));
    }
}

/// The stored bytes of an object of `r` as an item of a list response, with its
/// resourceVersion, written to `out` without building the object: the stored form is
/// compact JSON whose top-level `metadata` object gets the field spliced in. Events of the
/// events.k8s.io group (stored in the core form) and anything unexpected go the slow way.
pub fn write_item(r: &Resource, kv: &KeyValue, out: &mut Vec<u8>) -> ApiResult<()> {
    if r.group != "events.k8s.io" {
        if let Some(at) = metadata_body(&kv.value) {
            out.extend_from_slice(&kv.value[..at]);
            out.extend_from_slice(
                format!("\"resourceVersion\":\"{}\"", kv.mod_revision).as_bytes(),
            );
            if kv.value.get(at) != Some(&b'}') {
                out.push(b',');
            }
            out.extend_from_slice(&kv.value[at..]);
            return Ok(());
        }
    }
    let v = decode(r, kv)?;
    serde_json::to_writer(&mut *out, &v).map_err(ApiError::internal)?;
    Ok(())
}

/// Where the top-level `"metadata":{` object's body starts, scanning strings and depth.
fn metadata_body(b: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"metadata\":{";
    let (mut depth, mut i, mut in_str) = (0i32, 0usize, false);
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => {
                    if depth == 1 && b[i..].starts_with(KEY) {
                        return Some(i + KEY.len());
                    }
                    in_str = true;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth -= 1,
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// The bytes stored for an object (no resourceVersion).
pub fn encode(v: &Value) -> Vec<u8> {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("selfLink");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A dotted field of an object as a field selector reads it ("" when missing).
pub fn field(v: &Value, path: &str) -> String {
    let mut cur = v;
    for p in path.split('.') {
        cur = &cur[p];
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// The field selectors each kind supports, besides `metadata.name` and `metadata.namespace`.
pub fn selectable_fields(r: &Resource) -> &'static [&'static str] {
    match (r.group, r.kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "Event") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        ],
        ("", "Secret") => &["type"],
        ("", "Namespace") => &["status.phase"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "ReplicationController") => &["status.replicas"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        _ => &[],
    }
}

/// Checks a field selector against what the kind supports.
pub fn check_fields(r: &Resource, f: &Fields) -> ApiResult<()> {
    for (name, _, _) in &f.0 {
        if name != "metadata.name"
            && name != "metadata.namespace"
            && !selectable_fields(r).contains(&name.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {name}"
            )));
        }
    }
    Ok(())
}

fn field_value(r: &Resource, v: &Value, name: &str) -> String {
    // Events name their source component as `source`.
    if r.kind == "Event" && r.group.is_empty() && name == "source" {
        return field(v, "source.component");
    }
    if r.kind == "Event" && r.group.is_empty() && name == "reportingComponent" {
        return field(v, "reportingComponent");
    }
    field(v, name)
}

/// Whether an object passes the selectors.
pub fn selected(r: &Resource, v: &Value, labels: &Labels, fields: &Fields) -> bool {
    let l: std::collections::BTreeMap<String, String> =
        serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default();
    labels.matches(&l) && fields.matches(|f| field_value(r, v, f))
}

#[derive(Debug, Default, Clone)]
pub struct ListOptions {
    pub labels: Labels,
    pub fields: Fields,
    pub limit: usize,
    pub continue_token: Option<String>,
    /// The revision to read at (0: the latest).
    pub revision: Revision,
}

#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub revision: Revision,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

fn expired_continue() -> ApiError {
    ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
}

#[derive(Clone)]
pub struct Registry {
    pub store: Arc<dyn Store>,
}

impl Registry {
    /// The latest object and its revision.
    pub async fn get_kv(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<(Value, Revision)>> {
        match self.store.get(r.key(ns, Some(name)).as_bytes()).await? {
            Some(kv) => Ok(Some((decode(r, &kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub async fn get(&self, r: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        self.get_kv(r, ns, name)
            .await?
            .map(|(v, _)| v)
            .ok_or_else(|| ApiError::not_found(r, name))
    }

    /// Lists `r` in `ns` (none: all namespaces).
    pub async fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        o: &ListOptions,
    ) -> ApiResult<ListResult> {
        let mut items = Vec::new();
        let filtering = !o.labels.is_empty() || !o.fields.0.is_empty();
        let mut res = self
            .scan(r, ns, o, |kv| {
                let v = decode(r, kv)?;
                if !filtering || selected(r, &v, &o.labels, &o.fields) {
                    items.push(v);
                    return Ok(true);
                }
                Ok(false)
            })
            .await?;
        res.items = items;
        Ok(res)
    }

    /// Walks the stored objects a list selects, page by page from the store, handing each to
    /// `visit`, which says whether it selected it (it counts against the limit). The result
    /// has no items: the visitor keeps what it wants (a LIST writes its response as it goes,
    /// so that memory follows one page, not the whole collection).
    pub async fn scan(
        &self,
        r: &Resource,
        ns: Option<&str>,
        o: &ListOptions,
        mut visit: impl FnMut(&KeyValue) -> ApiResult<bool> + Send,
    ) -> ApiResult<ListResult> {
        let prefix = r.key(ns, None);
        let mut range = KeyRange::prefix(prefix.as_bytes().to_vec());
        let mut revision = o.revision;
        if let Some(tok) = &o.continue_token {
            let bad = || {
                ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
            };
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(tok.trim_end_matches('='))
                .map_err(|_| bad())?;
            let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
            if t.v != "meta.k8s.io/v1" || t.rv <= 0 {
                return Err(bad());
            }
            let start = format!("{prefix}{}", t.start);
            if !start.starts_with(&prefix) || start.contains("/../") {
                return Err(bad());
            }
            range.key = start.into_bytes();
            revision = t.rv;
        }
        let filtering = !o.labels.is_empty() || !o.fields.0.is_empty();
        let mut count = 0usize;
        let mut read_rev = revision;
        let mut next: Option<Vec<u8>> = None;
        let mut remaining = None;
        loop {
            // Read in pages even for an unlimited list: etcd answers at most a few MiB at a
            // time, and memory stays bounded by the page, not the collection.
            let batch = if o.limit > 0 {
                (o.limit - count).max(if filtering { 256 } else { 1 })
            } else {
                1000
            };
            let resp = match self
                .store
                .range(RangeRequest {
                    range: range.clone(),
                    revision: read_rev,
                    limit: batch,
                    count_only: false,
                })
                .await
            {
                Ok(r) => r,
                Err(crate::store::StoreError::Compacted { .. }) if o.continue_token.is_some() => {
                    return Err(expired_continue())
                }
                Err(e) => return Err(e.into()),
            };
            if read_rev == 0 {
                read_rev = resp.revision;
            }
            let n = resp.kvs.len();
            let mut last_key = None;
            for kv in &resp.kvs {
                last_key = Some(kv.key.clone());
                // A namespaced list must not reach into another namespace's keys.
                if (ns.is_none() || kv.key.starts_with(prefix.as_bytes())) && visit(kv)? {
                    count += 1;
                }
                if o.limit > 0 && count >= o.limit {
                    break;
                }
            }
            let stopped_early = o.limit > 0 && count >= o.limit;
            let consumed_all = last_key.as_ref() == resp.kvs.last().map(|k| &k.key);
            if stopped_early {
                let lk = last_key.unwrap_or_default();
                let more = !consumed_all || resp.more;
                if more {
                    let mut k = lk.clone();
                    k.push(0);
                    next = Some(k);
                    if !filtering {
                        remaining =
                            Some((resp.count.saturating_sub(n)) as i64).filter(|_| consumed_all);
                    }
                }
                break;
            }
            if !resp.more || n == 0 {
                break;
            }
            let mut k = last_key.unwrap_or_default();
            k.push(0);
            range.key = k;
        }
        let continue_token = next.map(|k| {
            let start = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let t = ContinueToken {
                v: "meta.k8s.io/v1".into(),
                rv: read_rev,
                start,
            };
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&t).unwrap_or_default())
        });
        if continue_token.is_none() {
            remaining = None;
        }
        Ok(ListResult {
            items: Vec::new(),
            revision: read_rev,
            continue_token,
            remaining: remaining.filter(|n| *n > 0),
        })
    }

    /// Writes `obj` if its key is still at `rev` (0: absent), with the `extra` writes
    /// (allocations) under their own conditions, all in one transaction. On failure, the
    /// key's current value (if any) is returned.
    async fn put_if(
        &self,
        r: &Resource,
        ns: Option<&str>,
        obj: &mut Value,
        rev: Revision,
        extra: (Vec<Compare>, Vec<Op>),
    ) -> ApiResult<Result<(), bool>> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = r.key(ns, Some(&name));
        let mut compare = vec![Compare::mod_revision(key.clone(), rev)];
        compare.extend(extra.0);
        let mut success = vec![Op::put(key.clone(), to_storage(r, obj))];
        success.extend(extra.1);
        let resp = self
            .store
            .txn(Txn {
                compare,
                success,
                failure: vec![Op::Get(KeyRange::key(key))],
            })
            .await?;
        if !resp.succeeded {
            let exists =
                matches!(resp.responses.first(), Some(OpResponse::Get { kvs }) if !kvs.is_empty());
            return Ok(Err(exists));
        }
        stamp(r, obj, resp.revision);
        Ok(Ok(()))
    }

    /// Stores a new object; fails if the name is taken. `extra` writes (allocations) commit
    /// with it, under their own conditions.
    pub async fn create(
        &self,
        r: &Resource,
        ns: Option<&str>,
        mut obj: Value,
        extra: (Vec<Compare>, Vec<Op>),
    ) -> ApiResult<Value> {
        match self.put_if(r, ns, &mut obj, 0, extra).await? {
            Ok(()) => Ok(obj),
            Err(true) => Err(ApiError::already_exists(
                r,
                obj["metadata"]["name"].as_str().unwrap_or(""),
            )),
            Err(false) => Err(ApiError::new(
                409,
                "Conflict",
                "an address or port was taken while this object was created; try again",
            )),
        }
    }

    /// Replaces the object if it is still at `rev`.
    pub async fn update(
        &self,
        r: &Resource,
        ns: Option<&str>,
        mut obj: Value,
        rev: Revision,
        extra: (Vec<Compare>, Vec<Op>),
    ) -> ApiResult<Value> {
        match self.put_if(r, ns, &mut obj, rev, extra).await? {
            Ok(()) => Ok(obj),
            Err(_) => Err(ApiError::modified(
                r,
                obj["metadata"]["name"].as_str().unwrap_or(""),
            )),
        }
    }

    /// Removes the object if it is still at `rev`; returns its last state.
    pub async fn delete(
        &self,
        r: &Resource,
        ns: Option<&str>,
        mut last: Value,
        rev: Revision,
        extra: Vec<Op>,
    ) -> ApiResult<Value> {
        let name = last["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = r.key(ns, Some(&name));
        let mut success = vec![Op::Delete(KeyRange::key(key.clone()))];
        success.extend(extra);
        let resp = self
            .store
            .txn(Txn {
                compare: vec![Compare::mod_revision(key, rev)],
                success,
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(ApiError::modified(r, &name));
        }
        stamp(r, &mut last, resp.revision);
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    fn kv(value: &str) -> KeyValue {
        KeyValue {
            key: b"/registry/configmaps/default/x".to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 42,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn list_items_get_their_resource_version_spliced_in_the_right_place() {
        let r = find("", "v1", "configmaps").unwrap();
        for stored in [
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            r#"{"binaryData":{"k":"\"metadata\":{"},"data":{"a":"\"metadata\":{\\"},"metadata":{"name":"x"}}"#,
            r#"{"data":{"nested":"x"},"deep":{"metadata":{"name":"wrong"}},"metadata":{}}"#,
        ] {
            let mut out = Vec::new();
            write_item(r, &kv(stored), &mut out).unwrap();
            let got: Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
            let mut want: Value = serde_json::from_str(stored).unwrap();
            want["metadata"]["resourceVersion"] = json!("42");
            assert_eq!(got, want, "{stored}");
        }
    }
}
