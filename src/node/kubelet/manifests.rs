//! The manifests directory (kubelet's static pods): every `.yaml`, `.yml` or `.json` file,
//! each holding one or more documents of kind Pod, ConfigMap, Secret or Service.
//!
//! A static pod's UID is derived from its manifest, as the kubelet does: editing the file
//! gives a new pod (the old one is stopped). A file that cannot be parsed is reported with its
//! path and the parser's message; other files are unaffected. Fields knode does not implement
//! are reported as warnings on the pod instead of being ignored silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};

use crate::api::validation;

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
    /// Shared, not copied: a worker reading a 1 MiB ConfigMap holds a reference.
    pub config_maps: BTreeMap<(String, String), Arc<ConfigMap>>,
    pub secrets: BTreeMap<(String, String), Arc<Secret>>,
    /// Valid Service manifests, in file order.
    pub services: Vec<crate::api::service::spec::ServiceSpec>,
    /// Endpoints the API has for a service (namespace, name), per port in its order; a
    /// service without is given endpoints from this node's pods.
    pub endpoints: BTreeMap<(String, String), Vec<Vec<crate::api::service::Endpoint>>>,
    /// Files or documents that could not be used, with the reason.
    pub errors: Vec<String>,
    /// Where the API's pods get their ServiceAccount tokens.
    pub tokens: Option<Arc<dyn super::volumes::TokenSource>>,
    /// API pods that ran to completion and are not deleted: a worker that ran them stays,
    /// so that their logs and status stay until the pod is deleted (no new one starts).
    pub finished: std::collections::BTreeSet<String>,
    /// The API's claims as this node mounts them.
    pub claims: BTreeMap<(String, String), super::volumes::Claim>,
    /// The names of every PersistentVolume, once the volumes are known (the node removes
    /// its local-path directories whose volume is gone).
    pub volume_names: Option<std::collections::BTreeSet<String>>,
}

impl Manifests {
    /// Adds another file's objects.
    pub fn extend(&mut self, other: Manifests) {
        self.pods.extend(other.pods);
        self.config_maps.extend(other.config_maps);
        self.secrets.extend(other.secrets);
        self.services.extend(other.services);
        self.endpoints.extend(other.endpoints);
        self.errors.extend(other.errors);
        if other.tokens.is_some() {
            self.tokens = other.tokens;
        }
        self.finished.extend(other.finished);
        self.claims.extend(other.claims);
        if other.volume_names.is_some() {
            self.volume_names = other.volume_names;
        }
    }
}

