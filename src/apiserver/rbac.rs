//! RBAC (`rbac.authorization.k8s.io/v1`): Roles, ClusterRoles and their bindings, stored like
//! any object, and the authorizer that reads them (`plugin/pkg/auth/authorizer/rbac`): a
//! request is allowed when a ClusterRoleBinding, or a RoleBinding in the request's namespace,
//! names the user (by name, one of its groups, or as a ServiceAccount) and its role has a
//! rule matching the verb, API group, resource (and subresource) and name.
//!
//! Not done: aggregated ClusterRoles (`aggregationRule`; the bootstrap `admin`, `edit` and
//! `view` carry their rules directly) and the escalation check by rule coverage: a user
//! outside `system:masters` needs the `escalate` verb to write a role and `bind` to bind one,
//! which upstream allows too, so no user grants what they cannot already grant.

use serde_json::{json, Value};

use super::auth::Attributes;
use super::registry::{ListOptions, Registry};
use super::resources::{self, Resource};
use super::status::ApiError;
use super::User;
use crate::api::validation::{self as v, FieldError};

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// Validation of a Role, ClusterRole, RoleBinding or ClusterRoleBinding
/// (`pkg/apis/rbac/validation`).
pub fn validate(kind: &str, o: &Value, errs: &mut Vec<FieldError>) {
    match kind {
        "Role" | "ClusterRole" => {
            for (i, r) in o["rules"].as_array().into_iter().flatten().enumerate() {
                let f = |k: &str| format!("rules[{i}].{k}");
                let empty = |k: &str| r[k].as_array().is_none_or(Vec::is_empty);
                if empty("verbs") {
                    errs.push(v::required(
                        &f("verbs"),
                        "verbs must contain at least one value",
                    ));
                }
                let urls = !empty("nonResourceURLs");
                if urls && kind == "Role" {
                    errs.push(v::invalid(
                        &f("nonResourceURLs"),
                        r["nonResourceURLs"].to_string(),
                        "namespaced rules cannot apply to non-resource URLs",
                    ));
                }
                if urls && (!empty("apiGroups") || !empty("resources")) {
                    errs.push(v::invalid(
                        &f("nonResourceURLs"),
                        r["nonResourceURLs"].to_string(),
                        "rules cannot apply to both regular resources and non-resource URLs",
                    ));
                }
                if !urls {
                    if empty("apiGroups") {
                        errs.push(v::required(
                            &f("apiGroups"),
                            "resource rules must supply at least one api group",
                        ));
                    }
                    if empty("resources") {
                        errs.push(v::required(
                            &f("resources"),
                            "resource rules must supply at least one resource",
                        ));
                    }
                }
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let rr = &o["roleRef"];
            if rr["apiGroup"] != GROUP {
                errs.push(v::not_supported(
                    "roleRef.apiGroup",
                    rr["apiGroup"].as_str().unwrap_or(""),
                    &[GROUP],
                ));
            }
            let kinds: &[&str] = if kind == "RoleBinding" {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            let rk = rr["kind"].as_str().unwrap_or("");
            if !kinds.contains(&rk) {
                errs.push(v::not_supported("roleRef.kind", rk, kinds));
            }
            if rr["name"].as_str().unwrap_or("").is_empty() {
                errs.push(v::required("roleRef.name", ""));
            }
            for (i, s) in o["subjects"].as_array().into_iter().flatten().enumerate() {
                let f = |k: &str| format!("subjects[{i}].{k}");
                if s["name"].as_str().unwrap_or("").is_empty() {
                    errs.push(v::required(&f("name"), ""));
                }
                match s["kind"].as_str().unwrap_or("") {
                    "ServiceAccount" => {
                        if !s["apiGroup"].as_str().unwrap_or("").is_empty() {
                            errs.push(v::not_supported(
                                &f("apiGroup"),
                                s["apiGroup"].as_str().unwrap_or(""),
                                &[""],
                            ));
                        }
                        if kind == "ClusterRoleBinding"
                            && s["namespace"].as_str().unwrap_or("").is_empty()
                        {
                            errs.push(v::required(&f("namespace"), ""));
                        }
                    }
                    "User" | "Group" => {
                        if s["apiGroup"] != GROUP {
                            errs.push(v::not_supported(
                                &f("apiGroup"),
                                s["apiGroup"].as_str().unwrap_or(""),
                                &[GROUP],
                            ));
                        }
                    }
                    k => errs.push(v::not_supported(
                        &f("kind"),
                        k,
                        &["ServiceAccount", "User", "Group"],
                    )),
                }
            }
        }
        _ => {}
    }
}

fn names(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// Whether `subject` (of a binding in `ns`, "" for cluster bindings) is `user`.
fn names_user(subject: &Value, ns: &str, user: &User) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str().unwrap_or("") {
        "User" => user.name == name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let sns = subject["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(ns);
            user.name == format!("system:serviceaccount:{sns}:{name}")
        }
        _ => false,
    }
}

/// Whether `rule` allows `a`.
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let has = |k: &str, x: &str| names(&rule[k]).any(|n| n == "*" || n == x);
    if !has("verbs", a.verb) || !has("apiGroups", a.group) {
        return false;
    }
    let resource_ok = names(&rule["resources"]).any(|n| {
        n == "*"
            || (a.subresource.is_empty() && n == a.resource)
            || (!a.subresource.is_empty()
                && (n == format!("{}/{}", a.resource, a.subresource)
                    || n == format!("*/{}", a.subresource)))
    });
    let named = rule["resourceNames"].as_array().is_none_or(Vec::is_empty)
        || (!a.name.is_empty() && names(&rule["resourceNames"]).any(|n| n == a.name));
    resource_ok && named
}

fn all() -> ListOptions {
    ListOptions {
        labels: Default::default(),
        fields: Default::default(),
        limit: 0,
        continue_token: None,
        revision: 0,
    }
}

fn res(plural: &str) -> &'static Resource {
    resources::find(GROUP, "v1", plural).expect("RBAC resources are served")
}

