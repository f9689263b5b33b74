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
//! outstanding (sent, no result yet); the hub's memory per job is bounded by
//! it, however long the input.
//!
//! **Failure.** An engine that misses `heartbeat_misses` heartbeats is
//! declared dead, unregistered and published; its running tasks go back to
//! the front of their jobs' queues. Delivery is at least once: a result for a
//! task already finished is dropped by (job, task id).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use super::commit::{self, CommitLog, Gate};
use super::connection::{ConnectionError, ConnectionInfo};
use super::curve::{self, CurveKeys, ZapHandler};
use super::protocol::{
    AttachInfo, ClientCall, EngineId, EngineMessage, EngineStatus, HubInfo, HubStatus, HubToEngine,
    JobId, JobKind, JobStatus, Notification, PurgeTarget, Reply, ResultItem, TaskReport,
};
use super::store::{
    self, Finished, JobRecord, NewTask, Store, StoreError, StoreOptions, TaskFilter, TaskId,
    TaskRecord, TaskState,
};
use crate::auth::{AuthError, Channel, Key};
use crate::message::{
    self, decode_value, encode_value, ClusterRequest, ClusterResult, Command, CommandReply,
    Envelope, Header, MessageError, MessageKind, ResultMetadata, ResultStatus, SignedSocket,
    MAX_MESSAGE_BYTES,
};
use crate::socket::{last_endpoint, millis, DEFAULT_LINGER};
use crate::untrusted::{escape, escape_error};

/// Default tasks a client may have outstanding per job.
pub const DEFAULT_CREDIT: u32 = 1024;

/// Jobs one client may have running at once: with the credit per job, this
/// bounds what one client can make the hub hold.
const MAX_JOBS_PER_CLIENT: usize = 256;

/// Engines a task may take down with it (they died while running it)
/// before it is failed instead of tried again.
pub const DEFAULT_POISON_LIMIT: u32 = 3;

/// How long kill and ping wait for engines to answer.
const COMMAND_WAIT: Duration = Duration::from_secs(5);

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
    /// Re-run stragglers speculatively on idle slots (see
    /// [`Hub`]'s straggler rule).
    pub speculate: bool,
    /// Open a SQLite store that is behind its commit record (see
    /// [`StoreOptions::accept_rollback`]) instead of refusing to start.
    pub accept_rollback: bool,
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
        }
    }
}

struct Engine {
    id: EngineId,
    identity: Vec<u8>,
    host: String,
    pid: u32,
    slots: u32,
    handlers: Vec<String>,
    running: HashSet<(JobId, u64)>,
    completed: u64,
    last_seen: Instant,
    /// Acknowledged a kill or restart: no new tasks.
    leaving: bool,
    /// A send to it failed (its connection is gone): no new tasks until it
    /// is heard from again, or declared dead by its missed heartbeats.
    unreachable: bool,
    /// The name it registered under, one per engine process (its routing
    /// identity changes with each connection).
    name: String,
}

impl Engine {
    /// Tasks it can take now: its free slots, or, while there is a backlog,
    /// as many again to queue locally (prefetch).
    fn free(&self, depth: u32) -> u32 {
        if self.leaving || self.unreachable {
            0
        } else {
            let capacity = self.slots.saturating_mul(depth.max(1));
            capacity.saturating_sub(self.running.len() as u32)
        }
    }

    fn can_run(&self, kind: &JobKind) -> bool {
        match kind {
            JobKind::Exec => true,
            JobKind::Handler(name) => self.handlers.iter().any(|h| h == name),
        }
    }
}

struct Task {
    store_id: TaskId,
    request: Vec<u8>,
    engine: Option<EngineId>,
    attempts: u32,
    /// Engines it failed on or took down: a retry prefers another.
    failed_on: Vec<EngineId>,
    /// Engines that died while running it.
    lost: u32,
    /// When it was last sent to an engine.
    started: Option<Instant>,
    /// Where a second copy runs (a straggler, speculatively re-run), and
    /// since when.
    spare: Option<(EngineId, Instant)>,
    /// A second copy runs, or won or lost already: no other is started
    /// while the two copies both stand.
    speculated: bool,
    /// Not counted against the client's credit: put back by `resubmit`
    /// into a running job, or taken back from the store by a restarted hub
    /// (some of which the client already has results for, and which it
    /// does not count).
    uncounted: bool,
}

impl Task {
    fn new(store_id: TaskId, request: Vec<u8>, attempts: u32) -> Self {
        Task {
            store_id,
            request,
            engine: None,
            attempts,
            failed_on: Vec::new(),
            lost: 0,
            started: None,
            spare: None,
            speculated: false,
            uncounted: false,
        }
    }

    /// Engine `engine` lost it (it left, or it `died`): a retry prefers
    /// another, and a death counts. Whether it has now taken down `limit`
    /// engines (a poison input).
    fn lost_on(&mut self, engine: EngineId, died: bool, limit: u32) -> bool {
        self.failed_on.push(engine);
        self.lost += u32::from(died);
        died && self.lost >= limit.max(1)
    }

    /// The engine running its second copy.
    fn spare_engine(&self) -> Option<EngineId> {
        self.spare.map(|(engine, _)| engine)
    }

    /// One of its two copies is gone (its engine died, or it failed while
    /// the other runs): the copy on `engine` is dropped and the other runs
    /// on alone, as the task's only copy. That one may be copied again if
    /// it straggles in turn: the lost copy settled nothing, and a copy
    /// that hangs must never be left to run alone.
    fn drop_copy(&mut self, engine: EngineId) {
        if self.spare_engine() == Some(engine) {
            self.spare = None;
        } else if let (Some(e), Some((spare, since))) = (self.engine, self.spare) {
            if e != engine {
                return;
            }
            self.engine = Some(spare);
            self.started = Some(since);
            self.spare = None;
        } else {
            return;
        }
        self.speculated = false;
    }
}

/// Most tasks in one page of [`ClientCall::ResultsPage`]...
const PAGE_TASKS: usize = 1024;

/// ...and most bytes of payload in it, well under the message size limit.
const PAGE_BYTES: usize = 16 << 20;

/// What a report costs besides its payloads, roughly (times, state, ids).
const REPORT_OVERHEAD_BYTES: usize = 64;

/// A stored task as a client sees it.
fn task_report(t: TaskRecord) -> TaskReport {
    TaskReport {
        id: t.seq,
        state: t.state.as_str().into(),
        engine: t.engine,
        attempts: t.attempts,
        submitted: t.submitted,
        started: t.started,
        completed: t.completed,
        error: t.error,
        request: t.request,
        result: t.result.filter(|r| !r.is_empty()),
    }
}

/// Time away from the sockets in one turn of the hub's loop past which the
/// engines are not held responsible for it (see [`Hub::run`]).
const STALL: Duration = Duration::from_millis(100);

/// Successful task times a job keeps for its median.
const DURATION_SAMPLES: usize = 101;

/// Finished tasks a job needs before any of its tasks counts as a straggler.
const SPECULATE_AFTER: usize = 5;

/// A task counts as a straggler once it has run this many times the job's
/// median task time...
const STRAGGLER_FACTOR: u32 = 4;

/// ...and at least this long.
const STRAGGLER_FLOOR: Duration = Duration::from_secs(2);

/// What the store keeps of a job besides its id: enough for a restarted hub
/// to carry it on, and to route its results to its client.
#[derive(Serialize, Deserialize)]
struct JobSpec {
    kind: JobKind,
    description: String,
    retries: u32,
    halt_on_failure: bool,
    client: Vec<u8>,
}

struct Job {
    client: Vec<u8>,
    kind: JobKind,
    description: String,
    queue: VecDeque<u64>,
    tasks: HashMap<u64, Task>,
    total: Option<u64>,
    finished: u64,
    /// Extra attempts for a failed task.
    retries: u32,
    /// Stop dispatching at the first failure.
    halt_on_failure: bool,
    /// A failure happened with `halt_on_failure`: dispatch nothing more.
    halted: bool,
    /// The latest successful task times, for the straggler rule.
    durations: VecDeque<Duration>,
    /// Their median, refreshed every few results (sorting on every dispatch
    /// would cost more than a no-op task).
    median: Option<Duration>,
    /// Successful task times recorded in all.
    recorded: u64,
    /// Tasks in `tasks` not counted against the client's credit (see
    /// [`Task::uncounted`]).
    uncounted: usize,
}

impl Job {
    /// A job with nothing queued, no retries and no halting.
    fn new(client: Vec<u8>, kind: JobKind, description: String) -> Self {
        Job {
            client,
            kind,
            description,
            queue: VecDeque::new(),
            tasks: HashMap::new(),
            total: None,
            finished: 0,
            retries: 0,
            halt_on_failure: false,
            halted: false,
            durations: VecDeque::new(),
            median: None,
            recorded: 0,
            uncounted: 0,
        }
    }

    /// Takes a task out of the job.
    fn take(&mut self, id: u64) -> Option<Task> {
        let task = self.tasks.remove(&id)?;
        self.uncounted -= usize::from(task.uncounted);
        Some(task)
    }

    /// Puts a task (back) into the job.
    fn put(&mut self, id: u64, task: Task) {
        self.uncounted += usize::from(task.uncounted);
        if let Some(old) = self.tasks.insert(id, task) {
            self.uncounted -= usize::from(old.uncounted);
        }
    }

    /// Tasks the client has outstanding, against its credit.
    fn client_tasks(&self) -> usize {
        self.tasks.len() - self.uncounted
    }

    fn record_duration(&mut self, took: Duration) {
        if self.durations.len() == DURATION_SAMPLES {
            self.durations.pop_front();
        }
        self.durations.push_back(took);
        self.recorded += 1;
        if self.recorded < 16 || self.recorded % 16 == 0 {
            let mut sorted: Vec<Duration> = self.durations.iter().copied().collect();
            sorted.sort_unstable();
            self.median = sorted.get(sorted.len() / 2).copied();
        }
    }