const POD_SPEC_FIELDS: &[&str] = &[
    "containers",
    "initContainers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "hostname",
    "subdomain",
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
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
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

fn unsupported(obj: &serde_json::Value, known: &[&str], at: &str, out: &mut Vec<String>) {
    if let Some(m) = obj.as_object() {
        for k in m.keys() {
            if !known.contains(&k.as_str()) {
                out.push(format!("{at}.{k} is not supported by knode and is ignored"));
            }
        }
    }
}

pub(crate) fn check_pod(raw: &serde_json::Value, pod: &Pod) -> (Vec<String>, Option<String>) {
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
    // The API server's validation first: nothing is built from a pod that fails it.
    let mut problems: Vec<String> = crate::api::validation::pod(pod)
        .iter()
        .map(|e| e.to_string())
        .collect();
    if let Some(s) = pod.spec.as_ref().filter(|_| problems.is_empty()) {
        for (list, cs) in [
            (
                "initContainers",
                s.init_containers.as_deref().unwrap_or(&[]),
            ),
            ("containers", s.containers.as_slice()),
        ] {
            for (i, c) in cs.iter().enumerate() {
                let at = format!("spec.{list}[{i}]");
                if let Err(e) = c
                    .image
                    .as_deref()
                    .unwrap_or("")
                    .parse::<oci::reference::Reference>()
                {
                    problems.push(format!(
                        "{at}.image: Invalid value: {:?}: {e}",
                        c.image.as_deref().unwrap_or("")
                    ));
                }
                match crate::node::cgroup::resources::container(c, &at) {
                    Ok((_, w)) => warnings.extend(w),
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
    }
    let invalid = (!problems.is_empty()).then(|| validation::causes_text(&problems));
    (
        warnings,
        invalid.map(|why| {
            format!(
                "Pod {} is invalid: {why}",
                crate::api::validation::go_quote(pod.metadata.name.as_deref().unwrap_or(""))
            )
        }),
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
    /// The directory, kept open: listing it again needs no new descriptor, so removals are
    /// seen even when the agent has none to spare.
    dir: Option<(PathBuf, (u64, u64), rustix::fs::Dir)>,
    /// Whether the last load read or dropped any file.
    changed: bool,
}

/// What identifies a file's content without reading it: inode, size, mtime (s, ns).
type FileKey = (u64, u64, i64, i64);

impl Loader {
    /// The entries of `dir`, through the descriptor kept open (opened again when the path
    /// names another directory).
    fn list(&mut self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        use std::os::unix::ffi::OsStrExt;
        let st = rustix::fs::stat(dir)?;
        let key = (st.st_dev, st.st_ino);
        if !matches!(&self.dir, Some((p, k, _)) if p == dir && *k == key) {
            let fd = rustix::fs::open(
                dir,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?;
            self.dir = Some((dir.to_path_buf(), key, rustix::fs::Dir::new(fd)?));
        }
        let d = &mut self.dir.as_mut().expect("opened").2;
        d.rewind();
        let mut out = Vec::new();
        for e in d {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(dir.join(std::ffi::OsStr::from_bytes(n)));
            }
        }
        Ok(out)
    }

    /// Whether the last `load` read or dropped any file.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Loads every manifest in `dir`. A read that fails (out of descriptors, say) never
    /// makes objects vanish: the directory, or a file, keeps what it held at its last good
    /// read, with the error reported. Only a file that is gone takes its objects with it.
    pub fn load(&mut self, dir: &Path) -> Manifests {
        let mut m = Manifests::default();
        let mut files: Vec<PathBuf> = match self.list(dir) {
            Ok(rd) => rd
                .into_iter()
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
                m.errors.push(format!(
                    "{}: {e} (keeping what it held at the last read)",
                    dir.display()
                ));
                for (_, parsed) in self.cache.values() {
                    m.extend(parsed.clone());
                }
                self.changed = false;
                return finish(m);
            }
        };
        files.sort();
        let before = self.cache.len();
        self.cache.retain(|p, _| files.binary_search(p).is_ok());
        self.changed = self.cache.len() != before;
        for f in files {
            use std::os::unix::fs::MetadataExt;
            let key = std::fs::metadata(&f)
                .map(|md| (md.ino(), md.size(), md.mtime(), md.mtime_nsec()))
                .unwrap_or_default();
            let parsed = match self.cache.get(&f) {
                Some((k, parsed)) if *k == key => parsed.clone(),
                _ => match read_bounded(&f) {
                    Ok(text) => {
                        self.changed = true;
                        let parsed = parse_text(&f, &text);
                        self.cache.insert(f.clone(), (key, parsed.clone()));
                        parsed
                    }
                    // Removed since the directory was listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.changed |= self.cache.remove(&f).is_some();
                        continue;
                    }
                    Err(e) => {
                        let mut kept = match self.cache.get(&f) {
                            Some((_, old)) => {
                                let mut old = old.clone();
                                old.errors.push(format!(
                                    "{}: {e} (keeping what it held at the last read)",
                                    f.display()
                                ));
                                old
                            }
                            None => Manifests::default(),
                        };
                        if kept.errors.is_empty() {
                            kept.errors.push(format!("{}: {e}", f.display()));
                        }
                        kept
                    }
                },
            };
            m.extend(parsed);
        }
        finish(m)
    }
}

/// Settles objects defined twice across files.
fn finish(mut m: Manifests) -> Manifests {
    // Two manifests naming the same object: the first file wins, the other is an error.
    m.pods = first_wins(std::mem::take(&mut m.pods), "pod", &mut m.errors, |p| {
        (&p.namespace, &p.name, &p.file)
    });
    // Two pods with the same explicit UID: the first keeps it, the other is an error (it
    // would share the first one's directories otherwise).
    let mut uids = std::collections::BTreeMap::new();
    m.pods.retain(|p| match uids.get(&p.uid) {
        None => {
            uids.insert(p.uid.clone(), format!("{}/{}", p.namespace, p.name));
            true
        }
        Some(owner) => {
            m.errors.push(format!(
                "{}: pod {}/{}: metadata.uid {:?} is already used by pod {owner}",
                p.file.display(),
                p.namespace,
                p.name,
                p.uid
            ));
            false
        }
    });
    m.services = first_wins(
        std::mem::take(&mut m.services),
        "service",
        &mut m.errors,
        |s| (&s.namespace, &s.name, &s.file),
    );
    m
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

/// `Kind "name" is invalid: ...`, when there are errors.
fn object_errors(kind: &str, name: &str, causes: Vec<validation::FieldError>) -> Option<String> {
    (!causes.is_empty()).then(|| {
        validation::Invalid {
            kind: kind.into(),
            name: name.into(),
            causes,
        }
        .to_string()
    })
}

/// The kubelet's limit on a static pod file (`maxConfigLength`).
pub const MAX_FILE: u64 = 10 << 20;

/// Reads a manifest: a regular file (a symlink to one is followed), at most `MAX_FILE` bytes.
/// A FIFO, a device or a socket is refused without blocking: the open is non-blocking and
/// the type is checked on the open descriptor, before any read.
fn read_bounded(f: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(f)?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::other(
            "not a regular file (a manifest must be a file or a symlink to one)",
        ));
    }
    if md.len() > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "{} bytes: larger than the {MAX_FILE}-byte limit on a manifest file",
            md.len()
        )));
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    // The file may grow while it is read: never read more than the limit.
    file.take(MAX_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "larger than the {MAX_FILE}-byte limit on a manifest file"
        )));
    }
    String::from_utf8(buf).map_err(|_| std::io::Error::other("not UTF-8 text"))
}

