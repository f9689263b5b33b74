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
//!
//! The engine is one value (`Engine`: its slots, the tasks it holds, its
//! connection) with one method per thing that happens to it: a task, a
//! cancel, a command, results from its slots, a heartbeat due, the
//! connection lost. Each returns what to do next, and replacing the
//! connection is written once (`Engine::reconnect`).
//!
//! | file | what it holds |
//! | --- | --- |
//! | `engine.rs` | the engine and its reactions; registering (`connect`) |
//! | `engine/cancels.rs` | cancel flags shared with the slot handlers |
//! | `engine/drain.rs` | draining before the allocation ends or on demand; results held a moment after a stop signal |
//! | `engine/pace.rs` | how many waiting tasks a free slot gets at once |
//! | `engine/send.rs` | results and control messages to the hub, never blocking; recent results kept to send again |
//! | `engine/stop.rs` | the stop: a flag, and a wake-up that reaches a sleeping engine at once |
//! | `engine/wait.rs` | sleeping until something arrives or the next deadline, never polling on a timer |

use crate::hub::recent::RecentTimes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use super::client::random_identity;
use super::connection::{ConnectionError, ConnectionInfo};
use super::protocol::{EngineMessage, HubToEngine, JobId, TaskItem};
use crate::auth::AuthError;
use crate::exec::affinity::{usable_cores, PinnedThread};
use crate::exec::chunk::{run_chunk_at, settle_chunk_result, ChunkEnd, TaskPlace};
use crate::exec::with_task_environment;
use crate::ids::IdMap;
use crate::message::{
    decode_value, ClusterRequest, ClusterResult, Command, CommandReply, Envelope, Header,
    MessageError, MessageKind, WorkerInfo, ATTEMPT_KEY,
};
use crate::resources::{ResourceOffer, TaskGrant, GRANT_KEY};
use crate::slots::{Slots, SlotsError};
use crate::worker::{HandlerError, WorkerExit};

mod cancels;
mod connect;
mod drain;
mod pace;
mod send;
mod stop;
mod wait;

use cancels::CancelFlags;
use connect::{connect, register_message, Connection, Identity};
use drain::{DRAIN_MARGIN, TASK_TIME_SAMPLES};
use pace::Pace;
use send::{result_to_hub, results_to_hub, send_control, Recent};
pub use stop::EngineStop;

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
    /// What started this engine (`slurm:JOB/NODE`, `ssh:HOSTFILE`), told
    /// the hub so `zcluster status` can say where each engine came from.
    pub origin: Option<String>,
    /// When this engine's allocation ends (`--end-at`, or Slurm's end of
    /// the job): before then it drains, taking no task that would not
    /// finish in time (by the job's median task time here), so none is
    /// cut off at the walltime.
    pub end_at: Option<SystemTime>,
    /// What it offers the hub's scheduler (cores, GPUs, memory, named
    /// resources); its `slots` should be its cores. `None`: `slots` cores.
    pub resources: Option<ResourceOffer>,
    /// Bind each task with a resource request to the cores it was given
    /// (`zcluster worker --pin`).
    pub pin: bool,
}

/// The job a queued task belongs to (the engine writes it into the
/// request's metadata as it queues it).
fn job_of(request: &ClusterRequest) -> JobId {
    request
        .metadata
        .get(JOB_KEY)
        .and_then(|j| j.parse().ok())
        .unwrap_or(0)
}

