//! The writer's fold: the writes of one batch, folded per task into one
//! statement each.

use std::sync::LazyLock;

use rusqlite::{params_from_iter, CachedStatement, Connection, ToSql};

use super::ids::{IdMap, IdSet};
use super::sql::{apply, guard, note_ignored};
use super::stored::Codec;
use super::writer::{BatchErrors, SqlTask, Write};
use crate::hub::store::state::{ignored, Change, Progress};
use crate::hub::store::{StoreError, TaskEvent};

/// A task whose writes in the writer's current batch are held and folded:
/// one inserted in this batch, or one whose start came in this batch, with
/// the events that followed.
pub(super) struct Folded {
    /// The task.
    id: i64,
    /// The insert, for a task new in this batch; `None` for a task already
    /// in the table, whose first held event is its start.
    insert: Option<SqlTask>,
    events: Vec<Write>,
    /// Held past a commit already (see [`Fold::flush_carrying`]).
    carried: bool,
}

/// The columns a task's held events leave, applied in order from a
/// pending task by the state machine both stores share. A held start
/// applies under the same guard as its SQL (`sql::guard` of
/// [`TaskEvent::Start`]), so after it the state is known and every later
/// event is decided here as SQL would decide it.
pub(super) type FinalRow<'a> = Progress<i64, i64, &'a [u8], &'a str>;

