//! IP address management, in host-local's on-disk layout so the tools people know still read
//! it: `<data-dir>/<network>/<ip>` holds `<container-id>\r\n<ifname>`, `last_reserved_ip.0`
//! the last address handed out (allocation goes round-robin from there), and every change
//! happens under an flock of `<data-dir>/<network>/lock`, so concurrent ADDs (threads or
//! processes) never get the same address. Allocation files are not fsynced: after a reboot the
//! agent's reconciliation releases what no pod holds (`gc`).

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::config::{IpamConfig, NetConfList};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("network {network}: no free address in {start}-{end} ({used} in use)")]
    Exhausted {
        network: String,
        start: Ipv4Addr,
        end: Ipv4Addr,
        used: usize,
    },
    #[error("network {network}: invalid container id {id:?}")]
    InvalidId { network: String, id: String },
    #[error("network {network}: IPAM store {path}: {source}")]
    Io {
        network: String,
        path: String,
        source: io::Error,
    },
}

pub struct Store {
    network: String,
    dir: PathBuf,
}

/// Holds the store's flock until dropped.
struct Locked {
    _file: fs::File,
}

/// One allocation: address, container ID, interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub id: String,
    pub ifname: String,
}

impl Store {
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, IpamError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| IpamError::Io {
            network: network.into(),
            path: dir.display().to_string(),
            source: e,
        })?;
        Ok(Store {
            network: network.into(),
            dir,
        })
    }

    fn io(&self, p: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
        let path = p.display().to_string();
        move |source| IpamError::Io {
            network: self.network.clone(),
            path,
            source,
        }
    }

    fn lock(&self) -> Result<Locked, IpamError> {
        let p = self.dir.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(self.io(&p))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io(&p)(e.into()))?;
        Ok(Locked { _file: f })
    }

    /// Every allocation in the store.
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let mut out = vec![];
        for e in fs::read_dir(&self.dir)
            .map_err(self.io(&self.dir))?
            .flatten()
        {
            let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            let mut lines = text.split(['\r', '\n']).filter(|l| !l.is_empty());
            out.push(Allocation {
                ip,
                id: lines.next().unwrap_or("").to_string(),
                ifname: lines.next().unwrap_or("eth0").to_string(),
            });
        }
        out.sort_by_key(|a| u32::from(a.ip));
        Ok(out)
    }

    /// An address for (`id`, `ifname`): the one it already has, or the next free one.
    pub fn allocate(
        &self,
        cfg: &IpamConfig,
        id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(IpamError::InvalidId {
                network: self.network.clone(),
                id: id.into(),
            });
        }
        let _l = self.lock()?;
        let current = self.allocations()?;
        if let Some(a) = current.iter().find(|a| a.id == id && a.ifname == ifname) {
            return Ok(a.ip);
        }
        let (start, end) = NetConfList::range(cfg);
        let gateway = NetConfList::gateway(cfg);
        let last_path = self.dir.join("last_reserved_ip.0");
        let last = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        let (s, e) = (u32::from(start), u32::from(end));
        let size = e - s + 1;
        let first = match last {
            Some(l) if (s..=e).contains(&u32::from(l)) => (u32::from(l) - s + 1) % size,
            _ => 0,
        };
        for k in 0..size {
            let ip = Ipv4Addr::from(s + (first + k) % size);
            if ip == gateway {
                continue;
            }
            let p = self.dir.join(ip.to_string());
            match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
                Ok(mut f) => {
                    f.write_all(format!("{id}\r\n{ifname}").as_bytes())
                        .map_err(self.io(&p))?;
                    let tmp = self.dir.join(".last_reserved_ip.tmp");
                    fs::write(&tmp, ip.to_string())
                        .and_then(|_| fs::rename(&tmp, &last_path))
                        .map_err(self.io(&last_path))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io(&p)(e)),
            }
        }
        Err(IpamError::Exhausted {
            network: self.network.clone(),
            start,
            end,
            used: current.len(),
        })
    }

    /// Releases what (`id`, `ifname`) holds; releasing nothing is fine (DEL is idempotent).
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let _l = self.lock()?;
        let mut out = vec![];
        for a in self.allocations()? {
            if a.id == id && a.ifname == ifname {
                let p = self.dir.join(a.ip.to_string());
                fs::remove_file(&p).map_err(self.io(&p))?;
                out.push(a.ip);
            }
        }
        Ok(out)
    }

    /// Releases every allocation `keep` does not want (leaked ones, after a crash or reboot).
    pub fn gc(&self, keep: impl Fn(&Allocation) -> bool) -> Result<Vec<Allocation>, IpamError> {
        let _l = self.lock()?;
        let mut out = vec![];
        for a in self.allocations()? {
            if !keep(&a) {
                let p = self.dir.join(a.ip.to_string());
                fs::remove_file(&p).map_err(self.io(&p))?;
                out.push(a);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(subnet: &str) -> IpamConfig {
        IpamConfig {
            kind: "knode".into(),
            subnet: subnet.parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
            data_dir: None,
        }
    }

    #[test]
    fn allocates_round_robin_reuses_and_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "net").unwrap();
        let c = cfg("10.244.0.0/24");
        let a = s.allocate(&c, "ctr-a", "eth0").unwrap();
        assert_eq!(
            a,
            "10.244.0.2".parse::<Ipv4Addr>().unwrap(),
            "the gateway .1 is skipped"
        );
        assert_eq!(
            s.allocate(&c, "ctr-a", "eth0").unwrap(),
            a,
            "ADD twice: the same address"
        );
        let b = s.allocate(&c, "ctr-b", "eth0").unwrap();
        assert_eq!(b, "10.244.0.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(s.release("ctr-a", "eth0").unwrap(), vec![a]);
        assert!(
            s.release("ctr-a", "eth0").unwrap().is_empty(),
            "DEL twice is fine"
        );
        // Round-robin: the freed .2 is not handed out again at once.
        assert_eq!(
            s.allocate(&c, "ctr-c", "eth0").unwrap(),
            "10.244.0.4".parse::<Ipv4Addr>().unwrap()
        );
        // host-local's file format.
        assert_eq!(
            fs::read_to_string(d.path().join("net/10.244.0.3")).unwrap(),
            "ctr-b\r\neth0"
        );
        assert!(s.allocate(&c, "../evil", "eth0").is_err());
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_gc_reclaims() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "tiny").unwrap();
        let c = cfg("10.0.0.0/29"); // .1 gateway, .2-.6 usable
        for i in 0..5 {
            s.allocate(&c, &format!("c{i}"), "eth0").unwrap();
        }
        let e = s.allocate(&c, "c5", "eth0").unwrap_err().to_string();
        assert!(
            e.contains("network tiny") && e.contains("no free address in 10.0.0.1-10.0.0.6"),
            "{e}"
        );
        let freed = s.gc(|a| a.id == "c0").unwrap();
        assert_eq!(freed.len(), 4);
        assert!(s.allocate(&c, "c5", "eth0").is_ok());
    }

    #[test]
    fn fifty_concurrent_allocations_get_fifty_addresses() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg("10.244.0.0/24");
        let ips: Vec<Ipv4Addr> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..50)
                .map(|i| {
                    let (d, c) = (d.path(), &c);
                    sc.spawn(move || {
                        Store::open(d, "net")
                            .unwrap()
                            .allocate(c, &format!("ctr{i}"), "eth0")
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let distinct: std::collections::BTreeSet<_> = ips.iter().collect();
        assert_eq!(distinct.len(), 50);
        assert_eq!(
            Store::open(d.path(), "net")
                .unwrap()
                .allocations()
                .unwrap()
                .len(),
            50
        );
    }
}
