//! The hub's task store: a record of every job and of every request/result
//! pair of every task, so that status queries, resubmits and a restarted hub
//! can see what ran, where, and how it ended.
//!
//! Like IPython parallel's Hub, the zcluster hub writes one record per task
//! and updates it as the task moves `Pending → Running → Ok | Failed`. The
//! hub's single event-loop thread owns the store through a
//! `Box<dyn Store>` (see [`open`]); two implementations exist:
//!
//! - [`MemoryStore`]: plain maps, synchronous, gone when the hub exits. For
//!   tests and for runs where nobody needs the history.
//! - [`SqliteStore`] (the default): one SQLite file in WAL mode. Task events
//!   are only *queued* on the caller's thread; a writer thread applies them
//!   in batches, one transaction per batch, so the event loop never waits on
//!   the disk. [`Store::flush`] waits until everything queued before it is
//!   committed; every read flushes first, so reads always see every event
//!   recorded before them. Instead of waiting, the hub watches the store's
//!   [`CommitLog`] and lets out what a write covers once it is committed
//!   (`hub::commit`). The first write that fails stops the store for good
//!   ([`StoreError::CannotWrite`]).
//!
//! Ids (engines, jobs, tasks) come from counters kept in the store itself, so
//! an id is never handed out twice in the life of a store, even across hub
//! restarts and crashes. Ids start at 1: 0 is never an id, so the wire
//! format can use it for "none".

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::{Bound, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, ToSql};
use serde::{Deserialize, Serialize};

use super::commit::CommitLog;
use super::store_file::{self, CommitRecord, Contents, Found};

/// Names a job (one `zcluster map` run or one client submission), so clients
/// can ask about, resubmit or purge it later.
pub type JobId = u64;
/// Names one task (one input of a job) across the whole store, so results,
/// retries and resubmits refer to it without the job.
pub type TaskId = u64;
/// Names one engine registration; a re-registering engine gets a new id, so
/// "which engine ran this" is never ambiguous.
pub type EngineId = u64;

/// The first id every counter hands out; 0 is kept free to mean "none".
const FIRST_ID: u64 = 1;

/// Where a task is in its life; the hub schedules `Pending` tasks, watches
/// `Running` ones and reports the two completed states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for an engine (new, requeued after its engine died, or resubmitted).
    Pending,
    /// Sent to an engine, no result yet.
    Running,
    /// Completed with a result.
    Ok,
    /// Completed with an error (after the hub's retries, if any).
    Failed,
}

impl TaskState {
    /// Whether the task has completed (`Ok` or `Failed`): completed tasks
    /// keep their first result and are the only ones purges remove.
    pub fn is_completed(self) -> bool {
        matches!(self, TaskState::Ok | TaskState::Failed)
    }

    /// The lowercase name used in status output and stored in the SQLite
    /// `tasks.state` column, so the database reads well in the `sqlite3` shell.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Ok => "ok",
            TaskState::Failed => "failed",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(TaskState::Pending),
            "running" => Some(TaskState::Running),
            "ok" => Some(TaskState::Ok),
            "failed" => Some(TaskState::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for TaskState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for TaskState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        TaskState::from_name(name)
            .ok_or_else(|| FromSqlError::Other(format!("unknown task state {name:?}").into()))
    }
}

/// One job as submitted: what the hub needs to describe it in status output
/// and to run more of its tasks after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// From [`Store::next_job_id`].
    pub id: JobId,
    /// When the client submitted it.
    pub submitted: SystemTime,
    /// Who submitted it, for status output.
    pub client: String,
    /// The job's command template or handler name, encoded by the hub; opaque here.
    pub spec: Vec<u8>,
    /// The number of inputs, set when the client says all inputs are in.
    pub total: Option<u64>,
}

/// A task to record as `Pending`, as the hub receives an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// From [`Store::next_task_ids`].
    pub id: TaskId,
    /// The job it belongs to; the job must have been added.
    pub job: JobId,
    /// Its position among the job's inputs: results are returned in this order.
    pub seq: u64,
    /// The encoded request sent to engines.
    pub request: Vec<u8>,
    /// When the hub received it.
    pub submitted: SystemTime,
}

/// How a task ended, as reported by its engine (or decided by the hub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// [`TaskState::Ok`] or [`TaskState::Failed`]; anything else is refused.
    pub status: TaskState,
    /// The encoded result (may be empty for a failure).
    pub result: Vec<u8>,
    /// What went wrong, for a failure.
    pub error: Option<String>,
    /// When the result arrived.
    pub completed: SystemTime,
    /// The engine that produced the result.
    pub engine: EngineId,
    /// How many times the task was sent out, this run included.
    pub attempts: u32,
}

/// Everything the store knows about one task; `request` and `result` are
/// `None` when the caller asked for status only (and `result` is `None`
/// until the task completes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// The job it belongs to.
    pub job: JobId,
    /// Its position among the job's inputs.
    pub seq: u64,
    /// The encoded request, when payloads were asked for.
    pub request: Option<Vec<u8>>,
    /// When the hub received it.
    pub submitted: SystemTime,
    /// The engine running it, or the one that completed it.
    pub engine: Option<EngineId>,
    /// When it was last sent to an engine (cleared by a requeue or resubmit).
    pub started: Option<SystemTime>,
    /// When it completed.
    pub completed: Option<SystemTime>,
    /// Where it is in its life.
    pub state: TaskState,
    /// The encoded result, when payloads were asked for and it completed.
    pub result: Option<Vec<u8>>,
    /// What went wrong, for a failure.
    pub error: Option<String>,
    /// How many times it was sent out.
    pub attempts: u32,
}

/// One line of the hub's job status: the job and how many of its tasks are
/// in each state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job's id.
    pub id: JobId,
    /// When it was submitted.
    pub submitted: SystemTime,
    /// Who submitted it.
    pub client: String,
    /// The number of inputs, once the client said all inputs are in.
    pub total: Option<u64>,
    /// Tasks waiting for an engine.
    pub pending: u64,
    /// Tasks on an engine.
    pub running: u64,
    /// Tasks that completed with a result.
    pub ok: u64,
    /// Tasks that completed with an error.
    pub failed: u64,
}

/// How busy one engine is and has been, for the hub's engine status. Only
/// engines with at least one recorded task appear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCounts {
    /// The engine's id.
    pub engine: EngineId,
    /// Tasks it is running now.
    pub running: u64,
    /// Tasks it completed (still in the store, i.e. not purged).
    pub completed: u64,
}

/// Which tasks [`Store::tasks`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskFilter {
    /// Every task of one job.
    Job(JobId),
    /// The tasks of one job whose seq is in this range (the client's own
    /// task ids), read through the (job, seq) index, so that asking about a
    /// few tasks of a large job costs a few rows.
    Seqs {
        /// The job.
        job: JobId,
        /// Lowest and highest seq wanted.
        seqs: std::ops::RangeInclusive<u64>,
    },
    /// These tasks; ids not in the store are skipped, duplicates returned once.
    Ids(Vec<TaskId>),
    /// Up to `limit` tasks of one job in (seq, id) order, after the cursor
    /// `after` (a (seq, id) pair; `None`: from the start): keyset pages of a
    /// job of any size.
    Page {
        /// The job.
        job: JobId,
        /// The (seq, id) of the last task of the page before.
        after: Option<(u64, TaskId)>,
        /// Most tasks in the page.
        limit: usize,
    },
}

/// The tasks of one job that [`TaskFilter::Job`], [`TaskFilter::Seqs`] and
/// [`TaskFilter::Page`] ask for, in the one form both stores read: up to
/// `limit` tasks in (seq, id) order after (`from_seq`, `after_id`), with a
/// seq of at most `to_seq`.
struct TaskRange {
    from_seq: u64,
    /// Tasks at `from_seq` are taken only past this id (`None`: all of them).
    after_id: Option<TaskId>,
    to_seq: u64,
    limit: usize,
}

impl TaskRange {
    fn whole() -> Self {
        TaskRange {
            from_seq: 0,
            after_id: None,
            to_seq: u64::MAX,
            limit: usize::MAX,
        }
    }

    fn seqs(seqs: &std::ops::RangeInclusive<u64>) -> Self {
        TaskRange {
            from_seq: *seqs.start(),
            to_seq: *seqs.end(),
            ..Self::whole()
        }
    }

    fn page(after: Option<(u64, TaskId)>, limit: usize) -> Self {
        let (from_seq, after_id) = after.map_or((0, None), |(seq, id)| (seq, Some(id)));
        TaskRange {
            from_seq,
            after_id,
            limit,
            ..Self::whole()
        }
    }
}

