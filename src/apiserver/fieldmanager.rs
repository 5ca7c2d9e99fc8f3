//! Field ownership (`metadata.managedFields`) and server-side apply, after
//! sigs.k8s.io/structured-merge-diff (the library the real API server uses): every write
//! records which fields its manager set; an apply merges the manager's configuration into
//! the object, removes the fields the manager applied last time and no longer does (unless
//! another manager owns them), and fails with 409 when it would change a field another
//! manager owns, unless `force=true` takes the field over.
//!
//! Written here rather than taken from a crate: there is no maintained Rust port of
//! structured-merge-diff. The types come from the vendored 1.37 schemas (`schema.rs`): list
//! types and map keys (`x-kubernetes-list-type`, `-list-map-keys`, or the patch strategy and
//! merge key where those are absent, as kube-openapi's converter does) and atomic maps.
//!
//! Simplifications, each harmless to clients: a struct-valued field is never a member of a
//! set by itself (only maps, list items and leaves are; upstream marks a struct member when
//! it was absent before, which depends on Go's zero values); update managers are not capped
//! at ten; the client-side `last-applied-configuration` annotation is not migrated.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::resources::Resource;
use super::schema;
use super::status::ApiError;

/// A set of field paths, as a tree of path elements (`f:name`, `k:{"name":"x"}`,
/// `v:"x"`); `member` says the path to this node is itself in the set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Set {
    member: bool,
    children: BTreeMap<String, Set>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(Set::is_empty)
    }

    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((h, t)) => self.children.entry(h.clone()).or_default().insert(t),
        }
    }

    fn union(&mut self, o: &Set) {
        self.member |= o.member;
        for (k, c) in &o.children {
            self.children.entry(k.clone()).or_default().union(c);
        }
    }

    /// The paths in `self` and not in `o`.
    fn difference(&self, o: &Set) -> Set {
        Set {
            member: self.member && !o.member,
            children: self
                .children
                .iter()
                .filter_map(|(k, c)| {
                    let d = match o.children.get(k) {
                        Some(oc) => c.difference(oc),
                        None => c.clone(),
                    };
                    (!d.is_empty()).then(|| (k.clone(), d))
                })
                .collect(),
        }
    }

    fn intersection(&self, o: &Set) -> Set {
        Set {
            member: self.member && o.member,
            children: self
                .children
                .iter()
                .filter_map(|(k, c)| {
                    let i = c.intersection(o.children.get(k)?);
                    (!i.is_empty()).then(|| (k.clone(), i))
                })
                .collect(),
        }
    }

    /// Every member path, parents before children.
    fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut out);
        out
    }

    fn walk(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.walk(prefix, out);
            prefix.pop();
        }
    }

    /// Parses `fieldsV1` (`{"f:spec":{"f:replicas":{}},"f:metadata":{".":{}}}`).
    pub fn from_fields_v1(v: &Value) -> Set {
        let mut s = Set::default();
        if let Some(m) = v.as_object() {
            if m.is_empty() {
                s.member = true;
            }
            for (k, c) in m {
                if k == "." {
                    s.member = true;
                } else {
                    s.children.insert(k.clone(), Set::from_fields_v1(c));
                }
            }
        }
        s
    }

    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            if !c.is_empty() {
                m.insert(k.clone(), c.to_fields_v1());
            }
        }
        Value::Object(m)
    }
}