    /// Tasks per slot an engine may hold while the job's backlog is long:
    /// the shorter its tasks, the more it takes to hide the round trip
    /// between a result and the next task (a few for tasks of a second,
    /// many for tasks of microseconds, which cost nothing to wait behind).
    fn prefetch_depth(&self) -> u32 {
        match self.median() {
            // Engines run tasks this short several to a message on one
            // slot, and need a deep queue to keep each slot busy through
            // the round trip to the hub.
            Some(m) if m < Duration::from_micros(100) => 64,
            Some(m) if m < Duration::from_millis(1) => 16,
            Some(m) if m < Duration::from_millis(10) => 4,
            _ => 2,
        }
    }

    fn median(&self) -> Option<Duration> {
        self.median
    }

    /// How long a task of this job may run before a second copy is started
    /// on an idle slot: [`STRAGGLER_FACTOR`] times the median of its recent
    /// successful tasks, at least [`STRAGGLER_FLOOR`]; `None` until
    /// [`SPECULATE_AFTER`] tasks have finished.
    fn straggler_after(&self) -> Option<Duration> {
        if self.durations.len() < SPECULATE_AFTER {
            return None;
        }
        let median = self.median()?;
        Some((median * STRAGGLER_FACTOR).max(STRAGGLER_FLOOR))
    }
}

enum CommandPurpose {
    Kill,
    Ping,
    Shutdown,
}

struct PendingCommand {
    client: Vec<u8>,
    request: u64,
    purpose: CommandPurpose,
    waiting: HashSet<EngineId>,
    replies: Vec<(EngineId, CommandReply)>,
    /// Engines asked that never answered (gone, or too slow).
    silent: Vec<EngineId>,
    deadline: Instant,
}

/// One job a hub carries on, as [`Hub::carried_on`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedOn {
    /// The job.
    pub job: JobId,
    /// Its tasks not finished (queued, or running).
    pub to_run: u64,
    /// Its tasks finished (ok or failed), in the store.
    pub finished: u64,
    /// Its number of inputs, if its client said it before the hub stopped.
    pub total: Option<u64>,
}

/// A bound hub, ready to [`run`](Hub::run).
pub struct Hub {
    engines_socket: SignedSocket,
    clients_socket: SignedSocket,
    notifications: SignedSocket,
    store: Box<dyn Store>,
    options: HubOptions,
    connection: ConnectionInfo,
    engines: HashMap<EngineId, Engine>,
    by_identity: HashMap<Vec<u8>, EngineId>,
    jobs: HashMap<JobId, Job>,
    /// Jobs with queued tasks take turns in this order.
    turns: VecDeque<JobId>,
    commands: HashMap<u64, PendingCommand>,
    /// Slots of all registered engines.
    total_slots: usize,
    next_token: u64,
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
    /// Why the line stopped: the store cannot write (see [`Hub::release`]).
    stopped: Option<String>,
    /// Admits the cluster's CURVE client key on the sockets above for as
    /// long as the hub lives (see [`curve`]); held for its drop.
    _zap: ZapHandler,
}

/// What the hub lets out only once the store has committed its write
/// (see [`commit`]).
enum Held {
    /// A task of a job, to queue for dispatch once its insert is committed.
    Task { job: JobId, task: u64 },
    /// A result for its client, once the task's finish is committed.
    Result {
        client: Vec<u8>,
        header: Header,
        body: Vec<u8>,
    },
    /// A failure the hub decided, for its client, once it is committed.
    Failure {
        client: Vec<u8>,
        job: JobId,
        task: u64,
        reason: String,
    },
}

/// Peers remembered for log-once; past this, refusals are logged at debug
/// level only, so a flood of fresh identities cannot grow the set.
const MAX_WARNED_PEERS: usize = 4096;

/// Answers what belongs to the handshake (see [`crate::auth#epochs`]): a
/// peer's hello gets its welcome, and a genuine message of another hub
/// start gets a welcome for no challenge, which tells its sender the hub
/// restarted and it must say hello again. True for a hello, which needs
/// nothing more; the other is still refused (and logged) by the caller.
fn answer_handshake(
    socket: &SignedSocket,
    identity: &[u8],
    envelope: &Result<Envelope, MessageError>,
) -> bool {
    let challenge = match envelope {
        Ok(envelope) if envelope.header.kind == MessageKind::Hello => envelope.header.id,
        Err(MessageError::Auth(AuthError::OtherEpoch { .. })) => 0,
        _ => return false,
    };
    if let Err(e) = socket.welcome(identity, challenge) {
        debug!(error = %e, "cannot answer a hello");
    }
    challenge != 0
}

/// Sends a task's recorded request to the engine `identity`.
fn send_task(
    socket: &SignedSocket,
    identity: &[u8],
    job: JobId,
    id: u64,
    request: &[u8],
) -> Result<(), MessageError> {
    let header = Header {
        kind: MessageKind::Request,
        job,
        id,
    };
    socket.send_raw_routed(identity, &header, request)
}

/// Sends tasks of `job` (id, recorded request) to the engine `identity`:
/// one alone as a plain request, several as one [`MessageKind::Tasks`]
/// message of (id, request) pairs.
fn send_tasks(
    socket: &SignedSocket,
    identity: &[u8],
    job: JobId,
    tasks: &[(u64, &[u8])],
) -> Result<(), MessageError> {
    match tasks {
        [] => Ok(()),
        [(id, request)] => send_task(socket, identity, job, *id, request),
        [(first, _), ..] => {
            let header = Header {
                kind: MessageKind::Tasks,
                job,
                id: *first,
            };
            let items: Vec<(u64, &serde_bytes::Bytes)> = tasks
                .iter()
                .map(|(id, request)| (*id, serde_bytes::Bytes::new(request)))
                .collect();
            socket.send_routed(identity, &header, &items)
        }
    }
}

/// Most tasks the hub sends an engine in one message...
const DISPATCH_BATCH: usize = 32;

/// ...and most bytes of requests in it (a larger one goes alone)...
const DISPATCH_BATCH_BYTES: usize = 1 << 20;

/// ...and only for a job whose median task takes less than this.
const DISPATCH_BATCH_BELOW: Duration = Duration::from_millis(1);

/// The request body with its attempt number in the metadata (re-encoded
/// only on a retry, which is rare).
fn with_attempt(body: &[u8], attempt: u32) -> Vec<u8> {
    match decode_value::<ClusterRequest>(body, "request") {
        Ok(request) => {
            let request = request.with_metadata(message::ATTEMPT_KEY, attempt.to_string());
            encode_value(&request, "request").unwrap_or_else(|_| body.to_vec())
        }
        Err(_) => body.to_vec(),
    }
}

/// Most messages buffered per peer before the hub stops reading that
/// peer's connection (TCP pushes back on it; nothing is dropped). Honest
/// peers stay far below it, since credit bounds what they send unanswered.
const INBOUND_PER_PEER: i32 = 4096;

/// Bytes of one network peer's messages the hub buffers unread, at most:
/// the receive high-water mark is this over the largest message...
const INBOUND_BYTES_PER_PEER: usize = 256 << 20;

/// ...but never below this many messages: over TCP, a mark of 8 costs a
/// fifth of the hub's task rate and one of 4 a third (libzmq wakes the
/// reading I/O thread every half mark), while 16 costs nothing measurable.
const INBOUND_MIN_MESSAGES: i32 = 16;

/// The receive high-water mark of a hub socket. A network peer, which may
/// not hold the key, can make the hub hold at most
/// max([`INBOUND_BYTES_PER_PEER`], 16 × `max_message`) of its messages, plus
/// the one being read: ZeroMQ counts messages, not bytes, so the mark is
/// derived from the largest message. Inproc peers are this process's own
/// threads and keep the full mark.
fn inbound_hwm(url: &str, max_message: usize) -> i32 {
    if url.starts_with("inproc://") {
        return INBOUND_PER_PEER;
    }
    let fit = INBOUND_BYTES_PER_PEER / max_message.max(1);
    i32::try_from(fit)
        .unwrap_or(INBOUND_PER_PEER)
        .clamp(INBOUND_MIN_MESSAGES, INBOUND_PER_PEER)
}

/// Largest subscription message the notification socket takes (a flag byte
/// and a topic; the only topic honoured is the empty one).
const SUBSCRIPTION_BYTES: i64 = 512;

/// Subscription messages buffered per peer before the hub stops reading it.
const SUBSCRIPTIONS_IN_FLIGHT: i32 = 64;

