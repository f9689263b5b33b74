//! An engine: the worker side of a hub (`zcluster worker --hub FILE -j N`).
//!
//! One DEALER connects to the hub's engine socket: it registers (identity,
//! host, pid, slots, handlers), heartbeats, receives tasks addressed to it and
//! sends their results and command replies back. The tasks run on
//! [`Slots`]: toolkit workers on threads, PULL/PUSH plus a SUB for commands,
//! exactly as without a hub. The hub never sends more tasks than there are
//! free slots.
//!
//! When the hub stops answering for `misses` heartbeat periods, the engine
//! drops its connection, reconnects and registers again, as many times as it
//! takes, with its running tasks still running.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use super::client::random_identity;
use super::connection::{ConnectionError, ConnectionInfo};
use super::link::HubLink;
use super::protocol::{EngineId, EngineMessage, HubToEngine, JobId, ResultItem, TaskItem};
use crate::auth::{AuthError, Channel};
use crate::map::{mark_failed_commands, run_chunk};
use crate::message::{
    self, decode_value, ClusterRequest, ClusterResult, Command, CommandReply, Envelope, Header,
    MessageError, MessageKind, ResultStatus, SignedSocket, WorkerInfo,
};
use crate::slots::{Slots, SlotsError};
use crate::socket::{millis, poll_readable, Readable};
use crate::worker::{HandlerError, WorkerExit};

/// Missed hub heartbeats before an engine reconnects.
pub const DEFAULT_MISSES: u32 = 3;

/// Heartbeat period used until the hub says otherwise.
const INITIAL_HEARTBEAT: Duration = Duration::from_secs(1);

/// Request metadata key naming the job, for per-job cancellation.
const JOB_KEY: &str = "zcluster.job";

/// Errors that stop an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The slots could not start.
    #[error(transparent)]
    Slots(#[from] SlotsError),
    /// Stopped (Ctrl-C) while waiting for the hub.
    #[error("stopped while waiting for the hub")]
    Stopped,
    /// The hub refused the registration.
    #[error("the hub refused this engine: {0}")]
    Refused(String),
    /// The connection file's key is unusable.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A socket failed.
    #[error("engine cannot {operation}: {source}")]
    Transport {
        /// What was being done.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: MessageError,
    },
}

/// A named handler compiled into an engine: request in, result payload out.
pub type HandlerFn = Arc<dyn Fn(&ClusterRequest) -> Result<Vec<u8>, HandlerError> + Send + Sync>;

/// Request metadata key naming the handler of a handler job (absent for
/// command jobs).
pub const HANDLER_KEY: &str = "zcluster.handler";

/// How to run an engine.
#[derive(Clone)]
pub struct EngineOptions {
    /// The hub to serve.
    pub connection: ConnectionInfo,
    /// Tasks at once.
    pub slots: usize,
    /// Missed hub heartbeats before reconnecting.
    pub misses: u32,
    /// Named handlers this engine offers besides command jobs.
    pub handlers: BTreeMap<String, HandlerFn>,
}

/// Cancel flags shared with the slot handlers: one per task running here,
/// by its slot ticket (what a handler sees as the request id), and the jobs
/// cancelled as a whole (a task of one that starts later is cancelled at
/// once).
#[derive(Default)]
struct Cancels {
    jobs: HashSet<JobId>,
    tasks: HashMap<u64, (JobId, Arc<AtomicBool>)>,
}

type CancelFlags = Arc<Mutex<Cancels>>;

fn cancels(flags: &CancelFlags) -> std::sync::MutexGuard<'_, Cancels> {
    flags
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The flag a starting task (its slot ticket) watches.
fn task_flag(flags: &CancelFlags, job: JobId, ticket: u64) -> Arc<AtomicBool> {
    let mut cancels = cancels(flags);
    let cancelled = cancels.jobs.contains(&job);
    let flag = cancels
        .tasks
        .entry(ticket)
        .or_insert((job, Arc::default()))
        .1
        .clone();
    if cancelled {
        flag.store(true, Ordering::SeqCst);
    }
    flag
}

