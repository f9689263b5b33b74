//! Draining: an engine whose allocation ends soon takes no task that would
//! not finish in time (by the median time of its job's tasks here), tells
//! the hub, finishes what runs and leaves; `zcluster drain` starts the same
//! on demand. And results of tasks killed by a stop signal, held a moment
//! in case the engine is being stopped by the same hand.

use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::send::{results_to_hub, send_control};
use super::{job_of, Engine, Flow};
use crate::hub::protocol::{EngineMessage, JobId};
use crate::message::ClusterResult;
use crate::worker::WorkerExit;

/// How long a result whose command died of SIGTERM, SIGINT or SIGHUP is
/// held before it goes to the hub. `scancel`, `systemctl stop` and a
/// Ctrl-C signal the worker and its tasks at once, in no set order: if the
/// worker is told to stop within this time, the task was killed with it,
/// not for its own fault, and the hub runs it again elsewhere (the engine
/// unregisters holding it) instead of recording a failure.
pub(super) const STOP_SIGNAL_GRACE: Duration = Duration::from_millis(500);

/// Time kept between a task's expected end and the allocation's end.
pub(super) const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// Past this close to its end, an engine still running tasks kills them
/// and leaves (they run again elsewhere, not counted as a death), rather
/// than be killed by the batch system with results unsent.
pub(super) const HARD_STOP_BEFORE_END: Duration = Duration::from_secs(1);

/// Task times kept per job for its median.
pub(super) const TASK_TIME_SAMPLES: usize = 64;

impl Engine<'_> {
    /// The median time of job `job`'s tasks here, once one finished.
    pub(super) fn median_time(&self, job: JobId) -> Option<Duration> {
        self.task_times.get(&job)?.median()
    }

    /// The longest median among the jobs it holds: a task of theirs is
    /// what it would start next. (Holding none, a task the hub sends is
    /// weighed as it comes, in `start_waiting`.)
    pub(super) fn longest_median(&self) -> Duration {
        self.tickets
            .values()
            .map(|(job, _)| *job)
            .chain(self.waiting.iter().map(job_of))
            .filter_map(|job| self.median_time(job))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Starts draining: the hub sends no more tasks, the waiting ones stay
    /// unstarted (given back when the engine leaves), the running finish.
    pub(super) fn start_drain(&mut self, why: &str) {
        if self.draining {
            return;
        }
        self.draining = true;
        info!(why, running = self.tickets.len(), "draining");
        send_control(&self.conn.link.socket, &EngineMessage::Draining);
    }

    /// Near the allocation's end: drains once no task it knows would finish
    /// in time, and at the very end kills what still runs and leaves (the
    /// hub runs those again elsewhere, not as a death).
    pub(super) fn before_end(&mut self) -> Option<Flow> {
        let end = self.options.end_at?;
        let now = SystemTime::now();
        let longest = self.longest_median();
        if !self.draining && now + longest + DRAIN_MARGIN > end {
            self.start_drain("the allocation ends before another task would finish");
        }
        if now + HARD_STOP_BEFORE_END >= end {
            if !self.tickets.is_empty() {
                warn!(
                    running = self.tickets.len(),
                    "the allocation ends: stopping tasks that did not finish in time"
                );
            }
            self.flags.cancel_all();
            send_control(&self.conn.link.socket, &EngineMessage::Unregister);
            return Some(Flow::Exit(WorkerExit::Killed));
        }
        None
    }

    /// Sends the held results whose grace is over: no stop came, so their
    /// signal was the task's own.
    pub(super) fn release_held(&mut self) {
        if self.held.is_empty() || self.stop.is_stopped() {
            return;
        }
        let now = Instant::now();
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(at, _, _)| now.duration_since(*at) >= STOP_SIGNAL_GRACE);
        self.held = kept;
        let due: Vec<(JobId, ClusterResult, bool)> = due
            .into_iter()
            .map(|(_, job, result)| (job, result, false))
            .collect();
        results_to_hub(&self.conn.link.socket, &due);
        let window = self.conn.heartbeat * (self.options.misses + 2);
        for (job, result, _) in due {
            self.recent.keep(job, result, window);
        }
    }
}
