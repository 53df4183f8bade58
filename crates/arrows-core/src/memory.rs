//! How much memory this process may still take, to refuse work that cannot fit with a message
//! instead of being killed without one by the kernel's out-of-memory killer.

use std::path::{Path, PathBuf};

/// Memory available to this process: the kernel's `MemAvailable`, or less under a memory limit of
/// the process's control group (v1 or v2, and any group above it), as in a container or a SLURM
/// job. `None` where neither can be read (not Linux).
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:")).and_then(kib);
    match (available, cgroup_room()) {
        (Some(a), Some(room)) => Some(a.min(room)),
        (a, room) => a.or(room),
    }
}

/// "123456 kB" -> bytes.
fn kib(value: &str) -> Option<u64> {
    value.split_whitespace().next()?.parse::<u64>().ok().map(|k| k * 1024)
}

/// The least room left under the memory limits of this process's control groups: limit minus
/// usage, where usage leaves out the inactive file cache (which the kernel reclaims before it
/// kills anything), as `docker stats` counts it.
fn cgroup_room() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut least: Option<u64> = None;
    for line in groups.lines() {
        // "hierarchy-id:controllers:path"; v2 has no controllers ("0::/path").
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let (root, limit_file, usage_file, inactive_key) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        } else {
            continue;
        };
        let root = Path::new(root);
        let mut dir: PathBuf = root.join(path.trim_start_matches('/'));
        loop {
            if let Some(room) = room_in(&dir, limit_file, usage_file, inactive_key) {
                least = Some(least.map_or(room, |l| l.min(room)));
            }
            if dir == root || !dir.pop() || !dir.starts_with(root) {
                break;
            }
        }
    }
    least
}

/// Room left in one control group, if it has a memory limit ("max" in v2 means none; v1 writes
/// no limit as a number near 2^63, which leaves the kernel's figure the smaller one).
fn room_in(dir: &Path, limit_file: &str, usage_file: &str, inactive_key: &str) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let limit: u64 = read(limit_file)?.trim().parse().ok()?;
    let usage: u64 = read(usage_file)?.trim().parse().ok()?;
    let inactive = read("memory.stat")
        .and_then(|stat| stat.lines().find_map(|l| l.strip_prefix(inactive_key)?.strip_prefix(' ')?.trim().parse::<u64>().ok()))
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn linux_reports_some_memory() {
        let available = super::available_bytes().expect("/proc/meminfo has MemAvailable");
        assert!(available > 1 << 20, "{available} bytes");
    }

    #[test]
    fn a_group_limit_counts_usage_without_inactive_file_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.max"), "1000000\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "600000\n").unwrap();
        std::fs::write(dir.path().join("memory.stat"), "anon 400000\ninactive_file 150000\nactive_file 50000\n").unwrap();
        assert_eq!(super::room_in(dir.path(), "memory.max", "memory.current", "inactive_file"), Some(550_000));
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        assert_eq!(super::room_in(dir.path(), "memory.max", "memory.current", "inactive_file"), None, "no limit");
    }
}
