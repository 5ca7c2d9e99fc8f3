//! Server-side printing: the `Table` kubectl asks for, with the columns of
//! `pkg/printers/internalversion/printers.go` for every kind served. The wide columns
//! (priority 1) are always included; kubectl hides them unless `-o wide`.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::resources::Resource;

type Col = (&'static str, &'static str, u8);

fn columns(r: &Resource) -> &'static [Col] {
    match (r.group, r.kind) {
        ("", "Pod") => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        ("", "ReplicationController") | ("apps", "ReplicaSet") => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "Deployment") => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "DaemonSet") => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "StatefulSet") => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        ("apps", "ControllerRevision") => &[
            ("Name", "string", 0),
            ("Controller", "string", 0),
            ("Revision", "integer", 0),
            ("Age", "string", 0),
        ],
        ("batch", "Job") => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("batch", "CronJob") => &[
            ("Name", "string", 0),
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("", "Service") => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        ("", "Endpoints") => &[
            ("Name", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        ("discovery.k8s.io", "EndpointSlice") => &[
            ("Name", "string", 0),
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "PersistentVolumeClaim") => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        ("", "PersistentVolume") => &[
            ("Name", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        ("storage.k8s.io", "StorageClass") => &[
            ("Name", "string", 0),
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Node") => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        ("", "Namespace") => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Event") | ("events.k8s.io", "Event") => &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "string", 1),
            ("Name", "string", 1),
        ],
        ("", "ConfigMap") => &[
            ("Name", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        ("", "Secret") => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        ("", "ServiceAccount") => &[
            ("Name", "string", 0),
            ("Secrets", "integer", 0),
            ("Age", "string", 0),
        ],
        ("coordination.k8s.io", "Lease") => &[
            ("Name", "string", 0),
            ("Holder", "string", 0),
            ("Age", "string", 0),
        ],
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => &[
            ("Name", "string", 0),
            ("Role", "string", 0),
            ("Age", "string", 0),
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ],
        _ => &[("Name", "string", 0), ("Created At", "date", 0)],
    }
}

/// The column definitions of `r`'s table.
pub fn column_definitions(r: &Resource) -> Value {
    Value::Array(
        columns(r)
            .iter()
            .map(|(name, ty, prio)| {
                let mut c = json!({"name": name, "type": ty, "format": "", "description": description(name), "priority": prio});
                if *name == "Name" {
                    c["format"] = json!("name");
                }
                if *ty == "date" {
                    c["format"] = json!("date-time");
                }
                c
            })
            .collect(),
    )
}

fn description(col: &str) -> &'static str {
    match col {
        "Name" => "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        "Age" => "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
        _ => "",
    }
}

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.to_utc())
}

fn age_of(v: &Value, now: DateTime<Utc>) -> String {
    match ts(v) {
        Some(t) => crate::api::time::human_duration((now - t).num_seconds()),
        None => "<unknown>".into(),
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// `RWO,ROX,RWX,RWOP`, as kubectl abbreviates access modes.
fn access_modes(v: &Value) -> String {
    let have: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| have.contains(m))
    .map(|(_, a)| *a)
    .collect::<Vec<_>>()
    .join(",")
}

fn volume_mode(v: &Value) -> String {
    v.as_str().unwrap_or("<unset>").to_string()
}

fn none_if_empty(x: String) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x
    }
}

/// `k=v,k2=v2` of a string map, sorted; `<none>` for an empty one.
fn format_labels(m: &Value) -> String {
    let mut pairs: Vec<String> = m
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    none_if_empty(pairs.join(","))
}

/// A `LabelSelector` as a string (`metav1.FormatLabelSelector`).
pub fn format_selector(sel: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        let mut ls: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        ls.sort();
        parts.extend(ls);
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = s(&e["key"]);
        let vals: Vec<String> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key,
            "DoesNotExist" => format!("!{key}"),
            _ => continue,
        });
    }
    none_if_empty(parts.join(","))
}

