//! Who may do what. Authentication besides client certificates and the admin token:
//! bootstrap tokens (`<id>.<secret>`, the Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`, as kubeadm and k3s use them to join nodes). Authorization
//! without RBAC objects (not in scope): group `system:masters` may do anything; every
//! authenticated user may read discovery and OpenAPI and review itself; nodes and
//! bootstrappers get what a joining node agent needs (its Node and Lease, the pods bound to
//! it and their status, Events, and the Services and endpoints it proxies), and of Secrets
//! only a `get` of one that a pod bound to a node uses (see [`authorize_all`]).
//! SelfSubjectAccessReviews and SelfSubjectRulesReviews answer from the same rules.

use std::path::Path;

use serde_json::{json, Value};

use super::registry::Registry;
use super::resources;
use super::User;

pub const MASTERS: &str = "system:masters";
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const NODES: &str = "system:nodes";
pub const ANONYMOUS: &str = "system:anonymous";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";

/// What a request asks to do, as an authorizer sees it.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// A rule: verbs on resources of a group (`resource` or `resource/subresource`), in one
/// namespace or any.
struct Rule {
    verbs: &'static [&'static str],
    group: &'static str,
    resources: &'static [&'static str],
    namespace: Option<&'static str>,
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["get", "list", "watch", "create", "update", "patch"];

/// Every authenticated user (Kubernetes' system:basic-user).
const BASIC: &[Rule] = &[
    Rule {
        verbs: &["create"],
        group: "authorization.k8s.io",
        resources: &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        namespace: None,
    },
    Rule {
        verbs: &["create"],
        group: "authentication.k8s.io",
        resources: &["selfsubjectreviews"],
        namespace: None,
    },
];

/// Nodes and the bootstrappers that become them.
const NODE: &[Rule] = &[
    Rule {
        verbs: WRITE,
        group: "",
        resources: &["nodes", "nodes/status"],
        namespace: None,
    },
    Rule {
        verbs: &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
        group: "coordination.k8s.io",
        resources: &["leases"],
        namespace: Some("kube-node-lease"),
    },
    Rule {
        verbs: &["get", "list", "watch", "create", "delete"],
        group: "",
        resources: &["pods"],
        namespace: None,
    },
    Rule {
        verbs: &["get", "update", "patch"],
        group: "",
        resources: &["pods/status"],
        namespace: None,
    },
    // Only tokens bound to pods on a node (checked by the TokenRequest itself).
    Rule {
        verbs: &["create"],
        group: "",
        resources: &["serviceaccounts/token"],
        namespace: None,
    },
    Rule {
        verbs: &["create", "update", "patch"],
        group: "",
        resources: &["events"],
        namespace: None,
    },
    Rule {
        verbs: &["create", "update", "patch"],
        group: "events.k8s.io",
        resources: &["events"],
        namespace: None,
    },
    Rule {
        verbs: READ,
        group: "",
        resources: &[
            "services",
            "endpoints",
            "namespaces",
            "configmaps",
            "persistentvolumeclaims",
            "persistentvolumes",
        ],
        namespace: None,
    },
    Rule {
        verbs: READ,
        group: "discovery.k8s.io",
        resources: &["endpointslices"],
        namespace: None,
    },
];

fn rules(user: &User) -> impl Iterator<Item = &'static Rule> {
    let node = user.groups.iter().any(|g| g == NODES || g == BOOTSTRAPPERS);
    BASIC.iter().chain(NODE.iter().filter(move |_| node))
}

