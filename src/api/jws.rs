//! The detached JWS with which a bootstrap token signs the `kube-public/cluster-info`
//! ConfigMap (`k8s.io/cluster-bootstrap/token/jws`): HS256, the key the token's secret, the
//! `kid` its id, the payload left out (`<header>..<signature>`). A node joining with the token
//! reads cluster-info over an unverified connection and trusts the CA in it only if the
//! signature matches: only the server and the token's holders know the secret.

use base64::Engine;

/// The `<id>` and `<secret>` of a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub fn token_parts(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn signature(header: &str, content: &str, secret: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let input = format!("{header}.{}", b64(content.as_bytes()));
    ring::hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
}

/// The detached signature of `content` by the token `id`.`secret`.
pub fn sign(content: &str, id: &str, secret: &str) -> String {
    let header = b64(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#).as_bytes());
    let sig = signature(&header, content, secret);
    format!("{header}..{}", b64(&sig))
}

/// Whether `jws` is `content` signed by the token `id`.`secret` (compared in constant time).
pub fn verify(content: &str, jws: &str, id: &str, secret: &str) -> bool {
    let Some((header, sig)) = jws.split_once("..") else {
        return false;
    };
    let Ok(h) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    let Ok(h) = serde_json::from_slice::<serde_json::Value>(&h) else {
        return false;
    };
    if h["alg"] != "HS256" || h["kid"] != id {
        return false;
    }
    let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let input = format!("{header}.{}", b64(content.as_bytes()));
    ring::hmac::verify(&key, input.as_bytes(), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_their_token_only() {
        let s = sign("kubeconfig", "abcdef", "0123456789abcdef");
        assert!(s.contains(".."));
        assert!(verify("kubeconfig", &s, "abcdef", "0123456789abcdef"));
        assert!(!verify("kubeconfig!", &s, "abcdef", "0123456789abcdef"));
        assert!(!verify("kubeconfig", &s, "abcdef", "0123456789abcdeg"));
        assert!(!verify("kubeconfig", &s, "zzzzzz", "0123456789abcdef"));
        assert!(!verify(
            "kubeconfig",
            "garbage",
            "abcdef",
            "0123456789abcdef"
        ));
    }
}
