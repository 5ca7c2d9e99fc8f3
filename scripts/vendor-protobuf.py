#!/usr/bin/env python3
"""Vendors the wire layout of the Kubernetes API's protobuf messages knode's API server
decodes (kubectl's typed clients and helm send protobuf bodies and never fall back).

Source: the generated.proto files of kubernetes/api and kubernetes/apimachinery
(Apache-2.0, Copyright The Kubernetes Authors), read from git checkouts:
  python3 scripts/vendor-protobuf.py /path/to/kubernetes/api /path/to/kubernetes/apimachinery [rev]
Writes src/apiserver/openapi/protobuf.json.gz: {message: [[tag, name, label, type, value_type,
omit_zero]]} with label 0 optional, 1 repeated, 2 map (type = key type, value_type = value
type), and omit_zero 1 when the Go field is a non-pointer `omitempty` scalar (the types.go
files say so): Go writes such fields to the wire even when zero, and leaves them out of JSON.
Field names in these files are the JSON names, so decoding yields the API's JSON.
"""
import gzip, json, re, subprocess, sys

api, machinery = sys.argv[1], sys.argv[2]
rev = sys.argv[3] if len(sys.argv) > 3 else "HEAD"
API_GROUPS = ["core/v1", "apps/v1", "batch/v1", "coordination/v1", "discovery/v1", "events/v1", "storage/v1",
              "authentication/v1", "authorization/v1", "autoscaling/v1", "policy/v1", "rbac/v1"]
MACHINERY = ["pkg/apis/meta/v1", "pkg/runtime", "pkg/runtime/schema", "pkg/util/intstr", "pkg/api/resource"]
SCALARS = {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
           "fixed32", "fixed64", "sfixed32", "sfixed64", "double", "float"}

def show(repo, path):
    return subprocess.run(["git", "-C", repo, "show", f"{rev}:{path}"], check=True,
                          capture_output=True, text=True).stdout

def go_fields(repo, d, pkg):
    """(message, tag) of non-pointer omitempty scalar fields, from the Go types."""
    out = set()
    names = subprocess.run(["git", "-C", repo, "ls-tree", "--name-only", rev, d + "/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for path in names:
        base = path.rsplit("/", 1)[-1]
        if not base.endswith(".go") or base.endswith("_test.go") or base.startswith(("zz_", "generated")):
            continue
        struct = None
        for line in show(repo, path).splitlines():
            m = re.match(r"^type (\w+) struct \{", line)
            if m:
                struct = m.group(1)
                continue
            if line.startswith("}"):
                struct = None
                continue
            f = re.match(r'^\s+\w+\s+(\S+)\s+`json:"([^"]*)"\s+protobuf:"(\w+),(\d+),', line)
            if struct and f:
                gotype, jtag, wire, tag = f.groups()
                if not gotype.startswith(("*", "[]", "map[")) and ",omitempty" in jtag:
                    out.add((f"{pkg}.{struct}", int(tag)))
    return out

files = [(api, f"{g}/generated.proto") for g in API_GROUPS] + \
        [(machinery, f"{p}/generated.proto") for p in MACHINERY]
raw = {}
omit = set()
for repo, path in files:
    text = re.sub(r"//[^\n]*", "", show(repo, path))
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    pkg = re.search(r"package ([\w.]+);", text).group(1)
    omit |= go_fields(repo, path.rsplit("/", 1)[0], pkg)
    for m in re.finditer(r"message (\w+) \{", text):
        end = text.index("}", m.end())
        name, body = f"{pkg}.{m.group(1)}", text[m.end():end]
        if re.search(r"^\s*message \w+ \{", body, flags=re.M):
            sys.exit(f"nested message in {name}: not handled")
        fields = []
        for f in re.finditer(r"(optional|repeated|map<(\w+),\s*([\w.]+)>)\s*([\w.]*)\s+(\w+)\s*=\s*(\d+)", body):
            label, mkey, mval, ty, fname, tag = f.groups()
            if label.startswith("map"):
                fields.append([int(tag), fname, 2, mkey, mval])
            else:
                fields.append([int(tag), fname, 0 if label == "optional" else 1, ty, ""])
        raw[name] = (pkg, fields)

def qualify(pkg, ty):
    ty = ty.lstrip(".")
    if ty in SCALARS or ty == "":
        return ty
    if ty.startswith("k8s.io."):
        return ty
    return f"{pkg}.{ty}"

out = {}
for name, (pkg, fields) in raw.items():
    out[name] = [[t, n, l, qualify(pkg, a), qualify(pkg, b), int((name, t) in omit and l == 0 and qualify(pkg, a) in SCALARS)]
                 for t, n, l, a, b in fields]
for name, fields in out.items():
    for f in fields:
        for ty in (f[3], f[4]):
            if ty and ty not in SCALARS and ty not in out:
                sys.exit(f"{name}.{f[1]}: unknown type {ty}")
data = json.dumps(out, sort_keys=True, separators=(",", ":")).encode()
with open("src/apiserver/openapi/protobuf.json.gz", "wb") as fh:
    with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=9, mtime=0, filename="") as g:
        g.write(data)
print(f"{len(out)} messages, {len(data)} bytes")
