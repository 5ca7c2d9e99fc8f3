//! Container logs in the CRI format and layout the kubelet uses:
//! `/var/log/pods/<ns>_<pod>_<uid>/<container>/<restartCount>.log`, one line per record:
//! `2016-10-06T00:17:09.669794202Z stdout F text` (`P` marks a partial line, split because it
//! was too long). Files rotate by size: `N.log` becomes `N.log.1`, `.1` becomes `.2`, and so on.
//! Log files are 0640 and their directories 0750 (root's only), as containerd writes them.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Lines longer than this are split into partial (`P`) records, as CRI runtimes do.
pub const MAX_LINE: usize = 16 * 1024;

/// Log files' mode (containerd's).
pub const FILE_MODE: u32 = 0o640;

/// The name of a pod's log directory, `<namespace>_<name>_<uid>`. A directory name holds at
/// most 255 bytes and a valid pod can need 354 (kubelet fails such pods with "file name too
/// long"): the pod name is shortened to fit, which keeps the name unique (the UID is whole).
pub fn pod_dir_name(namespace: &str, name: &str, uid: &str) -> String {
    let full = format!("{namespace}_{name}_{uid}");
    if full.len() <= 255 {
        return full;
    }
    let keep = 255usize.saturating_sub(namespace.len() + uid.len() + 2);
    let mut cut = keep.min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{namespace}_{}_{uid}", &name[..cut])
}

fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

pub struct CriWriter {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    max_files: u32,
    pending: [Vec<u8>; 2],
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl CriWriter {
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<CriWriter> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = open_log(path)?;
        let written = file.metadata()?.len();
        Ok(CriWriter {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes,
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    fn record(&mut self, stream: Stream, tag: char, msg: &[u8]) -> io::Result<()> {
        let mut line = format!("{} {} {} ", now(), stream.name(), tag).into_bytes();
        line.extend_from_slice(msg);
        line.push(b'\n');
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(name(self.max_files - 1));
        for i in (1..self.max_files.saturating_sub(1)).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        if self.max_files > 1 {
            std::fs::rename(&self.path, name(1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = open_log(&self.path)?;
        self.written = 0;
        Ok(())
    }

    /// Takes bytes a container wrote; full lines become records at once.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        let mut buf = std::mem::take(&mut self.pending[idx]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            for (i, chunk) in line.chunks(MAX_LINE).enumerate() {
                let last = (i + 1) * MAX_LINE >= line.len();
                self.record(stream, if last { 'F' } else { 'P' }, chunk)?;
            }
            if line.is_empty() {
                self.record(stream, 'F', b"")?;
            }
            start += nl + 1;
        }
        let mut rest = buf.split_off(start);
        while rest.len() >= MAX_LINE {
            let tail = rest.split_off(MAX_LINE);
            self.record(stream, 'P', &rest)?;
            rest = tail;
        }
        self.pending[idx] = rest;
        Ok(())
    }

    /// Writes what is left of unterminated lines (the stream ended).
    pub fn flush_partial(&mut self) -> io::Result<()> {
        for s in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.pending[s as usize]);
            if !rest.is_empty() {
                self.record(s, 'F', &rest)?;
            }
        }
        self.file.flush()
    }
}

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub stream: String,
    pub partial: bool,
    pub msg: String,
}

pub fn parse_line(line: &str) -> Option<Record> {
    let mut it = line.splitn(4, ' ');
    let (time, stream, tag) = (it.next()?, it.next()?, it.next()?);
    Some(Record {
        time: time.to_string(),
        stream: stream.to_string(),
        partial: tag == "P",
        msg: it.next().unwrap_or("").to_string(),
    })
}

/// Every record of a container's log: the rotated files' and the current one's, in order.
pub fn records(path: &Path) -> io::Result<Vec<Record>> {
    let mut files: Vec<PathBuf> = (1..100)
        .map(|i| PathBuf::from(format!("{}.{i}", path.display())))
        .filter(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    let mut out = Vec::new();
    for f in files {
        let Ok(file) = File::open(&f) else { continue };
        // Containers write bytes, not always UTF-8: decode lossily rather than fail.
        let mut r = BufReader::new(file);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            if r.read_until(b'\n', &mut raw)? == 0 {
                break;
            }
            let l = String::from_utf8_lossy(&raw);
            if let Some(rec) = parse_line(l.trim_end_matches('\n')) {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// The container's output as it wrote it (records joined back), optionally only the last
/// `tail` lines, from the rotated files and the current one in order.
pub fn read(path: &Path, tail: Option<usize>) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for r in records(path)? {
        cur.push_str(&r.msg);
        if !r.partial {
            lines.push(std::mem::take(&mut cur));
        }
    }
    if let Some(t) = tail {
        let skip = lines.len().saturating_sub(t);
        lines.drain(..skip);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_pod_names_fit_a_directory_name() {
        let uid = "0123abcd-0000-0000-0000-000000000000";
        assert_eq!(
            pod_dir_name("default", "web", uid),
            format!("default_web_{uid}")
        );
        let ns = "n".repeat(63);
        let name = "a".repeat(253);
        let d = pod_dir_name(&ns, &name, uid);
        assert_eq!(d.len(), 255);
        assert!(d.starts_with(&format!("{ns}_aaa")) && d.ends_with(&format!("_{uid}")));
    }

    #[test]
    fn records_partials_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut w = CriWriter::open(&p, 400, 3).unwrap();
        w.write(Stream::Stdout, b"hello\nwor").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"ld\n").unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        w.write(Stream::Stdout, &long).unwrap();
        w.write(Stream::Stdout, b"\nend").unwrap();
        w.flush_partial().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let first = std::fs::read_to_string(format!("{}.2", p.display())).unwrap_or_default()
            + &std::fs::read_to_string(format!("{}.1", p.display())).unwrap_or_default();
        let all = first + &text;
        let recs: Vec<Record> = all.lines().map(|l| parse_line(l).unwrap()).collect();
        assert!(
            recs[0].time.ends_with('Z') && recs[0].stream == "stdout" && recs[0].msg == "hello"
        );
        assert!(recs.iter().any(|r| r.stream == "stderr" && r.msg == "oops"));
        assert!(recs.iter().any(|r| r.partial), "the long line was split");
        let lines = read(&p, None).unwrap();
        assert!(lines.contains(&"world".to_string()));
        assert_eq!(
            lines.iter().find(|l| l.starts_with('x')).unwrap().len(),
            MAX_LINE + 10
        );
        assert_eq!(read(&p, Some(1)).unwrap(), vec!["end".to_string()]);
        assert!(
            std::path::Path::new(&format!("{}.1", p.display())).exists(),
            "rotated"
        );
        use std::os::unix::fs::PermissionsExt;
        for f in [p.clone(), PathBuf::from(format!("{}.1", p.display()))] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, FILE_MODE, "{}", f.display());
        }
    }
}