fn containers_images(spec: &Value) -> (String, String) {
    let cs = spec["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = cs.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<String> = cs.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

/// The pod STATUS / READY / RESTARTS cells (`printPod`).
pub fn pod_cells(p: &Value, now: DateTime<Utc>) -> (String, String, String) {
    let st = &p["status"];
    let spec = &p["spec"];
    let mut reason = s(&st["phase"]);
    if let Some(r) = st["reason"].as_str().filter(|r| !r.is_empty()) {
        reason = r.to_string();
    }
    let conds = st["conditions"].as_array().cloned().unwrap_or_default();
    if conds
        .iter()
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }
    let restartable_init: Vec<String> = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always")
        .map(|c| s(&c["name"]))
        .collect();
    let total = spec["containers"].as_array().map_or(0, Vec::len) + restartable_init.len();
    let mut ready = 0;
    let mut restarts = 0i64;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut note_restart = |cs: &Value, restarts: &mut i64| {
        *restarts += i(&cs["restartCount"]);
        if let Some(t) = ts(&cs["lastState"]["terminated"]["finishedAt"]) {
            if last_restart.is_none_or(|l| t > l) {
                last_restart = Some(t);
            }
        }
    };
    let init_statuses = st["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let n_init = spec["initContainers"].as_array().map_or(0, Vec::len);
    let mut initializing = false;
    for (idx, cs) in init_statuses.iter().enumerate() {
        note_restart(cs, &mut restarts);
        let name = s(&cs["name"]);
        let term = &cs["state"]["terminated"];
        let wait = &cs["state"]["waiting"];
        if term.is_object() && i(&term["exitCode"]) == 0 {
            continue;
        }
        if restartable_init.contains(&name) && cs["started"] == true {
            if cs["ready"] == true {
                ready += 1;
            }
            continue;
        }
        if term.is_object() {
            reason = if let Some(r) = term["reason"].as_str().filter(|r| !r.is_empty()) {
                format!("Init:{r}")
            } else if i(&term["signal"]) != 0 {
                format!("Init:Signal:{}", i(&term["signal"]))
            } else {
                format!("Init:ExitCode:{}", i(&term["exitCode"]))
            };
        } else if wait.is_object()
            && !wait["reason"].as_str().unwrap_or("").is_empty()
            && wait["reason"] != "PodInitializing"
        {
            reason = format!("Init:{}", s(&wait["reason"]));
        } else {
            reason = format!("Init:{idx}/{n_init}");
        }
        initializing = true;
        break;
    }
    let initialized = conds
        .iter()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    if !initializing || initialized {
        let statuses = st["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut has_running = false;
        for cs in statuses.iter().rev() {
            note_restart(cs, &mut restarts);
            let wait = &cs["state"]["waiting"];
            let term = &cs["state"]["terminated"];
            if let Some(r) = wait["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if term.is_object() {
                reason = if let Some(r) = term["reason"].as_str().filter(|r| !r.is_empty()) {
                    r.to_string()
                } else if i(&term["signal"]) != 0 {
                    format!("Signal:{}", i(&term["signal"]))
                } else {
                    format!("ExitCode:{}", i(&term["exitCode"]))
                };
            } else if cs["ready"] == true && cs["state"]["running"].is_object() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if conds
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
            {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let phase = s(&st["phase"]);
    if !p["metadata"]["deletionTimestamp"].is_null() && phase != "Succeeded" && phase != "Failed" {
        reason = if st["reason"] == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let restarts = match last_restart {
        Some(t) if restarts > 0 => format!(
            "{restarts} ({} ago)",
            crate::api::time::human_duration((now - t).num_seconds())
        ),
        _ => restarts.to_string(),
    };
    (format!("{ready}/{total}"), reason, restarts)
}

fn service_ports(spec: &Value) -> String {
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64().filter(|n| *n > 0) {
                Some(np) => format!("{}:{np}/{proto}", i(&p["port"])),
                None => format!("{}/{proto}", i(&p["port"])),
            }
        })
        .collect();
    none_if_empty(ports.join(","))
}

fn external_ip(o: &Value) -> String {
    let spec = &o["spec"];
    let ext: Vec<String> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    match spec["type"].as_str().unwrap_or("ClusterIP") {
        "ClusterIP" | "NodePort" => none_if_empty(ext.join(",")),
        "LoadBalancer" => {
            let mut ips: Vec<String> = o["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    i["ip"]
                        .as_str()
                        .or(i["hostname"].as_str())
                        .unwrap_or("")
                        .to_string()
                })
                .collect();
            ips.extend(ext);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => s(&spec["externalName"]),
        _ => "<unknown>".into(),
    }
}

fn list_max3(items: Vec<String>, empty: &str) -> String {
    if items.is_empty() {
        return empty.into();
    }
    let n = items.len();
    let mut out = items.into_iter().take(3).collect::<Vec<_>>().join(",");
    if n > 3 {
        out.push_str(&format!(" + {} more...", n - 3));
    }
    out
}

fn job_status(o: &Value) -> String {
    let conds = o["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| {
        conds
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    if has("Complete") {
        "Complete".into()
    } else if has("Failed") {
        "Failed".into()
    } else if !o["metadata"]["deletionTimestamp"].is_null() {
        "Terminating".into()
    } else if has("SuspendedJob") || has("Suspended") {
        "Suspended".into()
    } else if has("FailureTarget") {
        "FailureTarget".into()
    } else {
        "Running".into()
    }
}

/// One row's cells.
pub fn cells(r: &Resource, o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let m = &o["metadata"];
    let name = json!(s(&m["name"]));
    let age = json!(age_of(&m["creationTimestamp"], now));
    let spec = &o["spec"];
    let st = &o["status"];
    match (r.group, r.kind) {
        ("", "Pod") => {
            let (ready, status, restarts) = pod_cells(o, now);
            let gates = spec["readinessGates"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let gates = if gates.is_empty() {
                "<none>".to_string()
            } else {
                let conds = st["conditions"].as_array().cloned().unwrap_or_default();
                let ok = gates
                    .iter()
                    .filter(|g| {
                        conds
                            .iter()
                            .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                    })
                    .count();
                format!("{ok}/{}", gates.len())
            };
            vec![
                name,
                json!(ready),
                json!(status),
                json!(restarts),
                age,
                json!(none_if_empty(s(&st["podIP"]))),
                json!(none_if_empty(s(&spec["nodeName"]))),
                json!(none_if_empty(s(&st["nominatedNodeName"]))),
                json!(gates),
            ]
        }
        ("", "ReplicationController") | ("apps", "ReplicaSet") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            let sel = if r.kind == "ReplicationController" {
                format_labels(&spec["selector"])
            } else {
                format_selector(&spec["selector"])
            };
            vec![
                name,
                json!(spec["replicas"].as_i64().unwrap_or(1)),
                json!(i(&st["replicas"])),
                json!(i(&st["readyReplicas"])),
                age,
                json!(c),
                json!(im),
                json!(sel),
            ]
        }
        ("apps", "Deployment") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(&st["readyReplicas"]),
                    spec["replicas"].as_i64().unwrap_or(1)
                )),
                json!(i(&st["updatedReplicas"])),
                json!(i(&st["availableReplicas"])),
                age,
                json!(c),
                json!(im),
                json!(format_selector(&spec["selector"])),
            ]
        }
        ("apps", "DaemonSet") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(i(&st["desiredNumberScheduled"])),
                json!(i(&st["currentNumberScheduled"])),
                json!(i(&st["numberReady"])),
                json!(i(&st["updatedNumberScheduled"])),
                json!(i(&st["numberAvailable"])),
                json!(format_labels(&spec["template"]["spec"]["nodeSelector"])),
                age,
                json!(c),
                json!(im),
                json!(format_selector(&spec["selector"])),
            ]
        }
        ("apps", "StatefulSet") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(&st["readyReplicas"]),
                    spec["replicas"].as_i64().unwrap_or(1)
                )),
                age,
                json!(c),
                json!(im),
            ]
        }
        ("apps", "ControllerRevision") => {
            let owner = m["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|o| o["controller"] == true)
                .map(|o| {
                    let g = s(&o["apiVersion"]);
                    let g = g.split('/').next().unwrap_or("");
                    let kind = s(&o["kind"]).to_lowercase();
                    if g.is_empty() || !s(&o["apiVersion"]).contains('/') {
                        format!("{kind}/{}", s(&o["name"]))
                    } else {
                        format!("{kind}.{g}/{}", s(&o["name"]))
                    }
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(owner), json!(i(&o["revision"])), age]
        }
        ("batch", "Job") => {
            let (c, im) = containers_images(&spec["template"]["spec"]);
            let succeeded = i(&st["succeeded"]);
            let completions = match spec["completions"].as_i64() {
                Some(n) => format!("{succeeded}/{n}"),
                None => match spec["parallelism"].as_i64().filter(|p| *p > 1) {
                    Some(p) => format!("{succeeded}/1 of {p}"),
                    None => format!("{succeeded}/1"),
                },
            };
            let duration = match (ts(&st["startTime"]), ts(&st["completionTime"])) {
                (Some(a), Some(b)) => crate::api::time::human_duration((b - a).num_seconds()),
                (Some(a), None) => crate::api::time::human_duration((now - a).num_seconds()),
                _ => String::new(),
            };
            vec![
                name,
                json!(job_status(o)),
                json!(completions),
                json!(duration),
                age,
                json!(c),
                json!(im),
                json!(format_selector(&spec["selector"])),
            ]
        }
        ("batch", "CronJob") => {
            let (c, im) = containers_images(&spec["jobTemplate"]["spec"]["template"]["spec"]);
            let last = match ts(&st["lastScheduleTime"]) {
                Some(t) => crate::api::time::human_duration((now - t).num_seconds()),
                None => "<none>".into(),
            };
            vec![
                name,
                json!(s(&spec["schedule"])),
                json!(none_if_empty(s(&spec["timeZone"]))),
                // printBoolPtr: a string cell.
                json!(match spec["suspend"].as_bool() {
                    Some(true) => "True",
                    Some(false) => "False",
                    None => "<unset>",
                }),
                json!(st["active"].as_array().map_or(0, Vec::len)),
                json!(last),
                age,
                json!(c),
                json!(im),
                json!(format_selector(&spec["jobTemplate"]["spec"]["selector"])),
            ]
        }
        ("", "Service") => {
            let cip = spec["clusterIPs"]
                .as_array()
                .and_then(|a| a.first())
                .map(s)
                .or_else(|| spec["clusterIP"].as_str().map(str::to_string))
                .unwrap_or_default();
            let cip = if spec["type"] == "ExternalName" && cip.is_empty() {
                "<none>".to_string()
            } else {
                none_if_empty(cip)
            };
            vec![
                name,
                json!(s(&spec["type"])),
                json!(cip),
                json!(external_ip(o)),
                json!(service_ports(spec)),
                age,
                json!(format_labels(&spec["selector"])),
            ]
        }
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for ss in o["subsets"].as_array().into_iter().flatten() {
                let ports: Vec<i64> = ss["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| i(&p["port"]))
                    .collect();
                for a in ss["addresses"].as_array().into_iter().flatten() {
                    if ports.is_empty() {
                        eps.push(s(&a["ip"]));
                    }
                    for p in &ports {
                        eps.push(format!("{}:{p}", s(&a["ip"])));
                    }
                }
            }
            vec![name, json!(list_max3(eps, "<none>")), age]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| i(&p["port"]).to_string())
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| s(&a))
                .collect();
            vec![
                name,
                json!(s(&o["addressType"])),
                json!(list_max3(ports, "<unset>")),
                json!(list_max3(addrs, "<unset>")),
                age,
            ]
        }
        ("", "PersistentVolumeClaim") => {
            let class = spec["storageClassName"]
                .as_str()
                .or_else(|| m["annotations"]["volume.beta.kubernetes.io/storage-class"].as_str())
                .unwrap_or("");
            let bound = !st["capacity"]["storage"].is_null();
            let phase = if m["deletionTimestamp"].is_null() {
                s(&st["phase"])
            } else {
                "Terminating".into()
            };
            vec![
                name,
                json!(phase),
                json!(s(&spec["volumeName"])),
                json!(if bound {
                    s(&st["capacity"]["storage"])
                } else {
                    String::new()
                }),
                json!(if bound {
                    access_modes(&st["accessModes"])
                } else {
                    String::new()
                }),
                json!(class),
                json!(spec["volumeAttributesClassName"]
                    .as_str()
                    .unwrap_or("<unset>")),
                age,
                json!(volume_mode(&spec["volumeMode"])),
            ]
        }
        ("", "PersistentVolume") => {
            let claim = match (
                spec["claimRef"]["namespace"].as_str(),
                spec["claimRef"]["name"].as_str(),
            ) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => String::new(),
            };
            let phase = if m["deletionTimestamp"].is_null() {
                s(&st["phase"])
            } else {
                "Terminating".into()
            };
            vec![
                name,
                json!(s(&spec["capacity"]["storage"])),
                json!(access_modes(&spec["accessModes"])),
                json!(s(&spec["persistentVolumeReclaimPolicy"])),
                json!(phase),
                json!(claim),
                json!(s(&spec["storageClassName"])),
                json!(spec["volumeAttributesClassName"]
                    .as_str()
                    .unwrap_or("<unset>")),
                json!(s(&st["reason"])),
                age,
                json!(volume_mode(&spec["volumeMode"])),
            ]
        }
        ("storage.k8s.io", "StorageClass") => {
            let default = [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|a| m["annotations"][*a] == "true");
            let n = s(&m["name"]);
            vec![
                json!(if default { format!("{n} (default)") } else { n }),
                json!(s(&o["provisioner"])),
                json!(o["reclaimPolicy"].as_str().unwrap_or("Delete")),
                json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate")),
                json!(o["allowVolumeExpansion"]
                    .as_bool()
                    .unwrap_or(false)
                    .to_string()),
                age,
            ]
        }
        ("", "Node") => {
            let ready = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready");
            let mut status = match ready {
                Some(c) if c["status"] == "True" => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if spec["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = m["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                        Some(r.to_string())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().map(str::to_string)
                    } else {
                        None
                    }
                })
                .filter(|r| !r.is_empty())
                .collect();
            roles.sort();
            let addr = |t: &str| {
                st["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == t)
                    .map(|a| s(&a["address"]))
                    .unwrap_or_else(|| "<none>".into())
            };
            let info = &st["nodeInfo"];
            let or_unknown = |v: &Value| {
                let x = s(v);
                if x.is_empty() {
                    "<unknown>".to_string()
                } else {
                    x
                }
            };
            vec![
                name,
                json!(status),
                json!(none_if_empty(roles.join(","))),
                age,
                json!(s(&info["kubeletVersion"])),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(or_unknown(&info["osImage"])),
                json!(or_unknown(&info["kernelVersion"])),
                json!(or_unknown(&info["containerRuntimeVersion"])),
            ]
        }
        ("", "Namespace") => vec![name, json!(s(&st["phase"])), age],
        ("", "Event") | ("events.k8s.io", "Event") => event_cells(r, o, now),
        ("", "ConfigMap") => {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n), age]
        }
        ("", "Secret") => {
            let n = o["data"].as_object().map_or(0, |m| m.len());
            vec![name, json!(s(&o["type"])), json!(n), age]
        }
        ("", "ServiceAccount") => {
            vec![
                name,
                json!(o["secrets"].as_array().map_or(0, Vec::len)),
                age,
            ]
        }
        ("coordination.k8s.io", "Lease") => {
            vec![name, json!(s(&spec["holderIdentity"])), age]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let of = |kind: &str| -> String {
                o["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| {
                        if kind == "ServiceAccount" {
                            format!("{}/{}", s(&x["namespace"]), s(&x["name"]))
                        } else {
                            s(&x["name"]).to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(&o["roleRef"]["kind"]),
                    s(&o["roleRef"]["name"])
                )),
                age,
                json!(of("User")),
                json!(of("Group")),
                json!(of("ServiceAccount")),
            ]
        }
        _ => vec![name, json!(s(&m["creationTimestamp"]))],
    }
}

