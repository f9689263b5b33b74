//! What an engine has free, and the grants that take from it: the hub
//! keeps one [`ResourcePool`] per engine and one [`Allocation`] per task
//! copy it placed, released when that copy ends.

use serde::{Deserialize, Serialize};

use super::{Amount, NamedResource, ResourceOffer, ResourceRequest};

/// Devices of one indexed resource: what is left of each.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Indexed {
    ids: Vec<String>,
    /// What is free of each device, [`Amount::ONE`] when nothing uses it.
    free: Vec<Amount>,
    /// Devices wholly free.
    whole: u32,
}

impl Indexed {
    fn new(ids: &[String]) -> Self {
        Indexed {
            ids: ids.to_vec(),
            free: vec![Amount::ONE; ids.len()],
            whole: ids.len() as u32,
        }
    }

    /// Whether `amount` (whole devices, or a fraction of one) is free.
    fn fits(&self, amount: Amount) -> bool {
        if amount == Amount::ZERO {
            true
        } else if amount.is_whole() {
            u64::from(self.whole) >= amount.whole_units()
        } else if amount < Amount::ONE {
            self.free.iter().any(|&f| f >= amount)
        } else {
            false // 1.5 devices: not a thing
        }
    }

    /// Takes `amount`: the lowest whole devices, or for a fraction the
    /// device with the least left that still has room (so fractions pack
    /// together and whole devices stay whole).
    fn take(&mut self, amount: Amount) -> Option<Vec<(u32, Amount)>> {
        if !self.fits(amount) {
            return None;
        }
        let mut grants = Vec::new();
        if amount == Amount::ZERO {
            return Some(grants);
        }
        if amount.is_whole() {
            let mut wanted = amount.whole_units();
            for (index, free) in self.free.iter_mut().enumerate() {
                if wanted == 0 {
                    break;
                }
                if *free == Amount::ONE {
                    *free = Amount::ZERO;
                    grants.push((index as u32, Amount::ONE));
                    wanted -= 1;
                }
            }
            self.whole -= grants.len() as u32;
        } else {
            let (index, _) = self
                .free
                .iter()
                .enumerate()
                .filter(|(_, &f)| f >= amount)
                .min_by_key(|(_, &f)| f)?;
            if self.free[index] == Amount::ONE {
                self.whole -= 1;
            }
            self.free[index].0 -= amount.0;
            grants.push((index as u32, amount));
        }
        Some(grants)
    }

    /// Gives back what [`take`](Self::take) granted.
    fn give(&mut self, grants: &[(u32, Amount)]) {
        for &(index, amount) in grants {
            if let Some(free) = self.free.get_mut(index as usize) {
                free.0 = (free.0 + amount.0).min(Amount::ONE.0);
                if *free == Amount::ONE {
                    self.whole += 1;
                }
            }
        }
    }

    /// The ids of the devices granted, once each.
    fn ids_of(&self, grants: &[(u32, Amount)]) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for &(index, _) in grants {
            if let Some(id) = self.ids.get(index as usize) {
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
        ids
    }
}

/// What is free of one named resource.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Free {
    List(Indexed),
    Sum(Amount),
}

/// What a task copy got of one named resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grant {
    /// Devices by index in the engine's list, with the share of each.
    List(Vec<(u32, Amount)>),
    /// A quantity.
    Sum(Amount),
}

/// What a task copy got: the hub keeps it until the copy ends, and the
/// engine tells the task (`CUDA_VISIBLE_DEVICES`, `ZCLUSTER_CPUS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Core positions, `0..cpus` of the engine's offer.
    pub cpus: Vec<u32>,
    /// GPUs by index in the engine's list, with the share of each.
    pub gpus: Vec<(u32, Amount)>,
    /// Memory in bytes.
    pub mem_bytes: u64,
    /// Other resources by name.
    pub named: Vec<(String, Grant)>,
}

