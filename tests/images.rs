//! End-to-end image tests against a real registry (Debian `docker-registry`), run as root.

mod support;

use std::process::Command;

use oci::build::{ImageBuilder, TarBuilder};
use oci::digest::Digest;
use oci::image::PullOptions;
use oci::progress::NoProgress;
use oci::registry::RegistryClient;
use oci::spec::{self, Compression, Platform};
use support::proxy::{Faults, Proxy};
use support::*;

#[test]
fn pull_stores_verifies_and_mounts_an_image() {
    let reg = registry();
    let r = push(&reg.host(), "demo/busybox:v1", &busybox_image());
    let s = Store::new();
    let rep = s.pull(&r.to_string()).unwrap();
    assert_eq!((rep.layers_fetched, rep.layers_reused), (1, 0));
    let rec = s
        .store
        .get(&format!("{}/demo/busybox:v1", reg.host()))
        .unwrap();
    assert_eq!(rec.layers.len(), 1);
    assert_eq!(
        s.store.get(rec.id().short()).unwrap().name,
        rec.name,
        "lookup by ID prefix"
    );
    let cfg = s.store.config(&rec).unwrap().config.unwrap();
    assert_eq!(cfg.cmd.unwrap()[0], "httpd");
    let m = Mounted::new(&s, &rec.name);
    assert_eq!(
        std::fs::read(m.path("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        std::fs::read_link(m.path("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    // The upper dir is writable; the snapshot below stays untouched.
    std::fs::write(m.path("www/new"), b"x").unwrap();
    let snap = s.store.snapshots().fs_dir(&rec.layers[0].chain_id);
    assert!(!snap.join("www/new").exists());
    drop(m);
    // A second pull of the same image transfers nothing.
    let again = s.pull(&r.to_string()).unwrap();
    assert_eq!((again.layers_fetched, again.layers_reused), (0, 1));
}

#[test]
fn images_sharing_a_base_share_its_snapshot_and_rm_keeps_what_is_used() {
    let reg = registry();
    let base = busybox_tar();
    let a = ImageBuilder::new()
        .layer(&base, Compression::Gzip)
        .layer(&app_tar("a"), Compression::Gzip)
        .build();
    let b = ImageBuilder::new()
        .layer(&base, Compression::Gzip)
        .layer(&app_tar("b"), Compression::Zstd)
        .build();
    let ra = push(&reg.host(), "app/a:1", &a);
    let rb = push(&reg.host(), "app/b:1", &b);
    let s = Store::new();
    assert_eq!(s.pull(&ra.to_string()).unwrap().layers_fetched, 2);
    let rep = s.pull(&rb.to_string()).unwrap();
    assert_eq!(
        (rep.layers_fetched, rep.layers_reused),
        (1, 1),
        "only the new layer moves"
    );
    assert_eq!(s.snapshot_dirs().0.len(), 3);
    {
        let m = Mounted::new(&s, &rb.to_string());
        assert_eq!(std::fs::read_to_string(m.path("app/version")).unwrap(), "b");
        assert!(m.path("bin/busybox").exists());
    }
    let (names, gc) = s.store.remove(&ra.to_string()).unwrap();
    assert_eq!(names, vec![ra.to_string()]);
    assert_eq!(
        gc.snapshots, 1,
        "only a's top layer goes; the shared base stays"
    );
    assert!(s.store.get(&rb.to_string()).is_ok());
    Mounted::new(&s, &rb.to_string());
    s.store.remove(&rb.to_string()).unwrap();
    s.assert_empty();
    assert!(matches!(
        s.store.remove("app/b:1"),
        Err(oci::image::ImageError::NotFound(_))
    ));
}

#[test]
fn plain_and_zstd_layers_and_pull_by_digest() {
    let reg = registry();
    let img = ImageBuilder::new()
        .layer(&busybox_tar(), Compression::Zstd)
        .layer(&app_tar("plain"), Compression::None)
        .build();
    let r = push(&reg.host(), "x/mixed:1", &img);
    let s = Store::new();
    let by_digest = format!("{}/x/mixed@{}", reg.host(), img.manifest_digest);
    let rep = s.pull(&by_digest).unwrap();
    assert_eq!(rep.image.digest, img.manifest_digest);
    assert_eq!(rep.image.name, by_digest);
    let m = Mounted::new(&s, &by_digest);
    assert_eq!(
        std::fs::read_to_string(m.path("app/version")).unwrap(),
        "plain"
    );
    drop(m);
    // The tag resolves to the same manifest, so nothing new is applied.
    assert_eq!(s.pull(&r.to_string()).unwrap().layers_fetched, 0);
}

/// Pushes an index with an amd64 and an arm64 image plus an attestation manifest.
fn push_index(host: &str, attestation_first: bool) -> (oci::reference::Reference, Digest, Digest) {
    let c = RegistryClient::new(client()).unwrap();
    let r: oci::reference::Reference = format!("{host}/multi/app:1").parse().unwrap();
    let mut entries = vec![];
    let mut digests = vec![];
    for p in ["linux/amd64", "linux/arm64/v8"] {
        let img = ImageBuilder::new()
            .layer(&app_tar(p), Compression::Gzip)
            .platform(p.parse().unwrap())
            .build();
        img.push(&c, &r.with_digest(img.manifest_digest.clone()))
            .unwrap();
        let mut d = oci::build::descriptor(spec::OCI_MANIFEST, &img.manifest);
        d.platform = Some(p.parse().unwrap());
        digests.push(img.manifest_digest.clone());
        entries.push(d);
    }
    // An attestation manifest claims "unknown/unknown": never to be chosen.
    let att = ImageBuilder::new()
        .layer(&app_tar("attestation"), Compression::Gzip)
        .build();
    att.push(&c, &r.with_digest(att.manifest_digest.clone()))
        .unwrap();
    let mut d = oci::build::descriptor(spec::OCI_MANIFEST, &att.manifest);
    d.platform = Some(Platform::host());
    d.annotations.insert(
        "vnd.docker.reference.type".into(),
        "attestation-manifest".into(),
    );
    if attestation_first {
        entries.insert(0, d);
    } else {
        entries.push(d);
    }
    let idx = spec::Index {
        schema_version: 2,
        media_type: Some(spec::OCI_INDEX.into()),
        manifests: entries,
        annotations: Default::default(),
    };
    let bytes = serde_json::to_vec(&idx).unwrap();
    c.push_manifest(&r, "1", spec::OCI_INDEX, &bytes).unwrap();
    (r, digests[0].clone(), digests[1].clone())
}

#[test]
fn index_resolves_to_the_requested_platform_and_skips_attestations() {
    let reg = registry();
    let (r, amd64, arm64) = push_index(&reg.host(), true);
    let s = Store::new();
    let rep = s.pull(&r.to_string()).unwrap();
    assert_eq!(
        rep.image.digest, amd64,
        "host platform chosen, attestation skipped"
    );
    assert!(rep.image.index_digest.is_some());
    let mut o = PullOptions {
        platform: "linux/arm64".parse().unwrap(),
        ..Default::default()
    };
    let rep = s
        .store
        .pull(&r.to_string(), client(), &o, &NoProgress)
        .unwrap();
    assert_eq!(rep.image.digest, arm64);
    assert_eq!(rep.image.platform, "linux/arm64/v8");
    o.platform = "linux/s390x".parse().unwrap();
    let e = s
        .store
        .pull(&r.to_string(), client(), &o, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no image for platform linux/s390x") && e.contains("linux/arm64/v8"),
        "{e}"
    );
}

#[test]
fn basic_auth_with_credentials_and_refusals() {
    let reg = registry_with_basic("alice", "s3cret");
    let host = reg.host();
    let r = push_with(
        &host,
        "private/app:1",
        &busybox_image(),
        client_with(Some((&host, "alice", "s3cret"))),
    );
    let s = Store::new();
    let e = s.pull(&r.to_string()).unwrap_err().to_string();
    assert!(
        e.contains("refused authentication") && e.contains("no credentials"),
        "{e}"
    );
    let e = s
        .pull_with(&r.to_string(), client_with(Some((&host, "alice", "wrong"))))
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused authentication"), "{e}");
    s.assert_empty();
    s.pull_with(
        &r.to_string(),
        client_with(Some((&host, "alice", "s3cret"))),
    )
    .unwrap();
}

#[test]
fn bearer_tokens_and_redirects_without_authorization() {
    let reg = registry();
    push(&reg.host(), "tok/app:1", &busybox_image());
    let proxy = Proxy::start(
        reg.addr,
        Faults {
            bearer: Some(Some(("bob".into(), "pw".into()))),
            redirect_blobs: true,
            ..Default::default()
        },
    );
    let r = format!("{}/tok/app:1", proxy.host());
    let s = Store::new();
    let e = s.pull(&r).unwrap_err().to_string();
    assert!(e.contains("token server answered 401"), "{e}");
    let rep = s
        .pull_with(&r, client_with(Some((&proxy.host(), "bob", "pw"))))
        .unwrap();
    assert_eq!(rep.layers_fetched, 1);
    let seen = proxy.seen.lock().unwrap();
    assert!(
        seen.token_requests
            .iter()
            .any(|t| t.contains("scope=repository%3Atok%2Fapp%3Apull")),
        "{:?}",
        seen.token_requests
    );
    assert!(
        seen.redirected_without_auth >= 2,
        "config and layer were redirected"
    );
    assert_eq!(
        seen.redirected_with_auth, 0,
        "Authorization leaked to another host"
    );
}

#[test]
fn broken_transfers_resume_with_range_requests() {
    let reg = registry();
    push(&reg.host(), "flaky/app:1", &busybox_image());
    let proxy = Proxy::start(
        reg.addr,
        Faults {
            break_blobs: true,
            ..Default::default()
        },
    );
    let s = Store::new();
    s.pull(&format!("{}/flaky/app:1", proxy.host())).unwrap();
    let seen = proxy.seen.lock().unwrap();
    assert!(seen.broken >= 2, "the config and the layer broke once each");
    assert!(
        seen.range_requests >= 1,
        "the layer resumed with a Range request"
    );
}

#[test]
fn corrupted_blob_is_a_digest_mismatch_and_nothing_is_kept() {
    let reg = registry();
    // An uncompressed layer: a flipped byte inside file data still parses as tar, so only the
    // digest check can catch it.
    let img = ImageBuilder::new()
        .layer(
            &TarBuilder::new()
                .file("data", 0o644, &vec![7u8; 64 * 1024])
                .finish(),
            Compression::None,
        )
        .build();
    push(&reg.host(), "bad/app:1", &img);
    let proxy = Proxy::start(
        reg.addr,
        Faults {
            corrupt_blobs: true,
            ..Default::default()
        },
    );
    let s = Store::new();
    let e = s
        .pull(&format!("{}/bad/app:1", proxy.host()))
        .unwrap_err()
        .to_string();
    // The config (a small blob) is verified first.
    assert!(e.contains("digest mismatch"), "{e}");
    s.assert_empty();
}

#[test]
fn layer_digest_and_diffid_mismatches_are_refused() {
    let reg = registry();
    let tar = app_tar("x");
    let lie = ImageBuilder::new()
        .raw_layer(
            oci::build::compress(&tar, Compression::Gzip),
            Compression::Gzip,
            Digest::of(b"not it"),
        )
        .build();
    let r = push(&reg.host(), "lie/diffid:1", &lie);
    let s = Store::new();
    let e = s.pull(&r.to_string()).unwrap_err().to_string();
    assert!(
        e.contains("DiffID mismatch") && e.contains(&lie.layers[0].0.digest.to_string()),
        "{e}"
    );
    s.assert_empty();
    // Compressed layer bytes corrupted in flight (after gzip): caught by gzip or the digest.
    let img = ImageBuilder::new()
        .layer(&busybox_tar(), Compression::Gzip)
        .build();
    push(&reg.host(), "lie/blob:1", &img);
    let proxy = Proxy::start(
        reg.addr,
        Faults {
            corrupt_blobs: true,
            ..Default::default()
        },
    );
    let e = s
        .pull(&format!("{}/lie/blob:1", proxy.host()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("digest mismatch") || e.contains("gzip"), "{e}");
    s.assert_empty();
}

#[test]
fn bad_input_gives_clear_errors_and_stores_nothing() {
    let reg = registry();
    let s = Store::new();
    let host = reg.host();
    let e = s
        .pull(&format!("{host}/nope/missing:1"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not found") && e.contains("nope/missing:1"),
        "{e}"
    );
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = s.pull(&format!("{dead}/x:1")).unwrap_err().to_string();
    assert!(
        e.contains("unreachable") && e.contains(&dead.to_string()),
        "{e}"
    );
    let e = s.pull("UPPER/case").unwrap_err().to_string();
    assert!(e.contains("invalid image reference"), "{e}");
    // Unsupported layer media type.
    let img = busybox_image();
    let mut m: spec::Manifest = serde_json::from_slice(&img.manifest).unwrap();
    m.layers[0].media_type = "application/vnd.example.weird".into();
    let c = RegistryClient::new(client()).unwrap();
    let r: oci::reference::Reference = format!("{host}/odd/app:1").parse().unwrap();
    img.push(&c, &r).unwrap();
    let forged = serde_json::to_vec(&m).unwrap();
    let proxy = Proxy::start(
        reg.addr,
        Faults {
            manifest: Some((spec::OCI_MANIFEST.into(), forged)),
            ..Default::default()
        },
    );
    let e = s
        .pull(&format!("{}/odd/app:1", proxy.host()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unsupported media type") && e.contains("application/vnd.example.weird"),
        "{e}"
    );
    drop(proxy);
    // Malformed JSON, index/manifest confusion and schema1 manifests.
    for (ct, body, want) in [
        (spec::OCI_MANIFEST, b"{not json".to_vec(), "malformed manifest JSON"),
        (spec::OCI_MANIFEST, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec(), "does not match Content-Type"),
        (spec::DOCKER_SCHEMA1, br#"{"schemaVersion":1,"name":"x"}"#.to_vec(), "schema1"),
    ] {
        let proxy = Proxy::start(reg.addr, Faults { manifest: Some((ct.into(), body)), ..Default::default() });
        let e = s.pull(&format!("{}/odd/app:1", proxy.host())).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    s.assert_empty();
}

#[test]
fn a_hostile_layer_is_rejected_and_discarded() {
    let reg = registry();
    let evil = TarBuilder::new()
        .symlink(".", "/etc")
        .file("passwd", 0o644, b"owned")
        .finish();
    let img = ImageBuilder::new()
        .layer(&busybox_tar(), Compression::Gzip)
        .layer(&evil, Compression::Gzip)
        .build();
    let r = push(&reg.host(), "evil/app:1", &img);
    let s = Store::new();
    let e = s.pull(&r.to_string()).unwrap_err().to_string();
    assert!(
        e.contains("rejected") && e.contains(&img.layers[1].0.digest.to_string()),
        "{e}"
    );
    assert!(s.store.list().unwrap().is_empty());
    assert_eq!(s.snapshot_dirs().1.len(), 0, "no temp dir left");
}

#[test]
fn kill_9_during_a_pull_leaves_nothing_trusted() {
    let reg = registry();
    let img = ImageBuilder::new()
        .layer(&busybox_tar(), Compression::None)
        .build();
    push(&reg.host(), "crash/app:1", &img);
    let (proxy, stalled, release) = support::proxy::stalling(reg.addr);
    let s = Store::new();
    let r = format!("{}/crash/app:1", proxy.host());
    let mut child = Command::new(knode_bin())
        .arg("--root")
        .arg(s.root())
        .args(["image", "pull", &r])
        .spawn()
        .unwrap();
    stalled.recv().unwrap(); // the layer is half-transferred and half-applied
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    release.send(()).unwrap();
    assert!(s.store.list().unwrap().is_empty(), "no image recorded");
    let (done, tmp) = s.snapshot_dirs();
    assert!(
        done.is_empty(),
        "no snapshot under a trusted name: {done:?}"
    );
    assert!(
        !tmp.is_empty() || s.blobs() == 0,
        "the interrupted work is only in temp dirs"
    );
    // The next pull cleans up and succeeds.
    let out = Command::new(knode_bin())
        .arg("--root")
        .arg(s.root())
        .args(["image", "pull", &r])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (done, tmp) = s.snapshot_dirs();
    assert_eq!((done.len(), tmp.len()), (1, 0));
    let m = Mounted::new(&s, &r);
    assert!(m.path("bin/busybox").is_file());
}

#[test]
fn import_oci_layout_oci_archive_and_docker_archive() {
    let img = busybox_image();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    img.write_oci_layout(&layout, "v3").unwrap();
    let s = Store::new();
    let o = PullOptions::default();
    let recs = s
        .store
        .import(&layout, Some("example.com/demo/web"), &o, &NoProgress)
        .unwrap();
    assert_eq!(recs[0].name, "example.com/demo/web:v3");
    Mounted::new(&s, "example.com/demo/web:v3");
    // The same layout as a tar archive.
    let tar = t.path().join("layout.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let recs = s.store.import(&tar, None, &o, &NoProgress).unwrap();
    assert_eq!(recs[0].name, "docker.io/import/layout-tar:v3");
    assert_eq!(recs[0].layers_len(), 1);
    // A `docker save` archive, made by skopeo from a registry.
    let reg = registry();
    let r = push(&reg.host(), "saved/app:7", &img);
    let arch = t.path().join("saved.tar");
    let st = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{r}"))
        .arg(format!("docker-archive:{}:saved/app:7", arch.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let recs = s.store.import(&arch, None, &o, &NoProgress).unwrap();
    assert_eq!(recs[0].name, "docker.io/saved/app:7");
    assert_eq!(recs[0].config, img.config_digest, "same image ID as pushed");
    let m = Mounted::new(&s, "saved/app:7");
    assert!(m.path("www/index.html").is_file());
    drop(m);
    // Not an image at all.
    std::fs::write(t.path().join("junk"), b"hello").unwrap();
    assert!(s
        .store
        .import(&t.path().join("junk"), None, &o, &NoProgress)
        .is_err());
}

trait Len {
    fn layers_len(&self) -> usize;
}
impl Len for oci::image::ImageRecord {
    fn layers_len(&self) -> usize {
        self.layers.len()
    }
}

#[test]
fn cli_pull_ls_inspect_rm_prune_and_one_line_errors() {
    let reg = registry();
    let r = push(&reg.host(), "cli/app:1", &busybox_image());
    let s = Store::new();
    let knode = |args: &[&str]| s.knode(args);
    let out = knode(&["image", "pull", &r.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 fetched"));
    let ls = String::from_utf8(knode(&["image", "ls"]).stdout).unwrap();
    assert!(
        ls.starts_with("IMAGE")
            && ls.contains(&format!("{}/cli/app", reg.host()))
            && !ls.contains("latest"),
        "{ls}"
    );
    let js: serde_json::Value =
        serde_json::from_slice(&knode(&["image", "inspect", &r.to_string()]).stdout).unwrap();
    assert_eq!(js["config"]["Cmd"][0], "httpd");
    let out = knode(&["image", "pull", &format!("{}/cli/none:1", reg.host())]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("not found"), "{err}");
    let out = knode(&["image", "rm", &r.to_string()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Untagged"));
    let out = knode(&["image", "prune"]);
    assert!(out.status.success());
    s.assert_empty();
}

/// A throwaway CA and a server certificate for `name`, made with openssl.
fn make_certs(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=knode test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        &format!("/CN={name}"),
    ]);
    std::fs::write(
        dir.join("ext"),
        format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    (dir.join("ca.pem"), dir.join("srv.pem"), dir.join("srv.key"))
}

#[test]
fn https_registry_is_verified_against_a_custom_ca() {
    let t = tempfile::tempdir().unwrap();
    let name = "registry.knode.test";
    let (ca, cert, key) = make_certs(t.path(), name);
    let reg = knode::cli::demo::registry::LocalRegistry::start_with(
        &knode::cli::demo::registry::RegistryOptions {
            tls: Some((cert, key)),
            ..Default::default()
        },
    )
    .unwrap();
    // Not a loopback name, so knode insists on HTTPS; the name resolves to the test registry.
    let resolve = vec![(name.to_string(), reg.addr)];
    let trusted = oci::registry::ClientOptions {
        ca_files: vec![ca],
        resolve: resolve.clone(),
        retries: 1,
        ..Default::default()
    };
    let host = format!("{name}:{}", reg.addr.port());
    let r = push_with(&host, "tls/app:1", &busybox_image(), trusted.clone());
    let s = Store::new();
    let untrusted = oci::registry::ClientOptions {
        resolve,
        retries: 1,
        ..Default::default()
    };
    let e = s
        .pull_with(&r.to_string(), untrusted)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unreachable") && e.to_lowercase().contains("certificate"),
        "{e}"
    );
    s.assert_empty();
    let rep = s.pull_with(&r.to_string(), trusted).unwrap();
    assert_eq!(rep.layers_fetched, 1);
}

#[test]
fn images_with_many_layers_mount_within_the_option_page_limit() {
    let reg = registry();
    let mut b = ImageBuilder::new();
    for i in 0..150 {
        b = b.layer(
            &TarBuilder::new()
                .file(&format!("layer-{i:03}"), 0o644, format!("{i}").as_bytes())
                .finish(),
            Compression::Gzip,
        );
    }
    let img = b.build();
    let r = push(&reg.host(), "tall/app:1", &img);
    let s = Store::new();
    let rec = s.pull(&r.to_string()).unwrap().image;
    assert_eq!(rec.layers.len(), 150);
    // Plain lowerdir paths for this store would not fit in one page.
    let plain: usize = rec
        .layers
        .iter()
        .map(|l| s.store.snapshots().fs_dir(&l.chain_id).as_os_str().len() + 1)
        .sum();
    assert!(
        plain > 4096,
        "the test must exceed the page limit with full paths ({plain})"
    );
    let m = Mounted::new(&s, &r.to_string());
    assert_eq!(std::fs::read_to_string(m.path("layer-000")).unwrap(), "0");
    assert_eq!(std::fs::read_to_string(m.path("layer-149")).unwrap(), "149");
}

#[test]
fn concurrent_pulls_of_one_image_share_one_snapshot() {
    let reg = registry();
    let img = ImageBuilder::new()
        .layer(&busybox_tar(), Compression::Gzip)
        .layer(&app_tar("c"), Compression::Gzip)
        .build();
    let r = push(&reg.host(), "conc/app:1", &img).to_string();
    let s = Store::new();
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3).map(|_| sc.spawn(|| s.pull(&r))).collect();
        for h in hs {
            h.join().unwrap().unwrap();
        }
    });
    let (done, tmp) = s.snapshot_dirs();
    assert_eq!(
        (done.len(), tmp.len()),
        (2, 0),
        "one snapshot per layer, no leftovers"
    );
    assert_eq!(s.store.list().unwrap().len(), 1);
    Mounted::new(&s, &r);
}

#[test]
fn implied_directories_inherit_lower_attributes() {
    let reg = registry();
    let mut tmp = oci::build::TarEntry::new("tmp", oci::tar::EntryKind::Dir);
    tmp.mode = 0o1777;
    tmp.mtime = 1_600_000_000;
    let mut opt = oci::build::TarEntry::new("opt", oci::tar::EntryKind::Dir);
    opt.mode = 0o750;
    opt.uid = 1000;
    let base = TarBuilder::new().entry(&tmp).entry(&opt).finish();
    // The top layer adds files without their parent directory entries.
    let top = TarBuilder::new()
        .file("tmp/x", 0o644, b"x")
        .file("opt/app/y", 0o644, b"y")
        .finish();
    let img = ImageBuilder::new()
        .layer(&base, Compression::Gzip)
        .layer(&top, Compression::Gzip)
        .build();
    let r = push(&reg.host(), "implied/app:1", &img);
    let s = Store::new();
    s.pull(&r.to_string()).unwrap();
    let m = Mounted::new(&s, &r.to_string());
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(m.path("tmp")).unwrap();
    assert_eq!(
        md.mode() & 0o7777,
        0o1777,
        "/tmp stays world-writable and sticky"
    );
    assert_eq!(md.mtime(), 1_600_000_000);
    let md = std::fs::metadata(m.path("opt")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o750, 1000));
    // A directory no lower layer has keeps the default.
    assert_eq!(
        std::fs::metadata(m.path("opt/app")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(std::fs::read(m.path("tmp/x")).unwrap(), b"x");
}

#[test]
fn a_hostile_import_archive_cannot_reach_host_files() {
    let t = tempfile::tempdir().unwrap();
    let img = busybox_image();
    let layout = t.path().join("layout");
    img.write_oci_layout(&layout, "v1").unwrap();
    // Replace the config blob with links to a host file, and add a device and a setuid file.
    let cfg = format!("blobs/sha256/{}", img.config_digest.hex());
    let mut tb = TarBuilder::new();
    let mut root = oci::build::TarEntry::new("./", oci::tar::EntryKind::Dir);
    root.mode = 0o777;
    tb.entry(&root);
    for entry in ["oci-layout", "index.json"] {
        tb.file(entry, 0o644, &std::fs::read(layout.join(entry)).unwrap());
    }
    for (d, b) in &img.layers {
        tb.file(&format!("blobs/sha256/{}", d.digest.hex()), 0o644, b);
    }
    tb.file(
        &format!("blobs/sha256/{}", img.manifest_digest.hex()),
        0o644,
        &img.manifest,
    );
    tb.symlink(&cfg, "/etc/passwd");
    tb.hardlink("blobs/sha256/other", "../../../../../../etc/passwd");
    let mut dev = oci::build::TarEntry::new("sda", oci::tar::EntryKind::Block);
    dev.dev = (8, 0);
    dev.mode = 0o666;
    tb.entry(&dev);
    tb.file("suid-sh", 0o4777, b"#!/bin/sh");
    let tar = t.path().join("evil.tar");
    std::fs::write(&tar, tb.finish()).unwrap();
    let s = Store::new();
    let e = s
        .store
        .import(&tar, None, &PullOptions::default(), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&img.config_digest.to_string()),
        "the config blob is missing, not read from /etc: {e}"
    );
    s.assert_empty();
    let leftovers: Vec<_> = std::fs::read_dir(s.root().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `registries.yaml` as k3s reads it: the tutorials' image names pulled from local mirrors
/// (with a rewrite, past a mirror that is down, from one that needs Basic auth), stored under
/// their own names; the registries themselves resolve to a closed port (no route out).
#[test]
fn mirrors_rewrite_fall_back_and_authenticate_and_a_bad_file_is_named() {
    let plain = registry();
    let locked = registry_with_basic("lab", "s3cret");
    push(
        &plain.host(),
        "tutorials/kubernetes-bootcamp:v1",
        &busybox_image(),
    );
    push_with(
        &locked.host(),
        "lab/redis:7",
        &busybox_image(),
        client_with(Some((&locked.host(), "lab", "s3cret"))),
    );
    let down = support::etcd::free_port();
    let s = Store::new();
    let config = s.root().join("registries.yaml");
    let write = |auth: &str| {
        std::fs::write(
            &config,
            format!(
                r#"mirrors:
  gcr.io:
    endpoint: ["http://127.0.0.1:{down}", "http://{plain}"]
    rewrite:
      "^google-samples/(.*)": "tutorials/$1"
  docker.io:
    endpoint: ["http://{locked}"]
    rewrite: {{"^library/(.*)": "lab/$1"}}
configs:
  "{locked}":
{auth}
"#,
                plain = plain.host(),
                locked = locked.host(),
            ),
        )
        .unwrap()
    };
    write("    auth: {username: lab, password: s3cret}");
    let knode = |args: &[&str]| {
        let mut a = vec![
            "--registry-config",
            config.to_str().unwrap(),
            "--registry-resolve",
        ];
        // Nothing listens on 127.0.0.1:443 here: the registries refuse at once.
        let gcr = "gcr.io:443:127.0.0.1".to_string();
        let hub = "registry-1.docker.io:443:127.0.0.1".to_string();
        a.extend([gcr.as_str(), "--registry-resolve", hub.as_str()]);
        a.extend(args);
        s.knode(&a)
    };
    let out = knode(&[
        "image",
        "pull",
        "gcr.io/google-samples/kubernetes-bootcamp:v1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = knode(&["image", "pull", "redis:7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = String::from_utf8(knode(&["image", "ls"]).stdout).unwrap();
    assert!(
        ls.contains("gcr.io/google-samples/kubernetes-bootcamp")
            && ls.contains("docker.io/library/redis"),
        "{ls}"
    );
    assert!(!ls.contains("127.0.0.1"), "{ls}");
    // Without the credentials every source fails, and the error names each.
    write("    tls: {insecure_skip_verify: false}");
    let out = knode(&["image", "pull", "redis:6"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("every source failed")
            && err.contains(&format!("mirror http://{}", locked.host()))
            && err.contains("refused authentication")
            && err.contains("docker.io: "),
        "{err}"
    );
    // A bad file: the pull is refused with the file and the field named; nothing stored
    // is touched.
    std::fs::write(
        &config,
        "mirrors:\n  gcr.io:\n    endpoints: [\"http://x\"]\n",
    )
    .unwrap();
    let out = knode(&[
        "image",
        "pull",
        "gcr.io/google-samples/kubernetes-bootcamp:v1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "{}: mirrors.gcr.io: unknown field `endpoints`",
            config.display()
        )),
        "{err}"
    );
    assert_eq!(s.store.list().unwrap().len(), 2);
}