/// Whether `user` may do `a`; `Err` carries the reason a 403 gives.
pub fn authorize(user: &User, a: &Attributes) -> Result<(), String> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    // Anonymous requests reach only cluster-info (see `fallback`), and only to read it.
    let public = a.verb == "get"
        && a.group.is_empty()
        && a.resource == "configmaps"
        && a.subresource.is_empty()
        && a.namespace == "kube-public"
        && a.name == "cluster-info";
    if public {
        return Ok(());
    }
    let full = if a.subresource.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let allowed = rules(user).any(|r| {
        r.group == a.group
            && r.verbs.contains(&a.verb)
            && r.resources.contains(&full.as_str())
            && r.namespace.is_none_or(|n| n == a.namespace)
    });
    if allowed {
        return Ok(());
    }
    let what = if a.name.is_empty() {
        full.clone()
    } else {
        format!("{full} \"{}\"", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    Err(format!(
        "{what} is forbidden: User \"{}\" cannot {} resource \"{full}\" in API group \"{}\" {scope}",
        user.name, a.verb, a.group
    ))
}

/// Whether `user` may do `a` by the built-in rules or by RBAC (the rules bound to it by
/// RoleBindings and ClusterRoleBindings).
pub async fn authorize_all(reg: &Registry, user: &User, a: &Attributes<'_>) -> Result<(), String> {
    let builtin = authorize(user, a);
    if builtin.is_err()
        && (node_may_read_secret(reg, user, a).await || super::rbac::allows(reg, user, a).await)
    {
        return Ok(());
    }
    builtin
}

/// A node (or a bootstrapper joining as one) may `get` a Secret that a pod bound to a node
/// uses, so that its pods' secret volumes and variables work; no other Secret, and no list.
/// Upstream's node authorizer narrows this to the pods bound to the asking node; agents
/// joined with the node token share one identity, so that narrowing waits for per-node
/// credentials.
async fn node_may_read_secret(reg: &Registry, user: &User, a: &Attributes<'_>) -> bool {
    let node = user.groups.iter().any(|g| g == NODES || g == BOOTSTRAPPERS);
    if !node
        || a.verb != "get"
        || !a.group.is_empty()
        || a.resource != "secrets"
        || !a.subresource.is_empty()
        || a.name.is_empty()
        || a.namespace.is_empty()
    {
        return false;
    }
    let Some(pods) = resources::find("", "v1", "pods") else {
        return false;
    };
    match reg.list(pods, Some(a.namespace), &Default::default()).await {
        Ok(l) => l.items.iter().any(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
                && crate::api::pod::secret_names(p).contains(a.name)
        }),
        Err(e) => {
            tracing::warn!("the node authorizer: listing pods: {}", e.message);
            false
        }
    }
}

/// A SelfSubjectRulesReview's `status.resourceRules` for `user` in `namespace`.
pub fn resource_rules(user: &User, namespace: &str) -> Value {
    if user.groups.iter().any(|g| g == MASTERS) {
        return json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]);
    }
    Value::Array(
        rules(user)
            .filter(|r| r.namespace.is_none_or(|n| n == namespace))
            .map(|r| json!({"verbs": r.verbs, "apiGroups": [r.group], "resources": r.resources}))
            .collect(),
    )
}

/// The token's parts if it has the bootstrap token shape (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub fn bootstrap_shape(token: &str) -> Option<(&str, &str)> {
    crate::api::jws::token_parts(token)
}

