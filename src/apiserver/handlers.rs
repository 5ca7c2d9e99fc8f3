//! The REST verbs on every resource: get, list, watch, create, update, patch, delete,
//! deletecollection, and the subresources status, scale, binding and eviction, with the
//! request bodies, content negotiation (JSON objects or `Table`s) and the API's semantics.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::auth;
use super::fieldmanager;
use super::registry::{self, ListOptions, Registry};
use super::request::{Query, Target};
use super::resources::{self, Resource};
use super::status::{ApiError, ApiResult};
use super::{patch, printers, strategy, watch, User};
use crate::api::selector;

/// The largest request body accepted (the real API server's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct Api {
    pub reg: Registry,
    pub service_cidr: Ipv4Net,
    /// Namespaces to empty and remove ([`super::namespaces`]).
    pub terminating: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>>,
    pub metrics: Arc<super::metrics::Metrics>,
    /// Signs and checks ServiceAccount tokens.
    pub tokens: Arc<super::tokens::Signer>,
}

/// The response's JSON body with the status code.
fn reply(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
        })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A request body as a JSON value (JSON or YAML).
pub fn decode_body(ct: &str, body: &[u8]) -> ApiResult<Value> {
    let v: Value = match ct {
        "application/json" | "" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?,
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?,
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!("failed to decode the protobuf body: {e}"))
        })?,
        other => return Err(ApiError::unsupported_media(other)),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    Ok(v)
}

fn check_kind(r: &Resource, body: &Value, kind: &str, api_version: &str) -> ApiResult<()> {
    if let Some(av) = body["apiVersion"].as_str().filter(|s| !s.is_empty()) {
        if av != api_version {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({api_version})"
            )));
        }
    }
    if let Some(k) = body["kind"].as_str().filter(|s| !s.is_empty()) {
        if k != kind {
            return Err(ApiError::bad_request(format!(
                "{k} in version \"{}\" cannot be handled as a {kind}: the kind in the body does not match the resource {}",
                r.version,
                r.qualified()
            )));
        }
    }
    if !body["metadata"].is_null() && !body["metadata"].is_object() {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: metadata must be an object",
            r.version
        )));
    }
    Ok(())
}

/// `fieldValidation`: Strict (400 on unknown fields), Warn (a Warning header), Ignore.
fn field_validation(
    r: &Resource,
    q: &Query,
    obj: &Value,
    warnings: &mut Vec<String>,
) -> ApiResult<()> {
    let mode = q.get("fieldValidation").unwrap_or("Warn");
    if !matches!(mode, "Strict" | "Warn" | "Ignore") {
        return Err(ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {mode}; valid values: Ignore, Warn, Strict"
        )));
    }
    let cannot = |e: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            r.kind, r.version, r.kind
        ))
    };
    strategy::decodes(r, obj).map_err(cannot)?;
    if mode == "Ignore" {
        return Ok(());
    }
    // Every served kind has its schema (a unit test of `schema` checks it).
    let mut unknown = Vec::new();
    if let Some(def) = super::schema::get(r.definition) {
        super::schema::unknown_fields(def, obj, "", &mut unknown);
    }
    if unknown.is_empty() {
        return Ok(());
    }
    if mode == "Strict" {
        let list: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            r.kind,
            r.version,
            r.kind,
            list.join(", ")
        )));
    }
    warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
    Ok(())
}

fn meta_str<'a>(v: &'a Value, k: &str) -> &'a str {
    v["metadata"][k].as_str().unwrap_or("")
}

/// The namespace the object goes to: the URL's; the body may repeat it but not contradict it.
fn namespace_of(r: &Resource, t: &Target, obj: &mut Value) -> ApiResult<Option<String>> {
    if !r.namespaced {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        return Ok(None);
    }
    let url_ns = t.namespace.clone().ok_or_else(|| {
        ApiError::bad_request(format!(
            "{} must be created in a namespace: use /namespaces/<namespace>/{}",
            r.plural, r.plural
        ))
    })?;
    let body_ns = meta_str(obj, "namespace");
    if !body_ns.is_empty() && body_ns != url_ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if obj["metadata"].is_null() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["namespace"] = json!(url_ns);
    Ok(Some(url_ns))
}

