//! The guestbook's images, built here (there is no Docker Hub to pull them from) under the
//! tutorial's names: `kubeguide/redis-master`, `kubeguide/guestbook-redis-slave` (replicating
//! from `$REDIS_MASTER_SERVICE_HOST` with `GET_HOSTS_FROM=env`, else from `redis-master`) and
//! `kubeguide/guestbook-php-frontend` (a page on port 80 whose `guestbook.php?cmd=set` writes
//! to the master and `cmd=get` reads from the slaves, answering as the PHP original does).
//! Redis is Debian's, from redis-tools, which `scripts/deps.sh` unpacks into [`REDIS_ROOT`];
//! the libraries it needs come with it, as `ldd` finds them on the host. The shell and httpd
//! are the host's static busybox.

use std::path::Path;

use anyhow::{bail, Result};
use oci::build::{BuiltImage, ImageBuilder, TarBuilder};
use oci::spec::{Compression, RunConfig};

/// Debian's redis-tools, unpacked (not installed: no service starts on the host).
pub const REDIS_ROOT: &str = "/var/cache/knode/redis";

pub const MASTER: &str = "kubeguide/redis-master";
pub const SLAVE: &str = "kubeguide/guestbook-redis-slave";
pub const FRONTEND: &str = "kubeguide/guestbook-php-frontend";

/// Redis (`/usr/bin/redis-server`, `/usr/bin/redis-cli`) and every library they load, under
/// the paths the loader looks in.
fn redis_layer() -> Result<Vec<u8>> {
    let root = Path::new(REDIS_ROOT);
    let cli = root.join("usr/bin/redis-cli");
    let server = root.join("usr/bin/redis-check-rdb");
    if !cli.is_file() || !server.is_file() {
        bail!("no redis-tools in {REDIS_ROOT}: run scripts/deps.sh");
    }
    let own = root.join("usr/lib/x86_64-linux-gnu");
    let mut t = TarBuilder::new();
    for d in ["usr", "usr/bin", "lib", "lib64"] {
        t.dir(d, 0o755);
    }
    t.file("usr/bin/redis-server", 0o755, &std::fs::read(&server)?);
    t.file("usr/bin/redis-cli", 0o755, &std::fs::read(&cli)?);
    super::add_libraries(&mut t, &[&server, &cli], &own)?;
    Ok(t.finish())
}

fn config(cmd: &[&str], port: u16) -> RunConfig {
    super::run_config(cmd, port, &["LD_LIBRARY_PATH=/lib/x86_64-linux-gnu"])
}

const SLAVE_SH: &str = r#"#!/bin/sh
# The guestbook's Redis slave: replicates the master found as the tutorial says.
if [ "${GET_HOSTS_FROM:-dns}" = env ]; then master=$REDIS_MASTER_SERVICE_HOST; else master=redis-master; fi
echo "replicating from $master:6379"
exec redis-server --protected-mode no --replicaof "$master" 6379
"#;

/// The frontend: busybox httpd on port 80, `*.php` run by the shell; SIGTERM stops it (as
/// PID 1 the shell would otherwise ignore it for the whole grace period).
const FRONTEND_SH: &str = r#"#!/bin/sh
httpd -f -v -p 80 -h /www -c /etc/httpd.conf &
trap 'kill $!; exit 0' TERM
wait
"#;

/// The PHP frontend's API, in sh: `cmd=set` writes `key`=`value` to the master, `cmd=get`
/// reads `key` from the slaves; JSON answers as guestbook.php gives them.
const GUESTBOOK_PHP: &str = r#"#!/bin/sh
if [ "${GET_HOSTS_FROM:-dns}" = env ]; then
  master=$REDIS_MASTER_SERVICE_HOST; slave=$REDIS_SLAVE_SERVICE_HOST
else
  master=redis-master; slave=redis-slave
fi
param() { echo "$QUERY_STRING" | tr '&' '\n' | sed -n "s/^$1=//p" | head -n 1; }
json() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
cmd=$(param cmd); key=$(httpd -d "$(param key)"); value=$(httpd -d "$(param value)")
echo "Content-Type: application/json"
echo
case "$cmd" in
  set) redis-cli -h "$master" set "$key" "$value" >/dev/null && echo '{"message": "Updated"}' ;;
  get) printf '{"data": "%s"}\n' "$(json "$(redis-cli -h "$slave" get "$key")")" ;;
  *) echo '{"error": "cmd must be set or get"}' ;;
esac
"#;

const INDEX_HTML: &str = r##"<html>
<head><title>Guestbook</title></head>
<body>
<h2>Guestbook</h2>
<form id="f"><input id="m" placeholder="Messages"> <button>Submit</button></form>
<div id="entries"></div>
<script>
const show = (d) => { document.getElementById("entries").innerHTML =
  (d.data || "").split(",").filter(x => x).map(x => "<p>" + x.replace(/</g, "&lt;") + "</p>").join(""); };
