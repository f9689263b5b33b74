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
//!
//! # Where things are
//!
//! | file | what it holds |
//! | --- | --- |
//! | `mod.rs` | the [`Store`] trait, [`open`] and [`StoreOptions`] |
//! | `types.rs` | ids, [`JobRecord`], [`NewTask`], [`Finished`], [`TaskRecord`], summaries, [`TaskFilter`] |
//! | `state.rs` | [`TaskState`] and the task state machine, written once for both stores: [`TaskState::apply`] (which event a state allows, and where it leads) and `Progress::apply` (which columns it sets) |
//! | `error.rs` | [`StoreError`] |
//! | `counts.rs` | every job's counts of tasks by state, kept by both stores as tasks move, so a status costs the number of jobs |
//! | `memory.rs` | [`MemoryStore`] |
//! | `sqlite/mod.rs` | [`SqliteStore`]: opening a file, the calls of the trait, the reads |
//! | `sqlite/schema.rs` | the tables, the schema version and the migration of older files |
//! | `sqlite/files.rs` | the store's files: private, recognised, checked for a rollback |
//! | `sqlite/writer.rs` | the write queue and the writer thread: a batch is committed in `commit_batch`, which moves the [`CommitLog`] on |
//! | `sqlite/ids.rs` | id blocks reserved in the `counters` table |
//! | `sqlite/fold.rs` | the writes of one batch folded per task into one statement |
//! | `sqlite/stored.rs` | the stored forms of requests and results (schema version 3): the wire bytes without what the store holds elsewhere, given back byte for byte |
//! | `sqlite/sql.rs` | the SQL of each write (its guards built from the state machine), and conversions to and from SQLite's values |
//! | `sqlite/maintenance.rs` | purges and resubmits |
//! | `tests.rs`, `model_tests.rs`, `state_tests.rs`, `sqlite/tests.rs`, `sqlite/fold_tests.rs` | tests: both stores alike, the two stores checked against each other, the state machine, the SQLite store alone, the fold and the SQL of each event |
//!
//! A write's way through the SQLite store: `SqliteStore::write` queues it
//! (`sqlite/mod.rs`), `run_writer` takes a batch of them (`writer.rs`), the
//! fold and `sql::apply` turn them into statements, and `commit_batch`
//! commits the batch and moves the [`CommitLog`] on.

mod counts;
mod error;
mod memory;
mod sqlite;
mod state;
mod types;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use super::commit::CommitLog;
pub use error::StoreError;
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;
pub use state::{Refused, TaskEvent, TaskState};
pub use types::{
    EngineCounts, EngineId, Finished, JobId, JobRecord, JobSummary, NewTask, TaskFilter, TaskId,
    TaskRecord,
};

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
