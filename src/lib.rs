#![warn(missing_docs)]
//! zcluster: map work over a cluster of machines with ZeroMQ.
//!
//! A researcher has a file of inputs and a lab full of machines; zcluster runs
//! a command (or a Rust function) once per input on every worker core,
//! returns every result exactly once in input order, and records what ran.
//!
//! The crate is layered; each layer uses only the ones above it in this list
//! (what the modules' `use crate::` lines say), and each is one module, or a
//! few, named after what it holds:
//!
//! | layer | module | what it holds |
//! | --- | --- | --- |
//! | ids | [`ids`] | maps and sets keyed by integer ids (tasks, jobs, engines) on every task's path, hashed with foldhash |
//! | message | [`message`], [`auth`], [`untrusted`] | [`ClusterRequest`](message::ClusterRequest), [`ClusterResult`](message::ClusterResult), commands, and the one bounded, versioned multipart wire format; HMAC-SHA256 signing with replay checks for hub sockets; network bytes escaped before they are shown |
//! | socket | [`socket`] | [`FutureSocket`](socket::FutureSocket) descriptors: URL, kind, bind/connect, options, parsed from `bind:tcp://*:5555` (sized to the message layer's bound) |
//! | toolkit | [`ventilator`], [`worker`], [`sink`], [`devices`], [`commands`] | glimpse's `zmq_cluster`: PUSH requests out, workers PULL/PUSH with a SUB for commands, PULL results in; streamer and forwarder; kill, restart, ping |
//! | resources | [`resources`] | what an engine offers (CPUs, GPUs by index, memory, named resources) and what a task asks; allocation without over-commit |
//! | config | [`config`] | a cluster's sockets in one TOML file (reader, writer, broker) |
//! | slots | [`slots`] | toolkit workers on threads in this process, each fed only when free: what an engine runs its tasks on |
//! | jobs | [`template`], [`exec`] | command templates with GNU parallel's replacement strings; running one command with capture, timeout and cancellation, and a chunk of them ([`exec::chunk`]) |
//! | map | [`map`] | the `zcluster map` front end: lazy inputs, ordering, halting, over a [`map::Backend`] |
//! | hub | [`hub`] | engines, heartbeats, dispatch, the task store, queries and commands; the hub client, which is `map`'s backend |
//! | pool | [`pool`] | typed `map`, `imap`, `imap_unordered`, `map_reduce` over named handlers in worker binaries, through a hub |
//! | launch | [`launch`] | workers started elsewhere and kept alive: over ssh from a host file |
//!
//! A Rust function on every core, results in input order, through a hub and
//! an engine inside this process (the same path as a lab's cluster; a lab
//! uses [`pool::Pool::connect`] and a worker binary calling
//! [`pool::Registry::serve`]):
//!
//! ```
//! use zcluster::pool::{Pool, Registry};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Image { name: String, pixels: Vec<u8> }
//!
//! // Worker side: named handlers over any serde types.
//! let registry = Registry::new().handler("mean", |image: Image| {
//!     if image.pixels.is_empty() {
//!         return Err(format!("{} has no pixels", image.name));
//!     }
//!     let sum: u64 = image.pixels.iter().map(|&p| u64::from(p)).sum();
//!     Ok(sum as f64 / image.pixels.len() as f64)
//! });
//! // Client side: map over a pool of 2 worker slots.
//! let mut pool = Pool::local(2, registry)?;
//! let images = (0..100u8).map(|i| Image { name: format!("img{i}"), pixels: vec![i; 16] });
//! let means: Vec<f64> = pool.map("mean", images)?;
//! assert_eq!(means.len(), 100);
//! assert_eq!(means[42], 42.0);
//! # Ok::<(), zcluster::pool::PoolError>(())
//! ```
//!
//! Underneath is glimpse's toolkit, usable with no hub at all. Data flows
//! inputs → ventilator → worker → sink → results:
//!
//! ```
//! use std::thread;
//! use zcluster::message::ClusterRequest;
//! use zcluster::sink::Sink;
//! use zcluster::socket::{FutureSocket, SocketKind};
//! use zcluster::ventilator::Ventilator;
//! use zcluster::worker::{typed, Worker};
//! use std::time::Duration;
//!
//! let ctx = zmq::Context::new();
//! let mut sink = Sink::new(&ctx, FutureSocket::bind("inproc://results", SocketKind::Pull))?;
//! let mut ventilator = Ventilator::new(&ctx, FutureSocket::bind("inproc://requests", SocketKind::Push))?
//!     .worker_connect_delay(Duration::ZERO);
//! let mut worker = Worker::builder(
//!     FutureSocket::connect("inproc://requests", SocketKind::Pull),
//!     FutureSocket::connect("inproc://results", SocketKind::Push),
//! )
//! .receive_timeout(Duration::from_millis(200))
//! .build(&ctx, typed(|n: u64| Ok::<_, String>(n * n)))?;
//! let worker = thread::spawn(move || worker.run());
//!
//! ventilator.send((1..=10u64).map(|n| ClusterRequest::encode(n, &n).unwrap()))?;
//! let mut total = 0;
//! for result in sink.receive_typed::<u64>(Some(10), Some(Duration::from_secs(5))) {
//!     total += result?.1;
//! }
//! assert_eq!(total, 385);
//! # let _ = worker.join();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
pub mod auth;
pub mod commands;
pub mod config;
pub mod devices;
pub mod exec;
pub mod hub;
pub mod ids;
pub mod launch;
pub mod map;
pub mod message;
pub mod pool;
pub mod resources;
pub mod sink;
pub mod slots;
pub mod socket;
pub mod template;
pub mod untrusted;
pub mod ventilator;
pub mod worker;

