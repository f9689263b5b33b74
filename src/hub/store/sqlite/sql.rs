//! The SQL of each queued write, and the conversions between the store's
//! values and SQLite's (signed 64-bit integers, nanoseconds since 1970).

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql};

use super::stored::{load_request, load_result, Codec, StoredFormError};
use super::writer::{BatchErrors, Write};
use crate::hub::store::state::ignored;
use crate::hub::store::state::Change;
use crate::hub::store::{JobRecord, StoreError, TaskEvent, TaskRecord, TaskState};

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

pub(super) fn sqlite_error(
    operation: impl Into<String>,
) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let operation = operation.into();
    move |source| StoreError::Sqlite { operation, source }
}

pub(super) fn sql_int(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::TooLarge { what, value })
}

/// Largest distance from 1970 of a stored time, ns: half of SQLite's
/// integer range, so that the difference of any two stored times is an
/// integer too (a task's start and completion are stored as offsets from
/// its submission, see `schema::V3_SCHEMA`). About 146 years.
pub(super) const TIME_RANGE_NANOS: i64 = i64::MAX / 2;

pub(super) fn time_to_sql(what: &'static str, time: SystemTime) -> Result<i64, StoreError> {
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).ok(),
        Err(before) => i64::try_from(before.duration().as_nanos()).ok().map(|n| -n),
    };
    nanos
        .filter(|n| n.abs() <= TIME_RANGE_NANOS)
        .ok_or(StoreError::TimeOutOfRange { what, time })
}

pub(super) fn time_from_sql(nanos: i64) -> Option<SystemTime> {
    let offset = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
}

pub(super) fn column_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

pub(super) fn column_opt_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    match row.get::<_, Option<i64>>(idx)? {
        None => Ok(None),
        Some(value) => u64::try_from(value)
            .map(Some)
            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value)),
    }
}

pub(super) fn column_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<SystemTime> {
    let nanos: i64 = row.get(idx)?;
    time_from_sql(nanos).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Integer,
            format!("time {nanos} ns from 1970 is out of range").into(),
        )
    })
}

pub(super) fn column_opt_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<SystemTime>> {
    match row.get::<_, Option<i64>>(idx)? {
        None => Ok(None),
        Some(_) => column_time(row, idx).map(Some),
    }
}

/// Reads a row selected with `task_columns!`, its request and result
/// given back from their stored forms.
pub(super) fn task_row(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let unstored = |idx: usize| {
        move |error: StoredFormError| {
            rusqlite::Error::FromSqlConversionFailure(idx, Type::Blob, Box::new(error))
        }
    };
    let request = match row.get_ref(3)?.as_blob_or_null()? {
        None => None,
        Some(stored) => {
            Some(load_request(stored, row.get_ref(12)?.as_blob_or_null()?).map_err(unstored(3))?)
        }
    };
    let result = match row.get_ref(9)?.as_blob_or_null()? {
        None => None,
        Some(stored) => Some(
            load_result(stored, row.get(7)?, row.get_ref(13)?.as_blob_or_null()?)
                .map_err(unstored(9))?,
        ),
    };
    Ok(TaskRecord {
        id: column_u64(row, 0)?,
        job: column_u64(row, 1)?,
        seq: column_u64(row, 2)?,
        request,
        submitted: column_time(row, 4)?,
        engine: column_opt_u64(row, 5)?,
        started: column_opt_time(row, 6)?,
        completed: column_opt_time(row, 7)?,
        state: row.get(8)?,
        result,
        error: row.get(10)?,
        attempts: row.get(11)?,
    })
}

pub(super) fn job_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: column_u64(row, 0)?,
        submitted: column_time(row, 1)?,
        client: row.get(2)?,
        spec: row.get(3)?,
        total: column_opt_u64(row, 4)?,
    })
}

/// The quoted names of `states`, for an SQL `IN (...)` list.
pub(super) fn state_list(states: impl IntoIterator<Item = TaskState>) -> String {
    let names: Vec<String> = states.into_iter().map(|s| format!("'{s}'")).collect();
    names.join(", ")
}

