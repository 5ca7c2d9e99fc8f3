//! What the API server does to an object of each kind before it is stored: defaulting
//! (`pkg/apis/*/v1/defaults.go`), the fields the server owns (uid, creationTimestamp,
//! generation, status on the main resource), validation, and strict decoding.

use serde_json::{json, Map, Value};

use super::resources::Resource;
use crate::api::validation::{self as v, FieldError};

/// The alphabet of generated name suffixes (apimachinery `util/rand`: no vowels, no 0/1/3).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom(2) does not fail for small requests once the pool is initialised; a zeroed
    // buffer would still yield a valid (if predictable) suffix.
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    b
}

/// `n` random characters of the name alphabet.
pub fn random_suffix(n: usize) -> String {
    random_bytes::<16>()
        .iter()
        .take(n)
        .map(|b| ALPHANUMS[*b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// A random (version 4) UUID.
pub fn new_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    crate::api::validation::uuid_shape(&h)
}

/// Whether the object decodes as `r`'s kind (the type check of the API server's decoder;
/// unknown fields are the schemas' business, [`super::schema::unknown_fields`]).
pub fn decodes(r: &Resource, obj: &Value) -> Result<(), String> {
    use k8s_openapi::api::*;
    fn check<T: serde::de::DeserializeOwned>(obj: &Value) -> Result<(), String> {
        T::deserialize(obj).map(|_| ()).map_err(|e| e.to_string())
    }
    match r.definition {
        "io.k8s.api.core.v1.Binding" => check::<core::v1::Binding>(obj),
        "io.k8s.api.core.v1.ConfigMap" => check::<core::v1::ConfigMap>(obj),
        "io.k8s.api.core.v1.Endpoints" => check::<core::v1::Endpoints>(obj),
        "io.k8s.api.core.v1.Event" => check::<core::v1::Event>(obj),
        "io.k8s.api.core.v1.Namespace" => check::<core::v1::Namespace>(obj),
        "io.k8s.api.core.v1.Node" => check::<core::v1::Node>(obj),
        "io.k8s.api.core.v1.Pod" => check::<core::v1::Pod>(obj),
        "io.k8s.api.core.v1.PersistentVolume" => check::<core::v1::PersistentVolume>(obj),
        "io.k8s.api.core.v1.PersistentVolumeClaim" => check::<core::v1::PersistentVolumeClaim>(obj),
        "io.k8s.api.core.v1.ReplicationController" => check::<core::v1::ReplicationController>(obj),
        "io.k8s.api.core.v1.Secret" => check::<core::v1::Secret>(obj),
        "io.k8s.api.core.v1.ServiceAccount" => check::<core::v1::ServiceAccount>(obj),
        "io.k8s.api.core.v1.Service" => check::<core::v1::Service>(obj),
        "io.k8s.api.apps.v1.ControllerRevision" => check::<apps::v1::ControllerRevision>(obj),
        "io.k8s.api.apps.v1.DaemonSet" => check::<apps::v1::DaemonSet>(obj),
        "io.k8s.api.apps.v1.Deployment" => check::<apps::v1::Deployment>(obj),
        "io.k8s.api.apps.v1.ReplicaSet" => check::<apps::v1::ReplicaSet>(obj),
        "io.k8s.api.apps.v1.StatefulSet" => check::<apps::v1::StatefulSet>(obj),
        "io.k8s.api.authentication.v1.SelfSubjectReview" => {
            check::<authentication::v1::SelfSubjectReview>(obj)
        }
        "io.k8s.api.authorization.v1.SelfSubjectAccessReview" => {
            check::<authorization::v1::SelfSubjectAccessReview>(obj)
        }
        "io.k8s.api.authorization.v1.SelfSubjectRulesReview" => {
            check::<authorization::v1::SelfSubjectRulesReview>(obj)
        }
        "io.k8s.api.batch.v1.CronJob" => check::<batch::v1::CronJob>(obj),
        "io.k8s.api.batch.v1.Job" => check::<batch::v1::Job>(obj),
        "io.k8s.api.coordination.v1.Lease" => check::<coordination::v1::Lease>(obj),
        "io.k8s.api.discovery.v1.EndpointSlice" => check::<discovery::v1::EndpointSlice>(obj),
        "io.k8s.api.events.v1.Event" => check::<events::v1::Event>(obj),
        "io.k8s.api.rbac.v1.ClusterRole" => check::<rbac::v1::ClusterRole>(obj),
        "io.k8s.api.rbac.v1.ClusterRoleBinding" => check::<rbac::v1::ClusterRoleBinding>(obj),
        "io.k8s.api.rbac.v1.Role" => check::<rbac::v1::Role>(obj),
        "io.k8s.api.rbac.v1.RoleBinding" => check::<rbac::v1::RoleBinding>(obj),
        "io.k8s.api.storage.v1.StorageClass" => check::<storage::v1::StorageClass>(obj),
        other => Err(format!("no type for {other}")),
    }
}

fn obj<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let m = v.as_object_mut()?;
    m.entry(key.to_string())
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

fn set_default(m: &mut Map<String, Value>, key: &str, val: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), val);
    }
}

