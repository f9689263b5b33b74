//! What goes wrong in the task store ([`StoreError`]), and how a failure is
//! shown to a user and in logs.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::{JobId, TaskId, TaskState};

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
    /// Times are stored as signed nanoseconds since 1970, about ±146 years
    /// (the SQLite store keeps differences of two times, which must fit too).
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
    /// jobs on it (see [`CommitLog`](crate::hub::commit::CommitLog)): restarting it once the cause is
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

/// Displays what an error comes down to: SQLite's own words (say
/// "database or disk is full"), or else the innermost source (the OS's).
/// What a user needs to act on.
pub(super) struct RootCause<'a>(pub(super) &'a (dyn std::error::Error + 'static));

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
pub(super) struct ErrorChain<'a>(pub(super) &'a (dyn std::error::Error + 'static));

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
