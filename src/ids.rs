//! Maps and sets keyed by integer ids (tasks, jobs, engines, tickets) on
//! every task's path, hashed with foldhash instead of the standard
//! library's SipHash.
//!
//! callgrind of `examples/hub_throughput` (memory store) counted about 33
//! hash lookups per task in the hub thread at ~150 instructions each with
//! SipHash-1-3, 4.6k instructions a task. foldhash hashes an integer in a
//! handful of instructions. SipHash's strength is against keys an attacker
//! picks to collide; these keys are ids the hub or the engine hands out,
//! or a client's own task numbers, which only a key holder can send and
//! which a per-process random seed (foldhash's `RandomState`) keeps from
//! being aimed at buckets. Keys a stranger chooses (routing identities,
//! paths, names) stay in the standard maps.

use std::collections::{HashMap, HashSet};

/// The hasher of [`IdMap`] and [`IdSet`]: foldhash, seeded at random per
/// map.
pub type IdHasher = foldhash::fast::RandomState;

/// A map keyed by integer ids.
pub type IdMap<K, V> = HashMap<K, V, IdHasher>;

/// A set of integer ids.
pub type IdSet<K> = HashSet<K, IdHasher>;