fn event_cells(r: &Resource, o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let core = r.group.is_empty();
    let (obj, note, first, last, count, source) = if core {
        let first = ts(&o["firstTimestamp"]).or_else(|| ts(&o["eventTime"]));
        let last = ts(&o["series"]["lastObservedTime"])
            .or_else(|| ts(&o["lastTimestamp"]))
            .or(first);
        let count = o["series"]["count"]
            .as_i64()
            .or(o["count"].as_i64())
            .unwrap_or(1);
        let mut src = s(&o["source"]["component"]);
        if src.is_empty() {
            src = s(&o["reportingComponent"]);
        }
        if !s(&o["source"]["host"]).is_empty() {
            src = format!("{src}, {}", s(&o["source"]["host"]));
        }
        (
            &o["involvedObject"],
            s(&o["message"]),
            first,
            last,
            count,
            src,
        )
    } else {
        let first = ts(&o["deprecatedFirstTimestamp"]).or_else(|| ts(&o["eventTime"]));
        let last = ts(&o["series"]["lastObservedTime"])
            .or_else(|| ts(&o["deprecatedLastTimestamp"]))
            .or(first);
        let count = o["series"]["count"]
            .as_i64()
            .or(o["deprecatedCount"].as_i64())
            .unwrap_or(1);
        (
            &o["regarding"],
            s(&o["note"]),
            first,
            last,
            count,
            s(&o["reportingController"]),
        )
    };
    let ago = |t: Option<DateTime<Utc>>| match t {
        Some(t) => crate::api::time::human_duration((now - t).num_seconds()),
        None => "<unknown>".into(),
    };
    vec![
        json!(ago(last)),
        json!(s(&o["type"])),
        json!(s(&o["reason"])),
        json!(format!(
            "{}/{}",
            s(&obj["kind"]).to_lowercase(),
            s(&obj["name"])
        )),
        json!(s(&obj["fieldPath"])),
        json!(none_if_empty(source)),
        json!(note.trim().to_string()),
        json!(ago(first)),
        json!(count.to_string()),
        json!(s(&o["metadata"]["name"])),
    ]
}