fn cancel_job(flags: &CancelFlags, job: JobId) {
    let mut cancels = cancels(flags);
    cancels.jobs.insert(job);
    for (j, flag) in cancels.tasks.values() {
        if *j == job {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

fn job_of(request: &ClusterRequest) -> JobId {
    request
        .metadata
        .get(JOB_KEY)
        .and_then(|j| j.parse().ok())
        .unwrap_or(0)
}

struct Connection {
    link: HubLink,
    engine: Option<EngineId>,
    heartbeat: Duration,
    last_heard: Instant,
}

/// Runs an engine until a kill or restart command, or until `stop` is set
/// (then it unregisters and kills its running tasks).
pub fn run_engine(
    ctx: &zmq::Context,
    options: &EngineOptions,
    stop: &Arc<AtomicBool>,
) -> Result<WorkerExit, EngineError> {
    let flags: CancelFlags = Arc::default();
    let all_stop = stop.clone();
    let mut slots = Slots::start(options.slots, |_| {
        let flags = flags.clone();
        let stop = all_stop.clone();
        let handlers = options.handlers.clone();
        move |request: &ClusterRequest| {
            if let Some(name) = request.metadata.get(HANDLER_KEY) {
                let handler = handlers.get(name).ok_or_else(|| {
                    HandlerError::new(format!("this engine has no handler `{name}`"))
                })?;
                return handler(request);
            }
            let flag = task_flag(&flags, job_of(request), request.id);
            if stop.load(Ordering::Relaxed) {
                flag.store(true, Ordering::Relaxed);
            }
            run_chunk(&flag, request)
        }
    })?;
    let host = crate::host_name();
    let pid = std::process::id();
    let started = SystemTime::now();
    // Unguessable, so another peer cannot take over its routing.
    let identity = random_identity(&format!("{host}-{pid}"));
    // Slot ticket → (job, task id).
    let mut tickets: HashMap<u64, (JobId, u64)> = HashMap::new();
    // Tasks beyond the free slots wait here: a hub that restarted believes
    // every slot is free while the old tasks still run.
    let mut waiting: VecDeque<ClusterRequest> = VecDeque::new();
    let mut recent = Recent::default();
    let mut pace = Pace::default();
    // Registering again, it tells the hub what it still holds and what it
    // finished lately (it sends those results again once registered).
    let register = |tickets: &HashMap<u64, (JobId, u64)>,
                    waiting: &VecDeque<ClusterRequest>,
                    recent: &Recent| EngineMessage::Register {
        identity: identity.clone(),
        host: host.clone(),
        pid,
        slots: options.slots as u32,
        handlers: options.handlers.keys().cloned().collect(),
        running: tickets
            .values()
            .copied()
            .chain(waiting.iter().map(|r| (job_of(r), r.id)))
            .chain(recent.results.iter().map(|(_, job, r)| (*job, r.id)))
            .collect(),
    };
    // Each connection registers afresh, naming what this engine holds.
    let open = |tickets: &HashMap<u64, (JobId, u64)>,
                waiting: &VecDeque<ClusterRequest>,
                recent: &Recent| {
        connect(
            ctx,
            options,
            &identity,
            &register(tickets, waiting, recent),
            stop,
        )
    };
    let mut conn = open(&tickets, &waiting, &recent)?;
    let mut warned = false;
    let mut leaving: Option<WorkerExit> = None;
    let mut handled: u64 = 0;
    let mut busy = Duration::ZERO;
    let mut next_beat = Instant::now();
    // Why the connection is to be replaced before the next poll, if it is.
    let mut reconnect: Option<&str> = None;
    loop {
        if let Some(why) = reconnect.take() {
            info!(why, "connecting to the hub again");
            conn = open(&tickets, &waiting, &recent)?;
            recent.resend(&conn.link.socket);
        }
        if stop.load(Ordering::Relaxed) {
            for (_, flag) in cancels(&flags).tasks.values() {
                flag.store(true, Ordering::Relaxed);
            }
            send_control(&conn.link.socket, &EngineMessage::Unregister);
            return Ok(WorkerExit::Killed);
        }
        forget_finished_cancels(&flags, &tickets, &waiting);
        while slots.free() > 0 && !waiting.is_empty() {
            let batch = pace.batch(&waiting, slots.free());
            let requests: Vec<ClusterRequest> = waiting.drain(..batch).collect();
            let tasks: Vec<(JobId, u64)> = requests.iter().map(|r| (job_of(r), r.id)).collect();
            for (ticket, task) in slots.submit_batch(requests)?.into_iter().zip(tasks) {
                // The flag exists from now on, so a cancel that comes
                // before the slot starts the task is not lost.
                task_flag(&flags, task.0, ticket);
                tickets.insert(ticket, task);
            }
        }
        if let Some(exit) = leaving {
            if tickets.is_empty() && waiting.is_empty() {
                send_control(&conn.link.socket, &EngineMessage::Unregister);
                info!(?exit, "engine leaving");
                return Ok(exit);
            }
        }
        let now = Instant::now();
        if now >= next_beat {
            send_control(&conn.link.socket, &EngineMessage::Heartbeat);
            next_beat = now + conn.heartbeat;
            // A leaving engine (kill or restart acknowledged) does not chase a
            // hub that shut down: it finishes its tasks and exits.
            if leaving.is_none() && conn.last_heard.elapsed() > conn.heartbeat * options.misses {
                warn!("the hub stopped answering; reconnecting");
                reconnect = Some("the hub stopped answering");
                continue;
            }
        }
        let wait = next_beat
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let (hub_ready, slots_ready) = match poll_readable(
            conn.link.socket.socket(),
            Some(slots.results_socket()),
            Some(wait),
        ) {
            Ok(Readable::Ready(hub, slots)) => (hub, slots),
            Ok(Readable::Timeout) => (false, false),
            Err(e) => return Err(transport("poll", e.into())),
        };
        // A closed connection is never reopened under its identity (see
        // `HubLink`); looked at when idle, and at least every heartbeat.
        if (!hub_ready && !slots_ready || Instant::now() >= next_beat)
            && leaving.is_none()
            && conn.link.closed()
        {
            reconnect = Some("the connection to the hub closed");
            continue;
        }
        if slots_ready {
            let mut drained: Vec<(JobId, ClusterResult, bool)> = Vec::new();
            while let Some((ticket, mut result)) = slots.next_result(Duration::ZERO)? {
                let job = tickets.remove(&ticket).map_or(0, |(job, _)| job);
                let cancelled = cancels(&flags)
                    .tasks
                    .remove(&ticket)
                    .is_some_and(|(_, flag)| flag.load(Ordering::SeqCst));
                if !result.request_metadata.contains_key(HANDLER_KEY) {
                    mark_failed_commands(&mut result);
                }
                handled += 1;
                busy += result.metadata.elapsed;
                pace.record(result.metadata.elapsed);
                drained.push((job, result, cancelled));
            }
            results_to_hub(&conn.link.socket, &drained);
            for (job, result, cancelled) in drained {
                // A cancelled copy's failure says nothing about its task:
                // never send it again to a hub that may take it as final.
                if !cancelled {
                    recent.keep(job, result, conn.heartbeat * (options.misses + 2));
                }
            }
        }
        if hub_ready {
            loop {
                let envelope = match conn.link.socket.recv(zmq::DONTWAIT) {
                    Ok(envelope) => envelope,
                    Err(e) if e.is_timeout() => break,
                    Err(MessageError::Zmq(e)) => {
                        return Err(transport("receive from the hub", e.into()))
                    }
                    Err(MessageError::Auth(AuthError::OtherEpoch { .. })) => {
                        reconnect = Some("the hub restarted");
                        break;
                    }
                    Err(e) if !warned => {
                        warned = true;
                        warn!(error = %e, "dropping a bad message from the hub (logged once)");
                        continue;
                    }
                    Err(e) => {
                        debug!(error = %e, "dropping a bad message from the hub");
                        continue;
                    }
                };
                conn.last_heard = Instant::now();
                match on_hub(&envelope, &mut conn, &mut waiting, &tickets, &flags)? {
                    HubEvent::None => {}
                    HubEvent::Reregister => {
                        reconnect = Some("the hub no longer knows this engine");
                        break;
                    }
                    HubEvent::Command(token, command) => {
                        let info = WorkerInfo {
                            host: host.clone(),
                            pid,
                            worker: format!("engine-{}", conn.engine.unwrap_or(0)),
                            started,
                        };
                        let mean_time = u32::try_from(handled)
                            .ok()
                            .filter(|n| *n > 0)
                            .map_or(Duration::ZERO, |n| busy / n);
                        let reply = CommandReply {
                            token,
                            command: command.name().to_string(),
                            worker: info,
                            requests_handled: handled,
                            mean_time,
                        };
                        let header = Header {
                            kind: MessageKind::Reply,
                            job: 0,
                            id: token,
                        };
                        if let Err(e) = conn.link.socket.send(&header, &reply, zmq::DONTWAIT) {
                            warn!(error = %e, "cannot answer a command");
                        }
                        match command {
                            Command::Kill => leaving = Some(WorkerExit::Killed),
                            Command::Restart => leaving = Some(WorkerExit::Restart),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

/// Longest a batch of tasks given to one slot should take: short tasks go
/// several to a message (one message and one wake-up each way for the lot),
/// long ones one at a time, so batching never holds a task back for long
/// behind others on a busy slot while another slot could have run it.
const SLOT_BATCH_TIME: Duration = Duration::from_millis(1);

/// Most tasks in one batch to a slot...
const SLOT_BATCH_TASKS: usize = 32;

/// ...and most payload bytes, well under the message size limit.
const SLOT_BATCH_BYTES: usize = 1 << 20;

/// How long this engine's tasks take lately, to size batches to slots.
#[derive(Default)]
struct Pace {
    /// Moving average of task times (none yet: run one at a time).
    mean: Option<Duration>,
}

impl Pace {
    fn record(&mut self, took: Duration) {
        // An exponential average over about the last 16 tasks: it follows
        // a job that changes pace, and one odd task moves it little.
        self.mean = Some(match self.mean {
            Some(mean) => (mean * 15 + took) / 16,
            None => took,
        });
    }

    /// How many of the `waiting` tasks to give the next free slot, with
    /// `free` slots free: as many as fit in [`SLOT_BATCH_TIME`] at the
    /// current pace, no more than a fair share of what waits (so every free
    /// slot gets some), and within [`SLOT_BATCH_TASKS`] and
    /// [`SLOT_BATCH_BYTES`]. At least one.
    fn batch(&self, waiting: &VecDeque<ClusterRequest>, free: usize) -> usize {
        let by_time = match self.mean {
            Some(mean) if mean < SLOT_BATCH_TIME => {
                let nanos = mean.as_nanos().max(1);
                usize::try_from(SLOT_BATCH_TIME.as_nanos() / nanos).unwrap_or(usize::MAX)
            }
            _ => 1,
        };
        let share = waiting.len().div_ceil(free.max(1));
        let want = by_time.min(share).clamp(1, SLOT_BATCH_TASKS);
        let mut bytes = 0;
        let fits = waiting
            .iter()
            .take(want)
            .take_while(|r| {
                bytes += r.payload.len();
                bytes <= SLOT_BATCH_BYTES
            })
            .count();
        fits.max(1)
    }
}

/// Forgets a cancelled job once none of its tasks is running or waiting
/// here: a later resubmit of the same job then runs, and cancelled jobs do
/// not pile up.
fn forget_finished_cancels(
    flags: &CancelFlags,
    tickets: &HashMap<u64, (JobId, u64)>,
    waiting: &VecDeque<ClusterRequest>,
) {
    let mut cancels = cancels(flags);
    if cancels.jobs.is_empty() {
        return;
    }
    cancels.jobs.retain(|job| {
        tickets.values().any(|(j, _)| j == job) || waiting.iter().any(|r| job_of(r) == *job)
    });
}

enum HubEvent {
    None,
    Reregister,
    Command(u64, Command),
}

fn on_hub(
    envelope: &Envelope,
    conn: &mut Connection,
    waiting: &mut VecDeque<ClusterRequest>,
    tickets: &HashMap<u64, (JobId, u64)>,
    flags: &CancelFlags,
) -> Result<HubEvent, EngineError> {
    match envelope.header.kind {
        MessageKind::Request => {
            take_task(
                conn,
                waiting,
                envelope.header.job,
                envelope.header.id,
                envelope.request(),
            );
        }
        MessageKind::Tasks => {
            let job = envelope.header.job;
            match decode_value::<Vec<TaskItem>>(envelope.body(), "tasks") {
                Ok(tasks) => {
                    for (id, request) in tasks {
                        let request = decode_value::<ClusterRequest>(&request, "request");
                        take_task(conn, waiting, job, id, request);
                    }
                }
                // Only the hub sends these, and it builds them from bodies it
                // holds: which tasks it meant is unknown here.
                Err(e) => warn!(error = %e, "dropping a bad task batch"),
            }
        }
        MessageKind::Control => match envelope.control::<HubToEngine>() {
            Ok(HubToEngine::Heartbeat) => {}
            Ok(HubToEngine::CancelJob { job }) => {
                info!(job, "cancelling a job's tasks");
                cancel_job(flags, job);
            }
            Ok(HubToEngine::CancelTask { job, id }) => {
                debug!(
                    job,
                    task = id,
                    "cancelling a task (another copy finished first)"
                );
                let running = tickets.iter().find(|(_, task)| **task == (job, id));
                if let Some((ticket, _)) = running {
                    if let Some((_, flag)) = cancels(flags).tasks.get(ticket) {
                        flag.store(true, Ordering::SeqCst);
                    }
                }
                // One not started yet is answered at once, so its slot at
                // the hub is freed.
                if let Some(at) = waiting.iter().position(|r| r.id == id && job_of(r) == job) {
                    waiting.remove(at);
                    let cancelled = failed_here(conn, id, "cancelled: another copy finished first");
                    if let Err(e) = result_to_hub(&conn.link.socket, job, &cancelled) {
                        warn!(error = %e, "cannot answer a cancelled task");
                    }
                }
            }
            Ok(HubToEngine::Refused { reason }) => {
                if conn.engine.is_some() {
                    info!(%reason, "the hub no longer knows this engine; registering again");
                    return Ok(HubEvent::Reregister);
                }
                return Err(EngineError::Refused(reason));
            }
            Ok(HubToEngine::Registered { .. }) => {}
            Err(e) => warn!(error = %e, "dropping a bad control message"),
        },
        MessageKind::Command => match envelope.command() {
            Ok(command) => return Ok(HubEvent::Command(envelope.header.id, command)),
            Err(e) => warn!(error = %e, "dropping a bad command"),
        },
        kind => debug!(%kind, "dropping an unexpected message from the hub"),
    }
    Ok(HubEvent::None)
}

/// Queues a task the hub sent, or answers it at once as failed when its
/// request does not decode (otherwise its slot at the hub stays taken and
/// its client waits for ever).
fn take_task(
    conn: &Connection,
    waiting: &mut VecDeque<ClusterRequest>,
    job: JobId,
    id: u64,
    request: Result<ClusterRequest, MessageError>,
) {
    match request {
        Ok(mut request) => {
            request.metadata.insert(JOB_KEY.into(), job.to_string());
            waiting.push_back(request);
        }
        Err(e) => {
            warn!(error = %e, "refusing a bad task");
            let failed = failed_here(conn, id, &format!("bad request: {e}"));
            if let Err(e) = result_to_hub(&conn.link.socket, job, &failed) {
                warn!(error = %e, "cannot answer a bad task");
            }
        }
    }
}

/// Results sent lately. Registering anew (the hub restarted, or lost this
/// engine), an engine sends them again: a hub that went away meanwhile
/// never got them and would otherwise run their tasks again. The hub drops
/// any it already had.
#[derive(Default)]
struct Recent {
    results: VecDeque<(Instant, JobId, ClusterResult)>,
    bytes: usize,
}

/// Most results, and bytes of payload, kept for sending again.
const RECENT_RESULTS: usize = 4096;
const RECENT_BYTES: usize = 64 << 20;

impl Recent {
    /// Keeps `result` for `window`, forgetting older ones and the oldest
    /// past the bounds.
    fn keep(&mut self, job: JobId, result: ClusterResult, window: Duration) {
        self.bytes += result.payload.len();
        self.results.push_back((Instant::now(), job, result));
        while let Some((sent, _, result)) = self.results.front() {
            let over = self.results.len() > RECENT_RESULTS || self.bytes > RECENT_BYTES;
            if !over && sent.elapsed() <= window {
                break;
            }
            self.bytes -= result.payload.len();
            self.results.pop_front();
        }
    }

    fn resend(&self, socket: &SignedSocket) {
        for (_, job, result) in &self.results {
            if let Err(e) = result_to_hub(socket, *job, result) {
                debug!(error = %e, "cannot send a result again");
            }
        }
        if !self.results.is_empty() {
            info!(results = self.results.len(), "sent recent results again");
        }
    }
}

/// A failed result for a task this engine answers without running it.
fn failed_here(conn: &Connection, id: u64, reason: &str) -> ClusterResult {
    let worker = format!("engine-{}", conn.engine.unwrap_or(0));
    ClusterResult::failed_here(id, worker, reason)
}

/// Connects, says hello and registers, retrying until the hub answers.
/// Each attempt is a new [`HubLink`], under a routing identity never used
/// before (`name` and a number): the hub binds this engine to the
/// connection it registers on.
fn connect(
    ctx: &zmq::Context,
    options: &EngineOptions,
    name: &str,
    register: &EngineMessage,
    stop: &AtomicBool,
) -> Result<Connection, EngineError> {
    let key = options.connection.signing_key()?;
    let url = &options.connection.engines;
    let mut attempt: u32 = 0;
    'connect: loop {
        if stop.load(Ordering::Relaxed) {
            return Err(EngineError::Stopped);
        }
        attempt += 1;
        let mut link = HubLink::open(
            ctx,
            url,
            &key,
            &options.connection.curve,
            Channel::EngineToHub,
            Channel::HubToEngine,
            name,
        )
        .map_err(|e| transport("connect to the hub", e.into()))?;
        link.socket
            .hello(zmq::DONTWAIT)
            .map_err(|e| transport("say hello to the hub", e))?;
        let deadline = Instant::now() + INITIAL_HEARTBEAT * options.misses.max(1);
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match link
                .socket
                .socket()
                .poll(zmq::POLLIN, i64::from(millis(left)))
            {
                Ok(0) => break,
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(transport("wait for the hub", e.into())),
            }
            let envelope = match link.socket.recv(zmq::DONTWAIT) {
                Ok(envelope) => envelope,
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    // Said, not swallowed: a hub whose clock is far from
                    // this machine's, or another key, would otherwise look
                    // like a hub that never answers.
                    if attempt == 1 || attempt % 10 == 0 {
                        warn!(hub = %url, error = %e, "refusing the hub's answer");
                    }
                    continue;
                }
            };
            if envelope.header.kind == MessageKind::Welcome {
                // The hub's epoch is known: now register, signed for it.
                send_control(&link.socket, register);
                continue;
            }
            match envelope.control::<HubToEngine>() {
                Ok(HubToEngine::Registered {
                    engine,
                    heartbeat,
                    max_message,
                }) => {
                    info!(engine, hub = %url, "registered with the hub");
                    link.socket
                        .set_limit(usize::try_from(max_message).unwrap_or(usize::MAX));
                    return Ok(Connection {
                        link,
                        engine: Some(engine),
                        heartbeat,
                        last_heard: Instant::now(),
                    });
                }
                Ok(HubToEngine::Refused { reason }) => {
                    // What a hub refuses a registration for passes (its store
                    // failing, say): say so and try again on a fresh
                    // connection, rather than leave the lab one worker short
                    // for good.
                    if attempt == 1 || attempt % 10 == 0 {
                        warn!(hub = %url, %reason, attempt, "the hub refused the registration; trying again");
                    }
                    pause(REFUSED_PAUSE, stop);
                    continue 'connect;
                }
                _ => {}
            }
        }
        if attempt == 1 || attempt % 10 == 0 {
            if link.reached() {
                warn!(hub = %url, attempt, "the hub's port answers, but not to this engine's signed hello: is the connection file's key this hub's? (a hub with another key logs \"bad signature\"); retrying");
            } else {
                warn!(hub = %url, attempt, "no answer from the hub; retrying");
            }
        }
    }
}

/// How long an engine waits after a refused registration before trying
/// again.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

/// Sleeps for `length`, or until `stop` is set.
fn pause(length: Duration, stop: &AtomicBool) {
    let until = Instant::now() + length;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
        );
    }
}

/// Sends a result to the hub without ever blocking: a DEALER with no hub
/// connected (it shut down, or went away) would block the engine for good,
/// and a hub that is gone has no use for the result.
fn result_to_hub(
    socket: &SignedSocket,
    job: JobId,
    result: &ClusterResult,
) -> Result<(), MessageError> {
    let body = message::encode_value(result, "result")?;
    alone_to_hub(socket, job, result, &body)
}

/// Sends one encoded result by itself. One larger than the hub takes
/// goes as a failure saying so: sent as it is, ZeroMQ would drop it with
/// the connection, and its task would wait for ever.
fn alone_to_hub(
    socket: &SignedSocket,
    job: JobId,
    result: &ClusterResult,
    body: &[u8],
) -> Result<(), MessageError> {
    let header = Header::result(job, result);
    match socket.send_raw(&header, body, zmq::DONTWAIT) {
        Err(MessageError::TooLarge { size, limit, .. }) => {
            let failed = too_large(result, size, limit);
            warn!(
                job,
                task = result.id,
                size,
                limit,
                "result over the hub's message limit; sent as a failure"
            );
            socket.send(&Header::result(job, &failed), &failed, zmq::DONTWAIT)
        }
        sent => sent,
    }
}

/// A failure in place of a result of `size` bytes that the hub, taking at
/// most `limit`, would not take.
fn too_large(result: &ClusterResult, size: usize, limit: usize) -> ClusterResult {
    ClusterResult {
        id: result.id,
        status: ResultStatus::Fail,
        payload: Vec::new(),
        request_metadata: result.request_metadata.clone(),
        metadata: result.metadata.clone(),
        exception: Some(format!(
            "its result of {size} bytes is over the hub's message limit of {limit} bytes (zcluster hub --max-message)"
        )),
    }
}

/// Most bytes of results sent to the hub in one message: small, so that a
/// batch never nears even a small `--max-message`; a larger result goes
/// alone, as always.
const RESULT_BATCH_BYTES: usize = 64 << 10;

/// Sends results to the hub, several in one [`MessageKind::TaskResults`]
/// message where there are several (up to [`RESULT_BATCH_BYTES`] each), a
/// lone or larger one as a plain result; each is encoded once, and nothing
/// blocks (see [`result_to_hub`]).
fn results_to_hub(socket: &SignedSocket, results: &[(JobId, ClusterResult, bool)]) {
    let mut batch: Vec<ResultItem> = Vec::new();
    let mut bytes = 0;
    // Room for the batch's own framing within the hub's limit.
    let batch_bytes = RESULT_BATCH_BYTES.min(socket.limit() / 2);
    for (job, result, _) in results {
        let body = message::encode_value(result, "result");
        let body = match body {
            Ok(body) if results.len() > 1 && body.len() <= batch_bytes => body,
            // Alone: the only one, or too large to batch.
            Ok(body) => {
                if let Err(e) = alone_to_hub(socket, *job, result, &body) {
                    warn!(error = %e, "cannot send a result to the hub");
                }
                continue;
            }
            Err(e) => {
                warn!(error = %e, "cannot send a result to the hub");
                continue;
            }
        };
        if bytes + body.len() > batch_bytes {
            send_result_batch(socket, &std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += body.len();
        batch.push((
            *job,
            result.id,
            result.status,
            serde_bytes::ByteBuf::from(body),
        ));
    }
    send_result_batch(socket, &batch);
}

fn send_result_batch(socket: &SignedSocket, batch: &[ResultItem]) {
    let Some((_, first, _, _)) = batch.first() else {
        return;
    };
    let header = Header {
        kind: MessageKind::TaskResults,
        job: 0,
        id: *first,
    };
    if let Err(e) = socket.send(&header, batch, zmq::DONTWAIT) {
        warn!(error = %e, results = batch.len(), "cannot send results to the hub");
    }
}

fn send_control(socket: &SignedSocket, message: &EngineMessage) {
    let header = Header {
        kind: MessageKind::Control,
        job: 0,
        id: 0,
    };
    if let Err(e) = socket.send(&header, message, zmq::DONTWAIT) {
        debug!(error = %e, "cannot send to the hub");
    }
}

fn transport(operation: &'static str, source: MessageError) -> EngineError {
    EngineError::Transport { operation, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: usize, payload: usize) -> VecDeque<ClusterRequest> {
        (0..n as u64)
            .map(|id| ClusterRequest::new(id, vec![0; payload]))
            .collect()
    }

    fn paced(mean: Duration) -> Pace {
        Pace { mean: Some(mean) }
    }

    #[test]
    fn unknown_or_long_tasks_go_one_at_a_time() {
        let queue = waiting(100, 8);
        assert_eq!(Pace::default().batch(&queue, 2), 1);
        assert_eq!(paced(SLOT_BATCH_TIME).batch(&queue, 2), 1);
        assert_eq!(paced(Duration::from_secs(3)).batch(&queue, 1), 1);
    }

    #[test]
    fn short_tasks_fill_a_batch_of_about_the_batch_time() {
        let queue = waiting(100, 8);
        assert_eq!(paced(Duration::from_micros(100)).batch(&queue, 1), 10);
        assert_eq!(paced(Duration::from_micros(400)).batch(&queue, 1), 2);
        assert_eq!(
            paced(Duration::from_nanos(1)).batch(&queue, 1),
            SLOT_BATCH_TASKS
        );
        assert_eq!(paced(Duration::ZERO).batch(&queue, 1), SLOT_BATCH_TASKS);
    }

    #[test]
    fn every_free_slot_gets_a_share_of_what_waits() {
        let fast = paced(Duration::from_micros(1));
        assert_eq!(fast.batch(&waiting(10, 8), 2), 5);
        assert_eq!(fast.batch(&waiting(3, 8), 4), 1);
        assert_eq!(fast.batch(&waiting(1, 8), 1), 1);
    }

    #[test]
    fn a_batch_stays_under_its_byte_bound_but_holds_at_least_one() {
        let fast = paced(Duration::from_micros(1));
        let big = SLOT_BATCH_BYTES / 4;
        assert_eq!(fast.batch(&waiting(32, big), 1), 4);
        assert_eq!(fast.batch(&waiting(32, SLOT_BATCH_BYTES * 2), 1), 1);
    }

    #[test]
    fn the_pace_follows_recent_tasks() {
        let mut pace = Pace::default();
        pace.record(Duration::from_millis(10));
        assert_eq!(pace.mean, Some(Duration::from_millis(10)));
        for _ in 0..200 {
            pace.record(Duration::from_micros(2));
        }
        let mean = pace.mean.unwrap();
        assert!(mean < Duration::from_micros(3), "{mean:?}");
        assert!(pace.batch(&waiting(64, 8), 2) > 1);
    }
}
