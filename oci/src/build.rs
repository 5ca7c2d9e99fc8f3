//! Building images from code: a tar writer (with the PAX/GNU forms and raw-header control that
//! tests of hostile archives need) and an image assembler that pushes to a registry or writes
//! an OCI layout. Used by the demo, the test harness and the benchmark.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use crate::spec::{
    self, Compression, Descriptor, ImageConfig, Manifest, Platform, RootFs, RunConfig,
};
use crate::tar::EntryKind;

/// One archive member to write.
#[derive(Clone, Debug)]
pub struct TarEntry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub link: Vec<u8>,
    pub dev: (u32, u32),
    pub data: Vec<u8>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Extra PAX records (e.g. a `size` that differs from the ustar field).
    pub pax: Vec<(String, Vec<u8>)>,
    /// Value for the ustar size field instead of the data length.
    pub ustar_size: Option<u64>,
    /// Write long names as GNU `L`/`K` entries instead of PAX.
    pub gnu_long_names: bool,
}

impl TarEntry {
    pub fn new(path: &str, kind: EntryKind) -> TarEntry {
        TarEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            link: Vec::new(),
            dev: (0, 0),
            data: Vec::new(),
            xattrs: Vec::new(),
            pax: Vec::new(),
            ustar_size: None,
            gnu_long_names: false,
        }
    }
}

/// Writes tar archives in memory.
#[derive(Default)]
pub struct TarBuilder {
    out: Vec<u8>,
}

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    if s.len() > w {
        // Base-256 for values that do not fit.
        field.fill(0);
        field[0] = 0x80;
        let bytes = v.to_be_bytes();
        let n = field.len().min(8);
        let l = field.len();
        field[l - n..].copy_from_slice(&bytes[8 - n..]);
        return;
    }
    field[..w].copy_from_slice(s.as_bytes());
    field[w] = 0;
}

fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
    let body = k.len() + v.len() + 3; // ' ', '=', '\n'
    let mut len = body + body.to_string().len();
    if len.to_string().len() + body != len {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {k}=").into_bytes();
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder::default()
    }

    /// A raw 512-byte header for `e` with a correct checksum, of type `typeflag` and with
    /// `size` in the ustar size field.
    pub fn header(e: &TarEntry, typeflag: u8, size: u64) -> [u8; 512] {
        let (name, mode, uid, gid, mtime, link, dev) =
            (&e.path, e.mode, e.uid, e.gid, e.mtime, &e.link, e.dev);
        let mut h = [0u8; 512];
        let n = name.len().min(100);
        h[..n].copy_from_slice(&name[..n]);
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], uid as u64);
        octal(&mut h[116..124], gid as u64);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], mtime);
        h[156] = typeflag;
        let l = link.len().min(100);
        h[157..157 + l].copy_from_slice(&link[..l]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], dev.0 as u64);
        octal(&mut h[337..345], dev.1 as u64);
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        h
    }

    fn pad(&mut self) {
        let rem = self.out.len() % 512;
        if rem != 0 {
            self.out.resize(self.out.len() + 512 - rem, 0);
        }
    }

    fn meta_entry(&mut self, typeflag: u8, name: &[u8], data: &[u8]) {
        let mut e = TarEntry::new("", EntryKind::File);
        e.path = name.to_vec();
        e.mtime = 0;
        let h = Self::header(&e, typeflag, data.len() as u64);
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        self.pad();
    }

    pub fn entry(&mut self, e: &TarEntry) -> &mut Self {
        let typeflag = match e.kind {
            EntryKind::File => b'0',
            EntryKind::Hardlink => b'1',
            EntryKind::Symlink => b'2',
            EntryKind::Char => b'3',
            EntryKind::Block => b'4',
            EntryKind::Dir => b'5',
            EntryKind::Fifo => b'6',
        };
        let long_path = e.path.len() > 100;
        let long_link = e.link.len() > 100;
        let mut pax: Vec<u8> = Vec::new();
        if e.gnu_long_names {
            if long_path {
                let mut d = e.path.clone();
                d.push(0);
                self.meta_entry(b'L', b"././@LongLink", &d);
            }
            if long_link {
                let mut d = e.link.clone();
                d.push(0);
                self.meta_entry(b'K', b"././@LongLink", &d);
            }
        } else {
            if long_path {
                pax.extend(pax_record("path", &e.path));
            }
            if long_link {
                pax.extend(pax_record("linkpath", &e.link));
            }
        }
        for (k, v) in &e.xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        for (k, v) in &e.pax {
            pax.extend(pax_record(k, v));
        }
        if !pax.is_empty() {
            self.meta_entry(b'x', b"PaxHeaders/entry", &pax);
        }
        let size = e.ustar_size.unwrap_or(e.data.len() as u64);
        let h = Self::header(e, typeflag, size);
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(&e.data);
        self.pad();
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut e = TarEntry::new(path, EntryKind::Dir);
        e.mode = mode;
        self.entry(&e)
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut e = TarEntry::new(path, EntryKind::File);
        e.mode = mode;
        e.data = data.to_vec();
        self.entry(&e)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut e = TarEntry::new(path, EntryKind::Symlink);
        e.mode = 0o777;
        e.link = target.as_bytes().to_vec();
        self.entry(&e)
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut e = TarEntry::new(path, EntryKind::Hardlink);
        e.link = target.as_bytes().to_vec();
        self.entry(&e)
    }

    /// Appends raw bytes (hand-made headers for hostile-archive tests).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// The archive with its two-block end marker.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// Compresses a layer tar as a registry would store it.
pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(tar.len() / 3),
                flate2::Compression::new(6),
            );
            e.write_all(tar).expect("in-memory write");
            e.finish().expect("in-memory write")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("in-memory zstd"),
    }
}

/// An assembled image: manifest, config and blobs, ready to push or write out.
pub struct BuiltImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub layers: Vec<(Descriptor, Vec<u8>)>,
}

#[derive(Default)]
pub struct ImageBuilder {
    layers: Vec<(Vec<u8>, Compression, Digest)>,
    run: RunConfig,
    platform: Option<Platform>,
}

impl ImageBuilder {
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }

    /// Adds a layer from its uncompressed tar.
    pub fn layer(mut self, tar: &[u8], c: Compression) -> Self {
        let diff = Digest::of(tar);
        self.layers.push((compress(tar, c), c, diff));
        self
    }

    /// Adds an already-compressed layer with its DiffID (lets tests lie about either).
    pub fn raw_layer(mut self, blob: Vec<u8>, c: Compression, diff_id: Digest) -> Self {
        self.layers.push((blob, c, diff_id));
        self
    }

    pub fn run_config(mut self, run: RunConfig) -> Self {
        self.run = run;
        self
    }

    pub fn platform(mut self, p: Platform) -> Self {
        self.platform = Some(p);
        self
    }

    pub fn build(self) -> BuiltImage {
        let p = self.platform.unwrap_or_else(Platform::host);
        let config = ImageConfig {
            created: Some("2026-01-01T00:00:00Z".into()),
            author: Some("knode".into()),
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
            config: Some(self.run),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: self.layers.iter().map(|l| l.2.clone()).collect(),
            },
            history: vec![],
        };
        let config = serde_json::to_vec(&config).expect("serialisable");
        let config_digest = Digest::of(&config);
        let layers: Vec<(Descriptor, Vec<u8>)> = self
            .layers
            .into_iter()
            .map(|(blob, c, _)| {
                let mt = match c {
                    Compression::None => spec::OCI_LAYER_TAR,
                    Compression::Gzip => spec::OCI_LAYER_GZIP,
                    Compression::Zstd => spec::OCI_LAYER_ZSTD,
                };
                (descriptor(mt, &blob), blob)
            })
            .collect();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(spec::OCI_MANIFEST.into()),
            config: descriptor(spec::OCI_CONFIG, &config),
            layers: layers.iter().map(|l| l.0.clone()).collect(),
            annotations: BTreeMap::new(),
        };
        let manifest = serde_json::to_vec(&manifest).expect("serialisable");
        BuiltImage {
            manifest_digest: Digest::of(&manifest),
            manifest,
            config_digest,
            config,
            layers,
        }
    }
}

pub fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
        urls: vec![],
    }
}

