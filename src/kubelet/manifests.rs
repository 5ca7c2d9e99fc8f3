//! The manifests directory (kubelet's static pods): every `.yaml`, `.yml` or `.json` file,
//! each holding one or more documents of kind Pod, ConfigMap, Secret or Service.
//!
//! A static pod's UID is derived from its manifest, as the kubelet does: editing the file
//! gives a new pod (the old one is stopped). A file that cannot be parsed is reported with its
//! path and the parser's message; other files are unaffected. Fields knode does not implement
//! are reported as warnings on the pod instead of being ignored silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};

#[derive(Clone, Debug)]
pub struct PodManifest {
    pub pod: Pod,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub file: PathBuf,
    /// Unsupported fields and similar notes.
    pub warnings: Vec<String>,
    /// Why the pod cannot run at all (bad names, duplicate containers, ...).
    pub invalid: Option<String>,
}

#[derive(Default, Debug, Clone)]
pub struct Manifests {
    pub pods: Vec<PodManifest>,
    pub config_maps: BTreeMap<(String, String), ConfigMap>,
    pub secrets: BTreeMap<(String, String), Secret>,
    /// Valid Service manifests, in file order.
    pub services: Vec<crate::service::spec::ServiceSpec>,
    /// Files or documents that could not be used, with the reason.
    pub errors: Vec<String>,
}

const POD_SPEC_FIELDS: &[&str] = &[
    "containers",
    "initContainers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "hostname",
    "hostNetwork",
    "hostIPC",
    "hostPID",
    "shareProcessNamespace",
    "securityContext",
    "nodeName",
    "dnsPolicy",
    "schedulerName",
    "serviceAccountName",
    "serviceAccount",
    "enableServiceLinks",
    "priority",
    "volumes",
];

const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "env",
    "workingDir",
    "imagePullPolicy",
    "ports",
    "securityContext",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "stdin",
    "tty",
    "envFrom",
    "volumeMounts",
    "resources",
];

const POD_SECURITY_FIELDS: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "supplementalGroups",
    "fsGroup",
];
const CONTAINER_SECURITY_FIELDS: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "privileged",
    "capabilities",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
];

/// DNS-1123 label: lowercase alphanumerics and '-', 1-63 characters, alphanumeric ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn unsupported(obj: &serde_json::Value, known: &[&str], at: &str, out: &mut Vec<String>) {
    if let Some(m) = obj.as_object() {
        for k in m.keys() {
            if !known.contains(&k.as_str()) {
                out.push(format!("{at}.{k} is not supported by knode and is ignored"));
            }
        }
    }
}