/// Puts an XPUB socket in manual mode: subscriptions arrive as messages and
/// apply only when the owner applies them.
fn set_xpub_manual(socket: &mut zmq::Socket) -> Result<(), zmq::Error> {
    let on: libc::c_int = 1;
    // SAFETY: `socket` is a live socket for the whole call, and the option
    // value points at a c_int of the size given, as zmq_setsockopt wants.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_XPUB_MANUAL as libc::c_int,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno only reads this thread's last libzmq error.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

fn router(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    url: &str,
    max_message: usize,
    keys: &CurveKeys,
) -> Result<(zmq::Socket, String), HubError> {
    let bind = |operation, source| HubError::Bind {
        operation,
        url: url.to_string(),
        source,
    };
    let mut socket = ctx
        .socket(kind)
        .map_err(|e| bind("create a socket for", e))?;
    socket
        .set_linger(millis(DEFAULT_LINGER))
        .map_err(|e| bind("configure", e))?;
    // Outbound flow control is the hub's (slots, credit), not the
    // socket's: never drop a task or result because a pipe is full.
    socket.set_sndhwm(0).map_err(|e| bind("configure", e))?;
    socket
        .set_rcvhwm(inbound_hwm(url, max_message))
        .map_err(|e| bind("configure", e))?;
    if kind == zmq::ROUTER {
        // A send to a peer that is gone is an error, not a silent drop.
        // Handover stays off: a routing identity is chosen by the peer and
        // travels in clear, so with it anyone could take over an engine's
        // or a client's route by connecting under its identity. Without it,
        // a connection keeps its identity until it closes, and a peer that
        // reconnects does so under a fresh one (see `hub::link`).
        socket
            .set_router_mandatory(true)
            .map_err(|e| bind("configure", e))?;
    }
    if kind == zmq::XPUB {
        // Subscriptions are ZMTP, below signing: anyone who reaches the
        // port can send them. libzmq keeps each one (about 32 bytes per
        // byte) until its peer leaves, so the hub takes them in by hand:
        // only the empty one (everything) is ever applied, the rest are
        // read and dropped, and they are tiny and few in flight.
        set_xpub_manual(&mut socket).map_err(|e| bind("configure", e))?;
        socket
            .set_maxmsgsize(SUBSCRIPTION_BYTES)
            .map_err(|e| bind("configure", e))?;
        socket
            .set_rcvhwm(SUBSCRIPTIONS_IN_FLIGHT)
            .map_err(|e| bind("configure", e))?;
    } else {
        socket
            .set_maxmsgsize(max_message as i64)
            .map_err(|e| bind("configure", e))?;
    }
    curve::server(&mut socket, keys).map_err(|e| bind("set CURVE up on", e))?;
    socket.bind(url).map_err(|e| bind("bind", e))?;
    let endpoint =
        last_endpoint(&socket).map_err(|_| bind("read the endpoint of", zmq::Error::EINVAL))?;
    Ok((socket, endpoint))
}

impl Hub {
    /// Binds the sockets, opens the store and writes the connection file.
    pub fn bind(ctx: &zmq::Context, options: HubOptions) -> Result<Self, HubError> {
        // Recovery happens before the connection file is (re)written, so
        // nobody reaches a hub that has not yet taken its jobs back.
        let (engines_url, clients_url, notifications_url) = match &options.endpoints {
            Endpoints::Tcp { ip, port_base } => {
                let port = |offset: u16| match port_base {
                    Some(base) => format!("tcp://{ip}:{}", base.saturating_add(offset)),
                    None => format!("tcp://{ip}:*"),
                };
                (port(0), port(1), port(2))
            }
            Endpoints::Inproc(name) => (
                format!("inproc://{name}-engines"),
                format!("inproc://{name}-clients"),
                format!("inproc://{name}-notifications"),
            ),
            Endpoints::Urls {
                engines,
                clients,
                notifications,
            } => (engines.clone(), clients.clone(), notifications.clone()),
        };
        let key = match &options.key {
            Some(key) => key.clone(),
            None => ConnectionInfo::new_key()?,
        };
        let keys = CurveKeys::derive(&key).map_err(ConnectionError::from)?;
        let zap = ZapHandler::start(ctx, &keys).map_err(ConnectionError::from)?;
        let max = options.message_limit();
        let (engines_socket, engines) = router(ctx, zmq::ROUTER, &engines_url, max, &keys)?;
        let (clients_socket, clients) = router(ctx, zmq::ROUTER, &clients_url, max, &keys)?;
        let (notifications, notifications_endpoint) =
            router(ctx, zmq::XPUB, &notifications_url, max, &keys)?;
        let store = store::open_with(
            &options.store,
            &StoreOptions {
                accept_rollback: options.accept_rollback,
            },
        )?;
        let commits = store.commits();
        let signing = Key::from_hex(&key).map_err(ConnectionError::BadKey)?;
        // This start's epoch: every message to or from the hub is signed for
        // it, so nothing captured before this start is obeyed (never 0,
        // which marks a peer's hello).
        let epoch = crate::auth::random_u64().max(1);
        let engines_socket = SignedSocket::hub(
            engines_socket,
            &signing,
            Channel::HubToEngine,
            Channel::EngineToHub,
            epoch,
        );
        let clients_socket = SignedSocket::hub(
            clients_socket,
            &signing,
            Channel::HubToClient,
            Channel::ClientToHub,
            epoch,
        );
        // Nothing signed is read from subscribers; the channel is unused.
        let notifications = SignedSocket::hub(
            notifications,
            &signing,
            Channel::Notifications,
            Channel::Notifications,
            epoch,
        );
        // A wildcard bind (0.0.0.0) is reachable at the machine's name.
        let reachable = |url: String| url.replace("0.0.0.0", &crate::host_name());
        let connection = ConnectionInfo {
            engines: reachable(engines),
            clients: reachable(clients),
            notifications: reachable(notifications_endpoint),
            key,
            store: store.location(),
            curve: keys,
        };
        let hub = Hub {
            engines_socket,
            clients_socket,
            notifications,
            store,
            options,
            connection,
            engines: HashMap::new(),
            by_identity: HashMap::new(),
            jobs: HashMap::new(),
            turns: VecDeque::new(),
            commands: HashMap::new(),
            total_slots: 0,
            next_token: 1,
            shutdown: false,
            warned: HashSet::new(),
            refused: 0,
            epoch,
            commits,
            held: Gate::default(),
            stopped: None,
            _zap: zap,
        }
        .recovered()?;
        if let Some(path) = &hub.options.connection_file {
            hub.connection.write(path)?;
        }
        info!(engines = %hub.connection.engines, clients = %hub.connection.clients, store = %hub.connection.store, "hub bound");
        Ok(hub)
    }

    /// Carries on the unfinished jobs a previous run of this hub left in
    /// the store: their pending and running tasks are queued again (engines
    /// register by themselves), finished ones stay finished, and results go
    /// to each job's client once it is back.
    fn recovered(mut self) -> Result<Self, HubError> {
        let unfinished: Vec<_> = self
            .store
            .jobs()?
            .into_iter()
            .filter(|j| j.total.is_none() || j.pending + j.running > 0)
            .collect();
        if unfinished.is_empty() {
            return Ok(self);
        }
        for summary in &unfinished {
            let Some(record) = self.store.job(summary.id)? else {
                continue;
            };
            let spec = decode_value::<JobSpec>(&record.spec, "job spec").unwrap_or(JobSpec {
                kind: JobKind::Exec,
                description: record.client.clone(),
                retries: 0,
                halt_on_failure: false,
                client: Vec::new(),
            });
            let mut job = Job::new(spec.client, spec.kind, spec.description);
            job.retries = spec.retries;
            job.halt_on_failure = spec.halt_on_failure;
            job.total = summary.total;
            job.finished = summary.ok + summary.failed;
            self.jobs.insert(summary.id, job);
        }
        let mut requeued = 0;
        for task in self.store.unfinished()? {
            let Some(job) = self.jobs.get_mut(&task.job) else {
                continue;
            };
            if task.state == TaskState::Running {
                self.store.task_requeued(task.id)?;
            }
            let request = task.request.unwrap_or_default();
            let mut recovered = Task::new(task.id, request, task.attempts);
            recovered.uncounted = true;
            job.put(task.seq, recovered);
            job.queue.push_back(task.seq);
            requeued += 1;
        }
        self.store.flush()?;
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            if self.jobs.get(&id).is_some_and(|j| !j.queue.is_empty()) {
                self.turns.push_back(id);
            }
            self.retire_if_done(id);
        }
        info!(
            jobs = self.jobs.len(),
            tasks = requeued,
            "carrying on unfinished jobs from the store"
        );
        for job in self.carried_on() {
            info!(
                job = job.job,
                to_run = job.to_run,
                finished = job.finished,
                total = ?job.total,
                "carrying on a job"
            );
        }
        Ok(self)
    }

    /// The jobs it runs and what is left of each, by job id: after a
    /// restart, what it took back from the store, for its start-up report.
    pub fn carried_on(&self) -> Vec<CarriedOn> {
        let mut jobs: Vec<CarriedOn> = self
            .jobs
            .iter()
            .map(|(&id, job)| CarriedOn {
                job: id,
                to_run: job.tasks.len() as u64,
                finished: job.finished,
                total: job.total,
            })
            .collect();
        jobs.sort_by_key(|j| j.job);
        jobs
    }

    /// Jobs it is running (after a restart: the unfinished ones it took
    /// back from the store).
    pub fn live_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// What engines and clients need to reach this hub.
    pub fn connection(&self) -> &ConnectionInfo {
        &self.connection
    }

    /// Serves until a client asks for shutdown or `stop` is set.
    pub fn run(mut self, stop: &Arc<AtomicBool>) -> Result<(), HubError> {
        let mut next_beat = Instant::now() + self.options.heartbeat;
        while !self.shutdown && !stop.load(Ordering::Relaxed) {
            let wait = next_beat
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            let poll_from = Instant::now();
            let polled = commit::wait_readable(
                self.engines_socket.socket(),
                self.clients_socket.socket(),
                &self.commits,
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
                        self.commits.take_wake();
                    }
                    (ready.first, ready.second)
                }
                Err(e) => return Err(HubError::Transport(e.into())),
            };
            // Drain each socket in bursts so neither starves the other.
            if engines_ready {
                for _ in 0..256 {
                    match self.engines_socket.recv_routed(zmq::DONTWAIT) {
                        Ok((identity, envelope)) => self.on_engine(identity, envelope),
                        Err(e) if e.is_timeout() => break,
                        Err(e) => return Err(HubError::Transport(e)),
                    }
                }
            }
            if clients_ready {
                for _ in 0..256 {
                    match self.clients_socket.recv_routed(zmq::DONTWAIT) {
                        Ok((identity, envelope)) => self.on_client(identity, envelope),
                        Err(e) if e.is_timeout() => break,
                        Err(e) => return Err(HubError::Transport(e)),
                    }
                }
            }
            self.release();
            self.dispatch();
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
                for engine in self.engines.values_mut() {
                    engine.last_seen = (engine.last_seen + away).min(now);
                }
            }
            if now >= next_beat {
                self.accept_subscriptions();
                self.heartbeat();
                self.expire_commands();
                if self.options.speculate {
                    self.speculate();
                }
                next_beat = now + self.options.heartbeat;
            }
        }
        self.store.flush()?;
        info!("hub stopped");
        Ok(())
    }

    // ----- engines -----

    fn on_engine(&mut self, identity: Vec<u8>, envelope: Result<Envelope, MessageError>) {
        if answer_handshake(&self.engines_socket, &identity, &envelope) {
            return;
        }
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(e) => return self.refuse("engine", &identity, &e),
        };
        let known = self.by_identity.get(&identity).copied();
        if let Some(id) = known {
            if let Some(engine) = self.engines.get_mut(&id) {
                engine.last_seen = Instant::now();
                // Back under the same identity (ZeroMQ reconnected it).
                engine.unreachable = false;
            }
        }
        match (envelope.header.kind, known) {
            (MessageKind::Control, _) => match envelope.control::<EngineMessage>() {
                Ok(EngineMessage::Register {
                    identity: name,
                    host,
                    pid,
                    slots,
                    handlers,
                    running,
                }) => {
                    self.register(identity.clone(), name, host, pid, slots, handlers);
                    self.adopt(&identity, running);
                }
                Ok(EngineMessage::Heartbeat) if known.is_none() => {
                    // A hub restarted under it, or it was declared dead.
                    self.to_engine(
                        &identity,
                        &HubToEngine::Refused {
                            reason: "unknown engine: register again".into(),
                        },
                    );
                }
                Ok(EngineMessage::Heartbeat) => {}
                Ok(EngineMessage::Unregister) => {
                    if let Some(id) = known {
                        self.unregister(id, "left", false);
                    }
                }
                Err(e) => {
                    warn!(error = %escape_error(&e), "dropping a bad control message from an engine")
                }
            },
            (MessageKind::Result(status), Some(engine)) => {
                self.on_result(engine, envelope.header, envelope.body(), status)
            }
            (MessageKind::TaskResults, Some(engine)) => {
                match decode_value::<Vec<ResultItem>>(envelope.body(), "task results") {
                    Ok(results) => {
                        for (job, id, status, body) in results {
                            let header = Header {
                                kind: MessageKind::Result(status),
                                job,
                                id,
                            };
                            self.on_result(engine, header, &body, status);
                        }
                    }
                    Err(e) => {
                        warn!(error = %escape_error(&e), "dropping a bad result batch from an engine")
                    }
                }
            }
            (MessageKind::Reply, Some(engine)) => match envelope.reply() {
                Ok(reply) => self.on_command_reply(engine, reply),
                Err(e) => warn!(error = %escape_error(&e), "dropping a bad reply"),
            },
            (kind, None) => debug!(%kind, "dropping a message from an unregistered engine"),
            (kind, Some(_)) => warn!(%kind, "dropping an unexpected message from an engine"),
        }
    }

    fn register(
        &mut self,
        identity: Vec<u8>,
        name: String,
        host: String,
        pid: u32,
        slots: u32,
        handlers: Vec<String>,
    ) {
        if let Some(id) = self.by_identity.get(&identity) {
            let reason = format!(
                "identity {} is already registered as engine {id}",
                escape(name.as_bytes())
            );
            warn!(%reason, "refusing a registration");
            self.to_engine(&identity, &HubToEngine::Refused { reason });
            return;
        }
        let id = match self.store.next_engine_id() {
            Ok(id) => id,
            Err(e) => {
                self.to_engine(
                    &identity,
                    &HubToEngine::Refused {
                        reason: e.to_string(),
                    },
                );
                return;
            }
        };
        // The same process on a new connection (it reconnected after
        // missing the hub): its old record is a ghost, retired without a
        // death; the tasks it still holds it names in its registration, and
        // `adopt` gives them back to it.
        let ghosts: Vec<EngineId> = self
            .engines
            .values()
            .filter(|e| e.name == name)
            .map(|e| e.id)
            .collect();
        for ghost in ghosts {
            self.unregister(ghost, "registered again on a new connection", false);
        }
        info!(engine = id, host = %escape(host.as_bytes()), pid, slots, "engine registered");
        self.to_engine(
            &identity,
            &HubToEngine::Registered {
                engine: id,
                heartbeat: self.options.heartbeat,
                max_message: self.options.message_limit() as u64,
            },
        );
        self.publish(&Notification::Registered {
            engine: id,
            host: host.clone(),
            pid,
            slots,
        });
        self.by_identity.insert(identity.clone(), id);
        self.total_slots += slots.max(1) as usize;
        self.engines.insert(
            id,
            Engine {
                id,
                identity,
                host,
                pid,
                slots: slots.max(1),
                handlers,
                running: HashSet::new(),
                completed: 0,
                last_seen: Instant::now(),
                leaving: false,
                unreachable: false,
                name,
            },
        );
    }

    /// Takes a (re-)registered engine's word for the tasks it still holds
    /// (after a hub restart, or after it was wrongly declared dead): those
    /// still queued here are left to it instead of being run again.
    fn adopt(&mut self, identity: &[u8], running: Vec<(JobId, u64)>) {
        let Some(engine) = self
            .by_identity
            .get(identity)
            .and_then(|id| self.engines.get_mut(id))
        else {
            return;
        };
        let mut adopted = 0;
        for (job_id, task_id) in running {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(task) = job.tasks.get_mut(&task_id) else {
                continue;
            };
            if task.engine.is_some() {
                continue; // already running elsewhere: whichever ends first wins
            }
            let Some(at) = job.queue.iter().position(|&t| t == task_id) else {
                continue;
            };
            job.queue.remove(at);
            task.engine = Some(engine.id);
            task.started = Some(Instant::now());
            task.attempts = task.attempts.max(1);
            engine.running.insert((job_id, task_id));
            if let Err(e) =
                self.store
                    .task_started(task.store_id, engine.id, SystemTime::now(), task.attempts)
            {
                warn!(error = %e, "cannot record a start");
            }
            adopted += 1;
        }
        if adopted > 0 {
            info!(
                engine = engine.id,
                tasks = adopted,
                "engine kept the tasks it was running"
            );
        }
    }

    /// Removes an engine and puts its running tasks back at the front of
    /// their queues; when it `died` (rather than left), a task that has now
    /// taken down `poison_limit` engines is failed instead.
    fn unregister(&mut self, id: EngineId, reason: &str, died: bool) {
        let Some(engine) = self.engines.remove(&id) else {
            return;
        };
        self.total_slots = self.total_slots.saturating_sub(engine.slots as usize);
        self.by_identity.remove(&engine.identity);
        info!(
            engine = id,
            reason,
            requeued = engine.running.len(),
            "engine unregistered"
        );
        let mut poisoned = Vec::new();
        for (job_id, task_id) in engine.running {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(task) = job.tasks.get_mut(&task_id) else {
                continue;
            };
            // With two copies running, the one left carries on; the death
            // still counts against the task, or a poison input that takes
            // its time to kill would be copied from engine to engine.
            let limit = self.options.poison_limit;
            if task.spare.is_some() {
                task.drop_copy(id);
                if task.lost_on(id, died, limit) {
                    poisoned.push((job_id, task_id, task.lost));
                }
                continue;
            }
            if task.engine == Some(id) {
                task.engine = None;
                if task.lost_on(id, died, limit) {
                    poisoned.push((job_id, task_id, task.lost));
                    continue;
                }
                if let Err(e) = self.store.task_requeued(task.store_id) {
                    warn!(error = %e, "cannot record a requeue");
                }
                job.queue.push_front(task_id);
                if !self.turns.contains(&job_id) {
                    self.turns.push_back(job_id);
                }
            }
        }
        for (job_id, task_id, lost) in poisoned {
            let reason =
                format!("{lost} engines died while running this task; it is not tried again");
            warn!(job = job_id, task = task_id, %reason, "failing a poison task");
            // A copy still running elsewhere would take that engine too.
            let survivor = self
                .jobs
                .get(&job_id)
                .and_then(|j| j.tasks.get(&task_id))
                .and_then(|t| t.engine)
                .and_then(|e| self.engines.get(&e))
                .map(|e| e.identity.clone());
            if let Some(identity) = survivor {
                let cancel = HubToEngine::CancelTask {
                    job: job_id,
                    id: task_id,
                };
                self.to_engine(&identity, &cancel);
            }
            self.finish_unrun(job_id, task_id, &reason);
            self.retire_if_done(job_id);
        }
        // Gone before it answered: it never will.
        let mut answered = Vec::new();
        for (&token, command) in &mut self.commands {
            if command.waiting.remove(&id) {
                command.silent.push(id);
                answered.push(token);
            }
        }
        for token in answered {
            self.finish_command_if_done(token);
        }
        self.publish(&Notification::Unregistered {
            engine: id,
            reason: reason.to_string(),
        });
    }

    fn heartbeat(&mut self) {
        let limit = self.options.heartbeat * self.options.heartbeat_misses;
        let dead: Vec<EngineId> = self
            .engines
            .values()
            .filter(|e| e.last_seen.elapsed() > limit)
            .map(|e| e.id)
            .collect();
        for id in dead {
            let reason = format!("missed {} heartbeats", self.options.heartbeat_misses);
            warn!(engine = id, %reason, "engine declared dead");
            self.unregister(id, &reason, true);
        }
        let identities: Vec<Vec<u8>> = self.engines.values().map(|e| e.identity.clone()).collect();
        for identity in identities {
            self.to_engine(&identity, &HubToEngine::Heartbeat);
        }
    }

    fn on_result(
        &mut self,
        engine_id: EngineId,
        header: Header,
        body: &[u8],
        status: ResultStatus,
    ) {
        let key = (header.job, header.id);
        if let Some(engine) = self.engines.get_mut(&engine_id) {
            if engine.running.remove(&key) {
                engine.completed += 1;
            }
        }
        let Some(job) = self.jobs.get_mut(&key.0) else {
            return;
        };
        let Some(task) = job.tasks.get_mut(&key.1) else {
            debug!(job = key.0, task = key.1, "dropping a duplicate result");
            return;
        };
        // Copies of it that may still run elsewhere: a straggler's second
        // copy, or (for a result from an engine that lost the task, say one
        // wrongly declared dead) whatever runs it now.
        let others: Vec<EngineId> = [task.engine, task.spare_engine()]
            .into_iter()
            .flatten()
            .filter(|&e| e != engine_id)
            .collect();
        if status == ResultStatus::Fail && !others.is_empty() && !job.halted {
            // This copy failed while another runs on: that one decides
            // (and any further copy goes to an engine it has not failed on).
            task.drop_copy(engine_id);
            task.failed_on.push(engine_id);
            return;
        }
        let Some(mut task) = job.take(key.1) else {
            return;
        };
        if status == ResultStatus::Ok {
            if let Some(started) = task.started {
                job.record_duration(started.elapsed());
            }
        }
        // The first result wins; the other copies are stopped.
        let losers: Vec<Vec<u8>> = others
            .iter()
            .filter_map(|id| self.engines.get(id))
            .map(|e| e.identity.clone())
            .collect();
        if status == ResultStatus::Fail && task.attempts <= job.retries && !job.halted {
            // Run it again, preferably elsewhere; the client sees only the
            // last attempt, which tells it how many there were.
            task.failed_on.push(engine_id);
            task.engine = None;
            task.spare = None;
            task.started = None;
            task.request = with_attempt(&task.request, task.attempts + 1);
            if let Err(e) = self.store.task_requeued(task.store_id) {
                warn!(error = %e, "cannot record a retry");
            }
            job.put(key.1, task);
            job.queue.push_back(key.1);
            if !self.turns.contains(&key.0) {
                self.turns.push_back(key.0);
            }
            return;
        }
        job.finished += 1;
        if status == ResultStatus::Fail && job.halt_on_failure {
            job.halted = true;
        }
        let error = match status {
            ResultStatus::Ok => None,
            ResultStatus::Fail => decode_value::<ClusterResult>(body, "result")
                .ok()
                .and_then(|r| r.exception),
        };
        let finished = Finished {
            status: match status {
                ResultStatus::Ok => TaskState::Ok,
                ResultStatus::Fail => TaskState::Failed,
            },
            result: body.to_vec(),
            error,
            completed: SystemTime::now(),
            engine: engine_id,
            attempts: task.attempts,
        };
        let recorded = self.store.task_finished(task.store_id, finished);
        let client = job.client.clone();
        for identity in losers {
            let cancel = HubToEngine::CancelTask {
                job: key.0,
                id: key.1,
            };
            self.to_engine(&identity, &cancel);
        }
        // Delivered once recorded: a result its client printed is never
        // run again, and one that cannot be recorded is not delivered.
        match recorded {
            Ok(()) => self.hold(Held::Result {
                client,
                header,
                body: body.to_vec(),
            }),
            Err(e) => {
                warn!(error = %e, job = key.0, task = key.1, "cannot record a result; not delivering it")
            }
        }
        self.retire_if_done(key.0);
    }

    fn retire_if_done(&mut self, job_id: JobId) {
        let done = self.jobs.get(&job_id).is_some_and(|job| {
            job.total.is_some_and(|t| job.finished >= t) && job.tasks.is_empty()
        });
        if done {
            self.jobs.remove(&job_id);
            debug!(job = job_id, "job finished");
        }
    }

    /// Hands queued tasks to free slots: jobs take turns, each task goes to
    /// the engine with the most free slots that can run it.
    fn dispatch(&mut self) {
        if self.stopped.is_some() {
            return;
        }
        let mut idle_turns = 0;
        while idle_turns < self.turns.len() {
            let Some(job_id) = self.turns.pop_front() else {
                break;
            };
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            if job.queue.is_empty() || job.halted {
                continue;
            }
            let Some(&task_id) = job.queue.front() else {
                continue;
            };
            let failed_on = job
                .tasks
                .get(&task_id)
                .map(|t| t.failed_on.as_slice())
                .unwrap_or(&[]);
            // Prefetch only while the job's backlog is longer than all the
            // slots: it hides the round trip between a result and the next
            // task, and at the tail, where a task queued behind a long one
            // would wait while another engine idles, there is none.
            let depth = if job.queue.len() > self.total_slots {
                job.prefetch_depth()
            } else {
                1
            };
            // A retry goes to an engine it has not failed on while there
            // is one (busy or not); only when every engine that can run it
            // has failed it may it go back to one.
            let elsewhere = !failed_on.is_empty()
                && self
                    .engines
                    .values()
                    .any(|e| !e.leaving && e.can_run(&job.kind) && !failed_on.contains(&e.id));
            // The engine with the most room.
            let engine = self
                .engines
                .values_mut()
                .filter(|e| {
                    e.free(depth) > 0
                        && e.can_run(&job.kind)
                        && !(elsewhere && failed_on.contains(&e.id))
                })
                .max_by_key(|e| e.free(depth));
            let Some(engine) = engine else {
                // Nothing free for this job now; try the others. A retry
                // waiting for another engine lets the tasks behind it go.
                if elsewhere && job.queue.len() > 1 {
                    job.queue.rotate_left(1);
                }
                self.turns.push_back(job_id);
                idle_turns += 1;
                continue;
            };
            idle_turns = 0;
            // The front task and, for a job of short tasks, the first-time
            // tasks behind it (a retry waits for its own turn, which looks
            // for an engine it has not failed on), up to DISPATCH_BATCH in
            // one message, so each costs a fraction of a message on this
            // hop and the next. Each one goes only where it could have gone
            // alone (the prefetch depth decided again with the backlog it
            // leaves). Longer tasks go one by one, each to the engine with
            // the most room, which a batch to one engine would not do.
            let most_tasks = if job.median().is_some_and(|m| m < DISPATCH_BATCH_BELOW) {
                DISPATCH_BATCH
            } else {
                1
            };
            let prefetch = job.prefetch_depth();
            let mut batch = vec![task_id];
            let mut bytes = job.tasks.get(&task_id).map_or(0, |t| t.request.len());
            job.queue.pop_front();
            while batch.len() < most_tasks {
                let depth = if job.queue.len() > self.total_slots {
                    prefetch
                } else {
                    1
                };
                if engine.free(depth) as usize <= batch.len() {
                    break;
                }
                let Some(next) = job.queue.front().and_then(|id| job.tasks.get(id)) else {
                    break;
                };
                bytes += next.request.len();
                if !next.failed_on.is_empty() || bytes > DISPATCH_BATCH_BYTES {
                    break;
                }
                if let Some(id) = job.queue.pop_front() {
                    batch.push(id);
                }
            }
            if !job.queue.is_empty() {
                self.turns.push_back(job_id);
            }
            let items: Vec<(u64, &[u8])> = batch
                .iter()
                .filter_map(|id| job.tasks.get(id).map(|t| (*id, t.request.as_slice())))
                .collect();
            if let Err(e) = send_tasks(&self.engines_socket, &engine.identity, job_id, &items) {
                if let MessageError::TooLarge { size, limit, .. } = e {
                    // A retry's attempt number took the request past the
                    // limit: it can go nowhere.
                    let reason = format!("its request of {size} bytes is over the hub's message limit of {limit} bytes");
                    for id in batch {
                        self.finish_unrun(job_id, id, &reason);
                    }
                    self.retire_if_done(job_id);
                    continue;
                }
                // With ROUTER_MANDATORY an engine whose connection is gone
                // is an error here. Keep the tasks and send no more there:
                // the engine died (a task that aborts it closes its
                // connection at once), and its missed heartbeats will say
                // so and count the death against what it held; or ZeroMQ is
                // reconnecting it, and it is heard from again.
                warn!(engine = engine.id, error = %e, "cannot send tasks; engine unreachable, tasks requeued");
                engine.unreachable = true;
                for id in batch.into_iter().rev() {
                    job.queue.push_front(id);
                }
                if !self.turns.contains(&job_id) {
                    self.turns.push_back(job_id);
                }
                continue;
            }
            let now = (Instant::now(), SystemTime::now());
            for id in batch {
                let Some(task) = job.tasks.get_mut(&id) else {
                    continue;
                };
                task.engine = Some(engine.id);
                task.started = Some(now.0);
                task.attempts += 1;
                engine.running.insert((job_id, id));
                if let Err(e) =
                    self.store
                        .task_started(task.store_id, engine.id, now.1, task.attempts)
                {
                    warn!(error = %e, "cannot record a start");
                }
            }
        }
    }

    /// Starts a second copy of each straggler on an idle slot of another
    /// engine, for jobs with nothing queued (so the copy takes no slot a
    /// waiting task could use). A straggler has run longer than its job's
    /// [`straggler_after`](Job::straggler_after); each task gets at most one
    /// copy, the first result wins and the other copy is cancelled.
    fn speculate(&mut self) {
        if self.stopped.is_some() || !self.engines.values().any(|e| e.free(1) > 0) {
            return;
        }
        let mut stragglers: Vec<(JobId, u64, Duration)> = Vec::new();
        for (&job_id, job) in &self.jobs {
            if !job.queue.is_empty() || job.halted {
                continue;
            }
            let Some(limit) = job.straggler_after() else {
                continue;
            };
            for (&task_id, task) in &job.tasks {
                let ran = task.started.map_or(Duration::ZERO, |s| s.elapsed());
                if task.engine.is_some() && task.spare.is_none() && !task.speculated && ran > limit
                {
                    stragglers.push((job_id, task_id, ran));
                }
            }
        }
        for (job_id, task_id, ran) in stragglers {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(task) = job.tasks.get_mut(&task_id) else {
                continue;
            };
            let running_on = task.engine;
            let failed_on = &task.failed_on;
            let Some(engine) = self
                .engines
                .values_mut()
                .filter(|e| {
                    e.free(1) > 0
                        && e.can_run(&job.kind)
                        && Some(e.id) != running_on
                        && !failed_on.contains(&e.id)
                })
                .max_by_key(|e| e.free(1))
            else {
                return;
            };
            if let Err(e) = send_task(
                &self.engines_socket,
                &engine.identity,
                job_id,
                task_id,
                &task.request,
            ) {
                debug!(engine = engine.id, error = %e, "cannot send a second copy");
                continue;
            }
            info!(
                job = job_id,
                task = task_id,
                engine = engine.id,
                ran_for = ?ran,
                "straggler: running a second copy"
            );
            task.spare = Some((engine.id, Instant::now()));
            task.speculated = true;
            engine.running.insert((job_id, task_id));
        }
    }

    // ----- commands -----

    fn start_command(
        &mut self,
        client: Vec<u8>,
        request: u64,
        command: Command,
        targets: Vec<EngineId>,
        purpose: CommandPurpose,
    ) {
        let token = self.next_token;
        self.next_token += 1;
        let header = Header {
            kind: MessageKind::Command,
            job: 0,
            id: token,
        };
        let (mut waiting, mut silent) = (HashSet::new(), Vec::new());
        for id in targets {
            if let Some(engine) = self.engines.get(&id) {
                match self
                    .engines_socket
                    .send_routed(&engine.identity, &header, &command)
                {
                    Ok(()) => {
                        waiting.insert(id);
                    }
                    Err(e) => {
                        warn!(engine = id, error = %e, "cannot send a command");
                        silent.push(id);
                    }
                }
            }
        }
        self.commands.insert(
            token,
            PendingCommand {
                client,
                request,
                purpose,
                waiting,
                replies: Vec::new(),
                silent,
                deadline: Instant::now() + COMMAND_WAIT,
            },
        );
        self.finish_command_if_done(token);
    }

    fn on_command_reply(&mut self, engine: EngineId, reply: CommandReply) {
        let token = reply.token;
        let Some(command) = self.commands.get_mut(&token) else {
            return;
        };
        if command.waiting.remove(&engine) {
            if matches!(
                command.purpose,
                CommandPurpose::Kill | CommandPurpose::Shutdown
            ) {
                if let Some(e) = self.engines.get_mut(&engine) {
                    e.leaving = true;
                }
            }
            command.replies.push((engine, reply));
        }
        self.finish_command_if_done(token);
    }

    fn expire_commands(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .commands
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            if let Some(command) = self.commands.get_mut(&token) {
                let mut late: Vec<EngineId> = command.waiting.drain().collect();
                if !late.is_empty() {
                    late.sort_unstable();
                    warn!(engines = ?late, "engines did not answer a command in time");
                    command.silent.extend(late);
                }
            }
            self.finish_command_if_done(token);
        }
    }

    fn finish_command_if_done(&mut self, token: u64) {
        if !self
            .commands
            .get(&token)
            .is_some_and(|c| c.waiting.is_empty())
        {
            return;
        }
        let Some(command) = self.commands.remove(&token) else {
            return;
        };
        let reply = match command.purpose {
            CommandPurpose::Kill => Reply::Killed {
                acknowledged: command.replies.iter().map(|(id, _)| *id).collect(),
                silent: command.silent,
            },
            CommandPurpose::Ping => Reply::Pong {
                replies: command.replies.into_iter().map(|(_, r)| r).collect(),
                silent: command.silent,
            },
            CommandPurpose::Shutdown => {
                self.shutdown = true;
                Reply::Ok
            }
        };
        self.reply(&command.client, command.request, &reply);
    }

    // ----- clients -----

    fn on_client(&mut self, identity: Vec<u8>, envelope: Result<Envelope, MessageError>) {
        if answer_handshake(&self.clients_socket, &identity, &envelope) {
            return;
        }
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(e) => return self.refuse("client", &identity, &e),
        };
        match envelope.header.kind {
            MessageKind::Request => self.on_task(identity, &envelope),
            MessageKind::Control => {
                let request = envelope.header.id;
                match envelope.control::<ClientCall>() {
                    Ok(call) => {
                        // A failing call (the store refused a write, say)
                        // is that caller's error, not the end of the hub.
                        if let Err(e) = self.on_call(identity.clone(), request, call) {
                            warn!(error = %e, "a client call failed");
                            self.reply(&identity, request, &Reply::Error(e.to_string()));
                        }
                    }
                    Err(e) => {
                        warn!(error = %escape_error(&e), "dropping a bad call");
                        self.reply(&identity, request, &Reply::Error(format!("bad call: {e}")));
                    }
                }
            }
            kind => warn!(%kind, "dropping an unexpected message from a client"),
        }
    }

    fn on_task(&mut self, client: Vec<u8>, envelope: &Envelope) {
        let (job_id, task_id) = (envelope.header.job, envelope.header.id);
        let credit = self.options.credit as usize;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            warn!(job = job_id, "refusing a task for an unknown job");
            self.fail_task(
                &client,
                job_id,
                task_id,
                "no such job on this hub (did it restart?)",
            );
            return;
        };
        if job.client != client {
            warn!(
                job = job_id,
                "refusing a task from a client that does not own the job"
            );
            self.fail_task(&client, job_id, task_id, "this client does not own the job");
            return;
        }
        if job.tasks.contains_key(&task_id) {
            debug!(job = job_id, task = task_id, "dropping a task sent twice");
            return;
        }
        if job.client_tasks() >= credit {
            warn!(
                job = job_id,
                credit, "client exceeded its credit; refusing a task"
            );
            self.fail_task(
                &client,
                job_id,
                task_id,
                "the job's credit is used up; send fewer tasks at once",
            );
            return;
        }
        let request = envelope.body().to_vec();
        let recorded = self.store.next_task_ids(1).and_then(|ids| {
            self.store.add_tasks(vec![NewTask {
                id: ids.start,
                job: job_id,
                seq: task_id,
                request: request.clone(),
                submitted: SystemTime::now(),
            }])?;
            Ok(ids.start)
        });
        let store_id = match recorded {
            Ok(id) => id,
            // The job is stopped as a whole (see `release`): no task of it
            // is answered on its own.
            Err(StoreError::CannotWrite(_)) => {
                debug!(
                    job = job_id,
                    task = task_id,
                    "dropping a task: the store cannot write"
                );
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot record a task; refusing it");
                self.fail_task(
                    &client,
                    job_id,
                    task_id,
                    &format!("the hub cannot record it: {e}"),
                );
                return;
            }
        };
        job.put(task_id, Task::new(store_id, request, 0));
        // Dispatched once its insert is committed.
        self.hold(Held::Task {
            job: job_id,
            task: task_id,
        });
    }

    fn on_call(&mut self, client: Vec<u8>, request: u64, call: ClientCall) -> Result<(), HubError> {
        if let Some(refusal) = self.refusal_while_stopped(&call) {
            self.reply(&client, request, &Reply::Error(refusal));
            return Ok(());
        }
        let reply = match call {
            ClientCall::Hello => Reply::Hello(HubInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                engines: self.engines.len() as u32,
                slots: self.engines.values().map(|e| e.slots).sum(),
                max_message: self.options.message_limit() as u64,
            }),
            ClientCall::OpenJob {
                kind,
                description,
                retries,
                halt_on_failure,
            } => self.open_job(client.clone(), kind, description, retries, halt_on_failure)?,
            ClientCall::CloseJob { job, total } => match self.jobs.get_mut(&job) {
                Some(j) => {
                    j.total = Some(total);
                    self.store.set_job_total(job, total)?;
                    self.store.flush()?;
                    self.retire_if_done(job);
                    Reply::Ok
                }
                // Closed already (by another client of the job) with the
                // same count: the store holds what this close would say.
                None => match self.store.job(job)?.and_then(|record| record.total) {
                    Some(recorded) if recorded == total => Reply::Ok,
                    Some(recorded) => Reply::Error(format!(
                        "job {job} was closed already with {recorded} tasks, not {total}"
                    )),
                    None => Reply::Error(format!("no running job {job}")),
                },
            },
            ClientCall::CancelJob { job, kill_running } => {
                // Tasks still held for their insert are queued first, so
                // the cancel drops (and answers) them too.
                self.store.flush()?;
                self.release();
                self.cancel_job(job, kill_running)
            }
            ClientCall::CheckJob { job } => match self.jobs.get(&job) {
                Some(j) => Reply::JobLive {
                    epoch: self.epoch,
                    yours: j.client == client,
                },
                None => Reply::Error(format!(
                    "job {job} is not running on this hub; its results are in the store (zcluster results {job})"
                )),
            },
            ClientCall::Attach { job, outstanding } => self.attach(client.clone(), job, outstanding)?,
            ClientCall::Status { verbose } => Reply::Status(self.status(verbose)?),
            ClientCall::Results {
                job,
                ids,
                status_only,
            } => self.results(job, ids, status_only)?,
            ClientCall::ResultsPage {
                job,
                after,
                status_only,
            } => self.results_page(job, after, status_only)?,
            ClientCall::Purge(target) => {
                let outcome = match target {
                    PurgeTarget::Job(job)
                        if self.jobs.get(&job).is_some_and(|j| !j.tasks.is_empty()) =>
                    {
                        Err(StoreError::PendingTasks {
                            job,
                            pending: self.jobs.get(&job).map_or(0, |j| j.tasks.len() as u64),
                        })
                    }
                    // A job with nothing in flight (its client died before
                    // closing it) is retired with its records.
                    PurgeTarget::Job(job) => {
                        self.jobs.remove(&job);
                        self.store.purge_job(job)
                    }
                    PurgeTarget::Engine(engine) => self.store.purge_engine(engine),
                    PurgeTarget::AllCompleted => self.store.purge_completed(),
                };
                match outcome {
                    Ok(n) => Reply::Purged(n),
                    Err(e) => Reply::Error(e.to_string()),
                }
            }
            ClientCall::Resubmit { job, ids } => self.resubmit(client.clone(), job, ids)?,
            ClientCall::Kill { engines, restart } => {
                let targets: Vec<EngineId> = match engines {
                    Some(ids) => {
                        if let Some(missing) = ids.iter().find(|id| !self.engines.contains_key(id))
                        {
                            self.reply(
                                &client,
                                request,
                                &Reply::Error(format!("no engine {missing}")),
                            );
                            return Ok(());
                        }
                        ids
                    }
                    None => self.engines.keys().copied().collect(),
                };
                let command = if restart {
                    Command::Restart
                } else {
                    Command::Kill
                };
                self.start_command(client, request, command, targets, CommandPurpose::Kill);
                return Ok(());
            }
            ClientCall::Ping => {
                let targets = self.engines.keys().copied().collect();
                self.start_command(
                    client,
                    request,
                    Command::Ping,
                    targets,
                    CommandPurpose::Ping,
                );
                return Ok(());
            }
            ClientCall::Shutdown { workers } => {
                let targets = if workers {
                    self.engines.keys().copied().collect()
                } else {
                    Vec::new()
                };
                self.start_command(
                    client,
                    request,
                    Command::Kill,
                    targets,
                    CommandPurpose::Shutdown,
                );
                return Ok(());
            }
        };
        self.reply(&client, request, &reply);
        Ok(())
    }

    fn open_job(
        &mut self,
        client: Vec<u8>,
        kind: JobKind,
        description: String,
        retries: u32,
        halt_on_failure: bool,
    ) -> Result<Reply, HubError> {
        let open = self.jobs.values().filter(|j| j.client == client).count();
        if open >= MAX_JOBS_PER_CLIENT {
            return Ok(Reply::Error(format!(
                "this client already has {open} jobs running; close some first"
            )));
        }
        if let JobKind::Handler(name) = &kind {
            if !self.engines.values().any(|e| e.can_run(&kind)) {
                return Ok(Reply::Error(format!(
                    "no engine offers the handler `{name}` (engines offer: {})",
                    self.offered_handlers()
                )));
            }
        }
        let id = self.store.next_job_id()?;
        let submitted = SystemTime::now();
        let spec = JobSpec {
            kind: kind.clone(),
            description: description.clone(),
            retries,
            halt_on_failure,
            client: client.clone(),
        };
        let spec = encode_value(&spec, "job spec")?;
        self.store.add_job(&JobRecord {
            id,
            submitted,
            client: description.clone(),
            spec,
            total: None,
        })?;
        self.store.flush()?;
        let mut job = Job::new(client, kind, description);
        job.retries = retries;
        job.halt_on_failure = halt_on_failure;
        self.jobs.insert(id, job);
        info!(job = id, "job opened");
        Ok(Reply::JobOpened {
            job: id,
            credit: self.options.credit,
            epoch: self.epoch,
            max_message: self.options.message_limit() as u64,
        })
    }

    /// Hands a job to `client` (a client back after a hub restart, or a new
    /// one attaching to a job whose client died) and says which of its
    /// outstanding tasks the hub never recorded and which already finished.
    fn attach(
        &mut self,
        client: Vec<u8>,
        job_id: JobId,
        outstanding: Option<Vec<u64>>,
    ) -> Result<Reply, HubError> {
        let Some(record) = self.store.job(job_id)? else {
            return Ok(Reply::Error(format!("no job {job_id} in the store")));
        };
        let live = match self.jobs.get_mut(&job_id) {
            Some(job) => {
                if job.client != client {
                    info!(job = job_id, "job attached by a new client");
                    job.client = client;
                }
                true
            }
            None => false,
        };
        let tasks = self.store.tasks(&TaskFilter::Job(job_id), false)?;
        let (mut missing, mut finished) = (Vec::new(), Vec::new());
        if let Some(ids) = outstanding {
            let states: HashMap<u64, TaskState> = tasks.iter().map(|t| (t.seq, t.state)).collect();
            for id in ids {
                match states.get(&id) {
                    None => missing.push(id),
                    Some(TaskState::Ok | TaskState::Failed) => finished.push(id),
                    Some(TaskState::Pending | TaskState::Running) => {}
                }
            }
        }
        Ok(Reply::Attached(AttachInfo {
            epoch: self.epoch,
            credit: self.options.credit,
            total: record.total,
            known: tasks.len() as u64,
            missing,
            finished,
            live,
            max_message: self.options.message_limit() as u64,
        }))
    }

    fn offered_handlers(&self) -> String {
        let mut names: Vec<&str> = self
            .engines
            .values()
            .flat_map(|e| e.handlers.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    fn cancel_job(&mut self, job_id: JobId, kill_running: bool) -> Reply {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return Reply::Error(format!("no running job {job_id}"));
        };
        // Nothing more of it starts, retries included.
        job.halted = true;
        // Queued tasks never run: they are failed, cancelled. The reply
        // lists them, but a client whose call timed out never sees it, so
        // each is answered as well.
        let dropped: Vec<u64> = job.queue.drain(..).collect();
        let engines: HashSet<EngineId> = if kill_running {
            job.tasks
                .values()
                .flat_map(|t| [t.engine, t.spare_engine()])
                .flatten()
                .collect()
        } else {
            HashSet::new()
        };
        for &task_id in &dropped {
            self.finish_unrun(job_id, task_id, "cancelled before it started");
        }
        for id in engines {
            if let Some(engine) = self.engines.get(&id) {
                let identity = engine.identity.clone();
                self.to_engine(&identity, &HubToEngine::CancelJob { job: job_id });
            }
        }
        self.retire_if_done(job_id);
        Reply::Cancelled(dropped)
    }

    fn status(&mut self, verbose: bool) -> Result<HubStatus, HubError> {
        let mut engines: Vec<EngineStatus> = self
            .engines
            .values()
            .map(|e| EngineStatus {
                id: e.id,
                host: e.host.clone(),
                pid: e.pid,
                slots: e.slots,
                running: e.running.len() as u32,
                completed: e.completed,
                last_heartbeat: e.last_seen.elapsed(),
                handlers: e.handlers.clone(),
                running_tasks: if verbose {
                    let mut tasks: Vec<(JobId, u64)> = e.running.iter().copied().collect();
                    tasks.sort_unstable();
                    tasks
                } else {
                    Vec::new()
                },
            })
            .collect();
        engines.sort_by_key(|e| e.id);
        let jobs = self
            .store
            .jobs()?
            .into_iter()
            .map(|j| {
                let live = self.jobs.get(&j.id);
                JobStatus {
                    id: j.id,
                    submitted: j.submitted,
                    description: live.map_or(j.client, |l| l.description.clone()),
                    total: j.total,
                    pending: j.pending,
                    running: j.running,
                    done: j.ok,
                    failed: j.failed,
                    queued_tasks: match live {
                        Some(l) if verbose => l.queue.iter().copied().collect(),
                        _ => Vec::new(),
                    },
                }
            })
            .collect();
        Ok(HubStatus {
            engines,
            jobs,
            store: self.store.location(),
        })
    }

    fn results(
        &mut self,
        job: JobId,
        ids: Option<Vec<u64>>,
        status_only: bool,
    ) -> Result<Reply, HubError> {
        if self.store.job(job)?.is_none() {
            return Ok(Reply::Error(format!("no job {job} in the store")));
        }
        let wanted: Option<HashSet<u64>> = ids.map(|ids| ids.into_iter().collect());
        // A few tasks of a large job: read only the seqs they span.
        let filter = match wanted.as_ref() {
            Some(w) => match (w.iter().min(), w.iter().max()) {
                (Some(&from), Some(&to)) => TaskFilter::Seqs {
                    job,
                    seqs: from..=to,
                },
                _ => return Ok(Reply::Results(Vec::new())),
            },
            None => TaskFilter::Job(job),
        };
        let reports = self
            .store
            .tasks(&filter, !status_only)?
            .into_iter()
            .filter(|t| wanted.as_ref().is_none_or(|w| w.contains(&t.seq)))
            .map(task_report)
            .collect();
        Ok(Reply::Results(reports))
    }

    /// One page of a job's tasks after `after`: up to [`PAGE_TASKS`], and
    /// no more payload bytes than [`PAGE_BYTES`] (but at least one task),
    /// so every reply fits a message however large the job.
    fn results_page(
        &mut self,
        job: JobId,
        after: Option<(u64, u64)>,
        status_only: bool,
    ) -> Result<Reply, HubError> {
        if self.store.job(job)?.is_none() {
            return Ok(Reply::Error(format!("no job {job} in the store")));
        }
        let filter = TaskFilter::Page {
            job,
            after,
            limit: PAGE_TASKS,
        };
        let tasks = self.store.tasks(&filter, !status_only)?;
        let read = tasks.len();
        let mut bytes = 0;
        let mut next = None;
        let mut reports = Vec::with_capacity(read);
        for task in tasks {
            bytes += REPORT_OVERHEAD_BYTES
                + task.request.as_ref().map_or(0, Vec::len)
                + task.result.as_ref().map_or(0, Vec::len)
                + task.error.as_ref().map_or(0, String::len);
            if bytes > PAGE_BYTES && !reports.is_empty() {
                break;
            }
            next = Some((task.seq, task.id));
            reports.push(task_report(task));
        }
        // A full or cut page may have more after it; a short one is the last.
        if reports.len() == read && read < PAGE_TASKS {
            next = None;
        }
        Ok(Reply::ResultsPage { reports, next })
    }

    fn resubmit(
        &mut self,
        client: Vec<u8>,
        job_id: JobId,
        ids: Option<Vec<u64>>,
    ) -> Result<Reply, HubError> {
        let Some(record) = self.store.job(job_id)? else {
            return Ok(Reply::Error(format!("no job {job_id} in the store")));
        };
        // The client's ids are the store's seqs: map them to store task ids.
        let store_ids: Option<Vec<TaskId>> = match &ids {
            None => None,
            Some(ids) => {
                let wanted: HashSet<u64> = ids.iter().copied().collect();
                let tasks = self.store.tasks(&TaskFilter::Job(job_id), false)?;
                let found: Vec<TaskId> = tasks
                    .iter()
                    .filter(|t| wanted.contains(&t.seq))
                    .map(|t| t.id)
                    .collect();
                if found.len() != wanted.len() {
                    return Ok(Reply::Error(format!(
                        "job {job_id} has no task with some of the ids {ids:?}"
                    )));
                }
                Some(found)
            }
        };
        let tasks = match self.store.reset_for_resubmit(job_id, store_ids.as_deref()) {
            Ok(tasks) => tasks,
            Err(e) => return Ok(Reply::Error(e.to_string())),
        };
        let count = tasks.len() as u64;
        let (kind, description) = decode_value::<JobSpec>(&record.spec, "job spec")
            .map_or((JobKind::Exec, record.client.clone()), |spec| {
                (spec.kind, spec.description)
            });
        // A job still running takes the tasks back into its count; a finished
        // one is revived with exactly them outstanding.
        let revived = !self.jobs.contains_key(&job_id);
        let job = self
            .jobs
            .entry(job_id)
            .or_insert_with(|| Job::new(client, kind, description));
        for task in tasks {
            let mut again = Task::new(task.id, task.request.unwrap_or_default(), task.attempts);
            again.uncounted = !revived;
            job.put(task.seq, again);
            job.queue.push_back(task.seq);
        }
        if revived {
            job.total = Some(count);
        } else {
            job.finished = job.finished.saturating_sub(count);
        }
        job.halted = false;
        self.store.flush()?;
        if count > 0 && !self.turns.contains(&job_id) {
            self.turns.push_back(job_id);
        }
        self.retire_if_done(job_id);
        Ok(Reply::Resubmitted(count))
    }

    /// Ends a task that will not run (again) as failed with `reason`: in
    /// the store, in the job's count, and at its client. The caller has
    /// taken it off the queue and any engine.
    fn finish_unrun(&mut self, job_id: JobId, task_id: u64, reason: &str) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let Some(task) = job.take(task_id) else {
            return;
        };
        job.finished += 1;
        let client = job.client.clone();
        let finished = Finished {
            status: TaskState::Failed,
            result: Vec::new(),
            error: Some(reason.to_string()),
            completed: SystemTime::now(),
            engine: 0,
            attempts: task.attempts,
        };
        match self.store.task_finished(task.store_id, finished) {
            Ok(()) => self.hold(Held::Failure {
                client,
                job: job_id,
                task: task_id,
                reason: reason.to_string(),
            }),
            Err(e) => warn!(error = %e, "cannot record a failure; not delivering it"),
        }
    }

    // ----- the store's commits -----

    /// Lets `held` out once the write queued just before it is committed:
    /// at once if it is (the memory store), else when [`release`](Self::release)
    /// sees the store's position reach it.
    fn hold(&mut self, held: Held) {
        let position = self.store.written();
        if self.held.is_empty() && position <= self.commits.committed() {
            self.let_out(held);
        } else {
            self.held.hold(position, held);
        }
    }

    /// Lets out everything whose write the store has committed; if the
    /// store stopped at a failed write, stops the line instead.
    fn release(&mut self) {
        if let Some(failure) = self.commits.failure() {
            if self.stopped.is_none() {
                let failure = StoreError::CannotWrite(Arc::clone(failure));
                self.stop_the_line(&failure);
            }
            return;
        }
        if self.held.is_empty() {
            return;
        }
        for held in self.held.release(self.commits.committed()) {
            self.let_out(held);
        }
    }

    fn let_out(&mut self, held: Held) {
        match held {
            Held::Task { job, task } => {
                let Some(j) = self.jobs.get_mut(&job) else {
                    return;
                };
                if j.tasks.contains_key(&task) {
                    j.queue.push_back(task);
                    if !self.turns.contains(&job) {
                        self.turns.push_back(job);
                    }
                }
            }
            Held::Result {
                client,
                header,
                body,
            } => {
                if let Err(e) = self.clients_socket.send_raw_routed(&client, &header, &body) {
                    debug!(error = %e, job = header.job, "result not delivered (client gone); it stays in the store");
                }
            }
            Held::Failure {
                client,
                job,
                task,
                reason,
            } => self.fail_task(&client, job, task, &reason),
        }
    }

    /// The store cannot write: nothing more is dispatched, delivered or
    /// acknowledged. Every job stops; its client learns why from the
    /// answer to its next call (it asks within a second of hearing
    /// nothing), and new jobs are refused. The hub stays up to say so and
    /// to answer queries from what was committed; restarted once the cause
    /// is fixed, it carries its jobs on from the last commit. (Pausing
    /// instead, and retrying the lost batch, would keep every client
    /// waiting on a disk an operator may not look at for hours: a failure
    /// they see at once is the louder promise.)
    fn stop_the_line(&mut self, failure: &StoreError) {
        error!(
            error = %failure,
            jobs = self.jobs.len(),
            held = self.held.len(),
            "the task store cannot write: nothing more is dispatched, delivered or recorded, \
             and every job is stopped; make room (or fix the cause), then restart the hub, \
             which carries its jobs on from the last commit"
        );
        self.held.clear();
        self.stopped = Some(format!("the hub's {failure}"));
    }

    /// The answer to a job call while the line is stopped, if it is.
    fn refusal_while_stopped(&self, call: &ClientCall) -> Option<String> {
        let reason = self.stopped.as_ref()?;
        let stopped = |job: JobId| {
            format!(
                "job {job} stopped: {reason}. Nothing more of it runs or is delivered; \
                 make room, restart the hub, then `zcluster map --attach {job}` with the same \
                 inputs and command carries it on (`zcluster results {job}` shows what finished)"
            )
        };
        match call {
            ClientCall::OpenJob { .. } => Some(format!(
                "{reason}: the hub takes no jobs until it is restarted with room to write"
            )),
            ClientCall::CloseJob { job, .. }
            | ClientCall::CheckJob { job }
            | ClientCall::Attach { job, .. }
            | ClientCall::CancelJob { job, .. }
            | ClientCall::Resubmit { job, .. } => Some(stopped(*job)),
            ClientCall::Purge(_) => Some(reason.clone()),
            _ => None,
        }
    }

    // ----- sending -----

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

    /// Answers a task that will never run with a failed result from the
    /// hub itself, so its client never waits for it.
    fn fail_task(&self, client: &[u8], job: JobId, id: u64, reason: &str) {
        let result = ClusterResult {
            id,
            status: ResultStatus::Fail,
            payload: Vec::new(),
            request_metadata: Default::default(),
            metadata: ResultMetadata {
                host: crate::host_name(),
                pid: std::process::id(),
                worker: "hub".into(),
                started: SystemTime::now(),
                elapsed: Duration::ZERO,
            },
            exception: Some(reason.to_string()),
        };
        let header = Header {
            kind: MessageKind::Result(ResultStatus::Fail),
            job,
            id,
        };
        if let Err(e) = self.clients_socket.send_routed(client, &header, &result) {
            debug!(error = %e, "cannot tell a client its task failed");
        }
    }

    fn to_engine(&self, identity: &[u8], message: &HubToEngine) {
        let header = Header {
            kind: MessageKind::Control,
            job: 0,
            id: 0,
        };
        if let Err(e) = self.engines_socket.send_routed(identity, &header, message) {
            debug!(error = %e, "cannot reach an engine");
        }
    }

    fn reply(&self, client: &[u8], request: u64, reply: &Reply) {
        let header = Header {
            kind: MessageKind::Control,
            job: 0,
            id: request,
        };
        match self.clients_socket.send_routed(client, &header, reply) {
            Err(e @ (MessageError::TooLarge { .. } | MessageError::Encode { .. })) => {
                let error = Reply::Error(format!(
                    "the answer is too large to send ({e}); ask for fewer tasks, or status only"
                ));
                if let Err(e) = self.clients_socket.send_routed(client, &header, &error) {
                    debug!(error = %e, "cannot reply to a client");
                }
            }
            Err(e) => debug!(error = %e, "cannot reply to a client"),
            Ok(()) => {}
        }
    }

    /// Takes in what subscribers sent: a subscription to everything (the
    /// empty topic) is applied to its peer, anything else is dropped.
    fn accept_subscriptions(&self) {
        let socket = self.notifications.socket();
        while let Ok(message) = socket.recv_bytes(zmq::DONTWAIT) {
            // In manual mode this applies to the peer that just sent.
            let applied = match message.as_slice() {
                [1] => socket.set_subscribe(b""),
                [0] => socket.set_unsubscribe(b""),
                _ => Ok(()),
            };
            if let Err(e) = applied {
                debug!(error = %e, "cannot apply a subscription");
            }
        }
    }

    fn publish(&self, notification: &Notification) {
        self.accept_subscriptions();
        let header = Header {
            kind: MessageKind::Control,
            job: 0,
            id: 0,
        };
        if let Err(e) = self
            .notifications
            .send(&header, notification, zmq::DONTWAIT)
        {
            debug!(error = %e, "cannot publish a notification");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_peer_is_held_to_a_byte_budget_not_just_a_message_count() {
        let mib = 1 << 20;
        // The default limit: 16 messages of 64 MiB.
        assert_eq!(inbound_hwm("tcp://127.0.0.1:5555", 64 * mib), 16);
        // Smaller messages: as many as fit in 256 MiB...
        assert_eq!(inbound_hwm("ipc:///tmp/hub", mib), 256);
        assert_eq!(inbound_hwm("tcp://*:1", 16 * mib), 16);
        // ...up to the message cap.
        assert_eq!(inbound_hwm("tcp://*:1", 1024), INBOUND_PER_PEER);
        // This process's own threads are not held to it.
        assert_eq!(
            inbound_hwm("inproc://x-engines", 64 * mib),
            INBOUND_PER_PEER
        );
        for max in [1024, 4096, mib, 3 * mib, 64 * mib] {
            let hwm = inbound_hwm("tcp://*:1", max) as usize;
            assert!(hwm * max <= (INBOUND_BYTES_PER_PEER).max(16 * max));
        }
    }

    #[test]
    fn the_message_limit_stays_within_what_every_peer_accepts() {
        let limit = |max_message| {
            HubOptions {
                max_message,
                ..HubOptions::default()
            }
            .message_limit()
        };
        assert_eq!(limit(0), 1024);
        assert_eq!(limit(5 << 20), 5 << 20);
        assert_eq!(limit(usize::MAX), MAX_MESSAGE_BYTES);
    }
}
