//! Every job's counts of tasks by state, kept by both stores as tasks move,
//! so that listing jobs (every `zcluster status`, which each live view asks
//! for about once a second) costs the number of jobs, not of tasks.
//!
//! Counting a running job's tasks at each status was 6.5% of the hub
//! thread's time (perf, a 150k-task job with three views attached), enough
//! to cut the hub's rate by as much when watched.

use std::collections::BTreeMap;

use super::{JobId, JobRecord, JobSummary, TaskState};

/// Each job's summary, its counts moved by every change a store applies.
/// The stores call it only for what they applied: a refused event moves
/// nothing, as it changes no task.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct JobCounts(BTreeMap<JobId, JobSummary>);

impl JobCounts {
    /// Counts built from summaries counted elsewhere (the SQLite store's
    /// recount).
    pub(super) fn from_summaries(summaries: impl IntoIterator<Item = JobSummary>) -> Self {
        JobCounts(summaries.into_iter().map(|s| (s.id, s)).collect())
    }

    /// A new job, with no task yet.
    pub(super) fn add_job(&mut self, job: &JobRecord) {
        self.0.insert(
            job.id,
            JobSummary {
                id: job.id,
                submitted: job.submitted,
                client: job.client.clone(),
                total: job.total,
                pending: 0,
                running: 0,
                ok: 0,
                failed: 0,
            },
        );
    }

    /// The job's number of inputs became known.
    pub(super) fn set_total(&mut self, job: JobId, total: u64) {
        if let Some(summary) = self.0.get_mut(&job) {
            summary.total = Some(total);
        }
    }

    /// The job and its tasks left the store.
    pub(super) fn remove_job(&mut self, job: JobId) {
        self.0.remove(&job);
    }

    /// A task of `job` went from state `from` to `to`, where `None` is not
    /// in the store: `(None, Some(Pending))` is a new task, `(Some(Ok),
    /// None)` a purged one.
    pub(super) fn moved(&mut self, job: JobId, from: Option<TaskState>, to: Option<TaskState>) {
        if from == to {
            return;
        }
        let Some(summary) = self.0.get_mut(&job) else {
            return;
        };
        if let Some(from) = from {
            let count = count_of(summary, from);
            debug_assert!(*count > 0, "job {job}: no {from} task to move");
            *count = count.saturating_sub(1);
        }
        if let Some(to) = to {
            *count_of(summary, to) += 1;
        }
    }

    /// Every job's summary, by id.
    pub(super) fn summaries(&self) -> Vec<JobSummary> {
        self.0.values().cloned().collect()
    }
}

/// The count of `summary` that tasks in `state` are counted in.
fn count_of(summary: &mut JobSummary, state: TaskState) -> &mut u64 {
    match state {
        TaskState::Pending => &mut summary.pending,
        TaskState::Running => &mut summary.running,
        TaskState::Ok => &mut summary.ok,
        TaskState::Failed => &mut summary.failed,
    }
}
