//! Reactions to results: a failed task tried again (elsewhere), a finished
//! one recorded and sent to its client, the first of two copies winning and
//! the other cancelled; and sending what the scheduler assigned.

use std::time::{Instant, SystemTime};

use tracing::{debug, info, warn};

use super::held::Held;
use super::outbox::Outbox;
use super::scheduler::{self, Assignment, Before};
use super::Core;
use crate::hub::protocol::{EngineId, HubToEngine, JobId};
use crate::hub::store::{Finished, TaskState};
use crate::message::{
    self, decode_value, encode_value, ClusterRequest, ClusterResult, Header, MessageError,
    ResultStatus,
};
use crate::resources::{TaskGrant, GRANT_KEY};

/// The request body with its attempt number in the metadata (re-encoded
/// only on a retry, which is rare).
fn with_attempt(body: &[u8], attempt: u32) -> Vec<u8> {
    match decode_value::<ClusterRequest>(body, "request") {
        Ok(request) => {
            let request = request.with_metadata(message::ATTEMPT_KEY, attempt.to_string());
            encode_value(&request, "request").unwrap_or_else(|_| body.to_vec())
        }
        Err(_) => body.to_vec(),
    }
}

/// The request body with what its task was given in the metadata (for a
/// job with a resource request only).
fn with_grant(body: &[u8], grant: &TaskGrant) -> Vec<u8> {
    match decode_value::<ClusterRequest>(body, "request") {
        Ok(request) => {
            let request = request.with_metadata(GRANT_KEY, grant.to_metadata());
            encode_value(&request, "request").unwrap_or_else(|_| body.to_vec())
        }
        Err(_) => body.to_vec(),
    }
}

impl<O: Outbox> Core<O> {
    /// A result from engine `engine_id` for the task `header` names.
    pub(super) fn on_result(
        &mut self,
        engine_id: EngineId,
        header: Header,
        body: &[u8],
        status: ResultStatus,
    ) {
        let key = (header.job, header.id);
        if self.state.release(engine_id, key) {
            if let Some(engine) = self.state.engines.get_mut(&engine_id) {
                engine.completed += 1;
            }
        }
        let Some(job) = self.state.jobs.get_mut(&key.0) else {
            return;
        };
        let Some(task) = job.tasks.get_mut(&key.1) else {
            debug!(job = key.0, task = key.1, "dropping a duplicate result");
            return;
        };
        // Copies of it that may still run elsewhere: a straggler's second
        // copy, or (for a result from an engine that lost the task, say one
        // wrongly declared dead) whatever runs it now.
        let others: Vec<EngineId> = [task.engine, task.spare_engine()]
            .into_iter()
            .flatten()
            .filter(|&e| e != engine_id)
            .collect();
        if status == ResultStatus::Fail && !others.is_empty() && !job.halted {
            // This copy failed while another runs on: that one decides
            // (and any further copy goes to an engine it has not failed on).
            task.drop_copy(engine_id);
            task.failed_on.push(engine_id);
            return;
        }
        let Some(mut task) = job.take(key.1) else {
            return;
        };
        if status == ResultStatus::Ok {
            if let Some(started) = task.started {
                job.record_duration(started.elapsed());
            }
        }
        // The first result wins; the other copies are stopped.
        let losers: Vec<Vec<u8>> = others
            .iter()
            .filter_map(|id| self.state.engines.get(id))
            .map(|e| e.identity.clone())
            .collect();
        if status == ResultStatus::Fail && task.attempts <= job.retries && !job.halted {
            // Run it again, preferably elsewhere; the client sees only the
            // last attempt, which tells it how many there were.
            task.failed_on.push(engine_id);
            task.engine = None;
            task.spare = None;
            task.started = None;
            task.request = with_attempt(&task.request, task.attempts + 1).into();
            if let Err(e) = self.store.task_requeued(task.store_id) {
                warn!(error = %e, "cannot record a retry");
            }
            job.put(key.1, task);
            job.queue.push_back(key.1);
            self.state.take_turn(key.0);
            return;
        }
        job.finished += 1;
        match status {
            ResultStatus::Ok => job.succeeded += 1,
            ResultStatus::Fail => job.failed += 1,
        }
        if job
            .halt
            .is_some_and(|rule| rule.reached(job.failed, job.succeeded))
        {
            job.halted = true;
        }
        let error = match status {
            ResultStatus::Ok => None,
            ResultStatus::Fail => decode_value::<ClusterResult>(body, "result")
                .ok()
                .and_then(|r| r.exception),
        };
        let finished = Finished {
            status: match status {
                ResultStatus::Ok => TaskState::Ok,
                ResultStatus::Fail => TaskState::Failed,
            },
            result: body.to_vec(),
            error,
            completed: SystemTime::now(),
            engine: engine_id,
            attempts: task.attempts,
        };
        let recorded = self.store.task_finished(task.store_id, finished);
        let client = job.client.clone();
        for identity in losers {
            let cancel = HubToEngine::CancelTask {
                job: key.0,
                id: key.1,
            };
            self.outbox.to_engine(&identity, &cancel);
        }
        // Delivered once recorded: a result its client printed is never
        // run again, and one that cannot be recorded is not delivered.
        match recorded {
            Ok(()) => self.hold(Held::Result {
                client,
                header,
                body: body.to_vec(),
            }),
            Err(e) => {
                warn!(error = %e, job = key.0, task = key.1, "cannot record a result; not delivering it")
            }
        }
        self.retire_if_done(key.0);
    }

