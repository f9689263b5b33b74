//! The `zcluster map` engine: one command per input, results in order.
//!
//! The front end ([`run_map`]) reads inputs lazily, renders each into a
//! command with a [`CommandTemplate`], groups tasks into chunks, keeps order,
//! retries, halts, and hands every finished task to the caller once as a
//! [`TaskRecord`]. *What runs the chunks* is behind one seam, the [`Backend`]
//! trait, implemented by a hub client
//! ([`HubBackend`](crate::hub::client::HubBackend)): a lab's hub, or a hub
//! and engine embedded in this process
//! ([`EmbeddedCluster`](crate::hub::embedded::EmbeddedCluster)).
//!
//! One file on purpose (about 900 lines of code): the map's loop and the types it
//! hands out (options, halt rules, records, summary, the reorder buffer)
//! are one mechanism a reader follows top to bottom; the template, the
//! chunk runner (`exec::chunk`) and the backends live elsewhere.
//!
//! # Memory bound
//!
//! The front end never holds more than [`MapOptions::window`] tasks between
//! the oldest one not yet handed out and the newest one read: with
//! `keep_order`, a slow task at the head stops reading after `window` more
//! inputs rather than buffering the whole file. Memory is thus
//! O(`window` × (input + captured output)), whatever the number of inputs.

pub mod joblog;
pub mod record;
pub mod sources;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::exec::chunk::shown;
use crate::exec::ExecOutcome;
use crate::message::{decode_value, ClusterResult, ResultStatus, ATTEMPT_KEY};
use crate::template::CommandTemplate;

/// The chunks the front end hands a [`Backend`]: exec's, since engines run
/// them too.
pub use crate::exec::chunk::{ExecChunk, ExecTask};
pub use record::{TaskRecord, TaskStatus};
pub use sources::{Input, Source, SourceSpec, Sources, Split};

/// Default largest span of tasks in memory (see the module docs).
pub const DEFAULT_WINDOW: usize = 4096;

/// How often the front end wakes up with nothing to do, to notice a stop
/// (Ctrl-C stops new tasks within this).
const IDLE_POLL: Duration = Duration::from_millis(50);

/// How long the front end waits for a result while it also waits for an
/// input line to arrive (tasks running, free slots, the input slow): the
/// most a new line waits before its task starts.
const STARVED_POLL: Duration = Duration::from_millis(2);

/// What to do after the first failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Halt {
    /// Run everything.
    #[default]
    Never,
    /// Stop starting tasks; let running ones finish.
    Soon,
    /// Stop starting tasks and kill running ones.
    Now,
}

/// What sets a halt off: GNU parallel's `fail=` and `success=` (`--halt
/// soon` alone is `soon,fail=1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HaltOn {
    /// Tasks failed (or timed out) for good, retries spent.
    Failures(Threshold),
    /// Tasks succeeded.
    Successes(Threshold),
}

/// How many tasks set a halt off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// This many.
    Count(u64),
    /// This percentage of all the inputs: judged once the input has ended
    /// and their number is known (as GNU parallel, which reads them all).
    Percent(f64),
}

impl Default for HaltOn {
    fn default() -> Self {
        HaltOn::Failures(Threshold::Count(1))
    }
}

impl HaltOn {
    /// Whether `failed` and `succeeded` tasks, of `total` inputs if known,
    /// set the halt off.
    pub fn reached(&self, failed: u64, succeeded: u64, total: Option<u64>) -> bool {
        let (count, threshold) = match *self {
            HaltOn::Failures(t) => (failed, t),
            HaltOn::Successes(t) => (succeeded, t),
        };
        match threshold {
            Threshold::Count(n) => count >= n.max(1),
            Threshold::Percent(p) => {
                total.is_some_and(|total| count > 0 && count as f64 * 100.0 >= p * total as f64)
            }
        }
    }
}

