//! `registries.yaml`: registry mirrors, repository rewrites, credentials and TLS settings, in
//! k3s's format (so a lab's file works as it is), read into [`oci::mirrors::Mirrors`].
//!
//! ```yaml
//! mirrors:
//!   gcr.io:
//!     endpoint: ["http://127.0.0.1:5000"]
//!     rewrite:
//!       "^google-samples/(.*)": "tutorials/$1"
//!   "*":
//!     endpoint: ["https://mirror.lab:5000"]
//! configs:
//!   mirror.lab:5000:
//!     auth: {username: lab, password: secret}
//!     tls: {ca_file: /etc/knode/lab-ca.pem}
//! ```
//!
//! Every field is checked here: an unknown key, an endpoint that is not `http(s)://host[:port]`,
//! a pattern that does not compile, a client certificate without its key, each gives an error
//! naming the file and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci::mirrors::{Endpoint, HostConfig, Mirror, Mirrors};
use serde::Deserialize;

/// Where knode looks when no file is named.
pub const DEFAULT_PATH: &str = "/etc/knode/registries.yaml";

#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct RegistriesError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorFile>,
    #[serde(default)]
    configs: BTreeMap<String, HostFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    #[serde(default)]
    endpoint: Vec<String>,
    /// Kept in the file's order: the first matching pattern wins.
    #[serde(default)]
    rewrite: serde_yaml::Mapping,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    auth: Option<AuthFile>,
    tls: Option<TlsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    username: Option<String>,
    password: Option<String>,
    /// base64 of `user:password`, as in a Docker config.
    auth: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// Parses the text of `file`.
pub fn parse(text: &str, file: &Path) -> Result<Mirrors, RegistriesError> {
    let err = |field: &str, reason: String| RegistriesError {
        file: file.display().to_string(),
        field: field.to_string(),
        reason,
    };
    if text.trim().is_empty() {
        return Ok(Mirrors::default());
    }
    let f: File = serde_yaml::from_str(text).map_err(|e| {
        // serde_yaml names the path (`mirrors.gcr.io: unknown field ...`) and the line.
        let msg = e.to_string();
        match msg.split_once(": ") {
            Some((field, rest)) if !field.contains(' ') => err(field, rest.to_string()),
            _ => err("(document)", msg),
        }
    })?;
    let mut out = Mirrors::default();
    for (registry, m) in f.mirrors {
        let at = |f: &str| format!("mirrors.{registry}.{f}");
        if registry != "*" {
            check_host(&registry).map_err(|r| err(&format!("mirrors.{registry}"), r))?;
        }
        let mut mirror = Mirror::default();
        for (i, e) in m.endpoint.iter().enumerate() {
            mirror
                .endpoints
                .push(endpoint(e).map_err(|r| err(&at(&format!("endpoint[{i}]")), r))?);
        }
        for (k, v) in m.rewrite {
            let (Some(pattern), Some(to)) = (k.as_str(), v.as_str()) else {
                return Err(err(
                    &at("rewrite"),
                    "patterns and replacements must be strings".into(),
                ));
            };
            let re = regex::Regex::new(pattern)
                .map_err(|e| err(&at(&format!("rewrite.{pattern:?}")), e.to_string()))?;
            mirror.rewrites.push((re, to.to_string()));
        }
        out.mirrors.insert(registry, mirror);
    }
    for (host, h) in f.configs {
        let at = |f: &str| format!("configs.{host}.{f}");
        let key = host
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        check_host(&key).map_err(|r| err(&format!("configs.{host}"), r))?;
        let mut c = HostConfig::default();
        if let Some(a) = h.auth {
            c.auth = Some(match (a.username, a.password, a.auth) {
                (Some(u), Some(p), None) => (u, p),
                (None, None, Some(enc)) => {
                    let bad = || err(&at("auth.auth"), "not base64 of user:password".into());
                    let dec = base64::engine::general_purpose::STANDARD
                        .decode(enc.trim())
                        .map_err(|_| bad())?;
                    let s = String::from_utf8(dec).map_err(|_| bad())?;
                    let (u, p) = s.split_once(':').ok_or_else(bad)?;
                    (u.to_string(), p.to_string())
                }
                _ => {
                    return Err(err(
                        &at("auth"),
                        "give username and password, or auth (base64 of user:password)".into(),
                    ))
                }
            });
        }
        if let Some(t) = h.tls {
            c.ca_file = t.ca_file;
            c.insecure_skip_verify = t.insecure_skip_verify;
            c.client_cert = match (t.cert_file, t.key_file) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(err(&at("tls"), "cert_file and key_file go together".into())),
            };
        }
        out.hosts.insert(key, c);
    }
    Ok(out)
}

