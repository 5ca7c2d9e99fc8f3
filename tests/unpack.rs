//! Privileged tests (run as root) of the layer applier `oci::apply::apply_layer` against the
//! twelve "Unpacker cases" of the reference (containerd's breakout table is the model).
//!
//! Every test that tries to escape works in a fresh temporary directory `BASE` holding the
//! layer root `BASE/root` and a "host" sentinel directory `BASE/outside` that a correct
//! applier never touches. Escape attempts only ever aim at `BASE/outside` (by its absolute
//! path or as `../outside`) or at `BASE` itself, so a buggy applier damages nothing but the
//! test's own temporary directory. The host's /etc/passwd is only ever read (and, in the
//! hardlink case, offered as a hardlink target, which does not modify it).
//!
//! Whiteout and opaque cases apply several layers into directories of their own and check
//! the merged view through a real read-only overlay mount.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use oci::apply::{apply_layer, ApplyError, ApplyStats};
use oci::build::{TarBuilder, TarEntry};
use oci::tar::{EntryKind, TarError};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn apply(dir: &Path, tar: &[u8]) -> Result<ApplyStats, ApplyError> {
    apply_layer(dir, tar).map(|(stats, _rest)| stats)
}

fn lmeta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn lexists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn readlink(p: &Path) -> PathBuf {
    fs::read_link(p).unwrap_or_else(|e| panic!("readlink {}: {e}", p.display()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn assert_file(p: &Path, data: &[u8]) {
    let m = lmeta(p);
    assert!(
        m.file_type().is_file(),
        "{} is not a regular file",
        p.display()
    );
    assert_eq!(read(p), data, "content of {}", p.display());
}

fn assert_dir(p: &Path) {
    assert!(lmeta(p).is_dir(), "{} is not a directory", p.display());
}

fn assert_symlink(p: &Path, target: &str) {
    assert!(
        lmeta(p).file_type().is_symlink(),
        "{} is not a symlink",
        p.display()
    );
    assert_eq!(readlink(p), Path::new(target), "target of {}", p.display());
}

/// An extended attribute of `p` (not following a final symlink), `None` if absent.
fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("lgetxattr {} {name}: {e}", p.display()),
    }
}

fn mode(p: &Path) -> u32 {
    lmeta(p).mode() & 0o7777
}

/// A fresh layer tar from a closure over the builder.
fn tar(f: impl FnOnce(&mut TarBuilder)) -> Vec<u8> {
    let mut t = TarBuilder::new();
    f(&mut t);
    t.finish()
}

fn entry(path: &str, kind: EntryKind) -> TarEntry {
    TarEntry::new(path, kind)
}

/// Everything observable about a tree, not following symlinks.
type Snapshot = BTreeMap<PathBuf, String>;

fn describe(p: &Path) -> String {
    let m = lmeta(p);
    let ft = m.file_type();
    let extra = if ft.is_file() {
        format!("data={:?}", read(p))
    } else if ft.is_symlink() {
        format!("link={:?}", readlink(p))
    } else {
        String::new()
    };
    format!(
        "ino={} mode={:o} uid={} gid={} nlink={} size={} rdev={} mtime={}.{} ctime={}.{} {extra}",
        m.ino(),
        m.mode(),
        m.uid(),
        m.gid(),
        m.nlink(),
        m.size(),
        m.rdev(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

fn snapshot_tree(top: &Path, out: &mut Snapshot) {
    out.insert(top.to_path_buf(), describe(top));
    if lmeta(top).is_dir() {
        for n in names(top) {
            snapshot_tree(&top.join(n), out);
        }
    }
}

/// A temporary directory with a layer root and a "host" sentinel directory beside it.
struct Env {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    outside: PathBuf,
    /// Names that may exist directly in `base` (layer dirs and mount points we made).
    known: Vec<String>,
    before: Snapshot,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = fs::canonicalize(tmp.path()).expect("canonicalize");
        let root = base.join("root");
        let outside = base.join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"sentinel").unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        fs::write(outside.join("sub").join("deep"), b"deep sentinel").unwrap();
        let mut env = Env {
            _tmp: tmp,
            base,
            root,
            outside,
            known: vec!["root".into(), "outside".into()],
            before: Snapshot::new(),
        };
        env.before = env.host_state();
        env
    }

    fn host_state(&self) -> Snapshot {
        let mut s = Snapshot::new();
        snapshot_tree(&self.outside, &mut s);
        s.insert("/etc/passwd".into(), describe(Path::new("/etc/passwd")));
        s
    }

    /// Asserts nothing outside the layer directories changed: the sentinel tree (contents,
    /// modes, owners, link counts, times), the host's /etc/passwd and the listing of `base`.
    fn assert_untouched(&self) {
        let now = self.host_state();
        for (p, d) in &self.before {
            assert_eq!(
                now.get(p),
                Some(d),
                "{} changed: an entry escaped the layer root",
                p.display()
            );
        }
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            self.before.keys().collect::<Vec<_>>(),
            "entries appeared in the sentinel directory"
        );
        let mut known = self.known.clone();
        known.sort();
        assert_eq!(
            names(&self.base),
            known,
            "entries appeared next to the layer root"
        );
    }

    /// A new, empty layer directory `base/<name>`.
    fn layer(&mut self, name: &str) -> PathBuf {
        let p = self.base.join(name);
        fs::create_dir(&p).unwrap();
        self.known.push(name.into());
        p
    }

    /// The sentinel's absolute path, e.g. `/tmp/.tmpXXXX/outside`.
    fn abs_out(&self) -> String {
        self.outside.to_str().unwrap().to_string()
    }

    /// The sentinel's absolute path without the leading slash (as a name inside the layer).
    fn rel_out(&self) -> String {
        self.abs_out().trim_start_matches('/').to_string()
    }

    /// Where an absolute or relative layer path lives inside the layer root.
    fn at(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

/// A read-only overlay of layer directories (topmost first), unmounted on drop.
struct Overlay {
    mnt: PathBuf,
}

impl Overlay {
    fn mount(env: &mut Env, top_first: &[&Path]) -> Overlay {
        let mnt = env.layer("merged");
        let lower: Vec<&str> = top_first.iter().map(|p| p.to_str().unwrap()).collect();
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", lower.join(":")))
            .arg(&mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount overlay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Overlay { mnt }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.mnt.join(p)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Symlinks used as parents of later entries stay inside the root
// ---------------------------------------------------------------------------------------------

#[test]
fn symlinked_parents_stay_inside_the_root() {
    let env = Env::new();
    let (abs, rel) = (env.abs_out(), env.rel_out());
    let t = tar(|t| {
        t.dir("etc", 0o755)
            .dir("x", 0o755)
            .dir("outside", 0o755)
            .dir(&rel, 0o755)
            .dir("a/b", 0o755)
            .dir("a/etc", 0o755)
            // absolute and relative links to the sentinel
            .symlink("abs", &abs)
            .symlink("rel", "../outside")
            // a chain: relative -> absolute -> relative
            .symlink("chain1", "chain2")
            .symlink("chain2", "/chain3")
            .symlink("chain3", "../../outside")
            // `..` inside link targets
            .symlink("dotdot", "/x/../etc")
            .symlink("dotdot2", "x/../../../outside")
            .symlink("xs", "a/b")
            .symlink("up", "xs/../etc")
            .symlink("a/b/up", "../../../../outside")
            .symlink("toroot", "/")
            .symlink("toroot2", "../../..")
            // later entries through them
            .file("abs/f_abs", 0o644, b"abs")
            .file("abs/newdir/f_deep", 0o644, b"deep")
            .dir("rel/d", 0o700)
            .file("rel/f_rel", 0o644, b"rel")
            .file("chain1/f_chain", 0o644, b"chain")
            .file("dotdot/f_dotdot", 0o644, b"dotdot")
            .file("dotdot2/f_dotdot2", 0o644, b"dotdot2")
            .file("up/f_up", 0o644, b"up")
            .file("a/b/up/f_nested", 0o644, b"nested")
            .file("toroot/f_root", 0o644, b"root")
            .file("toroot2/f_root2", 0o644, b"root2");
    });
    apply(&env.root, &t).expect("apply");

    assert_file(&env.at(&format!("{rel}/f_abs")), b"abs");
    assert_file(&env.at(&format!("{rel}/newdir/f_deep")), b"deep");
    assert_dir(&env.at("outside/d"));
    assert_eq!(mode(&env.at("outside/d")), 0o700);
    assert_file(&env.at("outside/f_rel"), b"rel");
    assert_file(&env.at("outside/f_chain"), b"chain");
    assert_file(&env.at("etc/f_dotdot"), b"dotdot");
    assert_file(&env.at("outside/f_dotdot2"), b"dotdot2");
    // `xs/../etc` is resolved by the kernel: xs is a/b, its parent is a, so a/etc.
    assert_file(&env.at("a/etc/f_up"), b"up");
    assert!(!lexists(&env.at("etc/f_up")));
    assert_file(&env.at("outside/f_nested"), b"nested");
    assert_file(&env.at("f_root"), b"root");
    assert_file(&env.at("f_root2"), b"root2");
    // The links themselves are untouched.
    assert_symlink(&env.at("abs"), &abs);
    assert_symlink(&env.at("rel"), "../outside");
    assert_symlink(&env.at("chain1"), "chain2");
    assert_symlink(&env.at("chain2"), "/chain3");
    assert_symlink(&env.at("chain3"), "../../outside");
    assert_symlink(&env.at("dotdot"), "/x/../etc");
    assert_symlink(&env.at("up"), "xs/../etc");
    assert_symlink(&env.at("a/b/up"), "../../../../outside");
    env.assert_untouched();
}

#[test]
fn dangling_symlinked_parents_never_escape() {
    // The targets do not exist inside the layer: an error or a file inside the root are both
    // acceptable, a file in the sentinel directory is not.
    let cases = [
        ("abs", "ABS", "abs/f"),
        ("rel", "../outside", "rel/f"),
        ("rel2", "../outside/sub", "rel2/deep"),
        ("abs2", "ABS/sub", "abs2/newdir/f"),
        ("dang", "/nonexistent/zzz", "dang/f"),
    ];
    for (name, target, file) in cases {
        let env = Env::new();
        let target = target.replace("ABS", &env.abs_out());
        let t = tar(|t| {
            t.symlink(name, &target).file(file, 0o644, b"pwned");
        });
        let r = apply(&env.root, &t);
        env.assert_untouched();
        assert_symlink(&env.at(name), &target);
        if r.is_ok() {
            // Then the file must be inside, where the link resolves from the layer root.
            let resolved = target.trim_start_matches("..").trim_start_matches('/');
            let rest = file.split_once('/').unwrap().1;
            assert_file(&env.at(&format!("{resolved}/{rest}")), b"pwned");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Hardlinks through symlinked parents; a hardlink to a symlink links the symlink
// ---------------------------------------------------------------------------------------------

#[test]
fn hardlinks_through_symlinked_parents_stay_inside() {
    let env = Env::new();
    let (abs, rel) = (env.abs_out(), env.rel_out());
    let t = tar(|t| {
        t.dir(&rel, 0o755)
            .file(&format!("{rel}/secret"), 0o644, b"inside abs secret")
            .dir("outside", 0o755)
            .file("outside/secret", 0o644, b"inside rel secret")
            .dir("etc", 0o755)
            .file("etc/passwd", 0o644, b"inside passwd")
            .file("data", 0o644, b"data")
            .symlink("abs", &abs)
            .symlink("rel", "../outside")
            .symlink("etcl", "/etc")
            // link targets through symlinked parents
            .hardlink("h_abs", "abs/secret")
            .hardlink("h_rel", "rel/secret")
            .hardlink("h_etc", "etcl/passwd")
            // link names through symlinked parents
            .hardlink("abs/h_name", "data")
            .hardlink("rel/h_name2", "../data");
    });
    apply(&env.root, &t).expect("apply");

    let ino = |p: &str| lmeta(&env.at(p)).ino();
    assert_eq!(ino("h_abs"), ino(&format!("{rel}/secret")));
    assert_file(&env.at("h_abs"), b"inside abs secret");
    assert_eq!(ino("h_rel"), ino("outside/secret"));
    assert_file(&env.at("h_rel"), b"inside rel secret");
    assert_eq!(ino("h_etc"), ino("etc/passwd"));
    assert_file(&env.at("h_etc"), b"inside passwd");
    assert_eq!(ino(&format!("{rel}/h_name")), ino("data"));
    assert_eq!(ino("outside/h_name2"), ino("data"));
    assert_eq!(lmeta(&env.at("data")).nlink(), 3);
    env.assert_untouched();
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink() {
    let env = Env::new();
    let target = format!("{}/secret", env.abs_out());
    let t = tar(|t| {
        t.symlink("s", &target) // dangling inside the layer, a real file on the host
            .dir("d", 0o755)
            .file("d/f", 0o644, b"f")
            .symlink("sd", "d")
            .hardlink("hs", "s")
            .hardlink("hsd", "sd");
    });
    apply(&env.root, &t).expect("apply");
    for (link, orig, to) in [("hs", "s", target.as_str()), ("hsd", "sd", "d")] {
        assert_symlink(&env.at(link), to);
        assert_eq!(lmeta(&env.at(link)).ino(), lmeta(&env.at(orig)).ino());
        assert_eq!(lmeta(&env.at(orig)).nlink(), 2);
    }
    env.assert_untouched();
}

#[test]
fn hardlink_targets_must_exist_in_the_layer() {
    for target in [
        "missing",
        "../outside/secret",
        "ABS/secret",
        "abs/secret",
        "rel/secret",
        ".",
        "/",
    ] {
        let env = Env::new();
        let target = target.replace("ABS", &env.abs_out());
        let t = tar(|t| {
            t.symlink("abs", &env.abs_out())
                .symlink("rel", "../outside")
                .hardlink("h", &target);
        });
        let r = apply(&env.root, &t);
        assert!(
            r.is_err(),
            "hardlink to {target:?} (not in the layer) was accepted"
        );
        assert!(!lexists(&env.at("h")), "hardlink to {target:?} created");
        env.assert_untouched();
    }
}

// ---------------------------------------------------------------------------------------------
// 3. `../` and absolute names; entries that resolve to the root itself
// ---------------------------------------------------------------------------------------------

#[test]
fn dotdot_and_absolute_names_land_inside() {
    let env = Env::new();
    let rel = env.rel_out();
    let deep_dotdot = format!("{}{rel}/dd", "../".repeat(12));
    let absolute = format!("{}/abs_entry", env.abs_out());
    let t = tar(|t| {
        t.file("../escape", 0o644, b"escape")
            .file(&deep_dotdot, 0o644, b"dd")
            .file(&absolute, 0o644, b"absolute")
            .file("/../x", 0o644, b"x")
            .file("a/../../y", 0o644, b"y")
            .file("./z/../w", 0o644, b"w")
            .dir("../d", 0o710)
            .file("../d/../../f", 0o644, b"f")
            .symlink("../../l", "target");
    });
    apply(&env.root, &t).expect("apply");
    assert_file(&env.at("escape"), b"escape");
    assert_file(&env.at(&format!("{rel}/dd")), b"dd");
    assert_file(&env.at(&format!("{rel}/abs_entry")), b"absolute");
    assert_file(&env.at("x"), b"x");
    assert_file(&env.at("y"), b"y");
    assert_file(&env.at("w"), b"w");
    assert_dir(&env.at("d"));
    assert_eq!(mode(&env.at("d")), 0o710);
    assert_file(&env.at("f"), b"f");
    assert_symlink(&env.at("l"), "target");
    env.assert_untouched();
}

#[test]
fn directory_entries_resolving_to_the_root_apply_attrs_to_it() {
    for name in ["./", ".", "/", "..", "../..", "a/..", "/./../"] {
        let env = Env::new();
        let mut e = entry(name, EntryKind::Dir);
        e.mode = 0o751;
        e.uid = 1234;
        e.gid = 4321;
        e.mtime = 1_111_111;
        let t = tar(|t| {
            t.entry(&e).file("f", 0o644, b"child").dir("sub", 0o755);
        });
        apply(&env.root, &t).unwrap_or_else(|err| panic!("{name:?}: {err}"));
        let m = lmeta(&env.root);
        assert!(m.is_dir(), "{name:?}: root is no longer a directory");
        assert_eq!(m.mode() & 0o7777, 0o751, "{name:?}: root mode");
        assert_eq!((m.uid(), m.gid()), (1234, 4321), "{name:?}: root owner");
        // The children written afterwards must not leave the root's mtime changed.
        assert_eq!(m.mtime(), 1_111_111, "{name:?}: root mtime");
        assert_file(&env.at("f"), b"child");
        // "a/.." must not create "a".
        assert_eq!(names(&env.root), ["f", "sub"], "{name:?}");
        env.assert_untouched();
    }
}

#[test]
fn directory_entry_resolving_to_the_root_applies_its_xattrs_to_it() {
    let env = Env::new();
    let mut e = entry("./", EntryKind::Dir);
    e.mode = 0o755;
    e.xattrs = vec![("user.rootattr".into(), b"on the root".to_vec())];
    let mut d = entry("d", EntryKind::Dir);
    d.xattrs = vec![("user.rootattr".into(), b"on d".to_vec())];
    let t = tar(|t| {
        t.entry(&e).entry(&d);
    });
    apply(&env.root, &t).expect("apply");
    assert_eq!(
        xattr(&env.at("d"), "user.rootattr").as_deref(),
        Some(&b"on d"[..])
    );
    assert_eq!(
        xattr(&env.root, "user.rootattr").as_deref(),
        Some(&b"on the root"[..]),
        "the xattrs of a `./` entry were not applied to the layer root"
    );
}

#[test]
fn non_directory_entries_resolving_to_the_root_are_rejected() {
    let kinds = [
        (".", EntryKind::File),
        ("..", EntryKind::File),
        ("a/..", EntryKind::File),
        ("/.", EntryKind::File),
        ("./", EntryKind::Fifo),
        ("..", EntryKind::Char),
        ("/", EntryKind::Hardlink),
        (".", EntryKind::Hardlink),
    ];
    for (name, kind) in kinds {
        let env = Env::new();
        let mut e = entry(name, kind);
        e.data = if kind == EntryKind::File {
            b"data".to_vec()
        } else {
            vec![]
        };
        e.link = b"f".to_vec();
        e.mode = 0o777;
        let t = tar(|t| {
            t.file("f", 0o644, b"f").entry(&e);
        });
        let r = apply(&env.root, &t);
        assert!(r.is_err(), "{kind:?} named {name:?} was accepted");
        assert!(lmeta(&env.root).is_dir());
        let m = lmeta(&env.root);
        assert_ne!(
            m.mode() & 0o7777,
            0o777,
            "{kind:?} {name:?} chmodded the root"
        );
        env.assert_untouched();
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A symlink named `.` or `/` (umoci CVE-2021-29136)
// ---------------------------------------------------------------------------------------------

#[test]
fn symlink_named_dot_or_slash_is_rejected() {
    for name in [".", "/", "./", "..", "a/..", "/./"] {
        for target in ["ABS", "../outside", "/"] {
            let env = Env::new();
            let target = target.replace("ABS", &env.abs_out());
            let t = tar(|t| {
                t.symlink(name, &target)
                    .file("pwned", 0o644, b"pwned")
                    .file("sub/pwned", 0o644, b"pwned")
                    .dir("newdir", 0o777);
            });
            let r = apply(&env.root, &t);
            assert!(
                r.is_err(),
                "symlink named {name:?} -> {target:?} was accepted"
            );
            let m = lmeta(&env.root);
            assert!(m.is_dir() && !m.file_type().is_symlink());
            env.assert_untouched();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Symlink replaced by a directory and back; a file replacing a non-empty directory
// ---------------------------------------------------------------------------------------------

#[test]
fn symlink_replaced_by_a_directory_and_back() {
    let env = Env::new();
    let abs = env.abs_out();
    let t = tar(|t| {
        // symlink -> directory: the directory replaces the link, it is not followed
        t.symlink("d", &abs)
            .dir("d", 0o750)
            .file("d/f", 0o644, b"in d")
            .symlink("rd", "../outside")
            .dir("rd", 0o755)
            .file("rd/secret", 0o644, b"in rd")
            // directory -> symlink
            .dir("e", 0o755)
            .file("e/g", 0o644, b"g")
            .symlink("e", "../outside")
            // symlink -> directory -> symlink
            .symlink("d2", "x")
            .dir("d2", 0o755)
            .file("d2/h", 0o644, b"h")
            .symlink("d2", "y");
    });
    apply(&env.root, &t).expect("apply");
    assert_dir(&env.at("d"));
    assert_eq!(mode(&env.at("d")), 0o750);
    assert_eq!(names(&env.at("d")), ["f"]);
    assert_file(&env.at("d/f"), b"in d");
    assert_dir(&env.at("rd"));
    assert_file(&env.at("rd/secret"), b"in rd");
    assert_symlink(&env.at("e"), "../outside");
    assert_symlink(&env.at("d2"), "y");
    assert_eq!(names(&env.root), ["d", "d2", "e", "rd"]);
    env.assert_untouched();
}

#[test]
fn file_replaces_a_non_empty_directory() {
    let env = Env::new();
    let abs = env.abs_out();
    let t = tar(|t| {
        t.dir("n", 0o755)
            .file("n/a", 0o644, b"a")
            .dir("n/sub", 0o555)
            .file("n/sub/b", 0o444, b"b")
            .symlink("n/sub/link_abs", &abs)
            .symlink("n/link_rel", "../../outside")
            .symlink("n/link_secret", &format!("{abs}/secret"))
            .file("n", 0o640, b"now a file")
            // a symlink replacing a non-empty directory
            .dir("m", 0o755)
            .file("m/x", 0o644, b"x")
            .symlink("m/out", &abs)
            .symlink("m", &format!("{abs}/sub"))
            // a directory replacing a file
            .file("k", 0o644, b"k")
            .dir("k", 0o700)
            .file("k/in", 0o644, b"in");
    });
    apply(&env.root, &t).expect("apply");
    assert_file(&env.at("n"), b"now a file");
    assert_eq!(mode(&env.at("n")), 0o640);
    assert_symlink(&env.at("m"), &format!("{abs}/sub"));
    assert_dir(&env.at("k"));
    assert_eq!(mode(&env.at("k")), 0o700);
    assert_file(&env.at("k/in"), b"in");
    assert_eq!(names(&env.root), ["k", "m", "n"]);
    env.assert_untouched();
}

// ---------------------------------------------------------------------------------------------
// 6. Invalid whiteout names; `.wh.<symlink>` removes the link, not its target
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_whiteout_names_are_rejected() {
    for name in [".wh..", ".wh...", "etc/.wh..", "etc/.wh...", "/.wh.."] {
        let env = Env::new();
        let t = tar(|t| {
            t.dir("etc", 0o755)
                .file("etc/passwd", 0o644, b"passwd")
                .file(name, 0o644, b"");
        });
        let r = apply(&env.root, &t);
        assert!(
            matches!(r, Err(ApplyError::Rejected { .. })),
            "whiteout {name:?}: {r:?}"
        );
        assert!(!is_whiteout(&env.at("etc")), "{name:?} whited out etc");
        env.assert_untouched();
    }
}

#[test]
fn whiteout_of_a_symlink_removes_the_link_not_its_target() {
    let mut env = Env::new();
    let l1 = env.layer("l1");
    let l2 = env.layer("l2");
    let t1 = tar(|t| {
        t.dir("etc", 0o755)
            .file("etc/passwd", 0o644, b"lower passwd")
            .symlink("link", "/etc/passwd")
            .symlink("rlink", "etc/passwd")
            .symlink("dlink", "etc");
    });
    let t2 = tar(|t| {
        t.file(".wh.link", 0o644, b"")
            .file(".wh.rlink", 0o644, b"")
            .file(".wh.dlink", 0o644, b"");
    });
    apply(&l1, &t1).expect("layer 1");
    apply(&l2, &t2).expect("layer 2");
    assert!(is_whiteout(&l2.join("link")));
    assert!(is_whiteout(&l2.join("dlink")));
    assert_eq!(names(&l2), ["dlink", "link", "rlink"]);

    let ov = Overlay::mount(&mut env, &[&l2, &l1]);
    assert!(!lexists(&ov.path("link")));
    assert!(!lexists(&ov.path("rlink")));
    assert!(!lexists(&ov.path("dlink")));
    assert_file(&ov.path("etc/passwd"), b"lower passwd");
    assert_eq!(names(&ov.mnt), ["etc"]);
    drop(ov);
    env.assert_untouched();
}

// ---------------------------------------------------------------------------------------------
// 7. Whiteouts under symlinked or dangling-symlink parents never escape
// ---------------------------------------------------------------------------------------------

#[test]
fn whiteouts_under_symlinked_parents_never_escape() {
    let cases: &[&[(&str, &str)]] = &[
        // (symlink name, target) ..., then whiteouts are listed with an empty target
        &[("abs", "ABS"), ("abs/.wh.secret", "")],
        &[("abs", "ABS"), ("abs/.wh.sub", "")],
        &[("rel", "../outside"), ("rel/.wh.secret", "")],
        &[("rel", "../outside/sub"), ("rel/.wh.deep", "")],
        &[("c1", "c2"), ("c2", "../outside/sub"), ("c1/.wh.deep", "")],
        &[("dang", "/nonexistent/zzz"), ("dang/.wh.x", "")],
        &[("dang", "/nonexistent/zzz"), ("dang/sub/.wh.y", "")],
        &[("abs", "ABS"), ("abs/sub/.wh.deep", "")],
        &[("abs", "ABS"), ("abs/.wh..wh..opq", "")],
        &[("abs", "ABS/sub"), ("abs/.wh..wh..opq", "")],
        &[("rel", "../outside"), ("rel/sub/.wh..wh..opq", "")],
    ];
    for case in cases {
        let env = Env::new();
        let abs = env.abs_out();
        let t = tar(|t| {
            for (name, target) in case.iter() {
                if target.is_empty() {
                    t.file(name, 0o644, b"");
                } else {
                    t.symlink(name, &target.replace("ABS", &abs));
                }
            }
        });
        let _ = apply(&env.root, &t);
        env.assert_untouched();
        for (name, target) in case.iter().filter(|c| !c.1.is_empty()) {
            assert_symlink(&env.at(name), &target.replace("ABS", &abs));
        }
    }
}

#[test]
fn whiteouts_under_a_symlink_to_a_layer_directory_stay_in_the_layer() {
    let env = Env::new();
    let (abs, rel) = (env.abs_out(), env.rel_out());
    let t = tar(|t| {
        t.dir(&rel, 0o755)
            .file(&format!("{rel}/secret"), 0o644, b"own")
            .symlink("abs", &abs)
            .symlink("rel", "../outside")
            // an entry of this same layer: not removed
            .file("abs/.wh.secret", 0o644, b"")
            // a lower-layer name: whited out inside the layer
            .file("abs/.wh.other", 0o644, b"")
            .file("rel/.wh.other", 0o644, b"");
    });
    apply(&env.root, &t).expect("apply");
    assert_file(&env.at(&format!("{rel}/secret")), b"own");
    assert!(is_whiteout(&env.at(&format!("{rel}/other"))));
    // `rel` is dangling inside the layer: no whiteout anywhere for it.
    assert!(!lexists(&env.at("outside")));
    assert_symlink(&env.at("abs"), &abs);
    assert_symlink(&env.at("rel"), "../outside");
    env.assert_untouched();
}

#[test]
fn later_layer_whiteout_under_a_lower_symlink_never_escapes() {
    let mut env = Env::new();
    let abs = env.abs_out();
    let l1 = env.layer("l1");
    let l2 = env.layer("l2");
    let t1 = tar(|t| {
        t.symlink("abs", &abs).symlink("rel", "../outside");
    });
    let t2 = tar(|t| {
        t.file("abs/.wh.secret", 0o644, b"")
            .file("rel/sub/.wh.deep", 0o644, b"")
            .file("abs/.wh..wh..opq", 0o644, b"");
    });
    apply(&l1, &t1).expect("layer 1");
    let _ = apply(&l2, &t2);
    assert_symlink(&l1.join("abs"), &abs);
    // Whatever layer 2 holds, it holds no symlink and nothing outside it changed.
    for n in names(&l2) {
        assert!(!lmeta(&l2.join(&n)).file_type().is_symlink(), "{n}");
    }
    env.assert_untouched();
}

// ---------------------------------------------------------------------------------------------
// 8. A whiteout of a missing name is a no-op; a directory named `.wh.x/` is a normal path
// ---------------------------------------------------------------------------------------------

#[test]
fn whiteout_of_a_missing_name_is_a_noop() {
    let mut env = Env::new();
    let l1 = env.layer("l1");
    let l2 = env.layer("l2");
    let t1 = tar(|t| {
        t.file("a", 0o644, b"a")
            .dir("d", 0o755)
            .file("d/b", 0o644, b"b");
    });
    let t2 = tar(|t| {
        t.file(".wh.missing", 0o644, b"")
            .file("d/.wh.missing2", 0o644, b"")
            .file("nodir/.wh.missing3", 0o644, b"");
    });
    apply(&l1, &t1).expect("layer 1");
    apply(&l2, &t2).expect("layer 2");
    assert!(!lexists(&l2.join("missing")) || is_whiteout(&l2.join("missing")));
    let ov = Overlay::mount(&mut env, &[&l2, &l1]);
    // `nodir` may appear as an empty directory (the whiteout's parent); nothing else may.
    let merged: Vec<String> = names(&ov.mnt)
        .into_iter()
        .filter(|n| n != "nodir")
        .collect();
    assert_eq!(merged, ["a", "d"]);
    // (A directory present in one layer only is not merged, so overlayfs may still list the
    // whiteout device in it; it must not be reachable.)
    assert!(!lexists(&ov.path("nodir/missing3")));
    assert!(!lexists(&ov.path("missing")));
    assert!(!lexists(&ov.path("d/missing2")));
    assert_eq!(names(&ov.path("d")), ["b"]);
    assert_file(&ov.path("a"), b"a");
    assert_file(&ov.path("d/b"), b"b");
    drop(ov);
    env.assert_untouched();
}

#[test]
fn a_directory_named_like_a_whiteout_is_a_normal_path() {
    // Reference: "a directory named `.wh.x/` holding files is a normal path". The directory
    // entry must neither whiteout `x` nor lose its own attributes.
    let mut env = Env::new();
    let l1 = env.layer("l1");
    let l2 = env.layer("l2");
    let t1 = tar(|t| {
        t.file("x", 0o644, b"lower x");
    });
    let t2 = tar(|t| {
        t.dir(".wh.x", 0o750).file(".wh.x/file", 0o644, b"inner");
    });
    apply(&l1, &t1).expect("layer 1");
    apply(&l2, &t2).expect("layer 2");
    assert_file(&l2.join(".wh.x/file"), b"inner");
    assert!(
        !lexists(&l2.join("x")),
        "the directory entry `.wh.x/` was applied as a whiteout of `x`"
    );
    assert_dir(&l2.join(".wh.x"));
    assert_eq!(mode(&l2.join(".wh.x")), 0o750, "mode of `.wh.x/`");
    let ov = Overlay::mount(&mut env, &[&l2, &l1]);
    assert_file(&ov.path("x"), b"lower x");
    assert_file(&ov.path(".wh.x/file"), b"inner");
    drop(ov);
    env.assert_untouched();
}

// ---------------------------------------------------------------------------------------------
// 9. Opaque whiteouts after their siblings; a whiteout never removes its own layer's entries
// ---------------------------------------------------------------------------------------------

#[test]
fn opaque_whiteout_keeps_own_siblings_and_hides_lower_content() {
    for opaque_first in [false, true] {
        let mut env = Env::new();
        let l1 = env.layer("l1");
        let l2 = env.layer("l2");
        let t1 = tar(|t| {
            t.dir("d", 0o755)
                .file("d/old", 0o644, b"old")
                .file("d/same", 0o644, b"lower same")
                .dir("d/sub", 0o755)
                .file("d/sub/x", 0o644, b"x")
                .file("top", 0o644, b"top");
        });
        let t2 = tar(|t| {
            t.dir("d", 0o755);
            if opaque_first {
                t.file("d/.wh..wh..opq", 0o644, b"");
            }
            t.file("d/new", 0o644, b"new")
                .file("d/same", 0o644, b"upper same")
                .dir("d/sub2", 0o755)
                .file("d/sub2/y", 0o644, b"y");
            if !opaque_first {
                t.file("d/.wh..wh..opq", 0o644, b"");
            }
        });
        apply(&l1, &t1).expect("layer 1");
        apply(&l2, &t2).expect("layer 2");
        assert_eq!(
            xattr(&l2.join("d"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(names(&l2.join("d")), ["new", "same", "sub2"]);
        let ov = Overlay::mount(&mut env, &[&l2, &l1]);
        assert_eq!(names(&ov.path("d")), ["new", "same", "sub2"]);
        assert_file(&ov.path("d/new"), b"new");
        assert_file(&ov.path("d/same"), b"upper same");
        assert_file(&ov.path("d/sub2/y"), b"y");
        assert_file(&ov.path("top"), b"top");
        drop(ov);
        env.assert_untouched();
    }
}

#[test]
fn whiteout_never_removes_entries_of_its_own_layer() {
    let mut env = Env::new();
    let l1 = env.layer("l1");
    let l2 = env.layer("l2");
    let t1 = tar(|t| {
        t.dir("d", 0o755)
            .file("d/a", 0o644, b"lower a")
            .file("d/b", 0o644, b"lower b")
            .file("x", 0o644, b"lower x")
            .dir("g", 0o755)
            .file("g/lower", 0o644, b"lower g")
            .file("s", 0o644, b"lower s")
            .dir("k", 0o755)
            .file("k/lower", 0o644, b"lower k");
    });
    let t2 = tar(|t| {
        t.dir("d", 0o755)
            .file("d/a", 0o644, b"upper a")
            .file("d/.wh.a", 0o644, b"") // after its own entry: no-op
            .file(".wh.x", 0o644, b"") // before a new entry: replaced by it
            .file("x", 0o644, b"upper x")
            .file(".wh.g", 0o644, b"") // a directory replacing a whiteout hides the lower one
            .dir("g", 0o755)
            .file("g/new", 0o644, b"new g")
            .symlink("s", "d/a")
            .file(".wh.s", 0o644, b"")
            .dir("k", 0o755)
            .file("k/upper", 0o644, b"upper k")
            .file(".wh.k", 0o644, b"");
    });
    apply(&l1, &t1).expect("layer 1");
    apply(&l2, &t2).expect("layer 2");
    assert_file(&l2.join("d/a"), b"upper a");
    assert_file(&l2.join("x"), b"upper x");
    assert_symlink(&l2.join("s"), "d/a");
    assert_dir(&l2.join("k"));
    let ov = Overlay::mount(&mut env, &[&l2, &l1]);
    assert_file(&ov.path("d/a"), b"upper a");
    assert_file(&ov.path("d/b"), b"lower b");
    assert_file(&ov.path("x"), b"upper x");
    assert_eq!(names(&ov.path("g")), ["new"]);
    assert_symlink(&ov.path("s"), "d/a");
    assert_eq!(names(&ov.path("k")), ["lower", "upper"]);
    assert_eq!(names(&ov.mnt), ["d", "g", "k", "s", "x"]);
    drop(ov);
    env.assert_untouched();
}

// ---------------------------------------------------------------------------------------------
// 10. Devices, FIFOs, special mode bits, xattrs, mtimes
// ---------------------------------------------------------------------------------------------

#[test]
fn devices_and_fifos_keep_type_and_major_minor() {
    let env = Env::new();
    let dev = |path: &str, kind, major, minor, mode, gid| {
        let mut e = entry(path, kind);
        e.dev = (major, minor);
        e.mode = mode;
        e.gid = gid;
        e
    };
    let t = tar(|t| {
        t.dir("dev", 0o755)
            .entry(&dev("dev/null", EntryKind::Char, 1, 3, 0o666, 0))
            .entry(&dev("dev/loop0", EntryKind::Block, 7, 0, 0o660, 6))
            .entry(&dev("dev/tty", EntryKind::Char, 5, 0, 0o620, 5))
            .entry(&dev("dev/big", EntryKind::Char, 250, 70_000, 0o600, 0))
            .entry(&dev("dev/nvme", EntryKind::Block, 259, 1, 0o640, 6))
            .entry(&dev("run/fifo", EntryKind::Fifo, 0, 0, 0o620, 7));
    });
    apply(&env.root, &t).expect("apply");
    let check = |p: &str, is_char: bool, major: u32, minor: u32, m: u32, gid: u32| {
        let md = lmeta(&env.at(p));
        let ft = md.file_type();
        if is_char {
            assert!(ft.is_char_device(), "{p} is not a char device");
        } else {
            assert!(ft.is_block_device(), "{p} is not a block device");
        }
        assert_eq!(
            (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())),
            (major, minor),
            "{p} major:minor"
        );
        assert_eq!(md.mode() & 0o7777, m, "{p} mode");
        assert_eq!(md.gid(), gid, "{p} gid");
    };
    check("dev/null", true, 1, 3, 0o666, 0);
    check("dev/loop0", false, 7, 0, 0o660, 6);
    check("dev/tty", true, 5, 0, 0o620, 5);
    check("dev/big", true, 250, 70_000, 0o600, 0);
    check("dev/nvme", false, 259, 1, 0o640, 6);
    let f = lmeta(&env.at("run/fifo"));
    assert!(f.file_type().is_fifo());
    assert_eq!(f.mode() & 0o7777, 0o620);
    assert_eq!(f.gid(), 7);
    assert_eq!(f.rdev(), 0);
}

#[test]
fn setuid_setgid_and_sticky_bits_are_kept() {
    let env = Env::new();
    let mk = |path: &str, kind, mode, uid, gid| {
        let mut e = entry(path, kind);
        e.mode = mode;
        e.uid = uid;
        e.gid = gid;
        if kind == EntryKind::File {
            e.data = b"#!/bin/true\n".to_vec();
        }
        if kind == EntryKind::Symlink {
            e.link = b"su".to_vec();
        }
        e
    };
    let cases = [
        ("bin/su", EntryKind::File, 0o4755, 0, 0),
        ("bin/ping", EntryKind::File, 0o4750, 1000, 1000),
        ("bin/sg", EntryKind::File, 0o2755, 1000, 50),
        ("bin/all", EntryKind::File, 0o7777, 1000, 1000),
        ("tmp", EntryKind::Dir, 0o1777, 0, 0),
        ("shared", EntryKind::Dir, 0o2775, 1000, 1000),
        ("sticky_owned", EntryKind::Dir, 0o3770, 1000, 1000),
    ];
    let t = tar(|t| {
        t.dir("bin", 0o755);
        for (p, k, m, u, g) in cases {
            t.entry(&mk(p, k, m, u, g));
        }
        t.entry(&mk("bin/lsu", EntryKind::Symlink, 0o777, 1000, 1001));
    });
    apply(&env.root, &t).expect("apply");
    for (p, _, m, u, g) in cases {
        let md = lmeta(&env.at(p));
        assert_eq!(md.mode() & 0o7777, m, "{p} mode");
        assert_eq!((md.uid(), md.gid()), (u, g), "{p} owner");
    }
    let l = lmeta(&env.at("bin/lsu"));
    assert!(l.file_type().is_symlink());
    assert_eq!((l.uid(), l.gid()), (1000, 1001), "symlink owner");
}

/// A version 2 `security.capability` value granting cap_net_bind_service (bit 10),
/// effective.
fn cap_net_bind_service() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes()); // VFS_CAP_REVISION_2 | EFFECTIVE
    v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted, high word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, high word
    v
}

#[test]
fn xattrs_are_kept_but_overlay_xattrs_from_the_tar_are_not() {
    let env = Env::new();
    let cap = cap_net_bind_service();
    let mut ping = entry("bin/ping", EntryKind::File);
    ping.mode = 0o755;
    ping.uid = 1000;
    ping.data = b"binary".to_vec();
    ping.xattrs = vec![
        ("security.capability".into(), cap.clone()),
        ("user.foo".into(), b"bar".to_vec()),
    ];
    let mut d = entry("d", EntryKind::Dir);
    d.xattrs = vec![
        ("user.dir".into(), b"1".to_vec()),
        ("trusted.knode.test".into(), b"kept".to_vec()),
    ];
    let mut forged = entry("forged", EntryKind::Dir);
    forged.xattrs = vec![
        ("trusted.overlay.opaque".into(), b"y".to_vec()),
        ("trusted.overlay.redirect".into(), b"/etc".to_vec()),
        ("user.ok".into(), b"ok".to_vec()),
    ];
    let mut forged_file = entry("forged_file", EntryKind::File);
    forged_file.xattrs = vec![("trusted.overlay.metacopy".into(), vec![])];
    let t = tar(|t| {
        t.dir("bin", 0o755)
            .entry(&ping)
            .entry(&d)
            .file("d/child", 0o644, b"c")
            .entry(&forged)
            .entry(&forged_file);
    });
    apply(&env.root, &t).expect("apply");
    let p = env.at("bin/ping");
    assert_eq!(
        xattr(&p, "security.capability"),
        Some(cap),
        "file capability"
    );
    assert_eq!(xattr(&p, "user.foo").as_deref(), Some(&b"bar"[..]));
    assert_eq!(lmeta(&p).uid(), 1000);
    assert_eq!(xattr(&env.at("d"), "user.dir").as_deref(), Some(&b"1"[..]));
    assert_eq!(
        xattr(&env.at("d"), "trusted.knode.test").as_deref(),
        Some(&b"kept"[..])
    );
    let f = env.at("forged");
    assert_eq!(xattr(&f, "trusted.overlay.opaque"), None, "forged opaque");
    assert_eq!(
        xattr(&f, "trusted.overlay.redirect"),
        None,
        "forged redirect"
    );
    assert_eq!(xattr(&f, "user.ok").as_deref(), Some(&b"ok"[..]));
    assert_eq!(
        xattr(&env.at("forged_file"), "trusted.overlay.metacopy"),
        None
    );
}

#[test]
fn mtimes_including_zero_are_kept() {
    let env = Env::new();
    let with_mtime = |p: &str, kind, mtime| {
        let mut e = entry(p, kind);
        e.mtime = mtime;
        if kind == EntryKind::Symlink {
            e.link = b"f".to_vec();
        }
        if kind == EntryKind::File {
            e.data = b"data".to_vec();
        }
        e
    };
    let mut frac = entry("frac", EntryKind::File);
    frac.pax = vec![("mtime".into(), b"1700000000.5".to_vec())];
    let t = tar(|t| {
        t.entry(&with_mtime("f", EntryKind::File, 0))
            .entry(&with_mtime("d", EntryKind::Dir, 0))
            .entry(&with_mtime("d/child", EntryKind::File, 5))
            .entry(&with_mtime("d/sub", EntryKind::Dir, 0))
            .entry(&with_mtime("d/sub/x", EntryKind::File, 7))
            .entry(&with_mtime("s", EntryKind::Symlink, 0))
            .entry(&with_mtime("p", EntryKind::Fifo, 0))
            .entry(&with_mtime("e", EntryKind::Dir, 1_234_567))
            .entry(&with_mtime("e/y", EntryKind::File, 0))
            .entry(&frac);
    });
    apply(&env.root, &t).expect("apply");
    for (p, want) in [
        ("f", 0),
        ("d", 0),
        ("d/child", 5),
        ("d/sub", 0),
        ("d/sub/x", 7),
        ("s", 0),
        ("p", 0),
        ("e", 1_234_567),
        ("e/y", 0),
    ] {
        let m = lmeta(&env.at(p));
        assert_eq!((m.mtime(), m.mtime_nsec()), (want, 0), "mtime of {p}");
    }
    let m = lmeta(&env.at("frac"));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 500_000_000));
}

// ---------------------------------------------------------------------------------------------
// 11. Long names, PAX/ustar size mismatch, truncated streams, trailing padding
// ---------------------------------------------------------------------------------------------

/// A raw ustar header with a `prefix` field, checksum recomputed.
fn header_with_prefix(prefix: &str, name: &str, data_len: u64) -> [u8; 512] {
    let mut h = TarBuilder::header(&entry(name, EntryKind::File), b'0', data_len);
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[test]
fn pax_and_gnu_long_names() {
    let env = Env::new();
    let pax_dir = format!("{}/{}", "p".repeat(120), "q".repeat(150));
    let pax_file = format!("{pax_dir}/{}", "f".repeat(200));
    let pax_target = format!("{}/target", "t".repeat(180));
    let gnu_dir = "g".repeat(130);
    let gnu_file = format!("{gnu_dir}/{}", "h".repeat(140));
    let gnu_target = format!("/{}/{}", "u".repeat(100), "v".repeat(60));

    let mut pf = entry(&pax_file, EntryKind::File);
    pf.data = b"pax long".to_vec();
    let mut pl = entry("pax_link", EntryKind::Symlink);
    pl.link = pax_target.clone().into_bytes();
    let mut gd = entry(&gnu_dir, EntryKind::Dir);
    gd.gnu_long_names = true;
    gd.mode = 0o701;
    let mut gf = entry(&gnu_file, EntryKind::File);
    gf.gnu_long_names = true;
    gf.data = vec![b'G'; 700];
    let mut gl = entry(
        &format!("{gnu_dir}/{}", "l".repeat(110)),
        EntryKind::Symlink,
    );
    gl.gnu_long_names = true;
    gl.link = gnu_target.clone().into_bytes();
    let mut gh = entry(
        &format!("{gnu_dir}/{}", "k".repeat(105)),
        EntryKind::Hardlink,
    );
    gh.gnu_long_names = true;
    gh.link = gnu_file.clone().into_bytes();
    let mut ph = entry("pax_hardlink", EntryKind::Hardlink);
    ph.link = pax_file.clone().into_bytes();

    let t = tar(|t| {
        t.entry(&pf)
            .entry(&pl)
            .entry(&gd)
            .entry(&gf)
            .entry(&gl)
            .entry(&gh)
            .entry(&ph)
            .raw(&header_with_prefix("pre/fix", "name", 6))
            .raw(&{
                let mut b = [0u8; 512];
                b[..6].copy_from_slice(b"prefix");
                b
            })
            .file("after", 0o644, b"after");
    });
    apply(&env.root, &t).expect("apply");
    assert_file(&env.at(&pax_file), b"pax long");
    assert_symlink(&env.at("pax_link"), &pax_target);
    assert_dir(&env.at(&gnu_dir));
    assert_eq!(mode(&env.at(&gnu_dir)), 0o701);
    assert_file(&env.at(&gnu_file), &[b'G'; 700]);
    assert_symlink(
        &env.at(&format!("{gnu_dir}/{}", "l".repeat(110))),
        &gnu_target,
    );
    let ino = lmeta(&env.at(&gnu_file)).ino();
    assert_eq!(
        lmeta(&env.at(&format!("{gnu_dir}/{}", "k".repeat(105)))).ino(),
        ino
    );
    assert_eq!(
        lmeta(&env.at("pax_hardlink")).ino(),
        lmeta(&env.at(&pax_file)).ino()
    );
    assert_file(&env.at("pre/fix/name"), b"prefix");
    assert_file(&env.at("after"), b"after");
    // No stray entries from the extended headers.
    assert_eq!(
        names(&env.root),
        {
            let mut v = vec![
                "after".to_string(),
                gnu_dir.clone(),
                "p".repeat(120),
                "pax_hardlink".into(),
                "pax_link".into(),
                "pre".into(),
            ];
            v.sort();
            v
        },
        "top-level entries"
    );
}

#[test]
fn pax_size_overrides_the_ustar_size() {
    // TARmageddon (CVE-2025-62518): PAX size N, ustar size 0, and the data starts with a
    // header for a file `smuggled`. A reader trusting the ustar size would unpack it.
    let env = Env::new();
    let mut data = TarBuilder::header(&entry("smuggled", EntryKind::File), b'0', 5).to_vec();
    data.extend_from_slice(b"evil\n");
    data.resize(1024, 0);
    data.extend_from_slice(&[b'Z'; 300]);
    let mut big = entry("big", EntryKind::File);
    big.data = data.clone();
    big.ustar_size = Some(0);
    big.pax = vec![("size".into(), data.len().to_string().into_bytes())];
    // The other way round: the ustar size claims more than the PAX size.
    let mut small = entry("small", EntryKind::File);
    small.data = b"hello".to_vec();
    small.ustar_size = Some(2048);
    small.pax = vec![("size".into(), b"5".to_vec())];
    let t = tar(|t| {
        t.entry(&big)
            .file("after", 0o644, b"after")
            .entry(&small)
            .file("after2", 0o644, b"after2");
    });
    let stats = apply(&env.root, &t).expect("apply");
    assert_file(&env.at("big"), &data);
    assert_file(&env.at("small"), b"hello");
    assert!(!lexists(&env.at("smuggled")), "smuggled entry unpacked");
    assert_file(&env.at("after"), b"after");
    assert_file(&env.at("after2"), b"after2");
    assert_eq!(names(&env.root), ["after", "after2", "big", "small"]);
    assert_eq!(stats.entries, 4);
    assert_eq!(stats.bytes, data.len() as u64 + 5 + 5 + 6);
}

#[test]
fn truncated_streams_are_errors() {
    // a: header at 0, data 512..2512 (padded to 2560); b: header at 2560, data 3072..3082.
    let full = tar(|t| {
        t.file("a", 0o644, &[b'a'; 2000])
            .file("b", 0o644, b"0123456789");
    });
    assert_eq!(full.len(), 3584 + 1024);
    for cut in [
        1,
        100,
        511,
        513,
        1500,
        2511,
        2530,
        2559,
        2560 + 200,
        3080,
        3100,
    ] {
        let env = Env::new();
        let r = apply(&env.root, &full[..cut]);
        assert!(
            matches!(r, Err(ApplyError::Tar(TarError::Truncated(_)))),
            "cut at {cut}: {r:?}"
        );
    }
    // Inside a PAX header, right after it, inside a GNU long name and right after it.
    let mut x = entry("x", EntryKind::File);
    x.xattrs = vec![("user.a".into(), b"b".to_vec())];
    x.data = b"x".to_vec();
    let pax = tar(|t| {
        t.entry(&x);
    });
    let mut g = entry(&"n".repeat(150), EntryKind::File);
    g.gnu_long_names = true;
    let gnu = tar(|t| {
        t.entry(&g);
    });
    for (name, stream, cut) in [
        ("pax data", &pax, 520),
        ("after pax", &pax, 1024),
        ("pax header", &pax, 1100),
        ("gnu data", &gnu, 600),
        ("after gnu", &gnu, 1024),
    ] {
        let env = Env::new();
        let r = apply(&env.root, &stream[..cut]);
        assert!(
            matches!(r, Err(ApplyError::Tar(TarError::Truncated(_)))),
            "{name}: {r:?}"
        );
    }
    // The uncut archives are fine.
    for s in [&full, &pax, &gnu] {
        let env = Env::new();
        apply(&env.root, s).expect("complete archive");
    }
}

#[test]
fn trailing_zero_padding_after_the_end_marker_is_fine() {
    let base = tar(|t| {
        t.file("a", 0o644, b"a").dir("d", 0o755);
    });
    let mut padded = base.clone();
    padded.extend_from_slice(&[0u8; 20 * 512]);
    let mut odd = base.clone();
    odd.extend_from_slice(&[0u8; 100]); // not even a whole block
    let one_marker_block = base[..base.len() - 512].to_vec();
    for (name, s) in [
        ("padded", &padded),
        ("odd", &odd),
        ("one marker block", &one_marker_block),
    ] {
        let env = Env::new();
        let (stats, mut rest) =
            apply_layer(&env.root, &s[..]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stats.entries, 2, "{name}");
        assert_file(&env.at("a"), b"a");
        assert_dir(&env.at("d"));
        // The rest of the stream is left to the caller and holds only zeros.
        let mut tail = Vec::new();
        std::io::Read::read_to_end(&mut rest, &mut tail).unwrap();
        assert!(tail.iter().all(|&b| b == 0), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// 12. Duplicate entries; empty layers
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_entries_the_last_wins() {
    let env = Env::new();
    let mut a2 = entry("a", EntryKind::File);
    a2.data = b"two, longer".to_vec();
    a2.mode = 0o600;
    a2.uid = 7;
    let mut d2 = entry("d", EntryKind::Dir);
    d2.mode = 0o700;
    d2.uid = 3;
    d2.mtime = 42;
    let fifo = entry("p", EntryKind::Fifo);
    let t = tar(|t| {
        t.file("a", 0o644, b"one")
            .entry(&a2)
            .hardlink("h", "a")
            .hardlink("h", "a")
            .dir("d", 0o755)
            .file("d/x", 0o644, b"x")
            .entry(&d2)
            .symlink("s", "one")
            .symlink("s", "two")
            .entry(&fifo)
            .file("p", 0o644, b"now a file")
            .file("q", 0o644, b"q")
            .dir("q", 0o711);
    });
    let stats = apply(&env.root, &t).expect("apply");
    assert_eq!(stats.entries, 13);
    assert_file(&env.at("a"), b"two, longer");
    let a = lmeta(&env.at("a"));
    assert_eq!((a.mode() & 0o7777, a.uid(), a.nlink()), (0o600, 7, 2));
    assert_eq!(lmeta(&env.at("h")).ino(), a.ino());
    let d = lmeta(&env.at("d"));
    assert_eq!((d.mode() & 0o7777, d.uid(), d.mtime()), (0o700, 3, 42));
    assert_file(&env.at("d/x"), b"x");
    assert_symlink(&env.at("s"), "two");
    assert_file(&env.at("p"), b"now a file");
    assert_dir(&env.at("q"));
    assert_eq!(mode(&env.at("q")), 0o711);
    assert_eq!(names(&env.root), ["a", "d", "h", "p", "q", "s"]);
}

#[test]
fn empty_layers_apply_fine() {
    let end_marker = TarBuilder::new().finish();
    assert_eq!(end_marker.len(), 1024);
    for (name, s) in [
        ("end marker", end_marker.as_slice()),
        ("one zero block", &[0u8; 512][..]),
        ("zero-byte stream", &[][..]),
    ] {
        let env = Env::new();
        let stats = apply(&env.root, s).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((stats.entries, stats.bytes), (0, 0), "{name}");
        assert!(names(&env.root).is_empty(), "{name}");
        env.assert_untouched();
    }
}
