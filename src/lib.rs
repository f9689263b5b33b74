#![warn(missing_docs)]
//! zcluster: map work over a cluster of machines with ZeroMQ.
//!
//! A researcher has a file of inputs and a lab full of machines; zcluster runs
//! a command (or a Rust function) once per input on every worker core,
//! returns every result exactly once in input order, and records what ran.
//!
//! The crate is layered; each layer uses only the ones above it in this list,
//! and each is one module named after what it holds:
//!
//! | layer | module | what it holds |
//! | --- | --- | --- |
//! | socket | [`socket`] | [`FutureSocket`](socket::FutureSocket) descriptors: URL, kind, bind/connect, options, parsed from `bind:tcp://*:5555` |
//! | message | [`message`], [`auth`], [`untrusted`] | [`ClusterRequest`](message::ClusterRequest), [`ClusterResult`](message::ClusterResult), commands, and the one bounded, versioned multipart wire format; HMAC-SHA256 signing with replay checks for hub sockets; network bytes escaped before they are shown |
//! | toolkit | [`ventilator`], [`worker`], [`sink`], [`devices`], [`commands`] | glimpse's `zmq_cluster`: PUSH requests out, workers PULL/PUSH with a SUB for commands, PULL results in; streamer and forwarder; kill, restart, ping |
//! | config | [`config`] | a cluster's sockets in one TOML file (reader, writer, broker) |
//! | jobs | [`template`], [`exec`] | command templates with GNU parallel's replacement strings; running one command with capture, timeout and cancellation |
//! | map | [`map`] | the `zcluster map` engine: lazy inputs, ordering, halting, over a [`map::Backend`] (a hub client) |
//! | pool | [`pool`] | typed `map`, `imap`, `imap_unordered`, `map_reduce` over named handlers in worker binaries |
//! | hub | [`hub`] | engines, heartbeats, dispatch by credit, the task store, queries and commands |
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
pub mod launch;
pub mod map;
pub mod message;
pub mod pool;
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
