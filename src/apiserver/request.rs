//! What a request asks for, read from its path and query as the API server's
//! `RequestInfoFactory` does: `/api/v1/namespaces/default/pods/web/status`,
//! `/apis/apps/v1/deployments`, the legacy `/api/v1/watch/...` form.

use std::collections::HashMap;

use super::resources::{self, Resource};
use super::status::{ApiError, ApiResult};

/// A resource path, resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// What follows a `proxy` subresource.
    pub rest: String,
    /// The legacy `/watch/` prefix.
    pub watch_prefix: bool,
}

/// The path components after `/api/v1` or `/apis/<g>/<v>`.
pub fn parse(group: &str, version: &str, parts: &[&str]) -> ApiResult<Target> {
    let mut parts = parts;
    let mut watch_prefix = false;
    if parts.first() == Some(&"watch") {
        watch_prefix = true;
        parts = &parts[1..];
    }
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    // namespaces/<ns>/<resource>/... unless the third part is a namespace subresource.
    let (namespace, rest) = if parts.first() == Some(&"namespaces")
        && parts.len() >= 3
        && !matches!(parts[2], "status" | "finalize")
    {
        (Some(parts[1].to_string()), &parts[2..])
    } else {
        (None, parts)
    };
    let plural = rest.first().ok_or_else(not_found)?;
    let resource = resources::find(group, version, plural).ok_or_else(not_found)?;
    if namespace.is_some() && !resource.namespaced {
        return Err(not_found());
    }
    let name = rest.get(1).map(|s| s.to_string());
    let sub = rest.get(2).map(|s| s.to_string());
    if let Some(s) = &sub {
        if resource.sub(s).is_none() {
            return Err(not_found());
        }
    }
    if rest.len() > 3 && sub.as_deref() != Some("proxy") {
        return Err(not_found());
    }
    for seg in [name.as_deref(), namespace.as_deref()]
        .into_iter()
        .flatten()
    {
        path_segment(seg)?;
    }
    Ok(Target {
        resource,
        namespace,
        name,
        sub,
        rest: rest.get(3..).map(|r| r.join("/")).unwrap_or_default(),
        watch_prefix,
    })
}

/// A name in a path may not be `.` or `..` or hold `/` or `%` (`path.IsValidPathSegmentName`).
pub fn path_segment(s: &str) -> ApiResult<()> {
    if s == "." || s == ".." {
        return Err(ApiError::bad_request(format!(
            "may not be '{s}': invalid path segment"
        )));
    }
    if s.contains(['/', '%']) {
        return Err(ApiError::bad_request(format!(
            "may not contain '/' or '%': {s:?}"
        )));
    }
    Ok(())
}

/// The query string, decoded.
#[derive(Debug, Default, Clone)]
pub struct Query(pub HashMap<String, String>);

const USER_AGENT: &str = "\u{0}user-agent";

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let mut m = HashMap::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.insert(decode(k), decode(v));
        }
        Query(m)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The manager a write is recorded under: `fieldManager`, or else the client's
    /// User-Agent up to its first `/` (as the API server names `kubectl` or
    /// `OpenAPI-Generator`), set by the server under a key no query string can keep.
    pub fn manager(&self) -> ApiResult<String> {
        match self.get("fieldManager") {
            Some(m) if m.chars().count() > 128 => Err(ApiError::bad_request(
                "fieldManager: Too long: may not be more than 128 bytes",
            )),
            Some(m) if m.chars().any(char::is_control) => Err(ApiError::bad_request(format!(
                "fieldManager: Invalid value: {m:?}: invalid characters"
            ))),
            Some(m) => Ok(m.to_string()),
            None => Ok(self
                .0
                .get(USER_AGENT)
                .cloned()
                .unwrap_or_else(|| "unknown".into())),
        }
    }

    /// Records the client's User-Agent for [`Query::manager`].
    pub fn set_user_agent(&mut self, ua: Option<&str>) {
        let prefix: String = ua
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect();
        if prefix.is_empty() {
            self.0.remove(USER_AGENT);
        } else {
            self.0.insert(USER_AGENT.into(), prefix);
        }
    }

    /// A boolean as Go's `strconv.ParseBool` reads it (the Python client sends `True`).
    pub fn flag(&self, k: &str) -> ApiResult<bool> {
        match self.0.get(k).map(String::as_str) {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(ApiError::bad_request(format!(
                "invalid boolean value {v:?} for parameter {k:?}"
            ))),
        }
    }

    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        self.get(k)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid value {v:?} for parameter {k:?}"))
                })
            })
            .transpose()
    }

    /// `dryRun=All` (the only value the API accepts besides none).
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!(
                "Invalid dryRun value: {v:?}: supported values: \"All\""
            ))),
        }
    }
}

pub(crate) fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_as_the_api_server_resolves_them() {
        let t = parse(
            "",
            "v1",
            &["namespaces", "default", "pods", "web", "status"],
        )
        .unwrap();
        assert_eq!(
            (
                t.resource.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("default"), Some("web"), Some("status"))
        );
        let t = parse("", "v1", &["namespaces", "kube-system", "status"]).unwrap();
        assert_eq!(
            (t.resource.plural, t.name.as_deref(), t.sub.as_deref()),
            ("namespaces", Some("kube-system"), Some("status"))
        );
        let t = parse("", "v1", &["namespaces", "default"]).unwrap();
        assert_eq!(
            (t.resource.plural, t.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let t = parse("apps", "v1", &["deployments"]).unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = parse("", "v1", &["watch", "namespaces", "a", "pods"]).unwrap();
        assert!(t.watch_prefix);
        let t = parse(
            "",
            "v1",
            &["namespaces", "a", "pods", "p:80", "proxy", "x", "y"],
        )
        .unwrap();
        assert_eq!(t.rest, "x/y");
        for bad in [
            &["namespaces", "a", "nosuch"][..],
            &["namespaces", "a", "nodes"],
            &["namespaces", "a", "pods", "p", "nosuch"],
            &["namespaces", "a", "pods", "p", "status", "x"],
        ] {
            assert_eq!(parse("", "v1", bad).unwrap_err().code, 404, "{bad:?}");
        }
        assert_eq!(
            parse("", "v1", &["namespaces", "a", "pods", ".."])
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn queries_decode_and_booleans_read_as_go_reads_them() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&watch=True&limit=5&x=%zz",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch").unwrap());
        assert_eq!(q.int("limit").unwrap(), Some(5));
        assert_eq!(q.get("x"), Some("%zz"));
        assert!(Query::parse(Some("watch=yes")).flag("watch").is_err());
    }
}
