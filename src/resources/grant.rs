//! What a task was given, as it travels to its engine (one metadata entry
//! of its request) and as the task sees it (environment variables, and the
//! cores `--pin` binds it to).

use super::pool::{Allocation, ResourcePool};

/// Request metadata key carrying a task's [`TaskGrant`] from the hub to
/// its engine.
pub const GRANT_KEY: &str = "zcluster.resources";

/// What one copy of a task was given, by name: core positions on its
/// engine, GPU ids, and the ids of named list resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskGrant {
    /// Core positions `0..cpus` of the engine's offer (the engine maps
    /// them onto the cores it may run on).
    pub cpus: Vec<u32>,
    /// GPU ids (`CUDA_VISIBLE_DEVICES` values).
    pub gpus: Vec<String>,
    /// Ids of named list resources, by name.
    pub named: Vec<(String, Vec<String>)>,
}

impl TaskGrant {
    /// The grant `allocation` (taken from `pool`) names.
    pub fn of(pool: &ResourcePool, allocation: &Allocation) -> Self {
        TaskGrant {
            cpus: allocation.cpus.clone(),
            gpus: pool.gpu_ids(allocation),
            named: pool.named_ids(allocation),
        }
    }

    /// As one metadata value: `cpus=0,1;gpus=1,3;licences=a`.
    pub fn to_metadata(&self) -> String {
        let list = |v: &[String]| v.join(",");
        let cpus: Vec<String> = self.cpus.iter().map(u32::to_string).collect();
        let mut parts = vec![format!("cpus={}", list(&cpus))];
        if !self.gpus.is_empty() {
            parts.push(format!("gpus={}", list(&self.gpus)));
        }
        for (name, ids) in &self.named {
            parts.push(format!("{name}={}", list(ids)));
        }
        parts.join(";")
    }

    /// Reads [`to_metadata`](Self::to_metadata)'s form back (`None` if it
    /// is not that form).
    pub fn from_metadata(value: &str) -> Option<Self> {
        let mut grant = TaskGrant::default();
        for part in value.split(';') {
            let (name, ids) = part.split_once('=')?;
            let ids: Vec<String> = ids
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            match name {
                "cpus" => {
                    grant.cpus = ids.iter().map(|c| c.parse().ok()).collect::<Option<_>>()?;
                }
                "gpus" => grant.gpus = ids,
                _ => grant.named.push((name.to_string(), ids)),
            }
        }
        Some(grant)
    }

    /// The cores the task got on a machine whose usable cores are
    /// `usable` (this process's affinity): position `p` is `usable[p]`,
    /// wrapping if the engine offered more cores than it may use.
    pub fn cores(&self, usable: &[usize]) -> Vec<usize> {
        if usable.is_empty() {
            return Vec::new();
        }
        self.cpus
            .iter()
            .map(|&p| usable[p as usize % usable.len()])
            .collect()
    }

    /// What the task's environment says it got: `CUDA_VISIBLE_DEVICES`,
    /// `ROCR_VISIBLE_DEVICES` and `HIP_VISIBLE_DEVICES` (so a task sees
    /// only its GPUs whatever their make) and `ZCLUSTER_GPUS` when it got
    /// GPUs; `ZCLUSTER_CPUS` (its cores, from [`cores`](Self::cores));
    /// `ZCLUSTER_RESOURCE_<NAME>` for each named list resource.
    pub fn environment(&self, usable: &[usize]) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        if !self.gpus.is_empty() {
            let gpus = self.gpus.join(",");
            for name in [
                "CUDA_VISIBLE_DEVICES",
                "ROCR_VISIBLE_DEVICES",
                "HIP_VISIBLE_DEVICES",
                "ZCLUSTER_GPUS",
            ] {
                vars.push((name.to_string(), gpus.clone()));
            }
        }
        let cores: Vec<String> = self.cores(usable).iter().map(usize::to_string).collect();
        vars.push(("ZCLUSTER_CPUS".to_string(), cores.join(",")));
        for (name, ids) in &self.named {
            let name = name.to_ascii_uppercase().replace('-', "_");
            vars.push((format!("ZCLUSTER_RESOURCE_{name}"), ids.join(",")));
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ResourceOffer, ResourceRequest};

    #[test]
    fn a_grant_travels_as_metadata_and_becomes_the_tasks_environment() {
        let offer =
            ResourceOffer::parse(4, Some("0,1,3"), None, &["lic=a,b".into()]).expect("offer");
        let mut pool = ResourcePool::new(&offer);
        let request =
            ResourceRequest::parse(Some("2"), Some("2"), None, &["lic=1".into()]).expect("request");
        pool.allocate(&request).expect("first");
        let second = pool
            .allocate(
                &ResourceRequest::parse(Some("2"), Some("1"), None, &["lic=1".into()]).expect("r"),
            )
            .expect("second");
        let grant = TaskGrant::of(&pool, &second);
        let metadata = grant.to_metadata();
        assert_eq!(metadata, "cpus=2,3;gpus=3;lic=b");
        assert_eq!(TaskGrant::from_metadata(&metadata), Some(grant.clone()));
        assert_eq!(grant.cores(&[8, 9, 10, 11]), [10, 11]);
        let env = grant.environment(&[8, 9, 10, 11]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CUDA_VISIBLE_DEVICES"), Some("3"));
        assert_eq!(get("HIP_VISIBLE_DEVICES"), Some("3"));
        assert_eq!(get("ZCLUSTER_GPUS"), Some("3"));
        assert_eq!(get("ZCLUSTER_CPUS"), Some("10,11"));
        assert_eq!(get("ZCLUSTER_RESOURCE_LIC"), Some("b"));
        // No GPUs: the GPU variables are left as the worker has them.
        let cpu_only = TaskGrant::from_metadata("cpus=0").expect("grant");
        assert!(cpu_only
            .environment(&[0])
            .iter()
            .all(|(n, _)| n == "ZCLUSTER_CPUS"));
        assert_eq!(TaskGrant::from_metadata("cpus=x"), None);
        assert_eq!(TaskGrant::from_metadata("nonsense"), None);
    }
}