fn check_pod(raw: &serde_json::Value, pod: &Pod) -> (Vec<String>, Option<String>) {
    let mut warnings = Vec::new();
    let spec = &raw["spec"];
    unsupported(spec, POD_SPEC_FIELDS, "spec", &mut warnings);
    unsupported(
        &spec["securityContext"],
        POD_SECURITY_FIELDS,
        "spec.securityContext",
        &mut warnings,
    );
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let at = format!("spec.{list}[{i}]");
            unsupported(c, CONTAINER_FIELDS, &at, &mut warnings);
            unsupported(
                &c["securityContext"],
                CONTAINER_SECURITY_FIELDS,
                &format!("{at}.securityContext"),
                &mut warnings,
            );
        }
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut problems = Vec::new();
    if !is_dns_subdomain(&name) {
        problems.push(format!(
            "metadata.name {name:?} is not a valid DNS-1123 subdomain"
        ));
    }
    if let Some(ns) = &pod.metadata.namespace {
        if !is_dns_label(ns) {
            problems.push(format!(
                "metadata.namespace {ns:?} is not a valid DNS-1123 label"
            ));
        }
    }
    match &pod.spec {
        None => problems.push("spec is missing".into()),
        Some(s) => {
            if s.containers.is_empty() {
                problems.push("spec.containers must not be empty".into());
            }
            let mut seen = std::collections::BTreeSet::new();
            for c in s.init_containers.iter().flatten().chain(&s.containers) {
                if !is_dns_label(&c.name) {
                    problems.push(format!(
                        "container name {:?} is not a valid DNS-1123 label",
                        c.name
                    ));
                }
                if !seen.insert(c.name.clone()) {
                    problems.push(format!("duplicate container name {:?}", c.name));
                }
                if c.image.as_deref().unwrap_or("").is_empty() {
                    problems.push(format!("container {:?} has no image", c.name));
                } else if let Err(e) = c
                    .image
                    .as_deref()
                    .unwrap_or("")
                    .parse::<oci::reference::Reference>()
                {
                    problems.push(format!("container {:?}: {e}", c.name));
                }
            }
            let vols: std::collections::BTreeSet<String> =
                s.volumes.iter().flatten().map(|v| v.name.clone()).collect();
            for c in s.init_containers.iter().flatten().chain(&s.containers) {
                for m in c.volume_mounts.iter().flatten() {
                    if !vols.contains(&m.name) {
                        problems.push(format!(
                            "container {:?}: volumeMount {:?} refers to an unknown volume",
                            c.name, m.name
                        ));
                    }
                }
            }
            for (list, cs) in [
                (
                    "initContainers",
                    s.init_containers.as_deref().unwrap_or(&[]),
                ),
                ("containers", s.containers.as_slice()),
            ] {
                for (i, c) in cs.iter().enumerate() {
                    match crate::cgroup::resources::container(c, &format!("spec.{list}[{i}]")) {
                        Ok((_, w)) => warnings.extend(w),
                        Err(e) => problems.push(e),
                    }
                }
            }
            if let Some(p) = &s.restart_policy {
                if !["Always", "OnFailure", "Never"].contains(&p.as_str()) {
                    problems.push(format!(
                        "spec.restartPolicy {p:?} must be Always, OnFailure or Never"
                    ));
                }
            }
        }
    }
    (
        warnings,
        (!problems.is_empty()).then(|| problems.join("; ")),
    )
}

/// Loads every manifest in `dir`.
pub fn load(dir: &Path) -> Manifests {
    Loader::default().load(dir)
}

/// Parsed files, reused while a file's inode, size and mtime stay the same: a change in a
/// directory of many manifests re-parses only the file that changed.
#[derive(Default)]
pub struct Loader {
    cache: BTreeMap<PathBuf, (FileKey, Manifests)>,
}

/// What identifies a file's content without reading it: inode, size, mtime (s, ns).
type FileKey = (u64, u64, i64, i64);

impl Loader {
    pub fn load(&mut self, dir: &Path) -> Manifests {
        let mut m = Manifests::default();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect(),
            Err(e) => {
                m.errors.push(format!("{}: {e}", dir.display()));
                return m;
            }
        };
        files.sort();
        self.cache.retain(|p, _| files.contains(p));
        for f in files {
            use std::os::unix::fs::MetadataExt;
            let key = std::fs::metadata(&f)
                .map(|md| (md.ino(), md.size(), md.mtime(), md.mtime_nsec()))
                .unwrap_or_default();
            let parsed = match self.cache.get(&f) {
                Some((k, parsed)) if *k == key => parsed.clone(),
                _ => {
                    let parsed = parse_file(&f);
                    self.cache.insert(f.clone(), (key, parsed.clone()));
                    parsed
                }
            };
            m.pods.extend(parsed.pods);
            m.config_maps.extend(parsed.config_maps);
            m.secrets.extend(parsed.secrets);
            m.services.extend(parsed.services);
            m.errors.extend(parsed.errors);
        }
        // Two manifests naming the same object: the first file wins, the other is an error.
        m.pods = first_wins(std::mem::take(&mut m.pods), "pod", &mut m.errors, |p| {
            (&p.namespace, &p.name, &p.file)
        });
        m.services = first_wins(
            std::mem::take(&mut m.services),
            "service",
            &mut m.errors,
            |s| (&s.namespace, &s.name, &s.file),
        );
        m
    }
}

