//! The SQLite store ([`SqliteStore`]): opening its file, the calls of the
//! [`Store`] trait, and the reads. Writes are queued to the writer thread
//! (`writer.rs`), which folds them (`fold.rs`), runs their SQL (`sql.rs`)
//! and commits them; purges and resubmits run there too
//! (`maintenance.rs`).

/// The columns of a task row, in the order `sql::task_row` reads them:
/// with payloads, or with NULL in their place (status only). With
/// payloads, the last two are what their stored forms need besides the
/// row (see `stored.rs`): the job's reference request and the result's
/// origin. A macro, so that statements can be built with `concat!` at
/// compile time; each statement selects `FROM tasks` (no alias).
macro_rules! task_columns {
    (payloads) => {
        "id, job, seq, request, submitted, engine, submitted + started, submitted + completed, \
         state, result, error, attempts, \
         (SELECT request_ref FROM jobs WHERE jobs.id = tasks.job), \
         (SELECT origin FROM origins WHERE origins.id = tasks.origin)"
    };
    (status) => {
        "id, job, seq, NULL, submitted, engine, submitted + started, submitted + completed, \
         state, NULL, error, attempts, NULL, NULL"
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
///   them (see [`crate::hub::commit`]). A write that fails rolls its batch back
///   and stops the store for good ([`StoreError::CannotWrite`]).
/// - Each batch also counts itself in the `meta` table and, once
///   committed, in the side file `PATH-commits`, so a store that lost
///   commits (its `-wal` deleted) is caught at the next open (see
///   `hub::store_file`).
/// - Ids come from blocks reserved and committed in the `counters` table
///   before any id of the block is handed out, so no id is reused after a
///   crash; the next block is reserved in the background when half of the
///   current one is used.
/// - Requests and results are stored without what the file holds
///   elsewhere (a job's command in each of its requests, a worker's host
///   and slot in each result; see `stored.rs`), and every read gives back
///   the bytes the hub was given.
/// - Dropping the store commits everything queued and stops the writer.
///
/// One hub writes a store file at a time (it keeps the set of job ids in
/// memory to refuse tasks for unknown jobs at once); another `SqliteStore`
/// on the same file can read it, and id reservations stay disjoint. Numbers
/// must fit SQLite's signed 64-bit integers ([`StoreError::TooLarge`]) and
/// times must lie within about ±146 years of 1970
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
    /// Each job's tasks by state, moved as writes are queued; `None` when
    /// they must be counted in the file again (see `counts.rs`).
    counts: Option<LiveCounts>,
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

mod counts;
pub(crate) mod files;
mod fold;
mod ids;
mod maintenance;
mod schema;
mod sql;
mod stored;
mod writer;

#[cfg(test)]
mod forms_tests;
#[cfg(test)]
mod origins_tests;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::Sender;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::error::ErrorChain;
use super::state::{Change, Outcome};
use super::types::{Selection, TaskRange};
use super::{
    CommitLog, EngineCounts, EngineId, Finished, JobId, JobRecord, JobSummary, NewTask, Store,
    StoreError, StoreOptions, TaskFilter, TaskId, TaskRecord, TaskState,
};
use counts::{recount, LiveCounts};
use files::{CommitRecord, Contents, Found};
use ids::{counter_floor, Counter, ENGINE_BLOCK, JOB_BLOCK, TASK_BLOCK};
use maintenance::{purge_completed_in, purge_engine_in, purge_job_in, reset_in};
use schema::{check_version, migrate, open_connection};
use sql::{column_u64, completed_states, job_row, sql_int, sqlite_error, task_row, time_to_sql};
use writer::{
    await_reply, call_async, call_with_codec_async, checkpoint_at_the_bound, run_checkpointer,
    run_writer, Op, SqlTask, Write, CHECKPOINT_PAGES, INLINE_CHECKPOINT_PAGES,
    JOURNAL_SIZE_LIMIT_BYTES, QUEUE_CAPACITY,
};

/// Page cache of the writer connection, KiB. Writes append (new rows,
/// updates of recent ones), so a small cache serves them; it is also the
/// part of the hub's memory that grows with the store until it is full, so
/// small keeps the hub's memory flat early.
const WRITER_CACHE_KIB: i64 = 8 * 1024;
/// Ids per `WHERE id IN (...)` query.
const IDS_PER_QUERY: usize = 500;

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
        let found = files::prepare(&path)?;
        let recorded = match files::read_record(&path) {
            Ok(recorded) => recorded,
            Err(error) if options.accept_rollback => {
                tracing::warn!(error = %ErrorChain(&error), "task store: carrying on without the damaged commit record, as asked");
                None
            }
            Err(error) => return Err(error),
        };
        let rolled_back = |found, recorded| StoreError::RolledBack {
            path: path.clone(),
            record: files::record_path(&path),
            found,
            recorded,
        };
        let mut write = open_connection(&path)?;
        if found == Found::Existing {
            match (files::recognise(&write, &path)?, recorded) {
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
        let (store_id, commits) = files::stored_position(&write, &path)?;
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

        write
            .pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)
            .map_err(sqlite_error("limiting the WAL file's size"))?;
        let checkpointer = {
            let (wanted, wants) = crossbeam_channel::bounded(1);
            write
                .wal_hook(Some(
                    move |wal: &mut rusqlite::hooks::Wal, pages: std::os::raw::c_int| {
                        // Whatever a checkpoint meets (one already running,
                        // a full disk) says nothing of the commit that
                        // called this hook: never fail it.
                        if pages >= INLINE_CHECKPOINT_PAGES {
                            checkpoint_at_the_bound(wal);
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
            counts: None,
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
        let queued = self.stopped().and_then(|()| {
            self.ops
                .send(Op::Write(write))
                .map_err(|_| StoreError::WriterGone)
        });
        if queued.is_err() {
            // Moved for a write that will not be made.
            self.counts = None;
        }
        queued?;
        self.dirty = true;
        self.written += 1;
        Ok(())
    }

    /// Queues an engine's event for `task`, and moves the counts as the
    /// writer's guard will decide it.
    fn event(
        &mut self,
        task: TaskId,
        change: Change<i64, i64, Vec<u8>, String>,
    ) -> Result<(), StoreError> {
        let event = change.event();
        self.write(Write::Event {
            task: sql_int("task id", task)?,
            change,
        })?;
        if let Some(counts) = &mut self.counts {
            counts.event(task, event);
        }
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

    /// [`Self::call`] for a call that also needs the writer's codec (a
    /// purge, which makes it forget the rows it deletes).
    fn call_with_codec<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Connection, &mut stored::Codec) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.flush()?;
        await_reply(&call_with_codec_async(&self.ops, &self.log, f)?)
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

    /// Every job's counts as the file holds them, counted again (after a
    /// flush) while the live counts stay as they are: for tests that check
    /// the live counts against the file.
    #[cfg(test)]
    pub(super) fn recounted(&mut self) -> Result<Vec<JobSummary>, StoreError> {
        Ok(self
            .read(|| "counting jobs' tasks".to_string(), recount)?
            .summaries())
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
        if let Some(counts) = &mut self.counts {
            counts.add_job(job);
        }
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
        self.write(write)?;
        if let Some(counts) = &mut self.counts {
            counts.set_total(job, total);
        }
        Ok(())
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
        if let Some(counts) = &mut self.counts {
            // (Ids and jobs came from u64s: never negative.)
            for row in &rows {
                counts.add_task(row.id.unsigned_abs(), row.job.unsigned_abs());
            }
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
        let change = Change::Start {
            engine: sql_int("engine id", engine)?,
            started: time_to_sql("task start time", started)?,
            attempts,
        };
        self.event(task, change)
    }

    fn task_requeued(&mut self, task: TaskId) -> Result<(), StoreError> {
        self.event(task, Change::Requeue)
    }

    fn task_finished(&mut self, task: TaskId, finished: Finished) -> Result<(), StoreError> {
        if !finished.status.is_completed() {
            return Err(StoreError::InvalidFinish {
                task,
                state: finished.status,
            });
        }
        let change = Change::Finish(Outcome {
            state: finished.status,
            completed: time_to_sql("task completion time", finished.completed)?,
            engine: sql_int("engine id", finished.engine)?,
            result: finished.result,
            error: finished.error,
            attempts: finished.attempts,
        });
        self.event(task, change)
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
        // A store stopped at a failed write counts what was committed.
        if self.log.failure().is_some() {
            self.counts = None;
        }
        if self.counts.is_none() {
            let counted = self.read(|| "counting jobs' tasks".to_string(), recount)?;
            self.counts = Some(counted);
        }
        Ok(self
            .counts
            .as_ref()
            .map_or_else(Vec::new, LiveCounts::summaries))
    }

    fn tasks(
        &mut self,
        filter: &TaskFilter,
        with_payloads: bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        match filter.selection() {
            Selection::Range(job, range) => self.job_range(job, &range, with_payloads),
            Selection::Ids(ids) => {
                let ids: Vec<i64> = ids
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
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT engine,
                            COUNT(CASE WHEN state = '{}' THEN 1 END),
                            COUNT(CASE WHEN state IN ({}) THEN 1 END)
                     FROM tasks WHERE engine IS NOT NULL
                     GROUP BY engine ORDER BY engine",
                    TaskState::Running,
                    completed_states(true)
                ))?;
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
                conn.prepare_cached(&format!(
                    "SELECT {} FROM tasks WHERE state IN ({}) ORDER BY job, seq, id",
                    task_columns!(payloads),
                    completed_states(false)
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
        self.counts = None;
        let removed = self.call_with_codec(move |conn, codec| purge_job_in(conn, codec, job))?;
        self.jobs.remove(&job);
        Ok(removed)
    }

    fn purge_engine(&mut self, engine: EngineId) -> Result<u64, StoreError> {
        self.counts = None;
        self.call_with_codec(move |conn, codec| purge_engine_in(conn, codec, engine))
    }

    fn purge_completed(&mut self) -> Result<u64, StoreError> {
        self.counts = None;
        let (removed, jobs) = self.call_with_codec(purge_completed_in)?;
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
        self.counts = None;
        let ids = ids.map(<[TaskId]>::to_vec);
        self.call(move |conn| reset_in(conn, job, ids))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}