/// What an engine does next, as one of its reactions decides.
enum Flow {
    /// Carry on with the same connection.
    Go,
    /// Replace the connection (and register again), for this reason.
    Reconnect(&'static str),
    /// Stop, exiting this way.
    Exit(WorkerExit),
}

/// An engine at work: its slots, the tasks it holds, its connection to the
/// hub and what it has done, with one method per thing that can happen
/// (`on_*`). [`run_engine`] drives it.
struct Engine<'a> {
    ctx: &'a zmq::Context,
    options: &'a EngineOptions,
    stop: &'a EngineStop,
    identity: Identity,
    slots: Slots,
    flags: CancelFlags,
    /// Slot ticket → (job, task id).
    tickets: IdMap<u64, (JobId, u64)>,
    /// Tasks beyond the free slots wait here: a hub that restarted believes
    /// every slot is free while the old tasks still run.
    waiting: VecDeque<ClusterRequest>,
    recent: Recent,
    /// Results of tasks killed by a stop signal, held for
    /// `drain::STOP_SIGNAL_GRACE` from when they came.
    held: Vec<(Instant, JobId, ClusterResult)>,
    pace: Pace,
    conn: Connection,
    /// A bad message from the hub was already logged at warn level.
    warned: bool,
    /// A kill or restart was acknowledged: finish the tasks, then exit so.
    leaving: Option<WorkerExit>,
    /// Draining: no new task starts; it leaves once its tasks are done.
    draining: bool,
    /// Recent task times by job, for the median a drain goes by.
    task_times: IdMap<JobId, RecentTimes>,
    /// Tasks finished, and their total time, for command replies.
    handled: u64,
    busy: Duration,
    next_beat: Instant,
    /// When this engine last sent a heartbeat (see `on_hub_heartbeat`).
    beat_sent: Instant,
    /// The engine id the slots give their tasks (`ZCLUSTER_ENGINE`).
    engine_id: Arc<AtomicU64>,
}

/// Runs an engine until a kill or restart command, or until `stop` is
/// given (then it unregisters and kills its running tasks).
pub fn run_engine(
    ctx: &zmq::Context,
    options: &EngineOptions,
    stop: &EngineStop,
) -> Result<WorkerExit, EngineError> {
    Engine::start(ctx, options, stop)?.run()
}

impl<'a> Engine<'a> {
    /// Starts the slots and registers with the hub.
    fn start(
        ctx: &'a zmq::Context,
        options: &'a EngineOptions,
        stop: &'a EngineStop,
    ) -> Result<Self, EngineError> {
        let flags = CancelFlags::default();
        let usable = Arc::new(usable_cores());
        let host = crate::host_name();
        // The id the hub gave, for the tasks' ZCLUSTER_ENGINE: set once
        // registered, again after each reconnection.
        let engine_id = Arc::new(AtomicU64::new(0));
        let slots = Slots::start(options.slots, |index| {
            let flags = flags.clone();
            let stop = stop.flag().clone();
            let handlers = options.handlers.clone();
            let engine_id = engine_id.clone();
            let host = host.clone();
            // Slots number theirs from 1.
            let slot = u32::try_from(index).unwrap_or(u32::MAX);
            let (usable, pin) = (usable.clone(), options.pin);
            move |request: &ClusterRequest| {
                if let Some(name) = request.metadata.get(HANDLER_KEY) {
                    let handler = handlers.get(name).ok_or_else(|| {
                        HandlerError::new(format!("this engine has no handler `{name}`"))
                    })?;
                    return handler(request);
                }
                let flag = flags.task_flag(job_of(request), request.id);
                if stop.load(Ordering::Relaxed) {
                    flag.store(true, Ordering::Relaxed);
                }
                let place = TaskPlace {
                    slot,
                    job: job_of(request),
                    engine: engine_id.load(Ordering::Relaxed),
                    host: host.clone(),
                };
                match request
                    .metadata
                    .get(GRANT_KEY)
                    .and_then(|g| TaskGrant::from_metadata(g))
                {
                    Some(grant) => run_granted(&grant, &usable, pin, || {
                        run_chunk_at(&flag, request, &place)
                    }),
                    None => run_chunk_at(&flag, request, &place),
                }
            }
        })?;
        let pid = std::process::id();
        let identity = Identity {
            name: random_identity(&format!("{host}-{pid}")),
            host,
            pid,
            started: SystemTime::now(),
        };
        let recent = Recent::default();
        let register = register_message(
            &identity,
            options,
            &IdMap::default(),
            &VecDeque::new(),
            &recent,
        );
        let conn = connect(ctx, options, &identity.name, &register, stop)?;
        engine_id.store(conn.engine.unwrap_or(0), Ordering::Relaxed);
        // As if a period ago: the hub's first beat gets an answer.
        let beat_sent = Instant::now()
            .checked_sub(conn.heartbeat)
            .unwrap_or_else(Instant::now);
        Ok(Engine {
            ctx,
            options,
            stop,
            identity,
            slots,
            flags,
            tickets: IdMap::default(),
            waiting: VecDeque::new(),
            recent,
            held: Vec::new(),
            pace: Pace::default(),
            conn,
            warned: false,
            leaving: None,
            draining: false,
            task_times: IdMap::default(),
            handled: 0,
            busy: Duration::ZERO,
            next_beat: Instant::now(),
            beat_sent,
            engine_id,
        })
    }