/// The states that are completed (or, with `false`, not yet), as an SQL
/// list from [`TaskState::is_completed`]: purges remove completed tasks
/// only, and a restarted hub carries on the others.
pub(super) fn completed_states(completed: bool) -> String {
    state_list(
        TaskState::ALL
            .into_iter()
            .filter(|s| s.is_completed() == completed),
    )
}

/// `state IN (...)`: the states `event` applies in, as [`TaskState::apply`]
/// says. Every UPDATE that records an event is guarded by it, so the SQL
/// store allows what the memory store allows, from one definition.
pub(super) fn guard(event: TaskEvent) -> String {
    format!(
        "state IN ({})",
        state_list(event.applies_in().iter().copied())
    )
}

/// Records a start (`?1` task, `?2` engine, `?3` time, `?4` attempts);
/// the time is stored as an offset from the task's submission.
pub(super) static START_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET state = '{}', engine = ?2, started = ?3 - submitted, attempts = ?4
         WHERE id = ?1 AND {}",
        TaskEvent::Start.leads_to(),
        guard(TaskEvent::Start)
    )
});

/// Records a requeue (`?1` task).
pub(super) static REQUEUE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET state = '{}', engine = NULL, started = NULL WHERE id = ?1 AND {}",
        TaskEvent::Requeue.leads_to(),
        guard(TaskEvent::Requeue)
    )
});

/// Records a result (`?1` task, `?2` its completed state, then the
/// columns, the result in its stored form): a finish as ok and one as
/// failed apply in the same states.
pub(super) static FINISH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET state = ?2, result = ?3, error = ?4, completed = ?5 - submitted,
                          engine = ?6, attempts = ?7, origin = ?8
         WHERE id = ?1 AND {}",
        guard(TaskEvent::Finish(TaskState::Ok))
    )
});

/// Applies one write in the writer's open transaction, requests and
/// results in their stored forms (`codec`); failures go to `errors`.
pub(super) fn apply(conn: &Connection, codec: &mut Codec, write: Write, errors: &BatchErrors) {
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
                if let Err(e) = codec
                    .request(conn, task.job, &task.request)
                    .and_then(|request| {
                        insert.execute(params![
                            task.id,
                            task.job,
                            task.seq,
                            request,
                            task.submitted
                        ])
                    })
                {
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
        Write::Event { task, change } => {
            let event = change.event();
            let (written, what) = match change {
                Change::Start {
                    engine,
                    started,
                    attempts,
                } => (
                    conn.prepare_cached(&START_SQL)
                        .and_then(|mut s| s.execute(params![task, engine, started, attempts])),
                    "start",
                ),
                Change::Requeue => (
                    conn.prepare_cached(&REQUEUE_SQL)
                        .and_then(|mut s| s.execute([task])),
                    "requeue",
                ),
                Change::Finish(outcome) => (
                    codec
                        .result(conn, &outcome.result, outcome.completed)
                        .and_then(|(result, origin)| {
                            conn.prepare_cached(&FINISH_SQL)?.execute(params![
                                task,
                                outcome.state,
                                result,
                                outcome.error,
                                outcome.completed,
                                outcome.engine,
                                outcome.attempts,
                                origin
                            ])
                        }),
                    "result",
                ),
            };
            match written {
                Ok(0) => note_ignored(conn, event, task),
                Ok(_) => {}
                Err(e) => fail(format!("recording the {what} of task {task}"), e),
            }
        }
    }
}

/// Logs an event that changed nothing, saying whether the task is unknown.
pub(super) fn note_ignored(conn: &Connection, event: TaskEvent, task: i64) {
    let event = event.name();
    let state = conn
        .prepare_cached("SELECT state FROM tasks WHERE id = ?1")
        .and_then(|mut s| s.query_row([task], |r| r.get::<_, TaskState>(0)).optional());
    match state {
        Ok(state) => ignored(event, task.unsigned_abs(), state),
        Err(error) => tracing::warn!(task, event, %error, "task store: event ignored"),
    }
}
