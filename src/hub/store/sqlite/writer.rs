//! The SQLite store's writer thread and its queue: writes are queued by the
//! hub's thread and committed here in batches, one transaction each; each
//! commit moves the store's [`CommitLog`] on (where a write is committed:
//! [`commit_batch`]).

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use rusqlite::Connection;

use super::files::CommitRecord;
use super::fold::{Fold, CARRY_AT_MOST};
use super::sql::{sql_int, sqlite_error};
use super::stored::Codec;
use crate::hub::commit::CommitLog;
use crate::hub::store::error::ErrorChain;
use crate::hub::store::state::Change;
use crate::hub::store::StoreError;

/// WAL pages after a commit past which the WAL is copied into the database
/// file (a checkpoint): SQLite's own default, but done on a thread of its
/// own. SQLite would do it inside the commit that crosses it, with two
/// fsyncs, and the hub waits for commits before it lets tasks and results
/// out (`hub::commit`): one round trip in a hundred would take the fsyncs'
/// time.
pub(super) const CHECKPOINT_PAGES: std::os::raw::c_int = 1000;
/// ...and past which the writer checkpoints in line after all, should the
/// checkpoint thread fall behind (writes that never pause leave it no
/// moment to finish a pass, so the WAL never starts over): the WAL stays
/// bounded. This checkpoint waits for the thread's pass rather than give
/// up on meeting it, and truncates the WAL.
pub(super) const INLINE_CHECKPOINT_PAGES: std::os::raw::c_int = 16 * CHECKPOINT_PAGES;

/// What the WAL file is cut back to when it starts over: a burst that grew
/// it does not keep the disk space after.
pub(super) const JOURNAL_SIZE_LIMIT_BYTES: i64 = 16 << 20;

/// How long the writer waits, at [`INLINE_CHECKPOINT_PAGES`], for the
/// checkpoint thread's pass to let go of the checkpoint lock.
const INLINE_CHECKPOINT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The writer's checkpoint at [`INLINE_CHECKPOINT_PAGES`], from its commit
/// hook: copies the whole WAL into the database file and truncates it. The
/// checkpoint thread's pass, which the commits outran, holds the checkpoint
/// lock and makes SQLite answer "busy" at once: the writer waits for it
/// (the back-pressure a disk that cannot keep up must give) rather than
/// give up and let the WAL grow on. Any other failure (a full disk) says
/// nothing of the commit and is left to the next one.
pub(super) fn checkpoint_at_the_bound(wal: &mut rusqlite::hooks::Wal) {
    let deadline = std::time::Instant::now() + INLINE_CHECKPOINT_PATIENCE;
    loop {
        match wal.checkpoint_v2(rusqlite::wal::CheckpointMode::TRUNCATE) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(error) => {
                tracing::debug!(%error, "task store: the checkpoint at the WAL's bound failed");
                return;
            }
            Ok(_) => return,
        }
    }
}

/// Queued operations before `add_tasks` and friends block (back-pressure
/// instead of unbounded memory if the disk cannot keep up).
pub(super) const QUEUE_CAPACITY: usize = 16 * 1024;
/// Rows written per transaction at most, so a flush never waits behind an
/// unbounded batch.
pub(super) const MAX_BATCH_ROWS: usize = 4096;

/// A write, its values already converted (and range-checked) on the caller's thread.
pub(super) enum Write {
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
    /// A start, requeue or finish of a task.
    Event {
        task: i64,
        change: SqlChange,
    },
}

/// An engine's event as the SQLite store queues it: ids and times as SQL
/// integers.
pub(super) type SqlChange = Change<i64, i64, Vec<u8>, String>;

pub(super) struct SqlTask {
    pub(super) id: i64,
    pub(super) job: i64,
    pub(super) seq: i64,
    pub(super) request: Vec<u8>,
    pub(super) submitted: i64,
}

impl Write {
    pub(super) fn rows(&self) -> usize {
        match self {
            Write::AddTasks(tasks) => tasks.len(),
            _ => 1,
        }
    }

