//! `knode image ...`: the CLI over the oci crate's image store, with per-layer progress bars
//! on a terminal and plain lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
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

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Pull an image (docker-style reference: busybox, host:port/repo:tag, repo@sha256:...).
    Pull {
        reference: String,
        /// os/arch[/variant] to select from a multi-platform image.
        #[arg(long)]
        platform: Option<String>,
        /// Print only the image ID.
        #[arg(long, short)]
        quiet: bool,
        /// Skip the syncfs before publishing layers (faster; a power loss may then damage
        /// a stored layer).
        #[arg(long)]
        no_sync: bool,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Print only image IDs.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show an image's record and config as JSON.
    Inspect { image: String },
    /// Remove images by name or ID, then what nothing else uses.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove content and snapshots no image references, and leftovers of interrupted pulls.
    Prune,
    /// Import an OCI layout directory, or an OCI/docker archive (tar, tar.gz).
    Import {
        path: PathBuf,
        /// Name for the image when the archive has none.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        platform: Option<String>,
    },
}

/// Runs `knode image CMD`.
pub fn run(cmd: ImageCmd, root: &Path, registry: &super::RegistryArgs) -> Result<()> {
    let store = crate::node::images::store_at(root)?;
    match cmd {
        ImageCmd::Pull {
            reference,
            platform,
            quiet,
            no_sync,
        } => {
            let mut opts = super::pull_options(platform.as_deref())?;
            opts.sync = !no_sync;
            let client = super::client_options(registry)?;
            let t = std::time::Instant::now();
            let rep = store.pull(&reference, client, &opts, &CliProgress::new())?;
            if quiet {
                println!("{}", rep.image.config);
            } else {
                println!(
                    "{} {} ({} layers: {} fetched, {} already present; {:.2}s)",
                    rep.image.name,
                    rep.image.id().short(),
                    rep.image.layers.len(),
                    rep.layers_fetched,
                    rep.layers_reused,
                    t.elapsed().as_secs_f64()
                );
            }
        }
        ImageCmd::Ls { quiet } => {
            let list = store.list()?;
            if quiet {
                for i in list {
                    println!("{}", i.config);
                }
            } else {
                print_list(&list);
            }
        }
        ImageCmd::Inspect { image } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&inspect_json(&store, &image)?)?
            );
        }
        ImageCmd::Rm { images } => {
            let mut failed = None;
            for i in images {
                match store.remove(&i) {
                    Ok((names, rep)) => {
                        for n in names {
                            println!("Untagged: {n}");
                        }
                        if rep.snapshots > 0 {
                            println!(
                                "Deleted: {} layer snapshot(s), {}",
                                rep.snapshots,
                                human(rep.bytes)
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = Some(e);
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e).context("some images were not removed");
            }
        }
        ImageCmd::Prune => {
            let rep = store.prune()?;
            println!(
                "Deleted {} blob(s), {} layer snapshot(s) ({}), {} leftover(s)",
                rep.blobs,
                rep.snapshots,
                human(rep.bytes),
                rep.temp
            );
        }
        ImageCmd::Import {
            path,
            name,
            platform,
        } => {
            let opts = super::pull_options(platform.as_deref())?;
            for rec in store.import(&path, name.as_deref(), &opts, &CliProgress::new())? {
                println!("Imported {} {}", rec.name, rec.id().short());
            }
        }
    }
    Ok(())
}
