//! The layering rule, checked on the sources: imports only go down.
//!
//! `cli` (only `main.rs` imports it) -> `node` -> `store` -> `config` -> `api` -> the `oci` and
//! `cni` crates. A module may use its own layer and the layers below it, never one above nor a
//! different layer of the same rank; `api` and `config` never touch the outside world, so they
//! also stay free of `unsafe`. A layer added later (`client`, `apiserver`, `controllers`, ...)
//! gets its rank here first.

use std::path::{Path, PathBuf};

/// Layers from the bottom up; a module may import its own and lower ranks.
const RANKS: &[(&str, u32)] = &[
    ("api", 0),
    ("config", 1),
    ("store", 2),
    ("client", 2),
    ("node", 3),
    ("apiserver", 3),
    ("scheduler", 3),
    ("controllers", 3),
    ("dns", 3),
    ("cli", 4),
];

fn rank(layer: &str) -> Option<u32> {
    RANKS.iter().find(|(n, _)| *n == layer).map(|(_, r)| *r)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `crate::<layer>` a file names (in `use` lines and in paths), with its line number.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((n + 1, name));
            rest = after;
        }
        // `use crate::{a, b}` names several layers at once.
        if let Some(i) = code.find("crate::{") {
            for name in code[i + "crate::{".len()..].split([',', '}']) {
                let name = name.trim().split("::").next().unwrap_or("").to_string();
                if !name.is_empty() {
                    out.push((n + 1, name));
                }
            }
        }
    }
    out
}

/// The violations in the tree at `src`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src");
        let top = rel.components().next().expect("component");
        let top = top.as_os_str().to_string_lossy();
        let layer = top.trim_end_matches(".rs");
        let Some(own) = rank(layer) else {
            // lib.rs, main.rs and this file sit above every layer.
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("read");
        for (line, used) in uses(&text) {
            match rank(&used) {
                Some(r) if r > own => bad.push(format!(
                    "{}:{line}: `{layer}` imports `crate::{used}`, a layer above it",
                    rel.display()
                )),
                Some(r) if r == own && used != layer => bad.push(format!(
                    "{}:{line}: `{layer}` imports `crate::{used}`, a layer beside it",
                    rel.display()
                )),
                _ => {}
            }
        }
        if own <= rank("config").expect("config") && text.contains("unsafe ") {
            bad.push(format!("{}: `unsafe` in an I/O-free layer", rel.display()));
        }
        if text.contains("knode::") && !text.contains("//! ") {
            bad.push(format!("{}: names the crate as `knode::`", rel.display()));
        }
    }
    bad
}

#[test]
fn imports_only_go_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn an_upward_import_is_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node");
    std::fs::create_dir_all(&node).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("api")).expect("mkdir");
    std::fs::write(node.join("ok.rs"), "use crate::api::validation;\n").expect("write");
    std::fs::write(
        node.join("bad.rs"),
        "// use crate::cli is fine in a comment\nfn f() { crate::cli::main(); }\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("api").join("x.rs"),
        "use crate::{api::service, node::kubelet};\n",
    )
    .expect("write");
    let mut bad = violations(dir.path());
    bad.sort();
    assert_eq!(
        bad,
        [
            "api/x.rs:1: `api` imports `crate::node`, a layer above it",
            "node/bad.rs:2: `node` imports `crate::cli`, a layer above it",
        ]
    );
}