impl Folded {
    fn final_row(&self) -> FinalRow<'_> {
        let mut row = FinalRow::new();
        for event in &self.events {
            let Write::Event { change, .. } = event else {
                continue;
            };
            if let Err(refused) = row.apply(change.borrowed()) {
                ignored(
                    refused.event.name(),
                    self.id.unsigned_abs(),
                    Some(refused.state),
                );
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
/// written as one UPDATE (guarded as the start is, by the states a start
/// applies in: a task a purge or another finish has completed meanwhile is
/// left alone, as unfolded). Other writes go to SQL in order,
/// as before; they cannot touch the held tasks. Should a folded INSERT fail
/// (its id taken: a bug elsewhere), its events are applied one by one after
/// all, as they would have been unfolded.
#[derive(Default)]
pub(super) struct Fold {
    held: IdMap<Folded>,
    /// Order in which tasks were first held.
    order: Vec<i64>,
    /// Payload bytes held; past [`FOLD_BYTES`] the held tasks are written
    /// out at once (still in the batch's transaction).
    bytes: usize,
    /// Puts requests and results in their stored forms as they are written.
    pub(super) codec: Codec,
}

/// Most payload bytes the writer holds back for folding.
pub(super) const FOLD_BYTES: usize = 64 << 20;

/// Longest a carried start waits for more writes before the writer
/// commits it alone (see [`Fold::flush_carrying`]).
pub(super) const CARRY_AT_MOST: std::time::Duration = std::time::Duration::from_millis(50);

impl Fold {
    pub(super) fn apply(&mut self, conn: &Connection, write: Write, errors: &BatchErrors) {
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
                    carried: false,
                });
            }
            return self.flush_if_full(conn, errors);
        }
        let Some(id) = write.task() else {
            return apply(conn, &mut self.codec, write, errors);
        };
        if let Some(held) = self.held.get_mut(&id) {
            if let Write::Event {
                change: Change::Finish(outcome),
                ..
            } = &write
            {
                self.bytes += outcome.result.len() + outcome.error.as_ref().map_or(0, String::len);
            }
            held.events.push(write);
            self.flush_if_full(conn, errors);
        } else if matches!(
            write,
            Write::Event {
                change: Change::Start { .. },
                ..
            }
        ) {
            self.hold(Folded {
                id,
                insert: None,
                events: vec![write],
                carried: false,
            });
        } else {
            apply(conn, &mut self.codec, write, errors);
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

    /// Writes the held tasks at the end of a batch, but carries a task
    /// whose only write is a start (one started in this batch, not yet
    /// finished) into the next batch, once: a short task's finish comes in
    /// the next batch or so, and the two are then one UPDATE instead of
    /// two. Nothing waits on a start's commit (the hub holds tasks for
    /// their insert and results for their finish, which a carried start
    /// goes with), and a restarted hub treats a running task as pending:
    /// a start lost in a crash costs the task's record that one attempt
    /// count, as one in the open batch always could. The writer writes
    /// what is carried before any call (so a flush or a read sees it) and
    /// once the queue stays empty for [`CARRY_AT_MOST`].
    pub(super) fn flush_carrying(&mut self, conn: &Connection, errors: &BatchErrors) {
        let mut statements = Statements::default();
        let mut carried = Vec::new();
        self.bytes = 0;
        for id in std::mem::take(&mut self.order) {
            let Some(mut folded) = self.held.remove(&id) else {
                continue;
            };
            if folded.insert.is_none() && folded.events.len() == 1 && !folded.carried {
                folded.carried = true;
                carried.push(folded);
            } else {
                write_folded(conn, &mut self.codec, &mut statements, folded, errors);
            }
        }
        statements.write_inserts(conn, &mut self.codec, errors);
        for folded in carried {
            self.hold(folded);
        }
    }

    /// Holds a batch made only of starts, each of a task not held yet,
    /// without a statement, as starts already carried once (so the next
    /// batch writes them, folded with a finish if one came), and gives any
    /// other batch back untouched. This is an idle hub's batch between a
    /// task's dispatch and its result: committed alone, it would cost a
    /// transaction (and the meta page and side file a commit writes) while
    /// the task runs, on the cores the task and its result need.
    pub(super) fn carry_starts(&mut self, batch: Vec<Write>) -> Result<(), Vec<Write>> {
        let mut tasks = IdSet::with_capacity_and_hasher(batch.len(), Default::default());
        let starts_only = batch.iter().all(|write| match write {
            Write::Event {
                task,
                change: Change::Start { .. },
            } => !self.held.contains_key(task) && tasks.insert(*task),
            _ => false,
        });
        if !starts_only {
            return Err(batch);
        }
        for write in batch {
            if let Some(id) = write.task() {
                self.hold(Folded {
                    id,
                    insert: None,
                    events: vec![write],
                    carried: true,
                });
            }
        }
        Ok(())
    }

    /// Whether starts are carried (see [`flush_carrying`](Self::flush_carrying)).
    pub(super) fn carries(&self) -> bool {
        !self.held.is_empty()
    }

    /// Writes the held tasks, in the order they were first held.
    pub(super) fn flush(&mut self, conn: &Connection, errors: &BatchErrors) {
        self.bytes = 0;
        let mut statements = Statements::default();
        for id in std::mem::take(&mut self.order) {
            if let Some(folded) = self.held.remove(&id) {
                write_folded(conn, &mut self.codec, &mut statements, folded, errors);
            }
        }
        statements.write_inserts(conn, &mut self.codec, errors);
    }
}

/// The statements of [`write_folded`], taken from the connection's cache
/// once per flush rather than once per task: a cache lookup hashes the
/// whole SQL text, which was a few percent of the writer per task. And the
/// held tasks' inserts, written at the end of the flush by
/// [`write_inserts`](Self::write_inserts), many rows a statement.
#[derive(Default)]
pub(super) struct Statements<'conn> {
    update: Option<CachedStatement<'conn>>,
    /// The multi-row inserts, one per size of [`INSERT_ROWS`].
    inserts_of: [Option<CachedStatement<'conn>>; INSERT_SIZES],
    inserts: Vec<Insert>,
}

/// Rows of the largest multi-row INSERT; smaller ones have each power of
/// two below it, so that any number of rows is written in at most
/// `INSERT_SIZES` statements beyond `n / INSERT_ROWS`.
///
/// One statement per task cost the writer about 4.4k instructions per
/// task more (SQLite's per-statement work: reset, the VDBE's start,
/// opening the table's and indexes' cursors, the foreign key's check
/// set up), measured by callgrind on the writer's SQL alone at 300k
/// tasks in the file: 29.0k → 24.6k per task (insert and finish).
/// 64 rows of 13 columns are 832 parameters, far below SQLite's limit.
pub(super) const INSERT_ROWS: usize = 64;
const INSERT_SIZES: usize = INSERT_ROWS.trailing_zeros() as usize + 1;

/// Inserts held tasks new in this batch with their final rows: the
/// statement for `rows` of them (`rows` a power of two up to
/// [`INSERT_ROWS`]; one row is `?1` to `?13`).
fn insert_sql(rows: usize) -> &'static str {
    static SQL: LazyLock<[String; INSERT_SIZES]> = LazyLock::new(|| {
        std::array::from_fn(|size| {
            let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
            format!(
                "INSERT INTO tasks (id, job, seq, request, submitted, state, engine, started,
                                    completed, result, error, attempts, origin)
                 VALUES {}",
                vec![row; 1 << size].join(", ")
            )
        })
    });
    debug_assert!(rows.is_power_of_two() && rows <= INSERT_ROWS);
    &SQL[rows.trailing_zeros() as usize]
}