/// A path as upstream prints it in conflicts: `.spec.containers[name="app"].image`.
fn display(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

// --- Types from the schemas ---

#[derive(Clone, Copy)]
enum Ty {
    /// A leaf: a scalar, an atomic list or map, or anything without a schema.
    Leaf,
    /// An object with declared fields.
    Struct(&'static Value),
    /// A map with any keys, granular (labels).
    Map(Option<&'static Value>),
    /// A list whose items are told apart by keys or by value.
    List(&'static Value, ListKind),
}

#[derive(Clone, Copy)]
enum ListKind {
    Set,
    Keys(&'static Value),
}

const NO_KEYS: &Value = &Value::Null;

fn ty(s: Option<&'static Value>) -> Ty {
    let Some(s) = s else { return Ty::Leaf };
    let d = if s.get("properties").is_some()
        || s.get("additionalProperties").is_some()
        || s.get("items").is_some()
    {
        s
    } else {
        schema::resolve(s).unwrap_or(s)
    };
    if s["x-kubernetes-map-type"] == "atomic" || d["x-kubernetes-map-type"] == "atomic" {
        return Ty::Leaf;
    }
    if d.get("properties").is_some() {
        return Ty::Struct(d);
    }
    if let Some(ap) = d.get("additionalProperties").filter(|a| a.is_object()) {
        return Ty::Map(Some(ap));
    }
    if let Some(items) = d.get("items") {
        let strategy = s["x-kubernetes-patch-strategy"].as_str().unwrap_or("");
        let merge = strategy.split(',').any(|x| x == "merge");
        let kind = match s["x-kubernetes-list-type"].as_str() {
            Some("set") => ListKind::Set,
            Some("map") => ListKind::Keys(s.get("x-kubernetes-list-map-keys").unwrap_or(NO_KEYS)),
            Some(_) => return Ty::Leaf,
            None if merge && s.get("x-kubernetes-patch-merge-key").is_some() => {
                ListKind::Keys(&s["x-kubernetes-patch-merge-key"])
            }
            None if merge => ListKind::Set,
            None => return Ty::Leaf,
        };
        return Ty::List(items, kind);
    }
    Ty::Leaf
}

fn field_ty(t: Ty, key: &str) -> Ty {
    match t {
        Ty::Struct(d) => ty(schema::property(d, key)),
        Ty::Map(elem) => ty(elem),
        _ => Ty::Leaf,
    }
}

/// The path element of a list item: its keys (a key left out that the schemas default is
/// taken at its default, as upstream's OpenAPI carries `protocol: TCP`), or its value.
fn item_pe(kind: ListKind, item: &Value) -> String {
    match kind {
        ListKind::Set => format!("v:{item}"),
        ListKind::Keys(keys) => {
            let names: Vec<&str> = match keys {
                Value::String(k) => vec![k.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let mut m = Map::new();
            for k in names {
                match item.get(k) {
                    Some(v) if !v.is_null() => {
                        m.insert(k.into(), v.clone());
                    }
                    _ if k == "protocol" => {
                        m.insert(k.into(), json!("TCP"));
                    }
                    _ => {}
                }
            }
            format!("k:{}", Value::Object(m))
        }
    }
}

fn items_by_pe(kind: ListKind, v: Option<&Value>) -> Vec<(String, &Value)> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| (item_pe(kind, i), i))
        .collect()
}

// --- The three walks: a value's fields, a comparison, a merge ---

/// The fields set in `v` (an applied configuration).
fn to_set(v: &Value, t: Ty, path: &mut Vec<String>, out: &mut Set) {
    match t {
        Ty::Leaf => out.insert(path),
        Ty::Struct(_) | Ty::Map(_) => {
            let Some(m) = v.as_object() else {
                return out.insert(path);
            };
            for (k, c) in m {
                path.push(format!("f:{k}"));
                to_set(c, field_ty(t, k), path, out);
                let empty = c.is_null() || c.as_object().is_some_and(Map::is_empty);
                if empty || matches!(t, Ty::Map(_)) {
                    out.insert(path);
                }
                path.pop();
            }
        }
        Ty::List(items, kind) => {
            let Some(a) = v.as_array() else {
                return out.insert(path);
            };
            for i in a {
                path.push(item_pe(kind, i));
                to_set(i, ty(Some(items)), path, out);
                out.insert(path);
                path.pop();
            }
        }
    }
}

/// What changed from `old` to `new`: fields added or modified, and fields removed.
fn compare(
    old: Option<&Value>,
    new: Option<&Value>,
    t: Ty,
    path: &mut Vec<String>,
    changed: &mut Set,
    removed: &mut Set,
) {
    if old == new {
        return;
    }
    match t {
        Ty::Struct(_) | Ty::Map(_)
            if old.is_none_or(Value::is_object) && new.is_none_or(Value::is_object) =>
        {
            if matches!(t, Ty::Map(_)) {
                if old.is_none() {
                    changed.insert(path);
                } else if new.is_none() {
                    removed.insert(path);
                }
            }
            let empty = Map::new();
            let om = old.and_then(Value::as_object).unwrap_or(&empty);
            let nm = new.and_then(Value::as_object).unwrap_or(&empty);
            let mut keys: Vec<&String> = om.keys().chain(nm.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                path.push(format!("f:{k}"));
                let (o, n) = (om.get(k), nm.get(k));
                let child = field_ty(t, k);
                // An empty object is a leaf of its own (to_set marks it too).
                let leafish = |v: Option<&Value>| {
                    v.is_some_and(|v| v.is_null() || v.as_object().is_some_and(Map::is_empty))
                };
                if o != n && (leafish(o) || leafish(n)) && !matches!(child, Ty::Leaf) {
                    if n.is_none() {
                        removed.insert(path);
                    } else {
                        changed.insert(path);
                    }
                }
                compare(o, n, child, path, changed, removed);
                path.pop();
            }
        }
        Ty::List(items, kind)
            if old.is_none_or(Value::is_array) && new.is_none_or(Value::is_array) =>
        {
            let oi = items_by_pe(kind, old);
            let ni = items_by_pe(kind, new);
            let mut pes: Vec<&String> = oi.iter().chain(ni.iter()).map(|(p, _)| p).collect();
            pes.sort();
            pes.dedup();
            for pe in pes {
                let o = oi.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
                let n = ni.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
                path.push(pe.clone());
                if o.is_none() {
                    changed.insert(path);
                } else if n.is_none() {
                    removed.insert(path);
                }
                compare(o, n, ty(Some(items)), path, changed, removed);
                path.pop();
            }
        }
        _ => {
            if new.is_none() {
                removed.insert(path);
            } else {
                changed.insert(path);
            }
        }
    }
}

/// `config` merged into `live`: its values win, maps and keyed lists merge item by item.
fn merge(live: &mut Value, config: &Value, t: Ty) {
    match t {
        Ty::Struct(_) | Ty::Map(_) if live.is_object() && config.is_object() => {
            let lm = live.as_object_mut().expect("checked");
            for (k, c) in config.as_object().expect("checked") {
                match lm.get_mut(k) {
                    Some(l) => merge(l, c, field_ty(t, k)),
                    None => {
                        lm.insert(k.clone(), c.clone());
                    }
                }
            }
        }
        Ty::List(items, kind) if live.is_array() && config.is_array() => {
            let la = live.as_array_mut().expect("checked");
            for c in config.as_array().expect("checked") {
                let pe = item_pe(kind, c);
                match la.iter_mut().find(|l| item_pe(kind, l) == pe) {
                    Some(l) => merge(l, c, ty(Some(items))),
                    None => la.push(c.clone()),
                }
            }
        }
        _ => *live = config.clone(),
    }
}

/// Removes the member paths of `set` from `v`; maps left empty by it go too.
fn remove(v: &mut Value, set: &Set, t: Ty) {
    match t {
        Ty::Struct(_) | Ty::Map(_) => {
            let Some(m) = v.as_object_mut() else { return };
            for (pe, c) in &set.children {
                let Some(k) = pe.strip_prefix("f:") else {
                    continue;
                };
                if c.member {
                    m.remove(k);
                } else if let Some(x) = m.get_mut(k) {
                    remove(x, c, field_ty(t, k));
                    let emptied = x.as_object().is_some_and(Map::is_empty)
                        || x.as_array().is_some_and(Vec::is_empty);
                    if emptied {
                        m.remove(k);
                    }
                }
            }
        }
        Ty::List(items, kind) => {
            let Some(a) = v.as_array_mut() else { return };
            a.retain_mut(|i| match set.children.get(&item_pe(kind, i)) {
                Some(c) if c.member => false,
                Some(c) => {
                    remove(i, c, ty(Some(items)));
                    true
                }
                None => true,
            });
        }
        Ty::Leaf => {}
    }
}

// --- Managers ---

/// Who wrote: a manager name, its operation and subresource.
#[derive(Clone, Debug)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub apply: bool,
    pub subresource: Option<&'a str>,
}

struct Entry {
    raw: Value,
    set: Set,
}

impl Entry {
    fn is(&self, w: &Writer, api_version: &str) -> bool {
        let op = if w.apply { "Apply" } else { "Update" };
        self.raw["manager"] == w.manager
            && self.raw["operation"] == op
            && self.raw["subresource"].as_str() == w.subresource
            && (w.apply || self.raw["apiVersion"] == api_version)
    }

    /// The manager as conflicts name it: `"kubectl" using apps/v1` for updaters.
    fn describe(&self) -> String {
        let mut s = format!("{}", self.raw["manager"]);
        if let Some(sub) = self.raw["subresource"].as_str() {
            s.push_str(&format!(" with subresource \"{sub}\""));
        }
        if self.raw["operation"] == "Update" {
            // Upstream names managers by an identifier without the time, so no " at ...".
            s.push_str(&format!(
                " using {}",
                self.raw["apiVersion"].as_str().unwrap_or("")
            ));
        }
        s
    }
}

fn read(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            set: Set::from_fields_v1(&e["fieldsV1"]),
            raw: e.clone(),
        })
        .collect()
}

fn write(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.set.is_empty())
        .map(|mut e| {
            e.raw["fieldsType"] = json!("FieldsV1");
            e.raw["fieldsV1"] = e.set.to_fields_v1();
            e.raw
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Keeps only what a write through `sub` may own: not the server's own fields, nor those of
/// the other half of a resource with a status subresource.
fn filter(mut set: Set, r: &Resource, sub: Option<&str>) -> Set {
    set.children.remove("f:apiVersion");
    set.children.remove("f:kind");
    if let Some(m) = set.children.get_mut("f:metadata") {
        m.member = false;
        for f in [
            "f:name",
            "f:namespace",
            "f:creationTimestamp",
            "f:selfLink",
            "f:uid",
            "f:generation",
            "f:managedFields",
            "f:resourceVersion",
            "f:deletionTimestamp",
            "f:deletionGracePeriodSeconds",
        ] {
            m.children.remove(f);
        }
    }
    match sub {
        None if r.has_status() => {
            set.children.remove("f:status");
        }
        Some("status") => set.children.retain(|k, _| k == "f:status"),
        Some("scale") => {
            let replicas = set
                .children
                .get_mut("f:spec")
                .and_then(|s| s.children.remove("f:replicas"));
            set = Set::default();
            if let Some(r) = replicas {
                set.children.insert(
                    "f:spec".into(),
                    Set {
                        member: false,
                        children: [("f:replicas".to_string(), r)].into(),
                    },
                );
            }
        }
        _ => {}
    }
    set
}

fn root(r: &Resource) -> Ty {
    ty(schema::get(r.definition))
}

fn now() -> String {
    super::registry::now()
}

/// Records a non-apply write (create, update, patch) of `new` over `old` by `w`: the fields
/// it changed become its own and no one else's.
pub fn update(r: &Resource, old: Option<&Value>, new: &mut Value, w: &Writer) {
    // A client may send managedFields back (kubectl edit does), or `[]` to reset them.
    let mut entries = match new["metadata"].get("managedFields") {
        Some(Value::Array(_)) => read(new),
        _ => old.map(read).unwrap_or_default(),
    };
    let (mut changed, mut removed) = (Set::default(), Set::default());
    let empty = json!({});
    compare(
        Some(old.unwrap_or(&empty)),
        Some(new),
        root(r),
        &mut Vec::new(),
        &mut changed,
        &mut removed,
    );
    let changed = filter(changed, r, w.subresource);
    let removed = filter(removed, r, w.subresource);
    let api_version = r.api_version();
    for e in entries.iter_mut() {
        if !e.is(w, &api_version) {
            e.set = e.set.difference(&changed).difference(&removed);
        }
    }
    let mine = match entries.iter().position(|e| e.is(w, &api_version)) {
        Some(i) => entries.remove(i),
        None => Entry {
            raw: json!({"manager": w.manager, "operation": "Update", "apiVersion": api_version}),
            set: Set::default(),
        },
    };
    let mut set = mine.set.difference(&removed);
    set.union(&changed);
    if !set.is_empty() {
        let mut raw = mine.raw;
        raw["time"] = json!(now());
        if let Some(s) = w.subresource {
            raw["subresource"] = json!(s);
        }
        entries.push(Entry { raw, set });
    }
    write(new, entries);
}

/// Server-side apply of `config` to `live` (`None`: the object is being created) by `w`:
/// the merged object with its managedFields, or the 409 naming every conflict.
pub fn apply(
    r: &Resource,
    live: Option<&Value>,
    config: &Value,
    w: &Writer,
    force: bool,
) -> Result<Value, ApiError> {
    let t = root(r);
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let mut entries = read(live);
    let mut merged = live.clone();
    let mut cfg = config.clone();
    if let Some(m) = cfg["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    merge(&mut merged, &cfg, t);
    let mut set = Set::default();
    to_set(&cfg, t, &mut Vec::new(), &mut set);
    let set = filter(set, r, w.subresource);
    let api_version = r.api_version();
    let last = match entries.iter().position(|e| e.is(w, &api_version)) {
        Some(i) => entries.remove(i).set,
        None => Set::default(),
    };
    // Fields applied last time and not now go, unless someone else owns them.
    let mut owned = set.clone();
    for e in &entries {
        owned.union(&e.set);
    }
    remove(&mut merged, &last.difference(&owned), t);

    let (mut changed, mut removed) = (Set::default(), Set::default());
    compare(
        Some(live),
        Some(&merged),
        t,
        &mut Vec::new(),
        &mut changed,
        &mut removed,
    );
    let changed = filter(changed, r, w.subresource);
    let removed = filter(removed, r, w.subresource);
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for e in &entries {
        for p in e.set.intersection(&changed).paths() {
            conflicts.push((e.describe(), display(&p)));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(conflicts));
    }
    for e in entries.iter_mut() {
        e.set = e.set.difference(&changed).difference(&removed);
    }
    let mut raw = json!({"manager": w.manager, "operation": "Apply", "apiVersion": api_version, "time": now()});
    if let Some(s) = w.subresource {
        raw["subresource"] = json!(s);
    }
    // The applier's entry comes first, as upstream sorts appliers before updaters.
    entries.insert(0, Entry { raw, set });
    write(&mut merged, entries);
    Ok(merged)
}

/// apimachinery's `NewConflictError`.
fn conflict_error(conflicts: Vec<(String, String)>) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"type": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": p}))
        .collect();
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].0, conflicts[0].1
        )
    } else {
        let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (m, p) in &conflicts {
            by.entry(m).or_default().push(p);
        }
        let mut lines = Vec::new();
        for (m, ps) in by {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(ps.iter().map(|p| format!("- {p}")));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let mut e = ApiError::new(409, "Conflict", message);
    e.details = Some(json!({"causes": causes}));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployments() -> &'static Resource {
        super::super::resources::find("apps", "v1", "deployments").expect("served")
    }

    fn config(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "app", "image": image,
                                              "ports": [{"containerPort": 80}]}]}}}})
    }

    fn applier(m: &str) -> Writer<'_> {
        Writer {
            manager: m,
            apply: true,
            subresource: None,
        }
    }

    #[test]
    fn fields_v1_round_trips_with_members_and_keys() {
        let v = json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                       "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}}}}});
        let s = Set::from_fields_v1(&v);
        assert_eq!(s.to_fields_v1(), v);
        let paths: Vec<String> = s.paths().iter().map(|p| display(p)).collect();
        assert_eq!(
            paths,
            [
                ".metadata.labels",
                ".metadata.labels.app",
                ".spec.containers[name=\"app\"]",
                ".spec.containers[name=\"app\"].image"
            ]
        );
    }

    #[test]
    fn apply_records_the_applied_fields_with_keys_and_defaults() {
        let r = deployments();
        let obj = apply(r, None, &config(2, "nginx:1"), &applier("alice"), false).unwrap();
        let mf = &obj["metadata"]["managedFields"][0];
        assert_eq!(mf["manager"], "alice");
        assert_eq!(mf["operation"], "Apply");
        let f = &mf["fieldsV1"];
        assert_eq!(f["f:spec"]["f:replicas"], json!({}));
        // The selector is an atomic map: one leaf.
        assert_eq!(f["f:spec"]["f:selector"], json!({}));
        let c = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:image"], json!({}));
        // The port's protocol is a key with a default.
        assert!(c["f:ports"]
            .get("k:{\"containerPort\":80,\"protocol\":\"TCP\"}")
            .is_some());
        assert!(f["f:metadata"].get("f:name").is_none());
    }

    #[test]
    fn a_second_manager_conflicts_on_changed_values_only() {
        let r = deployments();
        let live = apply(r, None, &config(2, "nginx:1"), &applier("alice"), false).unwrap();
        // The same values: shared, no conflict.
        let shared = apply(
            r,
            Some(&live),
            &config(2, "nginx:1"),
            &applier("bob"),
            false,
        )
        .unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let e = apply(
            r,
            Some(&live),
            &config(3, "nginx:2"),
            &applier("bob"),
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 2 conflicts: conflicts with \"alice\":\n- .spec.replicas\n- .spec.template.spec.containers[name=\"app\"].image"
        );
        assert_eq!(
            e.details.as_ref().unwrap()["causes"][0]["type"],
            "FieldManagerConflict"
        );
        // Forced: bob takes both fields, alice keeps the rest.
        let forced = apply(r, Some(&live), &config(3, "nginx:2"), &applier("bob"), true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let mf = forced["metadata"]["managedFields"].as_array().unwrap();
        let alice = mf.iter().find(|e| e["manager"] == "alice").unwrap();
        assert!(alice["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        assert!(alice["fieldsV1"]["f:spec"].get("f:selector").is_some());
    }

    #[test]
    fn a_field_dropped_from_the_config_is_removed_unless_someone_else_owns_it() {
        let r = deployments();
        let mut c1 = config(2, "nginx:1");
        c1["metadata"]["labels"]["tier"] = json!("front");
        c1["metadata"]["annotations"] = json!({"note": "x"});
        let live = apply(r, None, &c1, &applier("alice"), false).unwrap();
        // Someone else updates the annotation: it becomes theirs.
        let mut edited = live.clone();
        edited["metadata"]["annotations"]["note"] = json!("y");
        let w = Writer {
            manager: "kubectl-annotate",
            apply: false,
            subresource: None,
        };
        update(r, Some(&live), &mut edited, &w);
        let next = apply(
            r,
            Some(&edited),
            &config(2, "nginx:1"),
            &applier("alice"),
            false,
        )
        .unwrap();
        assert!(next["metadata"]["labels"].get("tier").is_none(), "{next}");
        assert_eq!(next["metadata"]["labels"]["app"], "web");
        assert_eq!(next["metadata"]["annotations"]["note"], "y");
    }

    #[test]
    fn updates_take_the_fields_they_change() {
        let r = deployments();
        let live = apply(r, None, &config(2, "nginx:1"), &applier("alice"), false).unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        let w = Writer {
            manager: "kubectl",
            apply: false,
            subresource: Some("scale"),
        };
        update(r, Some(&live), &mut scaled, &w);
        let mf = scaled["metadata"]["managedFields"].as_array().unwrap();
        let scaler = mf.iter().find(|e| e["manager"] == "kubectl").unwrap();
        assert_eq!(scaler["subresource"], "scale");
        assert_eq!(scaler["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        // alice re-applying her 2 replicas now conflicts with the scaler.
        let e = apply(
            r,
            Some(&scaled),
            &config(2, "nginx:1"),
            &applier("alice"),
            false,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        );
    }
}
