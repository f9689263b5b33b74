//! Resources: what an engine offers (CPUs, GPUs by index, memory, named
//! resources) and what a task asks for, so the hub's scheduler can place a
//! GPU task where a GPU is free and tell the task which one it got.
//!
//! The shape is HyperQueue's: an *indexed* resource is a list of devices
//! (GPUs, licences `a,b`), granted by index, a whole device or a fraction
//! of one (`--gpus 0.5`: two such tasks share a device); a *summed*
//! resource is an amount (memory, scratch space), granted by quantity. CPUs
//! are indexed too (so `--pin` knows which cores a task got), in whole
//! cores only.
//!
//! | file | what it holds |
//! | --- | --- |
//! | `mod.rs` | [`Amount`], [`ResourceOffer`], [`ResourceRequest`], [`ResourceError`] |
//! | `parse.rs` | parsing offers and requests from the command line's words |
//! | `pool.rs` | [`ResourcePool`]: what an engine has free, allocation and release |
//! | `grant.rs` | [`TaskGrant`]: what a task got, on the wire and in its environment |
//! | `detect.rs` | the machine's GPUs, cores and memory |
//!
//! ```
//! use zcluster::resources::{ResourceOffer, ResourcePool, ResourceRequest};
//!
//! let offer = ResourceOffer::parse(4, Some("0,1"), Some("16G"), &[])?;
//! let request = ResourceRequest::parse(Some("1"), Some("0.5"), Some("4G"), &[])?;
//! let mut pool = ResourcePool::new(&offer);
//! let first = pool.allocate(&request).expect("fits");
//! let second = pool.allocate(&request).expect("two halves share a GPU");
//! assert_eq!(first.gpus, second.gpus);
//! assert!(pool.allocate(&ResourceRequest::parse(None, Some("2"), None, &[])?).is_none());
//! # Ok::<(), zcluster::resources::ResourceError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod detect;
mod grant;
mod parse;
mod pool;

pub use detect::{detect_gpus, machine_cpus, machine_memory_bytes, DetectedGpus, GpuVendor};
pub use grant::{TaskGrant, GRANT_KEY};
pub use pool::{Allocation, Grant, ResourcePool};

/// Units of an [`Amount`] in one whole (a device, a licence): fractions to
/// four decimals, as HyperQueue counts them.
pub const AMOUNT_UNITS: u64 = 10_000;

/// How much of a resource: a fixed-point number with four decimals (so
/// `0.5` GPU is exact, and sums never drift as floats would).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Amount(pub u64);

impl Amount {
    /// None of it.
    pub const ZERO: Amount = Amount(0);
    /// One whole device.
    pub const ONE: Amount = Amount(AMOUNT_UNITS);

    /// `n` whole units.
    pub fn whole(n: u64) -> Amount {
        Amount(n.saturating_mul(AMOUNT_UNITS))
    }

    /// Whether it is a whole number of units.
    pub fn is_whole(self) -> bool {
        self.0 % AMOUNT_UNITS == 0
    }

    /// Its whole units, rounded down.
    pub fn whole_units(self) -> u64 {
        self.0 / AMOUNT_UNITS
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / AMOUNT_UNITS, self.0 % AMOUNT_UNITS);
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:04}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// A named resource an engine offers besides CPUs, GPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamedResource {
    /// Devices by name (`licences=a,b`), granted by index.
    List(Vec<String>),
    /// A quantity (`scratch=100`), granted by amount.
    Sum(Amount),
}

/// What an engine offers: sent in its registration, kept by the hub.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceOffer {
    /// Cores (tasks without a request take one each).
    pub cpus: u32,
    /// GPU ids as the machine numbers them (`CUDA_VISIBLE_DEVICES` values).
    pub gpus: Vec<String>,
    /// Memory in bytes (`None`: not declared, and a request for memory
    /// does not fit).
    pub mem_bytes: Option<u64>,
    /// Other resources by name.
    pub named: BTreeMap<String, NamedResource>,
}

impl ResourceOffer {
    /// `cpus` cores and nothing else: what `-j N` means, and what an engine
    /// that declares nothing offers.
    pub fn cpus_only(cpus: u32) -> Self {
        ResourceOffer {
            cpus: cpus.max(1),
            ..Default::default()
        }
    }

    /// Whether `request` could ever fit here (everything it asks for is
    /// offered, in that quantity), all of it free.
    pub fn could_fit(&self, request: &ResourceRequest) -> bool {
        ResourcePool::new(self).allocate(request).is_some()
    }

    /// A short line for `zcluster status`: `8 cpus, gpus 0,1, mem 16G`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("{} cpus", self.cpus)];
        if !self.gpus.is_empty() {
            parts.push(format!("gpus {}", self.gpus.join(",")));
        }
        if let Some(mem) = self.mem_bytes {
            parts.push(format!("mem {}", parse::format_size(mem)));
        }
        for (name, resource) in &self.named {
            match resource {
                NamedResource::List(ids) => parts.push(format!("{name} {}", ids.join(","))),
                NamedResource::Sum(amount) => parts.push(format!("{name} {amount}")),
            }
        }
        parts.join(", ")
    }
}

/// What each task of a job asks for: sent when the job opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequest {
    /// Whole cores (one at least).
    pub cpus: u32,
    /// GPUs: whole devices, or a fraction of one below one.
    pub gpus: Amount,
    /// Memory in bytes.
    pub mem_bytes: u64,
    /// Other resources by name: a fraction below one or whole units for a
    /// list, any amount for a sum.
    pub named: BTreeMap<String, Amount>,
}

impl Default for ResourceRequest {
    fn default() -> Self {
        ResourceRequest {
            cpus: 1,
            gpus: Amount::ZERO,
            mem_bytes: 0,
            named: BTreeMap::new(),
        }
    }
}

impl ResourceRequest {
    /// Whether it asks for more than the one core a task takes anyway.
    pub fn is_plain(&self) -> bool {
        self.cpus <= 1 && self.gpus == Amount::ZERO && self.mem_bytes == 0 && self.named.is_empty()
    }

    /// A short line for messages and `zcluster status`:
    /// `2 cpus, 0.5 gpus, mem 4G`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("{} cpus", self.cpus)];
        if self.gpus > Amount::ZERO {
            parts.push(format!("{} gpus", self.gpus));
        }
        if self.mem_bytes > 0 {
            parts.push(format!("mem {}", parse::format_size(self.mem_bytes)));
        }
        for (name, amount) in &self.named {
            parts.push(format!("{name} {amount}"));
        }
        parts.join(", ")
    }
}

/// A malformed offer or request, or devices that are not there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// A count or amount that is not a number (`--gpus x`).
    #[error("{flag} {value:?}: {reason}")]
    BadValue {
        /// The flag it came with (`--gpus`).
        flag: &'static str,
        /// The word as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A size that does not parse (`--mem 4Q`).
    #[error("{flag} {value:?}: not a size (a number with an optional K, M, G or T suffix, powers of 1024)")]
    BadSize {
        /// The flag it came with (`--mem`).
        flag: &'static str,
        /// The word as given.
        value: String,
    },
    /// A `--resource` not of the form `NAME=LIST` or `NAME=AMOUNT`.
    #[error("--resource {value:?}: {reason}")]
    BadResource {
        /// The word as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--gpus 0,7` on a machine without GPU 7.
    #[error("--gpus names {missing} which this machine does not have (it has: {found}); give --gpus none to start without GPUs")]
    NoSuchGpu {
        /// The ids asked for that are not there.
        missing: String,
        /// What was found (`none` when nothing was).
        found: String,
    },
}
