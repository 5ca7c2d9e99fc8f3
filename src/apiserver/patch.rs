//! Patches: JSON patch (RFC 6902) and merge patch (RFC 7386) through the json-patch crate,
//! and the strategic merge patch of apimachinery's `pkg/util/strategicpatch`, driven by the
//! patch strategies and merge keys of the API definitions ([`super::schema`]), with its
//! directives `$patch`, `$setElementOrder`, `$retainKeys` and `$deleteFromPrimitiveList`.
//! An apply patch (server-side apply) is merged the strategic way; field ownership is not
//! tracked yet.

use serde_json::{Map, Value};

use super::resources::Resource;
use super::schema;
use super::status::{ApiError, ApiResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl Kind {
    pub fn of(content_type: &str) -> Option<Kind> {
        match content_type {
            "application/json-patch+json" => Some(Kind::Json),
            "application/merge-patch+json" => Some(Kind::Merge),
            "application/strategic-merge-patch+json" => Some(Kind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Kind::Apply),
            _ => None,
        }
    }
}

/// `current` with `patch` applied.
pub fn apply(kind: Kind, current: &Value, patch: &Value, r: &Resource) -> ApiResult<Value> {
    let mut doc = current.clone();
    match kind {
        Kind::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| {
                ApiError::bad_request(format!("the server rejected our request due to an error in our request: invalid JSON patch: {e}"))
            })?;
            json_patch::patch(&mut doc, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        Kind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut doc, patch);
        }
        Kind::Strategic | Kind::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            let def = schema::get(r.definition);
            strategic(&mut doc, patch, def).map_err(ApiError::bad_request)?;
        }
    }
    Ok(doc)
}

fn merge_key(prop: Option<&'static Value>) -> (bool, Option<&'static str>) {
    let Some(p) = prop else {
        return (false, None);
    };
    let strategy = p["x-kubernetes-patch-strategy"].as_str().unwrap_or("");
    (
        strategy.split(',').any(|s| s == "merge"),
        p["x-kubernetes-patch-merge-key"].as_str(),
    )
}

/// Strategic merge of `patch` into `doc` (an object), under schema `s`.
pub fn strategic(doc: &mut Value, patch: &Value, s: Option<&'static Value>) -> Result<(), String> {
    let Some(pm) = patch.as_object() else {
        *doc = patch.clone();
        return Ok(());
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = pm.clone();
            p.remove("$patch");
            *doc = Value::Object(strip_directives(p));
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other} in map")),
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> = pm.get("$retainKeys").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    });
    for (k, pv) in pm {
        if k.starts_with("$setElementOrder/") || k.starts_with("$deleteFromPrimitiveList/") {
            continue;
        }
        if k.starts_with('$') {
            if matches!(k.as_str(), "$patch" | "$retainKeys") {
                continue;
            }
            return Err(format!("unknown directive {k}"));
        }
        let prop = s.and_then(|s| schema::property(s, k));
        let dm = doc.as_object_mut().expect("doc is an object");
        if pv.is_null() {
            dm.remove(k);
            continue;
        }
        match (dm.get_mut(k), pv) {
            (Some(dv @ Value::Object(_)), Value::Object(_)) => {
                // Maps of objects (e.g. resources.limits) are plain maps.
                let sub = prop.and_then(|p| {
                    if p.get("additionalProperties").is_some() {
                        None
                    } else {
                        Some(p)
                    }
                });
                strategic(dv, pv, sub)?;
                if prop.is_some_and(|p| p.get("additionalProperties").is_some()) {
                    if let Some(m) = dv.as_object_mut() {
                        m.retain(|_, v| !v.is_null());
                    }
                }
            }
            (Some(Value::Array(da)), Value::Array(pa)) => {
                let (merge, key) = merge_key(prop);
                let order = pm
                    .get(&format!("$setElementOrder/{k}"))
                    .and_then(Value::as_array);
                if merge {
                    let item_schema = prop.and_then(schema::items);
                    merge_list(da, pa, key, item_schema, order)?;
                } else {
                    *da = pa.iter().map(clean).collect();
                }
            }
            (_, pv) => {
                let mut v = clean(pv);
                if let (Value::Array(pa), (true, key)) = (&mut v, merge_key(prop)) {
                    // A list the object did not have: directives inside it still apply.
                    let mut fresh = Vec::new();
                    let items = pa.clone();
                    merge_list(&mut fresh, &items, key, prop.and_then(schema::items), None)?;
                    *pa = fresh;
                }
                dm.insert(k.clone(), v);
            }
        }
    }
    for (k, pv) in pm {
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(da)), Some(del)) = (doc.get_mut(list), pv.as_array()) {
                da.retain(|x| !del.contains(x));
            }
        }
    }
    if let Some(keep) = retain {
        if let Some(dm) = doc.as_object_mut() {
            dm.retain(|k, _| keep.contains(k));
        }
    }
    Ok(())
}