/// How to run a map; plain data, so library users and tests never touch the
/// command line.
#[derive(Debug, Clone)]
pub struct MapOptions {
    /// Tasks running at once (embedded workers); default: cores.
    pub jobs: usize,
    /// Hand records out in input order (default) or as they finish.
    pub keep_order: bool,
    /// Per-task time limit: the task's process group is killed.
    pub timeout: Option<Duration>,
    /// Per-task time limit as a percentage of the median time of the tasks
    /// that succeeded so far (GNU parallel's `--timeout 200%`): none until
    /// [`MEDIAN_SAMPLES_MIN`] have; then it replaces `timeout`. A task's
    /// limit is set when it is sent, so with this no more than `jobs` tasks
    /// are sent at once.
    pub timeout_of_median: Option<u32>,
    /// Extra attempts for a failed or timed-out task, made by the backend
    /// (the hub retries on another engine when it can).
    pub retries: u32,
    /// What to do once `halt_on` is met.
    pub halt: Halt,
    /// When to halt (default: at the first failure).
    pub halt_on: HaltOn,
    /// Tasks per request to a worker.
    pub chunksize: usize,
    /// Memory bound, in tasks (see the module docs).
    pub window: usize,
    /// Set (e.g. from a SIGINT handler) to stop: nothing new starts, running
    /// tasks are killed, what finished is handed out.
    pub stop: Arc<AtomicBool>,
    /// `--resume` from a joblog: the inputs it has (or, with
    /// `--resume-failed`, that succeeded) are skipped, neither run nor
    /// handed out.
    pub resume: Option<Arc<joblog::Resume>>,
    /// Variables carried to every task (`--env`), over a hub too.
    pub task_env: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    /// The directory every task runs in (`--wd`; over a hub, by default
    /// the client's); `None`: the engine's.
    pub task_wd: Option<serde_bytes::ByteBuf>,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            keep_order: true,
            timeout: None,
            timeout_of_median: None,
            retries: 0,
            halt: Halt::Never,
            halt_on: HaltOn::default(),
            chunksize: 1,
            window: DEFAULT_WINDOW,
            stop: Arc::new(AtomicBool::new(false)),
            resume: None,
            task_env: Vec::new(),
            task_wd: None,
        }
    }
}

