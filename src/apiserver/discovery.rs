//! Discovery: the legacy documents (`/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`) and the
//! aggregated `apidiscovery.k8s.io/v2` (and v2beta1) ones, which clients select with their
//! Accept header and recognise by the response's Content-Type.

use serde_json::{json, Value};

use super::resources::{groups, Resource, RESOURCES};

/// The Content-Type of aggregated discovery, for the version the client asked for.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// Which aggregated version the Accept header asks for, if any (first acceptable wins).
pub fn wants_aggregated(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        if p.first() != Some(&"application/json") {
            if p.first()
                .is_some_and(|m| *m == "*/*" || m.starts_with("application/"))
            {
                return None;
            }
            continue;
        }
        let has = |k: &str| p.contains(&k);
        if !has("g=apidiscovery.k8s.io") || !has("as=APIGroupDiscoveryList") {
            return None;
        }
        if has("v=v2") {
            return Some("v2");
        }
        if has("v=v2beta1") {
            return Some("v2beta1");
        }
    }
    None
}

fn in_group<'a>(group: &'a str) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES.iter().filter(move |r| r.group == group)
}

/// The one version a group is served at (`v1`; the metrics API's `v1beta1`).
fn version_of(group: &str) -> &'static str {
    in_group(group).next().map_or("v1", |r| r.version)
}

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let v = version_of(g);
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    in_group(group).next()?;
    let v = version_of(group);
    let gv = json!({"groupVersion": format!("{group}/{v}"), "version": v});
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv}),
    )
}

/// `/api/v1` or `/apis/<group>/v1`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in in_group(group).filter(|r| r.version == version) {
        let mut e = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": r.verbs,
        });
        if !r.short.is_empty() {
            e["shortNames"] = json!(r.short);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        resources.push(e);
        for s in r.subs {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, s.name), "singularName": "",
                "namespaced": r.namespaced, "kind": s.kind, "verbs": s.verbs,
            });
            if s.group != r.group || s.version != r.version {
                e["group"] = json!(s.group);
                e["version"] = json!(s.version);
            }
            resources.push(e);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn aggregated_group(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = in_group(group)
        .map(|r| {
            let mut e = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
            });
            if !r.short.is_empty() {
                e["shortNames"] = json!(r.short);
            }
            if !r.categories.is_empty() {
                e["categories"] = json!(r.categories);
            }
            if !r.subs.is_empty() {
                e["subresources"] = r
                    .subs
                    .iter()
                    .map(|s| json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs}))
                    .collect();
            }
            e
        })
        .collect();
    let mut g = json!({"metadata": {"creationTimestamp": null}, "versions": [{"version": version_of(group), "resources": resources, "freshness": "Current"}]});
    if !group.is_empty() {
        g["metadata"]["name"] = json!(group);
    }
    let _ = version;
    g
}

/// Aggregated `/api` (the core group) or `/apis` (every other group).
pub fn aggregated(core: bool, version: &str) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("", version)]
    } else {
        groups()
            .into_iter()
            .map(|g| aggregated_group(g, version))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_select_the_format_kubectl_expects() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(wants_aggregated(kubectl), Some("v2"));
        assert_eq!(wants_aggregated("application/json, */*"), None);
        assert_eq!(wants_aggregated(""), None);
    }

    #[test]
    fn every_resource_and_subresource_has_a_response_kind() {
        for item in aggregated(false, "v2")["items"].as_array().unwrap() {
            for r in item["versions"][0]["resources"].as_array().unwrap() {
                assert!(!r["responseKind"]["kind"].as_str().unwrap().is_empty());
                for s in r["subresources"].as_array().into_iter().flatten() {
                    assert!(!s["responseKind"]["kind"].as_str().unwrap().is_empty());
                }
            }
        }
        let core = resource_list("", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"pods/log") && names.contains(&"replicationcontrollers/scale"));
        let scale = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "replicationcontrollers/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
    }
}