    /// The task a start, requeue or finish is about.
    pub(super) fn task(&self) -> Option<i64> {
        match self {
            Write::Event { task, .. } => Some(*task),
            _ => None,
        }
    }
}

/// Runs on the writer thread after everything queued before it is committed,
/// in its own transaction if it writes; it sends its own reply. It is given
/// the writer's [`Codec`] too, so that a purge that deletes rows the codec
/// remembers (origins, reference requests) makes it forget them.
pub(super) type Call = Box<dyn FnOnce(&mut Connection, &mut Codec) + Send>;

pub(super) enum Op {
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
pub(super) struct BatchErrors {
    first: std::cell::RefCell<Option<StoreError>>,
    more: std::cell::Cell<u64>,
}

impl BatchErrors {
    pub(super) fn report(&self, error: StoreError) {
        let mut first = self.first.borrow_mut();
        if first.is_none() {
            *first = Some(error);
        } else {
            self.more.set(self.more.get() + 1);
        }
    }

    pub(super) fn any(&self) -> bool {
        self.first.borrow().is_some()
    }

    /// The first failure, and how many more there were.
    pub(super) fn take(self) -> Option<(StoreError, u64)> {
        self.first
            .into_inner()
            .map(|first| (first, self.more.get()))
    }
}

/// Queues `f` to run on the writer thread after everything queued before
/// it; on a store stopped at a failed write it answers with the failure
/// instead of running.
pub(super) fn call_async<T: Send + 'static>(
    ops: &Sender<Op>,
    log: &Arc<CommitLog>,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<Receiver<Result<T, StoreError>>, StoreError> {
    call_with_codec_async(ops, log, move |conn, _| f(conn))
}

/// [`call_async`] for a call that also needs the writer's [`Codec`].
pub(super) fn call_with_codec_async<T: Send + 'static>(
    ops: &Sender<Op>,
    log: &Arc<CommitLog>,
    f: impl FnOnce(&mut Connection, &mut Codec) -> Result<T, StoreError> + Send + 'static,
) -> Result<Receiver<Result<T, StoreError>>, StoreError> {
    let (reply, replies) = crossbeam_channel::bounded(1);
    let log = Arc::clone(log);
    let call: Call = Box::new(move |conn, codec| {
        let answer = match log.failure() {
            Some(failure) => Err(StoreError::CannotWrite(Arc::clone(failure))),
            None => f(conn, codec),
        };
        // The caller may have gone (dropped store): nobody to tell.
        let _ = reply.send(answer);
    });
    ops.send(Op::Call(call))
        .map_err(|_| StoreError::WriterGone)?;
    Ok(replies)
}

pub(super) fn await_reply<T>(replies: &Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    replies.recv().map_err(|_| StoreError::WriterGone)?
}

