//! Usage figures as the kubelet's /stats/summary reports them: cumulative CPU time, a CPU
//! rate between two samples, and the memory working set (usage minus inactive file pages,
//! what the kubelet and metrics-server call working set).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::fs::{keyed, CgroupFs};

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    /// Average use since the previous sample (at least a second before), in nanocores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    pub usage_core_nano_seconds: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
}

/// Cumulative CPU time (ns) and memory of a cgroup, read from its files.
pub fn read_cgroup(fs: &dyn CgroupFs, cg: &str) -> Option<(u64, MemoryStats)> {
    let cpu = keyed(&fs.read(cg, "cpu.stat").ok()?, "usage_usec")? * 1000;
    let usage: u64 = fs.read(cg, "memory.current").ok()?.trim().parse().ok()?;
    let inactive = keyed(&fs.read(cg, "memory.stat").ok()?, "inactive_file").unwrap_or(0);
    let limit = fs
        .read(cg, "memory.max")
        .ok()
        .and_then(|m| m.trim().parse::<u64>().ok());
    let working_set = usage.saturating_sub(inactive);
    Some((
        cpu,
        MemoryStats {
            time: now(),
            available_bytes: limit.map(|l| l.saturating_sub(working_set)),
            usage_bytes: usage,
            working_set_bytes: working_set,
        },
    ))
}

/// The node's cumulative CPU time (ns, from /proc/stat) and memory (from /proc/meminfo).
pub fn read_node() -> Option<(u64, MemoryStats)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy: u64 = cpu.iter().take(8).sum::<u64>() - cpu.get(3)? - cpu.get(4).unwrap_or(&0);
    // SAFETY: sysconf takes an integer and returns one.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let info = meminfo();
    let total = *info.get("MemTotal")?;
    let available = *info.get("MemAvailable")?;
    let free = *info.get("MemFree").unwrap_or(&available);
    Some((
        busy * (1_000_000_000 / hz),
        MemoryStats {
            time: now(),
            available_bytes: Some(available),
            usage_bytes: total.saturating_sub(free),
            working_set_bytes: total.saturating_sub(available),
        },
    ))
}

/// /proc/meminfo in bytes.
pub fn meminfo() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut it = v.split_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            let mult = if it.next() == Some("kB") { 1024 } else { 1 };
            Some((k.to_string(), n * mult))
        })
        .collect()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Earlier CPU samples per key (at most two, a second or more apart), so that every read
/// can give a rate over at least a second.
#[derive(Default)]
pub struct Rates {
    samples: Mutex<BTreeMap<String, Vec<(Instant, u64)>>>,
}

/// The shortest window a rate is computed over.
const MIN_WINDOW: Duration = Duration::from_secs(1);

impl Rates {
    /// CPU stats for `key` with cumulative `usage_ns` now, with the rate since the newest kept
    /// sample that is a second old or older (none before there is one).
    pub fn cpu(&self, key: &str, usage_ns: u64) -> CpuStats {
        self.cpu_at(key, usage_ns, Instant::now())
    }

    fn cpu_at(&self, key: &str, usage_ns: u64, at: Instant) -> CpuStats {
        let mut all = self.samples.lock().expect("rates");
        let kept = all.entry(key.to_string()).or_default();
        // A counter that went backwards belongs to a new cgroup of the same name.
        if kept.iter().any(|&(_, u)| u > usage_ns) {
            kept.clear();
        }
        let rate = kept
            .iter()
            .rev()
            .find(|&&(t, _)| at.duration_since(t) >= MIN_WINDOW)
            .map(|&(t, u)| {
                let dt = at.duration_since(t).as_nanos().max(1);
                ((usage_ns - u) as u128 * 1_000_000_000 / dt) as u64
            });
        if kept
            .last()
            .is_none_or(|&(t, _)| at.duration_since(t) >= MIN_WINDOW)
        {
            kept.push((at, usage_ns));
            if kept.len() > 2 {
                kept.remove(0);
            }
        }
        CpuStats {
            time: now(),
            usage_nano_cores: rate,
            usage_core_nano_seconds: usage_ns,
        }
    }

    /// Forgets keys not in `keep` (deleted pods).
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        self.samples.lock().expect("rates").retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::cgroup::fs::fake::FakeFs;

    #[test]
    fn working_set_excludes_inactive_file_pages() {
        let f = FakeFs::new("cpu memory pids");
        f.mkdir("a").unwrap();
        f.set(
            "a",
            "cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        f.set("a", "memory.current", "10485760\n");
        f.set(
            "a",
            "memory.stat",
            "anon 4194304\nfile 6291456\ninactive_file 4194304\n",
        );
        f.set("a", "memory.max", "16777216\n");
        let (cpu, m) = read_cgroup(&f, "a").unwrap();
        assert_eq!(cpu, 2_500_000);
        assert_eq!(m.usage_bytes, 10 << 20);
        assert_eq!(m.working_set_bytes, 6 << 20);
        assert_eq!(m.available_bytes, Some(10 << 20));
        f.set("a", "memory.max", "max\n");
        assert_eq!(read_cgroup(&f, "a").unwrap().1.available_bytes, None);
    }

    #[test]
    fn rates_need_a_second_between_samples() {
        let r = Rates::default();
        let t0 = Instant::now();
        assert_eq!(r.cpu_at("p", 1_000, t0).usage_nano_cores, None);
        assert_eq!(
            r.cpu_at("p", 2_000, t0 + Duration::from_millis(10))
                .usage_nano_cores,
            None
        );
        // 0.5 s of CPU in 2 s: a quarter of a core.
        let s = r.cpu_at("p", 1_000 + 500_000_000, t0 + Duration::from_secs(2));
        assert_eq!(s.usage_nano_cores, Some(250_000_000));
        // Right after, the rate still comes, from the sample a second or more before.
        let s = r.cpu_at("p", 1_000 + 600_000_000, t0 + Duration::from_millis(2500));
        assert_eq!(s.usage_nano_cores, Some(240_000_000));
        // A counter that went backwards (a new cgroup of the same name) starts over.
        assert_eq!(
            r.cpu_at("p", 5, t0 + Duration::from_secs(4))
                .usage_nano_cores,
            None
        );
        r.retain(&|k| k != "p");
        assert_eq!(
            r.cpu_at("p", 10, t0 + Duration::from_secs(9))
                .usage_nano_cores,
            None
        );
    }

    #[test]
    fn the_node_reads_proc() {
        let (cpu, m) = read_node().unwrap();
        assert!(cpu > 0);
        assert!(m.working_set_bytes > 0 && m.available_bytes.unwrap() > 0);
    }
}