/// What went wrong in the task store, and with what.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A job cannot be purged while it still has work in flight.
    #[error("job {job} still has {pending} pending or running task(s); it cannot be purged yet")]
    PendingTasks {
        /// The job.
        job: JobId,
        /// Its pending plus running tasks.
        pending: u64,
    },
    /// The job is not in the store (never added, or purged).
    #[error("no job {0} in the task store")]
    UnknownJob(JobId),
    /// A job id was added twice.
    #[error("job {0} is already in the task store")]
    DuplicateJob(JobId),
    /// A task id was added twice (reported synchronously by the memory store;
    /// the SQLite store stops at the constraint failure: [`StoreError::CannotWrite`]).
    #[error("task {0} is already in the task store")]
    DuplicateTask(TaskId),
    /// A resubmit named a task that the job does not have.
    #[error("job {job} has no task {task}")]
    UnknownTask {
        /// The job named.
        job: JobId,
        /// The task named.
        task: TaskId,
    },
    /// A resubmit named a task that has not completed.
    #[error("task {task} is {state}, not completed, so it cannot be resubmitted")]
    NotCompleted {
        /// The task.
        task: TaskId,
        /// Its state.
        state: TaskState,
    },
    /// `task_finished` was called with a status that is not a completion.
    #[error("task {task} cannot finish as {state}: a finished task is ok or failed")]
    InvalidFinish {
        /// The task.
        task: TaskId,
        /// The status given.
        state: TaskState,
    },
    /// SQLite integers are signed 64-bit: larger ids, sequence numbers or totals cannot be stored.
    #[error("{what} {value} is larger than the task store can hold (2^63 - 1)")]
    TooLarge {
        /// What the number is.
        what: &'static str,
        /// The number.
        value: u64,
    },
    /// Times are stored as signed nanoseconds since 1970, about ±292 years.
    #[error("{what} {time:?} is outside the task store's time range (years 1678 to 2262)")]
    TimeOutOfRange {
        /// What the time is.
        what: &'static str,
        /// The time.
        time: SystemTime,
    },
    /// An id counter reached 2^63 - 1.
    #[error("the task store's {counter} id counter is exhausted")]
    IdsExhausted {
        /// Which counter: "engine", "job" or "task".
        counter: &'static str,
    },
    /// The file was written by a newer zcluster whose schema this one does not know.
    #[error("task store {path}: schema version {found} is newer than this zcluster supports ({supported}); upgrade zcluster or use another store")]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The store's directory could not be created.
    #[error("cannot create directory {path} for the task store")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store spec is neither `:memory:` nor a usable path.
    #[error("task store {0:?} is neither \":memory:\" nor a file path")]
    InvalidSpec(String),
    /// The writer thread could not be started.
    #[error("cannot start the task store's writer thread")]
    SpawnWriter(#[source] std::io::Error),
    /// SQLite failed; `operation` says what the store was doing.
    #[error("task store: SQLite failed {operation}")]
    Sqlite {
        /// What the store was doing, e.g. "recording the start of task 17".
        operation: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A queued write failed on the writer thread (a full disk, an I/O
    /// error, a constraint a bug broke): its batch is rolled back and the
    /// store stops there for good, since later writes would land on top of
    /// the lost ones. Every write, flush, purge and resubmit returns it from
    /// then on; reads go on showing what was committed. The hub stops its
    /// jobs on it (see [`CommitLog`]): restarting it once the cause is
    /// fixed carries them on from the last commit.
    #[error("task store cannot write: {}", RootCause(.0))]
    CannotWrite(#[source] Arc<StoreError>),
    /// The store's path holds something that is not a zcluster store (an
    /// empty file, another application's database, ...): refused rather
    /// than taken as a new store or written into.
    #[error("task store {path}: found {found}; that is not a zcluster task store, so it is left as it is (move it away, or use another store path)")]
    NotAStore {
        /// The store's path.
        path: PathBuf,
        /// What is there.
        found: String,
    },
    /// The store holds fewer commits than its side file says were made:
    /// its `-wal` file was lost, or an older copy put back. Results
    /// delivered since may be gone and their tasks would run again.
    #[error("task store {path} is behind what was committed: it holds {found} commits, but {record} says {recorded} were made (was its -wal file deleted, or an older copy put back?). Results delivered since may be gone from it, and their tasks would run again; accept the rollback (zcluster hub --accept-rollback) to carry on from what it holds")]
    RolledBack {
        /// The store's path.
        path: PathBuf,
        /// Its side file.
        record: PathBuf,
        /// Commits the store holds.
        found: u64,
        /// Commits the side file records.
        recorded: u64,
    },
    /// The side file that detects a rolled-back store is damaged, so a
    /// rollback cannot be ruled out.
    #[error("task store commit record {path} is damaged (it holds \"{found}\"), so a rolled-back store cannot be ruled out; accept the rollback (zcluster hub --accept-rollback) to carry on from what the store holds")]
    BadRecord {
        /// The side file.
        path: PathBuf,
        /// The start of what it holds.
        found: String,
    },
    /// A file of the store could not be created, read or written.
    #[error("cannot {operation} {path}")]
    File {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread is gone (it panicked, or a test crashed it): nothing more can be recorded.
    #[error("the task store's writer thread has stopped; nothing more can be recorded")]
    WriterGone,
}

/// The task store: what the hub records about jobs and tasks and asks back.
///
/// Object safe, so the hub holds a `Box<dyn Store>` chosen by [`open`].
/// Writes of task events are cheap (the SQLite store only queues them);
/// [`Store::flush`] makes them durable. Events about tasks that are not in
/// the store, and transitions a task's state does not allow (starting or
/// requeueing a completed task, finishing it twice), are ignored and logged:
/// late or duplicate engine messages are normal in a cluster.
pub trait Store: Send {
    /// A new engine id. Engine ids are never reused in the life of a store,
    /// even across hub restarts, so "which engine ran this" stays unambiguous.
    fn next_engine_id(&mut self) -> Result<EngineId, StoreError>;
    /// A new job id, never reused in the life of the store.
    fn next_job_id(&mut self) -> Result<JobId, StoreError>;
    /// `n` consecutive new task ids, never reused, so a batch of inputs gets
    /// ids with one call.
    fn next_task_ids(&mut self, n: u64) -> Result<Range<TaskId>, StoreError>;
    /// Records a new job, before any of its tasks.
    fn add_job(&mut self, job: &JobRecord) -> Result<(), StoreError>;
    /// Records the number of inputs once the client says all are in.
    fn set_job_total(&mut self, job: JobId, total: u64) -> Result<(), StoreError>;
    /// Records tasks as `Pending`. Their jobs must be in the store.
    fn add_tasks(&mut self, tasks: Vec<NewTask>) -> Result<(), StoreError>;
    /// Records that a `Pending` (or `Running`) task was sent to `engine`:
    /// it becomes `Running`.
    fn task_started(
        &mut self,
        task: TaskId,
        engine: EngineId,
        started: SystemTime,
        attempts: u32,
    ) -> Result<(), StoreError>;
    /// Puts a `Running` task back to `Pending`, clearing its engine and start
    /// time, because its engine died.
    fn task_requeued(&mut self, task: TaskId) -> Result<(), StoreError>;
    /// Records a task's result. A second finish of the same task is ignored:
    /// the first result wins.
    fn task_finished(&mut self, task: TaskId, finished: Finished) -> Result<(), StoreError>;
    /// Makes everything recorded before this call durable (committed) when it
    /// returns: the hub calls it before acknowledging to a client.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Writes queued so far: the [`CommitLog`] position at which the last
    /// of them is committed. The hub holds what a write covers until then
    /// (see [`super::commit`]), instead of waiting with [`flush`](Self::flush).
    fn written(&self) -> u64;
    /// The store's commit position and sticky write failure, shared with
    /// the hub's loop.
    fn commits(&self) -> Arc<CommitLog>;
    /// One job as submitted, or `None` if it is not in the store.
    fn job(&mut self, job: JobId) -> Result<Option<JobRecord>, StoreError>;
    /// Every job with its task counts, by id, for status output.
    fn jobs(&mut self) -> Result<Vec<JobSummary>, StoreError>;
    /// The tasks the filter selects, ordered by (job, seq); with or without
    /// their request and result payloads (status output needs none).
    fn tasks(
        &mut self,
        filter: &TaskFilter,
        with_payloads: bool,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Running and completed task counts per engine, by engine id.
    fn engine_counts(&mut self) -> Result<Vec<EngineCounts>, StoreError>;
    /// The `Pending` and `Running` tasks of every job, with payloads,
    /// ordered by (job, seq), so a restarted hub can carry on (it treats the
    /// `Running` ones as `Pending`).
    fn unfinished(&mut self) -> Result<Vec<TaskRecord>, StoreError>;
    /// Removes a job and its tasks and returns how many tasks went; refuses
    /// ([`StoreError::PendingTasks`]) while any task is `Pending` or
    /// `Running`, so no result can arrive for a purged task.
    fn purge_job(&mut self, job: JobId) -> Result<u64, StoreError>;
    /// Removes the completed tasks run by this engine and returns how many,
    /// to drop the history of a misbehaving or retired engine.
    fn purge_engine(&mut self, engine: EngineId) -> Result<u64, StoreError>;
    /// Removes every completed task and returns how many; also removes jobs
    /// left with no tasks whose total is set (a job without a total may still
    /// receive inputs, so it stays).
    fn purge_completed(&mut self) -> Result<u64, StoreError>;
    /// Resubmit: sets the `Failed` tasks of `job` (or exactly `ids`, which
    /// must be tasks of `job` and completed, checked in order before anything
    /// changes) back to `Pending`, clearing engine, times, result and error,
    /// and returns them with payloads, ordered by seq.
    fn reset_for_resubmit(
        &mut self,
        job: JobId,
        ids: Option<&[TaskId]>,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Where it lives (a path, or ":memory:") for status output.
    fn location(&self) -> String;
}

/// Opens the store named by `spec`: `":memory:"` gives a [`MemoryStore`],
/// anything else is the path of a [`SqliteStore`] (its directory is created
/// if missing). This is how the hub turns its configuration into a store.
pub fn open(spec: &str) -> Result<Box<dyn Store>, StoreError> {
    open_with(spec, &StoreOptions::default())
}

/// Like [`open`], with options for the SQLite store.
pub fn open_with(spec: &str, options: &StoreOptions) -> Result<Box<dyn Store>, StoreError> {
    if spec == MemoryStore::LOCATION {
        Ok(Box::new(MemoryStore::new()))
    } else {
        Ok(Box::new(SqliteStore::open_with(spec, options)?))
    }
}

/// How to open a SQLite store, beyond its path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// Open a store that holds fewer commits than its side file records
    /// (its `-wal` file was lost, or an older copy put back), carrying on
    /// from what it holds, instead of refusing it: for a user who knows why.
    pub accept_rollback: bool,
}

// ---------------------------------------------------------------------------
// Memory store

/// A store in plain maps: fast and synchronous, but gone when the hub exits.
/// For tests and for hubs whose history nobody needs.
#[derive(Debug)]
pub struct MemoryStore {
    /// Commits at once: its position stays 0 and it never fails.
    log: Arc<CommitLog>,
    next_engine: u64,
    next_job: u64,
    next_task: u64,
    jobs: BTreeMap<JobId, MemoryJob>,
    tasks: HashMap<TaskId, TaskRecord>,
}

#[derive(Debug)]
struct MemoryJob {
    record: JobRecord,
    /// (seq, id) of its tasks, for (job, seq) order.
    tasks: BTreeSet<(u64, TaskId)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// The tasks of `job` in `range`, in (seq, id) order.
    fn job_range(&self, job: JobId, range: &TaskRange, with_payloads: bool) -> Vec<TaskRecord> {
        let Some(job) = self.jobs.get(&job) else {
            return Vec::new();
        };
        let to = (range.to_seq, TaskId::MAX);
        let (from, start) = match range.after_id {
            Some(id) => (Bound::Excluded((range.from_seq, id)), (range.from_seq, id)),
            None => {
                let start = (range.from_seq, TaskId::MIN);
                (Bound::Included(start), start)
            }
        };
        // (A start past the end would make BTreeSet::range panic.)
        if start > to {
            return Vec::new();
        }
        job.tasks
            .range((from, Bound::Included(to)))
            .take(range.limit)
            .filter_map(|(_, id)| self.tasks.get(id))
            .map(|t| view(t, with_payloads))
            .collect()
    }

    /// What [`Store::location`] says, and the [`open`] spec that selects this store.
    pub const LOCATION: &'static str = ":memory:";

    /// An empty store whose counters start at 1.
    pub fn new() -> Self {
        MemoryStore {
            log: Arc::new(CommitLog::immediate()),
            next_engine: FIRST_ID,
            next_job: FIRST_ID,
            next_task: FIRST_ID,
            jobs: BTreeMap::new(),
            tasks: HashMap::new(),
        }
    }

    fn take_ids(counter: &mut u64, n: u64, name: &'static str) -> Result<Range<u64>, StoreError> {
        let start = *counter;
        *counter = start
            .checked_add(n)
            .ok_or(StoreError::IdsExhausted { counter: name })?;
        Ok(start..*counter)
    }

    fn sorted_views<'a>(
        &self,
        tasks: impl Iterator<Item = &'a TaskRecord>,
        with_payloads: bool,
    ) -> Vec<TaskRecord> {
        let mut out: Vec<TaskRecord> = tasks.map(|t| view(t, with_payloads)).collect();
        out.sort_by_key(|t| (t.job, t.seq, t.id));
        out
    }
}

/// A copy of `task`, without payloads unless asked.
fn view(task: &TaskRecord, with_payloads: bool) -> TaskRecord {
    TaskRecord {
        id: task.id,
        job: task.job,
        seq: task.seq,
        request: if with_payloads {
            task.request.clone()
        } else {
            None
        },
        submitted: task.submitted,
        engine: task.engine,
        started: task.started,
        completed: task.completed,
        state: task.state,
        result: if with_payloads {
            task.result.clone()
        } else {
            None
        },
        error: task.error.clone(),
        attempts: task.attempts,
    }
}

fn ignored(event: &str, task: TaskId, state: Option<TaskState>) {
    match state {
        None => tracing::warn!(task, event, "task store: event for an unknown task ignored"),
        Some(state) => tracing::debug!(
            task,
            event,
            %state,
            "task store: event ignored in this task state"
        ),
    }
}

impl Store for MemoryStore {
    fn next_engine_id(&mut self) -> Result<EngineId, StoreError> {
        Ok(Self::take_ids(&mut self.next_engine, 1, "engine")?.start)
    }

    fn next_job_id(&mut self) -> Result<JobId, StoreError> {
        Ok(Self::take_ids(&mut self.next_job, 1, "job")?.start)
    }

    fn next_task_ids(&mut self, n: u64) -> Result<Range<TaskId>, StoreError> {
        Self::take_ids(&mut self.next_task, n, "task")
    }

    fn add_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        if self.jobs.contains_key(&job.id) {
            return Err(StoreError::DuplicateJob(job.id));
        }
        self.jobs.insert(
            job.id,
            MemoryJob {
                record: job.clone(),
                tasks: BTreeSet::new(),
            },
        );
        Ok(())
    }

    fn set_job_total(&mut self, job: JobId, total: u64) -> Result<(), StoreError> {
        let entry = self.jobs.get_mut(&job).ok_or(StoreError::UnknownJob(job))?;
        entry.record.total = Some(total);
        Ok(())
    }

    fn add_tasks(&mut self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        let mut fresh = HashSet::with_capacity(tasks.len());
        for task in &tasks {
            if !self.jobs.contains_key(&task.job) {
                return Err(StoreError::UnknownJob(task.job));
            }
            if self.tasks.contains_key(&task.id) || !fresh.insert(task.id) {
                return Err(StoreError::DuplicateTask(task.id));
            }
        }
        for task in tasks {
            if let Some(job) = self.jobs.get_mut(&task.job) {
                job.tasks.insert((task.seq, task.id));
            }
            self.tasks.insert(
                task.id,
                TaskRecord {
                    id: task.id,
                    job: task.job,
                    seq: task.seq,
                    request: Some(task.request),
                    submitted: task.submitted,
                    engine: None,
                    started: None,
                    completed: None,
                    state: TaskState::Pending,
                    result: None,
                    error: None,
                    attempts: 0,
                },
            );
        }
        Ok(())
    }

    fn task_started(
        &mut self,
        task: TaskId,
        engine: EngineId,
        started: SystemTime,
        attempts: u32,
    ) -> Result<(), StoreError> {
        match self.tasks.get_mut(&task) {
            Some(t) if !t.state.is_completed() => {
                t.state = TaskState::Running;
                t.engine = Some(engine);
                t.started = Some(started);
                t.attempts = attempts;
            }
            other => ignored("start", task, other.map(|t| t.state)),
        }
        Ok(())
    }

    fn task_requeued(&mut self, task: TaskId) -> Result<(), StoreError> {
        match self.tasks.get_mut(&task) {
            Some(t) if t.state == TaskState::Running => {
                t.state = TaskState::Pending;
                t.engine = None;
                t.started = None;
            }
            other => ignored("requeue", task, other.map(|t| t.state)),
        }
        Ok(())
    }

    fn task_finished(&mut self, task: TaskId, finished: Finished) -> Result<(), StoreError> {
        if !finished.status.is_completed() {
            return Err(StoreError::InvalidFinish {
                task,
                state: finished.status,
            });
        }
        match self.tasks.get_mut(&task) {
            Some(t) if !t.state.is_completed() => {
                t.state = finished.status;
                t.result = Some(finished.result);
                t.error = finished.error;
                t.completed = Some(finished.completed);
                t.engine = Some(finished.engine);
                t.attempts = finished.attempts;
            }
            other => ignored("finish", task, other.map(|t| t.state)),
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn written(&self) -> u64 {
        0
    }

    fn commits(&self) -> Arc<CommitLog> {
        Arc::clone(&self.log)
    }

    fn job(&mut self, job: JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.jobs.get(&job).map(|j| j.record.clone()))
    }

    fn jobs(&mut self) -> Result<Vec<JobSummary>, StoreError> {
        Ok(self
            .jobs
            .values()
            .map(|job| {
                let mut summary = JobSummary {
                    id: job.record.id,
                    submitted: job.record.submitted,
                    client: job.record.client.clone(),
                    total: job.record.total,
                    pending: 0,
                    running: 0,
                    ok: 0,
                    failed: 0,
                };
                for (_, id) in &job.tasks {
                    match self.tasks.get(id).map(|t| t.state) {
                        Some(TaskState::Pending) => summary.pending += 1,
                        Some(TaskState::Running) => summary.running += 1,
                        Some(TaskState::Ok) => summary.ok += 1,
                        Some(TaskState::Failed) => summary.failed += 1,
                        None => {}
                    }
                }
                summary
            })
            .collect())
    }

    fn tasks(
        &mut self,
        filter: &TaskFilter,
        with_payloads: bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(match filter {
            TaskFilter::Job(job) => self.job_range(*job, &TaskRange::whole(), with_payloads),
            TaskFilter::Seqs { job, seqs } => {
                self.job_range(*job, &TaskRange::seqs(seqs), with_payloads)
            }
            TaskFilter::Page { job, after, limit } => {
                self.job_range(*job, &TaskRange::page(*after, *limit), with_payloads)
            }
            TaskFilter::Ids(ids) => {
                let ids: BTreeSet<TaskId> = ids.iter().copied().collect();
                self.sorted_views(
                    ids.iter().filter_map(|id| self.tasks.get(id)),
                    with_payloads,
                )
            }
        })
    }

    fn engine_counts(&mut self) -> Result<Vec<EngineCounts>, StoreError> {
        let mut counts: BTreeMap<EngineId, EngineCounts> = BTreeMap::new();
        for task in self.tasks.values() {
            if let Some(engine) = task.engine {
                let entry = counts.entry(engine).or_insert(EngineCounts {
                    engine,
                    running: 0,
                    completed: 0,
                });
                if task.state == TaskState::Running {
                    entry.running += 1;
                } else if task.state.is_completed() {
                    entry.completed += 1;
                }
            }
        }
        Ok(counts.into_values().collect())
    }

    fn unfinished(&mut self) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self.sorted_views(
            self.tasks.values().filter(|t| !t.state.is_completed()),
            true,
        ))
    }

    fn purge_job(&mut self, job: JobId) -> Result<u64, StoreError> {
        let entry = self.jobs.get(&job).ok_or(StoreError::UnknownJob(job))?;
        let pending = entry
            .tasks
            .iter()
            .filter(|(_, id)| self.tasks.get(id).is_some_and(|t| !t.state.is_completed()))
            .count() as u64;
        if pending > 0 {
            return Err(StoreError::PendingTasks { job, pending });
        }
        let removed = self.jobs.remove(&job).map(|j| j.tasks).unwrap_or_default();
        for (_, id) in &removed {
            self.tasks.remove(id);
        }
        Ok(removed.len() as u64)
    }

    fn purge_engine(&mut self, engine: EngineId) -> Result<u64, StoreError> {
        let doomed: Vec<(JobId, u64, TaskId)> = self
            .tasks
            .values()
            .filter(|t| t.engine == Some(engine) && t.state.is_completed())
            .map(|t| (t.job, t.seq, t.id))
            .collect();
        for (job, seq, id) in &doomed {
            self.tasks.remove(id);
            if let Some(job) = self.jobs.get_mut(job) {
                job.tasks.remove(&(*seq, *id));
            }
        }
        Ok(doomed.len() as u64)
    }

    fn purge_completed(&mut self) -> Result<u64, StoreError> {
        let before = self.tasks.len();
        self.tasks.retain(|_, t| !t.state.is_completed());
        let tasks = &self.tasks;
        self.jobs.retain(|_, job| {
            job.tasks.retain(|(_, id)| tasks.contains_key(id));
            !job.tasks.is_empty() || job.record.total.is_none()
        });
        Ok((before - self.tasks.len()) as u64)
    }

    fn reset_for_resubmit(
        &mut self,
        job: JobId,
        ids: Option<&[TaskId]>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let entry = self.jobs.get(&job).ok_or(StoreError::UnknownJob(job))?;
        let targets: Vec<TaskId> = match ids {
            None => entry
                .tasks
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| {
                    self.tasks
                        .get(id)
                        .is_some_and(|t| t.state == TaskState::Failed)
                })
                .collect(),
            Some(ids) => {
                let mut seen = HashSet::new();
                let mut targets = Vec::new();
                for &task in ids {
                    if !seen.insert(task) {
                        continue;
                    }
                    match self.tasks.get(&task) {
                        Some(t) if t.job == job => {
                            if !t.state.is_completed() {
                                return Err(StoreError::NotCompleted {
                                    task,
                                    state: t.state,
                                });
                            }
                        }
                        _ => return Err(StoreError::UnknownTask { job, task }),
                    }
                    targets.push(task);
                }
                targets
            }
        };
        let mut out = Vec::with_capacity(targets.len());
        for id in targets {
            if let Some(t) = self.tasks.get_mut(&id) {
                t.state = TaskState::Pending;
                t.engine = None;
                t.started = None;
                t.completed = None;
                t.result = None;
                t.error = None;
                out.push(t.clone());
            }
        }
        out.sort_by_key(|t| (t.seq, t.id));
        Ok(out)
    }

    fn location(&self) -> String {
        Self::LOCATION.to_string()
    }
}

// ---------------------------------------------------------------------------
// SQLite store

/// Page cache of the writer connection, KiB. Writes append (new rows,
/// updates of recent ones), so a small cache serves them; it is also the
/// part of the hub's memory that grows with the store until it is full, so
/// small keeps the hub's memory flat early.
const WRITER_CACHE_KIB: i64 = 8 * 1024;

/// `PRAGMA user_version` of the schema below; a file with a larger one was
/// written by a newer zcluster and is refused. Version 2 added the `meta`
/// table and the application id.
const SCHEMA_VERSION: i64 = 2;

/// Times are INTEGER nanoseconds since 1970 (negative before); ids and
/// counts are INTEGER; payloads are BLOBs. `counters.value` is the first id
/// not yet reserved.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value) VALUES ('engine', 1), ('job', 1), ('task', 1);
CREATE TABLE IF NOT EXISTS jobs (
    id        INTEGER PRIMARY KEY,
    submitted INTEGER NOT NULL,
    client    TEXT NOT NULL,
    spec      BLOB NOT NULL,
    total     INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS tasks (
    id        INTEGER PRIMARY KEY,
    job       INTEGER NOT NULL REFERENCES jobs (id),
    seq       INTEGER NOT NULL,
    request   BLOB NOT NULL,
    submitted INTEGER NOT NULL,
    state     TEXT NOT NULL CHECK (state IN ('pending', 'running', 'ok', 'failed')),
    engine    INTEGER,
    started   INTEGER,
    completed INTEGER,
    result    BLOB,
    error     TEXT,
    attempts  INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS tasks_job_seq ON tasks (job, seq);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state);
";

/// Version 2: `meta` holds the store's random id (`store`) and its count of
/// committed batches (`commits`), which its side file repeats, so a store
/// that lost commits is caught (see `hub::store_file`).
const META_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('commits', 0);
";

/// WAL pages after a commit past which the WAL is copied into the database
/// file (a checkpoint): SQLite's own default, but done on a thread of its
/// own. SQLite would do it inside the commit that crosses it, with two
/// fsyncs, and the hub waits for commits before it lets tasks and results
/// out (`hub::commit`): one round trip in a hundred would take the fsyncs'
/// time.
const CHECKPOINT_PAGES: std::os::raw::c_int = 1000;
/// ...and past which the writer checkpoints in line after all, should the
/// checkpoint thread fall behind (writes that never pause leave it no
/// moment to finish): the WAL stays bounded.
const INLINE_CHECKPOINT_PAGES: std::os::raw::c_int = 16 * CHECKPOINT_PAGES;

/// Queued operations before `add_tasks` and friends block (back-pressure
/// instead of unbounded memory if the disk cannot keep up).
const QUEUE_CAPACITY: usize = 16 * 1024;
/// Rows written per transaction at most, so a flush never waits behind an
/// unbounded batch.
const MAX_BATCH_ROWS: usize = 4096;
/// Ids reserved per trip to the database (the next block is asked for when
/// half of one is used). Unused ones are skipped on reopen.
const ENGINE_BLOCK: u64 = 16;
const JOB_BLOCK: u64 = 64;
const TASK_BLOCK: u64 = 1 << 16;
/// How long a connection waits for another one's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest value an SQLite INTEGER holds.
const MAX_SQL_INT: u64 = i64::MAX as u64;
/// Ids per `WHERE id IN (...)` query.
const IDS_PER_QUERY: usize = 500;
/// Cached prepared statements per connection.
const STATEMENT_CACHE: usize = 64;

macro_rules! task_columns {
    (payloads) => {
        "id, job, seq, request, submitted, engine, started, completed, state, result, error, attempts"
    };
    (status) => {
        "id, job, seq, NULL, submitted, engine, started, completed, state, NULL, error, attempts"
    };
}

/// A store in one SQLite file (WAL mode, `synchronous=NORMAL`), kept across
/// hub restarts, so the hub's history and unfinished work survive it.
///
/// - Writes (`add_job`, `set_job_total`, `add_tasks`, `task_*`) are checked
///   and converted on the caller's thread, then only queued (a bounded
///   channel: when the disk cannot keep up, the caller waits rather than
///   memory growing). A writer thread owns the write connection and commits
///   whatever is queued, up to a few thousand rows, in one transaction with
///   cached prepared statements.
/// - [`Store::flush`] queues a barrier and waits for it: everything before it
///   is committed. Reads flush, then read on a second connection (WAL lets
///   it read while the writer writes). Purges and resubmits flush, then run
///   on the writer thread in their own transaction, ordered with the writes.
/// - Each committed batch moves the store's [`CommitLog`] on by the number
///   of writes it held, and wakes the hub, which lets out what waited for
///   them (see [`super::commit`]). A write that fails rolls its batch back
///   and stops the store for good ([`StoreError::CannotWrite`]).
/// - Each batch also counts itself in the `meta` table and, once
///   committed, in the side file `PATH-commits`, so a store that lost
///   commits (its `-wal` deleted) is caught at the next open (see
///   `hub::store_file`).
/// - Ids come from blocks reserved and committed in the `counters` table
///   before any id of the block is handed out, so no id is reused after a
///   crash; the next block is reserved in the background when half of the
///   current one is used.
/// - Dropping the store commits everything queued and stops the writer.
///
/// One hub writes a store file at a time (it keeps the set of job ids in
/// memory to refuse tasks for unknown jobs at once); another `SqliteStore`
/// on the same file can read it, and id reservations stay disjoint. Numbers
/// must fit SQLite's signed 64-bit integers ([`StoreError::TooLarge`]) and
/// times must lie within about ±292 years of 1970
/// ([`StoreError::TimeOutOfRange`]); both are checked when the call is made.
pub struct SqliteStore {
    path: PathBuf,
    ops: Sender<Op>,
    writer: Option<JoinHandle<()>>,
    /// Checkpoints the WAL when the writer's hook asks; ends with the writer.
    checkpointer: Option<JoinHandle<()>>,
    /// Commit position and sticky failure, shared with the writer and the hub.
    log: Arc<CommitLog>,
    /// Writes queued since the store was opened: the position of the last.
    written: u64,
    read: Connection,
    /// Jobs in the store, so that writes naming an unknown job fail at once
    /// instead of on the writer thread.
    jobs: HashSet<JobId>,
    /// Whether a write was queued since the last flush.
    dirty: bool,
    engine_ids: Counter,
    job_ids: Counter,
    task_ids: Counter,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

/// A write, its values already converted (and range-checked) on the caller's thread.
enum Write {
    AddJob {
        id: i64,
        submitted: i64,
        client: String,
        spec: Vec<u8>,
        total: Option<i64>,
    },
    SetTotal {
        job: i64,
        total: i64,
    },
    AddTasks(Vec<SqlTask>),
    Started {
        task: i64,
        engine: i64,
        started: i64,
        attempts: u32,
    },
    Requeued {
        task: i64,
    },
    Finished {
        task: i64,
        state: TaskState,
        result: Vec<u8>,
        error: Option<String>,
        completed: i64,
        engine: i64,
        attempts: u32,
    },
}

struct SqlTask {
    id: i64,
    job: i64,
    seq: i64,
    request: Vec<u8>,
    submitted: i64,
}

impl Write {
    fn rows(&self) -> usize {
        match self {
            Write::AddTasks(tasks) => tasks.len(),
            _ => 1,
        }
    }

    /// The task a start, requeue or finish is about.
    fn task(&self) -> Option<i64> {
        match self {
            Write::Started { task, .. }
            | Write::Requeued { task }
            | Write::Finished { task, .. } => Some(*task),
            _ => None,
        }
    }
}

/// Runs on the writer thread after everything queued before it is committed,
/// in its own transaction if it writes; it sends its own reply.
type Call = Box<dyn FnOnce(&mut Connection) + Send>;

enum Op {
    Write(Write),
    Call(Call),
    Shutdown,
    /// Stops the writer at once, rolling back its open batch: a crash.
    #[cfg(test)]
    Crash,
}

/// The failures of the writes of one batch: any one of them fails the
/// batch, which is rolled back as a whole.
#[derive(Default)]
struct BatchErrors {
    first: std::cell::RefCell<Option<StoreError>>,
    more: std::cell::Cell<u64>,
}

impl BatchErrors {
    fn report(&self, error: StoreError) {
        let mut first = self.first.borrow_mut();
        if first.is_none() {
            *first = Some(error);
        } else {
            self.more.set(self.more.get() + 1);
        }
    }

    fn any(&self) -> bool {
        self.first.borrow().is_some()
    }

    /// The first failure, and how many more there were.
    fn take(self) -> Option<(StoreError, u64)> {
        self.first
            .into_inner()
            .map(|first| (first, self.more.get()))
    }
}

/// Displays what an error comes down to: SQLite's own words (say
/// "database or disk is full"), or else the innermost source (the OS's).
/// What a user needs to act on.
struct RootCause<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for RootCause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut error = self.0;
        loop {
            // Below rusqlite's error is only SQLite's bare code.
            if error.is::<rusqlite::Error>() {
                break;
            }
            match error.source() {
                Some(source) => error = source,
                None => break,
            }
        }
        write!(f, "{error}")
    }
}

/// Displays an error with its sources, for logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// Hands out ids from blocks reserved (committed) in the `counters` table,
/// asking for the next block when half of the current one is used, so the
/// hot path rarely waits for the writer.
struct Counter {
    name: &'static str,
    block: u64,
    next: u64,
    end: u64,
    ahead: Option<Receiver<Result<Range<u64>, StoreError>>>,
}

impl Counter {
    fn new(name: &'static str, block: u64, floor: u64) -> Self {
        Counter {
            name,
            block,
            next: floor,
            end: floor,
            ahead: None,
        }
    }

    fn take(
        &mut self,
        n: u64,
        ops: &Sender<Op>,
        log: &Arc<CommitLog>,
    ) -> Result<Range<u64>, StoreError> {
        if self.end - self.next < n {
            let ahead = match self.ahead.take() {
                Some(reply) => Some(await_reply(&reply)?),
                None => None,
            };
            let block = match ahead {
                Some(block) if block.end - block.start >= n => block,
                other => {
                    let floor = other.map_or(self.end, |b| b.end.max(self.end));
                    await_reply(&self.request(ops, log, floor, n.max(self.block))?)?
                }
            };
            self.next = block.start;
            self.end = block.end;
        }
        let start = self.next;
        self.next += n;
        if self.ahead.is_none() && self.end - self.next < self.block / 2 {
            self.ahead = Some(self.request(ops, log, self.end, self.block)?);
        }
        Ok(start..self.next)
    }

    /// Asks the writer for a block; one it cannot commit stops the store
    /// (a full disk shows here first when only ids are asked for).
    fn request(
        &self,
        ops: &Sender<Op>,
        log: &Arc<CommitLog>,
        floor: u64,
        n: u64,
    ) -> Result<Receiver<Result<Range<u64>, StoreError>>, StoreError> {
        let name = self.name;
        let stop = Arc::clone(log);
        call_async(ops, log, move |conn| {
            reserve_ids(conn, name, floor, n).map_err(|error| match error {
                StoreError::Sqlite { .. } => StoreError::CannotWrite(stop.fail(error)),
                other => other,
            })
        })
    }
}

/// Queues `f` to run on the writer thread after everything queued before
/// it; on a store stopped at a failed write it answers with the failure
/// instead of running.
fn call_async<T: Send + 'static>(
    ops: &Sender<Op>,
    log: &Arc<CommitLog>,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<Receiver<Result<T, StoreError>>, StoreError> {
    let (reply, replies) = crossbeam_channel::bounded(1);
    let log = Arc::clone(log);
    let call: Call = Box::new(move |conn| {
        let answer = match log.failure() {
            Some(failure) => Err(StoreError::CannotWrite(Arc::clone(failure))),
            None => f(conn),
        };
        // The caller may have gone (dropped store): nobody to tell.
        let _ = reply.send(answer);
    });
    ops.send(Op::Call(call))
        .map_err(|_| StoreError::WriterGone)?;
    Ok(replies)
}

fn await_reply<T>(replies: &Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    replies.recv().map_err(|_| StoreError::WriterGone)?
}

fn sqlite_error(operation: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let operation = operation.into();
    move |source| StoreError::Sqlite { operation, source }
}

fn sql_int(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::TooLarge { what, value })
}