/// Keeps the first of the objects sharing a namespace and name; reports the others.
fn first_wins<T>(
    items: Vec<T>,
    kind: &str,
    errors: &mut Vec<String>,
    id: impl Fn(&T) -> (&String, &String, &PathBuf),
) -> Vec<T> {
    let mut seen = std::collections::BTreeSet::new();
    let mut kept = Vec::new();
    for item in items {
        let (ns, name, file) = id(&item);
        if seen.insert((ns.clone(), name.clone())) {
            kept.push(item);
        } else {
            errors.push(format!(
                "{}: {kind} {ns}/{name} is already defined in another file",
                file.display()
            ));
        }
    }
    kept
}

/// Parses one manifest file (all its documents).
fn parse_file(f: &Path) -> Manifests {
    let mut m = Manifests::default();
    let f = f.to_path_buf();
    let text = match std::fs::read_to_string(&f) {
        Ok(t) => t,
        Err(e) => {
            m.errors.push(format!("{}: {e}", f.display()));
            return m;
        }
    };
    {
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v: serde_json::Value = match serde::Deserialize::deserialize(doc) {
                Ok(mut v) => {
                    yaml11_octal_modes(&mut v);
                    v
                }
                Err(e) => {
                    m.errors.push(format!("{}: {e}", f.display()));
                    break;
                }
            };
            if v.is_null() {
                continue;
            }
            let at = |what: &str| format!("{} (document {}): {what}", f.display(), i + 1);
            let kind = v["kind"].as_str().unwrap_or("").to_string();
            let ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
            match kind.as_str() {
                "Pod" => match serde_json::from_value::<Pod>(v.clone()) {
                    Ok(pod) => {
                        let (warnings, invalid) = check_pod(&v, &pod);
                        let uid = pod
                            .metadata
                            .uid
                            .clone()
                            .unwrap_or_else(|| static_uid(&ns, &name, &v));
                        // The UID names directories that get removed: it must be a plain name.
                        let (warnings, invalid) = if uid.is_empty()
                            || uid.len() > 128
                            || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        {
                            m.errors.push(at(&format!(
                                "metadata.uid {uid:?} must be 1-128 letters, digits or '-'"
                            )));
                            continue;
                        } else {
                            (warnings, invalid)
                        };
                        m.pods.push(PodManifest {
                            pod,
                            namespace: ns,
                            name,
                            uid,
                            file: f.clone(),
                            warnings,
                            invalid,
                        });
                    }
                    Err(e) => m.errors.push(at(&format!("invalid Pod: {e}"))),
                },
                "ConfigMap" => match serde_json::from_value::<ConfigMap>(v) {
                    Ok(c) => {
                        m.config_maps.insert((ns, name), c);
                    }
                    Err(e) => m.errors.push(at(&format!("invalid ConfigMap: {e}"))),
                },
                "Service" => match serde_json::from_value::<Service>(v) {
                    Ok(svc) => match crate::service::spec::from_service(&svc, f.clone()) {
                        Ok(spec) => m.services.push(spec),
                        Err(e) => m.errors.push(at(&format!("Service {ns}/{name}: {e}"))),
                    },
                    Err(e) => m.errors.push(at(&format!("invalid Service: {e}"))),
                },
                "Secret" => match serde_json::from_value::<Secret>(v) {
                    Ok(s) => {
                        m.secrets.insert((ns, name), s);
                    }
                    Err(e) => m.errors.push(at(&format!("invalid Secret: {e}"))),
                },
                "" => m.errors.push(at("no kind")),
                other => m.errors.push(at(&format!(
                    "kind {other} is not supported in the manifests directory"
                ))),
            }
        }
    }
    m
}