/// SetDefaults_Probe and SetDefaults_HTTPGetAction: a zero (or absent) field takes its
/// default, as Go's zero values do.
fn default_probe(p: &mut Map<String, Value>) {
    for (k, d) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        if p.get(k)
            .is_none_or(|v| v.is_null() || v.as_i64() == Some(0))
        {
            p.insert(k.into(), json!(d));
        }
    }
    if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
        for (k, d) in [("path", "/"), ("scheme", "HTTP")] {
            if h.get(k)
                .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
            {
                h.insert(k.into(), json!(d));
            }
        }
    }
}

/// `pkg/apis/core/v1/defaults.go` for a pod spec (also inside templates).
fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = c.as_object_mut() else { continue };
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
                    default_probe(p);
                }
            }
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "resources", json!({}));
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let last = image.rsplit('/').next().unwrap_or(image);
            let latest = !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
            set_default(
                c,
                "imagePullPolicy",
                json!(if latest { "Always" } else { "IfNotPresent" }),
            );
            for p in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_object_mut() {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
    for vol in spec
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(vol) = vol.as_object_mut() else {
            continue;
        };
        for (src, key) in [("configMap", "defaultMode"), ("secret", "defaultMode")] {
            if let Some(s) = vol.get_mut(src).and_then(Value::as_object_mut) {
                set_default(s, key, json!(0o644));
            }
        }
    }
}

fn default_template(spec: &mut Map<String, Value>) {
    if let Some(ps) = spec
        .get_mut("template")
        .and_then(|t| t.as_object_mut())
        .and_then(|t| t.entry("spec").or_insert_with(|| json!({})).as_object_mut())
    {
        default_pod_spec(ps);
    }
}

