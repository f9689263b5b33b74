//! The hub's event loop: one thread owning every hub socket.
//!
//! ```text
//! engines ══DEALER/ROUTER══▶ hub ◀══ROUTER/DEALER══ clients
//!   register, heartbeat,      │      open/close jobs, tasks, queries;
//!   results, command replies  │      results back to the submitting client
//!                             ├─ task store: every request/result pair
//!                             └─ notifications (PUB): (un)registrations
//! ```
//!
//! **Dispatch by credit.** Each engine registers with a number of slots; the
//! hub sends an engine a task only while it has a free slot, addressed to it
//! through the ROUTER, and the slot is free again when the result arrives.
//! A PUSH socket cannot do this (it round-robins over peers whether they are
//! busy or not, and hands a whole HWM to the first one connected), so no
//! engine ever holds a queue while another is idle. Jobs take turns for free
//! slots (round robin), so concurrent jobs share the engines fairly.
//!
//! **Flow control.** A client may have at most `credit` tasks of a job
//! outstanding (sent, no result yet), or `credit_per_slot` per slot
//! registered when it opened the job where that is more; the hub's memory
//! per job is bounded by it, however long the input.
//!
//! **Failure.** An engine that misses `heartbeat_misses` heartbeats is
//! declared dead, unregistered and published; its running tasks go back to
//! the front of their jobs' queues. Delivery is at least once: a result for a
//! task already finished is dropped by (job, task id).
//!
//! # The map of this folder
//!
//! In the shape of HyperQueue's tako server: plain state, a scheduler that
//! is a function of it, reactions grouped by peer, one outbox.
//!
//! | file | what it holds |
//! | --- | --- |
//! | `mod.rs` | options, [`Hub::bind`] and the loop ([`Hub::run`]): receive, react, dispatch, beat |
//! | `state.rs` | the state as plain data: engines, jobs and tasks, turns, pending commands, slot totals |
//! | `scheduler.rs` | **every placement decision**: free slots, prefetch depth, fair turns, retry elsewhere, a job's cap, straggler copies; returns assignments, sends nothing |
//! | `engines.rs` | engines: register, adopt, heartbeat, unregister (a dead engine's tasks requeued, the poison limit) |
//! | `clients.rs` | clients: open, close, attach, submit, cancel, resubmit, purge |
//! | `results.rs` | results: retries, completion, the first copy winning; sending the scheduler's assignments |
//! | `queries.rs` | queries: status, results, result pages |
//! | `commands.rs` | commands: kill, restart, ping, shutdown fan-out and their replies |
//! | `recovery.rs` | carrying on the unfinished jobs of the store after a restart |
//! | `held.rs` | the commit gate in use: what waits for the store, and stopping the line |
//! | `outbox.rs` | the one seam every send goes through (a recorder in tests) |
//! | `sockets.rs` | the sockets: creation and binding, the handshake, the real outbox |

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::commit::{self, CommitLog, Gate};
use super::connection::{ConnectionError, ConnectionInfo};
use super::curve::CurveKeys;
use super::store::{self, Store, StoreError, StoreOptions};
use crate::auth::Key;
use crate::message::{MessageError, MAX_MESSAGE_BYTES};
use crate::untrusted::escape;

mod clients;
mod commands;
mod engines;
mod held;
mod outbox;
pub mod placement;
mod queries;
mod recovery;
mod results;
mod scheduler;
mod sockets;
mod state;

use held::Held;
use outbox::Outbox;
use sockets::{answer_handshake, Sockets};
use state::State;

pub use recovery::CarriedOn;

/// Default tasks a client may have outstanding per job.
pub const DEFAULT_CREDIT: u32 = 1024;

/// Default tasks a client may have outstanding per job for each slot
/// registered when it opens the job, where that is more than
/// [`DEFAULT_CREDIT`]: a thousand one-slot engines need more than a
/// thousand tasks in flight for the hub to keep a few queued at each
/// (prefetch), or every task travels alone, one message each way, and
/// the engines wait on the round trip.
pub const DEFAULT_CREDIT_PER_SLOT: u32 = 16;