const get = () => fetch("guestbook.php?cmd=get&key=messages").then(r => r.json()).then(show);
document.getElementById("f").onsubmit = (e) => { e.preventDefault();
  const all = [...document.querySelectorAll("#entries p")].map(p => p.textContent);
  all.push(document.getElementById("m").value);
  fetch("guestbook.php?cmd=set&key=messages&value=" + encodeURIComponent(all.join(",")))
    .then(get); document.getElementById("m").value = ""; };
get();
</script>
</body>
</html>
"##;

/// The three images, with the names the tutorial's YAML uses.
pub fn images() -> Result<Vec<(&'static str, BuiltImage)>> {
    let busybox = super::busybox_layer()?;
    let redis = redis_layer()?;
    let image = |extra: Option<Vec<u8>>, cfg: RunConfig| {
        let mut b = ImageBuilder::new()
            .layer(&busybox, Compression::Gzip)
            .layer(&redis, Compression::Gzip);
        if let Some(e) = extra {
            b = b.layer(&e, Compression::Gzip);
        }
        b.run_config(cfg).build()
    };
    let mut slave = TarBuilder::new();
    slave.file("run-slave.sh", 0o755, SLAVE_SH.as_bytes());
    let mut front = TarBuilder::new();
    front
        .file("run-frontend.sh", 0o755, FRONTEND_SH.as_bytes())
        .dir("www", 0o755)
        .file("www/index.html", 0o644, INDEX_HTML.as_bytes())
        .file("www/guestbook.php", 0o755, GUESTBOOK_PHP.as_bytes())
        .file("etc/httpd.conf", 0o644, b"*.php:/bin/sh\n");
    Ok(vec![
        (
            MASTER,
            image(
                None,
                config(&["redis-server", "--protected-mode", "no"], 6379),
            ),
        ),
        (
            SLAVE,
            image(Some(slave.finish()), config(&["/run-slave.sh"], 6379)),
        ),
        (
            FRONTEND,
            image(Some(front.finish()), config(&["/run-frontend.sh"], 80)),
        ),
    ])
}

/// The tutorial's six files, as it writes them (its redis-master RC and Service, the slaves'
/// and the frontend's, the frontend on NodePort 30001).
pub const FILES: &[(&str, &str)] = &[
    (
        "redis-master-controller.yaml",
        "apiVersion: v1
kind: ReplicationController
metadata:
  name: redis-master
  labels:
    name: redis-master
spec:
  replicas: 1
  selector:
    name: redis-master
  template:
    metadata:
      name: redis-master
      labels:
        name: redis-master
    spec:
      containers:
      - name: redis-master
        image: kubeguide/redis-master
        ports:
        - containerPort: 6379
",
    ),
    (
        "redis-master-service.yaml",
        "apiVersion: v1
kind: Service
metadata:
  name: redis-master
  labels:
    name: redis-master
spec:
  ports:
  - port: 6379
    targetPort: 6379
  selector:
    name: redis-master
",
    ),
    (
        "redis-slave-controller.yaml",
        "apiVersion: v1
kind: ReplicationController
metadata:
  name: redis-slave
spec:
  replicas: 2
  selector:
    name: redis-slave
  template:
    metadata:
      name: redis-slave
      labels:
        name: redis-slave
    spec:
      containers:
      - name: redis-slave
        image: kubeguide/guestbook-redis-slave
        env:
        - name: GET_HOSTS_FROM
          value: env
        ports:
        - containerPort: 6379
",
    ),
    (
        "redis-slave-service.yaml",
        "apiVersion: v1
kind: Service
metadata:
  name: redis-slave
  labels:
    name: redis-slave
spec:
  ports:
  - port: 6379
  selector:
    name: redis-slave
",
    ),
    (
        "frontend-controller.yaml",
        "apiVersion: v1
kind: ReplicationController
metadata:
  name: frontend
  labels:
    name: frontend
spec:
  replicas: 3
  selector:
    name: frontend
  template:
    metadata:
      labels:
        name: frontend
    spec:
      containers:
      - name: frontend
        image: kubeguide/guestbook-php-frontend
        env:
        - name: GET_HOSTS_FROM
          value: env
        ports:
        - containerPort: 80
",
    ),
    (
        "frontend-service.yaml",
        "apiVersion: v1
kind: Service
metadata:
  name: frontend
  labels:
    name: frontend
spec:
  type: NodePort
  ports:
  - port: 80
    nodePort: 30001
  selector:
    name: frontend
",
    ),
];