impl Api {
    /// The namespace must exist (and not be terminating) before anything is created in it.
    async fn namespace_open(&self, ns: &str) -> ApiResult<()> {
        let nsr = resources::find("", "v1", "namespaces").expect("namespaces are served");
        match self.reg.get_kv(nsr, None, ns).await? {
            None => Err(ApiError::not_found(nsr, ns)),
            Some((v, _)) if v["status"]["phase"] == "Terminating" => {
                Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Validation, strict decoding and defaulting of an object about to be written.
    fn check(
        &self,
        r: &Resource,
        q: &Query,
        obj: &mut Value,
        warnings: &mut Vec<String>,
    ) -> ApiResult<()> {
        field_validation(r, q, obj, warnings)?;
        strategy::defaults(r, obj);
        let errs = strategy::validate(r, obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(r, meta_str(obj, "name"), errs));
        }
        Ok(())
    }

    /// The DefaultStorageClass and StorageObjectInUseProtection admission plugins: a claim
    /// that names no class gets the default one (the newest, if several are marked), and
    /// claims and volumes get the finalizer that holds them while in use.
    async fn admit_storage(&self, r: &Resource, obj: &mut Value) -> ApiResult<()> {
        let claim = r.plural == "persistentvolumeclaims";
        if claim && obj["spec"]["storageClassName"].is_null() {
            let scr = resources::find("storage.k8s.io", "v1", "storageclasses").expect("served");
            let classes = self.reg.list(scr, None, &Default::default()).await?;
            let default = classes
                .items
                .iter()
                .filter(|c| {
                    c["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                        == "true"
                })
                .max_by_key(|c| {
                    (
                        c["metadata"]["creationTimestamp"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        c["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    )
                });
            if let Some(c) = default {
                obj["spec"]["storageClassName"] = c["metadata"]["name"].clone();
            }
        }
        let fin = if claim {
            "kubernetes.io/pvc-protection"
        } else {
            "kubernetes.io/pv-protection"
        };
        let list = obj["metadata"]
            .as_object_mut()
            .map(|m| m.entry("finalizers").or_insert_with(|| json!([])));
        if let Some(Value::Array(l)) = list {
            if !l.iter().any(|f| f == fin) {
                l.push(json!(fin));
            }
        }
        Ok(())
    }

    /// The ServiceAccount admission plugin: the pod's ServiceAccount must exist, and unless
    /// the pod or the ServiceAccount opts out, a projected volume `kube-api-access-<5>` with a
    /// token, the cluster CA and the namespace is mounted in every container at
    /// `/var/run/secrets/kubernetes.io/serviceaccount` (what in-cluster clients read).
    async fn admit_service_account(&self, ns: &str, obj: &mut Value) -> ApiResult<()> {
        const PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        if obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
            return Ok(());
        }
        let pod = meta_str(obj, "name").to_string();
        let name = obj["spec"]["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        let sar = resources::find("", "v1", "serviceaccounts").expect("served");
        let Some((sa, _)) = self.reg.get_kv(sar, Some(ns), &name).await? else {
            return Err(ApiError::forbidden(format!(
                "pods \"{pod}\" is forbidden: error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
            )));
        };
        let automount = obj["spec"]["automountServiceAccountToken"]
            .as_bool()
            .or(sa["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if !automount {
            return Ok(());
        }
        let volume = format!("kube-api-access-{}", strategy::random_suffix(5));
        let mut needed = false;
        for list in ["initContainers", "containers"] {
            for c in obj["spec"][list].as_array_mut().into_iter().flatten() {
                let has = c["volumeMounts"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["mountPath"] == PATH));
                if has {
                    continue;
                }
                if !c["volumeMounts"].is_array() {
                    c["volumeMounts"] = json!([]);
                }
                if let Some(m) = c["volumeMounts"].as_array_mut() {
                    m.push(json!({"name": volume, "readOnly": true, "mountPath": PATH}));
                    needed = true;
                }
            }
        }
        if needed {
            if !obj["spec"]["volumes"].is_array() {
                obj["spec"]["volumes"] = json!([]);
            }
            if let Some(v) = obj["spec"]["volumes"].as_array_mut() {
                v.push(json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": super::tokens::KUBELET_EXPIRATION, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ]}}));
            }
        }
        Ok(())
    }

    async fn allocate(
        &self,
        r: &Resource,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<(Vec<crate::store::Compare>, Vec<crate::store::Op>)> {
        if r.plural != "services" || !r.group.is_empty() {
            return Ok(Default::default());
        }
        let name = meta_str(obj, "name").to_string();
        super::alloc::assign(&*self.reg.store, self.service_cidr, obj, old)
            .await
            .map_err(|errs| ApiError::invalid(r, &name, errs))
    }

    /// POST to a collection.
    pub async fn create(
        &self,
        t: &Target,
        q: &Query,
        obj: Value,
        user: &User,
        warnings: &mut Vec<String>,
    ) -> ApiResult<(StatusCode, Value)> {
        self.create_as(t, q, obj, user, warnings, false).await
    }

    /// A create; `applied`: by a server-side apply, whose managedFields `obj` carries.
    async fn create_as(
        &self,
        t: &Target,
        q: &Query,
        mut obj: Value,
        user: &User,
        warnings: &mut Vec<String>,
        applied: bool,
    ) -> ApiResult<(StatusCode, Value)> {
        let r = t.resource;
        check_kind(r, &obj, r.kind, &r.api_version())?;
        match r.plural {
            "selfsubjectaccessreviews" | "selfsubjectrulesreviews" | "selfsubjectreviews" => {
                return Ok((StatusCode::CREATED, review(&self.reg, r, obj, user).await));
            }
            "bindings" => {
                let ns = t.namespace.clone().unwrap_or_default();
                let name = meta_str(&obj, "name").to_string();
                return self.bind(&ns, &name, &obj, q).await;
            }
            _ => {}
        }
        let ns = namespace_of(r, t, &mut obj)?;
        if obj["metadata"].is_null() {
            obj["metadata"] = json!({});
        }
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        let mut generated: Option<String> = None;
        if name.is_empty() {
            if let Some(base) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
            {
                let base: String = base.chars().take(58).collect();
                meta.insert(
                    "name".into(),
                    json!(format!("{base}{}", strategy::random_suffix(5))),
                );
                generated = Some(base);
            }
        }
        meta.insert("uid".into(), json!(strategy::new_uid()));
        meta.insert("creationTimestamp".into(), json!(registry::now()));
        for k in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(k);
        }
        if r.generation() {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        let name = meta_str(&obj, "name").to_string();
        if !name.is_empty() {
            super::request::path_segment(&name).map_err(|_| {
                ApiError::invalid(
                    r,
                    &name,
                    vec![crate::api::validation::invalid(
                        "metadata.name",
                        name.as_str(),
                        "must not contain '/' or '%' or be '.' or '..'",
                    )],
                )
            })?;
        }
        self.check(r, q, &mut obj, warnings)?;
        super::rbac::check_escalation(&self.reg, user, r, ns.as_deref().unwrap_or(""), &obj)
            .await?;
        if r.group.is_empty() && r.plural == "pods" {
            self.admit_service_account(ns.as_deref().unwrap_or("default"), &mut obj)
                .await?;
        }
        if r.group.is_empty() && matches!(r.plural, "persistentvolumeclaims" | "persistentvolumes")
        {
            self.admit_storage(r, &mut obj).await?;
        }
        if let Some(st) = strategy::initial_status(r, &obj) {
            obj["status"] = st;
        }
        if !applied {
            let manager = q.manager()?;
            let w = fieldmanager::Writer {
                manager: &manager,
                apply: false,
                subresource: None,
            };
            fieldmanager::update(r, None, &mut obj, &w);
        }
        if let Some(ns) = &ns {
            self.namespace_open(ns).await?;
        }
        // Taken names fail as AlreadyExists before anything is allocated (the transaction
        // below still decides races).
        if r.plural == "services"
            && !name.is_empty()
            && self.reg.get_kv(r, ns.as_deref(), &name).await?.is_some()
        {
            return Err(ApiError::already_exists(r, &name));
        }
        let extra = self.allocate(r, &mut obj, None).await?;
        if q.dry_run()? {
            return Ok((StatusCode::CREATED, obj));
        }
        // A generated name already taken is drawn again, up to 8 times in all (as the API
        // server does since 1.32; 5 random characters collide once in a few thousand names).
        let Some(base) = generated else {
            let created = self.reg.create(r, ns.as_deref(), obj, extra).await?;
            return Ok((StatusCode::CREATED, created));
        };
        let mut attempt = 1;
        loop {
            match self
                .reg
                .create(r, ns.as_deref(), obj.clone(), extra.clone())
                .await
            {
                Err(e) if e.reason == "AlreadyExists" && attempt < 8 => {
                    obj["metadata"]["name"] =
                        json!(format!("{base}{}", strategy::random_suffix(5)));
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(created) => return Ok((StatusCode::CREATED, created)),
            }
        }
    }

    /// pods/binding (and the `bindings` resource): sets the pod's node, once.
    async fn bind(
        &self,
        ns: &str,
        name: &str,
        binding: &Value,
        q: &Query,
    ) -> ApiResult<(StatusCode, Value)> {
        let pods = resources::find("", "v1", "pods").expect("pods are served");
        let node = binding["target"]["name"].as_str().unwrap_or("");
        if node.is_empty() {
            let br = resources::find("", "v1", "bindings").expect("bindings are served");
            return Err(ApiError::invalid(
                br,
                name,
                vec![crate::api::validation::required("target.name", "")],
            ));
        }
        let (mut pod, rev) = self
            .reg
            .get_kv(pods, Some(ns), name)
            .await?
            .ok_or_else(|| ApiError::not_found(pods, name))?;
        if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                pods,
                name,
                &format!("pod {name} is already assigned to node \"{n}\""),
            ));
        }
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::conflict(
                pods,
                name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        let conds = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": registry::now()}));
        pod["status"]["conditions"] = json!(conds);
        if !q.dry_run()? {
            self.reg
                .update(pods, Some(ns), pod, rev, Default::default())
                .await?;
        }
        Ok((StatusCode::CREATED, success_status(None)))
    }

    /// POST to a subresource of an object: binding, eviction; the streaming ones wait for
    /// the node agent.
    pub async fn create_sub(
        &self,
        t: &Target,
        q: &Query,
        body: Option<Value>,
        user: &User,
    ) -> ApiResult<(StatusCode, Value)> {
        let r = t.resource;
        let (ns, name) = (
            t.namespace.clone().unwrap_or_default(),
            t.name.clone().unwrap_or_default(),
        );
        match t.sub.as_deref() {
            Some("binding") => {
                let body = body.unwrap_or_default();
                check_kind(r, &body, "Binding", "v1")?;
                self.bind(&ns, &name, &body, q).await
            }
            Some("eviction") => {
                let body = body.unwrap_or_default();
                let opts = body.get("deleteOptions").cloned().unwrap_or(json!({}));
                self.delete(t, q, opts).await?;
                Ok((StatusCode::CREATED, success_status(None)))
            }
            Some("token") if r.plural == "serviceaccounts" => {
                let out = super::tokens::request(
                    &self.tokens,
                    &self.reg,
                    user,
                    &ns,
                    &name,
                    body.unwrap_or_else(|| json!({})),
                )
                .await?;
                Ok((StatusCode::CREATED, out))
            }
            Some(s @ ("exec" | "attach" | "portforward" | "proxy")) => Err(no_agent(s)),
            _ => Err(ApiError::method_not_allowed("create", r)),
        }
    }

    /// GET of one object or its status/scale.
    pub async fn get(&self, t: &Target) -> ApiResult<Value> {
        let r = t.resource;
        let name = t.name.as_deref().unwrap_or_default();
        let obj = self.reg.get(r, t.namespace.as_deref(), name).await?;
        match t.sub.as_deref() {
            None | Some("status") => Ok(obj),
            Some("scale") => Ok(to_scale(r, &obj)),
            Some(s) => Err(no_agent(s)),
        }
    }

    /// PUT of an object (or its status or scale).
    pub async fn update(
        &self,
        t: &Target,
        q: &Query,
        body: Value,
        user: &User,
        warnings: &mut Vec<String>,
    ) -> ApiResult<(StatusCode, Value)> {
        let r = t.resource;
        let ns = t.namespace.as_deref();
        let name = t.name.clone().unwrap_or_default();
        if t.sub.as_deref() == Some("scale") {
            check_kind(r, &body, "Scale", "autoscaling/v1")?;
        } else {
            check_kind(r, &body, r.kind, &r.api_version())?;
        }
        let body_name = meta_str(&body, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if r.namespaced {
            let bns = meta_str(&body, "namespace");
            if !bns.is_empty() && Some(bns) != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let want_rv = meta_str(&body, "resourceVersion").to_string();
        let (old, rev) = self
            .reg
            .get_kv(r, ns, &name)
            .await?
            .ok_or_else(|| ApiError::not_found(r, &name))?;
        if !want_rv.is_empty() && want_rv != rev.to_string() {
            return Err(ApiError::modified(r, &name));
        }
        self.write(t, q, old, rev, body, user, warnings, "Update")
            .await
    }

    /// Writes `body` over `old` (at `rev`) as a PUT of `t` would; shared by PUT and PATCH.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        t: &Target,
        q: &Query,
        old: Value,
        rev: i64,
        body: Value,
        user: &User,
        warnings: &mut Vec<String>,
        operation: &str,
    ) -> ApiResult<(StatusCode, Value)> {
        let r = t.resource;
        let ns = t.namespace.as_deref();
        super::rbac::check_escalation(&self.reg, user, r, ns.unwrap_or(""), &body).await?;
        let name = t.name.clone().unwrap_or_default();
        let applied_fields = body["metadata"]["managedFields"].clone();
        let mut new = match t.sub.as_deref() {
            Some("status") => {
                let mut n = old.clone();
                n["status"] = body["status"].clone();
                n
            }
            Some("scale") => {
                let replicas = body["spec"]["replicas"].as_i64().unwrap_or(0);
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        &SCALE,
                        &name,
                        vec![crate::api::validation::invalid(
                            "spec.replicas",
                            replicas,
                            "must be greater than or equal to 0",
                        )],
                    ));
                }
                let mut n = old.clone();
                n["spec"]["replicas"] = json!(replicas);
                n
            }
            None => {
                let mut n = body;
                if n["metadata"].is_null() {
                    n["metadata"] = json!({});
                }
                if r.has_status() {
                    n["status"] = old["status"].clone();
                }
                n
            }
            Some(_) => return Err(ApiError::method_not_allowed("update", r)),
        };
        // The server's fields.
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if t.sub.is_none() {
            self.check(r, q, &mut new, warnings)?;
        } else {
            field_validation(r, q, &new, warnings)?;
        }
        immutable(r, &old, &new)?;
        if r.generation() && old["spec"] != new["spec"] {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if operation == "Apply" {
            new["metadata"]["managedFields"] = applied_fields;
        } else {
            let manager = q.manager()?;
            let w = fieldmanager::Writer {
                manager: &manager,
                apply: false,
                subresource: t.sub.as_deref(),
            };
            fieldmanager::update(r, Some(&old), &mut new, &w);
        }
        let extra = self.allocate(r, &mut new, Some(&old)).await?;
        if q.dry_run()? {
            registry::stamp(r, &mut new, rev);
            return Ok((StatusCode::OK, shape(t, &new)));
        }
        // The last finalizer removed from an object being deleted: it goes.
        let finalizing = !new["metadata"]["deletionTimestamp"].is_null()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
            && !(r.plural == "pods" && pod_waits_for_node(&new));
        if finalizing && r.plural != "namespaces" {
            let release = if r.plural == "services" {
                super::alloc::release(&old)
            } else {
                vec![]
            };
            let gone = self.reg.delete(r, ns, new, rev, release).await?;
            return Ok((StatusCode::OK, shape(t, &gone)));
        }
        // Nothing changed: no write, no new resourceVersion and no watch event, as the API
        // server compares the objects before it writes (a manager's time moves only when its
        // fields change).
        let unchanged = |v: &Value| {
            let mut v = v.clone();
            v["metadata"]["resourceVersion"] = Value::Null;
            for m in v["metadata"]["managedFields"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                m["time"] = Value::Null;
            }
            v
        };
        if extra.0.is_empty() && extra.1.is_empty() && unchanged(&old) == unchanged(&new) {
            let mut same = old;
            registry::stamp(r, &mut same, rev);
            return Ok((StatusCode::OK, shape(t, &same)));
        }
        let stored = self.reg.update(r, ns, new, rev, extra).await?;
        Ok((StatusCode::OK, shape(t, &stored)))
    }

    /// PATCH: JSON patch, merge patch, strategic merge patch, or apply.
    pub async fn patch(
        &self,
        t: &Target,
        q: &Query,
        ct: &str,
        body: &[u8],
        user: &User,
        warnings: &mut Vec<String>,
    ) -> ApiResult<(StatusCode, Value)> {
        let r = t.resource;
        let ns = t.namespace.as_deref();
        let name = t.name.clone().unwrap_or_default();
        let kind = patch::Kind::of(ct).ok_or_else(|| ApiError::unsupported_media(ct))?;
        if kind == patch::Kind::Apply && q.get("fieldManager").is_none() {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let patch_doc: Value = match kind {
            patch::Kind::Apply => decode_body("application/yaml", body)?,
            _ => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
        };
        let force = q.flag("force")?;
        if force && kind != patch::Kind::Apply {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
            ));
        }
        // Server-side apply of an object or its status; the scale view patches as before.
        let ssa = kind == patch::Kind::Apply && t.sub.as_deref() != Some("scale");
        let manager = q.manager()?;
        let applier = fieldmanager::Writer {
            manager: &manager,
            apply: true,
            subresource: t.sub.as_deref(),
        };
        if ssa {
            check_kind(r, &patch_doc, r.kind, &r.api_version())?;
        }
        for _attempt in 0..8 {
            let Some((current, rev)) = self.reg.get_kv(r, ns, &name).await? else {
                if kind == patch::Kind::Apply && t.sub.is_none() {
                    let mut obj = fieldmanager::apply(r, None, &patch_doc, &applier, force)?;
                    if obj["metadata"]["name"].is_null() {
                        obj["metadata"]["name"] = json!(name);
                    }
                    let t2 = Target {
                        name: None,
                        ..t.clone()
                    };
                    let mut q2 = q.clone();
                    q2.0.entry("fieldValidation".into())
                        .or_insert_with(|| "Strict".into());
                    return self.create_as(&t2, &q2, obj, user, warnings, true).await;
                }
                return Err(ApiError::not_found(r, &name));
            };
            let patched = if ssa {
                fieldmanager::apply(r, Some(&current), &patch_doc, &applier, force)?
            } else {
                patch::apply(kind, &shape(t, &current), &patch_doc, r)?
            };
            let want_rv = meta_str(&patched, "resourceVersion").to_string();
            if !want_rv.is_empty() && want_rv != rev.to_string() {
                return Err(ApiError::modified(r, &name));
            }
            let op = if ssa { "Apply" } else { "Update" };
            // A patch that names a resourceVersion is a precondition; any other is applied
            // again to the object as it is now when a write raced it (as upstream retries).
            let precondition = match &patch_doc {
                Value::Array(ops) => ops.iter().any(|o| o["path"] == "/metadata/resourceVersion"),
                doc => !doc["metadata"]["resourceVersion"].is_null(),
            };
            match self
                .write(t, q, current, rev, patched, user, warnings, op)
                .await
            {
                Err(e) if e.reason == "Conflict" && !precondition => continue,
                other => return other,
            }
        }
        Err(ApiError::modified(r, &name))
    }

    /// DELETE of one object.
    pub async fn delete(
        &self,
        t: &Target,
        q: &Query,
        opts: Value,
    ) -> ApiResult<(StatusCode, Value)> {
        let r = t.resource;
        let ns = t.namespace.as_deref();
        let name = t.name.clone().unwrap_or_default();
        if r.plural == "namespaces"
            && matches!(name.as_str(), "default" | "kube-system" | "kube-public")
        {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let policy = opts["propagationPolicy"]
            .as_str()
            .or(q.get("propagationPolicy"))
            .unwrap_or("");
        if !matches!(policy, "" | "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            )));
        }
        let grace_opt = match opts["gracePeriodSeconds"].as_i64() {
            Some(g) => Some(g),
            None => q.int("gracePeriodSeconds")?,
        };
        if grace_opt.is_some_and(|g| g < 0) {
            return Err(ApiError::bad_request(
                "DeleteOptions.meta.k8s.io \"\" is invalid: gracePeriodSeconds: Invalid value: -1: must be greater than or equal to 0",
            ));
        }
        let dry = q.dry_run()?
            || opts["dryRun"]
                .as_array()
                .is_some_and(|a| a.iter().any(|d| d == "All"));
        for _attempt in 0..8 {
            let (mut obj, rev) = self
                .reg
                .get_kv(r, ns, &name)
                .await?
                .ok_or_else(|| ApiError::not_found(r, &name))?;
            let pre = &opts["preconditions"];
            if let Some(uid) = pre["uid"].as_str() {
                if uid != meta_str(&obj, "uid") {
                    return Err(ApiError::conflict(r, &name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", meta_str(&obj, "uid"))));
                }
            }
            if let Some(rv) = pre["resourceVersion"].as_str() {
                if rv != rev.to_string() {
                    return Err(ApiError::conflict(r, &name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {rev}")));
                }
            }
            // Orphaning or foreground deletion: the object waits, being deleted, under the
            // garbage collector's finalizer until its dependents are let go or gone
            // (controllers/gc.rs). Core v1 ReplicationControllers orphan by default, as
            // upstream's strategy says. Pods and namespaces have their own ways to go and
            // own nothing the collector watches: they take no finalizer here.
            let orphan = policy == "Orphan"
                || (policy.is_empty()
                    && (opts["orphanDependents"] == true
                        || (r.plural == "replicationcontrollers" && r.group.is_empty())));
            let gc_finalizer = if matches!(r.plural, "pods" | "namespaces") && r.group.is_empty() {
                None
            } else if orphan {
                Some(crate::api::ORPHAN_DEPENDENTS)
            } else if policy == "Foreground" {
                Some(crate::api::FOREGROUND_DELETION)
            } else {
                None
            }
            .filter(|f| {
                !obj["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == f))
            });
            let is_pod = r.plural == "pods" && r.group.is_empty();
            let grace = if is_pod {
                grace_opt.unwrap_or_else(|| {
                    obj["spec"]["terminationGracePeriodSeconds"]
                        .as_i64()
                        .unwrap_or(30)
                })
            } else {
                0
            };
            let finalizers = obj["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            let graceful = is_pod && grace > 0 && pod_waits_for_node(&obj);
            let is_ns = r.plural == "namespaces";
            if finalizers || graceful || is_ns || gc_finalizer.is_some() {
                let already = !obj["metadata"]["deletionTimestamp"].is_null();
                let cur_grace = obj["metadata"]["deletionGracePeriodSeconds"].as_i64();
                let shorter = graceful && cur_grace.is_some_and(|c| grace < c);
                if already && !shorter && gc_finalizer.is_none() {
                    return Ok((StatusCode::OK, obj));
                }
                if let Some(f) = gc_finalizer {
                    match obj["metadata"]["finalizers"].as_array_mut() {
                        Some(a) => a.push(json!(f)),
                        None => obj["metadata"]["finalizers"] = json!([f]),
                    }
                }
                if !already || shorter {
                    let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
                    obj["metadata"]["deletionTimestamp"] = json!(crate::api::time::rfc3339(at));
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                }
                if is_ns {
                    obj["status"]["phase"] = json!("Terminating");
                }
                if dry {
                    return Ok((StatusCode::OK, obj));
                }
                match self.reg.update(r, ns, obj, rev, Default::default()).await {
                    Ok(v) => {
                        if is_ns {
                            if let Some(tx) = self.terminating.get() {
                                let _ = tx.send(name.clone());
                            }
                        }
                        // 202 only when the client asked for cascading with the old
                        // `orphanDependents: false`, as upstream's handler answers.
                        return Ok((
                            if opts["orphanDependents"] == false {
                                StatusCode::ACCEPTED
                            } else {
                                StatusCode::OK
                            },
                            v,
                        ));
                    }
                    Err(e) if e.reason == "Conflict" => continue,
                    Err(e) => return Err(e),
                }
            }
            if dry {
                return Ok((StatusCode::OK, deleted_reply(r, &obj)));
            }
            let release = if r.plural == "services" && r.group.is_empty() {
                super::alloc::release(&obj)
            } else {
                vec![]
            };
            match self.reg.delete(r, ns, obj, rev, release).await {
                Ok(gone) => return Ok((StatusCode::OK, deleted_reply(r, &gone))),
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::modified(r, &name))
    }

    /// DELETE of a collection: every selected object, deleted as one by one.
    pub async fn delete_collection(&self, t: &Target, q: &Query, opts: Value) -> ApiResult<Value> {
        let r = t.resource;
        let lo = list_options(r, q)?;
        let list = self
            .reg
            .list(
                r,
                t.namespace.as_deref(),
                &ListOptions {
                    limit: 0,
                    continue_token: None,
                    ..lo
                },
            )
            .await?;
        let mut items = Vec::new();
        for o in list.items {
            let t1 = Target {
                namespace: o["metadata"]["namespace"].as_str().map(str::to_string),
                name: Some(meta_str(&o, "name").to_string()),
                ..t.clone()
            };
            match self.delete(&t1, q, opts.clone()).await {
                Ok((_, v)) => items.push(if v["kind"] == "Status" { o } else { v }),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(
            json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": {"resourceVersion": list.revision.to_string()}, "items": items}),
        )
    }

    /// A LIST, as objects or as a Table.
    /// A LIST, as objects or as a Table, written as the store is read (no tree of the
    /// whole collection in memory).
    pub async fn list(&self, t: &Target, q: &Query, table: bool) -> ApiResult<Vec<u8>> {
        let r = t.resource;
        let lo = list_options(r, q)?;
        let filtering = !lo.labels.is_empty() || !lo.fields.0.is_empty();
        let mut body = Vec::with_capacity(64 * 1024);
        let now = chrono::Utc::now();
        if table {
            body.extend_from_slice(
                b"{\"kind\":\"Table\",\"apiVersion\":\"meta.k8s.io/v1\",\"columnDefinitions\":",
            );
            serde_json::to_writer(&mut body, &printers::column_definitions(r))
                .map_err(ApiError::internal)?;
            body.extend_from_slice(b",\"rows\":[");
        } else {
            body.extend_from_slice(
                format!(
                    "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"items\":[",
                    r.kind,
                    r.api_version()
                )
                .as_bytes(),
            );
        }
        let mut first = true;
        let res = self
            .reg
            .scan(r, t.namespace.as_deref(), &lo, |kv| {
                let v = if table || filtering {
                    let v = registry::decode(r, kv)?;
                    if filtering && !registry::selected(r, &v, &lo.labels, &lo.fields) {
                        return Ok(false);
                    }
                    Some(v)
                } else {
                    None
                };
                if !first {
                    body.push(b',');
                }
                first = false;
                match (&v, table) {
                    (Some(v), true) => serde_json::to_writer(&mut body, &printers::row(r, v, now))
                        .map_err(ApiError::internal)?,
                    _ => registry::write_item(r, kv, &mut body)?,
                }
                Ok(true)
            })
            .await?;
        let mut meta = json!({"resourceVersion": res.revision.to_string()});
        if let Some(c) = res.continue_token {
            meta["continue"] = json!(c);
        }
        if let Some(n) = res.remaining.filter(|_| !table) {
            meta["remainingItemCount"] = json!(n);
        }
        body.extend_from_slice(b"],\"metadata\":");
        serde_json::to_writer(&mut body, &meta).map_err(ApiError::internal)?;
        body.push(b'}');
        Ok(body)
    }
}

const SCALE: Resource = Resource {
    group: "autoscaling",
    version: "v1",
    kind: "Scale",
    plural: "scale",
    singular: "",
    namespaced: true,
    short: &[],
    categories: &[],
    verbs: &[],
    subs: &[],
    storage: "",
    definition: "",
};

/// A pod bound to a node waits for its agent to stop it before it goes (graceful deletion).
fn pod_waits_for_node(p: &Value) -> bool {
    let phase = p["status"]["phase"].as_str().unwrap_or("");
    p["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
        && phase != "Succeeded"
        && phase != "Failed"
}

fn no_agent(sub: &str) -> ApiError {
    ApiError::unavailable(format!(
        "no node agent: {sub} needs the pod's node agent, which this server does not have yet"
    ))
}

/// Fields that may not change after creation.
fn immutable(r: &Resource, old: &Value, new: &Value) -> ApiResult<()> {
    let name = meta_str(new, "name");
    let mut errs = Vec::new();
    let field = |errs: &mut Vec<_>, path: &str, a: &Value, b: &Value, msg: &str| {
        if a != b {
            errs.push(crate::api::validation::invalid(path, "", msg));
        }
    };
    match (r.group, r.kind) {
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") => field(
            &mut errs,
            "spec.selector",
            &old["spec"]["selector"],
            &new["spec"]["selector"],
            "field is immutable",
        ),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => field(
            &mut errs,
            "roleRef",
            &old["roleRef"],
            &new["roleRef"],
            "cannot change roleRef",
        ),
        ("", "ConfigMap" | "Secret") if old["immutable"] == true => {
            for f in ["data", "binaryData", "stringData"] {
                if old[f] != new[f] {
                    errs.push(crate::api::validation::forbidden(
                        f,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        ("", "Service") => {
            let (a, b) = (&old["spec"]["clusterIP"], &new["spec"]["clusterIP"]);
            if a != b
                && old["spec"]["type"] != "ExternalName"
                && new["spec"]["type"] != "ExternalName"
            {
                errs.push(crate::api::validation::invalid(
                    "spec.clusterIPs[0]",
                    b.as_str().unwrap_or(""),
                    "may not change once set",
                ));
            }
        }
        ("", "Pod") => {
            let strip = |p: &Value| {
                let mut s = p["spec"].clone();
                for c in ["containers", "initContainers"] {
                    for x in s[c].as_array_mut().into_iter().flatten() {
                        x["image"] = Value::Null;
                    }
                }
                for k in [
                    "activeDeadlineSeconds",
                    "tolerations",
                    "terminationGracePeriodSeconds",
                    "nodeName",
                ] {
                    s[k] = Value::Null;
                }
                s
            };
            if strip(old) != strip(new) {
                errs.push(crate::api::validation::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
            if old["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
                && old["spec"]["nodeName"] != new["spec"]["nodeName"]
            {
                errs.push(crate::api::validation::forbidden(
                    "spec.nodeName",
                    "field is immutable",
                ));
            }
        }
        _ => {}
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(r, name, errs))
    }
}

/// The object as the target shows it: itself, or its Scale.
fn shape(t: &Target, obj: &Value) -> Value {
    match t.sub.as_deref() {
        Some("scale") => to_scale(t.resource, obj),
        _ => obj.clone(),
    }
}

/// The autoscaling/v1 Scale of a workload.
pub fn to_scale(r: &Resource, obj: &Value) -> Value {
    let m = &obj["metadata"];
    let selector = if r.kind == "ReplicationController" {
        let sel: Vec<String> = obj["spec"]["selector"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        sel.join(",")
    } else {
        printers::format_selector(&obj["spec"]["selector"]).replace("<none>", "")
    };
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

fn success_status(details: Option<Value>) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

/// What a DELETE answers: the object for pods and service accounts, else a Status.
fn deleted_reply(r: &Resource, obj: &Value) -> Value {
    if matches!(r.plural, "pods" | "serviceaccounts") && r.group.is_empty() {
        return obj.clone();
    }
    success_status(Some(json!({
        "name": obj["metadata"]["name"], "group": r.group, "kind": r.plural, "uid": obj["metadata"]["uid"]
    })))
}

/// SelfSubjectAccessReview / SelfSubjectRulesReview / SelfSubjectReview, answered for the
/// caller: admins (group system:masters) may do anything, others nothing yet.
/// Whether `user` may make this request (403 with the upstream text if not).
pub async fn authorize(
    reg: &Registry,
    user: &User,
    t: &Target,
    method: &Method,
    q: &Query,
) -> ApiResult<()> {
    let watching = *method == Method::GET && (t.watch_prefix || q.flag("watch").unwrap_or(false));
    let named = t.name.is_some();
    let verb = match *method {
        _ if watching => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    };
    let a = auth::Attributes {
        verb,
        group: t.resource.group,
        resource: t.resource.plural,
        subresource: t.sub.as_deref().unwrap_or(""),
        namespace: t.namespace.as_deref().unwrap_or(""),
        name: t.name.as_deref().unwrap_or(""),
    };
    auth::authorize_all(reg, user, &a)
        .await
        .map_err(ApiError::forbidden)
}

async fn review(reg: &Registry, r: &Resource, mut body: Value, user: &User) -> Value {
    let admin = user.groups.iter().any(|g| g == auth::MASTERS);
    body["kind"] = json!(r.kind);
    body["apiVersion"] = json!(r.api_version());
    if body["metadata"].is_null() {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = json!(registry::now());
    match r.plural {
        "selfsubjectaccessreviews" => {
            let ra = &body["spec"]["resourceAttributes"];
            let field = |k: &str| ra[k].as_str().unwrap_or("").to_string();
            let allowed = if admin {
                Ok(())
            } else if ra.is_object() {
                let (verb, group, resource, sub, ns, name) = (
                    field("verb"),
                    field("group"),
                    field("resource"),
                    field("subresource"),
                    field("namespace"),
                    field("name"),
                );
                auth::authorize_all(
                    reg,
                    user,
                    &auth::Attributes {
                        verb: &verb,
                        group: &group,
                        resource: &resource,
                        subresource: &sub,
                        namespace: &ns,
                        name: &name,
                    },
                )
                .await
            } else {
                // Non-resource URLs: discovery, OpenAPI and health are everyone's.
                let path = body["spec"]["nonResourceAttributes"]["path"]
                    .as_str()
                    .unwrap_or("");
                let open = [
                    "/api", "/apis", "/openapi", "/version", "/healthz", "/livez", "/readyz",
                ]
                .iter()
                .any(|p| path == *p || path.starts_with(&format!("{p}/")));
                if open {
                    Ok(())
                } else {
                    Err(String::new())
                }
            };
            body["status"] = match allowed {
                Ok(()) if admin => {
                    json!({"allowed": true, "reason": "the user is in group system:masters"})
                }
                Ok(()) => {
                    json!({"allowed": true, "reason": "knode's built-in rules for the user's groups, or RBAC"})
                }
                Err(_) => json!({"allowed": false}),
            };
        }
        "selfsubjectrulesreviews" => {
            let ns = body["spec"]["namespace"].as_str().unwrap_or("").to_string();
            let mut rules = auth::resource_rules(user, &ns);
            if !admin {
                for rule in super::rbac::rules_of(reg, user, &ns)
                    .await
                    .unwrap_or_default()
                {
                    if rule["nonResourceURLs"].is_null() {
                        if let Some(list) = rules.as_array_mut() {
                            let mut r = json!({"verbs": rule["verbs"], "apiGroups": rule["apiGroups"], "resources": rule["resources"]});
                            if !rule["resourceNames"].is_null() {
                                r["resourceNames"] = rule["resourceNames"].clone();
                            }
                            list.push(r);
                        }
                    }
                }
            }
            let non_resource = if admin {
                json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}])
            } else {
                json!([{"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/healthz", "/livez", "/readyz"]}])
            };
            body["status"] = json!({"resourceRules": rules, "nonResourceRules": non_resource, "incomplete": false});
        }
        _ => {
            body["status"] = json!({"userInfo": {"username": user.name, "groups": user.groups}});
        }
    }
    body
}

/// List options from the query: selectors, limit, continue, resourceVersion.
pub fn list_options(r: &Resource, q: &Query) -> ApiResult<ListOptions> {
    let labels = selector::parse_labels(q.get("labelSelector").unwrap_or("")).map_err(|e| {
        ApiError::bad_request(format!("unable to parse requirement: {e}").replace(
            "unable to parse requirement: unable to parse requirement",
            "unable to parse requirement",
        ))
    })?;
    let fields = selector::parse_fields(q.get("fieldSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    registry::check_fields(r, &fields)?;
    let limit = q.int("limit")?.unwrap_or(0);
    let limit = usize::try_from(limit.max(0)).unwrap_or(0);
    let revision = match (q.get("resourceVersion"), q.get("resourceVersionMatch")) {
        (Some(rv), Some("Exact")) => rv
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        (Some(rv), _) if rv != "0" => {
            rv.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            0
        }
        _ => 0,
    };
    if q.get("continue").is_some() && q.get("resourceVersion").is_some_and(|v| v != "0") {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    Ok(ListOptions {
        labels,
        fields,
        limit,
        continue_token: q.get("continue").map(str::to_string),
        revision,
    })
}

/// The body of a watch: one JSON event per line, flushed as it happens.
pub async fn watch_response(
    api: Arc<Api>,
    t: Target,
    q: Query,
    table: bool,
) -> ApiResult<Response> {
    let r = t.resource;
    let lo = list_options(r, &q)?;
    let send_initial = q
        .get("sendInitialEvents")
        .map(|_| q.flag("sendInitialEvents"))
        .transpose()?;
    let bookmarks = q.flag("allowWatchBookmarks")?;
    let rv = q.get("resourceVersion").map(str::to_string);
    if send_initial.is_some() {
        if q.get("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::new(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
        }
        if send_initial == Some(true) && !bookmarks {
            return Err(ApiError::new(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"));
        }
    } else if q.get("resourceVersionMatch").is_some() {
        return Err(ApiError::new(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"));
    }
    let timeout = q
        .int("timeoutSeconds")?
        .filter(|s| *s > 0)
        .unwrap_or_else(|| {
            1800 + i64::from(
                strategy::random_suffix(2)
                    .bytes()
                    .map(u32::from)
                    .sum::<u32>()
                    % 1800,
            )
        });
    // Initial events: all current objects for resourceVersion unset or "0", or when asked.
    let initial = send_initial.unwrap_or(matches!(rv.as_deref(), None | Some("0")));
    let (mut first, after) = if initial {
        let res = api
            .reg
            .list(
                r,
                t.namespace.as_deref(),
                &ListOptions {
                    limit: 0,
                    continue_token: None,
                    revision: 0,
                    ..lo.clone()
                },
            )
            .await?;
        let evs: Vec<watch::WatchEvent> = res
            .items
            .into_iter()
            .map(|o| watch::WatchEvent {
                kind: "ADDED",
                object: o,
            })
            .collect();
        (evs, res.revision)
    } else {
        let n = rv.as_deref().unwrap_or("0").parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resource version: {}",
                rv.as_deref().unwrap_or("")
            ))
        })?;
        (Vec::new(), n)
    };
    if send_initial == Some(true) {
        first.push(watch::bookmark(r, after, true));
    }
    let started = watch::Watch::start(
        &api.reg,
        r,
        t.namespace.as_deref(),
        after,
        lo.labels,
        lo.fields,
    )
    .await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let encode = move |ev: &watch::WatchEvent, headers: bool| -> Bytes {
        let object = if table && ev.kind != "BOOKMARK" && ev.kind != "ERROR" {
            printers::table(r, std::slice::from_ref(&ev.object), None, None, headers)
        } else {
            ev.object.clone()
        };
        let mut line =
            serde_json::to_vec(&json!({"type": ev.kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    };
    let metrics = api.metrics.clone();
    metrics.watch(r.group, r.plural, 1);
    struct Open(Arc<super::metrics::Metrics>, &'static Resource);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.watch(self.1.group, self.1.plural, -1);
        }
    }
    tokio::spawn(async move {
        let _open = Open(metrics, r);
        let mut headers = true;
        for ev in &first {
            if tx.send(Ok(encode(ev, headers))).await.is_err() {
                return;
            }
            headers = headers && ev.kind == "BOOKMARK";
        }
        let mut w = match started {
            Ok(w) => w,
            Err(e) => {
                let ev = watch::WatchEvent {
                    kind: "ERROR",
                    object: e.status_json(),
                };
                let _ = tx.send(Ok(encode(&ev, false))).await;
                return;
            }
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout as u64);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let ev = watch::bookmark(r, w.last, false);
                    if tx.send(Ok(encode(&ev, false))).await.is_err() { return; }
                }
                ev = w.next() => match ev {
                    None => return,
                    Some(Ok(ev)) => {
                        let h = headers;
                        headers = false;
                        if tx.send(Ok(encode(&ev, h))).await.is_err() { return; }
                    }
                    Some(Err(e)) => {
                        let ev = watch::WatchEvent { kind: "ERROR", object: e.status_json() };
                        let _ = tx.send(Ok(encode(&ev, false))).await;
                        return;
                    }
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Dispatches a resource request.
pub async fn serve(
    api: Arc<Api>,
    t: Target,
    method: Method,
    mut q: Query,
    headers: HeaderMap,
    body: Bytes,
    user: User,
) -> Response {
    let started = std::time::Instant::now();
    q.set_user_agent(
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    );
    let watching = method == Method::GET && (t.watch_prefix || q.flag("watch").unwrap_or(false));
    let verb = match (&method, t.name.is_some()) {
        _ if watching => "WATCH",
        (&Method::GET, false) => "LIST",
        (&Method::GET, true) => "GET",
        (&Method::POST, _) => "POST",
        (&Method::PUT, _) => "PUT",
        (&Method::PATCH, _) => {
            if headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|c| c.as_bytes().starts_with(b"application/apply-patch"))
            {
                "APPLY"
            } else {
                "PATCH"
            }
        }
        (&Method::DELETE, true) => "DELETE",
        (&Method::DELETE, false) => "DELETECOLLECTION",
        _ => "OTHER",
    };
    let metrics = api.metrics.clone();
    let (group, resource, sub) = (
        t.resource.group,
        t.resource.plural,
        t.sub.clone().unwrap_or_default(),
    );
    let mut resp = serve_inner(api, t, method, q, headers, body, user).await;
    // As the real server warns on every request to a deprecated resource.
    if group.is_empty() && resource == "endpoints" {
        resp.headers_mut().append(
            header::WARNING,
            header::HeaderValue::from_static(
                "299 - \"v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice\"",
            ),
        );
    }
    metrics.request(
        verb,
        group,
        resource,
        &sub,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

async fn serve_inner(
    api: Arc<Api>,
    t: Target,
    method: Method,
    q: Query,
    headers: HeaderMap,
    body: Bytes,
    user: User,
) -> Response {
    let mut warnings = Vec::new();
    let table = wants_table(&headers);
    let ct = content_type(&headers);
    let r = t.resource;
    let verb_ok = |v: &str| r.verbs.contains(&v);
    if method == Method::GET
        && t.name.is_none()
        && !t.watch_prefix
        && !q.flag("watch").unwrap_or(false)
    {
        if !verb_ok("list") {
            return ApiError::method_not_allowed("list", r).into_response();
        }
        return match api.list(&t, &q, table).await {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => e.into_response(),
        };
    }
    if method == Method::GET && (t.watch_prefix || q.flag("watch").unwrap_or(false)) {
        if !verb_ok("watch") {
            return ApiError::method_not_allowed("watch", r).into_response();
        }
        return match watch_response(api, t, q, table).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let res: ApiResult<(StatusCode, Value)> = async {
        match (method.clone(), t.name.is_some(), t.sub.as_deref()) {
            (Method::GET, true, sub) => {
                if !verb_ok("get") {
                    return Err(ApiError::method_not_allowed("get", r));
                }
                let v = api.get(&t).await?;
                if table && sub.is_none() {
                    let rv = v["metadata"]["resourceVersion"]
                        .as_str()
                        .map(str::to_string);
                    return Ok((StatusCode::OK, printers::table(r, &[v], rv, None, true)));
                }
                Ok((StatusCode::OK, v))
            }
            (Method::POST, false, _) => {
                if !verb_ok("create") {
                    return Err(ApiError::method_not_allowed("create", r));
                }
                let obj = decode_body(&ct, &body)?;
                api.create(&t, &q, obj, &user, &mut warnings).await
            }
            (Method::POST, true, Some(_)) => {
                let obj = if body.is_empty() {
                    None
                } else {
                    Some(decode_body(&ct, &body)?)
                };
                api.create_sub(&t, &q, obj, &user).await
            }
            (Method::PUT, true, sub) => {
                if !verb_ok("update") {
                    return Err(ApiError::method_not_allowed("update", r));
                }
                if matches!(sub, Some("proxy")) {
                    return Err(no_agent("proxy"));
                }
                let obj = decode_body(&ct, &body)?;
                api.update(&t, &q, obj, &user, &mut warnings).await
            }
            (Method::PATCH, true, sub) => {
                if !verb_ok("patch") {
                    return Err(ApiError::method_not_allowed("patch", r));
                }
                if matches!(sub, Some("proxy")) {
                    return Err(no_agent("proxy"));
                }
                api.patch(&t, &q, &ct, &body, &user, &mut warnings).await
            }
            (Method::DELETE, true, None) => {
                if !verb_ok("delete") {
                    return Err(ApiError::method_not_allowed("delete", r));
                }
                let opts = if body.is_empty() {
                    json!({})
                } else {
                    decode_body(&ct, &body)?
                };
                api.delete(&t, &q, opts).await
            }
            (Method::DELETE, false, None) => {
                if !verb_ok("deletecollection") {
                    return Err(ApiError::method_not_allowed("deletecollection", r));
                }
                let opts = if body.is_empty() {
                    json!({})
                } else {
                    decode_body(&ct, &body)?
                };
                Ok((StatusCode::OK, api.delete_collection(&t, &q, opts).await?))
            }
            (Method::DELETE, true, Some("proxy")) => Err(no_agent("proxy")),
            (m, _, _) => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource ({m} {})",
                    r.qualified()
                ),
            )),
        }
    }
    .await;
    let mut resp = match res {
        Ok((code, v)) => reply(code, &v),

        Err(e) => e.into_response(),
    };
    for w in warnings.iter().take(20) {
        if let Ok(v) = format!("299 - \"{}\"", w.replace('"', "'")).parse() {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}
