//! The Kubernetes bootcamp's images, built here from the host's static busybox (there is no
//! Docker Hub or gcr.io to pull them from): `kubernetes-bootcamp` v1 and v2, an HTTP server on
//! 8080 answering every request as the tutorial shows,
//! `Hello Kubernetes bootcamp! | Running on: <pod name> | v=1`, logging its start as the
//! original does, with `bash` (busybox's shell) for `kubectl exec -ti $POD_NAME bash`.

use anyhow::Result;
use oci::build::{BuiltImage, ImageBuilder, TarBuilder};
use oci::spec::Compression;

/// The tutorial's names, and where the demo's registry serves them (a `registries.yaml`
/// mirror rewrites the first; the second keeps its Docker Hub path).
pub const V1: &str = "gcr.io/google-samples/kubernetes-bootcamp:v1";
pub const V2: &str = "jocatalin/kubernetes-bootcamp:v2";
pub const V1_MIRRORED: &str = "tutorials/kubernetes-bootcamp:v1";
pub const V2_MIRRORED: &str = "jocatalin/kubernetes-bootcamp:v2";

/// The app: one page with the pod's name and the version, served by busybox httpd.
fn app_layer(version: u32) -> Vec<u8> {
    let script = format!(
        r#"#!/bin/sh
# The Kubernetes bootcamp's app, v={version}: every request gets the pod's name.
mkdir -p /tmp/www
echo "Hello Kubernetes bootcamp! | Running on: $(hostname) | v={version}" > /tmp/www/index.html
echo "Kubernetes Bootcamp App Started At: $(date -u +%Y-%m-%dT%H:%M:%S.000Z) | Running On:  $(hostname)"
# As PID 1 the shell gets no default action for SIGTERM: stop when Kubernetes asks.
httpd -f -v -p 8080 -h /tmp/www &
trap 'kill $!; exit 0' TERM
wait
"#
    );
    let mut t = TarBuilder::new();
    t.file("bootcamp.sh", 0o755, script.as_bytes());
    t.symlink("bin/bash", "busybox");
    t.finish()
}

/// `kubernetes-bootcamp` at `version` (1 or 2).
pub fn image(version: u32) -> Result<BuiltImage> {
    Ok(ImageBuilder::new()
        .layer(&super::busybox_layer()?, Compression::Gzip)
        .layer(&app_layer(version), Compression::Gzip)
        .run_config(super::run_config(&["/bootcamp.sh"], 8080, &[]))
        .build())
}

/// A `registries.yaml` that sends the tutorial's registries to `registry` (host:port, plain
/// HTTP), with gcr.io's `google-samples/` rewritten to `tutorials/`.
pub fn mirrors_yaml(registry: &str) -> String {
    format!(
        r#"# The bootcamp's registries, served by the demo's local registry.
mirrors:
  gcr.io:
    endpoint: ["http://{registry}"]
    rewrite:
      "^google-samples/(.*)": "tutorials/$1"
  docker.io:
    endpoint: ["http://{registry}"]
"#
    )
}