/// What an engine has free: made from its offer, taken from by
/// [`allocate`](Self::allocate) and given back by
/// [`release`](Self::release). Tasks without a request take a core each
/// without an index ([`take_loose`](Self::take_loose)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePool {
    /// Cores taken by index.
    cpu_taken: Vec<bool>,
    /// Cores not taken by index.
    cpus_free: u32,
    /// Cores taken by tasks without a request (not by index); may exceed
    /// the free cores while the hub prefetches such tasks.
    loose: u32,
    gpus: Indexed,
    mem_free: Option<u64>,
    named: Vec<(String, Free)>,
}

impl ResourcePool {
    /// All of `offer` free.
    pub fn new(offer: &ResourceOffer) -> Self {
        let cpus = offer.cpus.max(1);
        ResourcePool {
            cpu_taken: vec![false; cpus as usize],
            cpus_free: cpus,
            loose: 0,
            gpus: Indexed::new(&offer.gpus),
            mem_free: offer.mem_bytes,
            named: offer
                .named
                .iter()
                .map(|(name, resource)| {
                    let free = match resource {
                        NamedResource::List(ids) => Free::List(Indexed::new(ids)),
                        NamedResource::Sum(amount) => Free::Sum(*amount),
                    };
                    (name.clone(), free)
                })
                .collect(),
        }
    }

    /// Cores in all.
    pub fn cpus(&self) -> u32 {
        self.cpu_taken.len() as u32
    }

    /// Cores neither taken by index nor by a task without a request.
    pub fn free_cpus(&self) -> u32 {
        self.cpus_free.saturating_sub(self.loose)
    }

    /// Cores taken by index (tasks with a request).
    pub fn cpus_taken_by_index(&self) -> u32 {
        self.cpus() - self.cpus_free
    }

    /// Cores taken by tasks without a request.
    pub fn loose(&self) -> u32 {
        self.loose
    }

    /// Whether all of `request` is free now.
    pub fn fits(&self, request: &ResourceRequest) -> bool {
        if self.free_cpus() < request.cpus || !self.gpus.fits(request.gpus) {
            return false;
        }
        if request.mem_bytes > 0 && self.mem_free.is_none_or(|m| m < request.mem_bytes) {
            return false;
        }
        request.named.iter().all(|(name, &amount)| {
            match self.named.iter().find(|(n, _)| n == name).map(|(_, f)| f) {
                Some(Free::List(indexed)) => indexed.fits(amount),
                Some(Free::Sum(free)) => *free >= amount,
                None => false,
            }
        })
    }

    /// Takes `request` if all of it is free, else takes nothing.
    pub fn allocate(&mut self, request: &ResourceRequest) -> Option<Allocation> {
        if !self.fits(request) {
            return None;
        }
        let mut allocation = Allocation {
            mem_bytes: request.mem_bytes,
            ..Default::default()
        };
        for (index, taken) in self.cpu_taken.iter_mut().enumerate() {
            if allocation.cpus.len() == request.cpus as usize {
                break;
            }
            if !*taken {
                *taken = true;
                allocation.cpus.push(index as u32);
            }
        }
        self.cpus_free -= request.cpus;
        allocation.gpus = self.gpus.take(request.gpus)?;
        if let Some(mem) = &mut self.mem_free {
            *mem -= request.mem_bytes;
        }
        for (name, &amount) in &request.named {
            let free = self.named.iter_mut().find(|(n, _)| n == name);
            let grant = match free.map(|(_, f)| f) {
                Some(Free::List(indexed)) => Grant::List(indexed.take(amount)?),
                Some(Free::Sum(free)) => {
                    free.0 -= amount.0;
                    Grant::Sum(amount)
                }
                None => return None, // fits() checked every name
            };
            allocation.named.push((name.clone(), grant));
        }
        Some(allocation)
    }

    /// Gives back what [`allocate`](Self::allocate) took.
    pub fn release(&mut self, allocation: &Allocation) {
        for &cpu in &allocation.cpus {
            if let Some(taken) = self.cpu_taken.get_mut(cpu as usize) {
                if *taken {
                    *taken = false;
                    self.cpus_free += 1;
                }
            }
        }
        self.gpus.give(&allocation.gpus);
        if let Some(mem) = &mut self.mem_free {
            *mem += allocation.mem_bytes;
        }
        for (name, grant) in &allocation.named {
            let free = self.named.iter_mut().find(|(n, _)| n == name);
            match (free.map(|(_, f)| f), grant) {
                (Some(Free::List(indexed)), Grant::List(grants)) => indexed.give(grants),
                (Some(Free::Sum(free)), Grant::Sum(amount)) => free.0 += amount.0,
                _ => {}
            }
        }
    }

