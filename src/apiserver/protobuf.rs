//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as kubectl's typed
//! clients (`create deployment|configmap|secret|namespace|...`, `auth can-i`) and helm's
//! release Secrets send them, with no fallback to JSON.
//!
//! Written here rather than with prost and the k8s-pb crate: k8s-pb's structs have neither
//! the API's JSON names nor a JSON mapping, and knode keeps objects as JSON. The field
//! layout of every message comes from the upstream `generated.proto` files (vendored by
//! `scripts/vendor-protobuf.py`; their field names are the JSON names), so one small
//! wire-format walker turns any message into the object's JSON, with apimachinery's
//! special types (Time, IntOrString, Quantity, RawExtension, FieldsV1) mapped as Go maps them.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{json, Map, Value};

static LAYOUT: &[u8] = include_bytes!("openapi/protobuf.json.gz");

/// The envelope's magic prefix.
pub const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, serde::Deserialize)]
struct Field(u32, String, u8, String, String, u8);

type Messages = HashMap<String, HashMap<u32, Field>>;

fn messages() -> &'static Messages {
    static M: OnceLock<Messages> = OnceLock::new();
    M.get_or_init(|| {
        use std::io::Read;
        let mut s = String::new();
        let raw: HashMap<String, Vec<Field>> = flate2::read::GzDecoder::new(LAYOUT)
            .read_to_string(&mut s)
            .ok()
            .and_then(|_| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        raw.into_iter()
            .map(|(k, fields)| (k, fields.into_iter().map(|f| (f.0, f)).collect()))
            .collect()
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProtoError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, ProtoError> {
    Err(ProtoError(m.into()))
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.i >= self.b.len()
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.b.get(self.i) else {
                return err("truncated varint");
            };
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("varint too long")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.i.checked_add(n).filter(|e| *e <= self.b.len());
        let Some(end) = end else {
            return err("truncated field");
        };
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = usize::try_from(self.varint()?).map_err(|_| ProtoError("length".into()))?;
        self.take(n)
    }

    /// One field: (tag, wire type, its raw value).
    fn field(&mut self) -> Result<(u32, u8, Raw<'a>), ProtoError> {
        let key = self.varint()?;
        let (tag, wt) = ((key >> 3) as u32, (key & 7) as u8);
        let raw = match wt {
            0 => Raw::Varint(self.varint()?),
            1 => Raw::Fixed(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => Raw::Bytes(self.bytes()?),
            5 => Raw::Fixed(u64::from(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            ))),
            w => return err(format!("unsupported wire type {w}")),
        };
        Ok((tag, wt, raw))
    }
}

#[derive(Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
}

fn scalar(ty: &str, raw: Raw, wt: u8) -> Result<Value, ProtoError> {
    Ok(match (ty, raw) {
        ("string", Raw::Bytes(b)) => match std::str::from_utf8(b) {
            Ok(s) => json!(s),
            Err(_) => return err("a string field is not UTF-8"),
        },
        ("bytes", Raw::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        ("bool", Raw::Varint(v)) => json!(v != 0),
        ("int32", Raw::Varint(v)) => json!(v as i64 as i32),
        ("int64", Raw::Varint(v)) => json!(v as i64),
        ("uint32" | "uint64", Raw::Varint(v)) => json!(v),
        ("sint32" | "sint64", Raw::Varint(v)) => json!(((v >> 1) as i64) ^ -((v & 1) as i64)),
        ("double", Raw::Fixed(v)) if wt == 1 => json!(f64::from_bits(v)),
        ("float", Raw::Fixed(v)) if wt == 5 => json!(f32::from_bits(v as u32)),
        ("fixed64" | "sfixed64", Raw::Fixed(v)) => json!(v as i64),
        ("fixed32" | "sfixed32", Raw::Fixed(v)) => json!(v as u32 as i32),
        (t, _) => return err(format!("wire type {wt} does not fit a {t}")),
    })
}

fn is_scalar(ty: &str) -> bool {
    !ty.starts_with("k8s.io.")
}

/// Packed repeated numbers.
fn packed(ty: &str, b: &[u8]) -> Result<Vec<Value>, ProtoError> {
    let mut r = Reader { b, i: 0 };
    let mut out = Vec::new();
    while !r.done() {
        let (raw, wt) = match ty {
            "double" | "fixed64" | "sfixed64" => (
                Raw::Fixed(u64::from_le_bytes(r.take(8)?.try_into().expect("8"))),
                1,
            ),
            "float" | "fixed32" | "sfixed32" => (
                Raw::Fixed(u64::from(u32::from_le_bytes(
                    r.take(4)?.try_into().expect("4"),
                ))),
                5,
            ),
            _ => (Raw::Varint(r.varint()?), 0),
        };
        out.push(scalar(ty, raw, wt)?);
    }
    Ok(out)
}

fn value(ty: &str, raw: Raw, wt: u8, depth: usize) -> Result<Value, ProtoError> {
    if is_scalar(ty) {
        return scalar(ty, raw, wt);
    }
    match raw {
        Raw::Bytes(b) => message(ty, b, depth + 1),
        _ => err(format!("{ty} must be length-delimited")),
    }
}

/// Go's `time.Time` as the API writes it.
fn time(v: &Value, micro: bool) -> Value {
    let secs = v["seconds"].as_i64().unwrap_or(0);
    let nanos = v["nanos"].as_i64().unwrap_or(0);
    if secs == 0 && nanos == 0 {
        return Value::Null;
    }
    let Some(t) = chrono::DateTime::from_timestamp(secs, nanos.clamp(0, 999_999_999) as u32) else {
        return Value::Null;
    };
    if micro {
        json!(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
    } else {
        json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    }
}

/// Go's `time.Duration.String()`.
fn duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let ns = ns.unsigned_abs();
    let (h, m) = (ns / 3_600_000_000_000, (ns / 60_000_000_000) % 60);
    let s = (ns % 60_000_000_000) as f64 / 1e9;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    let secs = format!("{s:.9}");
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    out.push_str(&format!("{secs}s"));
    out
}

/// apimachinery's types that are not JSON objects.
fn special(ty: &str, v: Value) -> Value {
    match ty {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => time(&v, false),
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => time(&v, true),
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            json!(duration(v["duration"].as_i64().unwrap_or(0)))
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            if v["type"].as_i64().unwrap_or(0) == 0 {
                json!(v["intVal"].as_i64().unwrap_or(0))
            } else {
                json!(v["strVal"].as_str().unwrap_or(""))
            }
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            json!(v["string"].as_str().unwrap_or(""))
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let key = if ty.ends_with("FieldsV1") {
                "Raw"
            } else {
                "raw"
            };
            v[key]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null)
        }
        _ => v,
    }
}

