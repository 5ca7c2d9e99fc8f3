//! Validation of Pods, ConfigMaps and Secrets as the Kubernetes API server does it
//! (`pkg/apis/core/validation` and apimachinery's `util/validation`), with its field errors and
//! their texts, so that `Pod "web" is invalid: spec.volumes[0].name: Invalid value: "../x": ...`
//! reads the same on knode as on any cluster.
//!
//! What reaches a path, a mode or an id is checked here first: names (DNS-1123 labels and
//! subdomains), volume names, item and subPath paths, file modes (0..0777), user and group ids
//! (0..2^31-1), the hostname, environment variable names, ConfigMap and Secret keys and sizes.
//! knode adds two limits of its own, stated in the errors: containers per pod and the UID's
//! shape (it names directories).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, PodSpec, Secret, Volume};

/// The kinds of field error the API server reports (`field.ErrorType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    NotFound,
    Required,
    Duplicate,
    Invalid,
    NotSupported,
    Forbidden,
    TooLong,
    TooMany,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::NotFound => "Not found",
            ErrorType::Required => "Required value",
            ErrorType::Duplicate => "Duplicate value",
            ErrorType::Invalid => "Invalid value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::TooLong => "Too long",
            ErrorType::TooMany => "Too many",
        }
    }

    /// The `reason` of a `StatusCause` (`FieldValueInvalid`, ...).
    pub fn reason(self) -> &'static str {
        match self {
            ErrorType::NotFound => "FieldValueNotFound",
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany => "FieldValueTooMany",
        }
    }
}