    /// Reacts to whatever happens until the engine stops.
    fn run(mut self) -> Result<WorkerExit, EngineError> {
        loop {
            match self.turn()? {
                Flow::Go => {}
                Flow::Reconnect(why) => self.reconnect(why)?,
                Flow::Exit(exit) => return Ok(exit),
            }
        }
    }

    /// One pass: stop if asked, start what waits, heartbeat, then wait
    /// (see [`wait`](Self::wait)) for results, the hub or the next deadline.
    fn turn(&mut self) -> Result<Flow, EngineError> {
        if self.stop.is_stopped() {
            return Ok(Flow::Exit(self.on_stop()));
        }
        if let Some(flow) = self.before_end() {
            return Ok(flow);
        }
        self.start_waiting()?;
        self.release_held();
        if self.draining
            && self.tickets.is_empty()
            && self.held.is_empty()
            && self.leaving.is_none()
        {
            // What waits unstarted goes back to the hub with the
            // registration: run elsewhere, not counted as a death.
            send_control(&self.conn.link.socket, &EngineMessage::Unregister);
            info!(given_back = self.waiting.len(), "engine drained");
            return Ok(Flow::Exit(WorkerExit::Killed));
        }
        if let Some(exit) = self.leaving {
            if self.tickets.is_empty() && self.waiting.is_empty() && self.held.is_empty() {
                send_control(&self.conn.link.socket, &EngineMessage::Unregister);
                info!(?exit, "engine leaving");
                return Ok(Flow::Exit(exit));
            }
        }
        if Instant::now() >= self.next_beat {
            if let Flow::Reconnect(why) = self.on_heartbeat_due() {
                return Ok(Flow::Reconnect(why));
            }
        }
        let woken = self.wait()?;
        // A closed connection is never reopened under its identity (see
        // `HubLink`); looked at when its monitor speaks, when idle, and at
        // least every heartbeat.
        if (woken.link || woken.idle() || Instant::now() >= self.next_beat)
            && self.leaving.is_none()
            && self.conn.link.closed()
        {
            return Ok(Flow::Reconnect("the connection to the hub closed"));
        }
        if woken.slots {
            self.on_slot_results()?;
        }
        if woken.hub {
            return self.on_hub_messages();
        }
        Ok(Flow::Go)
    }

    /// Replaces the connection: registers afresh, naming what this engine
    /// holds, then sends again what it finished lately.
    fn reconnect(&mut self, why: &str) -> Result<(), EngineError> {
        info!(why, "connecting to the hub again");
        // Held results go with the others sent again after registering: a
        // reconnect is no stop, and the hub must not run their tasks again.
        let window = self.conn.heartbeat * (self.options.misses + 2);
        for (_, job, result) in std::mem::take(&mut self.held) {
            self.recent.keep(job, result, window);
        }
        let register = register_message(
            &self.identity,
            self.options,
            &self.tickets,
            &self.waiting,
            &self.recent,
        );
        self.conn = connect(
            self.ctx,
            self.options,
            &self.identity.name,
            &register,
            self.stop,
        )?;
        self.engine_id
            .store(self.conn.engine.unwrap_or(0), Ordering::Relaxed);
        self.recent.resend(&self.conn.link.socket);
        Ok(())
    }

    /// Stopped (Ctrl-C, SIGTERM): kills the running tasks and unregisters.
    fn on_stop(&mut self) -> WorkerExit {
        self.flags.cancel_all();
        send_control(&self.conn.link.socket, &EngineMessage::Unregister);
        WorkerExit::Killed
    }