/// Errors that stop a map as a whole (a failing task is a record, not this).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The inputs could not be read.
    #[error("cannot read inputs")]
    Input(#[source] std::io::Error),
    /// The caller's record handler failed (e.g. stdout closed).
    #[error("cannot write results")]
    Output(#[source] std::io::Error),
    /// The backend failed.
    #[error("{0}")]
    Backend(String),
    /// `zcluster map --attach` with inputs that end before the job's
    /// recorded tasks: printing fewer results and exiting 0 would pass
    /// for the whole job while the rest of it runs on for nobody.
    #[error("the inputs end after {given} tasks, but job {job} has {recorded} recorded: attach with the job's own inputs (or pass --attach-any-length to print only these and leave the rest of the job to run)")]
    InputsShorter {
        /// The job attached to.
        job: u64,
        /// Tasks (chunks) the job's store holds.
        recorded: u64,
        /// Tasks (chunks) the inputs make.
        given: u64,
    },
    /// `zcluster map --attach` with inputs that go on past the tasks of a
    /// job whose map had sent them all: the extra inputs would silently
    /// become new tasks of an old job.
    #[error("the inputs go on past the {recorded} tasks of job {job}, whose map had sent all its inputs: attach with the job's own inputs (or pass --attach-any-length to add the rest to the job)")]
    InputsLonger {
        /// The job attached to.
        job: u64,
        /// Tasks (chunks) the job had when its map finished sending.
        recorded: u64,
    },
    /// `zcluster map --attach` with inputs that go on past the tasks of a
    /// job that has finished: the hub runs no new tasks for it.
    #[error("the inputs go on past the {recorded} tasks of job {job}, which has finished and takes no new tasks: map the rest as a new job")]
    FinishedJobLonger {
        /// The job attached to.
        job: u64,
        /// Tasks (chunks) the job has.
        recorded: u64,
    },
    /// `--resume` with a joblog another command template made.
    #[error(transparent)]
    JoblogMismatch(Box<joblog::CommandMismatch>),
}

/// A chunk's outcome as a backend reports it.
#[derive(Debug, Clone)]
pub struct ChunkDone {
    /// The id given to [`Backend::submit`].
    pub id: u64,
    /// One outcome per task (by seq), or why the whole chunk failed.
    pub outcomes: Result<Vec<(u64, ExecOutcome)>, String>,
    /// Where it ran.
    pub host: String,
    /// Worker process id.
    pub pid: u32,
    /// Worker name.
    pub worker: String,
    /// Which attempt this answer came from (1 for the first).
    pub attempts: u32,
}

impl ChunkDone {
    /// One outcome per task: the chunk's own, or, when the whole chunk
    /// failed, that failure for each of `seqs` (its tasks).
    pub fn outcomes_for(&self, seqs: &[u64]) -> Vec<(u64, ExecOutcome)> {
        match &self.outcomes {
            Ok(outcomes) => outcomes.clone(),
            Err(reason) => seqs
                .iter()
                .map(|&seq| {
                    (
                        seq,
                        crate::exec::not_started(&format!("worker failed: {reason}")),
                    )
                })
                .collect(),
        }
    }

    /// The chunk's outcome from a worker's result: its outcomes on success,
    /// the worker's error for the whole chunk on failure.
    pub fn from_result(result: ClusterResult) -> Self {
        // A failed result may still carry outcomes: an engine marks a chunk
        // failed when one of its commands failed, so the hub's store can
        // tell (and resubmit) it.
        let decoded = decode_value::<Vec<(u64, ExecOutcome)>>(&result.payload, "chunk outcomes");
        let outcomes = match (result.status, decoded) {
            (_, Ok(outcomes)) if !result.payload.is_empty() => Ok(outcomes),
            (ResultStatus::Ok, Ok(outcomes)) => Ok(outcomes),
            (ResultStatus::Ok, Err(e)) => Err(e.to_string()),
            (ResultStatus::Fail, _) => {
                Err(result.exception.unwrap_or_else(|| "unknown failure".into()))
            }
        };
        let attempts = result
            .request_metadata
            .get(ATTEMPT_KEY)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        ChunkDone {
            id: result.id,
            attempts,
            outcomes,
            host: result.metadata.host,
            pid: result.metadata.pid,
            worker: result.metadata.worker,
        }
    }
}

/// The seam between the front end and whatever runs the tasks.
pub trait Backend {
    /// How many chunks may be outstanding at once (free slots).
    fn slots(&self) -> usize;
    /// Starts a chunk; never called with more than `slots()` outstanding.
    fn submit(&mut self, id: u64, chunk: &ExecChunk) -> Result<(), MapError>;
    /// The next finished chunk, or `None` after `timeout`.
    fn next_done(&mut self, timeout: Duration) -> Result<Option<ChunkDone>, MapError>;
    /// Drops chunks that have not started (halt soon) and returns their ids
    /// (they get no answer); running ones go on.
    fn withdraw(&mut self) -> Vec<u64>;
    /// Kills running tasks now (halt now, Ctrl-C); their chunks still finish,
    /// with cancelled outcomes. Returns the ids of chunks that had not
    /// started and never will (they get no answer).
    fn cancel(&mut self) -> Vec<u64>;
    /// Called once, when the inputs ran out, with the number of chunks they
    /// made: a backend carrying on a recorded job refuses inputs that end
    /// before it does (an error stops the map before it prints a partial
    /// job as if it were whole).
    fn end_of_inputs(&mut self, chunks: u64) -> Result<(), MapError> {
        let _ = chunks;
        Ok(())
    }
    /// Whether the inputs may yet end too soon for this backend (see
    /// [`end_of_inputs`](Self::end_of_inputs)): the map then reads them
    /// before it hands out any result, as far as its window lets it, so a
    /// refused map prints nothing.
    fn awaits_end_of_inputs(&self) -> bool {
        false
    }
}

/// What a map did, for the summary line and the exit status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapSummary {
    /// Records handed out.
    pub total: u64,
    /// Exited 0.
    pub ok: u64,
    /// Failed (non-zero exit, signal, could not start).
    pub failed: u64,
    /// Killed by the timeout.
    pub timed_out: u64,
    /// Killed by a halt or a stop.
    pub cancelled: u64,
    /// Inputs read but never started because of a halt or a stop.
    pub not_run: u64,
    /// A halt or stop came before the end of the input.
    pub unread: bool,
    /// The failed (or timed-out) tasks with the lowest seqs, in input
    /// order: seq and input.
    pub failures: Vec<(u64, String)>,
    /// The cancelled tasks with the lowest seqs, in input order: listed
    /// apart, since a task a halt or Ctrl-C killed did not fail.
    pub cancelled_tasks: Vec<(u64, String)>,
    /// The map was stopped through [`MapOptions::stop`].
    pub interrupted: bool,
    /// The map halted because enough tasks succeeded (`--halt
    /// now,success=1`): a success, whatever it left unrun.
    pub halted_on_success: bool,
    /// Wall-clock time.
    pub wall: Duration,
    /// Inputs skipped because the joblog has them (`--resume`).
    pub skipped: u64,
}