/// `http://host[:port]` or `https://host[:port]` (a trailing `/` or `/v2` is allowed).
fn endpoint(url: &str) -> Result<Endpoint, String> {
    let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else {
        return Err(format!("{url:?} must start with http:// or https://"));
    };
    let host = rest
        .trim_end_matches('/')
        .trim_end_matches("/v2")
        .trim_end_matches('/');
    if host.contains('/') {
        return Err(format!(
            "{url:?}: a path on a mirror is not supported (only host[:port])"
        ));
    }
    check_host(host)?;
    Ok(Endpoint {
        plain_http,
        host: host.to_string(),
    })
}

/// A registry host: a DNS name or an IP address, with an optional port.
fn check_host(h: &str) -> Result<(), String> {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, _)) if !n.ends_with(']') && n.contains(':') => (h, None), // bare IPv6
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{h:?}: the port must be 1 to 65535"));
        }
    }
    let ok = !name.is_empty()
        && name.len() <= 253
        && (name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
            || name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }));
    if ok {
        Ok(())
    } else {
        Err(format!("{h:?} is not a host name or address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Mirrors, String> {
        parse(text, Path::new("/etc/knode/registries.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn k3s_files_read_as_written() {
        let m = p(r#"
mirrors:
  gcr.io:
    endpoint: ["http://127.0.0.1:5000", "https://mirror.lab:5000/v2"]
    rewrite:
      "^google-samples/(.*)": "tutorials/$1"
      "^(.*)$": "all/$1"
  "*":
    endpoint: ["http://[::1]:5001/"]
configs:
  "https://mirror.lab:5000":
    auth: {auth: "dXNlcjpwYXNz"}
    tls: {ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem, insecure_skip_verify: true}
"#)
        .unwrap();
        let g = &m.mirrors["gcr.io"];
        assert_eq!(g.endpoints[0].to_string(), "http://127.0.0.1:5000");
        assert_eq!(g.endpoints[1].to_string(), "https://mirror.lab:5000");
        assert_eq!(g.rewrites[0].0.as_str(), "^google-samples/(.*)");
        assert_eq!(g.rewrites[1].1, "all/$1");
        assert_eq!(m.mirrors["*"].endpoints[0].host, "[::1]:5001");
        let h = &m.hosts["mirror.lab:5000"];
        assert_eq!(h.auth, Some(("user".into(), "pass".into())));
        assert!(h.insecure_skip_verify);
        assert_eq!(
            h.client_cert,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        assert!(p("").unwrap().is_empty());
    }

    #[test]
    fn bad_files_name_the_file_and_the_field() {
        for (text, want) in [
            (
                "mirrors:\n  gcr.io:\n    endpoints: [\"http://x\"]\n",
                "/etc/knode/registries.yaml: mirrors.gcr.io: unknown field `endpoints`",
            ),
            (
                "mirrors:\n  gcr.io:\n    endpoint: [\"ftp://x\"]\n",
                "mirrors.gcr.io.endpoint[0]: \"ftp://x\" must start with http:// or https://",
            ),
            (
                "mirrors:\n  gcr.io:\n    endpoint: [\"http://x:99999\"]\n",
                "mirrors.gcr.io.endpoint[0]: \"x:99999\": the port must be 1 to 65535",
            ),
            (
                "mirrors:\n  gcr.io:\n    endpoint: [\"http://x/prefix\"]\n",
                "a path on a mirror is not supported",
            ),
            (
                "mirrors:\n  gcr.io:\n    rewrite: {\"(\": \"x\"}\n",
                "mirrors.gcr.io.rewrite.\"(\":",
            ),
            (
                "mirrors:\n  \"bad host\":\n    endpoint: []\n",
                "mirrors.bad host: \"bad host\" is not a host name or address",
            ),
            (
                "configs:\n  lab:\n    auth: {username: u}\n",
                "configs.lab.auth: give username and password",
            ),
            (
                "configs:\n  lab:\n    tls: {cert_file: /c.pem}\n",
                "configs.lab.tls: cert_file and key_file go together",
            ),
            ("mirrors: [1, 2]\n", "/etc/knode/registries.yaml: mirrors"),
        ] {
            let e = p(text).err().unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(e.contains(want), "{text}\n{e}");
        }
    }
}