/// The PartialObjectMetadata kubectl reads namespaces and labels from.
fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

/// One row of a Table: its cells and the object's metadata.
pub fn row(r: &Resource, o: &Value, now: DateTime<Utc>) -> Value {
    json!({"cells": cells(r, o, now), "object": partial(o)})
}

/// A Table of `items`; `headers` false for watch events after the first.
pub fn table(
    r: &Resource,
    items: &[Value],
    rv: Option<String>,
    cont: Option<String>,
    headers: bool,
) -> Value {
    let now = Utc::now();
    let rows: Vec<Value> = items.iter().map(|o| row(r, o, now)).collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv);
    }
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": if headers { column_definitions(r) } else { json!([]) },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{find, RESOURCES};

    #[test]
    fn cells_match_columns_for_every_kind() {
        let now = Utc::now();
        for r in RESOURCES {
            let o = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
            assert_eq!(cells(r, &o, now).len(), columns(r).len(), "{}", r.kind);
        }
    }

    #[test]
    fn pod_status_follows_kubectls_algorithm() {
        let now = Utc::now();
        let pod = |status: Value| json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": status});
        let cases = [
            (json!({"phase": "Pending"}), ("0/2", "Pending")),
            (
                json!({"phase": "Pending", "containerStatuses": [
                    {"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}},
                    {"name": "b", "state": {"waiting": {"reason": "ErrImagePull"}}}]}),
                ("0/2", "ContainerCreating"),
            ),
            (
                json!({"phase": "Running", "containerStatuses": [
                    {"name": "a", "ready": true, "state": {"running": {}}},
                    {"name": "b", "ready": true, "state": {"running": {}}}]}),
                ("2/2", "Running"),
            ),
            (
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": [
                    {"name": "a", "ready": true, "state": {"running": {}}},
                    {"name": "b", "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}),
                ("1/2", "NotReady"),
            ),
            (
                json!({"phase": "Running", "containerStatuses": [
                    {"name": "a", "state": {"terminated": {"exitCode": 3}}},
                    {"name": "b", "ready": true, "state": {"running": {}}}]}),
                ("1/2", "ExitCode:3"),
            ),
        ];
        for (st, (ready, status)) in cases {
            let (r, s, _) = pod_cells(&pod(st.clone()), now);
            assert_eq!((r.as_str(), s.as_str()), (ready, status), "{st}");
        }
        let mut p = pod(json!({"phase": "Running"}));
        p["metadata"] = json!({"deletionTimestamp": "2026-01-01T00:00:00Z"});
        assert_eq!(pod_cells(&p, now).1, "Terminating");
        let init = json!({"spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"waiting": {"reason": "PodInitializing"}}}]}});
        assert_eq!(pod_cells(&init, now).1, "Init:0/1");
    }

    #[test]
    fn services_print_ports_and_ips_as_kubectl_does() {
        let r = find("", "v1", "services").unwrap();
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"],
            "ports": [{"port": 8080, "protocol": "TCP", "nodePort": 30001}, {"port": 53, "protocol": "UDP"}], "selector": {"b": "2", "a": "1"}}});
        let c = cells(r, &svc, Utc::now());
        assert_eq!(c[1], "NodePort");
        assert_eq!(c[2], "10.96.0.5");
        assert_eq!(c[3], "<none>");
        assert_eq!(c[4], "8080:30001/TCP,53/UDP");
        assert_eq!(c[6], "a=1,b=2");
    }
}