/// Engines a task may take down with it (they died while running it)
/// before it is failed instead of tried again.
pub const DEFAULT_POISON_LIMIT: u32 = 3;

/// Time away from the sockets in one turn of the hub's loop past which the
/// engines are not held responsible for it (see [`Hub::run`]).
const STALL: Duration = Duration::from_millis(100);

/// Peers remembered for log-once; past this, refusals are logged at debug
/// level only, so a flood of fresh identities cannot grow the set.
const MAX_WARNED_PEERS: usize = 4096;

/// Messages read from one socket before the loop turns to the other, so
/// neither starves the other.
const RECV_BURST: usize = 256;

/// Errors that stop a hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A socket could not be made or bound.
    #[error("hub cannot {operation} `{url}`: {source}")]
    Bind {
        /// What was being done.
        operation: &'static str,
        /// The URL concerned.
        url: String,
        /// The underlying error.
        #[source]
        source: zmq::Error,
    },
    /// The task store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The connection file could not be written.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A socket failed while running.
    #[error("hub socket failed: {0}")]
    Transport(#[from] MessageError),
}

/// Where the hub listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoints {
    /// TCP on this address: ports `base`, `base+1`, `base+2`, or free ones.
    Tcp {
        /// Interface address (`127.0.0.1`, `0.0.0.0`, ...).
        ip: String,
        /// First of three consecutive ports; free ports when `None`.
        port_base: Option<u16>,
    },
    /// In-process (`inproc://NAME-engines`, ...): a hub embedded in a map.
    Inproc(String),
    /// Exactly these URLs (a restarted hub binding its old ports).
    Urls {
        /// Engines ROUTER.
        engines: String,
        /// Clients ROUTER.
        clients: String,
        /// Notifications PUB.
        notifications: String,
    },
}

/// How to run a hub; plain data (the CLI fills it from flags).
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Where to listen.
    pub endpoints: Endpoints,
    /// Where to write the connection file (none for an embedded hub).
    pub connection_file: Option<PathBuf>,
    /// The task store: a SQLite path or `:memory:`.
    pub store: String,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Missed heartbeats before an engine is declared dead.
    pub heartbeat_misses: u32,
    /// Tasks a client may have outstanding per job.
    pub credit: u32,
    /// The signing key (hex); a fresh one when `None`.
    pub key: Option<String>,
    /// Engines that may die while running one task before the task is
    /// failed (a poison input) rather than tried on yet another.
    pub poison_limit: u32,
    /// Largest frame the hub accepts (at most [`MAX_MESSAGE_BYTES`]); a
    /// peer that sends a larger one is disconnected by ZeroMQ before any of
    /// it is buffered.
    pub max_message: usize,
    /// Re-run stragglers speculatively on idle slots (the straggler rule of
    /// the hub's scheduler).
    pub speculate: bool,
    /// Open a SQLite store that is behind its commit record (see
    /// [`StoreOptions::accept_rollback`]) instead of refusing to start.
    pub accept_rollback: bool,
    /// A job's credit is at least this many tasks per slot registered
    /// when it opens (see [`DEFAULT_CREDIT_PER_SLOT`]); 0: `credit` alone.
    pub credit_per_slot: u32,
}

impl HubOptions {
    /// The largest frame the hub's sockets take: `max_message` within
    /// 1 KiB..=[`MAX_MESSAGE_BYTES`]. Engines and clients learn it when they
    /// register or open a job, and refuse to send anything larger.
    pub fn message_limit(&self) -> usize {
        self.max_message.clamp(1024, MAX_MESSAGE_BYTES)
    }
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            endpoints: Endpoints::Tcp {
                ip: "127.0.0.1".into(),
                port_base: None,
            },
            connection_file: None,
            store: ":memory:".into(),
            heartbeat: Duration::from_secs(1),
            heartbeat_misses: 3,
            credit: DEFAULT_CREDIT,
            key: None,
            poison_limit: DEFAULT_POISON_LIMIT,
            max_message: MAX_MESSAGE_BYTES,
            speculate: true,
            accept_rollback: false,
            credit_per_slot: DEFAULT_CREDIT_PER_SLOT,
        }
    }
}

