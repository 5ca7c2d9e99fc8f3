//! `knode image ...`: the CLI over the oci crate's image store, with per-layer progress bars
//! on a terminal and plain lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use oci::digest::Digest;
use oci::image::{ImageRecord, ImageStore};
use oci::progress::Progress;

/// Draws a bar per layer on a terminal; prints one line per layer event otherwise.
pub struct CliProgress {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<Digest, (ProgressBar, Instant)>>,
}

impl CliProgress {
    pub fn new() -> CliProgress {
        let tty = std::io::stderr().is_terminal();
        CliProgress {
            multi: tty.then(MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for CliProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for CliProgress {
    fn layer_start(&self, layer: &Digest, size: u64) {
        let bar = match &self.multi {
            Some(m) => {
                let b = m.add(ProgressBar::new(size));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(layer.short().to_string());
                b
            }
            None => {
                eprintln!("{}: pulling ({})", layer.short(), human(size));
                ProgressBar::hidden()
            }
        };
        self.bars
            .lock()
            .expect("lock")
            .insert(layer.clone(), (bar, Instant::now()));
    }

    fn layer_advance(&self, layer: &Digest, bytes: u64) {
        if let Some((b, _)) = self.bars.lock().expect("lock").get(layer) {
            b.inc(bytes);
        }
    }

    fn layer_done(&self, layer: &Digest, reused: bool) {
        if reused {
            match &self.multi {
                Some(m) => {
                    let _ = m.println(format!("{}: already present", layer.short()));
                }
                None => eprintln!("{}: already present", layer.short()),
            }
            return;
        }
        if let Some((b, t)) = self.bars.lock().expect("lock").remove(layer) {
            let secs = t.elapsed().as_secs_f64();
            if self.multi.is_some() {
                b.finish_with_message(format!("done in {secs:.2}s"));
            } else {
                eprintln!("{}: done in {secs:.2}s", layer.short());
            }
        }
    }

    fn layer_failed(&self, layer: &Digest, error: &str) {
        if let Some((b, _)) = self.bars.lock().expect("lock").remove(layer) {
            b.abandon_with_message("failed");
        }
        tracing::debug!(%layer, error, "layer failed");
    }
}

pub fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn split_name(name: &str) -> (String, String) {
    if let Some((n, d)) = name.split_once('@') {
        return (n.to_string(), format!("@{}", &d[..d.len().min(19)]));
    }
    match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
        _ => (name.to_string(), "<none>".into()),
    }
}

/// `knode image ls` table, like `crictl images` / `docker images`.
pub fn print_list(images: &[ImageRecord]) {
    let rows: Vec<[String; 5]> = images
        .iter()
        .map(|i| {
            let (repo, tag) = split_name(&i.name);
            [
                repo,
                tag,
                i.id().short().to_string(),
                i.platform.clone(),
                human(i.size),
            ]
        })
        .collect();
    let header = ["IMAGE", "TAG", "IMAGE ID", "PLATFORM", "SIZE"];
    let mut w = header.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |c: [&str; 5]| {
        println!(
            "{:w0$}   {:w1$}   {:w2$}   {:w3$}   {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
}

/// `knode image inspect`: the record plus the image config, as JSON.
pub fn inspect_json(store: &ImageStore, what: &str) -> Result<serde_json::Value> {
    let rec = store.get(what)?;
    let config = store.config(&rec)?;
    Ok(serde_json::json!({
        "name": rec.name,
        "id": rec.config,
        "digest": rec.digest,
        "indexDigest": rec.index_digest,
        "platform": rec.platform,
        "size": rec.size,
        "created": rec.created,
        "storedAt": rec.stored_at,
        "layers": rec.layers,
        "config": config.config,
    }))
}

pub fn store_at(root: &Path) -> Result<ImageStore> {
    Ok(ImageStore::open(&root.join("images"))?)
}
