//! The typed hub client: one method per thing a person asks a hub
//! (`zcluster status`, `results`, `purge`, `kill`, `ping`, `resubmit`,
//! `shutdown`), each returning what the answer means rather than a
//! protocol [`Reply`] to match, so that no front end builds calls or reads
//! replies itself.

use std::time::Duration;

use super::{ClientError, HubClient};
use crate::hub::protocol::{
    ClientCall, EngineId, HubInfo, HubStatus, JobId, PurgeTarget, Reply, TaskReport,
};
use crate::message::CommandReply;

/// How long a call answered only once every engine has (kill, ping,
/// shutdown) waits for the hub: the hub itself waits for silent engines
/// before it answers, so this is well over a call's usual wait.
pub const ENGINE_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What the engines said to a kill (or restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Killed {
    /// The engines that acknowledged.
    pub acknowledged: Vec<EngineId>,
    /// The engines asked that did not acknowledge in time.
    pub silent: Vec<EngineId>,
}

/// What the engines said to a ping.
#[derive(Debug, Clone)]
pub struct Pong {
    /// Each answering engine: who it is and what it has done.
    pub replies: Vec<CommandReply>,
    /// The engines asked that did not answer in time.
    pub silent: Vec<EngineId>,
}

/// An answer that does not fit the call it answers.
fn unexpected(call: &str, reply: Reply) -> ClientError {
    ClientError::Unexpected(format!("{reply:?} (to a {call} call)"))
}

impl HubClient {
    /// What the hub is like: its engines and slots, its message limit.
    pub fn hello(&mut self) -> Result<HubInfo, ClientError> {
        match self.call(&ClientCall::Hello)? {
            Reply::Hello(info) => Ok(info),
            other => Err(unexpected("hello", other)),
        }
    }

    /// The hub's engines and jobs; `verbose` also lists the tasks each
    /// engine runs and each job has queued.
    pub fn status(&mut self, verbose: bool) -> Result<HubStatus, ClientError> {
        match self.call(&ClientCall::Status { verbose })? {
            Reply::Status(status) => Ok(status),
            other => Err(unexpected("status", other)),
        }
    }

    /// Every recorded task of `job`, read page by page so that a job of any
    /// size comes back in replies of bounded size. An unknown job is
    /// [`ClientError::NotFound`].
    pub fn results(
        &mut self,
        job: JobId,
        status_only: bool,
    ) -> Result<Vec<TaskReport>, ClientError> {
        let mut all = Vec::new();
        self.each_result(job, status_only, |report| all.push(report))?;
        Ok(all)
    }

    /// Hands each recorded task of `job` to `visit`, a page at a time, so a
    /// caller keeping only a little of each (its inputs' numbers, say)
    /// never holds the job's every output.
    pub fn each_result(
        &mut self,
        job: JobId,
        status_only: bool,
        mut visit: impl FnMut(TaskReport),
    ) -> Result<(), ClientError> {
        let mut after = None;
        loop {
            let call = ClientCall::ResultsPage {
                job,
                after,
                status_only,
            };
            match self.call(&call)? {
                Reply::ResultsPage { reports, next } => {
                    reports.into_iter().for_each(&mut visit);
                    match next {
                        // A cursor that does not move would page for ever.
                        Some(cursor) if Some(cursor) != after => after = Some(cursor),
                        _ => return Ok(()),
                    }
                }
                other => return Err(unexpected("results", other)),
            }
        }
    }

    /// The recorded tasks `ids` of `job` (those the store has), in one
    /// reply: for a few tasks, where [`results`](Self::results) would read
    /// the whole job.
    pub fn results_of(
        &mut self,
        job: JobId,
        ids: Vec<u64>,
        status_only: bool,
    ) -> Result<Vec<TaskReport>, ClientError> {
        let call = ClientCall::Results {
            job,
            ids: Some(ids),
            status_only,
        };
        match self.call(&call)? {
            Reply::Results(reports) => Ok(reports),
            other => Err(unexpected("results", other)),
        }
    }

    /// Forgets recorded tasks; returns how many.
    pub fn purge(&mut self, target: PurgeTarget) -> Result<u64, ClientError> {
        match self.call(&ClientCall::Purge(target))? {
            Reply::Purged(n) => Ok(n),
            other => Err(unexpected("purge", other)),
        }
    }

    /// Tells engines (all, or `engines`) to exit after their tasks, or to
    /// restart, and says which acknowledged.
    pub fn kill(
        &mut self,
        engines: Option<Vec<EngineId>>,
        restart: bool,
    ) -> Result<Killed, ClientError> {
        let call = ClientCall::Kill { engines, restart };
        match self.call_waiting(&call, ENGINE_CALL_TIMEOUT)? {
            Reply::Killed {
                acknowledged,
                silent,
            } => Ok(Killed {
                acknowledged,
                silent,
            }),
            other => Err(unexpected("kill", other)),
        }
    }

    /// Drains `engines`: they take no new tasks, finish what they run and
    /// leave cleanly; says which acknowledged.
    pub fn drain(&mut self, engines: Vec<EngineId>) -> Result<Killed, ClientError> {
        match self.call_waiting(&ClientCall::Drain { engines }, ENGINE_CALL_TIMEOUT)? {
            Reply::Killed {
                acknowledged,
                silent,
            } => Ok(Killed {
                acknowledged,
                silent,
            }),
            other => Err(unexpected("drain", other)),
        }
    }

    /// Asks every engine who it is.
    pub fn ping(&mut self) -> Result<Pong, ClientError> {
        match self.call_waiting(&ClientCall::Ping, ENGINE_CALL_TIMEOUT)? {
            Reply::Pong { replies, silent } => Ok(Pong { replies, silent }),
            other => Err(unexpected("ping", other)),
        }
    }

    /// Runs `job`'s failed tasks again (or only `ids`); returns how many
    /// were queued.
    pub fn resubmit(&mut self, job: JobId, ids: Option<Vec<u64>>) -> Result<u64, ClientError> {
        match self.call(&ClientCall::Resubmit { job, ids })? {
            Reply::Resubmitted(n) => Ok(n),
            other => Err(unexpected("resubmit", other)),
        }
    }

    /// Whether `job` still runs: `Ok(true)` while it has tasks to finish,
    /// `Ok(false)` once it is over (the hub refuses to check a job that is
    /// not live).
    pub fn job_live(&mut self, job: JobId) -> Result<bool, ClientError> {
        match self.call(&ClientCall::CheckJob { job }) {
            Ok(Reply::JobLive { .. }) => Ok(true),
            Err(ClientError::Refused(_)) => Ok(false),
            Ok(other) => Err(unexpected("check job", other)),
            Err(e) => Err(e),
        }
    }

    /// Cancels `job`: its queued tasks are dropped (their ids returned),
    /// and its running ones killed when `kill_running`.
    pub fn cancel_job(&mut self, job: JobId, kill_running: bool) -> Result<Vec<u64>, ClientError> {
        match self.call(&ClientCall::CancelJob { job, kill_running })? {
            Reply::Cancelled(dropped) => Ok(dropped),
            other => Err(unexpected("cancel", other)),
        }
    }

    /// Stops the hub, and first its engines when `workers`. Any answer
    /// means the hub is stopping.
    pub fn shutdown(&mut self, workers: bool) -> Result<(), ClientError> {
        self.call_waiting(&ClientCall::Shutdown { workers }, ENGINE_CALL_TIMEOUT)
            .map(|_| ())
    }
}