fn equal_ct(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The user a bootstrap token names, if its Secret exists, is of the bootstrap type, allows
/// authentication, carries this secret and has not expired.
pub async fn bootstrap_user(reg: &Registry, token: &str) -> Option<User> {
    use base64::Engine;
    let (id, secret) = bootstrap_shape(token)?;
    let secrets = resources::find("", "v1", "secrets")?;
    let (s, _) = reg
        .get_kv(
            secrets,
            Some("kube-system"),
            &format!("bootstrap-token-{id}"),
        )
        .await
        .ok()??;
    if s["type"] != "bootstrap.kubernetes.io/token" || !s["metadata"]["deletionTimestamp"].is_null()
    {
        return None;
    }
    let field = |k: &str| -> Option<String> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(s["data"][k].as_str()?)
            .ok()?;
        String::from_utf8(b).ok()
    };
    if field("token-id").as_deref() != Some(id)
        || !equal_ct(field("token-secret")?.as_bytes(), secret.as_bytes())
        || field("usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return None;
    }
    if let Some(exp) = field("expiration") {
        let exp: k8s_openapi::jiff::Timestamp = exp.parse().ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if exp.as_second() <= now {
            return None;
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    for g in field("auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
    {
        // As upstream: extra groups must be bootstrapper groups.
        if g.starts_with("system:bootstrappers:") {
            groups.push(g.to_string());
        }
    }
    groups.push("system:authenticated".into());
    Some(User {
        name: format!("system:bootstrap:{id}"),
        groups,
    })
}

/// The node join token (`<root>/server/node-token`, root only), if one was made.
pub fn node_token(dir: &Path) -> Option<String> {
    let t = std::fs::read_to_string(dir.join("node-token")).ok()?;
    bootstrap_shape(t.trim()).map(|_| t.trim().to_string())
}

/// Saves the node join token, once its Secret exists.
pub fn save_node_token(dir: &Path, token: &str) -> std::io::Result<()> {
    super::pki::write_secret_file(&dir.join("node-token"), &format!("{token}\n"))
}

/// A new random bootstrap token.
pub fn new_token() -> std::io::Result<String> {
    let pick = |n: usize| -> std::io::Result<String> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut out = String::new();
        while out.len() < n {
            let mut b = [0u8; 32];
            rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())?;
            // Rejection sampling keeps the characters uniform: 252 = 7 * 36.
            out.extend(
                b.iter()
                    .filter(|x| **x < 252)
                    .map(|x| ALPHABET[*x as usize % 36] as char),
            );
        }
        out.truncate(n);
        Ok(out)
    };
    Ok(format!("{}.{}", pick(6)?, pick(16)?))
}

/// The Secret behind a bootstrap token.
pub fn token_secret(token: &str) -> Option<Value> {
    use base64::Engine;
    let (id, secret) = bootstrap_shape(token)?;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    Some(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": {
            "description": b("knode node join token (knode token)"),
            "token-id": b(id),
            "token-secret": b(secret),
            "usage-bootstrap-authentication": b("true"),
            "usage-bootstrap-signing": b("true"),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(groups: &[&str]) -> User {
        User {
            name: "system:bootstrap:abcdef".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn attrs<'a>(verb: &'a str, group: &'a str, resource: &'a str, ns: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource,
            subresource: "",
            namespace: ns,
            name: "",
        }
    }

    #[test]
    fn bootstrappers_may_do_what_a_node_does_and_no_more() {
        let u = user(&[BOOTSTRAPPERS, "system:authenticated"]);
        assert!(authorize(&u, &attrs("create", "", "nodes", "")).is_ok());
        assert!(authorize(&u, &attrs("watch", "", "pods", "")).is_ok());
        assert!(authorize(
            &u,
            &attrs("update", "coordination.k8s.io", "leases", "kube-node-lease")
        )
        .is_ok());
        assert!(authorize(
            &u,
            &attrs("update", "coordination.k8s.io", "leases", "default")
        )
        .is_err());
        let e = authorize(&u, &attrs("list", "", "secrets", "default")).unwrap_err();
        assert_eq!(e, "secrets is forbidden: User \"system:bootstrap:abcdef\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\"");
        let mut a = attrs("delete", "apps", "deployments", "default");
        a.name = "web";
        assert!(authorize(&u, &a)
            .unwrap_err()
            .starts_with("deployments \"web\" is forbidden"));
        let mut a = attrs("create", "", "pods", "default");
        a.subresource = "exec";
        assert!(authorize(&u, &a)
            .unwrap_err()
            .contains("resource \"pods/exec\""));
        // Nor may a node reach another node's kubelet API through the API server (its
        // streams would be an exec into every pod there).
        let mut a = attrs("get", "", "nodes", "");
        a.subresource = "proxy";
        assert!(authorize(&u, &a)
            .unwrap_err()
            .contains("resource \"nodes/proxy\""));
        // Anyone else authenticated: reviews only.
        let other = user(&["system:authenticated"]);
        assert!(authorize(
            &other,
            &attrs(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                ""
            )
        )
        .is_ok());
        assert!(authorize(&other, &attrs("get", "", "nodes", ""))
            .unwrap_err()
            .ends_with("at the cluster scope"));
        assert!(authorize(&user(&[MASTERS]), &attrs("delete", "", "secrets", "x")).is_ok());
    }

    #[test]
    fn token_shapes() {
        assert!(bootstrap_shape("abcdef.0123456789abcdef").is_some());
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdefg",
            "abcdef.0123456789abcde",
        ] {
            assert!(bootstrap_shape(bad).is_none(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(node_token(dir.path()), None);
        let t = new_token().unwrap();
        assert!(bootstrap_shape(&t).is_some());
        assert_ne!(t, new_token().unwrap());
        save_node_token(dir.path(), &t).unwrap();
        assert_eq!(node_token(dir.path()), Some(t.clone()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("node-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let s = token_secret(&t).unwrap();
        assert_eq!(
            s["metadata"]["name"],
            format!("bootstrap-token-{}", &t[..6])
        );
    }
}
