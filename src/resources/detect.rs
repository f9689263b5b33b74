//! The machine's GPUs, cores and memory, for a worker's default offer.
//!
//! GPUs: NVIDIA devices from `nvidia-smi -L` (or `/proc/driver/nvidia/gpus`
//! when the tool is missing), AMD devices from `/sys/class/kfd` when
//! `/dev/kfd` exists; restricted to `CUDA_VISIBLE_DEVICES` (AMD:
//! `ROCR_VISIBLE_DEVICES`, `HIP_VISIBLE_DEVICES`) when the worker was
//! started under one, as Slurm's `--gpus` does.

use std::path::Path;
use std::process::Command;

use super::parse::parse_gpu_ids;
use super::ResourceError;

/// Whose GPUs these are: decides which variables tell a task its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuVendor {
    /// `CUDA_VISIBLE_DEVICES`.
    Nvidia,
    /// `ROCR_VISIBLE_DEVICES` and `HIP_VISIBLE_DEVICES`.
    Amd,
}

/// What GPU detection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedGpus {
    /// A driver was seen (so ids it does not list do not exist).
    pub driver: Option<GpuVendor>,
    /// Device ids usable by this process.
    pub ids: Vec<String>,
}

/// The GPU ids `nvidia-smi -L` lists (`GPU 0: ... (UUID: ...)`).
fn nvidia_smi_ids(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.strip_prefix("GPU "))
        .filter_map(|rest| rest.split(':').next())
        .map(|id| id.trim().to_string())
        .collect()
}

/// `ids` restricted to a `*_VISIBLE_DEVICES` value: the devices it names,
/// by index or by their position (UUIDs are taken by position too).
fn restrict(ids: Vec<String>, visible: Option<&str>) -> Vec<String> {
    let Some(visible) = visible else {
        return ids;
    };
    visible
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .enumerate()
        .filter_map(|(position, v)| {
            if ids.iter().any(|id| id == v) {
                Some(v.to_string())
            } else if v.parse::<u32>().is_err() {
                ids.get(position).cloned()
            } else {
                None
            }
        })
        .collect()
}

/// This machine's GPUs, as far as its drivers tell.
pub fn detect_gpus() -> DetectedGpus {
    let env = |name: &str| std::env::var(name).ok();
    if let Ok(out) = Command::new("nvidia-smi").arg("-L").output() {
        if out.status.success() {
            let ids = nvidia_smi_ids(&String::from_utf8_lossy(&out.stdout));
            return DetectedGpus {
                driver: Some(GpuVendor::Nvidia),
                ids: restrict(ids, env("CUDA_VISIBLE_DEVICES").as_deref()),
            };
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/driver/nvidia/gpus") {
        let ids = (0..entries.count()).map(|i| i.to_string()).collect();
        return DetectedGpus {
            driver: Some(GpuVendor::Nvidia),
            ids: restrict(ids, env("CUDA_VISIBLE_DEVICES").as_deref()),
        };
    }
    if Path::new("/dev/kfd").exists() {
        // KFD topology nodes with SIMD units are GPUs; CPUs have none.
        let mut count = 0;
        if let Ok(nodes) = std::fs::read_dir("/sys/class/kfd/kfd/topology/nodes") {
            for node in nodes.flatten() {
                let props =
                    std::fs::read_to_string(node.path().join("properties")).unwrap_or_default();
                let simds = props
                    .lines()
                    .find_map(|l| l.strip_prefix("simd_count "))
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .unwrap_or(0);
                count += usize::from(simds > 0);
            }
        }
        let ids = (0..count).map(|i| i.to_string()).collect();
        let visible = env("ROCR_VISIBLE_DEVICES").or_else(|| env("HIP_VISIBLE_DEVICES"));
        return DetectedGpus {
            driver: Some(GpuVendor::Amd),
            ids: restrict(ids, visible.as_deref()),
        };
    }
    DetectedGpus {
        driver: None,
        ids: Vec::new(),
    }
}

impl DetectedGpus {
    /// The GPUs a worker offers for its `--gpus` word: `auto` (what was
    /// detected), `none`, or a list of ids, each of which must have been
    /// detected when a driver was seen. Where no driver shows at all (a
    /// container without the driver's tools), a list is taken as given.
    pub fn resolve(&self, word: &str) -> Result<Vec<String>, ResourceError> {
        match word {
            "auto" => Ok(self.ids.clone()),
            "none" => Ok(Vec::new()),
            list => {
                let ids = parse_gpu_ids(list)?;
                if self.driver.is_none() {
                    return Ok(ids);
                }
                let missing: Vec<&str> = ids
                    .iter()
                    .filter(|id| !self.ids.contains(id))
                    .map(String::as_str)
                    .collect();
                if missing.is_empty() {
                    Ok(ids)
                } else {
                    Err(ResourceError::NoSuchGpu {
                        missing: missing.join(","),
                        found: if self.ids.is_empty() {
                            "none".into()
                        } else {
                            self.ids.join(",")
                        },
                    })
                }
            }
        }
    }
}

/// Cores this process may run on.
pub fn machine_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// The machine's memory in bytes, from `/proc/meminfo` (`None` elsewhere).
pub fn machine_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_listing_gives_indices() {
        let listing = "GPU 0: NVIDIA A100 (UUID: GPU-aaa)\nGPU 1: NVIDIA A100 (UUID: GPU-bbb)\n";
        assert_eq!(nvidia_smi_ids(listing), ["0", "1"]);
        assert!(nvidia_smi_ids("No devices were found\n").is_empty());
    }

    #[test]
    fn visible_devices_restrict_what_is_offered() {
        let ids = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(restrict(ids(4), Some("1,3")), ["1", "3"]);
        assert_eq!(restrict(ids(4), Some("7")), Vec::<String>::new());
        assert_eq!(restrict(ids(4), Some("GPU-x,GPU-y")), ["0", "1"]);
        assert_eq!(restrict(ids(2), None), ["0", "1"]);
    }

    #[test]
    fn declared_gpus_must_exist_where_a_driver_shows() {
        let seen = DetectedGpus {
            driver: Some(GpuVendor::Nvidia),
            ids: vec!["0".into(), "1".into()],
        };
        assert_eq!(seen.resolve("auto"), Ok(vec!["0".into(), "1".into()]));
        assert_eq!(seen.resolve("1"), Ok(vec!["1".into()]));
        assert_eq!(seen.resolve("none"), Ok(vec![]));
        let e = seen.resolve("0,7").expect_err("7 is not there");
        assert_eq!(
            e.to_string(),
            "--gpus names 7 which this machine does not have (it has: 0,1); give --gpus none to start without GPUs"
        );
        assert!(seen.resolve("x y").is_err());
        let unseen = DetectedGpus {
            driver: None,
            ids: vec![],
        };
        assert_eq!(unseen.resolve("auto"), Ok(vec![]));
        assert_eq!(unseen.resolve("0,1"), Ok(vec!["0".into(), "1".into()]));
    }

    #[test]
    fn the_machine_has_cores_and_memory() {
        assert!(machine_cpus() >= 1);
        if Path::new("/proc/meminfo").exists() {
            assert!(machine_memory_bytes().is_some_and(|m| m > 1 << 20));
        }
    }
}
