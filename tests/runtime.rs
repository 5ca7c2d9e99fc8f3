//! End-to-end tests of knode's own runtime through `knode run` (as root).

mod support;

use oci::build::{ImageBuilder, TarBuilder};
use oci::image::PullOptions;
use oci::progress::NoProgress;
use oci::spec::Compression;
use support::*;

fn sh(s: &Store, flags: &[&str], script: &str) -> (i32, String, String) {
    let mut a = vec!["run"];
    a.extend_from_slice(flags);
    a.extend_from_slice(&["test/busybox:1", "sh", "-c", script]);
    let o = s.knode(&a);
    assert_no_leaks(s);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Nothing of a finished container stays: no mount, no directory.
fn assert_no_leaks(s: &Store) {
    let root = s.root().to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root), "mounts left under {root}");
    for d in [s.root().join("containers"), s.root().join("run/containers")] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            assert_eq!(rd.count(), 0, "container dirs left in {}", d.display());
        }
    }
}

fn status_field(out: &str, key: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(key))
        .map(|l| l[key.len()..].trim().to_string())
        .unwrap_or_else(|| panic!("{key} not in {out}"))
}

#[test]
fn containers_are_isolated_and_confined_by_default() {
    let s = Store::with_busybox();
    let script = r#"
echo pid=$$ host=$(hostname)
grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status
echo procs=$(ls /proc | grep -c '^[0-9]')
echo links=$(ls /sys/class/net | tr '\n' ' ')
echo timer_list=$(cat /proc/timer_list 2>/dev/null | wc -c)
echo keys=$(ls -l /proc/keys | cut -c1)
echo firmware=$(ls /sys/firmware | wc -l)
echo x > /proc/sys/kernel/hostname 2>/dev/null && echo procsys=writable || echo procsys=readonly
mkdir /sys/kernel/knode 2>/dev/null && echo sys=writable || echo sys=readonly
mount -t tmpfs none /mnt 2>/dev/null && echo mount=allowed || echo mount=denied
unshare -n true 2>/dev/null && echo unshare=allowed || echo unshare=denied
echo devnull=$(ls -l /dev/null | cut -c1)
mknod /tmp/mem c 1 1 && (head -c1 /tmp/mem >/dev/null 2>&1 && echo mknod=usable || echo mknod=unusable)
echo sigign=$(grep SigIgn /proc/self/status | cut -f2)
"#;
    let (code, out, err) = sh(&s, &["--hostname", "web-1"], script);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pid=1 host=web-1"), "{out}");
    // containerd's default capability set, and nothing else.
    assert_eq!(status_field(&out, "CapEff:"), "00000000a80425fb");
    assert_eq!(status_field(&out, "CapBnd:"), "00000000a80425fb");
    assert_eq!(status_field(&out, "NoNewPrivs:"), "1");
    assert_eq!(status_field(&out, "Seccomp:"), "2");
    let procs: usize = status_field(&out, "procs=").parse().unwrap();
    assert!(procs <= 4, "own PID namespace: {procs} processes visible");
    assert_eq!(status_field(&out, "links="), "lo", "own network namespace");
    if std::path::Path::new("/proc/timer_list").exists() {
        assert_eq!(status_field(&out, "timer_list="), "0", "masked");
    }
    // Masks: the null device over /proc/keys, an empty tmpfs over /sys/firmware.
    assert_eq!(status_field(&out, "keys="), "c", "{out}");
    assert_eq!(status_field(&out, "firmware="), "0", "{out}");
    for want in [
        "procsys=readonly",
        "sys=readonly",
        "mount=denied",
        "unshare=denied",
        "devnull=c",
        "mknod=unusable",
        "sigign=0000000000000000",
    ] {
        assert!(out.contains(want), "{want} missing in {out}");
    }
}

