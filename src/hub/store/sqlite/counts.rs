//! The SQLite store's live job counts: [`JobCounts`] moved by each write
//! as it is queued, which needs each unfinished task's job and state (the
//! writer applies a write later, on its own thread, and tells nothing
//! back).
//!
//! Why this agrees with the file: a write is queued only while the store
//! has not stopped, the writer applies every queued write in order under
//! guards taken from the same state machine ([`TaskState::apply`]) as
//! [`LiveCounts::event`] follows, and any write that fails stops the store
//! and rolls back its whole batch. So while the store runs, the counts are
//! those of the file once the queue is committed. Where they cannot be
//! known that way (at open, after a purge or a resubmit, which the writer
//! decides in SQL, and once the store stopped), the store drops them and
//! counts the file again at the next look ([`recount`]).

use rusqlite::Connection;

use super::sql::{column_opt_u64, column_time, column_u64, completed_states};
use crate::hub::store::counts::JobCounts;
use crate::hub::store::{JobId, JobRecord, JobSummary, TaskEvent, TaskId, TaskState};
use crate::ids::IdMap;

/// Job counts moved as writes are queued, and what moving them needs.
#[derive(Debug)]
pub(super) struct LiveCounts {
    jobs: JobCounts,
    /// Each pending or running task's job and state: what an event's
    /// guard decides on. A task leaves it when it completes (no engine
    /// event applies to a completed task).
    unfinished: IdMap<TaskId, (JobId, TaskState)>,
}

impl LiveCounts {
    pub(super) fn add_job(&mut self, job: &JobRecord) {
        self.jobs.add_job(job);
    }

    pub(super) fn set_total(&mut self, job: JobId, total: u64) {
        self.jobs.set_total(job, total);
    }

    /// A new task, pending.
    pub(super) fn add_task(&mut self, task: TaskId, job: JobId) {
        self.unfinished.insert(task, (job, TaskState::Pending));
        self.jobs.moved(job, None, Some(TaskState::Pending));
    }

    /// An engine's event, queued for `task`: moved as the writer's guard
    /// will decide it.
    pub(super) fn event(&mut self, task: TaskId, event: TaskEvent) {
        let Some((job, state)) = self.unfinished.get_mut(&task) else {
            return;
        };
        let (job, from) = (*job, *state);
        let Ok(to) = from.apply(event) else {
            return;
        };
        if to.is_completed() {
            self.unfinished.remove(&task);
        } else {
            *state = to;
        }
        self.jobs.moved(job, Some(from), Some(to));
    }

    pub(super) fn summaries(&self) -> Vec<JobSummary> {
        self.jobs.summaries()
    }
}

/// Counts every job's tasks in the file, and notes which are unfinished.
pub(super) fn recount(conn: &Connection) -> rusqlite::Result<LiveCounts> {
    let summaries = conn
        .prepare(
            "SELECT j.id, j.submitted, j.client, j.total,
                    COUNT(CASE WHEN t.state = 'pending' THEN 1 END),
                    COUNT(CASE WHEN t.state = 'running' THEN 1 END),
                    COUNT(CASE WHEN t.state = 'ok' THEN 1 END),
                    COUNT(CASE WHEN t.state = 'failed' THEN 1 END)
             FROM jobs j LEFT JOIN tasks t ON t.job = j.id
             GROUP BY j.id ORDER BY j.id",
        )?
        .query_map([], |r| {
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
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let unfinished = conn
        .prepare(&format!(
            "SELECT id, job, state FROM tasks WHERE state IN ({})",
            completed_states(false)
        ))?
        .query_map([], |r| {
            Ok((column_u64(r, 0)?, (column_u64(r, 1)?, r.get(2)?)))
        })?
        .collect::<rusqlite::Result<IdMap<_, _>>>()?;
    Ok(LiveCounts {
        jobs: JobCounts::from_summaries(summaries),
        unfinished,
    })
}