/// A held task's insert, its final row ready to bind, and its events,
/// applied one by one should its insert fail.
pub(super) struct Insert {
    /// The task, its request in its stored form.
    task: SqlTask,
    state: crate::hub::store::TaskState,
    engine: Option<i64>,
    /// Started and completed, as offsets from the submission.
    times: [Option<i64>; 2],
    result: Option<Vec<u8>>,
    error: Option<String>,
    attempts: u32,
    origin: Option<i64>,
    events: Vec<Write>,
}

impl Insert {
    fn params(&self) -> [&dyn ToSql; 13] {
        let task = &self.task;
        [
            &task.id,
            &task.job,
            &task.seq,
            &task.request,
            &task.submitted,
            &self.state,
            &self.engine,
            &self.times[0],
            &self.times[1],
            &self.result,
            &self.error,
            &self.attempts,
            &self.origin,
        ]
    }
}

impl<'conn> Statements<'conn> {
    /// Writes the held inserts, [`INSERT_ROWS`] a statement, in the order
    /// they were held. Should a statement fail (an id taken: a bug
    /// elsewhere), SQLite undoes that statement alone, and its rows are
    /// written one by one, as unfolded, so the one that fails is told and
    /// its events applied after all, as [`write_folded`] always did.
    pub(super) fn write_inserts(
        &mut self,
        conn: &'conn Connection,
        codec: &mut Codec,
        errors: &BatchErrors,
    ) {
        let mut inserts = std::mem::take(&mut self.inserts);
        let mut rest = &mut inserts[..];
        while !rest.is_empty() {
            let rows = if rest.len() >= INSERT_ROWS {
                INSERT_ROWS
            } else {
                1 << rest.len().ilog2()
            };
            let (chunk, after) = std::mem::take(&mut rest).split_at_mut(rows);
            rest = after;
            let slot = &mut self.inserts_of[rows.trailing_zeros() as usize];
            let written = statement(conn, slot, insert_sql(rows))
                .and_then(|s| s.execute(params_from_iter(chunk.iter().flat_map(Insert::params))));
            if written.is_err() {
                self.write_one_by_one(conn, codec, chunk, errors);
            }
        }
    }

    fn write_one_by_one(
        &mut self,
        conn: &'conn Connection,
        codec: &mut Codec,
        chunk: &mut [Insert],
        errors: &BatchErrors,
    ) {
        for insert in chunk {
            let written = statement(conn, &mut self.inserts_of[0], insert_sql(1))
                .and_then(|s| s.execute(params_from_iter(insert.params())));
            if let Err(source) = written {
                let events = std::mem::take(&mut insert.events);
                insert_failed(conn, codec, &insert.task, source, events, errors);
            }
        }
    }
}

/// A new task's insert failed: the failure is told, and the task's
/// events are applied one by one, as they would have been unfolded.
fn insert_failed(
    conn: &Connection,
    codec: &mut Codec,
    task: &SqlTask,
    source: rusqlite::Error,
    events: Vec<Write>,
    errors: &BatchErrors,
) {
    errors.report(StoreError::Sqlite {
        operation: format!(
            "recording task {} (job {}, seq {})",
            task.id, task.job, task.seq
        ),
        source,
    });
    for event in events {
        apply(conn, codec, event, errors);
    }
}

