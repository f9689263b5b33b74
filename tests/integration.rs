//! Integration tests for zcluster.
//!
//! Cargo.toml sets `autotests = false` and declares this one `[[test]]`
//! target, so the library (and the libzmq it builds) links into one test
//! binary once. Each area is a module here: add new ones as `mod NAME;`
//! below (e.g. `mod cli; mod map;`) rather than as new top-level files in
//! tests/, which would not be built.

mod common;
mod hub_peers;
mod job_handle;
mod map;
mod poison;
mod pool;
mod pool_resources;
mod toolkit;