    /// Forgets `job_id` if it is closed and every task of it finished.
    pub(super) fn retire_if_done(&mut self, job_id: JobId) {
        if self.state.retire_if_done(job_id) {
            debug!(job = job_id, "job finished");
        }
    }

    /// Ends a task that will not run (again) as failed with `reason`: in
    /// the store, in the job's count, and at its client. The caller has
    /// taken it off the queue and any engine.
    pub(super) fn finish_unrun(&mut self, job_id: JobId, task_id: u64, reason: &str) {
        let Some(job) = self.state.jobs.get_mut(&job_id) else {
            return;
        };
        let Some(task) = job.take(task_id) else {
            return;
        };
        job.finished += 1;
        let client = job.client.clone();
        let finished = Finished {
            status: TaskState::Failed,
            result: Vec::new(),
            error: Some(reason.to_string()),
            completed: SystemTime::now(),
            engine: 0,
            attempts: task.attempts,
        };
        match self.store.task_finished(task.store_id, finished) {
            Ok(()) => self.hold(Held::Failure {
                client,
                job: job_id,
                task: task_id,
                reason: reason.to_string(),
            }),
            Err(e) => warn!(error = %e, "cannot record a failure; not delivering it"),
        }
    }

    /// Sends what the [`scheduler`] assigns to free slots, and records each
    /// start. A send that fails marks its engine unreachable (or, for a
    /// request over the size limit, fails its tasks), and what it was to
    /// take is assigned again among the others.
    pub(super) fn dispatch(&mut self) {
        if self.stopped.is_some() {
            return;
        }
        // Each round that fails leaves one engine fewer to fail on.
        for _ in 0..=self.state.engines.len() {
            let plan = scheduler::dispatch(&mut self.state, Instant::now());
            if plan.is_empty() {
                return;
            }
            let mut unsent = Vec::new();
            let now = SystemTime::now();
            for assignment in plan {
                match self.send(&assignment) {
                    Ok(()) => self.record_starts(&assignment, now),
                    Err(e) => unsent.push((assignment, e)),
                }
            }
            if unsent.is_empty() {
                return;
            }
            for (assignment, error) in unsent.into_iter().rev() {
                self.on_unsent(&assignment, error);
            }
        }
    }