fn time_to_sql(what: &'static str, time: SystemTime) -> Result<i64, StoreError> {
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).ok(),
        Err(before) => i64::try_from(before.duration().as_nanos()).ok().map(|n| -n),
    };
    nanos.ok_or(StoreError::TimeOutOfRange { what, time })
}

fn time_from_sql(nanos: i64) -> Option<SystemTime> {
    let offset = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
}

fn column_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

fn column_opt_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    match row.get::<_, Option<i64>>(idx)? {
        None => Ok(None),
        Some(value) => u64::try_from(value)
            .map(Some)
            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value)),
    }
}

fn column_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<SystemTime> {
    let nanos: i64 = row.get(idx)?;
    time_from_sql(nanos).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Integer,
            format!("time {nanos} ns from 1970 is out of range").into(),
        )
    })
}

fn column_opt_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<SystemTime>> {
    match row.get::<_, Option<i64>>(idx)? {
        None => Ok(None),
        Some(_) => column_time(row, idx).map(Some),
    }
}

/// Reads a row selected with `task_columns!`.
fn task_row(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    Ok(TaskRecord {
        id: column_u64(row, 0)?,
        job: column_u64(row, 1)?,
        seq: column_u64(row, 2)?,
        request: row.get(3)?,
        submitted: column_time(row, 4)?,
        engine: column_opt_u64(row, 5)?,
        started: column_opt_time(row, 6)?,
        completed: column_opt_time(row, 7)?,
        state: row.get(8)?,
        result: row.get(9)?,
        error: row.get(10)?,
        attempts: row.get(11)?,
    })
}

fn job_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: column_u64(row, 0)?,
        submitted: column_time(row, 1)?,
        client: row.get(2)?,
        spec: row.get(3)?,
        total: column_opt_u64(row, 4)?,
    })
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let at = || path.display().to_string();
    let conn = Connection::open(path).map_err(sqlite_error(format!("opening {}", at())))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite_error(format!(
            "setting the busy timeout on {}",
            at()
        )))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite_error(format!(
            "setting synchronous=NORMAL on {}",
            at()
        )))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Refuses a file written by a newer zcluster; returns the file's version.
fn check_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite_error(format!(
            "reading the schema version of {}",
            path.display()
        )))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Creates the schema in a fresh file, or checks an existing file's version
/// (again, inside the transaction, in case another process just created it).
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let operation = format!("creating the schema in {}", path.display());
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation.clone()))?;
    let found = check_version(&tx, path)?;
    if found < 1 {
        tx.execute_batch(SCHEMA)
            .map_err(sqlite_error(operation.clone()))?;
    }
    if found < 2 {
        tx.execute_batch(META_SCHEMA)
            .map_err(sqlite_error(operation.clone()))?;
        // Positive and within an SQLite integer.
        let id = (crate::auth::random_u64() >> 1).max(1);
        tx.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('store', ?1)",
            [sql_int("store id", id)?],
        )
        .map_err(sqlite_error(operation.clone()))?;
        tx.pragma_update(None, "application_id", store_file::APPLICATION_ID)
            .map_err(sqlite_error(operation.clone()))?;
    }
    if found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite_error(operation.clone()))?;
    }
    tx.commit().map_err(sqlite_error(operation))
}

/// The first id a counter may hand out: its stored value, and (for jobs and
/// tasks) past the largest id in the table, should the counter ever lag.
fn counter_floor(conn: &Connection, name: &str, table: Option<&str>) -> Result<u64, StoreError> {
    let operation = || format!("reading the {name} id counter");
    let stored: Option<i64> = conn
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sqlite_error(operation()))?;
    let mut floor = stored.map_or(FIRST_ID, |v| u64::try_from(v).unwrap_or(FIRST_ID));
    if let Some(table) = table {
        let max: Option<i64> = conn
            .query_row(&format!("SELECT MAX(id) FROM {table}"), [], |r| r.get(0))
            .map_err(sqlite_error(operation()))?;
        if let Some(max) = max.and_then(|m| u64::try_from(m).ok()) {
            floor = floor.max(max.saturating_add(1));
        }
    }
    Ok(floor.max(FIRST_ID))
}

/// Reserves `n` ids of counter `name` at or above `floor` and commits the
/// reservation before returning them, so they are never handed out again.
fn reserve_ids(
    conn: &mut Connection,
    name: &'static str,
    floor: u64,
    n: u64,
) -> Result<Range<u64>, StoreError> {
    let operation = || format!("reserving {n} {name} ids");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation()))?;
    let stored: Option<u64> = tx
        .prepare_cached("SELECT value FROM counters WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| column_u64(r, 0)).optional())
        .map_err(sqlite_error(operation()))?;
    let start = stored.unwrap_or(FIRST_ID).max(floor);
    let end = start
        .checked_add(n)
        .filter(|end| *end <= MAX_SQL_INT)
        .ok_or(StoreError::IdsExhausted { counter: name })?;
    let end_sql = sql_int("id counter", end)?;
    tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![name, end_sql]))
    .map_err(sqlite_error(operation()))?;
    tx.commit().map_err(sqlite_error(operation()))?;
    Ok(start..end)
}

