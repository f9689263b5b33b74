//! What engines, clients and the hub say to each other.
//!
//! Tasks and results travel as ordinary [`ClusterRequest`]/[`ClusterResult`]
//! messages whose header carries the job and the client's task id, so the
//! hub routes them by header alone and forwards result bodies unchanged.
//! Everything else is a [`MessageKind::Control`] message whose body is one
//! of the enums below; a client's call carries its request number in the
//! header id and the reply carries it back.
//!
//! [`ClusterRequest`]: crate::message::ClusterRequest
//! [`ClusterResult`]: crate::message::ClusterResult
//! [`MessageKind::Control`]: crate::message::MessageKind::Control

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::message::{ClusterResult, CommandReply, ResultMetadata, ResultStatus};
use crate::resources::{ResourceOffer, ResourceRequest};

use super::store::TaskState;
pub use super::store::{EngineId, JobId};

/// One task of a [`MessageKind::Tasks`] message from the hub: its id, the
/// attempt this is (1 for the first run), for a job with a resource request
/// what this copy was given on the engine (a
/// [`TaskGrant`](crate::resources::TaskGrant) in its metadata form), and
/// its encoded [`ClusterRequest`](crate::message::ClusterRequest). The
/// engine stamps a later attempt and the grant into the request's metadata
/// ([`ATTEMPT_KEY`], [`GRANT_KEY`]), so the hub sends the recorded request
/// as it is, never decoding or re-encoding it.
///
/// [`MessageKind::Tasks`]: crate::message::MessageKind::Tasks
/// [`ATTEMPT_KEY`]: crate::message::ATTEMPT_KEY
/// [`GRANT_KEY`]: crate::resources::GRANT_KEY
pub type TaskItem = (u64, u32, Option<String>, serde_bytes::ByteBuf);

/// One result of a [`MessageKind::TaskResults`] message from an engine:
/// what the hub needs to route and record it, beside the encoded
/// [`ClusterResult`] it forwards to the
/// client as it came, never decoding it.
///
/// The hub sends results on to a client in the same form, several per
/// `TaskResults` message (with `error` left out: it is in the result
/// itself), flushed at the end of every turn of its loop: one signature for
/// many results, and never a wait for a batch to fill.
///
/// [`MessageKind::TaskResults`]: crate::message::MessageKind::TaskResults
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultItem {
    /// The task's job.
    pub job: JobId,
    /// The task's id.
    pub id: u64,
    /// Whether it succeeded.
    pub status: ResultStatus,
    /// Why it failed (the result's `exception`), for the task record.
    pub error: Option<String>,
    /// The encoded result.
    pub body: serde_bytes::ByteBuf,
}

/// One task of a [`MessageKind::Tasks`] message from a client: the
/// client's id for it and its encoded
/// [`ClusterRequest`](crate::message::ClusterRequest), which the hub
/// records and sends on as it came, never decoding it. A client sends its
/// tasks several per message (the header's job is theirs, the header id
/// the first one's), so one signature and one message cover many tasks;
/// a batch of one goes as a plain request message.
///
/// [`MessageKind::Tasks`]: crate::message::MessageKind::Tasks
pub type SubmitItem = (u64, serde_bytes::ByteBuf);

/// Engine to hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineMessage {
    /// Join: who I am and how many tasks I can run at once.
    Register {
        /// A name unique to this engine process (host, pid, random).
        identity: String,
        /// Host name.
        host: String,
        /// Process id.
        pid: u32,
        /// Tasks it runs at once.
        slots: u32,
        /// Named handlers compiled into it.
        handlers: Vec<String>,
        /// Tasks it is running or holds, and those it finished lately and
        /// sends the results of again right after registering (registering
        /// again after the hub restarted or lost it): the hub leaves them to
        /// it instead of running them again.
        running: Vec<(JobId, u64)>,
        /// What started it, for `zcluster status` (`slurm:JOB/NODE`,
        /// `ssh:HOSTFILE`); none for a worker started by hand.
        origin: Option<String>,
        /// What it offers: cores (then `slots` is their number), GPUs,
        /// memory, named resources. `None`: `slots` cores and nothing
        /// else, as before engines declared resources.
        resources: Option<ResourceOffer>,
    },
    /// Still alive.
    Heartbeat,
    /// Leaving cleanly (kill, restart, Ctrl-C).
    Unregister,
    /// Draining (its allocation ends soon, or `zcluster drain`): send it
    /// no new tasks; it finishes what it runs, then unregisters.
    Draining,
}