/// What the hub's reactions work with: its state, its store and the outbox
/// they send through (the sockets, or a recorder in tests). Each file of
/// this folder adds the reactions to one kind of peer.
struct Core<O> {
    outbox: O,
    store: Box<dyn Store>,
    options: HubOptions,
    state: State,
    shutdown: bool,
    /// Peers whose refused messages were already logged at warn level.
    warned: HashSet<Vec<u8>>,
    /// Messages refused (unsigned, forged, replayed, malformed) since start.
    refused: u64,
    /// Drawn at each start: clients that see it change reattach.
    epoch: u64,
    /// The store's commit position and failure (see [`commit`]).
    commits: Arc<CommitLog>,
    /// What waits for its write to commit before it goes out.
    held: Gate<Held>,
    /// Why the line stopped: the store cannot write (see `held.rs`).
    stopped: Option<String>,
}

impl<O: Outbox> Core<O> {
    /// A hub with no engine and no job yet, sending through `outbox`.
    fn new(outbox: O, store: Box<dyn Store>, options: HubOptions, epoch: u64) -> Self {
        let commits = store.commits();
        Core {
            outbox,
            store,
            options,
            state: State::default(),
            shutdown: false,
            warned: HashSet::new(),
            refused: 0,
            epoch,
            commits,
            held: Gate::default(),
            stopped: None,
        }
    }

    /// Drops a message that failed its checks (unsigned, forged, replayed,
    /// malformed): logged at warn level once per peer, then at debug level.
    fn refuse(&mut self, side: &'static str, identity: &[u8], error: &MessageError) {
        self.refused += 1;
        let peer = escape(identity);
        if self.warned.len() < MAX_WARNED_PEERS && self.warned.insert(identity.to_vec()) {
            warn!(%peer, side, %error, "dropping a bad message (further ones from this peer are logged at debug level)");
        } else {
            debug!(%peer, side, %error, "dropping a bad message");
        }
    }

    /// What is due every heartbeat: dead engines found, live ones beaten,
    /// late commands answered, stragglers copied.
    fn beat(&mut self) {
        self.heartbeat();
        self.expire_commands();
        if self.options.speculate {
            self.speculate();
        }
    }
}

/// A bound hub, ready to [`run`](Hub::run).
pub struct Hub {
    core: Core<Sockets>,
    connection: ConnectionInfo,
}

impl Hub {
    /// Binds the sockets, opens the store and writes the connection file.
    pub fn bind(ctx: &zmq::Context, options: HubOptions) -> Result<Self, HubError> {
        let key = match &options.key {
            Some(key) => key.clone(),
            None => ConnectionInfo::new_key()?,
        };
        let signing = Key::from_hex(&key).map_err(ConnectionError::BadKey)?;
        let curve = CurveKeys::derive(&key).map_err(ConnectionError::from)?;
        // This start's epoch: every message to or from the hub is signed for
        // it, so nothing captured before this start is obeyed (never 0,
        // which marks a peer's hello).
        let epoch = crate::auth::random_u64().max(1);
        let (sockets, bound) = Sockets::bind(ctx, &options, &curve, &signing, epoch)?;
        let store = store::open_with(
            &options.store,
            &StoreOptions {
                accept_rollback: options.accept_rollback,
            },
        )?;
        // A wildcard bind (0.0.0.0) is reachable at the machine's name.
        let reachable = |url: String| url.replace("0.0.0.0", &crate::host_name());
        let connection = ConnectionInfo {
            engines: reachable(bound.engines),
            clients: reachable(bound.clients),
            notifications: reachable(bound.notifications),
            key,
            store: store.location(),
            curve,
        };
        let mut core = Core::new(sockets, store, options, epoch);
        // Recovery happens before the connection file is (re)written, so
        // nobody reaches a hub that has not yet taken its jobs back.
        core.recover()?;
        let hub = Hub { core, connection };
        if let Some(path) = &hub.core.options.connection_file {
            hub.connection.write(path)?;
        }
        info!(engines = %hub.connection.engines, clients = %hub.connection.clients, store = %hub.connection.store, "hub bound");
        Ok(hub)
    }

