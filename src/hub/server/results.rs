//! Reactions to results: a failed task tried again (elsewhere), a finished
//! one recorded and sent to its client, the first of two copies winning and
//! the other cancelled; and sending what the scheduler assigned.

use std::time::{Instant, SystemTime};

use tracing::{debug, info, warn};

use super::held::Held;
use super::outbox::{Outbox, TaskOut};
use super::scheduler::{self, Assignment, Before};
use super::Core;
use crate::hub::protocol::{EngineId, HubToEngine, JobId, Notification};
use crate::hub::store::{Finished, TaskState};
use crate::message::{ClusterResult, Header, MessageError, ResultStatus};
use crate::resources::TaskGrant;

/// The reason recorded for a failure that came without one (engines always
/// give one; this guards the record against one that did not).
const NO_REASON: &str = "failed (the engine gave no reason)";

impl<O: Outbox> Core<O> {
    /// A result from engine `engine_id` for the task `header` names, with
    /// its status and, for a failure, the reason the engine gave beside the
    /// body (which is recorded and forwarded as it came, never decoded).
    pub(super) fn on_result(
        &mut self,
        engine_id: EngineId,
        header: Header,
        body: &[u8],
        status: ResultStatus,
        error: Option<String>,
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
            // How long the handler ran, as the engine measured it: the
            // time since the task was sent would add the round trip and
            // the wait behind the tasks queued before it at the engine,
            // which grow with the cluster (at a thousand engines, tens of
            // milliseconds for a no-op), and make every job look too long
            // to batch or prefetch.
            let ran =
                ClusterResult::elapsed_in_body(body).or_else(|| task.started.map(|s| s.elapsed()));
            if let Some(ran) = ran {
                job.record_duration(ran);
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
            self.outbox.publish(&Notification::TaskRetried {
                job: key.0,
                task: key.1,
                engine: engine_id,
                attempt: task.attempts + 1,
                reason: error.unwrap_or_else(|| NO_REASON.to_string()),
                at: SystemTime::now(),
            });
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
            ResultStatus::Fail => Some(error.unwrap_or_else(|| NO_REASON.to_string())),
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
        // A failure's record always has its reason (set just above).
        if let Some(reason) = &finished.error {
            self.outbox.publish(&Notification::TaskFailed {
                job: key.0,
                task: key.1,
                engine: Some(engine_id),
                attempts: task.attempts,
                reason: reason.clone(),
                at: finished.completed,
            });
        }
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
        let counts = self
            .state
            .jobs
            .get(&job_id)
            .map(|job| (job.succeeded, job.failed));
        if self.state.retire_if_done(job_id) {
            debug!(job = job_id, "job finished");
            let (succeeded, failed) = counts.unwrap_or_default();
            self.outbox.publish(&Notification::JobFinished {
                job: job_id,
                succeeded,
                failed,
                at: SystemTime::now(),
            });
        }
    }

    /// [`finish_unrun`](Self::finish_unrun) for a task that fails in the
    /// hub (a poison task, one too large to send), published as failed.
    pub(super) fn fail_unrun(&mut self, job_id: JobId, task_id: u64, reason: &str) {
        let attempts = self.state.task(job_id, task_id).map_or(0, |t| t.attempts);
        self.finish_unrun(job_id, task_id, reason);
        self.outbox.publish(&Notification::TaskFailed {
            job: job_id,
            task: task_id,
            engine: None,
            attempts,
            reason: reason.to_string(),
            at: SystemTime::now(),
        });
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
                    self.outbox.publish(&Notification::TaskCopied {
                        job,
                        task,
                        engine: assignment.engine,
                        running_for: ran_for.unwrap_or_default(),
                        at: SystemTime::now(),
                    });
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
        // Each task goes with its attempt and, for a job with a request,
        // what it was given there, beside the request as it was recorded.
        let items: Vec<TaskOut<'_>> = assignment
            .tasks
            .iter()
            .filter_map(|id| {
                job.tasks.get(id).map(|t| TaskOut {
                    id: *id,
                    attempt: t.attempts.max(1),
                    grant: engine
                        .allocations
                        .get(&(assignment.job, *id))
                        .map(|a| TaskGrant::of(&engine.resources, a).to_metadata()),
                    request: &t.request[..],
                })
            })
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
            // The request with its framing (a retry's attempt number
            // beside it) is past the limit: it can go nowhere.
            scheduler::unsent(&mut self.state, assignment, false);
            let reason = format!(
                "its request of {size} bytes is over the hub's message limit of {limit} bytes"
            );
            for &id in &assignment.tasks {
                self.fail_unrun(assignment.job, id, &reason);
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