fn strip_directives(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k, clean(&v)))
        .collect()
}

/// A patch value with its directives removed (for values stored as they are).
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m.clone())),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|x| x.get("$patch").is_none())
                .map(clean)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_list(
    da: &mut Vec<Value>,
    pa: &[Value],
    key: Option<&str>,
    item_schema: Option<&'static Value>,
    order: Option<&Vec<Value>>,
) -> Result<(), String> {
    if pa
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *da = pa
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .map(clean)
            .collect();
        return Ok(());
    }
    let Some(key) = key else {
        // A merged list of primitives: a union, in order.
        for e in pa {
            if !da.contains(e) {
                da.push(clean(e));
            }
        }
        return Ok(());
    };
    for pe in pa {
        let Some(kv) = pe.get(key) else {
            return Err(format!(
                "map: {pe} does not contain declared merge key: {key}"
            ));
        };
        let pos = da.iter().position(|d| d.get(key) == Some(kv));
        match pe.get("$patch").and_then(Value::as_str) {
            Some("delete") => {
                if let Some(i) = pos {
                    da.remove(i);
                }
            }
            _ => match pos {
                Some(i) => {
                    let sub = item_schema.and_then(|s| schema::resolve(s).or(Some(s)));
                    strategic(&mut da[i], pe, sub)?;
                }
                None => da.push(clean(pe)),
            },
        }
    }
    if let Some(order) = order {
        let rank = |v: &Value| order.iter().position(|o| o.get(key) == v.get(key));
        let mut ranked: Vec<(usize, Value)> = std::mem::take(da)
            .into_iter()
            .enumerate()
            .map(|(i, v)| (rank(&v).unwrap_or(order.len() + i), v))
            .collect();
        ranked.sort_by_key(|(r, _)| *r);
        *da = ranked.into_iter().map(|(_, v)| v).collect();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {"replicas": 1, "template": {"spec": {
                "containers": [
                    {"name": "web", "image": "bootcamp:v1", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "side", "image": "busybox"}],
                "volumes": [{"name": "v", "emptyDir": {}}]}}}})
    }

    #[test]
    fn set_image_keeps_the_rest_of_the_container() {
        let r = find("apps", "v1", "deployments").unwrap();
        // What `kubectl set image deployment/web web=bootcamp:v2` sends.
        let p = json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"image": "bootcamp:v2", "name": "web"}]}}}});
        let out = apply(Kind::Strategic, &deployment(), &p, r).unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "bootcamp:v2");
        assert_eq!(c[0]["ports"][0]["containerPort"], 8080);
        assert_eq!(c[1]["name"], "side");
        assert!(out["spec"]["template"]["spec"]
            .get("$setElementOrder/containers")
            .is_none());
    }

    #[test]
    fn directives_delete_replace_and_retain() {
        let r = find("apps", "v1", "deployments").unwrap();
        let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "env": [{"name": "A", "$patch": "delete"}, {"name": "C", "value": "3"}]},
            {"name": "side", "$patch": "delete"}]}}}});
        let out = apply(Kind::Strategic, &deployment(), &p, r).unwrap();
        let c = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(c.len(), 1);
        let env: Vec<&str> = c[0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(env, ["B", "C"]);

        let p = json!({"spec": {"template": {"spec": {"volumes": [{"name": "v", "$retainKeys": ["name", "configMap"], "configMap": {"name": "cm"}}]}}}});
        let out = apply(Kind::Strategic, &deployment(), &p, r).unwrap();
        let v = &out["spec"]["template"]["spec"]["volumes"][0];
        assert!(v.get("emptyDir").is_none(), "{v}");
        assert_eq!(v["configMap"]["name"], "cm");

        let p =
            json!({"metadata": {"finalizers": ["b"], "labels": {"$patch": "replace", "x": "y"}}});
        let out = apply(Kind::Strategic, &deployment(), &p, r).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({"x": "y"}));

        let p = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = apply(Kind::Strategic, &deployment(), &p, r).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));
    }

    #[test]
    fn merge_patch_replaces_lists_and_json_patch_tests() {
        let r = find("apps", "v1", "deployments").unwrap();
        let out = apply(
            Kind::Merge,
            &deployment(),
            &json!({"spec": {"replicas": 3}, "metadata": {"labels": null}}),
            r,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        assert!(out["metadata"].get("labels").is_none());
        let bad = json!([{"op": "test", "path": "/spec/replicas", "value": 9}]);
        assert_eq!(
            apply(Kind::Json, &deployment(), &bad, r).unwrap_err().code,
            422
        );
        let ok = json!([{"op": "replace", "path": "/spec/replicas", "value": 2}]);
        assert_eq!(
            apply(Kind::Json, &deployment(), &ok, r).unwrap()["spec"]["replicas"],
            2
        );
        assert!(apply(Kind::Strategic, &deployment(), &json!({"$bogus": 1}), r).is_err());
    }
}