/// How many failed (and how many cancelled) tasks the summary lists by
/// name.
const LISTED_FAILURES: usize = 10;

impl MapSummary {
    /// Whether every task succeeded and nothing was skipped.
    pub fn success(&self) -> bool {
        if self.halted_on_success {
            return !self.interrupted;
        }
        self.ok == self.total && self.not_run == 0 && !self.unread && !self.interrupted
    }

    /// Tasks per second of wall time.
    pub fn rate(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.total as f64 / secs
        } else {
            0.0
        }
    }
}

/// An input line, as bytes: on Unix it need not be UTF-8. (An [`Input`]
/// of one column; `run_map` takes either.)
pub type InputLine = Vec<u8>;

struct Pending {
    input: Vec<u8>,
    argv: Vec<serde_bytes::ByteBuf>,
    /// Where the engine writes the slot (`{%}`).
    slot_at: Vec<(u32, u32)>,
}

/// Runs `template` over `inputs` on `backend`, handing each finished task to
/// `emit` exactly once (in input order when `options.keep_order`).
///
/// The inputs are read on a thread of their own (see [`run_map_with`]).
pub fn run_map<I, L, F>(
    inputs: I,
    template: &CommandTemplate,
    options: &MapOptions,
    backend: &mut dyn Backend,
    emit: F,
) -> Result<MapSummary, MapError>
where
    I: Iterator<Item = std::io::Result<L>> + Send + 'static,
    L: Into<Input>,
    F: FnMut(TaskRecord) -> std::io::Result<()>,
{
    run_map_with(inputs, template, options, backend, |_| Ok(()), emit)
}