/// Defaults for `r`'s kind, in place.
pub fn defaults(r: &Resource, o: &mut Value) {
    match (r.group, r.kind) {
        ("", "Pod") => {
            if let Some(spec) = obj(o, "spec") {
                default_pod_spec(spec);
                // SetDefaults_Pod: only pods, not templates.
                set_default(spec, "enableServiceLinks", json!(true));
                for list in ["containers", "initContainers"] {
                    for c in spec
                        .get_mut(list)
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        let limits = c["resources"]["limits"].clone();
                        if let (Some(l), Some(res)) =
                            (limits.as_object(), c["resources"].as_object_mut())
                        {
                            let req = res.entry("requests").or_insert_with(|| json!({}));
                            if let Some(req) = req.as_object_mut() {
                                for (k, v) in l {
                                    req.entry(k.clone()).or_insert_with(|| v.clone());
                                }
                            }
                        }
                    }
                }
                set_default(spec, "serviceAccountName", json!("default"));
                // The DefaultTolerationSeconds admission plugin.
                let tol = spec.entry("tolerations").or_insert_with(|| json!([]));
                for key in [
                    "node.kubernetes.io/not-ready",
                    "node.kubernetes.io/unreachable",
                ] {
                    if let Some(list) = tol.as_array_mut() {
                        if !list.iter().any(|t| t["key"] == key) {
                            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                        }
                    }
                }
            }
        }
        ("", "Service") => {
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                let ty = spec["type"].as_str().unwrap_or("").to_string();
                if ty == "NodePort" || ty == "LoadBalancer" {
                    set_default(spec, "externalTrafficPolicy", json!("Cluster"));
                }
                if ty != "ExternalName" {
                    set_default(spec, "ipFamilies", json!(["IPv4"]));
                    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                }
                for p in spec
                    .get_mut("ports")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = p.as_object_mut() {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
        }
        ("", "Namespace") => {
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            if let Some(labels) = obj(o, "metadata").and_then(|m| {
                m.entry("labels")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
            }) {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
        }
        ("", "ReplicationController") => {
            let labels = o["spec"]["template"]["metadata"]["labels"].clone();
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "minReadySeconds", json!(0));
                if labels.is_object() {
                    set_default(spec, "selector", labels.clone());
                }
                default_template(spec);
            }
            if labels.is_object() {
                if let Some(m) = obj(o, "metadata") {
                    set_default(m, "labels", labels);
                }
            }
        }
        ("", "Secret") => {
            if let Some(m) = o.as_object_mut() {
                set_default(m, "type", json!("Opaque"));
                // stringData is write-only: merged into data (base64), where it wins.
                if let Some(Value::Object(sd)) = m.remove("stringData") {
                    use base64::Engine;
                    let data = m.entry("data").or_insert_with(|| json!({}));
                    if let Some(data) = data.as_object_mut() {
                        for (k, v) in sd {
                            let text = v.as_str().unwrap_or("").as_bytes().to_vec();
                            data.insert(
                                k,
                                json!(base64::engine::general_purpose::STANDARD.encode(text)),
                            );
                        }
                    }
                }
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
                if let Some(s) = strategy.as_object_mut() {
                    set_default(s, "type", json!("RollingUpdate"));
                    if s["type"] == "RollingUpdate" {
                        let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                        if let Some(ru) = ru.as_object_mut() {
                            set_default(ru, "maxUnavailable", json!("25%"));
                            set_default(ru, "maxSurge", json!("25%"));
                        }
                    }
                }
                default_template(spec);
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "replicas", json!(1));
                default_template(spec);
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "revisionHistoryLimit", json!(10));
                let st = spec.entry("updateStrategy").or_insert_with(|| json!({}));
                if let Some(s) = st.as_object_mut() {
                    set_default(s, "type", json!("RollingUpdate"));
                    if s["type"] == "RollingUpdate" {
                        set_default(
                            s,
                            "rollingUpdate",
                            json!({"maxUnavailable": 1, "maxSurge": 0}),
                        );
                    }
                }
                default_template(spec);
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                set_default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                default_template(spec);
            }
        }
        ("batch", "Job") => {
            let uid = o["metadata"]["uid"].as_str().unwrap_or("").to_string();
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            if let Some(spec) = obj(o, "spec") {
                job_defaults(spec);
                generate_job_selector(spec, &uid, &name);
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        ("", "PersistentVolume") => {
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                set_default(spec, "volumeMode", json!("Filesystem"));
                if let Some(hp) = spec.get_mut("hostPath").and_then(Value::as_object_mut) {
                    set_default(hp, "type", json!(""));
                }
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if let Some(m) = o.as_object_mut() {
                set_default(m, "reclaimPolicy", json!("Delete"));
                set_default(m, "volumeBindingMode", json!("Immediate"));
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = obj(o, "spec") {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(js) = spec
                    .get_mut("jobTemplate")
                    .and_then(Value::as_object_mut)
                    .and_then(|t| t.entry("spec").or_insert_with(|| json!({})).as_object_mut())
                {
                    job_defaults(js);
                }
            }
        }
        _ => {}
    }
}

/// Upstream's `generateSelector`: unless `manualSelector`, a new Job selects its pods by its
/// own uid, and its template carries that label and the Job's name (both spellings).
fn generate_job_selector(spec: &mut Map<String, Value>, uid: &str, name: &str) {
    if uid.is_empty()
        || spec.get("manualSelector") == Some(&json!(true))
        || spec.get("selector").is_some_and(|s| !s.is_null())
    {
        return;
    }
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let t = spec.entry("template").or_insert_with(|| json!({}));
    if let Some(t) = t.as_object_mut() {
        let m = t.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = m.as_object_mut() {
            let l = m.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = l.as_object_mut() {
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", uid),
                    ("batch.kubernetes.io/job-name", name),
                    ("controller-uid", uid),
                    ("job-name", name),
                ] {
                    l.insert(k.into(), json!(v));
                }
            }
        }
    }
}

