//! Reactions to clients: their tasks, and their calls (open, close, check,
//! attach, cancel, resubmit, purge; queries and commands are handed to
//! `queries.rs` and `commands.rs`).

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime};

use tracing::{debug, info, warn};

use super::outbox::Outbox;
use super::recovery::JobSpec;
use super::state::{CommandPurpose, Engine, Job, Task};
use super::{Core, HubError};
use crate::hub::protocol::{
    AttachInfo, ClientCall, EngineId, HubInfo, HubToEngine, JobId, JobKind, Notification,
    PurgeTarget, Reply,
};
use crate::hub::store::{JobRecord, NewTask, StoreError, TaskFilter, TaskId, TaskState};
use crate::message::{
    decode_submit_items, encode_value, Command, Envelope, MessageError, MessageKind,
};
use crate::resources::ResourceOffer;
use crate::untrusted::escape_error;

/// Jobs one client may have running at once: with the credit per job, this
/// bounds what one client can make the hub hold.
const MAX_JOBS_PER_CLIENT: usize = 256;

impl<O: Outbox> Core<O> {
    /// A message on the clients' socket (the handshake already answered).
    pub(super) fn on_client(
        &mut self,
        identity: Vec<u8>,
        envelope: Result<Envelope, MessageError>,
    ) {
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(e) => return self.refuse("client", &identity, &e),
        };
        match envelope.header.kind {
            MessageKind::Request => self.on_task(identity, &envelope),
            MessageKind::Tasks => self.on_task_batch(identity, &envelope),
            MessageKind::Control => {
                let request = envelope.header.id;
                match envelope.control::<ClientCall>() {
                    Ok(call) => {
                        // A failing call (the store refused a write, say)
                        // is that caller's error, not the end of the hub.
                        if let Err(e) = self.on_call(identity.clone(), request, call) {
                            warn!(error = %e, "a client call failed");
                            self.outbox
                                .reply(&identity, request, &Reply::Error(e.to_string()));
                        }
                    }
                    Err(e) => {
                        warn!(error = %escape_error(&e), "dropping a bad call");
                        self.outbox.reply(
                            &identity,
                            request,
                            &Reply::Error(format!("bad call: {e}")),
                        );
                    }
                }
            }
            kind => warn!(%kind, "dropping an unexpected message from a client"),
        }
    }

    /// A task of a job: recorded, then queued once the store committed it.
    fn on_task(&mut self, client: Vec<u8>, envelope: &Envelope) {
        let (job, task) = (envelope.header.job, envelope.header.id);
        self.on_tasks(client, job, vec![(task, envelope.body().to_vec())]);
    }

    /// Several tasks of a job in one message
    /// ([`SubmitItem`](crate::hub::protocol::SubmitItem)s). A body that does
    /// not decode is refused as a whole, as any bad message is (its task ids
    /// cannot be trusted to answer); a decoded batch is taken item by item,
    /// exactly as if each task had come alone.
    fn on_task_batch(&mut self, client: Vec<u8>, envelope: &Envelope) {
        let tasks = match decode_submit_items(envelope.body(), "task batch") {
            Ok(tasks) => tasks,
            Err(e) => return self.refuse("client", &client, &e),
        };
        self.on_tasks(client, envelope.header.job, tasks);
    }

    /// Tasks of a job, (client's id, encoded request) each: recorded in one
    /// write, then queued once the store committed it. Each is judged on
    /// its own, as when tasks came one per message: one sent twice is
    /// dropped, and those past the job's credit are refused with a failed
    /// result each while the ones before them are taken (a batch split at
    /// the window: refusing all of it would fail tasks that fit). Refusing
    /// a whole batch for one bad item would turn one client bug into many
    /// failed tasks; each task still gets exactly one answer.
    pub(super) fn on_tasks(&mut self, client: Vec<u8>, job_id: JobId, tasks: Vec<(u64, Vec<u8>)>) {
        let Some(job) = self.state.jobs.get_mut(&job_id) else {
            warn!(job = job_id, "refusing tasks for an unknown job");
            for (task_id, _) in tasks {
                self.outbox.failure(
                    &client,
                    job_id,
                    task_id,
                    "no such job on this hub (did it restart?)",
                );
            }
            return;
        };
        if job.client != client {
            warn!(
                job = job_id,
                "refusing tasks from a client that does not own the job"
            );
            for (task_id, _) in tasks {
                self.outbox
                    .failure(&client, job_id, task_id, "this client does not own the job");
            }
            return;
        }
        job.client_heard = Some(Instant::now());
        let credit = job.credit_or(self.options.credit) as usize;
        let mut taken: Vec<(u64, Vec<u8>)> = Vec::with_capacity(tasks.len());
        let mut seen: HashSet<u64> = HashSet::with_capacity(tasks.len());
        let mut over_credit = Vec::new();
        for (task_id, request) in tasks {
            if job.tasks.contains_key(&task_id) || !seen.insert(task_id) {
                debug!(job = job_id, task = task_id, "dropping a task sent twice");
                continue;
            }
            if job.client_tasks() + taken.len() >= credit {
                over_credit.push(task_id);
                continue;
            }
            taken.push((task_id, request));
        }
        if !over_credit.is_empty() {
            warn!(
                job = job_id,
                credit,
                refused = over_credit.len(),
                "client exceeded its credit; refusing tasks"
            );
        }
        for task_id in over_credit {
            self.outbox.failure(
                &client,
                job_id,
                task_id,
                "the job's credit is used up; send fewer tasks at once",
            );
        }
        if taken.is_empty() {
            return;
        }
        let submitted = SystemTime::now();
        let recorded = self
            .store
            .next_task_ids(taken.len() as u64)
            .and_then(|ids| {
                let new = taken
                    .iter()
                    .zip(ids.clone())
                    .map(|((task_id, request), id)| NewTask {
                        id,
                        job: job_id,
                        seq: *task_id,
                        request: request.clone(),
                        submitted,
                    })
                    .collect();
                self.store.add_tasks(new)?;
                Ok(ids.start)
            });
        let first = match recorded {
            Ok(first) => first,
            // The job is stopped as a whole (see `release`): no task of it
            // is answered on its own.
            Err(StoreError::CannotWrite(_)) => {
                debug!(
                    job = job_id,
                    tasks = taken.len(),
                    "dropping tasks: the store cannot write"
                );
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot record tasks; refusing them");
                let reason = format!("the hub cannot record it: {e}");
                for (task_id, _) in taken {
                    self.outbox.failure(&client, job_id, task_id, &reason);
                }
                return;
            }
        };
        let Some(job) = self.state.jobs.get_mut(&job_id) else {
            return;
        };
        let mut ids = Vec::with_capacity(taken.len());
        for (store_id, (task_id, request)) in (first..).zip(taken) {
            job.put(task_id, Task::new(store_id, request, 0));
            ids.push(task_id);
        }
        // Dispatched once their insert is committed.
        self.hold(super::Held::Tasks {
            job: job_id,
            tasks: ids,
        });
    }

    /// A client's call, answered (at once, or once engines answered).
    pub(super) fn on_call(
        &mut self,
        client: Vec<u8>,
        request: u64,
        call: ClientCall,
    ) -> Result<(), HubError> {
        if let Some(refusal) = self.refusal_while_stopped(&call) {
            self.outbox.reply(&client, request, &Reply::Error(refusal));
            return Ok(());
        }
        let reply = match call {
            ClientCall::Hello => Reply::Hello(HubInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                engines: self.state.engines.len() as u32,
                slots: self.state.engines.values().map(|e| e.slots).sum(),
                max_message: self.options.message_limit() as u64,
            }),
            ClientCall::OpenJob {
                kind,
                description,
                retries,
                halt,
                cap,
                request,
            } => {
                let spec = JobSpec::new(kind, description, retries, halt, client.clone(), cap)
                    .with_request(request);
                self.open_job(spec)?
            }
            ClientCall::CloseJob { job, total } => self.close_job(job, total)?,
            ClientCall::CancelJob { job, kill_running } => {
                // Tasks still held for their insert are queued first, so
                // the cancel drops (and answers) them too.
                self.store.flush()?;
                self.release();
                self.cancel_job(job, kill_running)
            }
            ClientCall::CheckJob { job } => match self.state.jobs.get_mut(&job) {
                Some(j) => {
                    j.heard_from(&client);
                    Reply::JobLive {
                        epoch: self.epoch,
                        yours: j.client == client,
                    }
                }
                None => Reply::Error(format!(
                    "job {job} is not running on this hub; its results are in the store (zcluster results {job})"
                )),
            },
            ClientCall::Attach { job, outstanding } => self.attach(client.clone(), job, outstanding)?,
            ClientCall::Status { verbose } => Reply::Status(self.status(verbose)?),
            ClientCall::Results {
                job,
                ids,
                status_only,
            } => self.results(job, ids, status_only)?,
            ClientCall::ResultsPage {
                job,
                after,
                status_only,
            } => self.results_page(job, after, status_only)?,
            ClientCall::Purge(target) => self.purge(target),
            ClientCall::Resubmit { job, ids } => self.resubmit(client.clone(), job, ids)?,
            ClientCall::Kill { engines, restart } => {
                let targets: Vec<EngineId> = match engines {
                    Some(ids) => {
                        if let Some(missing) =
                            ids.iter().find(|id| !self.state.engines.contains_key(id))
                        {
                            let error = Reply::NotFound(format!("no engine {missing}"));
                            self.outbox.reply(&client, request, &error);
                            return Ok(());
                        }
                        ids
                    }
                    None => self.state.engines.keys().copied().collect(),
                };
                let command = if restart {
                    Command::Restart
                } else {
                    Command::Kill
                };
                self.start_command(client, request, command, targets, CommandPurpose::Kill);
                return Ok(());
            }
            ClientCall::Drain { engines } => {
                if let Some(missing) = engines
                    .iter()
                    .find(|id| !self.state.engines.contains_key(id))
                {
                    let error = Reply::NotFound(format!("no engine {missing}"));
                    self.outbox.reply(&client, request, &error);
                    return Ok(());
                }
                let purpose = CommandPurpose::Drain;
                self.start_command(client, request, Command::Drain, engines, purpose);
                return Ok(());
            }
            ClientCall::Ping => {
                let targets = self.state.engines.keys().copied().collect();
                self.start_command(client, request, Command::Ping, targets, CommandPurpose::Ping);
                return Ok(());
            }
            ClientCall::Shutdown { workers } => {
                let targets = if workers {
                    self.state.engines.keys().copied().collect()
                } else {
                    Vec::new()
                };
                let purpose = CommandPurpose::Shutdown;
                self.start_command(client, request, Command::Kill, targets, purpose);
                return Ok(());
            }
        };
        self.outbox.reply(&client, request, &reply);
        Ok(())
    }

    /// Opens a job for `client`, recorded in the store before it is
    /// answered.
    fn open_job(&mut self, spec: JobSpec) -> Result<Reply, HubError> {
        let open = self
            .state
            .jobs
            .values()
            .filter(|j| j.client == spec.client)
            .count();
        if open >= MAX_JOBS_PER_CLIENT {
            return Ok(Reply::Error(format!(
                "this client already has {open} jobs running; close some first"
            )));
        }
        if spec.cap == Some(0) {
            return Ok(Reply::Error(
                "a job's cap of tasks running at once must be at least 1".into(),
            ));
        }
        if let JobKind::Handler(name) = &spec.kind {
            if !self.state.engines.values().any(|e| e.can_run(&spec.kind)) {
                return Ok(Reply::Error(format!(
                    "no engine offers the handler `{name}` (engines offer: {})",
                    self.offered_handlers()
                )));
            }
        }
        if let Some(refusal) = self.unsatisfiable(&spec) {
            return Ok(Reply::Error(refusal));
        }
        let id = self.store.next_job_id()?;
        let submitted = SystemTime::now();
        self.store.add_job(&JobRecord {
            id,
            submitted,
            client: spec.description.clone(),
            spec: encode_value(&spec, "job spec")?,
            total: None,
        })?;
        self.store.flush()?;
        let description = spec.description.clone();
        let mut job = spec.into_job();
        job.client_heard = Some(Instant::now());
        let credit = self.credit_now();
        job.credit = Some(credit);
        self.state.jobs.insert(id, job);
        info!(job = id, "job opened");
        self.outbox.publish(&Notification::JobOpened {
            job: id,
            description,
            at: submitted,
        });
        Ok(Reply::JobOpened {
            job: id,
            credit,
            epoch: self.epoch,
            max_message: self.options.message_limit() as u64,
        })
    }

    /// Why no engine registered could ever run a task of `spec` (its
    /// request exceeds every engine's whole offer), naming the largest
    /// offer; `None` when one could, or when no engine is registered yet
    /// (the job waits for one).
    fn unsatisfiable(&self, spec: &JobSpec) -> Option<String> {
        let request = spec.request.as_ref().filter(|r| !r.is_plain())?;
        let engines: Vec<&Engine> = self
            .state
            .engines
            .values()
            .filter(|e| e.can_run(&spec.kind))
            .collect();
        if engines.is_empty() || engines.iter().any(|e| e.could_ever_fit(request)) {
            return None;
        }
        let largest = engines
            .iter()
            .map(|e| {
                let offer = e
                    .offer
                    .as_deref()
                    .cloned()
                    .unwrap_or_else(|| ResourceOffer::cpus_only(e.slots));
                (offer.gpus.len(), offer.cpus, offer.mem_bytes, e.id, offer)
            })
            .max_by(|a, b| (a.0, a.1, a.2, b.3).cmp(&(b.0, b.1, b.2, a.3)))?;
        Some(format!(
            "no engine can ever run a task asking for {}: the largest offer is engine {}'s: {}",
            request.describe(),
            largest.3,
            largest.4.describe()
        ))
    }

    /// Every task of a job was sent: it ends once they all have.
    fn close_job(&mut self, job: JobId, total: u64) -> Result<Reply, HubError> {
        Ok(match self.state.jobs.get_mut(&job) {
            Some(j) => {
                j.total = Some(total);
                self.store.set_job_total(job, total)?;
                self.store.flush()?;
                self.retire_if_done(job);
                Reply::Ok
            }
            // Closed already (by another client of the job) with the
            // same count: the store holds what this close would say.
            None => match self.store.job(job)?.and_then(|record| record.total) {
                Some(recorded) if recorded == total => Reply::Ok,
                Some(recorded) => Reply::Error(format!(
                    "job {job} was closed already with {recorded} tasks, not {total}"
                )),
                None => Reply::NotFound(format!("no running job {job}")),
            },
        })
    }

    /// The credit of a job opened now: the hub's `credit`, or
    /// `credit_per_slot` per slot registered where that is more (see
    /// [`DEFAULT_CREDIT_PER_SLOT`](super::DEFAULT_CREDIT_PER_SLOT)).
    pub(super) fn credit_now(&self) -> u32 {
        let slots = u32::try_from(self.state.total_slots).unwrap_or(u32::MAX);
        self.options
            .credit
            .max(self.options.credit_per_slot.saturating_mul(slots))
    }

    /// Hands a job to `client` (a client back after a hub restart, or a new
    /// one attaching to a job whose client died) and says which of its
    /// outstanding tasks the hub never recorded and which already finished.
    fn attach(
        &mut self,
        client: Vec<u8>,
        job_id: JobId,
        outstanding: Option<Vec<u64>>,
    ) -> Result<Reply, HubError> {
        let Some(record) = self.store.job(job_id)? else {
            return Ok(Reply::NotFound(format!("no job {job_id} in the store")));
        };
        let live = match self.state.jobs.get_mut(&job_id) {
            Some(job) => {
                if job.client != client {
                    info!(job = job_id, "job attached by a new client");
                    job.client = client;
                }
                job.client_heard = Some(Instant::now());
                true
            }
            None => false,
        };
        let tasks = self.store.tasks(&TaskFilter::Job(job_id), false)?;
        let (mut missing, mut finished) = (Vec::new(), Vec::new());
        if let Some(ids) = outstanding {
            let states: HashMap<u64, TaskState> = tasks.iter().map(|t| (t.seq, t.state)).collect();
            for id in ids {
                match states.get(&id) {
                    None => missing.push(id),
                    Some(TaskState::Ok | TaskState::Failed) => finished.push(id),
                    Some(TaskState::Pending | TaskState::Running) => {}
                }
            }
        }
        let credit = self
            .state
            .jobs
            .get(&job_id)
            .map_or(self.options.credit, |job| {
                job.credit_or(self.options.credit)
            });
        Ok(Reply::Attached(AttachInfo {
            epoch: self.epoch,
            credit,
            total: record.total,
            known: tasks.len() as u64,
            missing,
            finished,
            live,
            max_message: self.options.message_limit() as u64,
        }))
    }

    /// Stops a job: its queued tasks fail as cancelled, and its running
    /// ones are killed if `kill_running`.
    fn cancel_job(&mut self, job_id: JobId, kill_running: bool) -> Reply {
        let engines = if kill_running {
            self.engines_of(job_id)
        } else {
            HashSet::new()
        };
        let Some(job) = self.state.jobs.get_mut(&job_id) else {
            return Reply::NotFound(format!("no running job {job_id}"));
        };
        // Nothing more of it starts, retries included.
        job.halted = true;
        // Queued tasks never run: they are failed, cancelled. The reply
        // lists them, but a client whose call timed out never sees it, so
        // each is answered as well.
        let dropped: Vec<u64> = job.queue.drain(..).collect();
        for &task_id in &dropped {
            self.finish_unrun(job_id, task_id, "cancelled before it started");
        }
        for id in engines {
            if let Some(engine) = self.state.engines.get(&id) {
                self.outbox
                    .to_engine(&engine.identity, &HubToEngine::CancelJob { job: job_id });
            }
        }
        self.outbox.publish(&Notification::JobCancelled {
            job: job_id,
            dropped: dropped.len() as u64,
            killed_running: kill_running,
            at: SystemTime::now(),
        });
        self.retire_if_done(job_id);
        Reply::Cancelled(dropped)
    }

    /// Deletes finished records from the store; a job with tasks in flight
    /// is refused.
    fn purge(&mut self, target: PurgeTarget) -> Reply {
        let outcome = match target {
            PurgeTarget::Job(job)
                if self
                    .state
                    .jobs
                    .get(&job)
                    .is_some_and(|j| !j.tasks.is_empty()) =>
            {
                Err(StoreError::PendingTasks {
                    job,
                    pending: self
                        .state
                        .jobs
                        .get(&job)
                        .map_or(0, |j| j.tasks.len() as u64),
                })
            }
            // A job with nothing in flight (its client died before
            // closing it) is retired with its records.
            PurgeTarget::Job(job) => {
                self.state.jobs.remove(&job);
                self.store.purge_job(job)
            }
            PurgeTarget::Engine(engine) => match self.store.purge_engine(engine) {
                // Neither registered nor in the store: a typo, said as one
                // (as `results` does for a job it has no record of).
                Ok(0) if !self.state.engines.contains_key(&engine) => {
                    return Reply::NotFound(format!(
                        "no engine {engine} on this hub, and no task recorded for it"
                    ));
                }
                outcome => outcome,
            },
            PurgeTarget::AllCompleted => self.store.purge_completed(),
        };
        match outcome {
            Ok(n) => Reply::Purged(n),
            Err(e @ StoreError::UnknownJob(_)) => Reply::NotFound(e.to_string()),
            Err(e) => Reply::Error(e.to_string()),
        }
    }

    /// Runs tasks of a job again (all, or those `ids`), reviving a
    /// finished job.
    fn resubmit(
        &mut self,
        client: Vec<u8>,
        job_id: JobId,
        ids: Option<Vec<u64>>,
    ) -> Result<Reply, HubError> {
        let Some(record) = self.store.job(job_id)? else {
            return Ok(Reply::NotFound(format!("no job {job_id} in the store")));
        };
        // The client's ids are the store's seqs: map them to store task ids.
        let store_ids: Option<Vec<TaskId>> = match &ids {
            None => None,
            Some(ids) => {
                let wanted: HashSet<u64> = ids.iter().copied().collect();
                let tasks = self.store.tasks(&TaskFilter::Job(job_id), false)?;
                let found: Vec<TaskId> = tasks
                    .iter()
                    .filter(|t| wanted.contains(&t.seq))
                    .map(|t| t.id)
                    .collect();
                if found.len() != wanted.len() {
                    return Ok(Reply::Error(format!(
                        "job {job_id} has no task with some of the ids {ids:?}"
                    )));
                }
                Some(found)
            }
        };
        let tasks = match self.store.reset_for_resubmit(job_id, store_ids.as_deref()) {
            Ok(tasks) => tasks,
            Err(e) => return Ok(Reply::Error(e.to_string())),
        };
        let count = tasks.len() as u64;
        let spec = JobSpec::of(&record);
        // A job still running takes the tasks back into its count; a finished
        // one is revived with exactly them outstanding.
        let revived = !self.state.jobs.contains_key(&job_id);
        let job = self
            .state
            .jobs
            .entry(job_id)
            .or_insert_with(|| Job::new(client, spec.kind, spec.description));
        for task in tasks {
            let mut again = Task::new(task.id, task.request.unwrap_or_default(), task.attempts);
            again.uncounted = !revived;
            job.put(task.seq, again);
            job.queue.push_back(task.seq);
        }
        if revived {
            job.total = Some(count);
        } else {
            job.finished = job.finished.saturating_sub(count);
        }
        job.halted = false;
        self.store.flush()?;
        if count > 0 {
            self.state.take_turn(job_id);
        }
        self.retire_if_done(job_id);
        Ok(Reply::Resubmitted(count))
    }
}