    /// The jobs it runs and what is left of each, by job id: after a
    /// restart, what it took back from the store, for its start-up report.
    pub fn carried_on(&self) -> Vec<CarriedOn> {
        self.core.carried_on()
    }

    /// Jobs it is running (after a restart: the unfinished ones it took
    /// back from the store).
    pub fn live_jobs(&self) -> usize {
        self.core.state.jobs.len()
    }

    /// What engines and clients need to reach this hub.
    pub fn connection(&self) -> &ConnectionInfo {
        &self.connection
    }

    /// Serves until a client asks for shutdown or `stop` is set.
    pub fn run(mut self, stop: &Arc<AtomicBool>) -> Result<(), HubError> {
        let core = &mut self.core;
        let mut next_beat = Instant::now() + core.options.heartbeat;
        while !core.shutdown && !stop.load(Ordering::Relaxed) {
            let wait = next_beat
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            let poll_from = Instant::now();
            let polled = commit::wait_readable(
                core.outbox.engines.socket(),
                core.outbox.clients.socket(),
                &core.commits,
                wait,
            );
            let busy_from = Instant::now();
            // A poll that returns well past its timeout means the hub was
            // not running (stopped, suspended, starved): away as well.
            let overslept = busy_from
                .duration_since(poll_from)
                .saturating_sub(wait + STALL);
            let (engines_ready, clients_ready) = match polled {
                Ok(ready) => {
                    if ready.commits {
                        core.commits.take_wake();
                    }
                    (ready.first, ready.second)
                }
                Err(e) => return Err(HubError::Transport(e.into())),
            };
            // Drain each socket in bursts so neither starves the other.
            if engines_ready {
                drain(core, Peer::Engines)?;
            }
            if clients_ready {
                drain(core, Peer::Clients)?;
            }
            core.release();
            core.dispatch();
            core.outbox.flush();
            // Time the hub spent away from its sockets (a big query, a slow
            // flush, a burst of large messages) is not the engines' silence:
            // their heartbeats wait unread meanwhile. Credit it to them before
            // any death check, or a long enough stall declares every engine
            // dead and counts a death against each running task.
            let now = Instant::now();
            let away = now.duration_since(busy_from) + overslept;
            if away > STALL {
                debug!(
                    ?away,
                    "hub was busy; engines' silence meanwhile not counted"
                );
                core.excuse_silence(away, now);
            }
            if now >= next_beat {
                core.outbox.accept_subscriptions();
                core.beat();
                next_beat = now + core.options.heartbeat;
            }
        }
        core.store.flush()?;
        core.release();
        core.outbox.flush();
        info!("hub stopped");
        Ok(())
    }
}

/// The two kinds of peer the hub reads from.
#[derive(Clone, Copy)]
enum Peer {
    Engines,
    Clients,
}

/// Reads up to [`RECV_BURST`] messages from one side's socket, answering
/// handshakes and handing the rest to that side's reactions.
fn drain(core: &mut Core<Sockets>, peer: Peer) -> Result<(), HubError> {
    for _ in 0..RECV_BURST {
        let socket = match peer {
            Peer::Engines => &mut core.outbox.engines,
            Peer::Clients => &mut core.outbox.clients,
        };
        let (identity, envelope) = match socket.recv_routed(zmq::DONTWAIT) {
            Ok(received) => received,
            Err(e) if e.is_timeout() => return Ok(()),
            Err(e) => return Err(HubError::Transport(e)),
        };
        if answer_handshake(socket, &identity, &envelope) {
            continue;
        }
        match peer {
            Peer::Engines => core.on_engine(identity, envelope),
            Peer::Clients => core.on_client(identity, envelope),
        }
    }
    Ok(())
}

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;