/// `slot`'s statement, prepared (from the cache) the first time.
fn statement<'s, 'conn>(
    conn: &'conn Connection,
    slot: &'s mut Option<CachedStatement<'conn>>,
    sql: &str,
) -> rusqlite::Result<&'s mut CachedStatement<'conn>> {
    let prepared = match slot.take() {
        Some(prepared) => prepared,
        None => conn.prepare_cached(sql)?,
    };
    Ok(slot.insert(prepared))
}

/// Writes the final row of a held task already in the table (`?1`): its
/// first held event is a start, so the start's guard applies.
static FOLDED_UPDATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET state = ?2, engine = ?3, started = ?4 - submitted,
                          completed = ?5 - submitted, result = ?6, error = ?7, attempts = ?8,
                          origin = ?9
         WHERE id = ?1 AND {}",
        guard(TaskEvent::Start)
    )
});

/// The columns of a final row, in the order the INSERT and the UPDATE of
/// [`write_folded`] name them after the task's own: its times (as the
/// statement takes them), its result in its stored form, and that form's
/// origin.
fn columns<'a>(
    row: &'a FinalRow<'_>,
    times: &'a [Option<i64>; 2],
    result: &'a Option<Vec<u8>>,
    origin: &'a Option<i64>,
) -> [&'a dyn ToSql; 8] {
    [
        &row.state,
        &row.engine,
        &times[0],
        &times[1],
        result,
        &row.error,
        &row.attempts,
        origin,
    ]
}

/// A final row's result in its stored form, and that form's origin.
fn stored_result(
    conn: &Connection,
    codec: &mut Codec,
    row: &FinalRow<'_>,
) -> rusqlite::Result<(Option<Vec<u8>>, Option<i64>)> {
    match (row.result, row.completed) {
        (Some(result), Some(completed)) => codec
            .result(conn, result, completed)
            .map(|(stored, origin)| (Some(stored), origin)),
        (Some(result), None) => Ok((Some(super::stored::raw(result)), None)),
        (None, _) => Ok((None, None)),
    }
}

/// Writes one folded task: an UPDATE of an existing row to its final row,
/// or, for a task new in this batch, an INSERT of it, held in `statements`
/// to go with others (see [`Statements::write_inserts`]).
pub(super) fn write_folded<'conn>(
    conn: &'conn Connection,
    codec: &mut Codec,
    statements: &mut Statements<'conn>,
    folded: Folded,
    errors: &BatchErrors,
) {
    let id = folded.id;
    let row = folded.final_row();
    let stored = stored_result(conn, codec, &row);
    if let Some(task) = &folded.insert {
        let insert = stored.and_then(|(result, origin)| {
            Ok(Insert {
                task: SqlTask {
                    id: task.id,
                    job: task.job,
                    seq: task.seq,
                    request: codec.request(conn, task.job, &task.request)?,
                    submitted: task.submitted,
                },
                state: row.state,
                engine: row.engine,
                // Offsets from the submission, as the UPDATEs store them
                // (both times within TIME_RANGE_NANOS of 1970: no overflow).
                times: [row.started, row.completed].map(|t| t.map(|t| t - task.submitted)),
                result,
                error: row.error.map(str::to_owned),
                attempts: row.attempts,
                origin,
                events: Vec::new(),
            })
        });
        match insert {
            Ok(mut insert) => {
                insert.events = folded.events;
                statements.inserts.push(insert);
            }
            Err(source) => insert_failed(conn, codec, task, source, folded.events, errors),
        }
        return;
    }
    let written = stored.and_then(|(result, origin)| {
        let s = statement(conn, &mut statements.update, &FOLDED_UPDATE_SQL)?;
        let id: &dyn ToSql = &id;
        let times = [row.started, row.completed];
        s.execute(params_from_iter(
            std::iter::once(id).chain(columns(&row, &times, &result, &origin)),
        ))
    });
    match written {
        Ok(0) => note_ignored(conn, TaskEvent::Start, id),
        Ok(_) => {}
        Err(source) => errors.report(StoreError::Sqlite {
            operation: format!("recording the start of task {}", id),
            source,
        }),
    }
}

#[cfg(test)]
#[path = "fold_tests.rs"]
mod tests;