    /// Gives waiting tasks to free slots, in batches sized by the pace.
    fn start_waiting(&mut self) -> Result<(), EngineError> {
        let (tickets, waiting) = (&self.tickets, &self.waiting);
        self.flags.forget_finished_jobs(|job| {
            tickets.values().any(|(j, _)| *j == job) || waiting.iter().any(|r| job_of(r) == job)
        });
        while self.slots.free() > 0 && !self.waiting.is_empty() {
            if self.draining {
                break;
            }
            if let (Some(end), Some(next)) = (self.options.end_at, self.waiting.front()) {
                let need = self.median_time(job_of(next)).unwrap_or(Duration::ZERO) + DRAIN_MARGIN;
                if SystemTime::now() + need > end {
                    self.start_drain("the allocation ends before the next task would");
                    break;
                }
            }
            let batch = self.pace.batch(&self.waiting, self.slots.free());
            let requests: Vec<ClusterRequest> = self.waiting.drain(..batch).collect();
            let tasks: Vec<(JobId, u64)> = requests.iter().map(|r| (job_of(r), r.id)).collect();
            for (ticket, task) in self.slots.submit_batch(requests)?.into_iter().zip(tasks) {
                // The flag exists from now on, so a cancel that comes
                // before the slot starts the task is not lost.
                self.flags.task_flag(task.0, ticket);
                self.tickets.insert(ticket, task);
            }
        }
        Ok(())
    }

    /// Heartbeats if the hub's own heartbeats have not had one sent
    /// lately (see [`on_hub_heartbeat`](Self::on_hub_heartbeat)), and
    /// gives up on a hub that stopped answering.
    fn on_heartbeat_due(&mut self) -> Flow {
        if self.beat_sent.elapsed() >= self.conn.heartbeat + self.conn.heartbeat / 2 {
            self.send_heartbeat();
        }
        self.next_beat = Instant::now() + self.conn.heartbeat;
        // A leaving engine (kill or restart acknowledged) does not chase a
        // hub that shut down: it finishes its tasks and exits.
        if self.leaving.is_none()
            && self.conn.last_heard.elapsed() > self.conn.heartbeat * self.options.misses
        {
            warn!("the hub stopped answering; reconnecting");
            return Flow::Reconnect("the hub stopped answering");
        }
        Flow::Go
    }

    /// Answers the hub's heartbeat with this engine's own (unless one went
    /// less than half a period ago). So every engine beats just after the
    /// hub's beat to all of them, and the hub reads the answers in a few
    /// bursts rather than waking once per engine through the period: with
    /// a thousand engines each beating on its own timer, those wake-ups
    /// cost the hub more than the messages themselves. An engine that
    /// hears no beat still sends one every one and a half periods
    /// (`on_heartbeat_due`), inside the hub's limit of `heartbeat_misses`.
    ///
    /// Results sent count as a heartbeat sent (the hub takes any message
    /// as one), so a busy engine answers few beats.
    ///
    /// A beat heard also puts off the engine's own timer to one and a half
    /// periods from now, when its own beat would be due: while the hub
    /// beats, an idle engine wakes once a period, to answer it, and its
    /// timer (which also gives up on a silent hub) only runs when the hub
    /// is late.
    fn on_hub_heartbeat(&mut self) {
        if self.beat_sent.elapsed() >= self.conn.heartbeat / 2 {
            self.send_heartbeat();
        }
        self.next_beat = Instant::now() + self.conn.heartbeat + self.conn.heartbeat / 2;
    }

    fn send_heartbeat(&mut self) {
        send_control(&self.conn.link.socket, &EngineMessage::Heartbeat);
        self.beat_sent = Instant::now();
    }

    /// Sends the hub every result the slots have, and keeps them a while
    /// to send again should the hub not have got them.
    fn on_slot_results(&mut self) -> Result<(), EngineError> {
        let mut drained: Vec<(JobId, ClusterResult, bool)> = Vec::new();
        while let Some((ticket, mut result)) = self.slots.next_result(Duration::ZERO)? {
            let job = self.tickets.remove(&ticket).map_or(0, |(job, _)| job);
            let cancelled = self.flags.finished(ticket);
            let end = if result.request_metadata.contains_key(HANDLER_KEY) {
                ChunkEnd::default()
            } else {
                settle_chunk_result(&mut result)
            };
            self.handled += 1;
            self.busy += result.metadata.elapsed;
            self.pace.record(result.metadata.elapsed);
            // Task times serve the drain before an end time, only.
            if self.options.end_at.is_some() {
                self.task_times
                    .entry(job)
                    .or_insert_with(|| RecentTimes::new(TASK_TIME_SAMPLES))
                    .record(result.metadata.elapsed);
            }
            if self.stop.is_stopped() && end.cancelled {
                // Stopping: the stop cut it short (a slot cancels what it
                // starts once the stop is set). Unsent, it goes back to the
                // hub with the unregistration, to run elsewhere, rather
                // than be recorded as a cancelled task.
                continue;
            }
            if !cancelled && end.stop_signal {
                self.held.push((Instant::now(), job, result));
                continue;
            }
            drained.push((job, result, cancelled));
        }
        results_to_hub(&self.conn.link.socket, &drained);
        if !drained.is_empty() {
            // The hub takes any message from an engine as a sign of life:
            // a busy engine need not answer its beats as well (a thousand
            // answers a second, at a thousand engines).
            self.beat_sent = Instant::now();
        }
        let window = self.conn.heartbeat * (self.options.misses + 2);
        for (job, result, cancelled) in drained {
            // A cancelled copy's failure says nothing about its task:
            // never send it again to a hub that may take it as final.
            if !cancelled {
                self.recent.keep(job, result, window);
            }
        }
        Ok(())
    }

