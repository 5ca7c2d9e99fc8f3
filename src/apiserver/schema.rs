//! The Kubernetes 1.37 API definitions (vendored, see `openapi/NOTICE`): the schemas behind
//! strategic merge patches (patch strategies and merge keys), and later OpenAPI and
//! `kubectl explain`. Decompressed and parsed once, on first use.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

static DEFINITIONS: &[u8] = include_bytes!("openapi/definitions.json.gz");

/// Every definition by name (`io.k8s.api.apps.v1.Deployment`).
pub fn definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        use std::io::Read;
        let mut s = String::new();
        let parsed = flate2::read::GzDecoder::new(DEFINITIONS)
            .read_to_string(&mut s)
            .ok()
            .and_then(|_| serde_json::from_str::<Map<String, Value>>(&s).ok());
        // The file is part of the binary and checked by a unit test; an empty map only
        // degrades strategic merge to plain merge.
        parsed.unwrap_or_default()
    })
}

/// The definitions by their `$ref` (`#/$defs/io.k8s...`) and by name, hashed: every write
/// resolves references at each level of its object, and the sorted map's lookups (long
/// names sharing their first 20 bytes) were a visible part of a create.
fn index() -> &'static HashMap<&'static str, &'static Value> {
    static INDEX: OnceLock<HashMap<&'static str, &'static Value>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut m = HashMap::new();
        for (k, v) in definitions() {
            m.insert(k.as_str(), v);
        }
        m
    })
}

/// The definition a schema refers to (through `$ref`, possibly inside `allOf`).
pub fn resolve(s: &Value) -> Option<&'static Value> {
    let r = s["$ref"].as_str().or_else(|| {
        s["allOf"]
            .as_array()?
            .iter()
            .find_map(|x| x["$ref"].as_str())
    })?;
    index().get(r.strip_prefix("#/$defs/")?).copied()
}

/// A definition by name.
pub fn get(name: &str) -> Option<&'static Value> {
    index().get(name).copied()
}

/// The schema of property `key` of an object schema (a definition, or a property that
/// refers to one).
pub fn property(s: &'static Value, key: &str) -> Option<&'static Value> {
    let d = if s.get("properties").is_some() {
        s
    } else {
        resolve(s)?
    };
    d.get("properties")?.get(key)
}

/// The schema of the elements of an array schema, or of the values of a map schema.
pub fn items(s: &'static Value) -> Option<&'static Value> {
    s.get("items")
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

/// Fields of `v` its schema does not have (strict decoding), as
/// `spec.template.spec.containers[0].bogus`.
pub fn unknown_fields(s: &'static Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let s =
        if s.get("properties").is_none() && (s.get("$ref").is_some() || s.get("allOf").is_some()) {
            match resolve(s) {
                Some(d) => d,
                None => return,
            }
        } else {
            s
        };
    if s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(m) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, x) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match props.get(k) {
                        Some(ps) => unknown_fields(ps, x, &p, out),
                        None => out.push(p),
                    }
                }
            } else if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, x) in m {
                    unknown_fields(ap, x, &format!("{path}[{k}]"), out);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    unknown_fields(items, x, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_definitions_load_and_carry_merge_keys() {
        let pod_spec = get("io.k8s.api.core.v1.PodSpec").expect("PodSpec");
        let c = &pod_spec["properties"]["containers"];
        assert_eq!(c["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(c["x-kubernetes-patch-strategy"], "merge");
        let dep = get("io.k8s.api.apps.v1.Deployment").unwrap();
        assert!(resolve(&dep["properties"]["spec"]).is_some());
        for r in crate::apiserver::resources::RESOURCES {
            assert!(get(r.definition).is_some(), "{} missing", r.definition);
        }
    }

    #[test]
    fn unknown_fields_are_found_by_the_schema_even_when_empty() {
        let pod = get("io.k8s.api.core.v1.Pod").unwrap();
        let v = serde_json::json!({"metadata": {"name": "p", "labels": {"a": "b"}, "bogus": {}},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePolicy": "x",
                     "resources": {"limits": {"cpu": "1"}}}], "datta": {}}});
        let mut out = Vec::new();
        unknown_fields(pod, &v, "", &mut out);
        assert_eq!(
            out,
            [
                "metadata.bogus",
                "spec.containers[0].imagePolicy",
                "spec.datta"
            ]
        );
    }
}