/// [`run_map`], also calling `finished` with each task the moment it
/// finishes, before it waits for its turn to be handed to `emit`: a caller
/// that must keep a record of finished work whatever happens next (a
/// second Ctrl-C exits at once) keeps it from there.
///
/// The inputs are read on a thread of their own, so a slow or blocked
/// input (a pipe, a terminal) never holds back a finished result or a
/// stop: the loop here only takes the lines that have arrived. That thread
/// reads no further than the loop allows (the window), and is left behind
/// blocked in its read if the input never ends.
pub fn run_map_with<I, L, D, F>(
    inputs: I,
    template: &CommandTemplate,
    options: &MapOptions,
    backend: &mut dyn Backend,
    mut finished: D,
    mut emit: F,
) -> Result<MapSummary, MapError>
where
    I: Iterator<Item = std::io::Result<L>> + Send + 'static,
    L: Into<Input>,
    D: FnMut(&TaskRecord) -> std::io::Result<()>,
    F: FnMut(TaskRecord) -> std::io::Result<()>,
{
    let started = Instant::now();
    let inputs = inputs.map(|input| input.map(Into::into));
    let mut reader = InputReader::spawn(inputs).map_err(MapError::Input)?;
    let mut exhausted = false;
    let mut next_seq: u64 = 1;
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut outstanding: HashMap<u64, Vec<u64>> = HashMap::new();
    // A chunk being filled: with --chunksize above 1 it waits for its last
    // input rather than go out short, so that chunks are the same
    // whatever the pace of the input (`--attach` matches them).
    let mut building: Vec<ExecTask> = Vec::new();
    let mut next_chunk: u64 = 0;
    let mut order = Reorder::new(options.keep_order);
    let mut summary = MapSummary::default();
    let mut task_times = TaskTimes::default();
    let mut halted = false;
    let mut told_end = false;
    let chunksize = options.chunksize.max(1);
    let window = options.window.max(chunksize);

    loop {
        if options.stop.load(Ordering::Relaxed) && !summary.interrupted {
            tracing::debug!("stop requested: cancelling the running tasks");
            summary.interrupted = true;
            halted = true;
            for id in backend.cancel() {
                outstanding.remove(&id);
            }
        }
        // Let the reader run ahead as far as memory allows: the window in
        // input order, else enough to fill every slot.
        let ahead = if options.keep_order {
            window as u64
        } else {
            (backend.slots() * chunksize).clamp(chunksize, window) as u64
        };
        if !halted {
            reader.allow(order.oldest(next_seq) - 1 + ahead);
        }
        // Fill every free slot with a chunk of the inputs that have
        // arrived, reading no further than the window allows.
        let mut starved = false;
        // With a limit relative to the median, a task's limit is set when
        // it is sent: send no more than run at once, so it is set as the
        // task starts, from every task finished before.
        let slots = match options.timeout_of_median {
            Some(_) => backend.slots().min(options.jobs.max(1)),
            None => backend.slots(),
        };
        while !halted && outstanding.len() < slots {
            while building.len() < chunksize
                && !exhausted
                && (next_seq - order.oldest(next_seq)) < window as u64
            {
                let line = match reader.next() {
                    Arrival::Line(line) => line,
                    Arrival::Waiting => {
                        starved = true;
                        break;
                    }
                    Arrival::End => {
                        exhausted = true;
                        break;
                    }
                };
                let seq = next_seq;
                next_seq += 1;
                match prepare(template, line.map_err(MapError::Input)?, seq) {
                    Ok(p) if skipped(options, template, seq, &p)? => {
                        summary.skipped += 1;
                        order.skip(seq, &mut emit)?;
                    }
                    Ok(p) => {
                        building.push(ExecTask {
                            seq,
                            input: p.input.clone(),
                            argv: p.argv.clone(),
                            timeout: task_times.timeout(options),
                            slot_at: p.slot_at.clone(),
                            env: options.task_env.clone(),
                            wd: options.task_wd.clone(),
                        });
                        pending.insert(seq, p);
                    }
                    Err(record) => {
                        count(&mut summary, &record);
                        finished(&record).map_err(MapError::Output)?;
                        order.push(*record, &mut emit)?;
                    }
                }
            }
            if building.is_empty() || (building.len() < chunksize && !exhausted) {
                break;
            }
            let tasks = std::mem::take(&mut building);
            let seqs = tasks.iter().map(|t| t.seq).collect();
            backend.submit(next_chunk, &ExecChunk { tasks })?;
            outstanding.insert(next_chunk, seqs);
            next_chunk += 1;
        }
        if exhausted && !told_end {
            told_end = true;
            backend.end_of_inputs(next_chunk)?;
        }
        if outstanding.is_empty() && (exhausted || halted) {
            break;
        }
        if outstanding.is_empty() {
            // Nothing runs: wait for the input itself.
            reader.wait(IDLE_POLL);
            continue;
        }
        // Inputs that may yet end too soon for the backend are read first
        // (as far as the reader may run ahead): an error then comes before
        // any output.
        if starved
            && !exhausted
            && backend.awaits_end_of_inputs()
            && next_seq - order.oldest(next_seq) < ahead
        {
            reader.wait(IDLE_POLL);
            continue;
        }
        // Waiting for inputs as well as results: look at the input often.
        let poll = if starved { STARVED_POLL } else { IDLE_POLL };
        let Some(done) = backend.next_done(poll)? else {
            continue;
        };
        let Some(seqs) = outstanding.remove(&done.id) else {
            continue; // a chunk answered twice: the first answer won
        };
        for (seq, outcome) in done.outcomes_for(&seqs) {
            let Some(task) = pending.remove(&seq) else {
                continue; // not ours, or already finished
            };
            let (input, raw_input) = shown(&task.input);
            let record = TaskRecord {
                seq,
                input,
                raw_input,
                command: task
                    .argv
                    .iter()
                    .map(|arg| String::from_utf8_lossy(arg).into_owned())
                    .collect(),
                outcome,
                attempts: done.attempts,
                host: done.host.clone(),
                pid: done.pid,
                worker: done.worker.clone(),
            };
            count(&mut summary, &record);
            if record.status() == TaskStatus::Ok {
                task_times.add(record.outcome.elapsed);
            }
            tracing::debug!(seq, status = record.status().as_str(), "task finished");
            finished(&record).map_err(MapError::Output)?;
            let known_total = exhausted.then(|| next_seq - 1);
            let failed = summary.failed + summary.timed_out;
            if options.halt != Halt::Never
                && !halted
                && !summary.interrupted
                && options.halt_on.reached(failed, summary.ok, known_total)
            {
                let stopped = if options.halt == Halt::Now {
                    backend.cancel()
                } else {
                    backend.withdraw()
                };
                for id in stopped {
                    outstanding.remove(&id);
                }
                halted = true;
                summary.halted_on_success = matches!(options.halt_on, HaltOn::Successes(_));
            }
            order.push(record, &mut emit)?;
        }
    }
    // Tasks never started (halted). Inputs never read are not counted:
    // reading a huge (or endless) input to the end just to count it would
    // defeat the halt.
    summary.not_run = pending.len() as u64;
    summary.unread = halted && !exhausted;
    order.flush(&mut emit)?;
    summary.wall = started.elapsed();
    Ok(summary)
}