/// The writer thread: applies queued writes, one transaction per batch;
/// after each commit, saves the store's commit count in the side file and
/// moves the commit log on. The first batch that fails is rolled back and
/// stops the store: later writes are dropped (they would build on the lost
/// ones), and calls answer with the failure.
fn run_writer(
    mut conn: Connection,
    ops: Receiver<Op>,
    log: Arc<CommitLog>,
    mut record: CommitRecord,
) {
    while let Ok(first) = ops.recv() {
        let first = match first {
            Op::Write(write) => write,
            Op::Call(call) => {
                call(&mut conn);
                continue;
            }
            Op::Shutdown => break,
            #[cfg(test)]
            Op::Crash => return,
        };
        let errors = BatchErrors::default();
        let begun = match log.failure() {
            Some(_) => false,
            None => match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => true,
                Err(source) => {
                    errors.report(StoreError::Sqlite {
                        operation: "beginning a batch of queued writes".into(),
                        source,
                    });
                    false
                }
            },
        };
        let mut writes: u64 = 1;
        let mut rows = first.rows();
        let mut fold = Fold::default();
        if begun {
            fold.apply(&conn, first, &errors);
        }
        let mut call = None;
        let mut stop = false;
        while rows < MAX_BATCH_ROWS {
            match ops.try_recv() {
                Ok(Op::Write(write)) => {
                    writes += 1;
                    rows += write.rows();
                    if begun {
                        fold.apply(&conn, write, &errors);
                    }
                }
                Ok(Op::Call(c)) => {
                    call = Some(c);
                    break;
                }
                Ok(Op::Shutdown) | Err(TryRecvError::Disconnected) => {
                    stop = true;
                    break;
                }
                #[cfg(test)]
                Ok(Op::Crash) => return,
                Err(TryRecvError::Empty) => break,
            }
        }
        if begun {
            fold.flush(&conn, &errors);
            commit_batch(&conn, &mut record, &log, writes, rows, errors);
        } else {
            stop_store(&log, writes, errors);
        }
        if let Some(call) = call {
            call(&mut conn);
        }
        if stop {
            break;
        }
    }
}

/// The checkpoint thread: copies the WAL into the database file each time
/// the writer's hook asks (the WAL passed [`CHECKPOINT_PAGES`]), without
/// waiting for readers or the writer (a passive checkpoint), so commits
/// never wait for its fsyncs. Ends when the writer's connection, which
/// holds the hook and so the other end of `wants`, is closed.
fn run_checkpointer(conn: Connection, wants: Receiver<()>) {
    while wants.recv().is_ok() {
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(%error, "task store: a checkpoint failed; the next one copies what it did not");
        }
    }
}

/// Ends the writer's open batch of `writes` queued writes: commits it if
/// every write went in (counting the commit in the store and in its side
/// file, then moving the log on), or rolls it back and stops the store.
fn commit_batch(
    conn: &Connection,
    record: &mut CommitRecord,
    log: &CommitLog,
    writes: u64,
    rows: usize,
    errors: BatchErrors,
) {
    let next = record.next();
    if !errors.any() {
        let counted = sql_int("commit count", next).and_then(|next| {
            conn.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'commits'")
                .and_then(|mut s| s.execute([next]))
                .map_err(sqlite_error("counting a commit"))
        });
        if let Err(error) = counted {
            errors.report(error);
        }
    }
    if !errors.any() {
        match conn.execute_batch("COMMIT") {
            Ok(()) => match record.save(next) {
                Ok(()) => return log.advance(writes),
                // Committed, but a later rollback of it could not be told:
                // nothing it covers goes out.
                Err(error) => errors.report(error),
            },
            Err(source) => errors.report(StoreError::Sqlite {
                operation: format!("committing a batch of {rows} queued row writes"),
                source,
            }),
        }
    }
    if !conn.is_autocommit() {
        if let Err(error) = conn.execute_batch("ROLLBACK") {
            tracing::error!(%error, "task store: rolling back a failed batch");
        }
    }
    stop_store(log, writes, errors);
}

/// Stops the store at the first of `errors` (if any: a batch after the
/// store stopped brings none, and is just dropped).
fn stop_store(log: &CommitLog, writes: u64, errors: BatchErrors) {
    if let Some((first, more)) = errors.take() {
        tracing::error!(
            error = %ErrorChain(&first),
            more_failed_writes = more,
            lost_writes = writes,
            "task store: a batch of writes failed and was rolled back; the store records nothing more"
        );
        log.fail(first);
    }
}

/// A task whose writes in the writer's current batch are held and folded:
/// one inserted in this batch, or one whose start came in this batch, with
/// the events that followed.
struct Folded {
    /// The task.
    id: i64,
    /// The insert, for a task new in this batch; `None` for a task already
    /// in the table, whose first held event is its start.
    insert: Option<SqlTask>,
    events: Vec<Write>,
}

/// The columns a task's held events leave, applied in order from a
/// pending task. A held start applies under the same condition as its SQL
/// (`state IN ('pending', 'running')`), so after it the state is known and
/// every later event is decided here as SQL would decide it.
struct FinalRow<'a> {
    state: TaskState,
    engine: Option<i64>,
    started: Option<i64>,
    completed: Option<i64>,
    result: Option<&'a [u8]>,
    error: Option<&'a str>,
    attempts: u32,
}

impl Folded {
    fn final_row(&self) -> FinalRow<'_> {
        let id = self.id.unsigned_abs();
        let mut row = FinalRow {
            state: TaskState::Pending,
            engine: None,
            started: None,
            completed: None,
            result: None,
            error: None,
            attempts: 0,
        };
        for event in &self.events {
            match event {
                Write::Started {
                    engine,
                    started,
                    attempts,
                    ..
                } if !row.state.is_completed() => {
                    row.state = TaskState::Running;
                    row.engine = Some(*engine);
                    row.started = Some(*started);
                    row.attempts = *attempts;
                }
                Write::Requeued { .. } if row.state == TaskState::Running => {
                    row.state = TaskState::Pending;
                    row.engine = None;
                    row.started = None;
                }
                Write::Finished {
                    state,
                    result,
                    error,
                    completed,
                    engine,
                    attempts,
                    ..
                } if !row.state.is_completed() => {
                    row.state = *state;
                    row.result = Some(result);
                    row.error = error.as_deref();
                    row.completed = Some(*completed);
                    row.engine = Some(*engine);
                    row.attempts = *attempts;
                }
                Write::Started { .. } => ignored("start", id, Some(row.state)),
                Write::Requeued { .. } => ignored("requeue", id, Some(row.state)),
                Write::Finished { .. } => ignored("finish", id, Some(row.state)),
                _ => {}
            }
        }
        row
    }
}

/// The writes of one batch (one transaction), folded per task.
///
/// At a busy hub a task is usually inserted, started and finished within a
/// batch or two: three statements, each rewriting the row and its indexes.
/// Nothing reads inside the writer's transaction, so what matters is only
/// the state a task's writes leave at commit. A task inserted in this batch
/// is held and written once, as one INSERT of that state; a task already in
/// the table whose start comes in this batch is held from its start and
/// written as one UPDATE (guarded, as the start is, by `state IN
/// ('pending', 'running')`: a task a purge or another finish has completed
/// meanwhile is left alone, as unfolded). Other writes go to SQL in order,
/// as before; they cannot touch the held tasks. Should a folded INSERT fail
/// (its id taken: a bug elsewhere), its events are applied one by one after
/// all, as they would have been unfolded.
#[derive(Default)]
struct Fold {
    held: HashMap<i64, Folded>,
    /// Order in which tasks were first held.
    order: Vec<i64>,
    /// Payload bytes held; past [`FOLD_BYTES`] the held tasks are written
    /// out at once (still in the batch's transaction).
    bytes: usize,
}

/// Most payload bytes the writer holds back for folding.
const FOLD_BYTES: usize = 64 << 20;

impl Fold {
    fn apply(&mut self, conn: &Connection, write: Write, errors: &BatchErrors) {
        if let Write::AddTasks(tasks) = write {
            for task in tasks {
                // The same id twice in one batch (a bug elsewhere): what
                // came before goes in first, as it would have unfolded.
                if self.held.contains_key(&task.id) {
                    self.flush(conn, errors);
                }
                self.bytes += task.request.len();
                self.hold(Folded {
                    id: task.id,
                    insert: Some(task),
                    events: Vec::new(),
                });
            }
            return self.flush_if_full(conn, errors);
        }
        let Some(id) = write.task() else {
            return apply(conn, write, errors);
        };
        if let Some(held) = self.held.get_mut(&id) {
            if let Write::Finished { result, error, .. } = &write {
                self.bytes += result.len() + error.as_ref().map_or(0, String::len);
            }
            held.events.push(write);
            self.flush_if_full(conn, errors);
        } else if matches!(write, Write::Started { .. }) {
            self.hold(Folded {
                id,
                insert: None,
                events: vec![write],
            });
        } else {
            apply(conn, write, errors);
        }
    }

    fn hold(&mut self, folded: Folded) {
        self.order.push(folded.id);
        self.held.insert(folded.id, folded);
    }

    fn flush_if_full(&mut self, conn: &Connection, errors: &BatchErrors) {
        if self.bytes > FOLD_BYTES {
            self.flush(conn, errors);
        }
    }

    /// Writes the held tasks, in the order they were first held.
    fn flush(&mut self, conn: &Connection, errors: &BatchErrors) {
        self.bytes = 0;
        for id in std::mem::take(&mut self.order) {
            if let Some(folded) = self.held.remove(&id) {
                write_folded(conn, folded, errors);
            }
        }
    }
}

/// Writes one folded task: an INSERT of its final row, or an UPDATE of an
/// existing row to it.
fn write_folded(conn: &Connection, folded: Folded, errors: &BatchErrors) {
    let id = folded.id;
    let row = folded.final_row();
    let written = match &folded.insert {
        Some(task) => conn
            .prepare_cached(
                "INSERT INTO tasks (id, job, seq, request, submitted, state, engine, started,
                                    completed, result, error, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    task.id,
                    task.job,
                    task.seq,
                    task.request,
                    task.submitted,
                    row.state,
                    row.engine,
                    row.started,
                    row.completed,
                    row.result,
                    row.error,
                    row.attempts
                ])
            }),
        None => conn
            .prepare_cached(
                "UPDATE tasks SET state = ?2, engine = ?3, started = ?4, completed = ?5,
                                  result = ?6, error = ?7, attempts = ?8
                 WHERE id = ?1 AND state IN ('pending', 'running')",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    row.state,
                    row.engine,
                    row.started,
                    row.completed,
                    row.result,
                    row.error,
                    row.attempts
                ])
            }),
    };
    match (written, folded.insert) {
        (Ok(0), None) => note_ignored(conn, "start", id),
        (Ok(_), _) => {}
        (Err(source), Some(task)) => {
            errors.report(StoreError::Sqlite {
                operation: format!(
                    "recording task {} (job {}, seq {})",
                    task.id, task.job, task.seq
                ),
                source,
            });
            for event in folded.events {
                apply(conn, event, errors);
            }
        }
        (Err(source), None) => errors.report(StoreError::Sqlite {
            operation: format!("recording the start of task {}", id),
            source,
        }),
    }
}