#[test]
fn exit_codes_signals_and_exec_errors() {
    let s = Store::with_busybox();
    assert_eq!(sh(&s, &[], "exit 7").0, 7);
    // PID 1 of a namespace cannot be killed from inside it; a child shell can.
    assert_eq!(sh(&s, &[], "sh -c 'kill -9 $$'; exit $?").0, 137);
    let o = s.knode(&["run", "test/busybox:1", "no-such-command"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("executable file not found") && err.contains("no-such-command"),
        "{err}"
    );
    assert_no_leaks(&s);
    let o = s.knode(&["run", "test/missing:1"]);
    assert!(!o.status.success());
    assert_no_leaks(&s);
}

#[test]
fn users_capabilities_and_privileged() {
    let s = Store::with_busybox();
    let (_, out, err) = sh(
        &s,
        &["--user", "1000:1000"],
        "id -u; id -g; grep CapEff /proc/self/status",
    );
    assert_eq!(
        out.lines().take(2).collect::<Vec<_>>(),
        vec!["1000", "1000"],
        "{err}"
    );
    assert_eq!(
        status_field(&out, "CapEff:"),
        "0000000000000000",
        "non-root has no effective caps"
    );
    let (_, out, _) = sh(&s, &["--user", "nobody"], "id -u");
    assert_eq!(
        out.trim(),
        "65534",
        "name resolved in the image's /etc/passwd"
    );
    let (_, out, _) = sh(
        &s,
        &["--cap-drop", "CHOWN", "--cap-add", "NET_ADMIN"],
        "grep CapEff /proc/self/status",
    );
    assert_eq!(
        status_field(&out, "CapEff:"),
        format!("{:016x}", 0xa80425fbu64 & !1 | (1 << 12))
    );
    let (_, out, _) = sh(
        &s,
        &["--privileged"],
        "grep -E 'Seccomp:|NoNewPrivs:' /proc/self/status",
    );
    assert_eq!(status_field(&out, "Seccomp:"), "0");
    assert_eq!(status_field(&out, "NoNewPrivs:"), "0");
    let o = s.knode(&["run", "--cap-add", "BOGUS", "test/busybox:1", "true"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown capability"));
    assert_no_leaks(&s);
}

#[test]
fn rootfs_env_and_workdir() {
    let s = Store::with_busybox();
    let (code, out, _) = sh(
        &s,
        &["-e", "GREETING=hi", "-w", "/var/tmp/work"],
        "echo $GREETING $PATH; pwd; touch /new && echo wrote",
    );
    assert_eq!(code, 0);
    assert!(out.contains("hi /usr/local/sbin"), "{out}");
    assert!(
        out.contains("/var/tmp/work") && out.contains("wrote"),
        "{out}"
    );
    // The write went to the container's upper dir, not into the shared snapshot.
    let rec = s.store.get("test/busybox:1").unwrap();
    assert!(!s
        .store
        .snapshots()
        .fs_dir(&rec.layers[0].chain_id)
        .join("new")
        .exists());
    let (code, out, _) = sh(
        &s,
        &["--read-only"],
        "touch /x 2>/dev/null && echo writable || echo readonly",
    );
    assert_eq!((code, out.trim()), (0, "readonly"));
}

#[test]
fn image_symlinks_cannot_redirect_mounts_outside_the_root() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("dev-escape");
    let proc_target = outside.path().join("proc-escape");
    let image = |name: &str, evil: Vec<u8>, without: &[&str]| {
        let img = ImageBuilder::new()
            .layer(&busybox_tar_without(without), Compression::Gzip)
            .layer(&evil, Compression::Gzip)
            .build();
        let t = tempfile::tempdir().unwrap();
        img.write_oci_layout(t.path(), "1").unwrap();
        (img, t, name.to_string())
    };
    let s = Store::new();
    for (_, t, name) in [
        image(
            "test/evil-dev",
            TarBuilder::new()
                .symlink("dev", target.to_str().unwrap())
                .finish(),
            &["dev"],
        ),
        image(
            "test/evil-proc",
            TarBuilder::new()
                .symlink("proc", proc_target.to_str().unwrap())
                .finish(),
            &["proc"],
        ),
    ] {
        s.store
            .import(t.path(), Some(&name), &PullOptions::default(), &NoProgress)
            .unwrap();
    }
    let o = s.knode(&["run", "test/evil-dev:1", "sh", "-c", "ls /dev/null"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The symlink was followed inside the root instead: the directory exists only there.
    assert!(String::from_utf8_lossy(&o.stdout).contains("/dev/null"));
    // procfs is never mounted through a symlink (runc refuses it too: CVE-2023-28642).
    let o = s.knode(&["run", "test/evil-proc:1", "sh", "-c", "true"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("/proc is a symlink in the image: proc is not mounted through one"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !target.exists() && !proc_target.exists(),
        "a mount was redirected outside the container root"
    );
    assert_no_leaks(&s);
}

/// The busybox layer without some top-level directories.
fn busybox_tar_without(skip: &[&str]) -> Vec<u8> {
    let full = busybox_tar();
    let mut r = oci::tar::TarReader::new(&full[..]);
    let mut t = TarBuilder::new();
    while let Some(e) = r.next_entry().unwrap() {
        let p = e.path_lossy();
        if skip
            .iter()
            .any(|s| p == *s || p.starts_with(&format!("{s}/")))
        {
            continue;
        }
        let mut out = oci::build::TarEntry::new(&p, e.kind);
        out.mode = e.mode;
        out.link = e.link.clone();
        let mut data = vec![0u8; e.size as usize];
        let mut n = 0;
        while n < data.len() {
            n += r.read_data(&mut data[n..]).unwrap();
        }
        out.data = data;
        t.entry(&out);
    }
    t.finish()
}
