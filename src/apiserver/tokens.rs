//! ServiceAccount tokens: the TokenRequest subresource (`serviceaccounts/<name>/token`, what
//! `kubectl create token` and the node agent call) and the authentication of the tokens it
//! issues.
//!
//! Tokens are JWTs signed ES256 with the server's `sa.key`, with the claims of Kubernetes'
//! bound tokens (`pkg/serviceaccount/claims.go`): `iss`, `sub`
//! (`system:serviceaccount:<ns>:<name>`), `aud`, `exp`, `iat`, `nbf`, `jti` and
//! `kubernetes.io` (namespace, serviceaccount name and uid, and the pod a token is bound to).
//! A token is valid while its ServiceAccount (and its pod, when bound) still exists with the
//! same uid, so deleting either revokes it.
//!
//! The JWT is made here with `ring` (already the TLS provider) rather than a JWT crate: one
//! fixed algorithm, no header-chosen algorithms to get wrong, and about fifty lines.

use std::path::Path;

use base64::Engine;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{json, Value};

use super::registry::Registry;
use super::resources;
use super::status::ApiError;
use super::User;
use crate::api::validation;

/// The issuer (and default audience) of the tokens, as kubeadm and k3s configure it.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The expiration the kubelet asks for; such pod-bound tokens are valid a year, with
/// `warnafter` at the hour (`--service-account-extend-token-expiration`, on by default).
pub const KUBELET_EXPIRATION: i64 = 3607;
const EXTENDED: i64 = 365 * 24 * 3600;
const MIN_EXPIRATION: i64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the service account key {}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the service account key {path}: {why}")]
    Key { path: String, why: String },
}

/// Signs and verifies tokens.
pub struct Signer {
    key: EcdsaKeyPair,
    /// `kid`: the first 16 bytes of the public key's SHA-256, in base64url.
    kid: String,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Signer {
    /// The key in `dir/sa.key` (PKCS#8 PEM, root only), made on first use.
    pub fn load_or_create(dir: &Path) -> Result<Signer, TokenError> {
        let path = dir.join("sa.key");
        let io = |source| TokenError::Io {
            path: path.clone(),
            source,
        };
        let bad = |why: String| TokenError::Key {
            path: path.display().to_string(),
            why,
        };
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| bad(e.to_string()))?;
                let pem = k.serialize_pem();
                super::pki::write_secret_file(&path, &pem).map_err(io)?;
                pem
            }
            Err(e) => return Err(io(e)),
        };
        let der = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| bad(e.to_string()))?
            .serialize_der();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| bad(format!("not a P-256 PKCS#8 key: {e}")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = b64(&digest.as_ref()[..16]);
        Ok(Signer { key, kid })
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .expect("ECDSA signing with the system's randomness");
        format!("{input}.{}", b64(sig.as_ref()))
    }

    /// The claims of a token this signer made, if its signature, issuer, audience and times
    /// are good now.
    pub fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let dec = |p: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        };
        let header: Value = serde_json::from_slice(&dec(h)?).ok()?;
        if header["alg"] != "ES256" || header["kid"] != self.kid.as_str() {
            return None;
        }
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(format!("{h}.{c}").as_bytes(), &dec(s)?)
        .ok()?;
        let claims: Value = serde_json::from_slice(&dec(c)?).ok()?;
        let t = now();
        let good = claims["iss"] == ISSUER
            && claims["aud"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == ISSUER))
            && claims["exp"].as_i64().is_some_and(|e| t < e)
            && claims["nbf"].as_i64().is_none_or(|n| n <= t + 60);
        good.then_some(claims)
    }
}