fn job_defaults(spec: &mut Map<String, Value>) {
    // Both unset: a single pod to one completion; parallelism alone: a work queue.
    if spec.get("parallelism").is_none_or(Value::is_null)
        && spec.get("completions").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    default_template(spec);
}

/// The status a new object starts with (the client's is ignored).
pub fn initial_status(r: &Resource, o: &Value) -> Option<Value> {
    if !r.has_status() {
        return None;
    }
    Some(match (r.group, r.kind) {
        ("", "Pod") => json!({"phase": "Pending", "qosClass": qos_class(o)}),
        ("", "Service") => json!({"loadBalancer": {}}),
        ("", "Namespace") => json!({"phase": "Active"}),
        ("", "PersistentVolumeClaim" | "PersistentVolume") => json!({"phase": "Pending"}),
        ("", "Node") => return o.get("status").cloned(),
        _ => json!({}),
    })
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| pod["spec"][*l].as_array().into_iter().flatten())
        .collect();
    let (mut any, mut guaranteed) = (false, !containers.is_empty());
    for c in containers {
        let (req, lim) = (&c["resources"]["requests"], &c["resources"]["limits"]);
        for res in ["cpu", "memory"] {
            let (rq, lm) = (&req[res], &lim[res]);
            if !rq.is_null() || !lm.is_null() {
                any = true;
            }
            if lm.is_null() || (!rq.is_null() && rq != lm) {
                guaranteed = false;
            }
        }
    }
    if guaranteed && any {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

/// Name rules per kind: DNS labels for namespaces and services, subdomains otherwise.
fn name_errors(r: &Resource, name: &str) -> Vec<String> {
    match r.plural {
        "namespaces" | "services" => v::dns_label(name),
        _ => v::dns_subdomain(name),
    }
}

/// Metadata every object is checked for: name, namespace, labels, annotations.
fn validate_meta(r: &Resource, o: &Value, errs: &mut Vec<FieldError>) {
    let m = &o["metadata"];
    match m["name"].as_str() {
        None | Some("") => errs.push(v::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(n) => {
            for e in name_errors(r, n) {
                errs.push(v::invalid("metadata.name", n, e));
            }
        }
    }
    if let Some(labels) = m["labels"].as_object() {
        for (k, val) in labels {
            let s = val.as_str().unwrap_or("");
            if crate::api::selector::parse_labels(k).is_err() {
                errs.push(v::invalid(
                    "metadata.labels",
                    k.as_str(),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                ));
            }
            if !crate::api::selector::label_value_ok(s) {
                errs.push(v::invalid(
                    "metadata.labels",
                    s,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                ));
            }
        }
    }
    if let Some(ann) = m["annotations"].as_object() {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            errs.push(v::too_long("metadata.annotations", 256 * 1024));
        }
    }
}

fn as_typed<T: serde::de::DeserializeOwned>(o: &Value) -> Option<T> {
    T::deserialize(o).ok()
}

fn replicas(o: &Value, errs: &mut Vec<FieldError>) {
    if let Some(n) = o["spec"]["replicas"].as_i64() {
        if n < 0 {
            errs.push(v::invalid(
                "spec.replicas",
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// The selector must be non-empty and select the template's labels.
fn selects_template(o: &Value, errs: &mut Vec<FieldError>, legacy: bool) {
    let tl: std::collections::BTreeMap<String, String> =
        serde_json::from_value(o["spec"]["template"]["metadata"]["labels"].clone())
            .unwrap_or_default();
    let sel = if legacy {
        let m: std::collections::BTreeMap<String, String> =
            serde_json::from_value(o["spec"]["selector"].clone()).unwrap_or_default();
        Ok(crate::api::selector::Labels(
            m.into_iter()
                .map(|(k, v)| crate::api::selector::Requirement::Equals(k, v))
                .collect(),
        ))
    } else {
        match as_typed::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(
            &o["spec"]["selector"],
        ) {
            Some(s) => crate::api::selector::from_label_selector(&s),
            None => {
                errs.push(v::required("spec.selector", ""));
                return;
            }
        }
    };
    match sel {
        Ok(s) if s.is_empty() => errs.push(v::invalid(
            "spec.selector",
            "",
            "empty selector is invalid for deployment",
        )),
        Ok(s) if !s.matches(&tl) => errs.push(v::invalid(
            "spec.template.metadata.labels",
            crate::api::selector::Labels(
                tl.iter()
                    .map(|(k, v)| crate::api::selector::Requirement::Equals(k.clone(), v.clone()))
                    .collect(),
            )
            .to_string(),
            "`selector` does not match template `labels`",
        )),
        Ok(_) => {}
        Err(e) => errs.push(v::invalid("spec.selector", "", e.to_string())),
    }
}

/// A pod template's spec, checked as a pod's, with its errors under `prefix`.
fn template(o: &Value, prefix: &str, errs: &mut Vec<FieldError>) {
    template_at(&o["spec"]["template"], prefix, errs)
}

/// A claim's or volume's access modes: at least one, each known.
fn access_modes(v: &Value, at: &str, errs: &mut Vec<FieldError>) {
    let modes: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if modes.is_empty() {
        errs.push(v::required(at, "at least 1 access mode is required"));
    }
    let known = [
        "ReadOnlyMany",
        "ReadWriteMany",
        "ReadWriteOnce",
        "ReadWriteOncePod",
    ];
    for m in &modes {
        if !known.contains(m) {
            errs.push(v::not_supported(at, *m, &known));
        }
    }
    if modes.contains(&"ReadWriteOncePod") && modes.len() > 1 {
        errs.push(v::forbidden(
            at,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

/// `requests` (or `capacity`) must have a positive `storage`.
fn storage_size(m: &Value, at: &str, errs: &mut Vec<FieldError>) {
    let f = format!("{at}[storage]");
    // A quantity may come as a JSON number.
    let q = match &m["storage"] {
        Value::String(q) => Some(q.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match q {
        None => errs.push(v::required(&f, "")),
        Some(q) => match crate::api::quantity::parse_quantity(&q, 1) {
            Ok(n) if n > 0 => {}
            Ok(_) => errs.push(v::invalid(&f, q, "must be greater than zero")),
            Err(e) => errs.push(v::invalid(&f, q, e.to_string())),
        },
    }
}

/// A Job's spec (also a CronJob's `jobTemplate.spec`), as upstream's `validateJobSpec`.
fn job_spec(s: &Value, at: &str, errs: &mut Vec<FieldError>) {
    for f in ["parallelism", "completions", "backoffLimit"] {
        if let Some(n) = s[f].as_i64().filter(|n| *n < 0) {
            errs.push(v::invalid(
                &format!("{at}.{f}"),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
    for f in ["activeDeadlineSeconds", "ttlSecondsAfterFinished"] {
        let min = if f == "activeDeadlineSeconds" { 1 } else { 0 };
        if let Some(n) = s[f].as_i64().filter(|n| *n < min) {
            let what = if min == 1 {
                "must be greater than 0"
            } else {
                "must be greater than or equal to 0"
            };
            errs.push(v::invalid(&format!("{at}.{f}"), n, what));
        }
    }
    match s["completionMode"].as_str() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if s["completions"].is_null() {
                errs.push(v::required(
                    &format!("{at}.completions"),
                    "when completion mode is Indexed",
                ));
            }
        }
        Some(m) => errs.push(v::not_supported(
            &format!("{at}.completionMode"),
            m,
            &["NonIndexed", "Indexed"],
        )),
    }
    let rp = s["template"]["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("");
    if rp != "Never" && rp != "OnFailure" {
        errs.push(v::not_supported(
            &format!("{at}.template.spec.restartPolicy"),
            rp,
            &["OnFailure", "Never"],
        ));
    }
    for (i, r) in s["podFailurePolicy"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = format!("{at}.podFailurePolicy.rules[{i}]");
        let a = r["action"].as_str().unwrap_or("");
        if !["FailJob", "FailIndex", "Ignore", "Count"].contains(&a) {
            errs.push(v::not_supported(
                &format!("{f}.action"),
                a,
                &["Count", "FailIndex", "FailJob", "Ignore"],
            ));
        }
        if rp != "Never" {
            errs.push(v::invalid(
                &format!("{at}.template.spec.restartPolicy"),
                rp,
                "only \"Never\" is supported when podFailurePolicy is specified",
            ));
        }
        match (r["onExitCodes"].is_null(), r["onPodConditions"].is_null()) {
            (true, true) => errs.push(v::invalid(
                &f,
                "",
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            (false, false) => errs.push(v::invalid(
                &f,
                "",
                "specifying both OnExitCodes and OnPodConditions is not supported",
            )),
            _ => {}
        }
        if let Some(op) = r["onExitCodes"]["operator"].as_str() {
            if op != "In" && op != "NotIn" {
                errs.push(v::not_supported(
                    &format!("{f}.onExitCodes.operator"),
                    op,
                    &["In", "NotIn"],
                ));
            }
        }
    }
    template_at(&s["template"], &format!("{at}.template"), errs);
}

fn template_at(t: &Value, prefix: &str, errs: &mut Vec<FieldError>) {
    if t.is_null() {
        errs.push(v::required(prefix, ""));
        return;
    }
    let mut pod = json!({"metadata": {"name": "template"}, "spec": t["spec"]});
    if let Some(m) = t["metadata"].as_object() {
        pod["metadata"]["labels"] = m.get("labels").cloned().unwrap_or(Value::Null);
    }
    match as_typed::<k8s_openapi::api::core::v1::Pod>(&pod) {
        Some(p) => {
            for mut e in v::pod(&p) {
                if let Some(rest) = e.field.strip_prefix("spec.") {
                    e.field = format!("{prefix}.spec.{rest}");
                    errs.push(e);
                }
            }
        }
        None => errs.push(v::invalid(
            &format!("{prefix}.spec"),
            "",
            "cannot be decoded",
        )),
    }
}

/// Validation for `r`'s kind.
pub fn validate(r: &Resource, o: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(r, o, &mut errs);
    match (r.group, r.kind) {
        ("", "Pod") => {
            if let Some(p) = as_typed::<k8s_openapi::api::core::v1::Pod>(o) {
                errs.extend(
                    v::pod(&p)
                        .into_iter()
                        .filter(|e| e.field != "metadata.name"),
                );
            }
        }
        ("", "ConfigMap") => {
            if let Some(c) = as_typed(o) {
                errs.extend(
                    v::config_map(&c)
                        .into_iter()
                        .filter(|e| !e.field.starts_with("metadata.")),
                );
            }
        }
        ("", "Secret") => {
            if let Some(s) = as_typed(o) {
                errs.extend(
                    v::secret(&s)
                        .into_iter()
                        .filter(|e| !e.field.starts_with("metadata.")),
                );
            }
        }
        ("", "Service") => {
            if let Some(s) = as_typed::<k8s_openapi::api::core::v1::Service>(o) {
                if let Err(inv) = crate::api::service::spec::from_service(&s, Default::default()) {
                    errs.extend(
                        inv.causes
                            .into_iter()
                            .filter(|e| !e.field.starts_with("metadata.")),
                    );
                }
            }
        }
        ("", "ReplicationController") => {
            replicas(o, &mut errs);
            selects_template(o, &mut errs, true);
            template(o, "spec.template", &mut errs);
        }
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            replicas(o, &mut errs);
            selects_template(o, &mut errs, false);
            template(o, "spec.template", &mut errs);
        }
        ("apps", "StatefulSet") => {
            replicas(o, &mut errs);
            selects_template(o, &mut errs, false);
            // The claim templates are volumes of every pod (mounts may name them).
            let mut t = o["spec"]["template"].clone();
            let mut vols: Vec<Value> = t["spec"]["volumes"].as_array().cloned().unwrap_or_default();
            for (i, c) in o["spec"]["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let n = c["metadata"]["name"].as_str().unwrap_or("");
                let f = format!("spec.volumeClaimTemplates[{i}]");
                for m in v::dns_label(n) {
                    errs.push(v::invalid(&format!("{f}.metadata.name"), n, m));
                }
                access_modes(
                    &c["spec"]["accessModes"],
                    &format!("{f}.spec.accessModes"),
                    &mut errs,
                );
                storage_size(
                    &c["spec"]["resources"]["requests"],
                    &format!("{f}.spec.resources"),
                    &mut errs,
                );
                vols.retain(|v| v["name"] != n);
                vols.push(json!({"name": n, "persistentVolumeClaim": {"claimName": format!("{n}-claim")}}));
            }
            if !vols.is_empty() && !t.is_null() {
                t["spec"]["volumes"] = json!(vols);
            }
            template_at(&t, "spec.template", &mut errs);
            if let Some(svc) = o["spec"]["serviceName"].as_str().filter(|s| !s.is_empty()) {
                for m in v::dns_label(svc) {
                    errs.push(v::invalid("spec.serviceName", svc, m));
                }
            }
        }
        ("batch", "Job") => {
            job_spec(&o["spec"], "spec", &mut errs);
            selects_template(o, &mut errs, false);
        }
        ("rbac.authorization.k8s.io", kind) => super::rbac::validate(kind, o, &mut errs),
        ("", "Endpoints") => {
            for (i, s) in o["subsets"].as_array().into_iter().flatten().enumerate() {
                for list in ["addresses", "notReadyAddresses"] {
                    for (j, a) in s[list].as_array().into_iter().flatten().enumerate() {
                        let f = format!("subsets[{i}].{list}[{j}].ip");
                        errs.extend(v::endpoint_ip(&f, a["ip"].as_str().unwrap_or("")));
                    }
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice")
            if matches!(o["addressType"].as_str(), Some("IPv4" | "IPv6")) =>
        {
            for (i, e) in o["endpoints"].as_array().into_iter().flatten().enumerate() {
                for (j, a) in e["addresses"].as_array().into_iter().flatten().enumerate() {
                    let f = format!("endpoints[{i}].addresses[{j}]");
                    errs.extend(v::endpoint_ip(&f, a.as_str().unwrap_or("")));
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            access_modes(&o["spec"]["accessModes"], "spec.accessModes", &mut errs);
            storage_size(
                &o["spec"]["resources"]["requests"],
                "spec.resources",
                &mut errs,
            );
            if let Some(m) = o["spec"]["volumeMode"].as_str() {
                if m != "Filesystem" && m != "Block" {
                    errs.push(v::not_supported(
                        "spec.volumeMode",
                        m,
                        &["Block", "Filesystem"],
                    ));
                }
            }
        }
        ("", "PersistentVolume") => {
            let spec = &o["spec"];
            access_modes(&spec["accessModes"], "spec.accessModes", &mut errs);
            storage_size(&spec["capacity"], "spec.capacity", &mut errs);
            let p = spec["persistentVolumeReclaimPolicy"].as_str().unwrap_or("");
            if !["Retain", "Delete", "Recycle"].contains(&p) {
                errs.push(v::not_supported(
                    "spec.persistentVolumeReclaimPolicy",
                    p,
                    &["Delete", "Recycle", "Retain"],
                ));
            }
            let sources = [
                "hostPath",
                "local",
                "nfs",
                "csi",
                "iscsi",
                "fc",
                "cephfs",
                "rbd",
                "flexVolume",
                "azureFile",
                "glusterfs",
                "portworxVolume",
                "scaleIO",
                "storageos",
                "vsphereVolume",
                "photonPersistentDisk",
                "quobyte",
                "cinder",
                "flocker",
                "gcePersistentDisk",
                "awsElasticBlockStore",
                "azureDisk",
            ];
            let given: Vec<&str> = sources
                .iter()
                .copied()
                .filter(|k| !spec[*k].is_null())
                .collect();
            match given.len() {
                0 => errs.push(v::required("spec", "must specify a volume type")),
                1 => {}
                _ => errs.push(v::forbidden(
                    &format!("spec.{}", given[1]),
                    "may not specify more than 1 volume type",
                )),
            }
            for (src, f) in [
                ("hostPath", "spec.hostPath.path"),
                ("local", "spec.local.path"),
            ] {
                if let Some(path) = spec[src]["path"].as_str() {
                    if !path.starts_with('/') && src == "local" {
                        errs.push(v::invalid(f, path, "must be an absolute path"));
                    }
                    if path.split('/').any(|c| c == "..") {
                        errs.push(v::invalid(f, path, "must not contain '..'"));
                    }
                } else if !spec[src].is_null() {
                    errs.push(v::required(f, ""));
                }
            }
            if !spec["local"].is_null() && spec["nodeAffinity"].is_null() {
                errs.push(v::required(
                    "spec.nodeAffinity",
                    "Local volume requires node affinity",
                ));
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            let p = o["provisioner"].as_str().unwrap_or("");
            if p.is_empty() {
                errs.push(v::required("provisioner", ""));
            }
            let rp = o["reclaimPolicy"].as_str().unwrap_or("");
            if rp != "Delete" && rp != "Retain" {
                errs.push(v::not_supported("reclaimPolicy", rp, &["Delete", "Retain"]));
            }
            let m = o["volumeBindingMode"].as_str().unwrap_or("");
            if m != "Immediate" && m != "WaitForFirstConsumer" {
                errs.push(v::not_supported(
                    "volumeBindingMode",
                    m,
                    &["Immediate", "WaitForFirstConsumer"],
                ));
            }
        }
        ("batch", "CronJob") => {
            let s = o["spec"]["schedule"].as_str().unwrap_or("");
            if s.is_empty() {
                errs.push(v::required("spec.schedule", ""));
            } else if s.contains("TZ") {
                errs.push(v::invalid(
                    "spec.schedule",
                    s,
                    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                ));
            } else if let Err(e) = crate::api::cron::Schedule::parse(s) {
                errs.push(v::invalid("spec.schedule", s, e));
            }
            if let Some(tz) = o["spec"]["timeZone"].as_str() {
                // Schedules run in UTC here (knode carries no time zone database).
                if tz != "UTC" && tz != "Etc/UTC" {
                    errs.push(v::not_supported("spec.timeZone", tz, &["Etc/UTC", "UTC"]));
                }
            }
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            if name.len() > 52 {
                errs.push(v::invalid(
                    "metadata.name",
                    name,
                    "must be no more than 52 characters",
                ));
            }
            for (f, min) in [
                ("startingDeadlineSeconds", 0),
                ("successfulJobsHistoryLimit", 0),
                ("failedJobsHistoryLimit", 0),
            ] {
                if let Some(n) = o["spec"][f].as_i64().filter(|n| *n < min) {
                    errs.push(v::invalid(
                        &format!("spec.{f}"),
                        n,
                        "must be greater than or equal to 0",
                    ));
                }
            }
            if let Some(p) = o["spec"]["concurrencyPolicy"].as_str() {
                if !["Allow", "Forbid", "Replace"].contains(&p) {
                    errs.push(v::not_supported(
                        "spec.concurrencyPolicy",
                        p,
                        &["Allow", "Forbid", "Replace"],
                    ));
                }
            }
            job_spec(
                &o["spec"]["jobTemplate"]["spec"],
                "spec.jobTemplate.spec",
                &mut errs,
            );
        }
        _ => {}
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    #[test]
    fn deployments_get_the_real_defaults() {
        let r = find("apps", "v1", "deployments").unwrap();
        let mut d = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}}}});
        defaults(r, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        assert!(validate(r, &d).is_empty(), "{:?}", validate(r, &d));
    }

    #[test]
    fn a_selector_that_misses_the_template_is_invalid() {
        let r = find("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        let errs = validate(r, &d);
        assert!(
            errs.iter()
                .any(|e| e.field == "spec.template.metadata.labels"),
            "{errs:?}"
        );
    }

    #[test]
    fn generated_names_and_uids_have_the_right_shape() {
        let s = random_suffix(5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| ALPHANUMS.contains(&b)));
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(new_uid(), u);
    }
}