/// Hub to engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubToEngine {
    /// Welcome: your id, and how often to heartbeat.
    Registered {
        /// The engine's id.
        engine: EngineId,
        /// Heartbeat period.
        heartbeat: Duration,
        /// Largest message the hub takes (its `--max-message`): a larger
        /// result is sent as a failure saying so.
        max_message: u64,
    },
    /// Not welcome, and why.
    Refused {
        /// Why.
        reason: String,
    },
    /// The hub is alive.
    Heartbeat,
    /// Kill the running tasks of this job (halt now, Ctrl-C at its client).
    CancelJob {
        /// The job.
        job: JobId,
    },
    /// Drop or kill one task: another copy of it finished first.
    CancelTask {
        /// The job.
        job: JobId,
        /// The task.
        id: u64,
    },
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Command chunks from `zcluster map`.
    Exec,
    /// A named handler compiled into the worker binary.
    Handler(String),
}

/// When the hub halts a job by itself, for its client's `--halt`: it
/// starts none of the job's tasks once `failures` of them have failed for
/// good, or `successes` have succeeded (`None`: not on that count; a
/// percentage is the client's to judge, as only it knows the total). A job
/// with a halt rule is never prefetched: none of its tasks waits in an
/// engine's queue, so none starts once the hub has halted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HaltAt {
    /// Tasks failed for good (retries spent) that halt the job.
    pub failures: Option<u64>,
    /// Tasks succeeded that halt the job.
    pub successes: Option<u64>,
}

impl HaltAt {
    /// Halts at the first task that fails for good: `--halt soon` and
    /// `--halt now`.
    pub const FIRST_FAILURE: HaltAt = HaltAt {
        failures: Some(1),
        successes: None,
    };

    /// Whether `failed` and `succeeded` tasks meet the rule.
    pub fn reached(&self, failed: u64, succeeded: u64) -> bool {
        self.failures.is_some_and(|n| failed >= n) || self.successes.is_some_and(|n| succeeded >= n)
    }
}