    /// Starts second copies of stragglers (see
    /// [`scheduler::speculate`]).
    pub(super) fn speculate(&mut self) {
        if self.stopped.is_some() {
            return;
        }
        let plan = scheduler::speculate(&mut self.state, Instant::now());
        for assignment in plan {
            match self.send(&assignment) {
                Ok(()) => {
                    let (job, task) = (assignment.job, assignment.tasks[0]);
                    let ran_for = self
                        .state
                        .task(job, task)
                        .and_then(|t| t.started)
                        .map(|s| s.elapsed());
                    info!(
                        job,
                        task,
                        engine = assignment.engine,
                        ?ran_for,
                        "straggler: running a second copy"
                    );
                }
                Err(e) => {
                    debug!(engine = assignment.engine, error = %e, "cannot send a second copy");
                    scheduler::unsent(&mut self.state, &assignment, false);
                }
            }
        }
    }

    /// Sends one assignment's tasks to its engine.
    fn send(&mut self, assignment: &Assignment) -> Result<(), MessageError> {
        let state = &self.state;
        let Some(engine) = state.engines.get(&assignment.engine) else {
            return Ok(());
        };
        let Some(job) = state.jobs.get(&assignment.job) else {
            return Ok(());
        };
        if job.request.is_some() {
            // Each task goes with what it was given there.
            let granted: Vec<(u64, Vec<u8>)> = assignment
                .tasks
                .iter()
                .filter_map(|id| {
                    let task = job.tasks.get(id)?;
                    let body = match engine.allocations.get(&(assignment.job, *id)) {
                        Some(a) => with_grant(&task.request, &TaskGrant::of(&engine.resources, a)),
                        None => task.request.to_vec(),
                    };
                    Some((*id, body))
                })
                .collect();
            let items: Vec<(u64, &[u8])> = granted.iter().map(|(id, b)| (*id, &b[..])).collect();
            return self.outbox.tasks(&engine.identity, assignment.job, &items);
        }
        let items: Vec<(u64, &[u8])> = assignment
            .tasks
            .iter()
            .filter_map(|id| job.tasks.get(id).map(|t| (*id, &t.request[..])))
            .collect();
        self.outbox.tasks(&engine.identity, assignment.job, &items)
    }

    /// Records in the store that an assignment's tasks started.
    fn record_starts(&mut self, assignment: &Assignment, now: SystemTime) {
        let Some(job) = self.state.jobs.get(&assignment.job) else {
            return;
        };
        for id in &assignment.tasks {
            let Some(task) = job.tasks.get(id) else {
                continue;
            };
            if let Err(e) =
                self.store
                    .task_started(task.store_id, assignment.engine, now, task.attempts)
            {
                warn!(error = %e, "cannot record a start");
            }
        }
    }

    /// An assignment could not be sent.
    fn on_unsent(&mut self, assignment: &Assignment, error: MessageError) {
        debug_assert!(matches!(assignment.before, Before::Queued(_)));
        if let MessageError::TooLarge { size, limit, .. } = error {
            // A retry's attempt number took the request past the
            // limit: it can go nowhere.
            scheduler::unsent(&mut self.state, assignment, false);
            let reason = format!(
                "its request of {size} bytes is over the hub's message limit of {limit} bytes"
            );
            for &id in &assignment.tasks {
                self.finish_unrun(assignment.job, id, &reason);
            }
            self.retire_if_done(assignment.job);
            return;
        }
        // With ROUTER_MANDATORY an engine whose connection is gone
        // is an error here. Keep the tasks and send no more there:
        // the engine died (a task that aborts it closes its
        // connection at once), and its missed heartbeats will say
        // so and count the death against what it held; or ZeroMQ is
        // reconnecting it, and it is heard from again.
        warn!(engine = assignment.engine, error = %error, "cannot send tasks; engine unreachable, tasks requeued");
        if let Some(engine) = self.state.engines.get_mut(&assignment.engine) {
            engine.unreachable = true;
        }
        scheduler::unsent(&mut self.state, assignment, true);
    }
}