    /// Reads every message the hub sent.
    fn on_hub_messages(&mut self) -> Result<Flow, EngineError> {
        loop {
            let envelope = match self.conn.link.socket.recv(zmq::DONTWAIT) {
                Ok(envelope) => envelope,
                Err(e) if e.is_timeout() => return Ok(Flow::Go),
                Err(MessageError::Zmq(e)) => {
                    return Err(transport("receive from the hub", e.into()))
                }
                Err(MessageError::Auth(AuthError::OtherEpoch { .. })) => {
                    return Ok(Flow::Reconnect("the hub restarted"));
                }
                Err(MessageError::Auth(AuthError::Superseded)) => {
                    debug!("dropping a welcome a newer hello stands for");
                    continue;
                }
                Err(e) if !self.warned => {
                    self.warned = true;
                    warn!(error = %e, "dropping a bad message from the hub (logged once)");
                    continue;
                }
                Err(e) => {
                    debug!(error = %e, "dropping a bad message from the hub");
                    continue;
                }
            };
            self.conn.last_heard = Instant::now();
            if let Flow::Reconnect(why) = self.on_hub_message(&envelope)? {
                return Ok(Flow::Reconnect(why));
            }
        }
    }

    /// One message from the hub: tasks, a control message or a command.
    fn on_hub_message(&mut self, envelope: &Envelope) -> Result<Flow, EngineError> {
        match envelope.header.kind {
            MessageKind::Request => {
                self.on_task(
                    envelope.header.job,
                    envelope.header.id,
                    1,
                    None,
                    envelope.request(),
                );
            }
            MessageKind::Tasks => {
                let job = envelope.header.job;
                match decode_value::<Vec<TaskItem>>(envelope.body(), "tasks") {
                    Ok(tasks) => {
                        for (id, attempt, grant, request) in tasks {
                            let request = ClusterRequest::from_body(&request);
                            self.on_task(job, id, attempt, grant, request);
                        }
                    }
                    // Only the hub sends these, and it builds them from bodies
                    // it holds: which tasks it meant is unknown here.
                    Err(e) => warn!(error = %e, "dropping a bad task batch"),
                }
            }
            MessageKind::Control => match envelope.control::<HubToEngine>() {
                Ok(HubToEngine::Heartbeat) => self.on_hub_heartbeat(),
                Ok(HubToEngine::CancelJob { job }) => {
                    info!(job, "cancelling a job's tasks");
                    self.flags.cancel_job(job);
                }
                Ok(HubToEngine::CancelTask { job, id }) => self.on_cancel_task(job, id),
                Ok(HubToEngine::Refused { reason }) => {
                    if self.conn.engine.is_some() {
                        info!(%reason, "the hub no longer knows this engine; registering again");
                        return Ok(Flow::Reconnect("the hub no longer knows this engine"));
                    }
                    return Err(EngineError::Refused(reason));
                }
                Ok(HubToEngine::Registered { .. }) => {}
                Err(e) => warn!(error = %e, "dropping a bad control message"),
            },
            MessageKind::Command => match envelope.command() {
                Ok(command) => self.on_command(envelope.header.id, command),
                Err(e) => warn!(error = %e, "dropping a bad command"),
            },
            kind => debug!(%kind, "dropping an unexpected message from the hub"),
        }
        Ok(Flow::Go)
    }