/// Client to hub: one call, answered by one [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientCall {
    /// Is the hub there, and what is it like?
    Hello,
    /// Start a job; its tasks follow as request messages.
    OpenJob {
        /// What runs.
        kind: JobKind,
        /// For `zcluster status` (e.g. the command line).
        description: String,
        /// Run a failed task up to this many more times, on another engine
        /// when there is one; only the last attempt's result is sent back.
        retries: u32,
        /// The client's `--halt`: the job is never prefetched to an
        /// engine, and the hub stops dispatching it when the rule is met,
        /// without waiting for the client to react.
        halt: Option<HaltAt>,
        /// Most of the job's tasks running at once across the cluster
        /// (`zcluster map --hub FILE -j N`), enforced by the hub's
        /// scheduler; `None`: as many as there are free slots.
        cap: Option<u32>,
        /// What each task needs (`--cpus 2 --gpus 1 --mem 4G`): it runs
        /// only where all of it is free. `None`: one core, as before.
        request: Option<ResourceRequest>,
    },
    /// Every task of the job has been sent.
    CloseJob {
        /// The job.
        job: JobId,
        /// How many tasks it has.
        total: u64,
    },
    /// Is this job still running here, and under which hub start? (A
    /// client that has heard nothing for a while asks, so it notices a hub
    /// that restarted and reattaches.)
    CheckJob {
        /// The job.
        job: JobId,
    },
    /// Take over a job (a client reconnecting to a restarted hub, or
    /// `zcluster map --attach` after the job's client died): its results go
    /// to this client from now on.
    Attach {
        /// The job.
        job: JobId,
        /// The client's tasks that have no result yet; the answer says which
        /// of them the hub never recorded and which already finished.
        outstanding: Option<Vec<u64>>,
    },
    /// Drop the job's queued tasks, and kill its running ones when asked.
    CancelJob {
        /// The job.
        job: JobId,
        /// Also kill the running tasks (halt now, Ctrl-C).
        kill_running: bool,
    },
    /// Engines and jobs; `verbose` lists the tasks each engine is running
    /// and each live job's queued tasks.
    Status {
        /// List task ids too.
        verbose: bool,
    },
    /// Recorded tasks of a job (or given task ids of it).
    Results {
        /// The job.
        job: JobId,
        /// Only these tasks (the client's ids); all when `None`.
        ids: Option<Vec<u64>>,
        /// Leave out request and result payloads.
        status_only: bool,
    },
    /// Forget recorded tasks.
    Purge(PurgeTarget),
    /// Run a job's failed tasks (or given ones) again.
    Resubmit {
        /// The job.
        job: JobId,
        /// Only these tasks (the client's ids); all failed ones when `None`.
        ids: Option<Vec<u64>>,
    },
    /// Tell engines (all, or these) to exit, or restart.
    Kill {
        /// Which engines; all when `None`.
        engines: Option<Vec<EngineId>>,
        /// Restart instead of exit.
        restart: bool,
    },
    /// Ask every engine who it is.
    Ping,
    /// Stop the hub (and first the engines, when asked).
    Shutdown {
        /// Kill the engines too.
        workers: bool,
    },
    /// One page of a job's recorded tasks, in (seq, task) order after a
    /// cursor, answered by [`Reply::ResultsPage`]: how `zcluster results`
    /// reads a job of any size in replies of bounded size.
    ResultsPage {
        /// The job.
        job: JobId,
        /// The `next` of the page before (`None`: from the start).
        after: Option<(u64, u64)>,
        /// Leave out request and result payloads.
        status_only: bool,
    },
    /// Drain these engines: no new tasks, finish what they run, leave
    /// cleanly (answered by [`Reply::Killed`] with who acknowledged).
    Drain {
        /// Which engines.
        engines: Vec<EngineId>,
    },
}

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgeTarget {
    /// One job (refused while it has unfinished tasks).
    Job(JobId),
    /// Completed tasks run by one engine.
    Engine(EngineId),
    /// Every completed task.
    AllCompleted,
}

/// The hub's answer to a [`ClientCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The call failed, and why (one line for the user).
    Error(String),
    /// Done, nothing to report.
    Ok,
    /// Answer to `Hello`.
    Hello(HubInfo),
    /// Answer to `OpenJob`.
    JobOpened {
        /// The new job's id.
        job: JobId,
        /// How many of the job's tasks may be outstanding (sent, no result
        /// yet) at once: the flow control that bounds the hub's memory.
        credit: u32,
        /// Which start of the hub this is (see [`Reply::JobLive`]).
        epoch: u64,
        /// Largest message the hub takes (its `--max-message`): a larger
        /// task is refused at the client.
        max_message: u64,
    },
    /// Answer to `CheckJob`: the job is live.
    JobLive {
        /// A random number drawn at each hub start: a client that sees it
        /// change knows the hub restarted and reattaches.
        epoch: u64,
        /// Whether the job is still this client's.
        yours: bool,
    },
    /// Answer to `Attach`.
    Attached(AttachInfo),
    /// Answer to `CancelJob`: the tasks dropped before they started (they
    /// get no result).
    Cancelled(Vec<u64>),
    /// Answer to `Status`.
    Status(HubStatus),
    /// Answer to `Results`.
    Results(Vec<TaskReport>),
    /// Answer to `Purge`: tasks removed.
    Purged(u64),
    /// Answer to `Resubmit`: tasks queued again.
    Resubmitted(u64),
    /// Answer to `Kill`: the engines that acknowledged.
    Killed {
        /// The engines that acknowledged.
        acknowledged: Vec<EngineId>,
        /// The engines asked that did not acknowledge in time.
        silent: Vec<EngineId>,
    },
    /// Answer to `Ping`.
    Pong {
        /// The engines' answers.
        replies: Vec<CommandReply>,
        /// The engines asked that did not answer in time.
        silent: Vec<EngineId>,
    },
    /// Answer to `ResultsPage`: the tasks, and the cursor of the next page
    /// (`None`: this was the last).
    ResultsPage {
        /// The tasks of this page.
        reports: Vec<TaskReport>,
        /// Where the next page starts.
        next: Option<(u64, u64)>,
    },
    /// The call named a job or an engine this hub does not have: a mistake
    /// in what was asked, not a failure of the hub (the CLI exits 2 for it).
    NotFound(String),
}