/// The rules bound to `user` in `ns` ("" for cluster-wide bindings only).
pub async fn rules_of(reg: &Registry, user: &User, ns: &str) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    let mut add = |role: Option<Value>| {
        if let Some(r) = role {
            out.extend(r["rules"].as_array().cloned().unwrap_or_default());
        }
    };
    for b in reg
        .list(res("clusterrolebindings"), None, &all())
        .await?
        .items
    {
        if names_user_any(&b, "", user) {
            let name = b["roleRef"]["name"].as_str().unwrap_or("");
            add(reg
                .get_kv(res("clusterroles"), None, name)
                .await?
                .map(|x| x.0));
        }
    }
    if !ns.is_empty() {
        for b in reg.list(res("rolebindings"), Some(ns), &all()).await?.items {
            if names_user_any(&b, ns, user) {
                let name = b["roleRef"]["name"].as_str().unwrap_or("");
                let role = if b["roleRef"]["kind"] == "Role" {
                    reg.get_kv(res("roles"), Some(ns), name).await?
                } else {
                    reg.get_kv(res("clusterroles"), None, name).await?
                };
                add(role.map(|x| x.0));
            }
        }
    }
    Ok(out)
}

fn names_user_any(binding: &Value, ns: &str, user: &User) -> bool {
    names_list(&binding["subjects"]).any(|s| names_user(s, ns, user))
}

fn names_list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// Whether RBAC allows `a` to `user`.
pub async fn allows(reg: &Registry, user: &User, a: &Attributes<'_>) -> bool {
    match rules_of(reg, user, a.namespace).await {
        Ok(rules) => rules.iter().any(|r| rule_allows(r, a)),
        Err(e) => {
            tracing::warn!("RBAC: reading roles and bindings: {}", e.message);
            false
        }
    }
}

/// Writes of roles and bindings by users outside `system:masters` need `escalate` (roles) or
/// `bind` (bindings, on the role they name): without them a user allowed to write RBAC
/// objects could grant itself anything.
pub async fn check_escalation(
    reg: &Registry,
    user: &User,
    r: &Resource,
    ns: &str,
    obj: &Value,
) -> Result<(), ApiError> {
    if r.group != GROUP || user.groups.iter().any(|g| g == super::auth::MASTERS) {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let (verb, resource, target) = match r.kind {
        "Role" => ("escalate", "roles", name),
        "ClusterRole" => ("escalate", "clusterroles", name),
        _ => {
            let kind = obj["roleRef"]["kind"].as_str().unwrap_or("");
            let plural = if kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            (
                "bind",
                plural,
                obj["roleRef"]["name"].as_str().unwrap_or(""),
            )
        }
    };
    let a = Attributes {
        verb,
        group: GROUP,
        resource,
        subresource: "",
        namespace: if resource == "roles" { ns } else { "" },
        name: target,
    };
    if allows(reg, user, &a).await {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held: it needs the \"{verb}\" verb on {resource} \"{target}\"",
        r.qualified(),
        user.name,
        user.groups
    )))
}