    /// Queues a task the hub sent, stamped with its job, (past the first)
    /// its attempt and what it was given here, or answers it at once as
    /// failed when its request does not decode (otherwise its slot at the
    /// hub stays taken and its client waits for ever).
    fn on_task(
        &mut self,
        job: JobId,
        id: u64,
        attempt: u32,
        grant: Option<String>,
        request: Result<ClusterRequest, MessageError>,
    ) {
        match request {
            Ok(mut request) => {
                request.metadata.insert(JOB_KEY.into(), job.to_string());
                if attempt > 1 {
                    request
                        .metadata
                        .insert(ATTEMPT_KEY.into(), attempt.to_string());
                }
                if let Some(grant) = grant {
                    request.metadata.insert(GRANT_KEY.into(), grant);
                }
                self.waiting.push_back(request);
            }
            Err(e) => {
                warn!(error = %e, "refusing a bad task");
                let failed = self.failed_here(id, &format!("bad request: {e}"));
                if let Err(e) = result_to_hub(&self.conn.link.socket, job, &failed) {
                    warn!(error = %e, "cannot answer a bad task");
                }
            }
        }
    }

    /// Another copy of task `id` finished first: kills this one if it runs,
    /// and answers it at once if it has not started, so its slot at the hub
    /// is freed.
    fn on_cancel_task(&mut self, job: JobId, id: u64) {
        debug!(
            job,
            task = id,
            "cancelling a task (another copy finished first)"
        );
        let running = self.tickets.iter().find(|(_, task)| **task == (job, id));
        if let Some((ticket, _)) = running {
            self.flags.cancel_task(*ticket);
        }
        let waiting = self
            .waiting
            .iter()
            .position(|r| r.id == id && job_of(r) == job);
        if let Some(at) = waiting {
            self.waiting.remove(at);
            let cancelled = self.failed_here(id, "cancelled: another copy finished first");
            if let Err(e) = result_to_hub(&self.conn.link.socket, job, &cancelled) {
                warn!(error = %e, "cannot answer a cancelled task");
            }
        }
    }

    /// Answers a command (kill, restart, ping) with who this engine is and
    /// what it has done; a kill or restart makes it leave once its tasks
    /// are done.
    fn on_command(&mut self, token: u64, command: Command) {
        let mean_time = u32::try_from(self.handled)
            .ok()
            .filter(|n| *n > 0)
            .map_or(Duration::ZERO, |n| self.busy / n);
        let reply = CommandReply {
            token,
            command: command.name().to_string(),
            worker: WorkerInfo {
                host: self.identity.host.clone(),
                pid: self.identity.pid,
                worker: self.worker_name(),
                started: self.identity.started,
            },
            requests_handled: self.handled,
            mean_time,
        };
        let header = Header {
            kind: MessageKind::Reply,
            job: 0,
            id: token,
        };
        if let Err(e) = self.conn.link.socket.send(&header, &reply, zmq::DONTWAIT) {
            warn!(error = %e, "cannot answer a command");
        }
        match command {
            Command::Kill => self.leaving = Some(WorkerExit::Killed),
            Command::Restart => self.leaving = Some(WorkerExit::Restart),
            Command::Drain => self.start_drain("asked by the hub"),
            _ => {}
        }
    }

    /// The name results and replies give this engine.
    fn worker_name(&self) -> String {
        format!("engine-{}", self.conn.engine.unwrap_or(0))
    }

    /// A failed result for a task this engine answers without running it.
    fn failed_here(&self, id: u64, reason: &str) -> ClusterResult {
        ClusterResult::failed_here(id, self.worker_name(), reason)
    }
}

/// Runs a task given `grant`: with its environment saying what it got and,
/// if `pin`, bound to its cores (of `usable`, this process's).
fn run_granted<R>(grant: &TaskGrant, usable: &[usize], pin: bool, run: impl FnOnce() -> R) -> R {
    let environment = grant.environment(usable);
    with_task_environment(environment, || {
        let _pinned = pin
            .then(|| PinnedThread::to(&grant.cores(usable)))
            .and_then(|p| {
                p.map_err(|e| warn!(error = %e, "cannot pin a task to its cores"))
                    .ok()
            });
        run()
    })
}

fn transport(operation: &'static str, source: MessageError) -> EngineError {
    EngineError::Transport { operation, source }
}
