//! The one trait between knode and the cgroup v2 filesystem, so the manager can be tested
//! against a fake. Paths are relative to the cgroup2 mount (`knode/burstable/pod<uid>`).

use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

pub trait CgroupFs: Send + Sync {
    /// Creates a cgroup (its parent must exist); an existing one is fine.
    fn mkdir(&self, cg: &str) -> io::Result<()>;
    /// Removes an empty cgroup (no processes, no children); a missing one is fine.
    fn rmdir(&self, cg: &str) -> io::Result<()>;
    fn write(&self, cg: &str, file: &str, value: &str) -> io::Result<()>;
    fn read(&self, cg: &str, file: &str) -> io::Result<String>;
    fn exists(&self, cg: &str) -> bool;
    /// The names of a cgroup's child cgroups.
    fn children(&self, cg: &str) -> io::Result<Vec<String>>;
    /// Waits until no process is left in the cgroup or its descendants (`populated 0` in
    /// cgroup.events), at most `timeout`.
    fn wait_unpopulated(&self, cg: &str, timeout: Duration) -> io::Result<()>;
}

/// A value from a flat keyed file (`cgroup.events`, `memory.events`, `cpu.stat`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The real cgroup2 filesystem, mounted at `mount`.
pub struct RealFs {
    pub mount: PathBuf,
}

impl RealFs {
    fn path(&self, cg: &str) -> PathBuf {
        self.mount.join(cg.trim_start_matches('/'))
    }
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl CgroupFs for RealFs {
    fn mkdir(&self, cg: &str) -> io::Result<()> {
        match std::fs::create_dir(self.path(cg)) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                Err(context(e, format!("creating {}", self.path(cg).display())))
            }
            _ => Ok(()),
        }
    }

    fn rmdir(&self, cg: &str) -> io::Result<()> {
        match std::fs::remove_dir(self.path(cg)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(context(e, format!("removing {}", self.path(cg).display())))
            }
            _ => Ok(()),
        }
    }

    fn write(&self, cg: &str, file: &str, value: &str) -> io::Result<()> {
        let p = self.path(cg).join(file);
        // One write(2) per value: cgroup files take a value per write.
        std::fs::write(&p, value)
            .map_err(|e| context(e, format!("writing {value:?} to {}", p.display())))
    }

    fn read(&self, cg: &str, file: &str) -> io::Result<String> {
        let p = self.path(cg).join(file);
        std::fs::read_to_string(&p).map_err(|e| context(e, format!("reading {}", p.display())))
    }

    fn exists(&self, cg: &str) -> bool {
        self.path(cg).is_dir()
    }

    fn children(&self, cg: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.path(cg))? {
            let e = e?;
            if e.file_type()?.is_dir() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn wait_unpopulated(&self, cg: &str, timeout: Duration) -> io::Result<()> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let p = self.path(cg).join("cgroup.events");
        let deadline = std::time::Instant::now() + timeout;
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        loop {
            // Read from the start every time: kernfs reports a change as POLLPRI, and the
            // new contents are read through a fresh read at offset 0.
            let mut buf = [0u8; 256];
            let n = rustix::io::pread(f.as_fd(), &mut buf, 0)?;
            if keyed(&String::from_utf8_lossy(&buf[..n]), "populated") == Some(0) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("processes are still left in {}", self.path(cg).display()),
                ));
            }
            let mut fds = [PollFd::new(&f, PollFlags::PRI)];
            let ts = Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            };
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory cgroup tree for unit tests: directories, files and a record of writes.
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeFs {
        pub files: Mutex<BTreeMap<String, String>>,
        pub dirs: Mutex<std::collections::BTreeSet<String>>,
        /// Writes refused with EINVAL (a kernel refusing a value).
        pub refuse: Mutex<Vec<String>>,
    }

    fn norm(cg: &str) -> String {
        cg.trim_matches('/').to_string()
    }

    impl FakeFs {
        pub fn new(controllers: &str) -> FakeFs {
            let f = FakeFs::default();
            f.dirs.lock().unwrap().insert(String::new());
            f.files
                .lock()
                .unwrap()
                .insert("/cgroup.controllers".into(), controllers.into());
            f
        }
        pub fn get(&self, cg: &str, file: &str) -> Option<String> {
            self.files
                .lock()
                .unwrap()
                .get(&format!("{}/{file}", norm(cg)))
                .cloned()
        }
        pub fn set(&self, cg: &str, file: &str, v: &str) {
            self.files
                .lock()
                .unwrap()
                .insert(format!("{}/{file}", norm(cg)), v.into());
        }
    }

    impl CgroupFs for FakeFs {
        fn mkdir(&self, cg: &str) -> io::Result<()> {
            let cg = norm(cg);
            let parent = cg.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            if !self.dirs.lock().unwrap().contains(parent) {
                return Err(io::ErrorKind::NotFound.into());
            }
            self.dirs.lock().unwrap().insert(cg);
            Ok(())
        }
        fn rmdir(&self, cg: &str) -> io::Result<()> {
            let cg = norm(cg);
            if self.children(&cg)?.iter().len() > 0 {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            self.dirs.lock().unwrap().remove(&cg);
            self.files
                .lock()
                .unwrap()
                .retain(|k, _| !k.starts_with(&format!("{cg}/")));
            Ok(())
        }
        fn write(&self, cg: &str, file: &str, value: &str) -> io::Result<()> {
            if !self.exists(cg) {
                return Err(io::ErrorKind::NotFound.into());
            }
            if self.refuse.lock().unwrap().iter().any(|r| r == file) {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.set(cg, file, value);
            Ok(())
        }
        fn read(&self, cg: &str, file: &str) -> io::Result<String> {
            self.get(cg, file).ok_or(io::ErrorKind::NotFound.into())
        }
        fn exists(&self, cg: &str) -> bool {
            self.dirs.lock().unwrap().contains(&norm(cg))
        }
        fn children(&self, cg: &str) -> io::Result<Vec<String>> {
            let cg = norm(cg);
            let prefix = if cg.is_empty() {
                String::new()
            } else {
                format!("{cg}/")
            };
            Ok(self
                .dirs
                .lock()
                .unwrap()
                .iter()
                .filter_map(|d| d.strip_prefix(&prefix))
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .map(str::to_string)
                .collect())
        }
        fn wait_unpopulated(&self, _cg: &str, _timeout: Duration) -> io::Result<()> {
            Ok(())
        }
    }
}
