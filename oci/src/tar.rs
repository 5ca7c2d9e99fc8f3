//! A streaming tar reader for image layers: ustar, POSIX PAX (local and global headers) and GNU
//! long names. Parsing rules that matter for safety:
//! - a PAX `size` record always overrides the ustar size field (CVE-2025-62518 "TARmageddon":
//!   trusting the ustar size lets file data be parsed as smuggled headers);
//! - header checksums are verified, metadata records are size-limited, and a stream that ends
//!   inside a header or inside file data is an error, never a silently shorter layer;
//! - the rest follows Go's archive/tar, which Docker and containerd use, so every tool sees the
//!   same entries: of several PAX headers before an entry only the last counts, global PAX
//!   headers are ignored, and a GNU long name beats a PAX `path`.

use std::collections::BTreeMap;
use std::io::{self, Read};

const BLOCK: usize = 512;
/// Upper bound for PAX records and GNU long names: real ones are a few hundred bytes.
const MAX_META: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// One archive member, with PAX and GNU extensions already folded in.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Raw path bytes as stored (not yet cleaned).
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub link: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes from `SCHILY.xattr.*` PAX records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("tar stream truncated {0}")]
    Truncated(&'static str),
    #[error("bad tar header at offset {offset}: {reason}")]
    BadHeader { offset: u64, reason: String },
    #[error("unsupported tar entry {path:?}: {reason}")]
    Unsupported { path: String, reason: String },
    #[error("reading tar stream: {0}")]
    Io(#[from] io::Error),
}

pub struct TarReader<R> {
    inner: R,
    /// Bytes of the current entry's data not yet consumed, plus its padding.
    remaining: u64,
    padding: u64,
    offset: u64,
    done: bool,
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
pub(crate) fn read_exact_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn parse_num(field: &[u8], offset: u64, what: &str) -> Result<u64, TarError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: big-endian, first byte's high bit is the marker.
        if field[0] & 0x40 != 0 {
            return Err(TarError::BadHeader {
                offset,
                reason: format!("negative {what}"),
            });
        }
        let mut v: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(b as u64))
                .ok_or_else(|| TarError::BadHeader {
                    offset,
                    reason: format!("{what} overflows"),
                })?;
        }
        return Ok(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    let mut v: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return Err(TarError::BadHeader {
                offset,
                reason: format!("{what} field is not octal"),
            });
        }
        v = v
            .checked_mul(8)
            .map(|v| v + (b - b'0') as u64)
            .ok_or_else(|| TarError::BadHeader {
                offset,
                reason: format!("{what} overflows"),
            })?;
    }
    Ok(v)
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn parse_pax(data: &[u8], offset: u64) -> Result<Vec<(String, Vec<u8>)>, TarError> {
    let bad = |reason: &str| TarError::BadHeader {
        offset,
        reason: format!("malformed PAX record: {reason}"),
    };
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad length"))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("length out of range"));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no '='"))?;
        let key = String::from_utf8(rec[..eq].to_vec()).map_err(|_| bad("key is not UTF-8"))?;
        out.push((key, rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            offset: 0,
            done: false,
        }
    }

    /// Gives back the underlying reader (positioned after the end-of-archive marker).
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = read_exact_or_eof(&mut self.inner, &mut buf[..want])?;
            if got < want {
                return Err(TarError::Truncated("inside entry data"));
            }
            n -= got as u64;
            self.offset += got as u64;
        }
        Ok(())
    }

    fn read_block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let n = read_exact_or_eof(&mut self.inner, buf)?;
        self.offset += n as u64;
        match n {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(TarError::Truncated("inside a header")),
        }
    }

    fn read_meta(&mut self, size: u64, what: &str) -> Result<Vec<u8>, TarError> {
        if size > MAX_META {
            return Err(TarError::BadHeader {
                offset: self.offset,
                reason: format!("{what} of {size} bytes exceeds the {MAX_META}-byte limit"),
            });
        }
        let mut data = vec![0u8; size as usize];
        if read_exact_or_eof(&mut self.inner, &mut data)? < data.len() {
            return Err(TarError::Truncated("inside an extended header"));
        }
        self.offset += size;
        self.skip((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64)?;
        Ok(data)
    }

    /// Reads the data of the current entry (returns 0 at its end).
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(TarError::Truncated("inside entry data"));
        }
        self.remaining -= n as u64;
        self.offset += n as u64;
        Ok(n)
    }

    /// The next entry, or `None` at the end-of-archive marker (or a clean EOF).
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let (rem, pad) = (self.remaining, self.padding);
        self.remaining = 0;
        self.padding = 0;
        self.skip(rem + pad)?;

        let mut local: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut hdr = [0u8; BLOCK];
        loop {
            let start = self.offset;
            if !self.read_block(&mut hdr)? {
                if !local.is_empty() || long_name.is_some() || long_link.is_some() {
                    return Err(TarError::Truncated("after an extended header"));
                }
                self.done = true;
                return Ok(None);
            }
            if hdr.iter().all(|&b| b == 0) {
                // End-of-archive marker; whatever follows (second zero block, padding) is the
                // caller's to drain for hashing.
                self.done = true;
                return Ok(None);
            }
            let stored = parse_num(&hdr[148..156], start, "checksum")?;
            let unsigned: u64 = hdr
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        b as u64
                    }
                })
                .sum();
            let signed: i64 = hdr
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        b as i8 as i64
                    }
                })
                .sum();
            if stored != unsigned && stored as i64 != signed {
                return Err(TarError::BadHeader {
                    offset: start,
                    reason: "header checksum mismatch".into(),
                });
            }
            let typeflag = hdr[156];
            let hsize = parse_num(&hdr[124..136], start, "size")?;
            match typeflag {
                b'x' => {
                    let data = self.read_meta(hsize, "PAX header")?;
                    local = parse_pax(&data, start)?.into_iter().collect();
                    continue;
                }
                b'g' => {
                    // Global headers carry archive-wide defaults (e.g. `git archive`'s
                    // comment); like containerd, ignore them rather than apply them.
                    self.read_meta(hsize, "PAX global header")?;
                    continue;
                }
                b'L' => {
                    let mut d = self.read_meta(hsize, "GNU long name")?;
                    d.truncate(cstr(&d).len());
                    long_name = Some(d);
                    continue;
                }
                b'K' => {
                    let mut d = self.read_meta(hsize, "GNU long link name")?;
                    d.truncate(cstr(&d).len());
                    long_link = Some(d);
                    continue;
                }
                _ => {}
            }

            let pax = local;
            let ustar = &hdr[257..262] == b"ustar" && hdr[262] == 0;
            let mut path = match (long_name, pax.get("path")) {
                (Some(l), _) => l,
                (None, Some(p)) => p.clone(),
                (None, None) => {
                    let name = cstr(&hdr[0..100]);
                    let prefix = cstr(&hdr[345..500]);
                    if ustar && !prefix.is_empty() {
                        let mut p = prefix.to_vec();
                        p.push(b'/');
                        p.extend_from_slice(name);
                        p
                    } else {
                        name.to_vec()
                    }
                }
            };
            let link = match (long_link, pax.get("linkpath")) {
                (Some(l), _) => l,
                (None, Some(p)) => p.clone(),
                (None, None) => cstr(&hdr[157..257]).to_vec(),
            };
            let pax_num = |key: &str| -> Result<Option<u64>, TarError> {
                match pax.get(key) {
                    None => Ok(None),
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .map(Some)
                        .ok_or_else(|| TarError::BadHeader {
                            offset: start,
                            reason: format!("PAX {key} is not a number"),
                        }),
                }
            };
            // The PAX size wins over the ustar field, always.
            let size = pax_num("size")?.unwrap_or(hsize);
            let uid = pax_num("uid")?.unwrap_or(parse_num(&hdr[108..116], start, "uid")?);
            let gid = pax_num("gid")?.unwrap_or(parse_num(&hdr[116..124], start, "gid")?);
            let (mtime, mtime_nsec) = match pax.get("mtime") {
                Some(v) => parse_pax_time(v).ok_or_else(|| TarError::BadHeader {
                    offset: start,
                    reason: "PAX mtime is malformed".into(),
                })?,
                None => (parse_num(&hdr[136..148], start, "mtime")? as i64, 0),
            };
            let mode = parse_num(&hdr[100..108], start, "mode")? as u32 & 0o7777;
            let kind = match typeflag {
                b'0' | 0 | b'7' => EntryKind::File,
                b'1' => EntryKind::Hardlink,
                b'2' => EntryKind::Symlink,
                b'3' => EntryKind::Char,
                b'4' => EntryKind::Block,
                b'5' => EntryKind::Dir,
                b'6' => EntryKind::Fifo,
                other => {
                    return Err(TarError::Unsupported {
                        path: String::from_utf8_lossy(&path).into_owned(),
                        reason: format!("tar entry type {:?}", other as char),
                    })
                }
            };
            if pax.keys().any(|k| k.starts_with("GNU.sparse")) {
                return Err(TarError::Unsupported {
                    path: String::from_utf8_lossy(&path).into_owned(),
                    reason: "sparse files".into(),
                });
            }
            // Old tars mark directories by a trailing slash on a regular entry.
            let kind = if kind == EntryKind::File && path.ends_with(b"/") {
                EntryKind::Dir
            } else {
                kind
            };
            if path.contains(&0) || link.contains(&0) {
                return Err(TarError::BadHeader {
                    offset: start,
                    reason: "NUL byte in a path".into(),
                });
            }
            while path.len() > 1 && path.ends_with(b"/") {
                path.pop();
            }
            let xattrs = pax
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("SCHILY.xattr.")
                        .map(|n| (n.to_string(), v.clone()))
                })
                .collect();
            let (dev_major, dev_minor) = if matches!(kind, EntryKind::Char | EntryKind::Block) {
                (
                    parse_num(&hdr[329..337], start, "devmajor")? as u32,
                    parse_num(&hdr[337..345], start, "devminor")? as u32,
                )
            } else {
                (0, 0)
            };
            // Only regular files carry data: for every other type the size field is ignored,
            // as Go's archive/tar (Docker's unpacker) does ("header-only" types).
            let data = if kind == EntryKind::File { size } else { 0 };
            self.remaining = data;
            self.padding = (BLOCK as u64 - data % BLOCK as u64) % BLOCK as u64;
            return Ok(Some(Entry {
                path,
                kind,
                mode,
                uid,
                gid,
                size: data,
                mtime,
                mtime_nsec,
                link,
                dev_major,
                dev_minor,
                xattrs,
            }));
        }
    }
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if secs < 0 && nsec > 0 {
        // "-1.5" means 1.5 s before the epoch.
        return Some((secs - 1, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"0"), Some((0, 0)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    fn hdr(name: &str, typeflag: u8, size: u64) -> Vec<u8> {
        let mut e = crate::build::TarEntry::new(name, EntryKind::File);
        e.mtime = 0;
        crate::build::TarBuilder::header(&e, typeflag, size).to_vec()
    }

    fn pax_block(records: &[u8]) -> Vec<u8> {
        let mut v = hdr("pax", b'x', records.len() as u64);
        v.extend_from_slice(records);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    fn entries(tar: &[u8]) -> Vec<(String, u64)> {
        let mut r = TarReader::new(tar);
        let mut out = vec![];
        while let Some(e) = r.next_entry().unwrap() {
            out.push((e.path_lossy(), e.size));
        }
        out
    }

    #[test]
    fn only_the_last_pax_header_counts_as_in_go() {
        // x{size=0}, x{mtime=1}, then a file whose ustar size is 512: Go reads 512 bytes of
        // data (the first PAX header is forgotten), so must we, or hidden entries appear.
        let mut t = pax_block(b"10 size=0\n");
        t.extend(pax_block(b"11 mtime=1\n"));
        t.extend(hdr("f", b'0', 512));
        t.extend(hdr("hidden", b'0', 0)); // file data that looks like a header
        t.extend(vec![0u8; 1024]);
        assert_eq!(entries(&t), vec![("f".to_string(), 512)]);
    }

    #[test]
    fn global_headers_are_ignored_and_gnu_names_win() {
        let rec = b"15 path=global\n";
        let mut t = {
            let mut v = hdr("g", b'g', rec.len() as u64);
            v.extend_from_slice(rec);
            v.resize(1024, 0);
            v
        };
        t.extend(hdr("a", b'0', 0));
        let long = b"gnu-name\0";
        let mut l = hdr("././@LongLink", b'L', long.len() as u64);
        l.extend_from_slice(long);
        l.resize(1024, 0);
        t.extend(pax_block(b"13 path=pax1\n"));
        t.extend(l);
        t.extend(hdr("b", b'0', 0));
        t.extend(vec![0u8; 1024]);
        assert_eq!(
            entries(&t),
            vec![("a".to_string(), 0), ("gnu-name".to_string(), 0)]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_num(b"0000644\0", 0, "m").unwrap(), 0o644);
        assert_eq!(parse_num(b"  755 \0", 0, "m").unwrap(), 0o755);
        assert_eq!(
            parse_num(&[0x80, 0, 0, 0, 0, 0, 1, 0], 0, "s").unwrap(),
            256
        );
        assert!(parse_num(b"9\0", 0, "m").is_err());
    }
}
