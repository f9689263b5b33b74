//! The hub: engines that register and heartbeat, a task store of every
//! request/result pair, jobs from many clients, and the cluster commands
//! (IPython parallel's Hub over zcluster's toolkit).
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`connection`] | the connection file (URLs and keys, mode 0600) |
//! | [`curve`] | CURVE on every hub socket: only holders of the connection file complete a handshake |
//! | [`protocol`] | what engines, clients and the hub say to each other |
//! | [`server`] | the hub itself, a folder: its state as plain data (`state.rs`), **every placement decision** in `scheduler.rs` (a function of the state, unit-tested without sockets), reactions by peer (`engines.rs`, `clients.rs`, `results.rs`, `queries.rs`, `commands.rs`, `recovery.rs`), one outbox every send goes through (`outbox.rs`), the sockets (`sockets.rs`) and the loop (`mod.rs`) |
//! | [`store`] | the task store: SQLite (batched writes, WAL) or in memory; its folder's own map says which file holds what |
//! | [`link`] | a peer's connection to the hub: a fresh identity per connection, the epoch handshake |
//! | [`commit`] | what waits for the store to commit: tasks to dispatch, results to deliver |
//! | [`engine`] | the worker side: `zcluster worker --hub FILE` |
//! | [`client`] | calls to a hub, and the backend of `zcluster map --hub` |
//! | [`embedded`] | a hub and an engine inside this process: `zcluster map`'s default |
//! | [`subscriber`] | listening to the hub's signed notifications: `zcluster events`, the live views |
//! | `recent` | a job's recent task times and their median, kept by the hub (prefetch, stragglers) and by an engine (drain) |

pub mod client;
pub mod commit;
pub mod connection;
pub mod curve;
pub mod embedded;
pub mod engine;
pub mod link;
pub mod protocol;
mod recent;
pub mod server;
pub mod store;
pub mod subscriber;