/// How deep a manifest may nest (serde_yaml stops at 128 levels, but only after it has
/// loaded the whole document).
pub const MAX_DEPTH: usize = 64;
/// How many YAML nodes (scalars, sequences, mappings, aliases) one manifest file may hold.
pub const MAX_NODES: usize = 500_000;

/// Measures a manifest's nesting and size with a streaming parser before serde_yaml parses
/// it: serde_yaml 0.9 collects every parse event of a document before its own limits apply,
/// which costs about 160 bytes of memory per byte of `[[[[...`.
/// Why a manifest file was refused before it was parsed.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("{0}")]
    Syntax(#[from] yaml_rust2::ScanError),
    #[error("line {line}: nested more than {MAX_DEPTH} levels deep")]
    TooDeep { line: usize },
    #[error("line {line}: more than {MAX_NODES} YAML nodes in one file")]
    TooLarge { line: usize },
}

impl crate::api::error::Classify for ShapeError {
    fn class(&self) -> crate::api::error::ErrorClass {
        crate::api::error::ErrorClass::Invalid
    }
}

fn check_shape(text: &str) -> Result<(), ShapeError> {
    use yaml_rust2::parser::{Event, Parser};
    let mut p = Parser::new_from_str(text);
    let (mut depth, mut nodes) = (0usize, 0usize);
    loop {
        let (ev, mark) = p.next_token()?;
        match ev {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                nodes += 1;
                if depth > MAX_DEPTH {
                    return Err(ShapeError::TooDeep { line: mark.line() });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::Scalar(..) | Event::Alias(..) => nodes += 1,
            Event::StreamEnd => return Ok(()),
            _ => {}
        }
        if nodes > MAX_NODES {
            return Err(ShapeError::TooLarge { line: mark.line() });
        }
    }
}

/// Parses one manifest file's text (all its documents).
fn parse_text(f: &Path, text: &str) -> Manifests {
    let mut m = Manifests::default();
    let f = f.to_path_buf();
    if let Err(e) = check_shape(text) {
        m.errors.push(format!("{}: {e}", f.display()));
        return m;
    }
    {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
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
                        let mut bad = Vec::new();
                        validation::uid(&mut bad, &uid);
                        if let Some(e) = object_errors("Pod", &name, bad) {
                            m.errors.push(at(&e));
                            continue;
                        }
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
                    Ok(c) => match object_errors("ConfigMap", &name, validation::config_map(&c)) {
                        None => {
                            m.config_maps.insert((ns, name), Arc::new(c));
                        }
                        Some(e) => m.errors.push(at(&e)),
                    },
                    Err(e) => m.errors.push(at(&format!("invalid ConfigMap: {e}"))),
                },
                "Service" => match serde_json::from_value::<Service>(v) {
                    Ok(svc) => match crate::api::service::spec::from_service(&svc, f.clone()) {
                        Ok(spec) => m.services.push(spec),
                        Err(e) => m.errors.push(at(&e.to_string())),
                    },
                    Err(e) => m.errors.push(at(&format!("invalid Service: {e}"))),
                },
                "Secret" => match serde_json::from_value::<Secret>(v) {
                    Ok(s) => match object_errors("Secret", &name, validation::secret(&s)) {
                        None => {
                            m.secrets.insert((ns, name), Arc::new(s));
                        }
                        Some(e) => m.errors.push(at(&e)),
                    },
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
    crate::api::validation::uuid_shape(d.hex())
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
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  affinity: {}\n  containers:\n  - name: c\n    image: busybox\n    resizePolicy: []\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  k: v\n",
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
            .any(|w| w.contains("spec.containers[0].resizePolicy")));
        let bad = &m.pods[1].invalid.clone().unwrap();
        assert!(
            bad.starts_with("Pod \"Bad_Name\" is invalid: [metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain")
                && bad.ends_with(", spec.containers[1].name: Duplicate value: \"x\"]"),
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

    #[test]
    fn fifos_devices_and_oversized_files_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe.yaml");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.path().join("zero.yaml")).unwrap();
        let big = std::fs::File::create(d.path().join("big.yaml")).unwrap();
        big.set_len(MAX_FILE + 1).unwrap();
        std::fs::write(
            d.path().join("ok.yaml"),
            "kind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: c, image: x}]}\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(d.path().join("ok.yaml"), d.path().join("link.yml")).unwrap();
        // A FIFO would block a plain read forever; a test that hangs here is the failure.
        let m = load(d.path());
        let errs = m.errors.join("\n");
        assert!(errs.contains("pipe.yaml: not a regular file"), "{errs}");
        assert!(errs.contains("zero.yaml: not a regular file"), "{errs}");
        assert!(
            errs.contains("big.yaml: 10485761 bytes: larger than the 10485760-byte limit"),
            "{errs}"
        );
        // The symlink to a regular file is a manifest like any other (a duplicate here).
        assert_eq!(m.pods.len(), 1);
        assert!(
            errs.contains("ok.yaml: pod default/ok is already defined"),
            "{errs}"
        );
        assert!(m.pods[0].file.ends_with("link.yml"));
    }

    #[test]
    fn explicit_uids_are_unique_and_objects_are_validated() {
        let d = tempfile::tempdir().unwrap();
        let pod = |name: &str| {
            format!("kind: Pod\nmetadata: {{name: {name}, uid: same-uid}}\nspec: {{containers: [{{name: c, image: x}}]}}\n")
        };
        std::fs::write(d.path().join("a.yaml"), pod("one")).unwrap();
        std::fs::write(d.path().join("b.yaml"), pod("two")).unwrap();
        std::fs::write(d.path().join("c.yaml"), "kind: Pod\nmetadata: {name: three, uid: ../../etc}\nspec: {containers: [{name: c, image: x}]}\n---\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {'../x': y}\n---\nkind: Secret\nmetadata: {name: s}\nstringData: {ok: y}\n").unwrap();
        let m = load(d.path());
        assert_eq!(m.pods.len(), 1);
        assert_eq!(m.pods[0].name, "one");
        let errs = m.errors.join("\n");
        assert!(errs.contains("b.yaml: pod default/two: metadata.uid \"same-uid\" is already used by pod default/one"), "{errs}");
        assert!(
            errs.contains("Pod \"three\" is invalid: metadata.uid: Invalid value: \"../../etc\""),
            "{errs}"
        );
        assert!(
            errs.contains("ConfigMap \"cm\" is invalid: [data[../x]: Invalid value: \"../x\""),
            "{errs}"
        );
        assert!(m.config_maps.is_empty());
        assert_eq!(m.secrets.len(), 1);
    }

    #[test]
    fn a_failed_read_keeps_what_was_there() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("m");
        std::fs::create_dir(&dir).unwrap();
        let pod = "kind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c, image: x}]}\n";
        std::fs::write(dir.join("web.yaml"), pod).unwrap();
        let mut l = Loader::default();
        assert_eq!(l.load(&dir).pods.len(), 1);
        // The directory cannot be read: the pod stays.
        std::fs::rename(&dir, d.path().join("away")).unwrap();
        let m = l.load(&dir);
        assert_eq!(m.pods.len(), 1, "{:?}", m.errors);
        assert!(
            m.errors[0].contains("keeping what it held"),
            "{:?}",
            m.errors
        );
        std::fs::rename(d.path().join("away"), &dir).unwrap();
        // The file cannot be read (replaced by a FIFO): the pod stays.
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("web.yaml"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let m = l.load(&dir);
        assert_eq!(m.pods.len(), 1, "{:?}", m.errors);
        assert!(
            m.errors[0].contains("not a regular file") && m.errors[0].contains("keeping"),
            "{:?}",
            m.errors
        );
        // The file is gone: so is the pod.
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        assert!(l.load(&dir).pods.is_empty());
    }

    #[test]
    fn deep_or_huge_yaml_is_refused_before_it_is_loaded() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("deep.yaml"), "[".repeat(5_000_000)).unwrap();
        std::fs::write(
            d.path().join("deep.json"),
            format!("{}1{}", "[".repeat(100), "]".repeat(100)),
        )
        .unwrap();
        let wide = format!("[{}]", "[],".repeat(600_000));
        std::fs::write(d.path().join("wide.yaml"), wide).unwrap();
        let m = load(d.path());
        let errs = m.errors.join("\n");
        // The streaming parser's own limit may be the one that stops it.
        assert!(
            errs.contains("deep.yaml: line 1: nested more than 64 levels deep")
                || errs.contains("deep.yaml: recursion limit exceeded"),
            "{errs}"
        );
        assert!(
            errs.contains("deep.json: line 1: nested more than 64 levels deep"),
            "{errs}"
        );
        assert!(
            errs.contains("wide.yaml: line 1: more than 500000 YAML nodes in one file"),
            "{errs}"
        );
        // An ordinary manifest passes, JSON too.
        let ok = "{\"kind\": \"Pod\", \"metadata\": {\"name\": \"j\"}, \"spec\": {\"containers\": [{\"name\": \"c\", \"image\": \"x\"}]}}";
        assert!(check_shape(ok).is_ok());
    }
}