/// Successful tasks needed before `--timeout N%` applies.
pub const MEDIAN_SAMPLES_MIN: usize = 3;

/// How many recent task times the median is taken over: it follows a job
/// whose tasks change pace, in bounded memory.
const MEDIAN_SAMPLES_MAX: usize = 1001;

/// The times of the latest successful tasks, for `--timeout N%`.
#[derive(Default)]
struct TaskTimes {
    recent: std::collections::VecDeque<Duration>,
    sorted: Vec<Duration>,
}

impl TaskTimes {
    fn add(&mut self, elapsed: Duration) {
        if self.recent.len() == MEDIAN_SAMPLES_MAX {
            if let Some(oldest) = self.recent.pop_front() {
                if let Ok(at) = self.sorted.binary_search(&oldest) {
                    self.sorted.remove(at);
                }
            }
        }
        self.recent.push_back(elapsed);
        let at = self.sorted.partition_point(|t| *t < elapsed);
        self.sorted.insert(at, elapsed);
    }

    /// The time limit of a task starting now.
    fn timeout(&self, options: &MapOptions) -> Option<Duration> {
        match options.timeout_of_median {
            Some(percent) if self.sorted.len() >= MEDIAN_SAMPLES_MIN => {
                let median = self.sorted[self.sorted.len() / 2];
                // At least a millisecond: a limit of zero would kill all.
                Some((median * percent / 100).max(Duration::from_millis(1)))
            }
            _ => options.timeout,
        }
    }
}

