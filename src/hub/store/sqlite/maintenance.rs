//! Purges and resubmits: run on the writer thread, each in a transaction of
//! its own, ordered with the queued writes.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};

use super::sql::{column_u64, completed_states, sql_int, sqlite_error, task_row};
use super::stored::Codec;
use crate::hub::store::{EngineId, JobId, StoreError, TaskEvent, TaskId, TaskRecord, TaskState};

/// Writer-side body of [`Store::purge_job`].
pub(super) fn purge_job_in(
    conn: &mut Connection,
    codec: &mut Codec,
    job: JobId,
) -> Result<u64, StoreError> {
    let operation = || format!("purging job {job}");
    let id = sql_int("job id", job)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation()))?;
    let pending: i64 = tx
        .query_row(
            &format!(
                "SELECT COUNT(*) FROM tasks WHERE job = ?1 AND state IN ({})",
                completed_states(false)
            ),
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
    // The job's reference request went with its row.
    codec.forget_jobs([id]);
    delete_unreferenced_origins(&tx, codec).map_err(sqlite_error(operation()))?;
    tx.commit().map_err(sqlite_error(operation()))?;
    Ok(removed as u64)
}

/// Writer-side body of [`Store::purge_engine`].
pub(super) fn purge_engine_in(
    conn: &mut Connection,
    codec: &mut Codec,
    engine: EngineId,
) -> Result<u64, StoreError> {
    let Ok(id) = i64::try_from(engine) else {
        return Ok(0);
    };
    let operation = || format!("purging the tasks of engine {engine}");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation()))?;
    let removed = tx
        .execute(
            &format!(
                "DELETE FROM tasks WHERE engine = ?1 AND state IN ({})",
                completed_states(true)
            ),
            [id],
        )
        .map_err(sqlite_error(operation()))?;
    if removed > 0 {
        delete_unreferenced_origins(&tx, codec).map_err(sqlite_error(operation()))?;
    }
    tx.commit().map_err(sqlite_error(operation()))?;
    Ok(removed as u64)
}

/// Writer-side body of [`Store::purge_completed`]: tasks removed, and the jobs removed.
pub(super) fn purge_completed_in(
    conn: &mut Connection,
    codec: &mut Codec,
) -> Result<(u64, Vec<JobId>), StoreError> {
    let operation = || "purging completed tasks".to_string();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation()))?;
    let removed = tx
        .execute(
            &format!(
                "DELETE FROM tasks WHERE state IN ({})",
                completed_states(true)
            ),
            [],
        )
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
    // Each removed job's reference request went with its row.
    codec.forget_jobs(jobs.iter().filter_map(|&job| i64::try_from(job).ok()));
    delete_unreferenced_origins(&tx, codec).map_err(sqlite_error(operation()))?;
    tx.commit().map_err(sqlite_error(operation()))?;
    Ok((removed as u64, jobs))
}

/// Deletes the `origins` rows no task names any more, inside a purge's
/// transaction, and makes `codec` forget them: without this, every worker
/// process a long-lived hub ever saw kept its rows, whatever was purged.
///
/// One scan of the tasks left (no index on `tasks.origin`: it would cost
/// every task about ten bytes of the file, 90 to 100 in the forms test,
/// and the writer an index insert, for the sake of a rare purge). After a purge of every finished
/// task only unfinished ones are left, so the scan is short; after a purge
/// of one job it reads the rest of the table once. It also takes the
/// origins a resubmit left unnamed. (`IS NOT NULL`: a NULL in a `NOT IN`
/// list makes the test NULL for every row, and nothing would go.)
fn delete_unreferenced_origins(tx: &Connection, codec: &mut Codec) -> rusqlite::Result<()> {
    let deleted = tx
        .prepare_cached(
            "DELETE FROM origins WHERE id NOT IN
                 (SELECT origin FROM tasks WHERE origin IS NOT NULL)
             RETURNING id",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    // Forgotten even should the purge roll back: a forgotten origin is
    // only looked up again.
    codec.forget_origins(&deleted);
    Ok(())
}

/// Writer-side body of [`Store::reset_for_resubmit`].
pub(super) fn reset_in(
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
            .prepare("SELECT id FROM tasks WHERE job = ?1 AND state = ?2 ORDER BY seq, id")
            .and_then(|mut s| {
                s.query_map(params![job_sql, TaskState::Failed], |r| r.get(0))?
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
                        state.apply(TaskEvent::Resubmit).map_err(|refused| {
                            StoreError::NotCompleted {
                                task,
                                state: refused.state,
                            }
                        })?;
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
            .prepare(&format!(
                "UPDATE tasks SET state = '{}', engine = NULL, started = NULL,
                                  completed = NULL, result = NULL, error = NULL,
                                  origin = NULL
                 WHERE id = ?1",
                TaskEvent::Resubmit.leads_to()
            ))
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