/// Kubernetes reads manifests with YAML 1.1 rules, where `defaultMode: 0400` is octal; serde_yaml
/// speaks YAML 1.2 and yields the string "0400". Convert such file modes back to numbers.
fn yaml11_octal_modes(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "mode" || k == "defaultMode" {
                    if let Some(s) = x.as_str() {
                        let digits = s
                            .strip_prefix("0o")
                            .or_else(|| s.strip_prefix('0'))
                            .unwrap_or(s);
                        if s.starts_with('0')
                            && !digits.is_empty()
                            && digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
                        {
                            if let Ok(n) = i64::from_str_radix(digits, 8) {
                                *x = serde_json::Value::from(n);
                            }
                        }
                    }
                }
                yaml11_octal_modes(x);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(yaml11_octal_modes),
        _ => {}
    }
}

/// A UUID-shaped UID from the pod's identity and content.
fn static_uid(ns: &str, name: &str, v: &serde_json::Value) -> String {
    let d = oci::digest::Digest::of(format!("{ns}/{name}/{v}").as_bytes());
    let h = d.hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_file_wins_a_duplicate_pod_or_service() {
        let d = tempfile::tempdir().unwrap();
        let doc = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c, image: x}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";
        std::fs::write(d.path().join("a.yaml"), doc).unwrap();
        std::fs::write(d.path().join("b.yaml"), doc).unwrap();
        let m = load(d.path());
        assert_eq!((m.pods.len(), m.services.len()), (1, 1));
        assert!(m.pods[0].file.ends_with("a.yaml"));
        assert_eq!(m.errors.len(), 2, "{:?}", m.errors);
        assert!(
            m.errors[0].contains("b.yaml: pod default/web is already defined"),
            "{:?}",
            m.errors
        );
        assert!(
            m.errors[1].contains("b.yaml: service default/web is already defined"),
            "{:?}",
            m.errors
        );
    }

    #[test]
    fn octal_modes_as_kubernetes_reads_them() {
        let mut v = serde_json::json!({"a": {"defaultMode": "0400", "items": [{"mode": "0o644"}], "name": "0400"}});
        yaml11_octal_modes(&mut v);
        assert_eq!(v["a"]["defaultMode"], 256);
        assert_eq!(v["a"]["items"][0]["mode"], 420);
        assert_eq!(v["a"]["name"], "0400");
    }

    #[test]
    fn loads_validates_and_reports() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  affinity: {}\n  containers:\n  - name: c\n    image: busybox\n    livenessProbe: {}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  k: v\n",
        )
        .unwrap();
        std::fs::write(d.path().join("b.yaml"), "kind: Pod\nmetadata:\n  name: Bad_Name\nspec:\n  containers:\n  - name: x\n    image: busybox\n  - name: x\n    image: busybox\n").unwrap();
        std::fs::write(d.path().join("c.yaml"), "kind: Pod\n  bad: [indent").unwrap();
        std::fs::write(d.path().join("d.txt"), "ignored").unwrap();
        let m = load(d.path());
        assert_eq!(m.pods.len(), 2);
        let web = &m.pods[0];
        assert_eq!(
            (web.namespace.as_str(), web.name.as_str()),
            ("default", "web")
        );
        assert!(web.invalid.is_none());
        assert!(web.warnings.iter().any(|w| w.contains("spec.affinity")));
        assert!(web
            .warnings
            .iter()
            .any(|w| w.contains("spec.containers[0].livenessProbe")));
        let bad = &m.pods[1].invalid.clone().unwrap();
        assert!(
            bad.contains("DNS-1123") && bad.contains("duplicate container name"),
            "{bad}"
        );
        assert_eq!(m.errors.len(), 1);
        assert!(m.errors[0].contains("c.yaml"), "{:?}", m.errors);
        assert!(m
            .config_maps
            .contains_key(&("default".into(), "cfg".into())));
        // The UID follows the content.
        let uid = web.uid.clone();
        std::fs::write(d.path().join("a.yaml"), "kind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox:2\n").unwrap();
        assert_ne!(load(d.path()).pods[0].uid, uid);
    }
}