/// A bad value as Go's validation prints it: strings quoted, numbers bare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    None,
    Str(String),
    Int(i64),
    /// A list of strings, printed as Go prints a `[]string`.
    List(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => write!(f, "null"),
            Value::Str(s) => write!(f, "{}", go_quote(s)),
            Value::Int(i) => write!(f, "{i}"),
            Value::List(l) => write!(
                f,
                "[]string{{{}}}",
                l.iter().map(|s| go_quote(s)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Go's `%q` for the strings validation reports.
pub fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One field error (`field.Error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub kind: ErrorType,
    pub field: String,
    pub value: Value,
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.kind.as_str())?;
        match self.kind {
            ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong => {}
            _ => write!(f, ": {}", self.value)?,
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

fn err(kind: ErrorType, field: &str, value: Value, detail: impl Into<String>) -> FieldError {
    FieldError {
        kind,
        field: field.to_string(),
        value,
        detail: detail.into(),
    }
}

/// Why `ip` may not be an endpoint address (`ValidateEndpointIP`): not an IP, or in the
/// unspecified, loopback, link-local or link-local multicast ranges.
pub fn endpoint_ip(field: &str, ip: &str) -> Option<FieldError> {
    let Ok(a) = ip.parse::<std::net::IpAddr>() else {
        return Some(invalid(field, ip, "must be a valid IP address"));
    };
    let why = match a {
        _ if a.is_unspecified() => "may not be unspecified (0.0.0.0)",
        _ if a.is_loopback() => "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        std::net::IpAddr::V4(v) if v.is_link_local() => {
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
        }
        std::net::IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80 => {
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
        }
        std::net::IpAddr::V4(v) if v.octets()[..3] == [224, 0, 0] => {
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
        }
        std::net::IpAddr::V6(v) if v.segments()[0] & 0xff0f == 0xff02 => {
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
        }
        _ => return None,
    };
    Some(invalid(field, ip, why))
}

pub fn invalid(field: &str, value: impl Into<Value>, detail: impl Into<String>) -> FieldError {
    err(ErrorType::Invalid, field, value.into(), detail)
}
pub fn required(field: &str, detail: impl Into<String>) -> FieldError {
    err(ErrorType::Required, field, Value::None, detail)
}
pub fn duplicate(field: &str, value: impl Into<Value>) -> FieldError {
    err(ErrorType::Duplicate, field, value.into(), "")
}
pub fn not_found(field: &str, value: impl Into<Value>) -> FieldError {
    err(ErrorType::NotFound, field, value.into(), "")
}
pub fn forbidden(field: &str, detail: impl Into<String>) -> FieldError {
    err(ErrorType::Forbidden, field, Value::None, detail)
}
pub fn not_supported(field: &str, value: impl Into<Value>, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
    err(
        ErrorType::NotSupported,
        field,
        value.into(),
        format!("supported values: {}", list.join(", ")),
    )
}
pub fn too_long(field: &str, max: usize) -> FieldError {
    err(
        ErrorType::TooLong,
        field,
        Value::None,
        format!("may not be more than {max} bytes"),
    )
}
pub fn too_many(field: &str, n: usize, max: usize) -> FieldError {
    err(
        ErrorType::TooMany,
        field,
        Value::Int(n as i64),
        format!("must have at most {max} items"),
    )
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Str(s.clone())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Value {
        Value::Int(i as i64)
    }
}

/// All the field errors of one object, printed as the API server's `Status` message:
/// `Pod "web" is invalid: [a, b]` (no brackets for a single error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    pub kind: String,
    pub name: String,
    pub causes: Vec<FieldError>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} is invalid: ", self.kind, go_quote(&self.name))?;
        write!(f, "{}", causes_text(&self.causes))
    }
}

/// Errors as the API server aggregates them: one bare, several as `[a, b]`.
pub fn causes_text<T: fmt::Display>(causes: &[T]) -> String {
    match causes {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

// ---- names (apimachinery/pkg/util/validation) ----

pub const DNS1123_LABEL_MAX: usize = 63;
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
const ENV_NAME_MSG: &str =
    "a valid environment variable name must consist only of printable ASCII characters other than '='";
pub const MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";
pub const ID_MSG: &str = "must be between 0 and 2147483647, inclusive";

fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 label: lowercase alphanumerics and '-', 1-63 characters, alphanumeric ends.
pub fn is_dns_label(s: &str) -> bool {
    dns_label(s).is_empty()
}

/// DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    dns_subdomain(s).is_empty()
}

/// The reasons `s` is not a DNS-1123 label (empty when it is one).
pub fn dns_label(s: &str) -> Vec<String> {
    let mut v = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        v.push(max_len(DNS1123_LABEL_MAX));
    }
    if !label_chars(s) {
        if s.contains('.') && s.split('.').all(label_chars) {
            // A valid subdomain: the dots are what is wrong.
            v.push("must not contain dots".into());
        } else {
            v.push(LABEL_MSG.into());
        }
    }
    v
}

/// The reasons `s` is not a DNS-1123 subdomain.
pub fn dns_subdomain(s: &str) -> Vec<String> {
    let mut v = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        v.push(max_len(DNS1123_SUBDOMAIN_MAX));
    }
    if !s.split('.').all(label_chars) {
        v.push(SUBDOMAIN_MSG.into());
    }
    v
}

/// ConfigMap and Secret keys (`IsConfigMapKey`).
pub fn config_key(s: &str) -> Vec<String> {
    let mut v = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        v.push(max_len(DNS1123_SUBDOMAIN_MAX));
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        v.push(CONFIG_KEY_MSG.into());
    }
    if s == "." {
        v.push("must not be '.'".into());
    } else if s == ".." {
        v.push("must not be '..'".into());
    } else if s.starts_with("..") {
        v.push("must not start with '..'".into());
    }
    v
}

/// Environment variable names (`IsEnvVarName` with relaxed validation, GA in 1.34): any
/// printable ASCII but '=', not empty.
pub fn env_var_name(s: &str) -> Vec<String> {
    if !s.is_empty() && s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'=') {
        vec![]
    } else {
        vec![ENV_NAME_MSG.into()]
    }
}

fn names(errs: &mut Vec<FieldError>, field: &str, value: &str, reasons: Vec<String>) {
    for r in reasons {
        errs.push(invalid(field, value, r));
    }
}

/// A relative path beneath a volume (`validateLocalDescendingPath`).
fn local_descending_path(errs: &mut Vec<FieldError>, field: &str, p: &str) {
    if p.starts_with('/') {
        errs.push(invalid(field, p, "must be a relative path"));
    }
    if p.split('/').any(|c| c == "..") {
        errs.push(invalid(field, p, "must not contain '..'"));
    }
}

/// A key-to-path item's path (`validateLocalNonReservedPath`).
fn local_non_reserved_path(errs: &mut Vec<FieldError>, field: &str, p: &str) {
    local_descending_path(errs, field, p);
    if p.starts_with("..") && !p.starts_with("../") {
        errs.push(invalid(field, p, "must not start with '..'"));
    }
}

fn mode(errs: &mut Vec<FieldError>, field: &str, m: Option<i32>) {
    if let Some(m) = m {
        if !(0..=0o777).contains(&m) {
            errs.push(invalid(field, m, MODE_MSG));
        }
    }
}

fn id(errs: &mut Vec<FieldError>, field: &str, v: Option<i64>) {
    if let Some(v) = v {
        if !(0..=i32::MAX as i64).contains(&v) {
            errs.push(invalid(field, v, ID_MSG));
        }
    }
}

// ---- objects ----

/// ConfigMaps and Secrets hold at most 1 MiB (`core.MaxSecretSize`).
pub const MAX_OBJECT_DATA: usize = 1 << 20;
/// knode's bound on a pod's containers (init and app together). Kubernetes has none, but
/// every container is a process tree, a mount and a log; no real pod comes near it.
pub const MAX_CONTAINERS: usize = 128;

fn metadata_name(errs: &mut Vec<FieldError>, name: Option<&str>, label_only: bool) {
    match name {
        None | Some("") => errs.push(required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(n) => names(
            errs,
            "metadata.name",
            n,
            if label_only {
                dns_label(n)
            } else {
                dns_subdomain(n)
            },
        ),
    }
}

fn metadata_namespace(errs: &mut Vec<FieldError>, ns: Option<&str>) {
    if let Some(ns) = ns {
        names(errs, "metadata.namespace", ns, dns_label(ns));
    }
}

/// 32 or more hex digits in a UUID's 8-4-4-4-12 shape (the first 32 are used).
pub fn uuid_shape(hex: &str) -> String {
    let h = |a: usize, b: usize| hex.get(a..b).unwrap_or("0");
    format!(
        "{}-{}-{}-{}-{}",
        h(0, 8),
        h(8, 12),
        h(12, 16),
        h(16, 20),
        h(20, 32)
    )
}

/// The UID names directories on the node: letters, digits and '-' (a UUID's alphabet).
pub fn uid(errs: &mut Vec<FieldError>, uid: &str) {
    if uid.is_empty()
        || uid.len() > 128
        || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        errs.push(invalid(
            "metadata.uid",
            uid,
            "knode requires 1-128 letters, digits or '-' (a UUID)",
        ));
    }
}

/// A ConfigMap (`ValidateConfigMap`).
pub fn config_map(c: &ConfigMap) -> Vec<FieldError> {
    let mut errs = Vec::new();
    metadata_name(&mut errs, c.metadata.name.as_deref(), false);
    metadata_namespace(&mut errs, c.metadata.namespace.as_deref());
    let data = c.data.as_ref();
    let bin = c.binary_data.as_ref();
    for k in data.into_iter().flat_map(|m| m.keys()) {
        names(&mut errs, &format!("data[{k}]"), k, config_key(k));
    }
    for k in bin.into_iter().flat_map(|m| m.keys()) {
        names(&mut errs, &format!("binaryData[{k}]"), k, config_key(k));
        if data.is_some_and(|d| d.contains_key(k)) {
            errs.push(invalid(
                &format!("data[{k}]"),
                k,
                "duplicate of key present in binaryData",
            ));
        }
    }
    let size: usize = data
        .into_iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + bin
            .into_iter()
            .flatten()
            .map(|(k, v)| k.len() + v.0.len())
            .sum::<usize>();
    if size > MAX_OBJECT_DATA {
        errs.push(too_long("[]", MAX_OBJECT_DATA));
    }
    errs
}

/// A Secret (`ValidateSecret`): `stringData` is merged into `data` before validation.
pub fn secret(s: &Secret) -> Vec<FieldError> {
    let mut errs = Vec::new();
    metadata_name(&mut errs, s.metadata.name.as_deref(), false);
    metadata_namespace(&mut errs, s.metadata.namespace.as_deref());
    let mut keys: BTreeSet<&String> = BTreeSet::new();
    let mut size = 0;
    for (k, v) in s.data.iter().flatten() {
        keys.insert(k);
        size += v.0.len();
    }
    for (k, v) in s.string_data.iter().flatten() {
        if keys.insert(k) {
            size += v.len();
        }
    }
    for k in keys {
        names(&mut errs, &format!("data[{k}]"), k, config_key(k));
    }
    if size > MAX_OBJECT_DATA {
        errs.push(too_long("data", MAX_OBJECT_DATA));
    }
    errs
}

/// The volume types a volume sets, named as in its JSON, in the API server's order (the
/// second and later ones are the ones it reports).
fn volume_types(v: &Volume) -> Vec<&'static str> {
    let set = [
        ("hostPath", v.host_path.is_some()),
        ("emptyDir", v.empty_dir.is_some()),
        ("gitRepo", v.git_repo.is_some()),
        ("gcePersistentDisk", v.gce_persistent_disk.is_some()),
        ("awsElasticBlockStore", v.aws_elastic_block_store.is_some()),
        ("secret", v.secret.is_some()),
        ("nfs", v.nfs.is_some()),
        ("iscsi", v.iscsi.is_some()),
        ("glusterfs", v.glusterfs.is_some()),
        ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
        ("rbd", v.rbd.is_some()),
        ("flexVolume", v.flex_volume.is_some()),
        ("cinder", v.cinder.is_some()),
        ("cephfs", v.cephfs.is_some()),
        ("flocker", v.flocker.is_some()),
        // Sic: the API server spells this one "downwarAPI".
        ("downwarAPI", v.downward_api.is_some()),
        ("fc", v.fc.is_some()),
        ("azureFile", v.azure_file.is_some()),
        ("configMap", v.config_map.is_some()),
        ("vsphereVolume", v.vsphere_volume.is_some()),
        ("quobyte", v.quobyte.is_some()),
        ("azureDisk", v.azure_disk.is_some()),
        ("projected", v.projected.is_some()),
        ("portworxVolume", v.portworx_volume.is_some()),
        ("scaleIO", v.scale_io.is_some()),
        ("storageos", v.storageos.is_some()),
        ("csi", v.csi.is_some()),
        ("ephemeral", v.ephemeral.is_some()),
        ("image", v.image.is_some()),
    ];
    set.iter().filter(|(_, b)| *b).map(|(n, _)| *n).collect()
}

fn items(errs: &mut Vec<FieldError>, at: &str, items: Option<&[KeyToPath]>) {
    for (i, it) in items.into_iter().flatten().enumerate() {
        let f = format!("{at}.items[{i}]");
        if it.key.is_empty() {
            errs.push(required(&format!("{f}.key"), ""));
        }
        if it.path.is_empty() {
            errs.push(required(&format!("{f}.path"), ""));
        } else {
            local_non_reserved_path(errs, &format!("{f}.path"), &it.path);
        }
        mode(errs, &format!("{f}.mode"), it.mode);
    }
}

fn volumes(errs: &mut Vec<FieldError>, vols: &[Volume]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (i, v) in vols.iter().enumerate() {
        let at = format!("spec.volumes[{i}]");
        if v.name.is_empty() {
            errs.push(required(&format!("{at}.name"), ""));
        } else {
            names(errs, &format!("{at}.name"), &v.name, dns_label(&v.name));
            if !seen.insert(v.name.clone()) {
                errs.push(duplicate(&format!("{at}.name"), &v.name));
            }
        }
        let types = volume_types(v);
        if types.is_empty() {
            errs.push(required(&at, "must specify a volume type"));
        }
        for t in types.iter().skip(1) {
            errs.push(forbidden(
                &format!("{at}.{t}"),
                "may not specify more than 1 volume type",
            ));
        }
        if let Some(hp) = &v.host_path {
            let f = format!("{at}.hostPath");
            if hp.path.is_empty() {
                errs.push(required(&format!("{f}.path"), ""));
            } else if hp.path.split('/').any(|c| c == "..") {
                errs.push(invalid(
                    &format!("{f}.path"),
                    &hp.path,
                    "must not contain '..'",
                ));
            }
            const TYPES: &[&str] = &[
                "",
                "DirectoryOrCreate",
                "Directory",
                "FileOrCreate",
                "File",
                "Socket",
                "CharDevice",
                "BlockDevice",
            ];
            if let Some(t) = &hp.type_ {
                if !TYPES.contains(&t.as_str()) {
                    errs.push(not_supported(&format!("{f}.type"), t, TYPES));
                }
            }
        }
        if let Some(ed) = &v.empty_dir {
            if let Some(m) = &ed.medium {
                if !["", "Memory"].contains(&m.as_str()) {
                    errs.push(not_supported(
                        &format!("{at}.emptyDir.medium"),
                        m,
                        &["", "Memory"],
                    ));
                }
            }
        }
        if let Some(cm) = &v.config_map {
            let f = format!("{at}.configMap");
            if cm.name.is_empty() {
                errs.push(required(&format!("{f}.name"), ""));
            } else {
                names(
                    errs,
                    &format!("{f}.name"),
                    &cm.name,
                    dns_subdomain(&cm.name),
                );
            }
            mode(errs, &format!("{f}.defaultMode"), cm.default_mode);
            items(errs, &f, cm.items.as_deref());
        }
        if let Some(s) = &v.secret {
            let f = format!("{at}.secret");
            match s.secret_name.as_deref() {
                None | Some("") => errs.push(required(&format!("{f}.secretName"), "")),
                Some(n) => names(errs, &format!("{f}.secretName"), n, dns_subdomain(n)),
            }
            mode(errs, &format!("{f}.defaultMode"), s.default_mode);
            items(errs, &f, s.items.as_deref());
        }
    }
    seen
}

fn security(errs: &mut Vec<FieldError>, at: &str, user: Option<i64>, group: Option<i64>) {
    id(errs, &format!("{at}.runAsUser"), user);
    id(errs, &format!("{at}.runAsGroup"), group);
}

fn container(
    errs: &mut Vec<FieldError>,
    at: &str,
    c: &Container,
    vols: &BTreeSet<String>,
    names_seen: &mut BTreeSet<String>,
    grace: i64,
) {
    if c.name.is_empty() {
        errs.push(required(&format!("{at}.name"), ""));
    } else {
        names(errs, &format!("{at}.name"), &c.name, dns_label(&c.name));
        if !names_seen.insert(c.name.clone()) {
            errs.push(duplicate(&format!("{at}.name"), &c.name));
        }
    }
    match c.image.as_deref() {
        None | Some("") => errs.push(required(&format!("{at}.image"), "")),
        Some(i) if i.trim() != i => errs.push(invalid(
            &format!("{at}.image"),
            i,
            "must not have leading or trailing whitespace",
        )),
        Some(_) => {}
    }
    if let Some(p) = &c.image_pull_policy {
        const P: &[&str] = &["Always", "IfNotPresent", "Never"];
        if !P.contains(&p.as_str()) {
            errs.push(not_supported(&format!("{at}.imagePullPolicy"), p, P));
        }
    }
    if let Some(p) = c
        .termination_message_path
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        // It becomes a mount in the container: an absolute path that stays there.
        let f = format!("{at}.terminationMessagePath");
        if !p.starts_with('/') {
            errs.push(invalid(&f, p, "must be an absolute path"));
        } else if p.split('/').any(|c| c == "..") {
            errs.push(invalid(&f, p, "must not contain '..'"));
        }
    }
    if let Some(p) = &c.termination_message_policy {
        const P: &[&str] = &["File", "FallbackToLogsOnError"];
        if !P.contains(&p.as_str()) {
            errs.push(not_supported(
                &format!("{at}.terminationMessagePolicy"),
                p,
                P,
            ));
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let f = format!("{at}.env[{i}].name");
        if e.name.is_empty() {
            errs.push(required(&f, ""));
        } else {
            names(errs, &f, &e.name, env_var_name(&e.name));
        }
    }
    for (i, e) in c.env_from.iter().flatten().enumerate() {
        if let Some(p) = e.prefix.as_deref().filter(|p| !p.is_empty()) {
            names(
                errs,
                &format!("{at}.envFrom[{i}].prefix"),
                p,
                env_var_name(p),
            );
        }
        if e.config_map_ref.is_some() && e.secret_ref.is_some() {
            errs.push(invalid(
                &format!("{at}.envFrom[{i}]"),
                "",
                "may not have more than one field specified at a time",
            ));
        }
    }
    let mut paths = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let f = format!("{at}.volumeMounts[{i}]");
        if m.name.is_empty() {
            errs.push(required(&format!("{f}.name"), ""));
        } else if !vols.contains(&m.name) {
            errs.push(not_found(&format!("{f}.name"), &m.name));
        }
        if m.mount_path.is_empty() {
            errs.push(required(&format!("{f}.mountPath"), ""));
        } else if !paths.insert(m.mount_path.clone()) {
            errs.push(invalid(
                &format!("{f}.mountPath"),
                &m.mount_path,
                "must be unique",
            ));
        }
        if let Some(sp) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            local_descending_path(errs, &format!("{f}.subPath"), sp);
        }
    }
    if let Some(sc) = &c.security_context {
        security(
            errs,
            &format!("{at}.securityContext"),
            sc.run_as_user,
            sc.run_as_group,
        );
    }
    let init = at.starts_with("spec.initContainers");
    let sidecar = c.restart_policy.as_deref() == Some("Always");
    if let Some(l) = &c.lifecycle {
        if init && !sidecar {
            errs.push(forbidden(
                &format!("{at}.lifecycle"),
                "may not be set for init containers without restartPolicy=Always",
            ));
        } else {
            for (f, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
                if let Some(h) = h {
                    lifecycle_handler(errs, &format!("{at}.lifecycle.{f}"), h, grace);
                }
            }
        }
    }
    for (field, p) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        let Some(p) = p else { continue };
        let f = format!("{at}.{field}");
        if init && !sidecar {
            errs.push(forbidden(
                &f,
                "may not be set for init containers without restartPolicy=Always",
            ));
            continue;
        }
        probe(errs, &f, p);
        let success = p.success_threshold.unwrap_or(1);
        if field != "readinessProbe" && success != 1 {
            errs.push(invalid(
                &format!("{f}.successThreshold"),
                i64::from(success),
                "must be 1",
            ));
        }
        if let (true, Some(g)) = (
            field == "readinessProbe",
            p.termination_grace_period_seconds,
        ) {
            errs.push(invalid(
                &format!("{f}.terminationGracePeriodSeconds"),
                g,
                "must not be set for readinessProbes",
            ));
        }
    }
}

/// A probe (`validateProbe`): one handler, its port and fields, no negative timing.
fn probe(errs: &mut Vec<FieldError>, at: &str, p: &k8s_openapi::api::core::v1::Probe) {
    handler(errs, at, p, None);
    for (f, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if let Some(v) = v.filter(|v| *v < 0) {
            errs.push(invalid(
                &format!("{at}.{f}"),
                i64::from(v),
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(g) = p.termination_grace_period_seconds.filter(|g| *g <= 0) {
        errs.push(invalid(
            &format!("{at}.terminationGracePeriodSeconds"),
            g,
            "must be greater than 0",
        ));
    }
}

/// A lifecycle hook (`validateHandler`): as a probe's handler, or `sleep` within the pod's
/// grace period.
fn lifecycle_handler(
    errs: &mut Vec<FieldError>,
    at: &str,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    grace: i64,
) {
    let p = k8s_openapi::api::core::v1::Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        ..Default::default()
    };
    handler(errs, at, &p, h.sleep.as_ref().map(|s| (s.seconds, grace)));
}

/// One handler (exec, httpGet, tcpSocket, grpc, or a hook's sleep) and its fields; a second
/// one is named where it is, as upstream's `validateHandler` does.
fn handler(
    errs: &mut Vec<FieldError>,
    at: &str,
    p: &k8s_openapi::api::core::v1::Probe,
    sleep: Option<(i64, i64)>,
) {
    let set = [
        ("exec", p.exec.is_some()),
        ("httpGet", p.http_get.is_some()),
        ("tcpSocket", p.tcp_socket.is_some()),
        ("grpc", p.grpc.is_some()),
        ("sleep", sleep.is_some()),
    ];
    let mut n = 0;
    for (f, on) in set {
        if !on {
            continue;
        }
        n += 1;
        if n > 1 {
            errs.push(forbidden(
                &format!("{at}.{f}"),
                "may not specify more than 1 handler type",
            ));
        }
    }
    if n == 0 {
        errs.push(required(at, "must specify a handler type"));
    }
    if let Some((secs, grace)) = sleep {
        if secs < 0 || secs > grace {
            errs.push(invalid(
                &format!("{at}.sleep"),
                secs,
                format!(
                    "must be non-negative and less than terminationGracePeriodSeconds ({grace})"
                ),
            ));
        }
    }
    if let Some(e) = &p.exec {
        if e.command.as_ref().is_none_or(|c| c.is_empty()) {
            errs.push(required(&format!("{at}.exec.command"), ""));
        }
    }
    if let Some(h) = &p.http_get {
        port_num_or_name(errs, &format!("{at}.httpGet.port"), &h.port);
        if let Some(s) = h.scheme.as_deref() {
            const S: &[&str] = &["HTTP", "HTTPS"];
            if !S.contains(&s) {
                errs.push(not_supported(&format!("{at}.httpGet.scheme"), s, S));
            }
        }
        for (i, hd) in h.http_headers.iter().flatten().enumerate() {
            if !http_header_name(&hd.name) {
                errs.push(invalid(
                    &format!("{at}.httpGet.httpHeaders[{i}].name"),
                    hd.name.as_str(),
                    "a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name',  regex used for validation is '[-A-Za-z0-9]+')",
                ));
            }
            if hd.value.contains(['\r', '\n']) {
                errs.push(invalid(
                    &format!("{at}.httpGet.httpHeaders[{i}].value"),
                    hd.value.as_str(),
                    "may not contain a line break",
                ));
            }
        }
    }
    if let Some(t) = &p.tcp_socket {
        port_num_or_name(errs, &format!("{at}.tcpSocket.port"), &t.port);
    }
    if let Some(g) = &p.grpc {
        if !(1..=65535).contains(&g.port) {
            errs.push(invalid(
                &format!("{at}.grpc.port"),
                i64::from(g.port),
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
}

fn http_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A port by number (1-65535) or by name (`IsValidPortName`'s checks and texts), as probes
/// and hooks take it.
fn port_num_or_name(
    errs: &mut Vec<FieldError>,
    at: &str,
    p: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match p {
        IntOrString::Int(n) if !(1..=65535).contains(n) => errs.push(invalid(
            at,
            i64::from(*n),
            "must be between 1 and 65535, inclusive",
        )),
        IntOrString::Int(_) => {}
        IntOrString::String(s) => {
            let mut why = vec![];
            if s.len() > 15 {
                why.push("must be no more than 15 characters");
            }
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                why.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
            } else if !s.bytes().any(|b| b.is_ascii_lowercase()) {
                why.push("must contain at least one letter (a-z)");
            } else if s.contains("--") {
                why.push("must not contain consecutive hyphens");
            } else if s.starts_with('-') || s.ends_with('-') {
                why.push("must not begin or end with a hyphen");
            }
            for w in why {
                errs.push(invalid(at, s.as_str(), w));
            }
        }
    }
}

/// A Pod (`ValidatePodCreate`, the parts knode acts on), and the UID it will run under.
pub fn pod(p: &Pod) -> Vec<FieldError> {
    let mut errs = Vec::new();
    metadata_name(&mut errs, p.metadata.name.as_deref(), false);
    metadata_namespace(&mut errs, p.metadata.namespace.as_deref());
    let Some(s) = &p.spec else {
        errs.push(required("spec", ""));
        return errs;
    };
    let vols = volumes(&mut errs, s.volumes.as_deref().unwrap_or(&[]));
    let inits = s.init_containers.as_deref().unwrap_or(&[]);
    if s.containers.is_empty() {
        errs.push(required("spec.containers", ""));
    }
    let total = inits.len() + s.containers.len();
    if total > MAX_CONTAINERS {
        errs.push(too_many("spec.containers", total, MAX_CONTAINERS));
        // Do not go through thousands of containers: the error says enough.
        return errs;
    }
    let mut seen = BTreeSet::new();
    for (list, cs) in [
        ("initContainers", inits),
        ("containers", s.containers.as_slice()),
    ] {
        for (i, c) in cs.iter().enumerate() {
            let grace = s.termination_grace_period_seconds.unwrap_or(30);
            let at = format!("spec.{list}[{i}]");
            container(&mut errs, &at, c, &vols, &mut seen, grace);
        }
    }
    if let Some(r) = &s.restart_policy {
        const P: &[&str] = &["Always", "OnFailure", "Never"];
        if !P.contains(&r.as_str()) {
            errs.push(not_supported("spec.restartPolicy", r, P));
        }
    }
    if let Some(d) = &s.dns_policy {
        const P: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !P.contains(&d.as_str()) {
            errs.push(not_supported("spec.dnsPolicy", d, P));
        }
    }
    dns_config(&mut errs, s);
    if let Some(h) = &s.hostname {
        names(&mut errs, "spec.hostname", h, dns_label(h));
    }
    if let Some(h) = &s.subdomain {
        names(&mut errs, "spec.subdomain", h, dns_label(h));
    }
    if let Some(g) = s.termination_grace_period_seconds {
        if g < 0 {
            errs.push(invalid(
                "spec.terminationGracePeriodSeconds",
                g,
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(sc) = &s.security_context {
        security(
            &mut errs,
            "spec.securityContext",
            sc.run_as_user,
            sc.run_as_group,
        );
        id(&mut errs, "spec.securityContext.fsGroup", sc.fs_group);
        for (i, g) in sc.supplemental_groups.iter().flatten().enumerate() {
            id(
                &mut errs,
                &format!("spec.securityContext.supplementalGroups[{i}]"),
                Some(*g),
            );
        }
    }
    errs
}

/// `spec.dnsConfig`, as `validatePodDNSConfig` checks it.
fn dns_config(errs: &mut Vec<FieldError>, s: &PodSpec) {
    use crate::api::resolv::{MAX_NAMESERVERS, MAX_SEARCHES, MAX_SEARCH_CHARS};
    let none = s.dns_policy.as_deref() == Some("None");
    let Some(c) = &s.dns_config else {
        if none {
            errs.push(required(
                "spec.dnsConfig",
                "must provide `dnsConfig` when `dnsPolicy` is None",
            ));
        }
        return;
    };
    let ns = c.nameservers.clone().unwrap_or_default();
    if none && ns.is_empty() {
        errs.push(required(
            "spec.dnsConfig.nameservers",
            "must provide at least one DNS nameserver when `dnsPolicy` is None",
        ));
    }
    if ns.len() > MAX_NAMESERVERS {
        errs.push(invalid(
            "spec.dnsConfig.nameservers",
            Value::List(ns.clone()),
            format!("must not have more than {MAX_NAMESERVERS} nameservers"),
        ));
    }
    for (i, n) in ns.iter().enumerate() {
        if n.parse::<std::net::IpAddr>().is_err() {
            errs.push(invalid(
                &format!("spec.dnsConfig.nameservers[{i}]"),
                n.as_str(),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    let searches = c.searches.clone().unwrap_or_default();
    if searches.len() > MAX_SEARCHES {
        errs.push(invalid(
            "spec.dnsConfig.searches",
            Value::List(searches.clone()),
            format!("must not have more than {MAX_SEARCHES} search paths"),
        ));
    }
    if searches.join(" ").len() > MAX_SEARCH_CHARS {
        errs.push(invalid(
            "spec.dnsConfig.searches",
            Value::List(searches.clone()),
            format!(
                "must not have more than {MAX_SEARCH_CHARS} characters (including spaces) in the search list"
            ),
        ));
    }
    for (i, d) in searches.iter().enumerate() {
        if d == "." {
            continue;
        }
        let d = d.strip_suffix('.').unwrap_or(d);
        names(
            errs,
            &format!("spec.dnsConfig.searches[{i}]"),
            d,
            dns_subdomain(d),
        );
    }
    for (i, o) in c.options.iter().flatten().enumerate() {
        if o.name.as_deref().unwrap_or("").is_empty() {
            errs.push(required(
                &format!("spec.dnsConfig.options[{i}]"),
                "must not be empty",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_from(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn errors(yaml: &str) -> Vec<String> {
        pod(&pod_from(yaml)).iter().map(|e| e.to_string()).collect()
    }

    const BASE: &str = "metadata: {name: web}\nspec:\n  containers: [{name: c, image: busybox}]\n";

    #[test]
    fn probes_are_checked_as_the_api_server_does() {
        let e = errors(concat!(
            "metadata: {name: web}\nspec:\n",
            "  initContainers: [{name: i, image: busybox, readinessProbe: {exec: {command: [x]}}}]\n",
            "  containers:\n",
            "  - name: a\n    image: busybox\n",
            "    livenessProbe: {periodSeconds: -1, successThreshold: 2}\n",
            "    readinessProbe: {exec: {command: [x]}, tcpSocket: {port: 80}, terminationGracePeriodSeconds: 5}\n",
            "    startupProbe: {httpGet: {port: Bad_Name, scheme: FTP, httpHeaders: [{name: 'a b', value: v}]}, terminationGracePeriodSeconds: 0}\n",
            "  - name: b\n    image: busybox\n",
            "    livenessProbe: {grpc: {port: 70000}, failureThreshold: -3}\n",
            "    readinessProbe: {tcpSocket: {port: 0}}\n",
            "    startupProbe: {exec: {}}\n",
            "    lifecycle: {postStart: {}, preStop: {sleep: {seconds: 40}}}\n",
            "    terminationMessagePath: /dev/../../etc/passwd\n",
        ));
        let want = [
            "spec.initContainers[0].readinessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
            "spec.containers[0].livenessProbe: Required value: must specify a handler type",
            "spec.containers[0].livenessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0",
            "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
            "spec.containers[0].readinessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
            "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: 5: must not be set for readinessProbes",
            "spec.containers[0].startupProbe.httpGet.port: Invalid value: \"Bad_Name\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            "spec.containers[0].startupProbe.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\"",
            "spec.containers[0].startupProbe.httpGet.httpHeaders[0].name: Invalid value: \"a b\"",
            "spec.containers[0].startupProbe.terminationGracePeriodSeconds: Invalid value: 0: must be greater than 0",
            "spec.containers[1].livenessProbe.grpc.port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[1].livenessProbe.failureThreshold: Invalid value: -3: must be greater than or equal to 0",
            "spec.containers[1].readinessProbe.tcpSocket.port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.containers[1].startupProbe.exec.command: Required value",
            "spec.containers[1].lifecycle.postStart: Required value: must specify a handler type",
            "spec.containers[1].lifecycle.preStop.sleep: Invalid value: 40: must be non-negative and less than terminationGracePeriodSeconds (30)",
            "spec.containers[1].terminationMessagePath: Invalid value: \"/dev/../../etc/passwd\": must not contain '..'",
        ];
        for w in want {
            assert!(
                e.iter().any(|x| x.starts_with(w)),
                "missing {w:?} in {e:#?}"
            );
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn a_plain_pod_is_valid() {
        assert!(errors(BASE).is_empty());
    }

    #[test]
    fn dns_config_is_checked_as_the_api_server_does() {
        assert_eq!(
            errors(&format!("{BASE}  dnsPolicy: None\n")),
            ["spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"]
        );
        let e = errors(&format!(
            "{BASE}  dnsPolicy: None\n  dnsConfig:\n    searches: [Bad_Domain, ok.example.]\n    options: [{{value: '1'}}]\n"
        ));
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[0], "spec.dnsConfig.nameservers: Required value: must provide at least one DNS nameserver when `dnsPolicy` is None");
        assert!(e[1].starts_with("spec.dnsConfig.searches[0]: Invalid value: \"Bad_Domain\": a lowercase RFC 1123 subdomain"), "{e:?}");
        assert_eq!(
            e[2],
            "spec.dnsConfig.options[0]: Required value: must not be empty"
        );
        let e = errors(&format!(
            "{BASE}  dnsConfig:\n    nameservers: [1.1.1.1, 2.2.2.2, 3.3.3.3, dns.example]\n"
        ));
        assert_eq!(
            e,
            [
                "spec.dnsConfig.nameservers: Invalid value: []string{\"1.1.1.1\", \"2.2.2.2\", \"3.3.3.3\", \"dns.example\"}: must not have more than 3 nameservers",
                "spec.dnsConfig.nameservers[3]: Invalid value: \"dns.example\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
            ]
        );
        assert!(errors(&format!(
            "{BASE}  dnsPolicy: None\n  dnsConfig: {{nameservers: [1.1.1.1], searches: [a.example, .], options: [{{name: ndots, value: '2'}}]}}\n"
        ))
        .is_empty());
    }

    #[test]
    fn names_are_checked_with_the_api_servers_texts() {
        let e = errors("metadata: {name: Bad_Name, namespace: /tmp/victim}\nspec:\n  containers: [{name: c, image: busybox}]\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with(
                "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
            ),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(
                "metadata.namespace: Invalid value: \"/tmp/victim\": a lowercase RFC 1123 label"
            ),
            "{e:?}"
        );
        let long = format!(
            "metadata: {{name: {}}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n",
            "a".repeat(254)
        );
        assert!(errors(&long)[0].ends_with("must be no more than 253 characters"));
        let ok = format!(
            "metadata: {{name: {}}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n",
            "a".repeat(253)
        );
        assert!(errors(&ok).is_empty());
    }

    #[test]
    fn volume_names_modes_and_paths() {
        let e = errors(concat!(
            "metadata: {name: web}\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
            "    volumeMounts: [{name: ../../x, mountPath: /a}, {name: v, mountPath: /a, subPath: ../up}]\n",
            "  volumes:\n",
            "  - {name: ../../x, emptyDir: {}}\n",
            "  - {name: /tmp/x, configMap: {name: cm, defaultMode: 2541}}\n",
            "  - {name: v, secret: {secretName: s, items: [{key: k, path: /etc/passwd, mode: 4095}, {key: ../k, path: ..data/x}]}}\n",
            "  - {name: v, emptyDir: {}, hostPath: {path: /}}\n",
            "  - {name: none}\n",
        ));
        let want = [
            "spec.volumes[0].name: Invalid value: \"../../x\": a lowercase RFC 1123 label",
            "spec.volumes[1].name: Invalid value: \"/tmp/x\": a lowercase RFC 1123 label",
            "spec.volumes[1].configMap.defaultMode: Invalid value: 2541: must be a number between 0 and 0777 (octal), both inclusive",
            "spec.volumes[2].secret.items[0].path: Invalid value: \"/etc/passwd\": must be a relative path",
            "spec.volumes[2].secret.items[0].mode: Invalid value: 4095: must be a number between 0 and 0777",
            "spec.volumes[2].secret.items[1].path: Invalid value: \"..data/x\": must not start with '..'",
            "spec.volumes[3].name: Duplicate value: \"v\"",
            "spec.volumes[3].emptyDir: Forbidden: may not specify more than 1 volume type",
            "spec.volumes[4]: Required value: must specify a volume type",
            "spec.containers[0].volumeMounts[1].mountPath: Invalid value: \"/a\": must be unique",
            "spec.containers[0].volumeMounts[1].subPath: Invalid value: \"../up\": must not contain '..'",
        ];
        for w in want {
            assert!(
                e.iter().any(|x| x.starts_with(w)),
                "missing {w:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn ids_hostname_env_and_counts() {
        let e = errors(concat!(
            "metadata: {name: web}\nspec:\n  hostname: \"evil\\n1.2.3.4 bank\"\n",
            "  securityContext: {runAsUser: 4294967295, fsGroup: -1, supplementalGroups: [2147483648]}\n",
            "  containers:\n  - name: c\n    image: busybox\n    securityContext: {runAsGroup: -1}\n",
            "    env: [{name: 'A=B', value: x}, {name: '', value: y}, {name: 'ok.name-1', value: z}]\n",
            "  - {name: c, image: busybox}\n",
        ));
        let want = [
            "spec.hostname: Invalid value: \"evil\\n1.2.3.4 bank\": a lowercase RFC 1123 label",
            "spec.securityContext.runAsUser: Invalid value: 4294967295: must be between 0 and 2147483647, inclusive",
            "spec.securityContext.fsGroup: Invalid value: -1: must be between",
            "spec.securityContext.supplementalGroups[0]: Invalid value: 2147483648",
            "spec.containers[0].securityContext.runAsGroup: Invalid value: -1",
            "spec.containers[0].env[0].name: Invalid value: \"A=B\": a valid environment variable name",
            "spec.containers[0].env[1].name: Required value",
            "spec.containers[1].name: Duplicate value: \"c\"",
        ];
        for w in want {
            assert!(
                e.iter().any(|x| x.starts_with(w)),
                "missing {w:?} in {e:#?}"
            );
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
        let many: String = (0..10_000)
            .map(|i| format!("  - {{name: c{i}, image: busybox}}\n"))
            .collect();
        let e = errors(&format!(
            "metadata: {{name: web}}\nspec:\n  containers:\n{many}"
        ));
        assert_eq!(
            e,
            vec!["spec.containers: Too many: 10000: must have at most 128 items"]
        );
    }

    #[test]
    fn config_maps_and_secrets() {
        let big = "x".repeat(MAX_OBJECT_DATA);
        let c: ConfigMap = serde_yaml::from_str(&format!(
            "metadata: {{name: cm}}\ndata: {{'a/b': x, ok: {big}}}\nbinaryData: {{ok: eA==}}\n"
        ))
        .unwrap();
        let e: Vec<String> = config_map(&c).iter().map(|e| e.to_string()).collect();
        assert!(
            e[0].starts_with("data[a/b]: Invalid value: \"a/b\": a valid config key"),
            "{e:?}"
        );
        assert_eq!(
            e[1],
            "data[ok]: Invalid value: \"ok\": duplicate of key present in binaryData"
        );
        assert_eq!(e[2], "[]: Too long: may not be more than 1048576 bytes");
        let s: Secret =
            serde_yaml::from_str("metadata: {name: s}\nstringData: {'..x': y}\n").unwrap();
        let e: Vec<String> = secret(&s).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            e,
            vec!["data[..x]: Invalid value: \"..x\": must not start with '..'"]
        );
    }

    #[test]
    fn the_status_message_aggregates_causes() {
        let p = pod_from("metadata: {name: web}\nspec: {containers: []}\n");
        let i = Invalid {
            kind: "Pod".into(),
            name: "web".into(),
            causes: pod(&p),
        };
        assert_eq!(
            i.to_string(),
            "Pod \"web\" is invalid: spec.containers: Required value"
        );
    }
}