impl Reply {
    /// The hub's message limit, in the replies that carry it.
    pub fn max_message(&self) -> Option<usize> {
        let limit = match self {
            Reply::Hello(info) => info.max_message,
            Reply::JobOpened { max_message, .. } => *max_message,
            Reply::Attached(info) => info.max_message,
            _ => return None,
        };
        Some(usize::try_from(limit).unwrap_or(usize::MAX))
    }
}

/// What a client needs to carry on with a job it attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachInfo {
    /// The hub's start (as in [`Reply::JobLive`]).
    pub epoch: u64,
    /// Tasks that may be outstanding at once.
    pub credit: u32,
    /// The job's task count, if its client closed it.
    pub total: Option<u64>,
    /// Tasks of the job the store holds (a client that died while sending
    /// had sent this many).
    pub known: u64,
    /// Of the `outstanding` ids, those the hub has no record of: send them
    /// again.
    pub missing: Vec<u64>,
    /// Of the `outstanding` ids, those already finished: fetch them with
    /// `Results`.
    pub finished: Vec<u64>,
    /// Whether the job is still running (otherwise every task finished).
    pub live: bool,
    /// Largest message the hub takes (as in [`Reply::JobOpened`]).
    pub max_message: u64,
}

/// Facts about a hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubInfo {
    /// zcluster version of the hub.
    pub version: String,
    /// Engines registered.
    pub engines: u32,
    /// Their slots in all.
    pub slots: u32,
    /// Largest message it takes (its `--max-message`).
    pub max_message: u64,
}

/// One engine as `zcluster status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// Its id.
    pub id: EngineId,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Slots.
    pub slots: u32,
    /// Tasks running now.
    pub running: u32,
    /// Tasks it finished since it registered.
    pub completed: u64,
    /// Time since its last heartbeat.
    pub last_heartbeat: Duration,
    /// Handlers it offers.
    pub handlers: Vec<String>,
    /// (job, task id) of what it runs now (verbose status only).
    pub running_tasks: Vec<(JobId, u64)>,
    /// What started it (`slurm:JOB/NODE`, `ssh:HOSTFILE`), as it said when
    /// it registered: which allocation or host file an engine came from.
    pub origin: Option<String>,
    /// Draining: it takes no new tasks and leaves once its tasks are done.
    pub draining: bool,
    /// What it offers, when it declared resources (`8 cpus, gpus 0,1`).
    pub offer: Option<String>,
    /// What of it is in use (`3/8 cpus, 1.5/2 gpus`).
    pub in_use: String,
}