/// This machine's host name, as results and replies report it.
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[cfg(test)]
mod layer_tests {
    //! The layer table above is checked against the code: a module that
    //! starts using one below it breaks this test, not just the docs.

    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// Each module the crate doc's layer table names, with its row number.
    fn layers() -> BTreeMap<String, usize> {
        let mut layers = BTreeMap::new();
        let rows = include_str!("lib.rs")
            .lines()
            .filter(|line| line.starts_with("//! | ") && !line.starts_with("//! | ---"))
            .skip(1); // the header
        for (row, line) in rows.enumerate() {
            let modules = line.split('|').nth(2).unwrap_or_default();
            for name in modules.split("[`").skip(1) {
                let name = name.split('`').next().unwrap_or_default();
                layers.insert(name.to_string(), row);
            }
        }
        layers
    }

    fn sources(path: &Path, out: &mut Vec<PathBuf>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                sources(&entry.unwrap().path(), out);
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_path_buf());
        }
    }

    /// The crate's modules a module's code (not its comments) names.
    fn uses(module: &str) -> Vec<String> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src.join(format!("{module}.rs")), &mut files);
        sources(&src.join(module), &mut files);
        let mut used = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
            for line in code {
                for after in line.split("crate::").skip(1) {
                    let name: String = after
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if name != module && !used.contains(&name) {
                        used.push(name);
                    }
                }
            }
        }
        used
    }

    #[test]
    fn every_module_uses_only_the_layers_above_it() {
        let layers = layers();
        assert!(
            layers.len() > 10,
            "the layer table was not found: {layers:?}"
        );
        let mut wrong = Vec::new();
        for (module, row) in &layers {
            for used in uses(module) {
                if layers.get(&used).is_some_and(|r| r > row) {
                    wrong.push(format!("{module} uses {used}, a layer below it"));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn every_module_is_in_the_layer_table() {
        let layers = layers();
        let declared: Vec<&str> = include_str!("lib.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("pub mod "))
            .map(|name| name.trim_end_matches(';'))
            .collect();
        let missing: Vec<&&str> = declared
            .iter()
            .filter(|m| !layers.contains_key(**m))
            .collect();
        assert!(missing.is_empty(), "not in the layer table: {missing:?}");
    }
}