/// What the input thread has for the loop right now.
enum Arrival {
    /// The next line (or the error reading it).
    Line(std::io::Result<Input>),
    /// Nothing yet: the input is slow, or the loop has not allowed more.
    Waiting,
    /// The input ended (or its first error was taken).
    End,
}

/// The input, read on a thread of its own, lines passed over a channel.
/// The thread reads only as many lines as the loop allows (its credit), so
/// the memory bound holds as if the loop read them itself.
struct InputReader {
    credit: crossbeam_channel::Sender<u64>,
    lines: crossbeam_channel::Receiver<std::io::Result<Input>>,
    /// A line taken by [`wait`](Self::wait), handed out first.
    early: Option<std::io::Result<Input>>,
    /// Lines allowed so far, in all.
    allowed: u64,
    ended: bool,
}

impl InputReader {
    fn spawn<I>(inputs: I) -> std::io::Result<Self>
    where
        I: Iterator<Item = std::io::Result<Input>> + Send + 'static,
    {
        let (credit_tx, credit_rx) = crossbeam_channel::unbounded::<u64>();
        let (line_tx, line_rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("zcluster-inputs".into())
            .spawn(move || {
                let mut credit = 0u64;
                for line in inputs {
                    while credit == 0 {
                        match credit_rx.recv() {
                            Ok(more) => credit += more,
                            Err(_) => return, // the map ended
                        }
                    }
                    credit -= 1;
                    let failed = line.is_err();
                    if line_tx.send(line).is_err() || failed {
                        return;
                    }
                }
            })?;
        Ok(InputReader {
            credit: credit_tx,
            lines: line_rx,
            early: None,
            allowed: 0,
            ended: false,
        })
    }

    /// Lets the thread read up to `total` lines in all.
    fn allow(&mut self, total: u64) {
        if total > self.allowed && self.credit.send(total - self.allowed).is_ok() {
            self.allowed = total;
        }
    }

    fn next(&mut self) -> Arrival {
        if let Some(line) = self.early.take() {
            return self.arrived(line);
        }
        if self.ended {
            return Arrival::End;
        }
        match self.lines.try_recv() {
            Ok(line) => self.arrived(line),
            Err(crossbeam_channel::TryRecvError::Empty) => Arrival::Waiting,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                self.ended = true;
                Arrival::End
            }
        }
    }

    fn arrived(&mut self, line: std::io::Result<Input>) -> Arrival {
        if line.is_err() {
            self.ended = true;
        }
        Arrival::Line(line)
    }

    /// Waits up to `timeout` for a line (or the end) to arrive.
    fn wait(&mut self, timeout: Duration) {
        if self.early.is_some() || self.ended {
            return;
        }
        match self.lines.recv_timeout(timeout) {
            Ok(line) => self.early = Some(line),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => self.ended = true,
        }
    }
}

fn count(summary: &mut MapSummary, record: &TaskRecord) {
    summary.total += 1;
    match record.status() {
        TaskStatus::Ok => summary.ok += 1,
        TaskStatus::Failed => summary.failed += 1,
        TaskStatus::Timeout => summary.timed_out += 1,
        TaskStatus::Cancelled => summary.cancelled += 1,
    }
    let listed = match record.status() {
        TaskStatus::Ok => return,
        TaskStatus::Cancelled => &mut summary.cancelled_tasks,
        TaskStatus::Failed | TaskStatus::Timeout => &mut summary.failures,
    };
    // Tasks finish in any order: keep the lowest seqs, sorted.
    if listed.len() < LISTED_FAILURES || listed.last().is_some_and(|(seq, _)| record.seq < *seq) {
        let at = listed.partition_point(|(seq, _)| *seq < record.seq);
        listed.insert(at, (record.seq, record.input.clone()));
        listed.truncate(LISTED_FAILURES);
    }
}