/// Applies one write in the writer's open transaction; failures go to `errors`.
fn apply(conn: &Connection, write: Write, errors: &BatchErrors) {
    let fail = |operation: String, source| errors.report(StoreError::Sqlite { operation, source });
    match write {
        Write::AddJob {
            id,
            submitted,
            client,
            spec,
            total,
        } => {
            if let Err(e) = conn
                .prepare_cached(
                    "INSERT INTO jobs (id, submitted, client, spec, total) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![id, submitted, client, spec, total]))
            {
                fail(format!("recording job {id}"), e);
            }
        }
        Write::SetTotal { job, total } => {
            if let Err(e) = conn
                .prepare_cached("UPDATE jobs SET total = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![job, total]))
            {
                fail(format!("recording the total of job {job}"), e);
            }
        }
        Write::AddTasks(tasks) => {
            let mut insert = match conn.prepare_cached(
                "INSERT INTO tasks (id, job, seq, request, submitted, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
            ) {
                Ok(insert) => insert,
                Err(e) => return fail(format!("recording {} tasks", tasks.len()), e),
            };
            for task in tasks {
                if let Err(e) = insert.execute(params![
                    task.id,
                    task.job,
                    task.seq,
                    task.request,
                    task.submitted
                ]) {
                    fail(
                        format!(
                            "recording task {} (job {}, seq {})",
                            task.id, task.job, task.seq
                        ),
                        e,
                    );
                }
            }
        }
        Write::Started {
            task,
            engine,
            started,
            attempts,
        } => match conn
            .prepare_cached(
                "UPDATE tasks SET state = 'running', engine = ?2, started = ?3, attempts = ?4
                 WHERE id = ?1 AND state IN ('pending', 'running')",
            )
            .and_then(|mut s| s.execute(params![task, engine, started, attempts]))
        {
            Ok(0) => note_ignored(conn, "start", task),
            Ok(_) => {}
            Err(e) => fail(format!("recording the start of task {task}"), e),
        },
        Write::Requeued { task } => match conn
            .prepare_cached(
                "UPDATE tasks SET state = 'pending', engine = NULL, started = NULL
                 WHERE id = ?1 AND state = 'running'",
            )
            .and_then(|mut s| s.execute([task]))
        {
            Ok(0) => note_ignored(conn, "requeue", task),
            Ok(_) => {}
            Err(e) => fail(format!("recording the requeue of task {task}"), e),
        },
        Write::Finished {
            task,
            state,
            result,
            error,
            completed,
            engine,
            attempts,
        } => match conn
            .prepare_cached(
                "UPDATE tasks SET state = ?2, result = ?3, error = ?4, completed = ?5,
                                  engine = ?6, attempts = ?7
                 WHERE id = ?1 AND state IN ('pending', 'running')",
            )
            .and_then(|mut s| {
                s.execute(params![
                    task, state, result, error, completed, engine, attempts
                ])
            }) {
            Ok(0) => note_ignored(conn, "finish", task),
            Ok(_) => {}
            Err(e) => fail(format!("recording the result of task {task}"), e),
        },
    }
}

/// Logs an event that changed nothing, saying whether the task is unknown.
fn note_ignored(conn: &Connection, event: &str, task: i64) {
    let state = conn
        .prepare_cached("SELECT state FROM tasks WHERE id = ?1")
        .and_then(|mut s| s.query_row([task], |r| r.get::<_, TaskState>(0)).optional());
    match state {
        Ok(state) => ignored(event, task.unsigned_abs(), state),
        Err(error) => tracing::warn!(task, event, %error, "task store: event ignored"),
    }
}

impl SqliteStore {
    /// The tasks of `job` in `range`, in (seq, id) order, read through the
    /// (job, seq) index between the range's two seqs.
    fn job_range(
        &mut self,
        job: JobId,
        range: &TaskRange,
        with_payloads: bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let Ok(id) = i64::try_from(job) else {
            return Ok(Vec::new());
        };
        // Stored as SQLite's signed integers; past i64::MAX there are none.
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let after_id = range.after_id.map_or(-1, clamp);
        let limit = i64::try_from(range.limit).unwrap_or(i64::MAX);
        let sql = if with_payloads {
            concat!(
                "SELECT ",
                task_columns!(payloads),
                " FROM tasks WHERE job = ?1 AND seq BETWEEN ?2 AND ?4",
                " AND (seq > ?2 OR id > ?3) ORDER BY seq, id LIMIT ?5"
            )
        } else {
            concat!(
                "SELECT ",
                task_columns!(status),
                " FROM tasks WHERE job = ?1 AND seq BETWEEN ?2 AND ?4",
                " AND (seq > ?2 OR id > ?3) ORDER BY seq, id LIMIT ?5"
            )
        };
        let params = params![
            id,
            clamp(range.from_seq),
            after_id,
            clamp(range.to_seq),
            limit
        ];
        self.read(
            || format!("reading the tasks of job {job}"),
            |conn| {
                conn.prepare_cached(sql)?
                    .query_map(params, task_row)?
                    .collect()
            },
        )
    }

    /// Opens (creating if absent, with its directory) the store at `path`,
    /// refusing a file whose schema is newer than this build's, and starts
    /// its writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreOptions::default())
    }

    /// Like [`open`](Self::open), with options. A path that holds anything
    /// but a zcluster store is refused ([`StoreError::NotAStore`]), as is a
    /// store that holds fewer commits than its side file records
    /// ([`StoreError::RolledBack`]) unless `options.accept_rollback`. A new
    /// store's file is created 0600 and its missing directories 0700.
    pub fn open_with(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if path.as_os_str().is_empty() {
            return Err(StoreError::InvalidSpec(String::new()));
        }
        let found = store_file::prepare(&path)?;
        let recorded = match store_file::read_record(&path) {
            Ok(recorded) => recorded,
            Err(error) if options.accept_rollback => {
                tracing::warn!(error = %ErrorChain(&error), "task store: carrying on without the damaged commit record, as asked");
                None
            }
            Err(error) => return Err(error),
        };
        let rolled_back = |found, recorded| StoreError::RolledBack {
            path: path.clone(),
            record: store_file::record_path(&path),
            found,
            recorded,
        };
        let mut write = open_connection(&path)?;
        if found == Found::Existing {
            match (store_file::recognise(&write, &path)?, recorded) {
                (Contents::Store, _) => {}
                (Contents::Blank, Some(record)) if !options.accept_rollback => {
                    return Err(rolled_back(0, record.commits));
                }
                (Contents::Blank, Some(record)) => tracing::warn!(
                    error = %rolled_back(0, record.commits),
                    "task store: starting it again empty, as asked"
                ),
                (Contents::Blank, None) => {
                    return Err(StoreError::NotAStore {
                        path,
                        found: "an empty SQLite database (no tables)".into(),
                    })
                }
            }
        }
        check_version(&write, &path)?;
        let mode: String = write
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sqlite_error(format!(
                "switching {} to WAL mode",
                path.display()
            )))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), %mode, "task store: WAL mode unavailable; reads may wait for writes");
        }
        write
            .pragma_update(None, "foreign_keys", true)
            .map_err(sqlite_error("enabling foreign keys"))?;
        write
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(sqlite_error("setting the page cache size"))?;
        migrate(&mut write, &path)?;
        let (store_id, commits) = store_file::stored_position(&write, &path)?;
        match recorded {
            Some(record) if found == Found::New => tracing::warn!(
                path = %path.display(),
                recorded_commits = record.commits,
                "task store: the store file was missing, so a new, empty one is made; \
                 its commit record says an earlier store there made commits, whose jobs are gone"
            ),
            Some(record) if record.store != store_id => tracing::warn!(
                path = %path.display(),
                "task store: its commit record belongs to another store; starting a new record"
            ),
            Some(record) if record.commits > commits => {
                let error = rolled_back(commits, record.commits);
                if !options.accept_rollback {
                    return Err(error);
                }
                tracing::warn!(error = %error, "task store: carrying on from what it holds, as asked");
            }
            None if found == Found::Existing => tracing::info!(
                path = %path.display(),
                "task store: no commit record yet (a store from an older zcluster); starting one"
            ),
            _ => {}
        }
        let record = CommitRecord::open(&path, store_id, commits)?;

        let read = open_connection(&path)?;
        read.pragma_update(None, "query_only", true)
            .map_err(sqlite_error("making the read connection read-only"))?;
        let jobs = read
            .prepare("SELECT id FROM jobs")
            .and_then(|mut s| {
                s.query_map([], |r| column_u64(r, 0))?
                    .collect::<rusqlite::Result<HashSet<JobId>>>()
            })
            .map_err(sqlite_error(format!(
                "listing the jobs in {}",
                path.display()
            )))?;
        let engine_ids = Counter::new(
            "engine",
            ENGINE_BLOCK,
            counter_floor(&read, "engine", None)?,
        );
        let job_ids = Counter::new("job", JOB_BLOCK, counter_floor(&read, "job", Some("jobs"))?);
        let task_ids = Counter::new(
            "task",
            TASK_BLOCK,
            counter_floor(&read, "task", Some("tasks"))?,
        );

        let checkpointer = {
            let (wanted, wants) = crossbeam_channel::bounded(1);
            write
                .wal_hook(Some(
                    move |wal: &mut rusqlite::hooks::Wal, pages: std::os::raw::c_int| {
                        // Whatever a checkpoint meets (one already running,
                        // a full disk) says nothing of the commit that
                        // called this hook: never fail it.
                        if pages >= INLINE_CHECKPOINT_PAGES {
                            let _ = wal.checkpoint();
                        } else if pages >= CHECKPOINT_PAGES {
                            let _ = wanted.try_send(());
                        }
                        Ok(())
                    },
                ))
                .map_err(sqlite_error("installing the checkpoint hook"))?;
            let conn = open_connection(&path)?;
            std::thread::Builder::new()
                .name("zcluster-store-checkpoint".into())
                .spawn(move || run_checkpointer(conn, wants))
                .map_err(StoreError::SpawnWriter)?
        };
        let (ops, queue) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let log = Arc::new(CommitLog::with_wake().map_err(StoreError::SpawnWriter)?);
        let writer = {
            let log = Arc::clone(&log);
            std::thread::Builder::new()
                .name("zcluster-store-writer".into())
                .spawn(move || run_writer(write, queue, log, record))
                .map_err(StoreError::SpawnWriter)?
        };
        Ok(SqliteStore {
            path,
            ops,
            writer: Some(writer),
            checkpointer: Some(checkpointer),
            log,
            written: 0,
            read,
            jobs,
            dirty: false,
            engine_ids,
            job_ids,
            task_ids,
        })
    }

    /// The failure that stopped the store, as the error every write and
    /// flush returns from then on.
    fn stopped(&self) -> Result<(), StoreError> {
        match self.log.failure() {
            Some(failure) => Err(StoreError::CannotWrite(Arc::clone(failure))),
            None => Ok(()),
        }
    }

    /// Queues a write, unless the store has stopped at a failed one.
    fn write(&mut self, write: Write) -> Result<(), StoreError> {
        self.stopped()?;
        self.ops
            .send(Op::Write(write))
            .map_err(|_| StoreError::WriterGone)?;
        self.dirty = true;
        self.written += 1;
        Ok(())
    }

    /// Flushes, then runs `f` on the writer thread (ordered after every
    /// queued write) and waits for its answer.
    fn call<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.flush()?;
        await_reply(&call_async(&self.ops, &self.log, f)?)
    }

    /// Flushes, then reads on the read connection. A store stopped at a
    /// failed write still reads: what was committed.
    fn read<T>(
        &mut self,
        operation: impl FnOnce() -> String,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        match self.flush() {
            Ok(()) | Err(StoreError::CannotWrite(_)) => {}
            Err(error) => return Err(error),
        }
        f(&self.read).map_err(|source| StoreError::Sqlite {
            operation: operation(),
            source,
        })
    }

    /// Simulates a crash: the writer stops at once, losing its open batch
    /// and everything queued, and the store is abandoned without a flush.
    #[cfg(test)]
    fn crash(mut self) {
        let _ = self.ops.send(Op::Crash);
        for thread in [self.writer.take(), self.checkpointer.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
        std::mem::forget(self);
    }
}

impl Drop for SqliteStore {
    /// Commits everything queued and stops the writer: a clean shutdown loses nothing.
    fn drop(&mut self) {
        if let Err(error) = self.flush() {
            tracing::error!(error = %ErrorChain(&error), path = %self.path.display(), "task store: closing");
        }
        let _ = self.ops.send(Op::Shutdown);
        // The checkpoint thread ends with the writer's connection, which
        // holds the other end of its channel.
        for thread in [self.writer.take(), self.checkpointer.take()]
            .into_iter()
            .flatten()
        {
            if thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "task store: a thread of the store panicked");
            }
        }
    }
}

fn task_query(columns: &str, ids: usize) -> String {
    let mut sql = format!("SELECT {columns} FROM tasks WHERE id IN (?");
    for _ in 1..ids {
        sql.push_str(", ?");
    }
    sql.push(')');
    sql
}

/// Writer-side body of [`Store::purge_job`].
fn purge_job_in(conn: &mut Connection, job: JobId) -> Result<u64, StoreError> {
    let operation = || format!("purging job {job}");
    let id = sql_int("job id", job)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation()))?;
    let pending: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM tasks WHERE job = ?1 AND state IN ('pending', 'running')",
            [id],
            |r| r.get(0),
        )
        .map_err(sqlite_error(operation()))?;
    if pending > 0 {
        return Err(StoreError::PendingTasks {
            job,
            pending: pending.unsigned_abs(),
        });
    }
    let removed = tx
        .execute("DELETE FROM tasks WHERE job = ?1", [id])
        .map_err(sqlite_error(operation()))?;
    let jobs = tx
        .execute("DELETE FROM jobs WHERE id = ?1", [id])
        .map_err(sqlite_error(operation()))?;
    if jobs == 0 {
        return Err(StoreError::UnknownJob(job));
    }
    tx.commit().map_err(sqlite_error(operation()))?;
    Ok(removed as u64)
}

/// Writer-side body of [`Store::purge_completed`]: tasks removed, and the jobs removed.
fn purge_completed_in(conn: &mut Connection) -> Result<(u64, Vec<JobId>), StoreError> {
    let operation = || "purging completed tasks".to_string();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation()))?;
    let removed = tx
        .execute("DELETE FROM tasks WHERE state IN ('ok', 'failed')", [])
        .map_err(sqlite_error(operation()))?;
    let jobs = tx
        .prepare(
            "DELETE FROM jobs WHERE total IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.job = jobs.id) RETURNING id",
        )
        .and_then(|mut s| {
            s.query_map([], |r| column_u64(r, 0))?
                .collect::<rusqlite::Result<Vec<JobId>>>()
        })
        .map_err(sqlite_error(operation()))?;
    tx.commit().map_err(sqlite_error(operation()))?;
    Ok((removed as u64, jobs))
}

/// Writer-side body of [`Store::reset_for_resubmit`].
fn reset_in(
    conn: &mut Connection,
    job: JobId,
    ids: Option<Vec<TaskId>>,
) -> Result<Vec<TaskRecord>, StoreError> {
    let operation = || format!("resetting tasks of job {job} for resubmission");
    let job_sql = sql_int("job id", job)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation()))?;
    let exists = tx
        .query_row("SELECT 1 FROM jobs WHERE id = ?1", [job_sql], |_| Ok(()))
        .optional()
        .map_err(sqlite_error(operation()))?;
    if exists.is_none() {
        return Err(StoreError::UnknownJob(job));
    }
    let targets: Vec<i64> = match ids {
        None => tx
            .prepare("SELECT id FROM tasks WHERE job = ?1 AND state = 'failed' ORDER BY seq, id")
            .and_then(|mut s| {
                s.query_map([job_sql], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<i64>>>()
            })
            .map_err(sqlite_error(operation()))?,
        Some(ids) => {
            let mut seen = HashSet::new();
            let mut targets = Vec::new();
            let mut lookup = tx
                .prepare("SELECT job, state FROM tasks WHERE id = ?1")
                .map_err(sqlite_error(operation()))?;
            for task in ids {
                if !seen.insert(task) {
                    continue;
                }
                let unknown = StoreError::UnknownTask { job, task };
                let Ok(id) = i64::try_from(task) else {
                    return Err(unknown);
                };
                let found = lookup
                    .query_row([id], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, TaskState>(1)?))
                    })
                    .optional()
                    .map_err(sqlite_error(operation()))?;
                match found {
                    Some((owner, state)) if owner == job_sql => {
                        if !state.is_completed() {
                            return Err(StoreError::NotCompleted { task, state });
                        }
                    }
                    _ => return Err(unknown),
                }
                targets.push(id);
            }
            targets
        }
    };
    let mut out = Vec::with_capacity(targets.len());
    {
        let mut reset = tx
            .prepare(
                "UPDATE tasks SET state = 'pending', engine = NULL, started = NULL,
                                  completed = NULL, result = NULL, error = NULL
                 WHERE id = ?1",
            )
            .map_err(sqlite_error(operation()))?;
        let mut read = tx
            .prepare(concat!(
                "SELECT ",
                task_columns!(payloads),
                " FROM tasks WHERE id = ?1"
            ))
            .map_err(sqlite_error(operation()))?;
        for id in targets {
            reset.execute([id]).map_err(sqlite_error(operation()))?;
            out.push(
                read.query_row([id], task_row)
                    .map_err(sqlite_error(operation()))?,
            );
        }
    }
    tx.commit().map_err(sqlite_error(operation()))?;
    out.sort_by_key(|t| (t.seq, t.id));
    Ok(out)
}

impl Store for SqliteStore {
    fn next_engine_id(&mut self) -> Result<EngineId, StoreError> {
        Ok(self.engine_ids.take(1, &self.ops, &self.log)?.start)
    }

    fn next_job_id(&mut self) -> Result<JobId, StoreError> {
        Ok(self.job_ids.take(1, &self.ops, &self.log)?.start)
    }

    fn next_task_ids(&mut self, n: u64) -> Result<Range<TaskId>, StoreError> {
        self.task_ids.take(n, &self.ops, &self.log)
    }