/// One job as `zcluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Its id.
    pub id: JobId,
    /// When it was opened.
    pub submitted: SystemTime,
    /// What it runs.
    pub description: String,
    /// Tasks in all, once the client said.
    pub total: Option<u64>,
    /// Waiting for a slot.
    pub pending: u64,
    /// Running now.
    pub running: u64,
    /// Finished well.
    pub done: u64,
    /// Finished badly.
    pub failed: u64,
    /// Ids of the tasks waiting for a slot (verbose status only).
    pub queued_tasks: Vec<u64>,
    /// What each of its tasks asks for, when more than a core.
    pub request: Option<String>,
    /// Why its queued tasks wait, when no engine has its request free
    /// (`1 gpus: no engine has it free`).
    pub waiting_for: Option<String>,
    /// Whether the client that started (or last attached to) the job is
    /// still following it: it spoke about the job within the last five
    /// seconds (a following client speaks at least once a second). `None`
    /// for a job that no longer runs.
    pub client_attached: Option<bool>,
}

/// The answer to `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStatus {
    /// Registered engines.
    pub engines: Vec<EngineStatus>,
    /// Jobs in the store.
    pub jobs: Vec<JobStatus>,
    /// Where the store lives.
    pub store: String,
}

/// One recorded task: request, result and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The client's id for it (its chunk or input number).
    pub id: u64,
    /// Where it is in its life; on the wire by its name (`pending`,
    /// `running`, `ok` or `failed`), as when it was a string.
    #[serde(with = "state_name")]
    pub state: TaskState,
    /// The engine that ran it last.
    pub engine: Option<EngineId>,
    /// Times it was started.
    pub attempts: u32,
    /// When it was submitted.
    pub submitted: SystemTime,
    /// When it last started.
    pub started: Option<SystemTime>,
    /// When it finished.
    pub completed: Option<SystemTime>,
    /// The error, when failed.
    pub error: Option<String>,
    /// The request body (absent for status-only queries).
    pub request: Option<Vec<u8>>,
    /// The result message body, a bincode [`ClusterResult`]
    /// (absent for status-only queries or unfinished tasks).
    pub result: Option<Vec<u8>>,
}

impl TaskReport {
    /// Whether the task finished (ok or failed).
    pub fn finished(&self) -> bool {
        self.state.is_completed()
    }

    /// A finished task's result message: the worker's as recorded, or, for
    /// a task that failed without running (cancelled, or a poison input),
    /// a failed result with the hub's reason.
    pub fn into_result(self) -> ClusterResult {
        if let Some(result) = self
            .result
            .as_deref()
            .and_then(|bytes| ClusterResult::from_body(bytes).ok())
        {
            return result;
        }
        ClusterResult {
            id: self.id,
            status: if self.state == TaskState::Ok {
                ResultStatus::Ok
            } else {
                ResultStatus::Fail
            },
            payload: Vec::new(),
            request_metadata: Default::default(),
            metadata: ResultMetadata {
                host: String::new(),
                pid: 0,
                worker: self.engine.map_or("hub".into(), |e| format!("engine-{e}")),
                started: self.started.unwrap_or(self.submitted),
                elapsed: Duration::ZERO,
            },
            exception: self.error,
        }
    }
}

/// A [`TaskState`] on the wire by its name, as [`TaskReport`] carried its
/// state when that was a string: the encoding stays what it was.
mod state_name {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::TaskState;