impl BuiltImage {
    /// Pushes blobs and manifest; tags with the reference's tag (or pushes by digest).
    pub fn push(&self, client: &RegistryClient, r: &Reference) -> Result<(), RegistryError> {
        for (d, blob) in &self.layers {
            client.push_blob(r, &d.digest, blob)?;
        }
        client.push_blob(r, &self.config_digest, &self.config)?;
        let target = r
            .tag
            .clone()
            .unwrap_or_else(|| self.manifest_digest.to_string());
        client.push_manifest(r, &target, spec::OCI_MANIFEST, &self.manifest)
    }

    /// Writes an OCI image layout directory with this image under `ref_name`.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) -> std::io::Result<()> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs)?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        for (d, b) in &self.layers {
            std::fs::write(blobs.join(d.digest.hex()), b)?;
        }
        std::fs::write(blobs.join(self.config_digest.hex()), &self.config)?;
        std::fs::write(blobs.join(self.manifest_digest.hex()), &self.manifest)?;
        let mut m = descriptor(spec::OCI_MANIFEST, &self.manifest);
        m.annotations
            .insert("org.opencontainers.image.ref.name".into(), ref_name.into());
        let idx = spec::Index {
            schema_version: 2,
            media_type: Some(spec::OCI_INDEX.into()),
            manifests: vec![m],
            annotations: BTreeMap::new(),
        };
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&idx).expect("serialisable"),
        )
    }
}

/// An OCI image layout archive (a tar, as `ctr images export` writes one) holding `images`
/// under their full names (`io.containerd.image.name`, and the tag as
/// `org.opencontainers.image.ref.name`), each blob once. The same images give the same bytes.
pub fn oci_archive(images: &[(&str, &BuiltImage)]) -> Vec<u8> {
    let mut blobs: BTreeMap<&str, &[u8]> = BTreeMap::new();
    let mut manifests = Vec::new();
    for (name, img) in images {
        for (d, b) in &img.layers {
            blobs.insert(d.digest.hex(), b);
        }
        blobs.insert(img.config_digest.hex(), &img.config);
        blobs.insert(img.manifest_digest.hex(), &img.manifest);
        let mut m = descriptor(spec::OCI_MANIFEST, &img.manifest);
        m.annotations
            .insert("io.containerd.image.name".into(), name.to_string());
        if let Some((_, tag)) = name.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            m.annotations
                .insert("org.opencontainers.image.ref.name".into(), tag.into());
        }
        manifests.push(m);
    }
    let idx = spec::Index {
        schema_version: 2,
        media_type: Some(spec::OCI_INDEX.into()),
        manifests,
        annotations: BTreeMap::new(),
    };
    let mut t = TarBuilder::new();
    t.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file(
            "index.json",
            0o644,
            &serde_json::to_vec(&idx).expect("serialisable"),
        )
        .dir("blobs", 0o755)
        .dir("blobs/sha256", 0o755);
    for (hex, b) in blobs {
        t.file(&format!("blobs/sha256/{hex}"), 0o644, b);
    }
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::TarReader;

    #[test]
    fn pax_record_lengths_are_self_consistent() {
        for k in ["path", "a"] {
            for n in [
                0usize, 1, 5, 89, 90, 91, 95, 96, 97, 98, 99, 100, 994, 995, 996, 997, 998, 999,
                1000,
            ] {
                let r = pax_record(k, &vec![b'x'; n]);
                let sp = r.iter().position(|&b| b == b' ').unwrap();
                let len: usize = std::str::from_utf8(&r[..sp]).unwrap().parse().unwrap();
                assert_eq!(len, r.len(), "key {k} value {n}");
            }
        }
    }

    #[test]
    fn roundtrip_through_the_reader() {
        let long = format!("{}/file", "d".repeat(150));
        let mut t = TarBuilder::new();
        t.dir("a", 0o755)
            .file(&long, 0o4755, b"hi")
            .symlink("l", "/etc");
        let mut e = TarEntry::new(&format!("{}/g", "g".repeat(120)), EntryKind::File);
        e.gnu_long_names = true;
        e.data = vec![1; 700];
        t.entry(&e);
        let tar = t.finish();
        let mut r = TarReader::new(&tar[..]);
        let mut names = vec![];
        while let Some(e) = r.next_entry().unwrap() {
            names.push((e.path_lossy(), e.mode, e.size));
        }
        assert_eq!(names[1], (long, 0o4755, 2));
        assert_eq!(names[3].2, 700);
        assert_eq!(names.len(), 4);
    }
}
