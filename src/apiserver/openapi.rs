//! OpenAPI: `/openapi/v3` (the index and one document per group-version, with the real
//! schemas from [`super::schema`], the paths of every resource, and on each PATCH the
//! object's GVK and the `fieldValidation` parameter, which tells kubectl that the server
//! validates fields itself), and `/openapi/v2`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::resources::{Resource, RESOURCES};
use super::schema;

/// JSON-schema definitions rewritten as OpenAPI 3 schemas: `#/$defs/X` references become
/// `#/components/schemas/X`, `["string", "null"]` types become `string`.
fn to_openapi3(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => {
                        out.insert(
                            k.clone(),
                            json!(r.replace("#/$defs/", "#/components/schemas/")),
                        );
                    }
                    ("type", Value::Array(types)) => {
                        let t: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                        if let [one] = t.as_slice() {
                            out.insert(k.clone(), (*one).clone());
                        }
                    }
                    _ => {
                        out.insert(k.clone(), to_openapi3(x));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_openapi3).collect()),
        other => other.clone(),
    }
}

fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn hash(s: &[u8]) -> String {
    // FNV-1a 64: a stable tag for the client's cache, not a security property.
    let h = s.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    });
    format!("{h:016X}")
}

fn operation(r: &Resource, verb: &str, patch: bool) -> Value {
    let mut op = json!({
        "operationId": format!("{verb}{}", r.kind),
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "parameters": [
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", r.definition)}}}}},
    });
    let schema_ref = json!({"schema": {"$ref": format!("#/components/schemas/{}", r.definition)}});
    op["requestBody"] = if patch {
        json!({"content": {
            "application/apply-patch+yaml": {"schema": {"type": "object"}},
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
        }, "required": true})
    } else {
        json!({"content": {"application/json": schema_ref}, "required": true})
    };
    if patch {
        op["parameters"]
            .as_array_mut()
            .expect("an array")
            .push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    op
}

fn document(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let base = format!("/{}", gv_key(group, version));
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let coll = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let mut c = json!({"post": operation(r, "post", false)});
        if r.verbs.contains(&"list") {
            c["get"] = json!({"operationId": format!("list{}", r.kind), "x-kubernetes-action": "list",
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind}, "responses": {}});
        }
        paths.insert(coll.clone(), c);
        if r.verbs.contains(&"get") {
            paths.insert(
                format!("{coll}/{{name}}"),
                json!({"put": operation(r, "put", false), "patch": operation(r, "patch", true),
                       "get": {"operationId": format!("read{}", r.kind), "x-kubernetes-action": "get",
                               "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind}, "responses": {}}}),
            );
        }
    }
    let schemas: Map<String, Value> = schema::definitions()
        .iter()
        .map(|(k, v)| (k.clone(), to_openapi3(v)))
        .collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", super::KUBE_VERSION.0, super::KUBE_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

struct Docs {
    index: Vec<u8>,
    by_gv: BTreeMap<String, Vec<u8>>,
}

fn docs() -> &'static Docs {
    static DOCS: OnceLock<Docs> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut gvs: Vec<(&str, &str)> = Vec::new();
        for r in RESOURCES {
            if !gvs.contains(&(r.group, r.version)) {
                gvs.push((r.group, r.version));
            }
        }
        let mut by_gv = BTreeMap::new();
        let mut index = Map::new();
        for (g, v) in gvs {
            let body = serde_json::to_vec(&document(g, v)).unwrap_or_default();
            let key = gv_key(g, v);
            index.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash(&body))}),
            );
            by_gv.insert(key, body);
        }
        Docs {
            index: serde_json::to_vec(&json!({"paths": index})).unwrap_or_default(),
            by_gv,
        }
    })
}

/// `/openapi/v3`.
pub fn index() -> &'static [u8] {
    &docs().index
}

/// `/openapi/v3/<api/v1 | apis/g/v>`.
pub fn group_version(key: &str) -> Option<&'static [u8]> {
    docs().by_gv.get(key).map(Vec::as_slice)
}

/// The Content-Type of `/openapi/v2` in protobuf. An empty document tells kubectl 1.20 (the
/// only client still reading v2) that there is nothing to validate against client-side; the
/// server validates every write itself.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_document_names_its_kinds_on_patch() {
        let idx: Value = serde_json::from_slice(index()).unwrap();
        let apps = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(apps.starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc: Value = serde_json::from_slice(group_version("apis/apps/v1").unwrap()).unwrap();
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(p["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "fieldValidation"));
        let dep = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            dep["properties"]["spec"]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert_eq!(dep["type"], "object");
    }
}
