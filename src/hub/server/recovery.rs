//! Recovery from the store after a restart: the unfinished jobs a previous
//! run of the hub left are carried on, their pending and running tasks
//! queued again (engines register by themselves and say what they still
//! hold), finished ones left finished.

use serde::{Deserialize, Serialize};
use tracing::info;

use super::outbox::Outbox;
use super::state::{Job, Task};
use super::{Core, HubError};
use crate::hub::protocol::{JobId, JobKind};
use crate::hub::store::{JobRecord, TaskState};
use crate::message::decode_value;

/// What the store keeps of a job besides its id: enough for a restarted hub
/// to carry it on, and to route its results to its client.
#[derive(Serialize, Deserialize)]
pub(super) struct JobSpec {
    pub(super) kind: JobKind,
    pub(super) description: String,
    pub(super) retries: u32,
    pub(super) halt_on_failure: bool,
    pub(super) client: Vec<u8>,
    /// Most tasks running at once (see [`Job::cap`]).
    pub(super) cap: Option<u32>,
}

/// A spec as stores written before jobs had a cap hold it.
#[derive(Deserialize)]
struct UncappedSpec {
    kind: JobKind,
    description: String,
    retries: u32,
    halt_on_failure: bool,
    client: Vec<u8>,
}

impl JobSpec {
    /// The spec stored with `record` (one written before caps existed has
    /// none); a command job with no retries under the record's description
    /// if it does not decode.
    pub(super) fn of(record: &JobRecord) -> Self {
        if let Ok(spec) = decode_value::<JobSpec>(&record.spec, "job spec") {
            return spec;
        }
        match decode_value::<UncappedSpec>(&record.spec, "job spec") {
            Ok(old) => JobSpec {
                kind: old.kind,
                description: old.description,
                retries: old.retries,
                halt_on_failure: old.halt_on_failure,
                client: old.client,
                cap: None,
            },
            Err(_) => JobSpec {
                kind: JobKind::Exec,
                description: record.client.clone(),
                retries: 0,
                halt_on_failure: false,
                client: Vec::new(),
                cap: None,
            },
        }
    }

    /// A running job of this spec, with nothing queued yet.
    pub(super) fn into_job(self) -> Job {
        let mut job = Job::new(self.client, self.kind, self.description);
        job.retries = self.retries;
        job.halt_on_failure = self.halt_on_failure;
        job.cap = self.cap;
        job
    }
}

/// One job a hub carries on, as [`Hub::carried_on`](super::Hub::carried_on)
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedOn {
    /// The job.
    pub job: JobId,
    /// Its tasks not finished (queued, or running).
    pub to_run: u64,
    /// Its tasks finished (ok or failed), in the store.
    pub finished: u64,
    /// Its number of inputs, if its client said it before the hub stopped.
    pub total: Option<u64>,
}

impl<O: Outbox> Core<O> {
    /// Carries on the unfinished jobs a previous run of this hub left in
    /// the store: their pending and running tasks are queued again (engines
    /// register by themselves), finished ones stay finished, and results go
    /// to each job's client once it is back.
    pub(super) fn recover(&mut self) -> Result<(), HubError> {
        let unfinished: Vec<_> = self
            .store
            .jobs()?
            .into_iter()
            .filter(|j| j.total.is_none() || j.pending + j.running > 0)
            .collect();
        if unfinished.is_empty() {
            return Ok(());
        }
        for summary in &unfinished {
            let Some(record) = self.store.job(summary.id)? else {
                continue;
            };
            let mut job = JobSpec::of(&record).into_job();
            job.total = summary.total;
            job.finished = summary.ok + summary.failed;
            self.state.jobs.insert(summary.id, job);
        }
        let mut requeued = 0;
        for task in self.store.unfinished()? {
            let Some(job) = self.state.jobs.get_mut(&task.job) else {
                continue;
            };
            if task.state == TaskState::Running {
                self.store.task_requeued(task.id)?;
            }
            let request = task.request.unwrap_or_default();
            let mut recovered = Task::new(task.id, request, task.attempts);
            recovered.uncounted = true;
            job.put(task.seq, recovered);
            job.queue.push_back(task.seq);
            requeued += 1;
        }
        self.store.flush()?;
        let ids: Vec<JobId> = self.state.jobs.keys().copied().collect();
        for id in ids {
            if self
                .state
                .jobs
                .get(&id)
                .is_some_and(|j| !j.queue.is_empty())
            {
                self.state.turns.push_back(id);
            }
            self.retire_if_done(id);
        }
        info!(
            jobs = self.state.jobs.len(),
            tasks = requeued,
            "carrying on unfinished jobs from the store"
        );
        for job in self.carried_on() {
            info!(
                job = job.job,
                to_run = job.to_run,
                finished = job.finished,
                total = ?job.total,
                "carrying on a job"
            );
        }
        Ok(())
    }

    /// The jobs it runs and what is left of each, by job id.
    pub(super) fn carried_on(&self) -> Vec<CarriedOn> {
        let mut jobs: Vec<CarriedOn> = self
            .state
            .jobs
            .iter()
            .map(|(&id, job)| CarriedOn {
                job: id,
                to_run: job.tasks.len() as u64,
                finished: job.finished,
                total: job.total,
            })
            .collect();
        jobs.sort_by_key(|j| j.job);
        jobs
    }
}
