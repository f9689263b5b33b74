//! Queries: the hub's status (engines live, jobs from the store), and a
//! job's tasks with their results, whole or page by page.

use std::collections::HashSet;

use super::outbox::Outbox;
use super::state::{Engine, Job};
use super::{Core, HubError};
use crate::hub::protocol::{EngineStatus, HubStatus, JobId, JobStatus, Reply, TaskReport};
use crate::hub::store::{TaskFilter, TaskRecord};
use crate::resources::{ResourceOffer, ResourceRequest};

/// Most tasks in one page of [`ClientCall::ResultsPage`](crate::hub::protocol::ClientCall::ResultsPage)...
const PAGE_TASKS: usize = 1024;

/// ...and most bytes of payload in it, well under the message size limit.
const PAGE_BYTES: usize = 16 << 20;

/// What a report costs besides its payloads, roughly (times, state, ids).
const REPORT_OVERHEAD_BYTES: usize = 64;

/// A stored task as a client sees it.
fn task_report(t: TaskRecord) -> TaskReport {
    TaskReport {
        id: t.seq,
        state: t.state,
        engine: t.engine,
        attempts: t.attempts,
        submitted: t.submitted,
        started: t.started,
        completed: t.completed,
        error: t.error,
        request: t.request,
        result: t.result.filter(|r| !r.is_empty()),
    }
}

/// What of an engine is in use, for `zcluster status`.
fn in_use(engine: &Engine) -> String {
    let pool = &engine.resources;
    let cores = (pool.cpus_taken_by_index() + pool.loose()).min(pool.cpus());
    let mut line = format!("{cores}/{} cpus", pool.cpus());
    if let Some(offer) = engine.offer.as_deref().filter(|o| !o.gpus.is_empty()) {
        line.push_str(&format!(
            ", {}/{} gpus",
            pool.gpus_in_use(),
            offer.gpus.len()
        ));
    }
    line
}

impl<O: Outbox> Core<O> {
    /// Why a live job's queued tasks wait, when its request is free on no
    /// engine now.
    fn waiting_for(&self, id: JobId, job: &Job) -> Option<String> {
        let request = job.request.as_deref()?;
        if job.queue.is_empty() || self.state.engines.values().any(|e| e.fits(request)) {
            return None;
        }
        let why = match self.state.reservations.get(&id) {
            Some(engine) => format!("no engine has it free (engine {engine} is reserved for it)"),
            None => "no engine has it free".to_string(),
        };
        Some(format!("{}: {why}", request.describe()))
    }

    /// Engines as the hub sees them, jobs as the store counts them.
    pub(super) fn status(&mut self, verbose: bool) -> Result<HubStatus, HubError> {
        let mut engines: Vec<EngineStatus> = self
            .state
            .engines
            .values()
            .map(|e| EngineStatus {
                id: e.id,
                host: e.host.clone(),
                pid: e.pid,
                slots: e.slots,
                running: e.running.len() as u32,
                completed: e.completed,
                last_heartbeat: e.last_seen.elapsed(),
                handlers: e.handlers.clone(),
                running_tasks: if verbose {
                    let mut tasks: Vec<(JobId, u64)> = e.running.iter().copied().collect();
                    tasks.sort_unstable();
                    tasks
                } else {
                    Vec::new()
                },
                origin: e.origin.clone(),
                draining: e.draining,
                offer: e.offer.as_deref().map(ResourceOffer::describe),
                in_use: in_use(e),
            })
            .collect();
        engines.sort_by_key(|e| e.id);
        let jobs = self
            .store
            .jobs()?
            .into_iter()
            .map(|j| {
                let live = self.state.jobs.get(&j.id);
                JobStatus {
                    id: j.id,
                    submitted: j.submitted,
                    description: live.map_or(j.client, |l| l.description.clone()),
                    total: j.total,
                    pending: j.pending,
                    running: j.running,
                    done: j.ok,
                    failed: j.failed,
                    queued_tasks: match live {
                        Some(l) if verbose => l.queue.iter().copied().collect(),
                        _ => Vec::new(),
                    },
                    request: live
                        .and_then(|l| l.request.as_deref())
                        .map(ResourceRequest::describe),
                    waiting_for: live.and_then(|l| self.waiting_for(j.id, l)),
                    client_attached: live.map(Job::client_attached),
                }
            })
            .collect();
        Ok(HubStatus {
            engines,
            jobs,
            store: self.store.location(),
        })
    }

    /// A job's tasks (all, or those `ids`), with payloads unless
    /// `status_only`.
    pub(super) fn results(
        &mut self,
        job: JobId,
        ids: Option<Vec<u64>>,
        status_only: bool,
    ) -> Result<Reply, HubError> {
        if self.store.job(job)?.is_none() {
            return Ok(Reply::NotFound(format!("no job {job} in the store")));
        }
        let wanted: Option<HashSet<u64>> = ids.map(|ids| ids.into_iter().collect());
        // A few tasks of a large job: read only the seqs they span.
        let filter = match wanted.as_ref() {
            Some(w) => match (w.iter().min(), w.iter().max()) {
                (Some(&from), Some(&to)) => TaskFilter::Seqs {
                    job,
                    seqs: from..=to,
                },
                _ => return Ok(Reply::Results(Vec::new())),
            },
            None => TaskFilter::Job(job),
        };
        let reports = self
            .store
            .tasks(&filter, !status_only)?
            .into_iter()
            .filter(|t| wanted.as_ref().is_none_or(|w| w.contains(&t.seq)))
            .map(task_report)
            .collect();
        Ok(Reply::Results(reports))
    }

    /// One page of a job's tasks after `after`: up to [`PAGE_TASKS`], and
    /// no more payload bytes than [`PAGE_BYTES`] (but at least one task),
    /// so every reply fits a message however large the job.
    pub(super) fn results_page(
        &mut self,
        job: JobId,
        after: Option<(u64, u64)>,
        status_only: bool,
    ) -> Result<Reply, HubError> {
        if self.store.job(job)?.is_none() {
            return Ok(Reply::NotFound(format!("no job {job} in the store")));
        }
        let filter = TaskFilter::Page {
            job,
            after,
            limit: PAGE_TASKS,
        };
        let tasks = self.store.tasks(&filter, !status_only)?;
        let read = tasks.len();
        let mut bytes = 0;
        let mut next = None;
        let mut reports = Vec::with_capacity(read);
        for task in tasks {
            bytes += REPORT_OVERHEAD_BYTES
                + task.request.as_ref().map_or(0, Vec::len)
                + task.result.as_ref().map_or(0, Vec::len)
                + task.error.as_ref().map_or(0, String::len);
            if bytes > PAGE_BYTES && !reports.is_empty() {
                break;
            }
            next = Some((task.seq, task.id));
            reports.push(task_report(task));
        }
        // A full or cut page may have more after it; a short one is the last.
        if reports.len() == read && read < PAGE_TASKS {
            next = None;
        }
        Ok(Reply::ResultsPage { reports, next })
    }
}