/// Renders one input, or makes the failed record of an input that cannot
/// become a command (a NUL byte, a missing column, a CSV record that does
/// not parse).
fn prepare(template: &CommandTemplate, input: Input, seq: u64) -> Result<Pending, Box<TaskRecord>> {
    let rendered = match &input.columns {
        Ok(columns) => template
            .render_placed(columns, seq)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match rendered {
        Ok((argv, slot_at)) => Ok(Pending {
            input: input.text,
            argv: argv.into_iter().map(serde_bytes::ByteBuf::from).collect(),
            slot_at,
        }),
        Err(reason) => {
            let (shown_input, raw_input) = shown(&input.text);
            Err(Box::new(TaskRecord {
                seq,
                input: shown_input,
                raw_input,
                command: Vec::new(),
                outcome: crate::exec::not_started(&reason),
                attempts: 0,
                host: String::new(),
                pid: 0,
                worker: String::new(),
            }))
        }
    }
}

/// Whether `--resume` skips input `seq` (an error when the joblog's
/// command for it is another).
fn skipped(
    options: &MapOptions,
    template: &CommandTemplate,
    seq: u64,
    pending: &Pending,
) -> Result<bool, MapError> {
    let Some(resume) = &options.resume else {
        return Ok(false);
    };
    resume
        .skips(seq, &template.shell_line(&pending.argv))
        .map_err(MapError::JoblogMismatch)
}

/// Hands records out in seq order (or at once when order is not kept).
struct Reorder {
    keep_order: bool,
    next: u64,
    /// Finished tasks waiting for their turn; `None` for a skipped input.
    held: BTreeMap<u64, Option<TaskRecord>>,
}

impl Reorder {
    fn new(keep_order: bool) -> Self {
        Reorder {
            keep_order,
            next: 1,
            held: BTreeMap::new(),
        }
    }

    /// The oldest seq not yet handed out, for the window. Unordered, nothing
    /// is held back: tasks in memory are only those in flight, bounded by the
    /// backend's slots.
    fn oldest(&self, next_seq: u64) -> u64 {
        if self.keep_order {
            self.next
        } else {
            next_seq
        }
    }

    fn push<F>(&mut self, record: TaskRecord, emit: &mut F) -> Result<(), MapError>
    where
        F: FnMut(TaskRecord) -> std::io::Result<()>,
    {
        if !self.keep_order {
            return emit(record).map_err(MapError::Output);
        }
        self.held.insert(record.seq, Some(record));
        self.release(emit)
    }

    /// An input skipped (`--resume`): nothing to hand out, but its turn
    /// passes.
    fn skip<F>(&mut self, seq: u64, emit: &mut F) -> Result<(), MapError>
    where
        F: FnMut(TaskRecord) -> std::io::Result<()>,
    {
        if !self.keep_order {
            return Ok(());
        }
        self.held.insert(seq, None);
        self.release(emit)
    }

    /// Hands out what is held from the next seq on, in order.
    fn release<F>(&mut self, emit: &mut F) -> Result<(), MapError>
    where
        F: FnMut(TaskRecord) -> std::io::Result<()>,
    {
        while let Some(record) = self.held.remove(&self.next) {
            self.next += 1;
            if let Some(record) = record {
                emit(record).map_err(MapError::Output)?;
            }
        }
        Ok(())
    }

    /// After a halt some seqs never finish: hand out the rest in order.
    fn flush<F>(&mut self, emit: &mut F) -> Result<(), MapError>
    where
        F: FnMut(TaskRecord) -> std::io::Result<()>,
    {
        for record in std::mem::take(&mut self.held).into_values().flatten() {
            emit(record).map_err(MapError::Output)?;
        }
        Ok(())
    }
}
