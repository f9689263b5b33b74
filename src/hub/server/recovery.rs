//! Recovery from the store after a restart: the unfinished jobs a previous
//! run of the hub left are carried on, their pending and running tasks
//! queued again (engines register by themselves and say what they still
//! hold), finished ones left finished.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::outbox::Outbox;
use super::state::{Job, Task};
use super::{Core, HubError};
use crate::hub::protocol::{HaltAt, JobId, JobKind};
use crate::hub::store::{JobRecord, TaskState};
use crate::message::decode_value;
use crate::resources::ResourceRequest;

/// What the store keeps of a job besides its id: enough for a restarted hub
/// to carry it on, and to route its results to its client. Fields are only
/// ever added at the end, so that an older spec fails to decode as a newer
/// one (it ends too soon) and is read by its own shape below.
#[derive(Serialize, Deserialize)]
pub(super) struct JobSpec {
    pub(super) kind: JobKind,
    pub(super) description: String,
    pub(super) retries: u32,
    /// Whether it has a halt rule (older specs: halt at the first failure).
    pub(super) halts: bool,
    pub(super) client: Vec<u8>,
    /// Most tasks running at once (see [`Job::cap`]).
    pub(super) cap: Option<u32>,
    /// Its halt rule (see [`Job::halt`]); `None` with `halts` set is an
    /// older spec's first failure.
    pub(super) halt: Option<HaltAt>,
    /// What each task needs (see [`Job::request`]).
    pub(super) request: Option<ResourceRequest>,
}

/// A spec as stores written before jobs had resource requests hold it.
#[derive(Deserialize)]
struct UnrequestedSpec {
    kind: JobKind,
    description: String,
    retries: u32,
    halts: bool,
    client: Vec<u8>,
    cap: Option<u32>,
    halt: Option<HaltAt>,
}

/// A spec as stores written before jobs had a halt rule hold it.
#[derive(Deserialize)]
struct CappedSpec {
    kind: JobKind,
    description: String,
    retries: u32,
    halts: bool,
    client: Vec<u8>,
    cap: Option<u32>,
}

/// A spec as stores written before jobs had a cap hold it.
#[derive(Deserialize)]
struct UncappedSpec {
    kind: JobKind,
    description: String,
    retries: u32,
    halts: bool,
    client: Vec<u8>,
}

impl JobSpec {
    /// The spec of a job opened now.
    pub(super) fn new(
        kind: JobKind,
        description: String,
        retries: u32,
        halt: Option<HaltAt>,
        client: Vec<u8>,
        cap: Option<u32>,
    ) -> Self {
        JobSpec {
            kind,
            description,
            retries,
            halts: halt.is_some(),
            client,
            cap,
            halt,
            request: None,
        }
    }

    /// The spec with `request` for each task (`--cpus 1` alone is one too:
    /// its tasks get their core by index, for `--pin`).
    pub(super) fn with_request(mut self, request: Option<ResourceRequest>) -> Self {
        self.request = request;
        self
    }

    /// The spec stored with `record` (an older one has no cap or halt rule
    /// of its own); a command job with no retries under the record's
    /// description if it does not decode.
    pub(super) fn of(record: &JobRecord) -> Self {
        if let Ok(spec) = decode_value::<JobSpec>(&record.spec, "job spec") {
            return spec;
        }
        if let Ok(s) = decode_value::<UnrequestedSpec>(&record.spec, "job spec") {
            let mut spec = JobSpec::new(s.kind, s.description, s.retries, s.halt, s.client, s.cap);
            spec.halts = s.halts;
            return spec;
        }
        let old = |halts: bool| halts.then_some(HaltAt::FIRST_FAILURE);
        if let Ok(s) = decode_value::<CappedSpec>(&record.spec, "job spec") {
            return JobSpec::new(
                s.kind,
                s.description,
                s.retries,
                old(s.halts),
                s.client,
                s.cap,
            );
        }
        match decode_value::<UncappedSpec>(&record.spec, "job spec") {
            Ok(s) => JobSpec::new(
                s.kind,
                s.description,
                s.retries,
                old(s.halts),
                s.client,
                None,
            ),
            Err(_) => JobSpec::new(
                JobKind::Exec,
                record.client.clone(),
                0,
                None,
                Vec::new(),
                None,
            ),
        }
    }

    /// A running job of this spec, with nothing queued yet.
    pub(super) fn into_job(self) -> Job {
        let mut job = Job::new(self.client, self.kind, self.description);
        job.retries = self.retries;
        job.halt = match self.halt {
            None if self.halts => Some(HaltAt::FIRST_FAILURE),
            rule => rule,
        };
        job.cap = self.cap;
        job.request = self.request.map(Arc::new);
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