/// The ClusterRoles and ClusterRoleBinding every cluster starts with
/// (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`), as (plural, object).
pub fn bootstrap() -> Vec<(&'static str, Value)> {
    let meta = |name: &str| {
        json!({"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
    };
    let role = |name: &str, rules: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": meta(name), "rules": rules})
    };
    let read = json!(["get", "list", "watch"]);
    let write = json!(["create", "delete", "deletecollection", "patch", "update"]);
    let core_read = json!([
        "pods",
        "pods/log",
        "pods/status",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
        "services",
        "services/status",
        "endpoints",
        "persistentvolumeclaims",
        "configmaps",
        "serviceaccounts",
        "events",
        "limitranges",
        "resourcequotas",
        "namespaces",
        "namespaces/status",
        "bindings"
    ]);
    let apps = json!([
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "daemonsets"
    ]);
    let view = json!([
        {"apiGroups": [""], "resources": core_read, "verbs": read},
        {"apiGroups": ["apps"], "resources": apps, "verbs": read},
        {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs", "jobs/status", "cronjobs/status"], "verbs": read},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": read},
    ]);
    let mut edit = view.as_array().cloned().unwrap_or_default();
    edit.extend([
        json!({"apiGroups": [""], "resources": ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "pods/eviction",
            "replicationcontrollers", "replicationcontrollers/scale", "services", "services/proxy", "endpoints",
            "persistentvolumeclaims", "configmaps", "secrets", "serviceaccounts", "events"], "verbs": write}),
        json!({"apiGroups": [""], "resources": ["secrets"], "verbs": read}),
        json!({"apiGroups": [""], "resources": ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "services/proxy"], "verbs": ["get", "create"]}),
        json!({"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}),
        json!({"apiGroups": ["apps"], "resources": apps, "verbs": write}),
        json!({"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": write}),
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": write}),
    ]);
    let mut admin = edit.clone();
    admin.push(json!({"apiGroups": [GROUP], "resources": ["roles", "rolebindings"],
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}));
    vec![
        (
            "clusterroles",
            role(
                "cluster-admin",
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                    {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
            ),
        ),
        ("clusterroles", role("admin", Value::Array(admin))),
        ("clusterroles", role("edit", Value::Array(edit))),
        ("clusterroles", role("view", view)),
        (
            "clusterrolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": meta("cluster-admin"),
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": "system:masters"}]}),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: &'a str,
        name: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource,
            subresource: sub,
            namespace: "default",
            name,
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let r =
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]});
        assert!(rule_allows(&r, &attrs("list", "", "pods", "", "")));
        assert!(rule_allows(&r, &attrs("get", "", "pods", "log", "web")));
        assert!(!rule_allows(&r, &attrs("get", "", "pods", "exec", "web")));
        assert!(!rule_allows(&r, &attrs("delete", "", "pods", "", "web")));
        assert!(!rule_allows(&r, &attrs("list", "apps", "pods", "", "")));
        assert!(!rule_allows(&r, &attrs("list", "", "secrets", "", "")));
        let star = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(
            &star,
            &attrs("delete", "apps", "deployments", "scale", "x")
        ));
        let subs = json!({"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]});
        assert!(rule_allows(&subs, &attrs("get", "", "pods", "status", "x")));
        assert!(!rule_allows(&subs, &attrs("get", "", "pods", "", "x")));
        let named = json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"], "resourceNames": ["a"]});
        assert!(rule_allows(
            &named,
            &attrs("get", "", "configmaps", "", "a")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("get", "", "configmaps", "", "b")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("list", "", "configmaps", "", "")
        ));
    }

    #[test]
    fn subjects_name_users_groups_and_service_accounts() {
        let u = User {
            name: "system:serviceaccount:team:bot".into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:team".into(),
            ],
        };
        let sa = json!({"kind": "ServiceAccount", "name": "bot"});
        assert!(names_user(&sa, "team", &u));
        assert!(!names_user(&sa, "other", &u));
        let sa2 = json!({"kind": "ServiceAccount", "name": "bot", "namespace": "team"});
        assert!(names_user(&sa2, "", &u));
        assert!(names_user(
            &json!({"kind": "Group", "name": "system:serviceaccounts:team"}),
            "",
            &u
        ));
        assert!(!names_user(&json!({"kind": "User", "name": "bot"}), "", &u));
    }

    #[test]
    fn invalid_roles_and_bindings_name_their_fields() {
        let mut errs = Vec::new();
        validate(
            "Role",
            &json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}]}),
            &mut errs,
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["rules[0].verbs", "rules[1].nonResourceURLs"],
            "{errs:?}"
        );
        let mut errs = Vec::new();
        validate(
            "ClusterRoleBinding",
            &json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "x"},
            "subjects": [{"kind": "ServiceAccount", "name": "bot"}, {"kind": "Robot", "name": "r"}]}),
            &mut errs,
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["roleRef.kind", "subjects[0].namespace", "subjects[1].kind"],
            "{errs:?}"
        );
        let mut errs = Vec::new();
        for (_, o) in bootstrap() {
            validate(o["kind"].as_str().unwrap(), &o, &mut errs);
        }
        assert!(errs.is_empty(), "{errs:?}");
    }
}