    fn add_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        if self.jobs.contains(&job.id) {
            return Err(StoreError::DuplicateJob(job.id));
        }
        let write = Write::AddJob {
            id: sql_int("job id", job.id)?,
            submitted: time_to_sql("job submission time", job.submitted)?,
            client: job.client.clone(),
            spec: job.spec.clone(),
            total: job.total.map(|t| sql_int("job total", t)).transpose()?,
        };
        self.write(write)?;
        self.jobs.insert(job.id);
        Ok(())
    }

    fn set_job_total(&mut self, job: JobId, total: u64) -> Result<(), StoreError> {
        if !self.jobs.contains(&job) {
            return Err(StoreError::UnknownJob(job));
        }
        let write = Write::SetTotal {
            job: sql_int("job id", job)?,
            total: sql_int("job total", total)?,
        };
        self.write(write)
    }

    fn add_tasks(&mut self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(tasks.len());
        let mut checked = None;
        for task in tasks {
            if checked != Some(task.job) {
                if !self.jobs.contains(&task.job) {
                    return Err(StoreError::UnknownJob(task.job));
                }
                checked = Some(task.job);
            }
            rows.push(SqlTask {
                id: sql_int("task id", task.id)?,
                job: sql_int("job id", task.job)?,
                seq: sql_int("task seq", task.seq)?,
                submitted: time_to_sql("task submission time", task.submitted)?,
                request: task.request,
            });
        }
        self.write(Write::AddTasks(rows))
    }

    fn task_started(
        &mut self,
        task: TaskId,
        engine: EngineId,
        started: SystemTime,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let write = Write::Started {
            task: sql_int("task id", task)?,
            engine: sql_int("engine id", engine)?,
            started: time_to_sql("task start time", started)?,
            attempts,
        };
        self.write(write)
    }

    fn task_requeued(&mut self, task: TaskId) -> Result<(), StoreError> {
        let task = sql_int("task id", task)?;
        self.write(Write::Requeued { task })
    }

    fn task_finished(&mut self, task: TaskId, finished: Finished) -> Result<(), StoreError> {
        if !finished.status.is_completed() {
            return Err(StoreError::InvalidFinish {
                task,
                state: finished.status,
            });
        }
        let write = Write::Finished {
            task: sql_int("task id", task)?,
            state: finished.status,
            result: finished.result,
            error: finished.error,
            completed: time_to_sql("task completion time", finished.completed)?,
            engine: sql_int("engine id", finished.engine)?,
            attempts: finished.attempts,
        };
        self.write(write)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            await_reply(&call_async(&self.ops, &self.log, |_| Ok(()))?)?;
            self.dirty = false;
        }
        self.stopped()
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn commits(&self) -> Arc<CommitLog> {
        Arc::clone(&self.log)
    }

    fn job(&mut self, job: JobId) -> Result<Option<JobRecord>, StoreError> {
        let Ok(id) = i64::try_from(job) else {
            return Ok(None);
        };
        self.read(
            || format!("reading job {job}"),
            |conn| {
                conn.prepare_cached(
                    "SELECT id, submitted, client, spec, total FROM jobs WHERE id = ?1",
                )?
                .query_row([id], job_row)
                .optional()
            },
        )
    }

    fn jobs(&mut self) -> Result<Vec<JobSummary>, StoreError> {
        self.read(
            || "listing jobs".to_string(),
            |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT j.id, j.submitted, j.client, j.total,
                            COUNT(CASE WHEN t.state = 'pending' THEN 1 END),
                            COUNT(CASE WHEN t.state = 'running' THEN 1 END),
                            COUNT(CASE WHEN t.state = 'ok' THEN 1 END),
                            COUNT(CASE WHEN t.state = 'failed' THEN 1 END)
                     FROM jobs j LEFT JOIN tasks t ON t.job = j.id
                     GROUP BY j.id ORDER BY j.id",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(JobSummary {
                        id: column_u64(r, 0)?,
                        submitted: column_time(r, 1)?,
                        client: r.get(2)?,
                        total: column_opt_u64(r, 3)?,
                        pending: column_u64(r, 4)?,
                        running: column_u64(r, 5)?,
                        ok: column_u64(r, 6)?,
                        failed: column_u64(r, 7)?,
                    })
                })?;
                rows.collect()
            },
        )
    }

    fn tasks(
        &mut self,
        filter: &TaskFilter,
        with_payloads: bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        match filter {
            TaskFilter::Job(job) => self.job_range(*job, &TaskRange::whole(), with_payloads),
            TaskFilter::Seqs { job, seqs } => {
                self.job_range(*job, &TaskRange::seqs(seqs), with_payloads)
            }
            TaskFilter::Page { job, after, limit } => {
                self.job_range(*job, &TaskRange::page(*after, *limit), with_payloads)
            }
            TaskFilter::Ids(ids) => {
                let ids: Vec<i64> = ids
                    .iter()
                    .copied()
                    .collect::<BTreeSet<TaskId>>()
                    .into_iter()
                    .filter_map(|id| i64::try_from(id).ok())
                    .collect();
                let columns = if with_payloads {
                    task_columns!(payloads)
                } else {
                    task_columns!(status)
                };
                let mut out = self.read(
                    || format!("reading {} tasks", ids.len()),
                    |conn| {
                        let mut out = Vec::with_capacity(ids.len());
                        for chunk in ids.chunks(IDS_PER_QUERY) {
                            let mut stmt =
                                conn.prepare_cached(&task_query(columns, chunk.len()))?;
                            for task in stmt.query_map(params_from_iter(chunk), task_row)? {
                                out.push(task?);
                            }
                        }
                        Ok(out)
                    },
                )?;
                out.sort_by_key(|t| (t.job, t.seq, t.id));
                Ok(out)
            }
        }
    }

    fn engine_counts(&mut self) -> Result<Vec<EngineCounts>, StoreError> {
        self.read(
            || "counting tasks per engine".to_string(),
            |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT engine,
                            COUNT(CASE WHEN state = 'running' THEN 1 END),
                            COUNT(CASE WHEN state IN ('ok', 'failed') THEN 1 END)
                     FROM tasks WHERE engine IS NOT NULL
                     GROUP BY engine ORDER BY engine",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(EngineCounts {
                        engine: column_u64(r, 0)?,
                        running: column_u64(r, 1)?,
                        completed: column_u64(r, 2)?,
                    })
                })?;
                rows.collect()
            },
        )
    }

    fn unfinished(&mut self) -> Result<Vec<TaskRecord>, StoreError> {
        self.read(
            || "listing unfinished tasks".to_string(),
            |conn| {
                conn.prepare_cached(concat!(
                    "SELECT ",
                    task_columns!(payloads),
                    " FROM tasks WHERE state IN ('pending', 'running') ORDER BY job, seq, id"
                ))?
                .query_map([], task_row)?
                .collect()
            },
        )
    }

    fn purge_job(&mut self, job: JobId) -> Result<u64, StoreError> {
        if !self.jobs.contains(&job) {
            return Err(StoreError::UnknownJob(job));
        }
        let removed = self.call(move |conn| purge_job_in(conn, job))?;
        self.jobs.remove(&job);
        Ok(removed)
    }

    fn purge_engine(&mut self, engine: EngineId) -> Result<u64, StoreError> {
        let Ok(id) = i64::try_from(engine) else {
            return Ok(0);
        };
        self.call(move |conn| {
            conn.execute(
                "DELETE FROM tasks WHERE engine = ?1 AND state IN ('ok', 'failed')",
                [id],
            )
            .map(|n| n as u64)
            .map_err(sqlite_error(format!(
                "purging the tasks of engine {engine}"
            )))
        })
    }

    fn purge_completed(&mut self) -> Result<u64, StoreError> {
        let (removed, jobs) = self.call(purge_completed_in)?;
        for job in jobs {
            self.jobs.remove(&job);
        }
        Ok(removed)
    }

    fn reset_for_resubmit(
        &mut self,
        job: JobId,
        ids: Option<&[TaskId]>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        if !self.jobs.contains(&job) {
            return Err(StoreError::UnknownJob(job));
        }
        let ids = ids.map(<[TaskId]>::to_vec);
        self.call(move |conn| reset_in(conn, job, ids))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs) + Duration::from_nanos(123)
    }

    /// Runs `test` on a memory store and on a fresh SQLite file, both through `open`.
    fn both(test: impl Fn(&mut dyn Store)) {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = dir.path().join("hub").join("tasks.db");
        for spec in [MemoryStore::LOCATION, sqlite.to_str().unwrap()] {
            eprintln!("-- store {spec}");
            let mut store = open(spec).unwrap();
            assert_eq!(store.location(), spec);
            test(&mut *store);
        }
    }

    fn job(store: &mut dyn Store, client: &str) -> JobId {
        let id = store.next_job_id().unwrap();
        store
            .add_job(&JobRecord {
                id,
                submitted: at(0),
                client: client.into(),
                spec: b"echo {}".to_vec(),
                total: None,
            })
            .unwrap();
        id
    }

    /// Adds tasks with these seqs; returns their ids in the same order.
    fn tasks(store: &mut dyn Store, job: JobId, seqs: &[u64]) -> Vec<TaskId> {
        let ids: Vec<TaskId> = store.next_task_ids(seqs.len() as u64).unwrap().collect();
        store
            .add_tasks(
                ids.iter()
                    .zip(seqs)
                    .map(|(&id, &seq)| NewTask {
                        id,
                        job,
                        seq,
                        request: format!("request {seq}").into_bytes(),
                        submitted: at(seq),
                    })
                    .collect(),
            )
            .unwrap();
        ids
    }

    fn finished(status: TaskState, engine: EngineId, result: &str) -> Finished {
        Finished {
            status,
            result: result.as_bytes().to_vec(),
            error: (status == TaskState::Failed).then(|| format!("failed: {result}")),
            completed: at(100),
            engine,
            attempts: 1,
        }
    }

    fn states(store: &mut dyn Store, job: JobId) -> Vec<TaskState> {
        store
            .tasks(&TaskFilter::Job(job), false)
            .unwrap()
            .iter()
            .map(|t| t.state)
            .collect()
    }

    /// Each task's writes, queued with no flush between (so the SQLite
    /// writer may fold them into one statement), leave the same row in both
    /// stores: inserted and finished in one go, started again after a
    /// requeue, a start for a completed task ignored, a requeue of a task
    /// never started ignored.
    #[test]
    fn writes_queued_together_leave_what_they_leave_one_by_one() {
        both(|store| {
            let j = job(store, "ruth");
            let old = tasks(store, j, &[0, 1, 2]);
            store.task_started(old[2], 7, at(3), 1).unwrap();
            store
                .task_finished(old[2], finished(TaskState::Ok, 7, "first"))
                .unwrap();
            store.flush().unwrap();
            // Old tasks: start then finish; start, requeue; a completed
            // one started and finished again.
            store.task_started(old[0], 7, at(5), 1).unwrap();
            store
                .task_finished(old[0], finished(TaskState::Failed, 7, "boom"))
                .unwrap();
            store.task_started(old[1], 7, at(6), 1).unwrap();
            store.task_requeued(old[1]).unwrap();
            store.task_started(old[2], 8, at(7), 2).unwrap();
            store
                .task_finished(old[2], finished(TaskState::Ok, 8, "second"))
                .unwrap();
            // New tasks: inserted, started, requeued, started elsewhere,
            // finished; and one requeued without a start.
            let new = tasks(store, j, &[3, 4]);
            store.task_started(new[0], 7, at(8), 1).unwrap();
            store.task_requeued(new[0]).unwrap();
            store.task_started(new[0], 8, at(9), 2).unwrap();
            store
                .task_finished(new[0], finished(TaskState::Ok, 8, "done"))
                .unwrap();
            store.task_requeued(new[1]).unwrap();
            store.flush().unwrap();
            let rows = store.tasks(&TaskFilter::Job(j), true).unwrap();
            let row = |seq: u64| rows.iter().find(|t| t.seq == seq).unwrap();
            assert_eq!(row(0).state, TaskState::Failed);
            assert_eq!(row(0).started, Some(at(5)));
            assert_eq!(row(0).error.as_deref(), Some("failed: boom"));
            assert_eq!(row(1).state, TaskState::Pending);
            assert_eq!((row(1).engine, row(1).started), (None, None));
            assert_eq!(row(2).state, TaskState::Ok);
            assert_eq!(
                row(2).result.as_deref(),
                Some(&b"first"[..]),
                "first result kept"
            );
            assert_eq!((row(2).engine, row(2).started), (Some(7), Some(at(3))));
            assert_eq!(row(3).state, TaskState::Ok);
            assert_eq!((row(3).engine, row(3).attempts), (Some(8), 1));
            assert_eq!(row(3).started, Some(at(9)));
            assert_eq!(row(3).result.as_deref(), Some(&b"done"[..]));
            assert_eq!(row(4).state, TaskState::Pending);
            assert_eq!(row(4).request.as_deref(), Some(&b"request 4"[..]));
        });
    }

    /// One event of a task, for the fold equivalence property.
    #[derive(Debug, Clone)]
    enum Event {
        Add,
        Start(i64),
        Requeue,
        Finish(bool),
    }

    fn event() -> impl Strategy<Value = (usize, Event)> {
        let kind = prop_oneof![
            Just(Event::Add),
            (1..4i64).prop_map(Event::Start),
            Just(Event::Requeue),
            any::<bool>().prop_map(Event::Finish),
        ];
        (0..4usize, kind)
    }

    /// A connection with the schema, one job, and tasks 1 and 2 already in
    /// the table (tasks 3 and 4 may be added by the events).
    fn fold_table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO jobs (id, submitted, client, spec) VALUES (1, 0, 'c', x'')",
            [],
        )
        .unwrap();
        for id in [1, 2] {
            apply(
                &conn,
                Write::AddTasks(vec![sql_task(id)]),
                &BatchErrors::default(),
            );
        }
        conn
    }

    fn sql_task(id: i64) -> SqlTask {
        SqlTask {
            id,
            job: 1,
            seq: id as u64 as i64,
            request: vec![id as u8],
            submitted: id,
        }
    }

    fn write_of(n: usize, (task, event): &(usize, Event)) -> Write {
        let (task, at) = (*task as i64 + 1, n as i64);
        match event {
            Event::Add => Write::AddTasks(vec![sql_task(task)]),
            Event::Start(engine) => Write::Started {
                task,
                engine: *engine,
                started: at,
                attempts: n as u32,
            },
            Event::Requeue => Write::Requeued { task },
            Event::Finish(ok) => Write::Finished {
                task,
                state: if *ok {
                    TaskState::Ok
                } else {
                    TaskState::Failed
                },
                result: vec![n as u8; 3],
                error: (!ok).then(|| format!("error {n}")),
                completed: at,
                engine: 9,
                attempts: n as u32,
            },
        }
    }

    fn table(conn: &Connection) -> Vec<String> {
        conn.prepare(concat!(
            "SELECT ",
            task_columns!(payloads),
            " FROM tasks ORDER BY id"
        ))
        .unwrap()
        .query_map([], |row| {
            Ok((0..12)
                .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                .collect::<Vec<_>>()
                .join("|"))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// A batch holding more payload than [`FOLD_BYTES`] writes what it
    /// holds at once instead of keeping it to the end of the batch.
    #[test]
    fn the_fold_writes_out_what_it_holds_past_its_byte_bound() {
        let conn = fold_table();
        let errors = BatchErrors::default();
        let mut fold = Fold::default();
        fold.apply(&conn, write_of(1, &(0, Event::Start(1))), &errors);
        fold.apply(&conn, write_of(2, &(1, Event::Start(1))), &errors);
        assert_eq!(fold.held.len(), 2);
        let big = Write::Finished {
            task: 1,
            state: TaskState::Ok,
            result: vec![7; FOLD_BYTES + 1],
            error: None,
            completed: 3,
            engine: 1,
            attempts: 1,
        };
        fold.apply(&conn, big, &errors);
        assert!(
            fold.held.is_empty() && fold.order.is_empty(),
            "nothing held"
        );
        assert_eq!(fold.bytes, 0);
        let states: Vec<String> = conn
            .prepare("SELECT state FROM tasks ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(states, ["ok", "running"]);
    }

    proptest! {
        /// The writer's fold leaves the table as the same writes applied
        /// one by one do, whatever their order: adds (a duplicate id
        /// included), starts, requeues and finishes of old and new tasks.
        #[test]
        fn folded_writes_leave_the_table_unfolded_writes_leave(
            events in proptest::collection::vec(event(), 0..24)
        ) {
            let (plain, folded) = (fold_table(), fold_table());
            let (plain_errors, folded_errors) = (BatchErrors::default(), BatchErrors::default());
            let mut fold = Fold::default();
            for (n, e) in events.iter().enumerate() {
                apply(&plain, write_of(n, e), &plain_errors);
                fold.apply(&folded, write_of(n, e), &folded_errors);
            }
            fold.flush(&folded, &folded_errors);
            prop_assert_eq!(table(&plain), table(&folded));
            let failures = |d: BatchErrors| d.take().map(|(_, more)| more + 1);
            prop_assert_eq!(failures(plain_errors), failures(folded_errors));
        }
    }

    #[test]
    fn lifecycle() {
        both(|store| {
            let e1 = store.next_engine_id().unwrap();
            let e2 = store.next_engine_id().unwrap();
            let j = job(store, "alice");
            let ids = tasks(store, j, &[2, 0, 1]);
            let (t2, t0, t1) = (ids[0], ids[1], ids[2]);
            store.task_started(t0, e1, at(10), 1).unwrap();
            store.task_started(t1, e2, at(11), 1).unwrap();
            store
                .task_finished(t0, finished(TaskState::Ok, e1, "zero"))
                .unwrap();
            store
                .task_finished(t1, finished(TaskState::Failed, e2, "one"))
                .unwrap();

            let all = store.tasks(&TaskFilter::Job(j), true).unwrap();
            assert_eq!(all.iter().map(|t| t.id).collect::<Vec<_>>(), [t0, t1, t2]);
            assert_eq!(
                all[0],
                TaskRecord {
                    id: t0,
                    job: j,
                    seq: 0,
                    request: Some(b"request 0".to_vec()),
                    submitted: at(0),
                    engine: Some(e1),
                    started: Some(at(10)),
                    completed: Some(at(100)),
                    state: TaskState::Ok,
                    result: Some(b"zero".to_vec()),
                    error: None,
                    attempts: 1,
                }
            );
            assert_eq!(all[1].state, TaskState::Failed);
            assert_eq!(all[1].error.as_deref(), Some("failed: one"));
            assert_eq!(all[2].state, TaskState::Pending);
            assert_eq!(all[2].request, Some(b"request 2".to_vec()));
            assert_eq!(all[2].result, None);
            assert_eq!(all[2].engine, None);

            let status = store.tasks(&TaskFilter::Job(j), false).unwrap();
            assert!(status
                .iter()
                .all(|t| t.request.is_none() && t.result.is_none()));
            assert_eq!(status[1].error, all[1].error);
            assert_eq!(
                status.iter().map(|t| t.state).collect::<Vec<_>>(),
                all.iter().map(|t| t.state).collect::<Vec<_>>()
            );

            let picked = store
                .tasks(&TaskFilter::Ids(vec![t2, t0, t0, 999_999]), true)
                .unwrap();
            assert_eq!(picked.iter().map(|t| t.id).collect::<Vec<_>>(), [t0, t2]);
            let seqs = |store: &mut dyn Store, job, seqs, payloads| {
                store
                    .tasks(&TaskFilter::Seqs { job, seqs }, payloads)
                    .unwrap()
                    .iter()
                    .map(|t| (t.seq, t.request.is_some()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(seqs(store, j, 1..=2, true), [(1, true), (2, true)]);
            assert_eq!(
                seqs(store, j, 0..=u64::MAX, false),
                [(0, false), (1, false), (2, false)]
            );
            let (high, low) = (2, 1);
            assert_eq!(seqs(store, j, high..=low, true), [], "a reversed range");
            assert_eq!(seqs(store, j, 3..=9, true), []);
            let page = |store: &mut dyn Store, after, limit| {
                store
                    .tasks(
                        &TaskFilter::Page {
                            job: j,
                            after,
                            limit,
                        },
                        false,
                    )
                    .unwrap()
                    .iter()
                    .map(|t| (t.seq, t.id))
                    .collect::<Vec<_>>()
            };
            let first = page(store, None, 2);
            assert_eq!(first, [(0, t0), (1, all[1].id)]);
            assert_eq!(page(store, first.last().copied(), 2), [(2, t2)]);
            assert_eq!(page(store, Some((2, t2)), 2), []);
            assert_eq!(page(store, None, 0), []);
            assert_eq!(seqs(store, j + 1, 0..=9, true), []);
            assert!(store
                .tasks(&TaskFilter::Job(j + 1), true)
                .unwrap()
                .is_empty());

            store.set_job_total(j, 3).unwrap();
            store.task_started(t2, e1, at(12), 2).unwrap();
            assert_eq!(
                store.jobs().unwrap(),
                [JobSummary {
                    id: j,
                    submitted: at(0),
                    client: "alice".into(),
                    total: Some(3),
                    pending: 0,
                    running: 1,
                    ok: 1,
                    failed: 1,
                }]
            );
            assert_eq!(
                store.engine_counts().unwrap(),
                [
                    EngineCounts {
                        engine: e1,
                        running: 1,
                        completed: 1
                    },
                    EngineCounts {
                        engine: e2,
                        running: 0,
                        completed: 1
                    },
                ]
            );
            let record = store.job(j).unwrap().unwrap();
            assert_eq!((record.client.as_str(), record.total), ("alice", Some(3)));
            assert_eq!(record.spec, b"echo {}");
            assert_eq!(store.job(j + 1).unwrap(), None);
        });
    }

    #[test]
    fn first_finish_wins_requeue_and_unfinished() {
        both(|store| {
            let j = job(store, "bob");
            let ids = tasks(store, j, &[0, 1, 2]);
            let (a, b, c) = (ids[0], ids[1], ids[2]);
            store.task_started(a, 1, at(1), 1).unwrap();
            store
                .task_finished(a, finished(TaskState::Ok, 1, "first"))
                .unwrap();
            store
                .task_finished(a, finished(TaskState::Failed, 2, "second"))
                .unwrap();
            // Late events for a completed task change nothing.
            store.task_started(a, 3, at(5), 2).unwrap();
            store.task_requeued(a).unwrap();

            store.task_started(b, 1, at(2), 1).unwrap();
            store.task_requeued(b).unwrap();
            store.task_started(c, 2, at(3), 1).unwrap();
            // Events for unknown tasks are ignored.
            store.task_started(424_242, 1, at(3), 1).unwrap();
            store.task_requeued(424_242).unwrap();
            store
                .task_finished(424_242, finished(TaskState::Ok, 1, "?"))
                .unwrap();

            let all = store.tasks(&TaskFilter::Job(j), true).unwrap();
            assert_eq!(all[0].state, TaskState::Ok);
            assert_eq!(all[0].result.as_deref(), Some(&b"first"[..]));
            assert_eq!(all[0].engine, Some(1));
            assert_eq!(
                (all[1].state, all[1].engine, all[1].started, all[1].attempts),
                (TaskState::Pending, None, None, 1)
            );
            assert_eq!(all[2].state, TaskState::Running);

            let unfinished = store.unfinished().unwrap();
            assert_eq!(unfinished.iter().map(|t| t.id).collect::<Vec<_>>(), [b, c]);
            assert_eq!(unfinished[0].request, Some(b"request 1".to_vec()));

            let invalid = store.task_finished(b, finished(TaskState::Running, 1, "x"));
            assert!(matches!(
                invalid,
                Err(StoreError::InvalidFinish {
                    state: TaskState::Running,
                    ..
                })
            ));
        });
    }

    #[test]
    fn unknown_and_duplicate_jobs_are_refused() {
        both(|store| {
            let j = job(store, "carol");
            let task = store.next_task_ids(1).unwrap().start;
            let orphan = NewTask {
                id: task,
                job: j + 100,
                seq: 0,
                request: vec![],
                submitted: at(0),
            };
            assert!(matches!(
                store.add_tasks(vec![orphan]),
                Err(StoreError::UnknownJob(x)) if x == j + 100
            ));
            assert!(matches!(
                store.set_job_total(j + 100, 1),
                Err(StoreError::UnknownJob(_))
            ));
            let record = store.job(j).unwrap().unwrap();
            assert!(matches!(store.add_job(&record), Err(StoreError::DuplicateJob(x)) if x == j));
            store.add_tasks(vec![]).unwrap();
            assert!(store.tasks(&TaskFilter::Job(j), false).unwrap().is_empty());
        });
    }

    #[test]
    fn ids_increase() {
        both(|store| {
            let e: Vec<_> = (0..40).map(|_| store.next_engine_id().unwrap()).collect();
            assert!(e.windows(2).all(|w| w[0] < w[1]) && e[0] >= 1);
            let j: Vec<_> = (0..100).map(|_| store.next_job_id().unwrap()).collect();
            assert!(j.windows(2).all(|w| w[0] < w[1]) && j[0] >= 1);
            let mut last = 0;
            for n in [0, 1, 10, 40_000, 70_000, 3, 100_000] {
                let range = store.next_task_ids(n).unwrap();
                assert_eq!(range.end - range.start, n);
                if n > 0 {
                    assert!(range.start > last);
                    last = range.end - 1;
                }
            }
        });
    }

    #[test]
    fn purge() {
        both(|store| {
            let j = job(store, "dave");
            let ids = tasks(store, j, &[0, 1, 2]);
            store.task_started(ids[0], 1, at(1), 1).unwrap();
            assert!(matches!(
                store.purge_job(j),
                Err(StoreError::PendingTasks { job, pending: 3 }) if job == j
            ));
            store
                .task_finished(ids[0], finished(TaskState::Ok, 1, "a"))
                .unwrap();
            store
                .task_finished(ids[1], finished(TaskState::Failed, 2, "b"))
                .unwrap();
            assert!(matches!(
                store.purge_job(j),
                Err(StoreError::PendingTasks { pending: 1, .. })
            ));
            store
                .task_finished(ids[2], finished(TaskState::Ok, 1, "c"))
                .unwrap();
            assert_eq!(store.purge_engine(1).unwrap(), 2);
            assert_eq!(store.purge_engine(1).unwrap(), 0);
            assert_eq!(
                store.tasks(&TaskFilter::Job(j), false).unwrap().len(),
                1,
                "only engine 2's task is left"
            );
            assert_eq!(store.purge_job(j).unwrap(), 1);
            assert_eq!(store.job(j).unwrap(), None);
            assert!(store.jobs().unwrap().is_empty());
            assert!(matches!(store.purge_job(j), Err(StoreError::UnknownJob(_))));

            // purge_completed: a finished job with a total goes; one without
            // a total stays (more inputs may come); unfinished work stays.
            let done = job(store, "erin");
            let open_ended = job(store, "erin");
            let busy = job(store, "erin");
            let d = tasks(store, done, &[0, 1]);
            let o = tasks(store, open_ended, &[0]);
            let b = tasks(store, busy, &[0, 1]);
            store.set_job_total(done, 2).unwrap();
            store.set_job_total(busy, 2).unwrap();
            for task in [d[0], d[1], o[0], b[0]] {
                store
                    .task_finished(task, finished(TaskState::Ok, 3, "r"))
                    .unwrap();
            }
            assert_eq!(store.purge_completed().unwrap(), 4);
            let left: Vec<(JobId, u64, u64)> = store
                .jobs()
                .unwrap()
                .iter()
                .map(|s| (s.id, s.pending, s.ok))
                .collect();
            assert_eq!(left, [(open_ended, 0, 0), (busy, 1, 0)]);
            let late = store.next_task_ids(1).unwrap().start;
            assert!(matches!(
                store.add_tasks(vec![NewTask {
                    id: late,
                    job: done,
                    seq: 9,
                    request: vec![],
                    submitted: at(0),
                }]),
                Err(StoreError::UnknownJob(_))
            ));
            tasks(store, open_ended, &[1]);
            assert!(store.engine_counts().unwrap().is_empty());
        });
    }

    #[test]
    fn resubmit() {
        both(|store| {
            let j = job(store, "frank");
            let other = job(store, "grace");
            let ids = tasks(store, j, &[0, 1, 2, 3, 4]);
            let foreign = tasks(store, other, &[0])[0];
            store
                .task_finished(ids[0], finished(TaskState::Ok, 1, "ok"))
                .unwrap();
            store.task_started(ids[1], 1, at(1), 1).unwrap();
            store
                .task_finished(ids[1], finished(TaskState::Failed, 1, "bad"))
                .unwrap();
            store
                .task_finished(ids[2], finished(TaskState::Failed, 2, "bad"))
                .unwrap();
            store.task_started(ids[4], 2, at(1), 1).unwrap();

            let reset = store.reset_for_resubmit(j, None).unwrap();
            assert_eq!(
                reset.iter().map(|t| t.id).collect::<Vec<_>>(),
                [ids[1], ids[2]]
            );
            for task in &reset {
                assert_eq!(task.state, TaskState::Pending);
                assert_eq!(
                    task.request,
                    Some(format!("request {}", task.seq).into_bytes())
                );
                assert_eq!(
                    (task.engine, task.started, task.completed),
                    (None, None, None)
                );
                assert_eq!((&task.result, &task.error), (&None, &None));
                assert_eq!(task.attempts, 1);
            }
            assert_eq!(
                states(store, j),
                [
                    TaskState::Ok,
                    TaskState::Pending,
                    TaskState::Pending,
                    TaskState::Pending,
                    TaskState::Running
                ]
            );
            assert!(store.reset_for_resubmit(j, None).unwrap().is_empty());

            // Explicit ids: all must be completed tasks of the job, else nothing changes.
            assert!(matches!(
                store.reset_for_resubmit(j, Some(&[ids[0], ids[3]])),
                Err(StoreError::NotCompleted { task, state: TaskState::Pending }) if task == ids[3]
            ));
            assert!(matches!(
                store.reset_for_resubmit(j, Some(&[ids[0], ids[4]])),
                Err(StoreError::NotCompleted {
                    state: TaskState::Running,
                    ..
                })
            ));
            assert!(matches!(
                store.reset_for_resubmit(j, Some(&[ids[0], foreign])),
                Err(StoreError::UnknownTask { job, task }) if job == j && task == foreign
            ));
            assert!(matches!(
                store.reset_for_resubmit(j + 50, None),
                Err(StoreError::UnknownJob(_))
            ));
            assert_eq!(states(store, j)[0], TaskState::Ok);
            let again = store
                .reset_for_resubmit(j, Some(&[ids[0], ids[0]]))
                .unwrap();
            assert_eq!(again.len(), 1);
            assert_eq!(again[0].id, ids[0]);
            assert_eq!(states(store, j)[0], TaskState::Pending);
        });
    }

    // --- SQLite only -------------------------------------------------------

    fn reopen(path: &Path) -> SqliteStore {
        SqliteStore::open(path).unwrap()
    }

    struct Handed {
        engine: EngineId,
        job: JobId,
        task: TaskId,
    }

    fn hand_out(store: &mut SqliteStore) -> Handed {
        let engine = store.next_engine_id().unwrap();
        let job = store.next_job_id().unwrap();
        let task = store.next_task_ids(5).unwrap().end - 1;
        Handed { engine, job, task }
    }

    fn assert_past(store: &mut SqliteStore, before: &Handed) {
        assert!(store.next_engine_id().unwrap() > before.engine);
        assert!(store.next_job_id().unwrap() > before.job);
        assert!(store.next_task_ids(1).unwrap().start > before.task);
    }

    #[test]
    fn ids_never_reused_across_reopen_and_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.db");

        let mut store = reopen(&path);
        let handed = hand_out(&mut store);
        drop(store);
        let mut store = reopen(&path);
        assert_past(&mut store, &handed);

        // Crash with queued, unflushed writes and ids handed out.
        let handed = hand_out(&mut store);
        let j = handed.job;
        store
            .add_job(&JobRecord {
                id: j,
                submitted: at(0),
                client: "x".into(),
                spec: vec![],
                total: None,
            })
            .unwrap();
        store.crash();
        let mut store = reopen(&path);
        assert_past(&mut store, &handed);

        // Forgotten store (no drop at all).
        let handed = hand_out(&mut store);
        std::mem::forget(store);
        let mut store = reopen(&path);
        assert_past(&mut store, &handed);
    }

    #[test]
    fn flushed_data_is_seen_by_a_second_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("durable.db");
        let mut first = reopen(&path);
        let j = job(&mut first, "heidi");
        let ids = tasks(&mut first, j, &[0, 1]);
        first.task_started(ids[0], 7, at(1), 1).unwrap();
        first
            .task_finished(ids[0], finished(TaskState::Ok, 7, "done"))
            .unwrap();
        first.flush().unwrap();

        let mut second = reopen(&path);
        assert_eq!(second.job(j).unwrap().unwrap().client, "heidi");
        assert_eq!(states(&mut second, j), [TaskState::Ok, TaskState::Pending]);
        drop(second);

        // Written after, never explicitly flushed: the drop commits it.
        first.task_started(ids[1], 7, at(2), 1).unwrap();
        drop(first);
        let mut third = reopen(&path);
        assert_eq!(states(&mut third, j), [TaskState::Ok, TaskState::Running]);
        assert_eq!(third.unfinished().unwrap().len(), 1);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        drop(reopen(&path));
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::SchemaTooNew {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }) => {}
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    /// A write that fails stops the store: its batch is rolled back (the
    /// commit position does not cover it), every later write and flush
    /// fails with the first failure, and reads show what was committed.
    #[test]
    fn a_failed_write_stops_the_store_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = reopen(&dir.path().join("errors.db"));
        let log = store.commits();
        let j = job(&mut store, "ivan");
        let id = tasks(&mut store, j, &[0])[0];
        store.flush().unwrap();
        let committed = log.committed();
        assert_eq!(
            committed,
            store.written(),
            "everything flushed is committed"
        );
        let dup = |seq| NewTask {
            id,
            job: j,
            seq,
            request: vec![],
            submitted: at(0),
        };
        store.add_tasks(vec![dup(1), dup(2)]).unwrap();
        store.task_started(id, 3, at(1), 1).unwrap();
        let failure = store.flush().unwrap_err();
        assert!(matches!(failure, StoreError::CannotWrite(_)), "{failure}");
        let text = ErrorChain(&failure).to_string();
        assert!(
            text.contains("recording task") && text.contains("UNIQUE"),
            "{text}"
        );
        assert!(
            failure
                .to_string()
                .starts_with("task store cannot write: UNIQUE"),
            "{failure}"
        );
        assert_eq!(
            log.committed(),
            committed,
            "the failed batch is not counted"
        );
        assert!(log.failure().is_some());
        // Sticky: later writes, flushes and purges fail at once...
        assert!(matches!(
            store.task_started(id, 4, at(2), 1),
            Err(StoreError::CannotWrite(_))
        ));
        assert!(matches!(store.flush(), Err(StoreError::CannotWrite(_))));
        assert!(matches!(
            store.purge_completed(),
            Err(StoreError::CannotWrite(_))
        ));
        // ...while reads show what was committed: the start was rolled back.
        assert_eq!(states(&mut store, j), [TaskState::Pending]);
        assert_eq!(store.tasks(&TaskFilter::Job(j), false).unwrap()[0].seq, 0);
    }

    /// Each committed batch moves the position on by its writes; the memory
    /// store's stays at 0, as its `written` does.
    #[test]
    fn the_commit_position_follows_the_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = reopen(&dir.path().join("position.db"));
        let log = store.commits();
        let j = job(&mut store, "kim");
        let ids = tasks(&mut store, j, &[0, 1, 2]);
        store.task_started(ids[0], 1, at(1), 1).unwrap();
        assert_eq!(store.written(), 3);
        store.flush().unwrap();
        assert_eq!(log.committed(), 3);
        let mut memory = MemoryStore::new();
        let m = job(&mut memory, "kim");
        tasks(&mut memory, m, &[0]);
        assert_eq!((memory.written(), memory.commits().committed()), (0, 0));
    }

    fn refusal(path: &Path, options: &StoreOptions) -> String {
        match SqliteStore::open_with(path, options) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("{} was opened", path.display()),
        }
    }

    /// What is at a store path and is not a zcluster store is refused,
    /// named, and left as it was: an empty file, other bytes, another
    /// application's database, an empty database, a directory.
    #[test]
    fn a_path_that_holds_no_zcluster_store_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::default();
        let empty = dir.path().join("empty.sqlite");
        std::fs::write(&empty, b"").unwrap();
        let text = refusal(&empty, &options);
        assert!(text.contains(&empty.display().to_string()), "{text}");
        assert!(text.contains("an empty file (0 bytes)"), "{text}");
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "left alone");

        let notes = dir.path().join("notes.sqlite");
        std::fs::write(&notes, "my notes, not a database\n").unwrap();
        let text = refusal(&notes, &options);
        assert!(text.contains("not a SQLite database"), "{text}");
        assert!(text.contains("my notes"), "{text}");

        let other = dir.path().join("other.sqlite");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE photos (id INTEGER); INSERT INTO photos VALUES (1);")
            .unwrap();
        let text = refusal(&other, &options);
        assert!(
            text.contains("without zcluster's tables (it has: photos)"),
            "{text}"
        );
        let photos: i64 = Connection::open(&other)
            .unwrap()
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(photos, 1, "nothing added to it");

        let foreign = dir.path().join("foreign.sqlite");
        Connection::open(&foreign)
            .unwrap()
            .pragma_update(None, "application_id", 0x1234)
            .unwrap();
        let text = refusal(&foreign, &options);
        assert!(text.contains("another application"), "{text}");

        let blank = dir.path().join("blank.sqlite");
        Connection::open(&blank)
            .unwrap()
            .pragma_update(None, "journal_mode", "WAL")
            .unwrap();
        let text = refusal(&blank, &options);
        assert!(text.contains("an empty SQLite database"), "{text}");

        let text = refusal(dir.path(), &options);
        assert!(text.contains("a directory"), "{text}");
    }

    /// A store that holds fewer commits than its side file records is
    /// refused, unless the rollback is accepted; then it carries on from
    /// what it holds and the record follows it.
    #[test]
    fn a_store_behind_its_commit_record_is_refused_unless_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("behind.sqlite");
        let mut store = reopen(&path);
        let j = job(&mut store, "lena");
        tasks(&mut store, j, &[0, 1]);
        drop(store);
        let record = store_file::read_record(&path).unwrap().unwrap();
        assert!(record.commits >= 2, "{record:?}");
        // Reopened as it was: fine.
        drop(reopen(&path));
        // The record says more than the store holds (what a deleted -wal
        // leaves behind; the hub tests delete one for real).
        let ahead = record.commits + 5;
        std::fs::write(
            store_file::record_path(&path),
            format!("zcluster task store {:016x} {ahead:020}\n", record.store),
        )
        .unwrap();
        let text = refusal(&path, &StoreOptions::default());
        assert!(
            text.contains("is behind what was committed")
                && text.contains(&format!("holds {} commits", record.commits))
                && text.contains(&format!("{ahead} were made"))
                && text.contains("--accept-rollback"),
            "{text}"
        );
        let accept = StoreOptions {
            accept_rollback: true,
        };
        let mut store = SqliteStore::open_with(&path, &accept).unwrap();
        assert_eq!(states(&mut store, j).len(), 2, "what it holds");
        drop(store);
        assert_eq!(
            store_file::read_record(&path).unwrap().unwrap().store,
            record.store
        );
        drop(reopen(&path));

        // A damaged record cannot rule a rollback out either.
        std::fs::write(store_file::record_path(&path), "garbage").unwrap();
        let text = refusal(&path, &StoreOptions::default());
        assert!(text.contains("damaged"), "{text}");
        drop(SqliteStore::open_with(&path, &accept).unwrap());
        drop(reopen(&path));
    }

    /// Past [`CHECKPOINT_PAGES`] of WAL the checkpoint thread copies the
    /// WAL into the database file, without the writer waiting for it.
    #[test]
    fn the_wal_is_checkpointed_by_a_thread_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.sqlite");
        let mut store = reopen(&path);
        let j = job(&mut store, "nina");
        let before = std::fs::metadata(&path).unwrap().len();
        let ids: Vec<TaskId> = store.next_task_ids(1500).unwrap().collect();
        store
            .add_tasks(
                ids.iter()
                    .map(|&id| NewTask {
                        id,
                        job: j,
                        seq: id,
                        request: vec![7; 4096],
                        submitted: at(0),
                    })
                    .collect(),
            )
            .unwrap();
        store.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < before + (4 << 20) {
            assert!(Instant::now() < deadline, "no checkpoint");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(states(&mut store, j).len(), 1500);
    }

    /// A new store's file, its side file and the directories made for it
    /// are their owner's only; an old store's 0644 files are narrowed.
    #[test]
    fn store_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("made").join("for").join("it.sqlite");
        let mut store = reopen(&path);
        let j = job(&mut store, "mo");
        tasks(&mut store, j, &[0]);
        store.flush().unwrap();
        for file in [
            path.clone(),
            store_file::beside(&path, "-wal"),
            store_file::beside(&path, "-shm"),
            store_file::record_path(&path),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir.path().join("made")), 0o700);
        drop(store);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(reopen(&path));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn open_spec() {
        assert_eq!(open(":memory:").unwrap().location(), ":memory:");
        assert!(matches!(open(""), Err(StoreError::InvalidSpec(_))));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("b").join("store.db");
        let store = open(path.to_str().unwrap()).unwrap();
        assert_eq!(store.location(), path.display().to_string());
        assert!(path.exists());
    }

    #[test]
    fn out_of_range_values_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = reopen(&dir.path().join("range.db"));
        let j = job(&mut store, "judy");
        assert!(matches!(
            store.set_job_total(j, u64::MAX),
            Err(StoreError::TooLarge { .. })
        ));
        let far = UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400);
        assert!(matches!(
            store.task_started(1, 1, far, 1),
            Err(StoreError::TimeOutOfRange { .. })
        ));
        let before_1970 = UNIX_EPOCH - Duration::from_secs(86_400);
        let id = store.next_task_ids(1).unwrap().start;
        store
            .add_tasks(vec![NewTask {
                id,
                job: j,
                seq: 0,
                request: vec![],
                submitted: before_1970,
            }])
            .unwrap();
        assert_eq!(
            store.tasks(&TaskFilter::Job(j), false).unwrap()[0].submitted,
            before_1970
        );
    }

    // --- model check: both stores agree ------------------------------------

    #[derive(Debug, Clone)]
    enum Action {
        AddJob {
            with_total: bool,
        },
        SetTotal {
            job: usize,
            total: u8,
        },
        AddTasks {
            job: usize,
            count: u8,
        },
        Start {
            task: usize,
            engine: u8,
            attempts: u8,
        },
        Requeue {
            task: usize,
        },
        Finish {
            task: usize,
            ok: bool,
            engine: u8,
        },
        PurgeJob {
            job: usize,
        },
        PurgeEngine {
            engine: u8,
        },
        PurgeCompleted,
        Resubmit {
            job: usize,
            ids: Option<Vec<usize>>,
        },
        NewEngine,
        Flush,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            2 => any::<bool>().prop_map(|with_total| Action::AddJob { with_total }),
            1 => (any::<usize>(), any::<u8>()).prop_map(|(job, total)| Action::SetTotal { job, total }),
            3 => (any::<usize>(), 0..5u8).prop_map(|(job, count)| Action::AddTasks { job, count }),
            4 => (any::<usize>(), 1..4u8, 1..3u8).prop_map(|(task, engine, attempts)| Action::Start { task, engine, attempts }),
            1 => any::<usize>().prop_map(|task| Action::Requeue { task }),
            4 => (any::<usize>(), any::<bool>(), 1..4u8).prop_map(|(task, ok, engine)| Action::Finish { task, ok, engine }),
            1 => any::<usize>().prop_map(|job| Action::PurgeJob { job }),
            1 => (1..4u8).prop_map(|engine| Action::PurgeEngine { engine }),
            1 => Just(Action::PurgeCompleted),
            1 => (any::<usize>(), proptest::option::of(proptest::collection::vec(any::<usize>(), 0..3)))
                .prop_map(|(job, ids)| Action::Resubmit { job, ids }),
            1 => Just(Action::NewEngine),
            1 => Just(Action::Flush),
        ]
    }

    /// A comparable outcome: the Ok value's Debug text or the error's message.
    fn outcome<T: fmt::Debug>(result: Result<T, StoreError>) -> Result<String, String> {
        result.map(|v| format!("{v:?}")).map_err(|e| e.to_string())
    }

    fn pick<T: Copy>(items: &[T], i: usize) -> Option<T> {
        (!items.is_empty()).then(|| items[i % items.len()])
    }

    fn step(
        store: &mut dyn Store,
        action: &Action,
        jobs: &[JobId],
        tasks: &[TaskId],
        clock: u64,
    ) -> Result<String, String> {
        match action.clone() {
            Action::AddJob { with_total } => {
                let id = store.next_job_id().map_err(|e| e.to_string())?;
                outcome(
                    store
                        .add_job(&JobRecord {
                            id,
                            submitted: at(clock),
                            client: format!("client{}", id % 3),
                            spec: vec![id as u8; 3],
                            total: with_total.then_some(id % 4),
                        })
                        .map(|()| id),
                )
            }
            Action::SetTotal { job, total } => match pick(jobs, job) {
                Some(job) => outcome(store.set_job_total(job, total.into())),
                None => Ok("no job".into()),
            },
            Action::AddTasks { job, count } => match pick(jobs, job) {
                Some(job) => {
                    let ids = store
                        .next_task_ids(count.into())
                        .map_err(|e| e.to_string())?;
                    let new = ids
                        .clone()
                        .map(|id| NewTask {
                            id,
                            job,
                            seq: id % 7,
                            request: id.to_le_bytes().to_vec(),
                            submitted: at(clock),
                        })
                        .collect();
                    outcome(store.add_tasks(new).map(|()| ids))
                }
                None => Ok("no job".into()),
            },
            Action::Start {
                task,
                engine,
                attempts,
            } => match pick(tasks, task) {
                Some(task) => {
                    outcome(store.task_started(task, engine.into(), at(clock), attempts.into()))
                }
                None => Ok("no task".into()),
            },
            Action::Requeue { task } => match pick(tasks, task) {
                Some(task) => outcome(store.task_requeued(task)),
                None => Ok("no task".into()),
            },
            Action::Finish { task, ok, engine } => match pick(tasks, task) {
                Some(task) => {
                    let status = if ok { TaskState::Ok } else { TaskState::Failed };
                    let mut f = finished(status, engine.into(), &format!("r{task}@{clock}"));
                    f.completed = at(clock);
                    outcome(store.task_finished(task, f))
                }
                None => Ok("no task".into()),
            },
            Action::PurgeJob { job } => match pick(jobs, job) {
                Some(job) => outcome(store.purge_job(job)),
                None => Ok("no job".into()),
            },
            Action::PurgeEngine { engine } => outcome(store.purge_engine(engine.into())),
            Action::PurgeCompleted => outcome(store.purge_completed()),
            Action::Resubmit { job, ids } => match pick(jobs, job) {
                Some(job) => {
                    let ids: Option<Vec<TaskId>> =
                        ids.map(|ids| ids.iter().filter_map(|&i| pick(tasks, i)).collect());
                    outcome(store.reset_for_resubmit(job, ids.as_deref()))
                }
                None => Ok("no job".into()),
            },
            Action::NewEngine => outcome(store.next_engine_id()),
            Action::Flush => outcome(store.flush()),
        }
    }

    fn views(store: &mut dyn Store, jobs: &[JobId], tasks: &[TaskId]) -> String {
        let mut out = format!("{:?}\n", store.jobs().unwrap());
        for &job in jobs {
            out += &format!("{:?}\n", store.tasks(&TaskFilter::Job(job), false).unwrap());
        }
        out += &format!(
            "{:?}\n{:?}\n{:?}",
            store.tasks(&TaskFilter::Ids(tasks.to_vec()), true).unwrap(),
            store.engine_counts().unwrap(),
            store.unfinished().unwrap()
        );
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn memory_and_sqlite_agree(actions in proptest::collection::vec(action(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let mut memory = MemoryStore::new();
            let mut sqlite = SqliteStore::open(dir.path().join("model.db")).unwrap();
            let (mut jobs, mut tasks) = (Vec::new(), Vec::new());
            for (clock, action) in actions.iter().enumerate() {
                let clock = clock as u64;
                let expected = step(&mut memory, action, &jobs, &tasks, clock);
                let got = step(&mut sqlite, action, &jobs, &tasks, clock);
                prop_assert_eq!(&expected, &got, "after {:?}", action);
                match (action, &expected) {
                    (Action::AddJob { .. }, Ok(id)) => jobs.push(id.parse().unwrap()),
                    (Action::AddTasks { .. }, Ok(range)) if range.contains("..") => {
                        let (a, b) = range.split_once("..").unwrap();
                        tasks.extend(a.parse::<u64>().unwrap()..b.parse::<u64>().unwrap());
                    }
                    _ => {}
                }
                if clock % 8 == 0 || clock + 1 == actions.len() as u64 {
                    prop_assert_eq!(
                        views(&mut memory, &jobs, &tasks),
                        views(&mut sqlite, &jobs, &tasks),
                        "after {:?}", action
                    );
                }
            }
        }
    }

    // --- throughput ----------------------------------------------------------

    /// CPU time used so far by live writer threads (Linux; clock ticks of 10 ms).
    fn writer_cpu() -> Option<Duration> {
        let mut ticks = 0;
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.starts_with("zcluster-store") {
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                ticks += fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
            }
        }
        Some(Duration::from_millis(ticks * 10))
    }

    /// `cargo test --release -- --ignored --nocapture throughput`
    #[test]
    #[ignore = "benchmark; run in release"]
    fn throughput() {
        const TASKS: u64 = 200_000;
        const BATCH: u64 = 1000;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = dir.path().join("bench.db");
        for spec in [MemoryStore::LOCATION, sqlite.to_str().unwrap()] {
            let mut store = open(spec).unwrap();
            let begin = Instant::now();
            let j = job(&mut *store, "bench");
            let mut all = Vec::with_capacity(TASKS as usize);
            for _ in 0..TASKS / BATCH {
                let ids = store.next_task_ids(BATCH).unwrap();
                all.extend(ids.clone());
                store
                    .add_tasks(
                        ids.map(|id| NewTask {
                            id,
                            job: j,
                            seq: id,
                            request: vec![7; 64],
                            submitted: at(0),
                        })
                        .collect(),
                    )
                    .unwrap();
            }
            for &id in &all {
                store.task_started(id, 1 + id % 16, at(1), 1).unwrap();
            }
            for &id in &all {
                store
                    .task_finished(
                        id,
                        Finished {
                            status: TaskState::Ok,
                            result: vec![9; 64],
                            error: None,
                            completed: at(2),
                            engine: 1 + id % 16,
                            attempts: 1,
                        },
                    )
                    .unwrap();
            }
            let queued = begin.elapsed();
            store.flush().unwrap();
            let total = begin.elapsed();
            let events = (3 * TASKS) as f64;
            let writer = writer_cpu()
                .filter(|cpu| !cpu.is_zero())
                .map(|cpu| {
                    format!(
                        "; writer thread CPU {cpu:?} = {:.0} events/CPU-s",
                        events / cpu.as_secs_f64()
                    )
                })
                .unwrap_or_default();
            println!(
                "{spec}: {} events in {total:?} = {:.0} events/s end to end; \
                 caller busy {queued:?}{writer}",
                3 * TASKS,
                events / total.as_secs_f64(),
            );
            assert_eq!(store.jobs().unwrap()[0].ok, TASKS);
        }
    }
}
