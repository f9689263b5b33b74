//! What the store records and is asked for: ids, jobs, tasks, their
//! summaries, and the filters that select tasks.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::TaskState;

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
pub(super) const FIRST_ID: u64 = 1;

/// One job as submitted: what the hub needs to describe it in status output
/// and to run more of its tasks after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// From [`Store::next_job_id`](super::Store::next_job_id).
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
    /// From [`Store::next_task_ids`](super::Store::next_task_ids).
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

/// Which tasks [`Store::tasks`](super::Store::tasks) returns.
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
pub(super) struct TaskRange {
    pub(super) from_seq: u64,
    /// Tasks at `from_seq` are taken only past this id (`None`: all of them).
    pub(super) after_id: Option<TaskId>,
    pub(super) to_seq: u64,
    pub(super) limit: usize,
}

/// What a [`TaskFilter`] selects, in the two forms the stores read: a
/// range of one job's tasks, or tasks by id (each once, in id order).
pub(super) enum Selection {
    Range(JobId, TaskRange),
    Ids(BTreeSet<TaskId>),
}

impl TaskFilter {
    /// The tasks this filter selects, as the stores read them.
    pub(super) fn selection(&self) -> Selection {
        match self {
            TaskFilter::Job(job) => Selection::Range(*job, TaskRange::whole()),
            TaskFilter::Seqs { job, seqs } => Selection::Range(*job, TaskRange::seqs(seqs)),
            TaskFilter::Page { job, after, limit } => {
                Selection::Range(*job, TaskRange::page(*after, *limit))
            }
            TaskFilter::Ids(ids) => Selection::Ids(ids.iter().copied().collect()),
        }
    }
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
