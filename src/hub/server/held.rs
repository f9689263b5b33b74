//! The commit gate in use (see [`commit`](crate::hub::commit)): a task is
//! queued for dispatch, and a result or a failure the hub decided goes to
//! its client, only once the store has committed its write. A store that
//! cannot write stops the line.

use std::sync::Arc;

use tracing::error;

use super::outbox::Outbox;
use super::Core;
use crate::hub::protocol::{ClientCall, JobId};
use crate::hub::store::StoreError;
use crate::message::Header;

/// What the hub lets out only once the store has committed its write.
pub(super) enum Held {
    /// Tasks of a job, to queue for dispatch (in this order) once their
    /// insert is committed.
    Tasks { job: JobId, tasks: Vec<u64> },
    /// A result for its client, once the task's finish is committed.
    Result {
        client: Vec<u8>,
        header: Header,
        body: Vec<u8>,
    },
    /// A failure the hub decided, for its client, once it is committed.
    Failure {
        client: Vec<u8>,
        job: JobId,
        task: u64,
        reason: String,
    },
}

impl<O: Outbox> Core<O> {
    /// Lets `held` out once the write queued just before it is committed:
    /// at once if it is (the memory store), else when [`release`](Self::release)
    /// sees the store's position reach it.
    pub(super) fn hold(&mut self, held: Held) {
        let position = self.store.written();
        if self.held.is_empty() && position <= self.commits.committed() {
            self.let_out(held);
        } else {
            self.held.hold(position, held);
        }
    }

    /// Lets out everything whose write the store has committed; if the
    /// store stopped at a failed write, stops the line instead.
    pub(super) fn release(&mut self) {
        if let Some(failure) = self.commits.failure() {
            if self.stopped.is_none() {
                let failure = StoreError::CannotWrite(Arc::clone(failure));
                self.stop_the_line(&failure);
            }
            return;
        }
        if self.held.is_empty() {
            return;
        }
        for held in self.held.release(self.commits.committed()) {
            self.let_out(held);
        }
    }

    fn let_out(&mut self, held: Held) {
        match held {
            Held::Tasks { job, tasks } => {
                let Some(j) = self.state.jobs.get_mut(&job) else {
                    return;
                };
                let before = j.queue.len();
                for task in tasks {
                    if j.tasks.contains_key(&task) {
                        j.queue.push_back(task);
                    }
                }
                if j.queue.len() > before {
                    self.state.take_turn(job);
                }
            }
            Held::Result {
                client,
                header,
                body,
            } => self.outbox.result(&client, &header, &body),
            Held::Failure {
                client,
                job,
                task,
                reason,
            } => self.outbox.failure(&client, job, task, &reason),
        }
    }

    /// The store cannot write: nothing more is dispatched, delivered or
    /// acknowledged. Every job stops; its client learns why from the
    /// answer to its next call (it asks within a second of hearing
    /// nothing), and new jobs are refused. The hub stays up to say so and
    /// to answer queries from what was committed; restarted once the cause
    /// is fixed, it carries its jobs on from the last commit. (Pausing
    /// instead, and retrying the lost batch, would keep every client
    /// waiting on a disk an operator may not look at for hours: a failure
    /// they see at once is the louder promise.)
    fn stop_the_line(&mut self, failure: &StoreError) {
        error!(
            error = %failure,
            jobs = self.state.jobs.len(),
            held = self.held.len(),
            "the task store cannot write: nothing more is dispatched, delivered or recorded, \
             and every job is stopped; make room (or fix the cause), then restart the hub, \
             which carries its jobs on from the last commit"
        );
        self.held.clear();
        self.stopped = Some(format!("the hub's {failure}"));
    }

    /// The answer to a job call while the line is stopped, if it is.
    pub(super) fn refusal_while_stopped(&self, call: &ClientCall) -> Option<String> {
        let reason = self.stopped.as_ref()?;
        let stopped = |job: JobId| {
            format!(
                "job {job} stopped: {reason}. Nothing more of it runs or is delivered; \
                 make room, restart the hub, then `zcluster map --attach {job}` with the same \
                 inputs and command carries it on (`zcluster results {job}` shows what finished)"
            )
        };
        match call {
            ClientCall::OpenJob { .. } => Some(format!(
                "{reason}: the hub takes no jobs until it is restarted with room to write"
            )),
            ClientCall::CloseJob { job, .. }
            | ClientCall::CheckJob { job }
            | ClientCall::Attach { job, .. }
            | ClientCall::CancelJob { job, .. }
            | ClientCall::Resubmit { job, .. } => Some(stopped(*job)),
            ClientCall::Purge(_) => Some(reason.clone()),
            _ => None,
        }
    }
}
