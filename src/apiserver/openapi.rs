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

/// The Content-Type of `/openapi/v2` in protobuf.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2`: the definitions as a gnostic `openapi.v2.Document` in protobuf, the form
/// kubectl 1.20 (the one client still reading v2) asks for. It reads the models by their
/// `x-kubernetes-group-version-kind` for `explain`, client-side validation and the patch
/// strategies of `apply`; it never reads v2's paths, so the document has none. Encoded by
/// hand from gnostic's `OpenAPIv2.proto` (field numbers below): the few messages needed do
/// not justify a protobuf code generator in the build.
pub fn v2() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut info = Vec::new();
        pb::string(&mut info, 1, "Kubernetes");
        pb::string(&mut info, 2, "v1.37.0");
        let mut defs = Vec::new();
        for (name, d) in schema::definitions() {
            let mut named = Vec::new();
            pb::string(&mut named, 1, name);
            pb::message(&mut named, 2, &v2_schema(d));
            pb::message(&mut defs, 1, &named);
        }
        let mut doc = Vec::new();
        pb::string(&mut doc, 1, "2.0");
        pb::message(&mut doc, 2, &info);
        pb::message(&mut doc, 8, &[]);
        pb::message(&mut doc, 9, &defs);
        doc
    })
}

/// One definition as an `openapi.v2.Schema`.
fn v2_schema(s: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let reference = s["$ref"].as_str().or_else(|| {
        s["allOf"]
            .as_array()?
            .iter()
            .find_map(|x| x["$ref"].as_str())
    });
    if let Some(r) = reference {
        pb::string(&mut out, 1, &r.replace("#/$defs/", "#/definitions/"));
    }
    if let Some(f) = s["format"].as_str() {
        pb::string(&mut out, 2, f);
    }
    if let Some(d) = s["description"].as_str() {
        pb::string(&mut out, 4, d);
    }
    for r in s["required"].as_array().into_iter().flatten() {
        if let Some(r) = r.as_str() {
            pb::string(&mut out, 19, r);
        }
    }
    if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
        let mut item = Vec::new();
        pb::message(&mut item, 1, &v2_schema(ap));
        pb::message(&mut out, 21, &item);
    }
    let mut types: Vec<&str> = match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    // IntOrString and Quantity are `oneOf` in the JSON schemas; v2 calls both strings,
    // IntOrString with its own format (which v2 readers accept numbers for).
    if let Some(alts) = s["oneOf"].as_array() {
        types = vec!["string"];
        if alts.iter().any(|a| {
            a["type"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("integer")))
        }) {
            pb::string(&mut out, 2, "int-or-string");
        }
    }
    let mut type_item = Vec::new();
    for t in types.into_iter().filter(|t| *t != "null") {
        pb::string(&mut type_item, 1, t);
    }
    if !type_item.is_empty() {
        pb::message(&mut out, 22, &type_item);
    }
    if let Some(items) = s.get("items").filter(|i| i.is_object()) {
        let mut item = Vec::new();
        pb::message(&mut item, 1, &v2_schema(items));
        pb::message(&mut out, 23, &item);
    }
    if let Some(props) = s["properties"].as_object() {
        let mut p = Vec::new();
        for (name, ps) in props {
            let mut named = Vec::new();
            pb::string(&mut named, 1, name);
            pb::message(&mut named, 2, &v2_schema(ps));
            pb::message(&mut p, 1, &named);
        }
        pb::message(&mut out, 25, &p);
    }
    for (k, v) in s.as_object().into_iter().flatten() {
        if k.starts_with("x-") {
            // NamedAny { name, Any { yaml } }: JSON is YAML.
            let mut any = Vec::new();
            pb::string(&mut any, 2, &v.to_string());
            let mut named = Vec::new();
            pb::string(&mut named, 1, k);
            pb::message(&mut named, 2, &any);
            pb::message(&mut out, 31, &named);
        }
    }
    out
}

/// Protobuf wire encoding: length-delimited fields only.
mod pb {
    fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    pub fn message(buf: &mut Vec<u8>, field: u32, body: &[u8]) {
        varint(buf, (u64::from(field) << 3) | 2);
        varint(buf, body.len() as u64);
        buf.extend_from_slice(body);
    }

    pub fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
        message(buf, field, s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a length-delimited field's occurrences (enough to check the encoding).
    fn fields(mut b: &[u8], want: u32) -> Vec<&[u8]> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            assert_eq!(key & 7, 2, "only length-delimited fields");
            let len = varint(&mut b) as usize;
            if key >> 3 == u64::from(want) {
                out.push(&b[..len]);
            }
            b = &b[len..];
        }
        out
    }

    #[test]
    fn the_v2_document_carries_every_definition_with_its_extensions() {
        let doc = v2();
        assert_eq!(fields(doc, 1), [b"2.0".as_slice()]);
        let defs = fields(fields(doc, 9)[0], 1);
        assert_eq!(defs.len(), schema::definitions().len());
        let dep = defs
            .iter()
            .find(|d| fields(d, 1)[0] == b"io.k8s.api.apps.v1.Deployment")
            .expect("Deployment is there");
        let body = fields(dep, 2)[0];
        let ext = fields(body, 31);
        let gvk = ext
            .iter()
            .find(|e| fields(e, 1)[0] == b"x-kubernetes-group-version-kind")
            .expect("the GVK extension");
        let yaml = std::str::from_utf8(fields(fields(gvk, 2)[0], 2)[0]).unwrap();
        let v: Value = serde_json::from_str(yaml).unwrap();
        assert_eq!(v[0]["kind"], "Deployment");
        // spec refers to its definition, v2-style.
        let props = fields(fields(body, 25)[0], 1);
        let spec = props.iter().find(|p| fields(p, 1)[0] == b"spec").unwrap();
        assert_eq!(
            fields(fields(spec, 2)[0], 1)[0],
            b"#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
    }

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
