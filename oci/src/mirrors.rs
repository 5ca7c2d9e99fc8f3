//! Registry mirrors and rewrites, as k3s's `registries.yaml` and containerd's `hosts.toml`
//! describe them: an image of registry R is pulled from R's mirror endpoints in order, each
//! with the repository rewritten by the first matching rule, and then from R itself; each
//! host may carry credentials and TLS settings. The image keeps its own name whichever
//! source served it.
//!
//! This module holds the resolved model and the order of sources; reading the YAML file is
//! knode's (`config::registries`), which validates every field before it gets here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::reference::Reference;
use crate::registry::ClientOptions;

/// Where a mirror answers: `http://` or `https://` and a host with an optional port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub plain_http: bool,
    pub host: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.plain_http { "http" } else { "https" };
        write!(f, "{scheme}://{}", self.host)
    }
}

/// One registry's mirrors.
#[derive(Clone, Debug, Default)]
pub struct Mirror {
    pub endpoints: Vec<Endpoint>,
    /// Repository rewrites for the mirrors (not for the registry itself), tried in order:
    /// the first pattern that matches is replaced (`$1` names a group).
    pub rewrites: Vec<(regex::Regex, String)>,
}

/// A host's credentials and TLS settings.
#[derive(Clone, Debug, Default)]
pub struct HostConfig {
    /// User and password for Basic auth (or a token service's challenge).
    pub auth: Option<(String, String)>,
    /// A PEM CA bundle trusted for this host.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) presented to this host.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Accept any certificate from this host.
    pub insecure_skip_verify: bool,
}

/// Mirrors per registry (`*` for every registry without its own) and settings per host.
#[derive(Clone, Debug, Default)]
pub struct Mirrors {
    pub mirrors: BTreeMap<String, Mirror>,
    pub hosts: BTreeMap<String, HostConfig>,
}

/// One source to pull from: where, as what reference, with which client settings.
#[derive(Clone, Debug)]
pub struct Source {
    /// `mirror http://127.0.0.1:5000` or the registry's own name, for messages.
    pub label: String,
    pub reference: Reference,
    pub options: ClientOptions,
}

impl Mirrors {
    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty() && self.hosts.is_empty()
    }

    /// The sources for `r`, in the order to try them: its registry's mirrors (or the `*`
    /// ones), each with the repository rewritten, then the registry itself. `base` gives the
    /// client settings every source starts from.
    pub fn sources(&self, r: &Reference, base: &ClientOptions) -> Vec<Source> {
        let mut out = Vec::new();
        let mirror = self
            .mirrors
            .get(&r.registry)
            .or_else(|| self.mirrors.get("*"));
        for e in mirror.map(|m| m.endpoints.as_slice()).unwrap_or_default() {
            if e.host == r.registry {
                continue; // the registry itself comes last, unrewritten
            }
            let m = mirror.expect("endpoints come from a mirror");
            let repository = m
                .rewrites
                .iter()
                .find(|(re, _)| re.is_match(&r.repository))
                .map(|(re, to)| re.replace(&r.repository, to.as_str()).into_owned())
                .unwrap_or_else(|| r.repository.clone());
            let mut options = self.with_host(base, &e.host);
            if e.plain_http {
                options.insecure.push(e.host.clone());
            }
            out.push(Source {
                label: format!("mirror {e}"),
                reference: Reference {
                    registry: e.host.clone(),
                    repository,
                    tag: r.tag.clone(),
                    digest: r.digest.clone(),
                },
                options,
            });
        }
        out.push(Source {
            label: r.registry.clone(),
            reference: r.clone(),
            options: self.with_host(base, &r.registry),
        });
        out
    }

    /// `base` with `host`'s settings added.
    fn with_host(&self, base: &ClientOptions, host: &str) -> ClientOptions {
        let mut o = base.clone();
        o.mirrors = Mirrors::default();
        if let Some(h) = self.hosts.get(host) {
            if let Some((u, p)) = &h.auth {
                o.credentials.insert(host, u, p);
            }
            o.ca_files.extend(h.ca_file.clone());
            if h.client_cert.is_some() {
                o.client_cert = h.client_cert.clone();
            }
            o.accept_invalid_certs |= h.insecure_skip_verify;
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors() -> Mirrors {
        let mut m = Mirrors::default();
        m.mirrors.insert(
            "gcr.io".into(),
            Mirror {
                endpoints: vec![
                    Endpoint {
                        plain_http: true,
                        host: "127.0.0.1:5000".into(),
                    },
                    Endpoint {
                        plain_http: false,
                        host: "mirror.lab:443".into(),
                    },
                ],
                rewrites: vec![(
                    regex::Regex::new("^google-samples/(.*)$").unwrap(),
                    "tutorials/$1".into(),
                )],
            },
        );
        m.mirrors.insert(
            "*".into(),
            Mirror {
                endpoints: vec![Endpoint {
                    plain_http: true,
                    host: "127.0.0.1:5001".into(),
                }],
                rewrites: vec![],
            },
        );
        m.hosts.insert(
            "mirror.lab:443".into(),
            HostConfig {
                auth: Some(("u".into(), "p".into())),
                insecure_skip_verify: true,
                ..Default::default()
            },
        );
        m
    }

    #[test]
    fn mirrors_come_first_rewritten_then_the_registry_itself() {
        let r: Reference = "gcr.io/google-samples/kubernetes-bootcamp:v1"
            .parse()
            .unwrap();
        let s = mirrors().sources(&r, &ClientOptions::default());
        let got: Vec<(String, String)> = s
            .iter()
            .map(|s| (s.label.clone(), s.reference.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "mirror http://127.0.0.1:5000".to_string(),
                    "127.0.0.1:5000/tutorials/kubernetes-bootcamp:v1".to_string()
                ),
                (
                    "mirror https://mirror.lab:443".into(),
                    "mirror.lab:443/tutorials/kubernetes-bootcamp:v1".into()
                ),
                (
                    "gcr.io".into(),
                    "gcr.io/google-samples/kubernetes-bootcamp:v1".into()
                ),
            ]
        );
        // Plain HTTP only where the endpoint says so; a host's settings only for that host.
        assert_eq!(s[0].options.insecure, ["127.0.0.1:5000"]);
        assert!(s[1].options.insecure.is_empty() && s[1].options.accept_invalid_certs);
        assert!(s[1].options.credentials.get("mirror.lab:443").is_some());
        assert!(!s[2].options.accept_invalid_certs);
        assert!(s[2].options.credentials.get("mirror.lab:443").is_none());
    }

    #[test]
    fn other_registries_take_the_wildcard_and_nothing_is_rewritten_without_a_rule() {
        let r: Reference = "redis".parse().unwrap();
        let s = mirrors().sources(&r, &ClientOptions::default());
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].reference.to_string(),
            "127.0.0.1:5001/library/redis:latest"
        );
        assert_eq!(s[1].reference, r);
        // Without mirrors: the registry alone.
        let s = Mirrors::default().sources(&r, &ClientOptions::default());
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].reference, r);
    }
}