/// The writer thread: applies queued writes, one transaction per batch;
/// after each commit, saves the store's commit count in the side file and
/// moves the commit log on. The first batch that fails is rolled back and
/// stops the store: later writes are dropped (they would build on the lost
/// ones), and calls answer with the failure.
pub(super) fn run_writer(
    mut conn: Connection,
    ops: Receiver<Op>,
    log: Arc<CommitLog>,
    mut record: CommitRecord,
) {
    // Starts carried from one batch to the next (see `Fold::flush_carrying`),
    // and when they are committed alone at the latest, should nothing come.
    let mut fold = Fold::default();
    let mut carry_until: Option<Instant> = None;
    loop {
        let next = match carry_until {
            Some(deadline) => match ops.recv_deadline(deadline) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Op::Shutdown),
            },
            None => match ops.recv() {
                Ok(op) => Some(op),
                Err(_) => Some(Op::Shutdown),
            },
        };
        let first = match next {
            Some(Op::Write(write)) => write,
            // Nothing came for a while, or a call or the end comes: what
            // is carried is committed first.
            None => {
                commit_carried(&conn, &mut fold, &mut record, &log);
                carry_until = None;
                continue;
            }
            Some(Op::Call(call)) => {
                commit_carried(&conn, &mut fold, &mut record, &log);
                carry_until = None;
                call(&mut conn, &mut fold.codec);
                continue;
            }
            Some(Op::Shutdown) => {
                commit_carried(&conn, &mut fold, &mut record, &log);
                break;
            }
            #[cfg(test)]
            Some(Op::Crash) => return,
        };
        let mut rows = first.rows();
        // Room for what is queued already: a batch grown one push at a
        // time reallocated about once per task.
        let mut batch = Vec::with_capacity(1 + ops.len().min(MAX_BATCH_ROWS));
        batch.push(first);
        let mut call = None;
        let mut stop = false;
        while rows < MAX_BATCH_ROWS {
            match ops.try_recv() {
                Ok(Op::Write(write)) => {
                    rows += write.rows();
                    batch.push(write);
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
        let writes = batch.len() as u64;
        // Starts alone (an idle hub's task just sent to its engine): held
        // to go with their finishes, with no transaction of their own.
        // Counted as committed, as a carried start always was; nothing
        // waits on a start, so the hub is not woken for them.
        let batch = if call.is_none() && !stop && log.failure().is_none() {
            match fold.carry_starts(batch) {
                Ok(()) => {
                    log.advance_quietly(writes);
                    carry_until.get_or_insert_with(|| Instant::now() + CARRY_AT_MOST);
                    continue;
                }
                Err(batch) => batch,
            }
        } else {
            batch
        };
        let errors = BatchErrors::default();
        let begun = match log.failure() {
            Some(_) => false,
            None => match run_cached(&conn, "BEGIN IMMEDIATE") {
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
        if begun {
            for write in batch {
                fold.apply(&conn, write, &errors);
            }
            // Before a call or the end, nothing is carried.
            if call.is_some() || stop {
                fold.flush(&conn, &errors);
            } else {
                fold.flush_carrying(&conn, &errors);
            }
            commit_batch(&conn, &mut record, &log, writes, rows, errors);
        } else {
            fold = Fold::default();
            stop_store(&log, writes, errors);
        }
        carry_until = fold.carries().then(|| Instant::now() + CARRY_AT_MOST);
        if let Some(call) = call {
            call(&mut conn, &mut fold.codec);
        }
        if stop {
            break;
        }
    }
}

/// Runs a batch's BEGIN or COMMIT from the connection's statement cache:
/// `execute_batch` parses its text again each time, which was 7% of the
/// writer's instructions at an idle hub (two commits per task).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Commits the starts `fold` carries, alone, if it carries any and the
/// store has not stopped (then they are dropped, as every later write is).
fn commit_carried(conn: &Connection, fold: &mut Fold, record: &mut CommitRecord, log: &CommitLog) {
    if !fold.carries() {
        return;
    }
    if log.failure().is_some() {
        *fold = Fold::default();
        return;
    }
    let errors = BatchErrors::default();
    match run_cached(conn, "BEGIN IMMEDIATE") {
        Ok(()) => {
            fold.flush(conn, &errors);
            // The writes were counted in the batch they came in.
            commit_batch(conn, record, log, 0, 0, errors);
        }
        Err(source) => {
            *fold = Fold::default();
            errors.report(StoreError::Sqlite {
                operation: "beginning a commit of carried task starts".into(),
                source,
            });
            stop_store(log, 0, errors);
        }
    }
}

/// The checkpoint thread: copies the WAL into the database file each time
/// the writer's hook asks (the WAL passed [`CHECKPOINT_PAGES`]), without
/// waiting for readers or the writer (a passive checkpoint), so commits
/// never wait for its fsyncs. Ends when the writer's connection, which
/// holds the hook and so the other end of `wants`, is closed.
pub(super) fn run_checkpointer(conn: Connection, wants: Receiver<()>) {
    while wants.recv().is_ok() {
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(%error, "task store: a checkpoint failed; the next one copies what it did not");
        }
    }
}

/// Ends the writer's open batch of `writes` queued writes: commits it if
/// every write went in (counting the commit in the store and in its side
/// file, then moving the log on), or rolls it back and stops the store.
pub(super) fn commit_batch(
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
        match run_cached(conn, "COMMIT") {
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
pub(super) fn stop_store(log: &CommitLog, writes: u64, errors: BatchErrors) {
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