/// Whether a bearer token looks like a JWT (three base64url parts), so that it is worth
/// verifying as one.
pub fn jwt_shape(token: &str) -> bool {
    token.len() < 16 * 1024
        && token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The ServiceAccount user of a valid token whose ServiceAccount (and bound pod) still exist
/// with the uids it names.
pub async fn user(signer: &Signer, reg: &Registry, token: &str) -> Option<User> {
    let c = signer.verify(token)?;
    let k = &c["kubernetes.io"];
    let ns = k["namespace"].as_str()?;
    let sa = k["serviceaccount"]["name"].as_str()?;
    if c["sub"] != format!("system:serviceaccount:{ns}:{sa}").as_str() {
        return None;
    }
    let sar = resources::find("", "v1", "serviceaccounts")?;
    let obj = reg.get_kv(sar, Some(ns), sa).await.ok()??.0;
    if obj["metadata"]["uid"] != k["serviceaccount"]["uid"] {
        return None;
    }
    if let Some(pod) = k["pod"]["name"].as_str() {
        let pr = resources::find("", "v1", "pods")?;
        let p = reg.get_kv(pr, Some(ns), pod).await.ok()??.0;
        if p["metadata"]["uid"] != k["pod"]["uid"] {
            return None;
        }
    }
    Some(User {
        name: format!("system:serviceaccount:{ns}:{sa}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    })
}

/// The node a node user is (`system:node:<name>`).
fn node_of(user: &User) -> Option<&str> {
    user.name.strip_prefix("system:node:")
}

/// POST `serviceaccounts/<name>/token`: a TokenRequest answered with its token.
pub async fn request(
    signer: &Signer,
    reg: &Registry,
    user: &User,
    ns: &str,
    name: &str,
    mut body: Value,
) -> Result<Value, ApiError> {
    if body["kind"] != "TokenRequest" && !body["kind"].is_null() {
        return Err(ApiError::bad_request(format!(
            "the body of the request was of kind {}, not TokenRequest",
            body["kind"]
        )));
    }
    if let Err(e) =
        serde_json::from_value::<k8s_openapi::api::authentication::v1::TokenRequest>(body.clone())
    {
        return Err(ApiError::bad_request(format!(
            "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: {e}"
        )));
    }
    let sar = resources::find("", "v1", "serviceaccounts").expect("served");
    let (sa, _) = reg
        .get_kv(sar, Some(ns), name)
        .await?
        .ok_or_else(|| ApiError::not_found(sar, name))?;
    let spec = &body["spec"];
    let mut errs = Vec::new();
    let exp = match &spec["expirationSeconds"] {
        Value::Null => 3600,
        v => v.as_i64().unwrap_or(-1),
    };
    if exp < MIN_EXPIRATION {
        errs.push(validation::invalid(
            "spec.expirationSeconds",
            exp,
            "may not specify a duration less than 10 minutes",
        ));
    } else if exp > 1 << 32 {
        errs.push(validation::invalid(
            "spec.expirationSeconds",
            exp,
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().unwrap_or("").to_string())
            .collect(),
        _ => vec![ISSUER.to_string()],
    };
    let bound = &spec["boundObjectRef"];
    let mut pod = None;
    if !bound.is_null() {
        match bound["kind"].as_str().unwrap_or("") {
            "Pod" => {
                let pr = resources::find("", "v1", "pods").expect("served");
                let pname = bound["name"].as_str().unwrap_or("");
                let p = reg
                    .get_kv(pr, Some(ns), pname)
                    .await?
                    .ok_or_else(|| ApiError::not_found(pr, pname))?
                    .0;
                if !bound["uid"].is_null() && bound["uid"] != p["metadata"]["uid"] {
                    return Err(ApiError::new(409, "Conflict", format!(
                        "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                        bound["uid"].as_str().unwrap_or("")
                    )));
                }
                if p["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    != name
                {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name."
                    )));
                }
                pod = Some(p);
            }
            k => errs.push(validation::not_supported(
                "spec.boundObjectRef.kind",
                k,
                &["Pod"],
            )),
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid_kind(
            "authentication.k8s.io",
            "TokenRequest",
            name,
            errs,
        ));
    }
    // Nodes (and the bootstrap token agents join with) get tokens only for pods bound to a
    // node, and a node user only for its own (the node authorizer's rule).
    let node_user = user
        .groups
        .iter()
        .any(|g| g == super::auth::NODES || g == super::auth::BOOTSTRAPPERS)
        && !user.groups.iter().any(|g| g == super::auth::MASTERS);
    if node_user {
        let on = pod
            .as_ref()
            .and_then(|p| p["spec"]["nodeName"].as_str())
            .filter(|n| !n.is_empty());
        let allowed = match (on, node_of(user)) {
            (Some(on), Some(me)) => on == me,
            (Some(_), None) => true,
            _ => false,
        };
        if !allowed {
            return Err(ApiError::forbidden(format!(
                "serviceaccounts \"{name}\" is forbidden: User \"{}\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"{ns}\": a node may only request tokens bound to pods scheduled to it",
                user.name
            )));
        }
    }
    let t = now();
    let mut lifetime = exp;
    let mut k = json!({
        "namespace": ns,
        "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
    });
    if let Some(p) = &pod {
        k["pod"] = json!({"name": p["metadata"]["name"], "uid": p["metadata"]["uid"]});
        if exp == KUBELET_EXPIRATION {
            lifetime = EXTENDED;
            k["warnafter"] = json!(t + exp);
        }
    }
    let claims = json!({
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "aud": audiences,
        "exp": t + lifetime,
        "iat": t,
        "nbf": t,
        "jti": super::strategy::new_uid(),
        "kubernetes.io": k,
    });
    let token = signer.sign(&claims);
    if body["metadata"].is_null() {
        body["metadata"] = json!({});
    }
    body["kind"] = json!("TokenRequest");
    body["apiVersion"] = json!("authentication.k8s.io/v1");
    body["metadata"]["name"] = json!(name);
    body["metadata"]["namespace"] = json!(ns);
    body["metadata"]["creationTimestamp"] = json!(super::registry::now());
    body["spec"]["audiences"] = json!(audiences);
    body["spec"]["expirationSeconds"] = json!(exp);
    let expires = k8s_openapi::jiff::Timestamp::from_second(t + exp)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    body["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_unaltered_and_unexpired() {
        let d = tempfile::tempdir().unwrap();
        let s = Signer::load_or_create(d.path()).unwrap();
        let claims = json!({"iss": ISSUER, "aud": [ISSUER], "exp": now() + 60, "sub": "x"});
        let t = s.sign(&claims);
        assert!(jwt_shape(&t));
        assert_eq!(s.verify(&t).unwrap()["sub"], "x");
        // The same key again from its file.
        let again = Signer::load_or_create(d.path()).unwrap();
        assert!(again.verify(&t).is_some());
        // A changed claim breaks the signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = b64(
            json!({"iss": ISSUER, "aud": [ISSUER], "exp": now() + 60, "sub": "admin"})
                .to_string()
                .as_bytes(),
        );
        parts[1] = &forged;
        assert!(s.verify(&parts.join(".")).is_none());
        // Expired, another audience, another key.
        assert!(s
            .verify(&s.sign(&json!({"iss": ISSUER, "aud": [ISSUER], "exp": now() - 1})))
            .is_none());
        assert!(s
            .verify(&s.sign(&json!({"iss": ISSUER, "aud": ["vault"], "exp": now() + 60})))
            .is_none());
        let other = Signer::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.verify(&t).is_none());
        // "alg: none" is refused.
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(claims.to_string().as_bytes())
        );
        assert!(s.verify(&none).is_none());
        let mode = std::fs::metadata(d.path().join("sa.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