fn message(ty: &str, b: &[u8], depth: usize) -> Result<Value, ProtoError> {
    if depth > 64 {
        return err("messages nested too deeply");
    }
    let Some(fields) = messages().get(ty) else {
        return err(format!("no protobuf layout for {ty}"));
    };
    let mut out = Map::new();
    let mut r = Reader { b, i: 0 };
    while !r.done() {
        let (tag, wt, raw) = r.field()?;
        // Fields this version does not know are skipped, as Go's decoder does.
        let Some(f) = fields.get(&tag) else { continue };
        let Field(_, name, label, fty, vty, omit_zero) = f;
        match label {
            0 => {
                let v = value(fty, raw, wt, depth)?;
                // Go writes every non-pointer scalar, zero ones too; JSON omits the zero
                // `omitempty` ones (and empty strings read as absent).
                let zero = v.as_str() == Some("")
                    || (*omit_zero == 1 && (v == json!(0) || v == json!(false)));
                if zero {
                    continue;
                }
                out.insert(name.clone(), special(fty, v));
            }
            1 => {
                let list = out
                    .entry(name.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else { continue };
                match raw {
                    Raw::Bytes(b)
                        if is_scalar(fty) && !matches!(fty.as_str(), "string" | "bytes") =>
                    {
                        list.extend(packed(fty, b)?)
                    }
                    _ => list.push(special(fty, value(fty, raw, wt, depth)?)),
                }
            }
            _ => {
                let Raw::Bytes(entry) = raw else {
                    return err(format!("map field {name} must be length-delimited"));
                };
                let mut er = Reader { b: entry, i: 0 };
                let (mut k, mut val) = (Value::String(String::new()), Value::Null);
                while !er.done() {
                    let (t, w, rv) = er.field()?;
                    match t {
                        1 => k = scalar(fty, rv, w)?,
                        2 => val = special(vty, value(vty, rv, w, depth)?),
                        _ => {}
                    }
                }
                if val.is_null() {
                    val = if is_scalar(vty) {
                        match vty.as_str() {
                            "string" | "bytes" => json!(""),
                            "bool" => json!(false),
                            _ => json!(0),
                        }
                    } else {
                        special(vty, json!({}))
                    };
                }
                let key = match k {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                if let Value::Object(m) = out
                    .entry(name.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    m.insert(key, val);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// The protobuf package of an API group (`apps` -> `k8s.io.api.apps.v1`).
fn package(api_version: &str) -> Option<String> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("core", api_version),
    };
    if group == "meta.k8s.io" {
        return Some(format!("k8s.io.apimachinery.pkg.apis.meta.{version}"));
    }
    // The Go package is the group's first label (`rbac.authorization.k8s.io`: `rbac`).
    let short = match group.strip_suffix(".k8s.io") {
        Some(g) => g.split('.').next().unwrap_or(g),
        None => group,
    };
    if short.is_empty() || !short.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    Some(format!("k8s.io.api.{short}.{version}"))
}

/// Decodes an `application/vnd.kubernetes.protobuf` body into the object's JSON.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return err("the body does not start with the protobuf envelope's magic bytes");
    };
    let unknown = message("k8s.io.apimachinery.pkg.runtime.Unknown", rest, 0)?;
    let api_version = unknown["typeMeta"]["apiVersion"].as_str().unwrap_or("");
    let kind = unknown["typeMeta"]["kind"].as_str().unwrap_or("");
    if kind.is_empty() {
        return err("the protobuf envelope names no kind");
    }
    let raw = unknown["raw"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    let candidates = [
        package(api_version).map(|p| format!("{p}.{kind}")),
        Some(format!("k8s.io.apimachinery.pkg.apis.meta.v1.{kind}")),
    ];
    let ty = candidates
        .into_iter()
        .flatten()
        .find(|t| messages().contains_key(t))
        .ok_or_else(|| ProtoError(format!("no protobuf message for {api_version} {kind}")))?;
    let mut v = message(&ty, &raw, 0)?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(tag: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn int_field(tag: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3, out);
        varint(v, out);
    }

    /// A ConfigMap as client-go encodes it: metadata{name, labels}, data map.
    #[test]
    fn a_typed_clients_configmap_decodes_to_the_apis_json() {
        let mut meta = Vec::new();
        bytes_field(1, b"cfg", &mut meta);
        bytes_field(2, b"", &mut meta); // generateName, empty: omitted
        let mut label = Vec::new();
        bytes_field(1, b"app", &mut label);
        bytes_field(2, b"", &mut label);
        bytes_field(11, &label, &mut meta);
        let mut ts = Vec::new();
        int_field(1, 1_767_225_600, &mut ts);
        bytes_field(8, &ts, &mut meta); // creationTimestamp
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        let mut entry = Vec::new();
        bytes_field(1, b"k", &mut entry);
        bytes_field(2, b"v", &mut entry);
        bytes_field(2, &entry, &mut cm);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"ConfigMap", &mut tm);
        let mut unknown = Vec::new();
        bytes_field(1, &tm, &mut unknown);
        bytes_field(2, &cm, &mut unknown);
        let mut body = MAGIC.to_vec();
        body.extend(unknown);
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cfg", "labels": {"app": ""}, "creationTimestamp": "2026-01-01T00:00:00Z"},
                   "data": {"k": "v"}})
        );
    }

    #[test]
    fn int_or_string_and_quantities_map_as_go_maps_them() {
        // Deployment spec.strategy.rollingUpdate.maxSurge = "25%", a container's limits cpu=1.
        let mut ios = Vec::new();
        int_field(1, 1, &mut ios);
        bytes_field(3, b"25%", &mut ios);
        assert_eq!(
            special(
                "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
                message("k8s.io.apimachinery.pkg.util.intstr.IntOrString", &ios, 0).unwrap()
            ),
            json!("25%")
        );
        let mut port = Vec::new();
        int_field(2, 8080, &mut port);
        assert_eq!(
            special(
                "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
                message("k8s.io.apimachinery.pkg.util.intstr.IntOrString", &port, 0).unwrap()
            ),
            json!(8080)
        );
        assert_eq!(duration(90_000_000_000), "1m30s");
        assert_eq!(duration(3_600_000_000_000), "1h0m0s");
    }

    #[test]
    fn garbage_is_refused_not_misread() {
        assert!(decode(b"{\"kind\":\"Pod\"}").is_err());
        assert!(decode(b"k8s\0\x0a\xff").is_err());
        let mut body = MAGIC.to_vec();
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"NoSuchKind", &mut tm);
        bytes_field(1, &tm, &mut body);
        assert!(decode(&body).unwrap_err().0.contains("NoSuchKind"));
    }
}
