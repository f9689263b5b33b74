//! Cancel flags an engine shares with its slot handlers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::hub::protocol::JobId;
use crate::ids::{IdMap, IdSet};

/// The flags themselves: one per task running here, by its slot ticket
/// (what a handler sees as the request id), and the jobs cancelled as a
/// whole (a task of one that starts later is cancelled at once).
#[derive(Default)]
struct Cancels {
    jobs: IdSet<JobId>,
    tasks: IdMap<u64, (JobId, Arc<AtomicBool>)>,
}

/// Shared between the engine's loop (which cancels) and its slots' handlers
/// (which watch): a lock around plain data, never around a socket.
#[derive(Clone, Default)]
pub(super) struct CancelFlags(Arc<Mutex<Cancels>>);

impl CancelFlags {
    fn lock(&self) -> MutexGuard<'_, Cancels> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The flag a starting task (its slot ticket) watches: set at once when
    /// its job was cancelled as a whole.
    pub(super) fn task_flag(&self, job: JobId, ticket: u64) -> Arc<AtomicBool> {
        let mut cancels = self.lock();
        let cancelled = cancels.jobs.contains(&job);
        let flag = cancels
            .tasks
            .entry(ticket)
            .or_insert((job, Arc::default()))
            .1
            .clone();
        if cancelled {
            flag.store(true, Ordering::SeqCst);
        }
        flag
    }

    /// Cancels every task of `job` running here, and those that start later.
    pub(super) fn cancel_job(&self, job: JobId) {
        let mut cancels = self.lock();
        cancels.jobs.insert(job);
        for (j, flag) in cancels.tasks.values() {
            if *j == job {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Cancels the task of slot ticket `ticket`, if it is running.
    pub(super) fn cancel_task(&self, ticket: u64) {
        if let Some((_, flag)) = self.lock().tasks.get(&ticket) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Cancels every task running here (the engine is stopping).
    pub(super) fn cancel_all(&self) {
        for (_, flag) in self.lock().tasks.values() {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Forgets the flag of a task that finished, and says whether it was
    /// cancelled.
    pub(super) fn finished(&self, ticket: u64) -> bool {
        self.lock()
            .tasks
            .remove(&ticket)
            .is_some_and(|(_, flag)| flag.load(Ordering::SeqCst))
    }

    /// Forgets each cancelled job of which `holds` says no task is running
    /// or waiting here any more: a later resubmit of the same job then
    /// runs, and cancelled jobs do not pile up.
    pub(super) fn forget_finished_jobs(&self, holds: impl Fn(JobId) -> bool) {
        let mut cancels = self.lock();
        if cancels.jobs.is_empty() {
            return;
        }
        cancels.jobs.retain(|job| holds(*job));
    }
}