    /// A task without a request takes a core, not by index.
    pub fn take_loose(&mut self) {
        self.loose += 1;
    }

    /// A task without a request gives its core back.
    pub fn release_loose(&mut self) {
        self.loose = self.loose.saturating_sub(1);
    }

    /// The GPU ids an allocation names (`CUDA_VISIBLE_DEVICES`).
    pub fn gpu_ids(&self, allocation: &Allocation) -> Vec<String> {
        self.gpus.ids_of(&allocation.gpus)
    }

    /// The ids of named list resources an allocation names, by name.
    pub fn named_ids(&self, allocation: &Allocation) -> Vec<(String, Vec<String>)> {
        allocation
            .named
            .iter()
            .filter_map(|(name, grant)| {
                let (_, free) = self.named.iter().find(|(n, _)| n == name)?;
                match (free, grant) {
                    (Free::List(indexed), Grant::List(grants)) => {
                        Some((name.clone(), indexed.ids_of(grants)))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// GPUs in use (shares summed).
    pub fn gpus_in_use(&self) -> Amount {
        Amount(self.gpus.free.iter().map(|f| Amount::ONE.0 - f.0).sum())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn request(cpus: u32, gpus: u64, mem: u64, named: &[(&str, u64)]) -> ResourceRequest {
        ResourceRequest {
            cpus,
            gpus: Amount(gpus),
            mem_bytes: mem,
            named: named
                .iter()
                .map(|&(n, a)| (n.to_string(), Amount(a)))
                .collect(),
        }
    }

    fn offer() -> ResourceOffer {
        ResourceOffer::parse(
            4,
            Some("0,1,3"),
            Some("10"),
            &["lic=a,b".into(), "scratch=5".into()],
        )
        .expect("offer")
    }

    #[test]
    fn whole_gpus_go_lowest_first_and_come_back() {
        let mut pool = ResourcePool::new(&offer());
        let a = pool
            .allocate(&request(1, 20_000, 0, &[]))
            .expect("two gpus");
        assert_eq!(pool.gpu_ids(&a), ["0", "1"]);
        assert_eq!(a.cpus, [0]);
        assert!(pool.allocate(&request(1, 20_000, 0, &[])).is_none());
        let b = pool.allocate(&request(2, 10_000, 0, &[])).expect("one gpu");
        assert_eq!(
            (pool.gpu_ids(&b), b.cpus.clone()),
            (vec!["3".into()], vec![1, 2])
        );
        pool.release(&a);
        let c = pool.allocate(&request(1, 20_000, 0, &[])).expect("again");
        assert_eq!(pool.gpu_ids(&c), ["0", "1"]);
    }

    #[test]
    fn fractions_pack_onto_one_device() {
        let mut pool = ResourcePool::new(&offer());
        let half = request(1, 5_000, 0, &[]);
        let a = pool.allocate(&half).expect("a");
        let b = pool.allocate(&half).expect("b");
        assert_eq!(pool.gpu_ids(&a), pool.gpu_ids(&b));
        let c = pool.allocate(&half).expect("c");
        assert_ne!(pool.gpu_ids(&a), pool.gpu_ids(&c));
        // Two whole devices are not free any more: one is split.
        assert!(pool.allocate(&request(1, 20_000, 0, &[])).is_none());
        assert!(pool.allocate(&request(1, 10_000, 0, &[])).is_some());
    }

    #[test]
    fn memory_named_and_cores_are_counted() {
        let mut pool = ResourcePool::new(&offer());
        let a = pool
            .allocate(&request(1, 0, 6, &[("lic", 10_000), ("scratch", 30_000)]))
            .expect("a");
        assert_eq!(
            pool.named_ids(&a),
            [("lic".to_string(), vec!["a".to_string()])]
        );
        assert!(pool.allocate(&request(1, 0, 5, &[])).is_none(), "mem");
        assert!(pool
            .allocate(&request(1, 0, 0, &[("scratch", 30_000)]))
            .is_none());
        assert!(pool
            .allocate(&request(1, 0, 0, &[("nothing", 1)]))
            .is_none());
        pool.take_loose();
        pool.take_loose();
        assert_eq!(pool.free_cpus(), 1);
        assert!(pool.allocate(&request(2, 0, 0, &[])).is_none(), "cores");
        pool.release_loose();
        assert!(pool.allocate(&request(2, 0, 0, &[])).is_some());
        // Memory not declared: a request for it never fits.
        let bare = ResourcePool::new(&ResourceOffer::cpus_only(4));
        assert!(!bare.fits(&request(1, 0, 1, &[])));
        assert!(!ResourceOffer::cpus_only(4).could_fit(&request(5, 0, 0, &[])));
    }

    proptest! {
        /// Any sequence of allocations and releases never grants more than
        /// the offer (no core or whole device twice, no device past one
        /// whole, no sum past its amount), allocates exactly when it fits,
        /// and ends where it started once everything is given back.
        #[test]
        fn allocate_and_release_never_overcommit(
            cpus in 1u32..8,
            gpus in 0usize..5,
            mem in 0u64..20,
            ops in proptest::collection::vec(
                (any::<bool>(), 1u32..4, prop_oneof![Just(0u64), Just(2_500), Just(5_000), Just(7_500), Just(10_000), Just(20_000)],
                 0u64..8, 0u64..3, 0u64..4, any::<usize>()),
                1..60),
        ) {
            let ids: Vec<String> = (0..gpus).map(|g| g.to_string()).collect();
            let offer = ResourceOffer {
                cpus,
                gpus: ids,
                mem_bytes: Some(mem),
                named: BTreeMap::from([
                    ("lic".to_string(), NamedResource::List(vec!["a".into(), "b".into()])),
                    ("scratch".to_string(), NamedResource::Sum(Amount::whole(3))),
                ]),
            };
            let fresh = ResourcePool::new(&offer);
            let mut pool = fresh.clone();
            let mut live: Vec<Allocation> = Vec::new();
            for (release, c, g, m, lic, scratch, pick) in ops {
                if release && !live.is_empty() {
                    let a = live.swap_remove(pick % live.len());
                    pool.release(&a);
                } else {
                    let r = request(c, g, m, &[("lic", lic * 5_000), ("scratch", scratch * 10_000)]);
                    let fits = pool.fits(&r);
                    let got = pool.allocate(&r);
                    prop_assert_eq!(fits, got.is_some());
                    if let Some(a) = got {
                        prop_assert_eq!(a.cpus.len() as u32, c);
                        let granted: u64 = a.gpus.iter().map(|(_, s)| s.0).sum();
                        prop_assert_eq!(granted, g);
                        live.push(a);
                    }
                }
                // The live grants, summed, never exceed the offer.
                let mut cores = vec![0u32; cpus as usize];
                let mut devices = vec![0u64; gpus];
                let mut lics = [0u64; 2];
                let (mut mem_used, mut scratch_used) = (0, 0);
                for a in &live {
                    for &c in &a.cpus { cores[c as usize] += 1; }
                    for &(d, s) in &a.gpus { devices[d as usize] += s.0; }
                    mem_used += a.mem_bytes;
                    for (_, grant) in &a.named {
                        match grant {
                            Grant::List(g) => for &(d, s) in g { lics[d as usize] += s.0 },
                            Grant::Sum(s) => scratch_used += s.0,
                        }
                    }
                }
                prop_assert!(cores.iter().all(|&n| n <= 1), "a core twice: {:?}", cores);
                prop_assert!(devices.iter().all(|&s| s <= Amount::ONE.0), "a GPU past one: {:?}", devices);
                prop_assert!(lics.iter().all(|&s| s <= Amount::ONE.0));
                prop_assert!(mem_used <= mem);
                prop_assert!(scratch_used <= Amount::whole(3).0);
            }
            for a in live.drain(..) {
                pool.release(&a);
            }
            prop_assert_eq!(pool, fresh);
        }
    }
}