    pub fn serialize<S: Serializer>(state: &TaskState, to: S) -> Result<S::Ok, S::Error> {
        to.serialize_str(state.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<TaskState, D::Error> {
        let name = String::deserialize(from)?;
        TaskState::from_name(&name)
            .ok_or_else(|| D::Error::custom(format!("unknown task state {name:?}")))
    }
}

/// Published on the hub's notification socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notification {
    /// An engine joined.
    Registered {
        /// Its id.
        engine: EngineId,
        /// Host name.
        host: String,
        /// Process id.
        pid: u32,
        /// Slots.
        slots: u32,
    },
    /// An engine left or was declared dead.
    Unregistered {
        /// Its id.
        engine: EngineId,
        /// Why (`left`, `missed 3 heartbeats`, `killed`).
        reason: String,
    },
    /// A subscription was applied: a subscriber that receives this knows it
    /// hears everything published from now on (ZeroMQ gives a subscriber no
    /// other sign), and one that hears it again after a silence knows the
    /// hub restarted or it reconnected.
    Subscribed {
        /// When the hub applied it.
        at: SystemTime,
    },
    /// An engine was declared dead (missed heartbeats): its running tasks
    /// went back to their queues. Published instead of `Unregistered`.
    EngineDead {
        /// Its id.
        engine: EngineId,
        /// Why (`missed 3 heartbeats`).
        reason: String,
        /// When.
        at: SystemTime,
    },
    /// An engine left cleanly (its own Ctrl-C, a kill, a restart, or a new
    /// connection of the same process). Published instead of
    /// `Unregistered`.
    EngineRetired {
        /// Its id.
        engine: EngineId,
        /// Why (`left`, `registered again on a new connection`).
        reason: String,
        /// When.
        at: SystemTime,
    },
    /// A client opened a job.
    JobOpened {
        /// The job.
        job: JobId,
        /// What it runs (its command line).
        description: String,
        /// When.
        at: SystemTime,
    },
    /// Every task of a closed job finished.
    JobFinished {
        /// The job.
        job: JobId,
        /// Tasks that succeeded.
        succeeded: u64,
        /// Tasks that failed for good.
        failed: u64,
        /// When.
        at: SystemTime,
    },
    /// A job was cancelled (Ctrl-C at its client, `--halt`, a cancel call).
    JobCancelled {
        /// The job.
        job: JobId,
        /// Queued tasks dropped before they started.
        dropped: u64,
        /// Whether its running tasks were killed too.
        killed_running: bool,
        /// When.
        at: SystemTime,
    },
    /// A task failed for good (its retries spent, or it could not run).
    TaskFailed {
        /// Its job.
        job: JobId,
        /// The client's id for it.
        task: u64,
        /// The engine its last attempt ran on (`None`: it failed in the hub,
        /// as a poison task or one too large to send).
        engine: Option<EngineId>,
        /// Times it was started.
        attempts: u32,
        /// The error.
        reason: String,
        /// When.
        at: SystemTime,
    },
    /// A task failed and goes back to its queue for another attempt.
    TaskRetried {
        /// Its job.
        job: JobId,
        /// The client's id for it.
        task: u64,
        /// The engine the failed attempt ran on.
        engine: EngineId,
        /// The attempt coming next (2 for the first retry).
        attempt: u32,
        /// Why the attempt before failed.
        reason: String,
        /// When.
        at: SystemTime,
    },
    /// A straggler got a second copy on an idle slot; the first result wins.
    TaskCopied {
        /// Its job.
        job: JobId,
        /// The client's id for it.
        task: u64,
        /// The engine running the second copy.
        engine: EngineId,
        /// How long the first copy had been running.
        running_for: Duration,
        /// When.
        at: SystemTime,
    },
    /// An engine is draining: it takes no new tasks, finishes those it
    /// runs and leaves (its allocation ends, or `zcluster drain`).
    EngineDraining {
        /// Its id.
        engine: EngineId,
        /// Why (`its allocation ends`, `zcluster drain`).
        reason: String,
        /// When.
        at: SystemTime,
    },
}

impl Notification {
    /// The job an event is about, if any: what `zcluster events --job`
    /// filters on.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Notification::JobOpened { job, .. }
            | Notification::JobFinished { job, .. }
            | Notification::JobCancelled { job, .. }
            | Notification::TaskFailed { job, .. }
            | Notification::TaskRetried { job, .. }
            | Notification::TaskCopied { job, .. } => Some(*job),
            _ => None,
        }
    }

    /// When it happened, for the notifications that say (all but the first
    /// two, which were defined before notifications carried a time).
    pub fn at(&self) -> Option<SystemTime> {
        match self {
            Notification::Registered { .. } | Notification::Unregistered { .. } => None,
            Notification::Subscribed { at }
            | Notification::EngineDead { at, .. }
            | Notification::EngineRetired { at, .. }
            | Notification::JobOpened { at, .. }
            | Notification::JobFinished { at, .. }
            | Notification::JobCancelled { at, .. }
            | Notification::TaskFailed { at, .. }
            | Notification::TaskRetried { at, .. }
            | Notification::TaskCopied { at, .. }
            | Notification::EngineDraining { at, .. } => Some(*at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{decode_result_items, decode_submit_items, decode_value, encode_value};
    use proptest::prelude::*;

    proptest! {
        /// The hub reads an engine's results and a client's tasks by hand
        /// (`message::codec`): the batches serde writes of these very types
        /// read back field for field. (The codec's own tests give it
        /// serde's answer on any bytes.)
        #[test]
        fn batches_read_by_hand_as_serde_wrote_them(
            results in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), any::<bool>(),
                 proptest::option::of(".{0,20}"), proptest::collection::vec(any::<u8>(), 0..64)),
                0..5),
            tasks in proptest::collection::vec(
                (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..5),
        ) {
            let results: Vec<ResultItem> = results
                .into_iter()
                .map(|(job, id, ok, error, body)| ResultItem {
                    job,
                    id,
                    status: if ok { ResultStatus::Ok } else { ResultStatus::Fail },
                    error,
                    body: serde_bytes::ByteBuf::from(body),
                })
                .collect();
            let bytes = encode_value(&results, "t").unwrap();
            let read = decode_result_items(&bytes, "t").unwrap();
            prop_assert_eq!(read.len(), results.len());
            for (read, item) in read.iter().zip(&results) {
                prop_assert_eq!(
                    (read.job, read.id, read.status, &read.error, read.body),
                    (item.job, item.id, item.status, &item.error, &item.body[..])
                );
            }
            let tasks: Vec<SubmitItem> = tasks
                .into_iter()
                .map(|(id, request)| (id, serde_bytes::ByteBuf::from(request)))
                .collect();
            let bytes = encode_value(&tasks, "t").unwrap();
            let read = decode_submit_items(&bytes, "t").unwrap();
            let expected: Vec<(u64, Vec<u8>)> =
                tasks.into_iter().map(|(id, r)| (id, r.into_vec())).collect();
            prop_assert_eq!(read, expected);
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Named(#[serde(with = "state_name")] TaskState);

    /// A report's state is encoded as the string it was before it became a
    /// [`TaskState`], in bincode and in JSON, and reads back from one.
    #[test]
    fn a_task_state_travels_by_its_name() {
        for state in TaskState::ALL {
            let name = state.as_str().to_string();
            let bytes = encode_value(&Named(state), "state").unwrap();
            assert_eq!(bytes, encode_value(&name, "state").unwrap());
            assert_eq!(
                decode_value::<Named>(&bytes, "state").unwrap(),
                Named(state)
            );
            assert_eq!(
                serde_json::to_string(&Named(state)).unwrap(),
                format!("\"{name}\"")
            );
        }
        // A report carries its state by name too.
        let report = TaskReport {
            id: 7,
            state: TaskState::Failed,
            engine: None,
            attempts: 1,
            submitted: std::time::UNIX_EPOCH,
            started: None,
            completed: None,
            error: None,
            request: None,
            result: None,
        };
        let bytes = encode_value(&report, "report").unwrap();
        let name = encode_value(&"failed".to_string(), "state").unwrap();
        assert!(bytes.windows(name.len()).any(|w| w == name));
        assert_eq!(
            decode_value::<TaskReport>(&bytes, "report").unwrap(),
            report
        );
        let stray = encode_value(&"done".to_string(), "state").unwrap();
        assert!(decode_value::<Named>(&stray, "state").is_err());
    }
}
