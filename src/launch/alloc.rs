//! Allocations on demand: a policy that submits batch allocations while a
//! hub has queued tasks and releases allocations whose workers sit idle.
//!
//! It runs as a process of its own (`zcluster alloc add slurm ...`) that
//! sees the hub only through its client API, as `zcluster status` does:
//! the hub's loop stays free of `sbatch` and `squeue` calls (which can take
//! seconds on a busy cluster), a hub restart does not stop it (it reads the
//! connection file again each round), and a policy that goes wrong cannot
//! take the hub down with it.
//!
//! Every submission, state change and the reason the batch system gave
//! (`sbatch`'s stderr, `squeue`'s reason column) is kept in a state file
//! next to the connection file, written atomically after each change:
//! `zcluster alloc list` and `alloc events` read it, and a restarted
//! allocator carries on the allocations it holds instead of submitting
//! again.
//!
//! The decisions are one function of plain values ([`decide`]), unit
//! tested without a batch system or a hub.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::batch::{AllocationRequest, AllocationState, BatchSystem};
use crate::hub::client::HubClient;
use crate::hub::connection::ConnectionInfo;
use crate::hub::protocol::HubStatus;

/// Events kept in the state file (the oldest go first).
const EVENTS_KEPT: usize = 1000;

/// Longest wait after failed submissions before trying again.
const MAX_SUBMIT_BACKOFF: Duration = Duration::from_secs(300);

/// How long a running allocation may have no registered worker before it
/// counts as idle anyway (its workers failed to start, say).
const NO_WORKER_GRACE: Duration = Duration::from_secs(60);

/// The policy: what to submit, how many at most, when to release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocPolicy {
    /// Nodes per allocation.
    pub nodes: u32,
    /// Nodes allocated or pending at most, over all allocations.
    pub max_nodes: u32,
    /// Allocations pending at once at most.
    pub backlog: u32,
    /// Workers idle this long are released.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

/// One submitted allocation, as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The batch system's job id.
    pub job: String,
    /// Nodes asked.
    pub nodes: u32,
    /// When it was submitted.
    pub submitted: SystemTime,
    /// `pending`, `running`, or the batch system's final state.
    pub state: String,
    /// The reason the batch system gave, if any (why pending, why ended).
    pub reason: String,
    /// Released by the policy (idle): its workers were drained.
    pub released: bool,
}

impl Allocation {
    /// Still pending or running.
    pub fn is_active(&self) -> bool {
        self.state == "pending" || self.state == "running"
    }
}

/// Something that happened, for `zcluster alloc events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocEvent {
    /// When.
    pub at: SystemTime,
    /// The allocation's job id, if it concerns one.
    pub job: Option<String>,
    /// What happened, in a line.
    pub what: String,
}

/// What the state file holds: the policy, every allocation, recent events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocState {
    /// The batch system (`slurm`).
    pub system: String,
    /// The policy.
    pub policy: AllocPolicy,
    /// Allocations, oldest first.
    pub allocations: Vec<Allocation>,
    /// Recent events, oldest first.
    pub events: Vec<AllocEvent>,
}

/// Why the allocator cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The state file cannot be read or written.
    #[error("cannot {operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not one this version wrote.
    #[error("{path} is not an allocation state file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The state file holds another policy's allocations.
    #[error("{path} belongs to a {system} allocator, not {wanted}")]
    OtherSystem {
        /// The file.
        path: PathBuf,
        /// Its system.
        system: String,
        /// This one's.
        wanted: String,
    },
}

/// The state file of the allocator for the hub whose connection file is
/// `connection`: beside it, `NAME.alloc.json`.
pub fn state_path(connection: &Path) -> PathBuf {
    let mut name = connection
        .file_stem()
        .map_or_else(|| "hub".into(), |s| s.to_os_string());
    name.push(".alloc.json");
    connection.with_file_name(name)
}

impl AllocState {
    /// Reads a state file; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<AllocState>, AllocError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AllocError::Io {
                    operation: "read",
                    path: path.into(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| AllocError::Malformed {
                path: path.into(),
                reason: e.to_string(),
            })
    }

    /// Writes it atomically (a temp file renamed over the old), 0600.
    pub fn write(&self, path: &Path) -> Result<(), AllocError> {
        let io = |operation, source| AllocError::Io {
            operation,
            path: path.into(),
            source,
        };
        let json = serde_json::to_string_pretty(self).map_err(|e| AllocError::Malformed {
            path: path.into(),
            reason: e.to_string(),
        })?;
        crate::hub::connection::replace_private(path, json.as_bytes(), ".zcluster-alloc-")
            .map_err(|(operation, e)| io(operation, e))
    }

    /// Records an event.
    pub fn event(&mut self, job: Option<&str>, what: String) {
        tracing::info!(job, %what, "allocation event");
        self.events.push(AllocEvent {
            at: SystemTime::now(),
            job: job.map(str::to_string),
            what,
        });
        if self.events.len() > EVENTS_KEPT {
            let extra = self.events.len() - EVENTS_KEPT;
            self.events.drain(..extra);
        }
    }
}

/// What the policy sees in one round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Tasks waiting for a slot, over all jobs.
    pub queued_tasks: u64,
    /// For each active allocation (by job id): whether any of its workers
    /// is registered, and whether any runs a task.
    pub workers: HashMap<String, (bool, bool)>,
}

/// What the policy decides in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Submit one allocation.
    Submit,
    /// Release this allocation: drain its workers (or cancel it when it has
    /// none registered).
    Release(String),
}

/// The policy's decisions: submit while tasks wait and the limits allow,
/// release allocations idle for the timeout. `idle_since` holds, for each
/// running allocation, when it was last seen busy (kept by the caller).
pub fn decide(
    policy: &AllocPolicy,
    allocations: &[Allocation],
    observed: &Observation,
    idle_since: &HashMap<String, Instant>,
    now: Instant,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let active: Vec<&Allocation> = allocations.iter().filter(|a| a.is_active()).collect();
    let nodes: u32 = active.iter().map(|a| a.nodes).sum();
    let pending = active.iter().filter(|a| a.state == "pending").count() as u32;
    if observed.queued_tasks > 0
        && nodes + policy.nodes <= policy.max_nodes
        && pending < policy.backlog.max(1)
    {
        actions.push(Action::Submit);
    }
    for allocation in active
        .iter()
        .filter(|a| a.state == "running" && !a.released)
    {
        let (registered, busy) = observed
            .workers
            .get(&allocation.job)
            .copied()
            .unwrap_or((false, false));
        if busy || observed.queued_tasks > 0 {
            continue;
        }
        let idle_for = idle_since
            .get(&allocation.job)
            .map_or(Duration::ZERO, |since| {
                now.saturating_duration_since(*since)
            });
        // Workers still starting get a grace of their own.
        let timeout = if registered {
            policy.idle_timeout
        } else {
            policy.idle_timeout.max(NO_WORKER_GRACE)
        };
        if idle_for >= timeout {
            actions.push(Action::Release(allocation.job.clone()));
        }
    }
    actions
}

/// Reads what the policy needs from a hub status: queued tasks, and per
/// allocation whether its workers are there and busy (engines say which
/// allocation they came from: `slurm:JOB/NODE`).
pub fn observe(system: &str, status: &HubStatus) -> Observation {
    let mut observed = Observation {
        queued_tasks: status.jobs.iter().map(|j| j.pending).sum(),
        ..Observation::default()
    };
    let prefix = format!("{system}:");
    for engine in &status.engines {
        let Some(job) = engine
            .origin
            .as_deref()
            .and_then(|o| o.strip_prefix(&prefix))
            .and_then(|rest| rest.split('/').next())
        else {
            continue;
        };
        let entry = observed.workers.entry(job.to_string()).or_default();
        entry.0 = true;
        entry.1 |= engine.running > 0;
    }
    observed
}

/// The allocator: a policy, a batch system, the hub, the state file.
pub struct Allocator {
    /// The batch system.
    pub batch: Box<dyn BatchSystem>,
    /// The allocation each submission asks for.
    pub request: AllocationRequest,
    /// The hub's connection file (read again each round).
    pub connection: PathBuf,
    /// The state file.
    pub state_path: PathBuf,
    /// How often it looks.
    pub poll: Duration,
}

impl Allocator {
    /// Runs the policy until `stop` is set. Allocations in the state file
    /// are carried on (a restarted allocator submits nothing twice); on
    /// stop, allocations are left as they are (`alloc list` shows them).
    pub fn run(&self, policy: AllocPolicy, stop: &AtomicBool) -> Result<(), AllocError> {
        let system = self.batch.name().to_string();
        let mut state = match AllocState::read(&self.state_path)? {
            Some(state) if state.system != system => {
                return Err(AllocError::OtherSystem {
                    path: self.state_path.clone(),
                    system: state.system,
                    wanted: system,
                })
            }
            Some(mut state) => {
                let active = state.allocations.iter().filter(|a| a.is_active()).count();
                if state.policy != policy {
                    state.event(None, format!("policy changed to {policy:?}"));
                    state.policy = policy;
                }
                state.event(
                    None,
                    format!("allocator started again; carrying on {active} active allocation(s)"),
                );
                state
            }
            None => {
                let mut state = AllocState {
                    system,
                    policy,
                    allocations: Vec::new(),
                    events: Vec::new(),
                };
                state.event(None, format!("allocator started: {:?}", state.policy));
                state
            }
        };
        state.write(&self.state_path)?;
        let ctx = zmq::Context::new();
        let mut idle_since: HashMap<String, Instant> = HashMap::new();
        let mut failures: u32 = 0;
        let mut next_submit = Instant::now();
        let mut hub_down = false;
        while !stop.load(Ordering::Relaxed) {
            let mut changed = self.refresh(&mut state);
            let status = ConnectionInfo::read(&self.connection)
                .map_err(|e| e.to_string())
                .and_then(|info| HubClient::connect(&ctx, &info).map_err(|e| e.to_string()))
                .and_then(|mut client| client.status(false).map_err(|e| e.to_string()));
            match status {
                Ok(status) => {
                    if hub_down {
                        state.event(None, "the hub answers again".into());
                        hub_down = false;
                        changed = true;
                    }
                    let observed = observe(&state.system, &status);
                    let now = Instant::now();
                    for allocation in state.allocations.iter().filter(|a| a.state == "running") {
                        let (_, busy) = observed
                            .workers
                            .get(&allocation.job)
                            .copied()
                            .unwrap_or((false, false));
                        let since = idle_since.entry(allocation.job.clone()).or_insert(now);
                        // Busy workers, or work waiting, reset the clock.
                        if busy || observed.queued_tasks > 0 {
                            *since = now;
                        }
                    }
                    idle_since.retain(|job, _| {
                        state
                            .allocations
                            .iter()
                            .any(|a| &a.job == job && a.state == "running")
                    });
                    for action in decide(
                        &state.policy,
                        &state.allocations,
                        &observed,
                        &idle_since,
                        now,
                    ) {
                        changed = true;
                        match action {
                            Action::Submit if now >= next_submit => {
                                self.submit(&mut state, observed.queued_tasks, &mut failures);
                                let backoff = if failures == 0 {
                                    Duration::ZERO
                                } else {
                                    (self.poll * 2u32.saturating_pow(failures.min(16)))
                                        .min(MAX_SUBMIT_BACKOFF)
                                };
                                next_submit = Instant::now() + backoff;
                            }
                            Action::Submit => {}
                            Action::Release(job) => {
                                self.release(&mut state, &job, &status, &ctx);
                            }
                        }
                    }
                }
                Err(e) => {
                    if !hub_down {
                        state.event(None, format!("the hub does not answer: {e}"));
                        hub_down = true;
                        changed = true;
                    }
                }
            }
            if changed {
                state.write(&self.state_path)?;
            }
            let until = Instant::now() + self.poll;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50).min(self.poll));
            }
        }
        state.event(
            None,
            "allocator stopped; allocations left as they are".into(),
        );
        state.write(&self.state_path)
    }

    /// Asks the batch system where each active allocation is; records
    /// every change with its reason. Whether anything changed.
    fn refresh(&self, state: &mut AllocState) -> bool {
        let mut changes = Vec::new();
        for allocation in state.allocations.iter_mut().filter(|a| a.is_active()) {
            let (name, reason) = match self.batch.state(&allocation.job) {
                Ok(AllocationState::Pending { reason }) => ("pending".to_string(), reason),
                Ok(AllocationState::Running) => ("running".to_string(), String::new()),
                Ok(AllocationState::Finished { state, reason }) => (state, reason),
                Err(e) => {
                    changes.push((allocation.job.clone(), format!("cannot ask its state: {e}")));
                    continue;
                }
            };
            if name != allocation.state || reason != allocation.reason {
                let why = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" (reason: {reason})")
                };
                changes.push((allocation.job.clone(), format!("{name}{why}")));
                allocation.state = name;
                allocation.reason = reason;
            }
        }
        let changed = !changes.is_empty();
        for (job, what) in changes {
            state.event(Some(&job), what);
        }
        changed
    }

    fn submit(&self, state: &mut AllocState, queued: u64, failures: &mut u32) {
        match self.batch.submit(&self.request) {
            Ok(job) => {
                *failures = 0;
                state.event(
                    Some(&job),
                    format!(
                        "submitted ({} node(s)) for {queued} queued task(s)",
                        self.request.nodes
                    ),
                );
                state.allocations.push(Allocation {
                    job,
                    nodes: self.request.nodes,
                    submitted: SystemTime::now(),
                    state: "pending".into(),
                    reason: String::new(),
                    released: false,
                });
            }
            Err(e) => {
                *failures += 1;
                state.event(None, format!("submission failed (attempt {failures}): {e}"));
            }
        }
    }

    /// Drains the allocation's workers (they leave, the job ends); one
    /// with no worker registered is cancelled.
    fn release(&self, state: &mut AllocState, job: &str, status: &HubStatus, ctx: &zmq::Context) {
        let prefix = format!("{}:{job}/", state.system);
        let engines: Vec<u64> = status
            .engines
            .iter()
            .filter(|e| e.origin.as_deref().is_some_and(|o| o.starts_with(&prefix)))
            .map(|e| e.id)
            .collect();
        let outcome = if engines.is_empty() {
            self.batch
                .cancel(job)
                .map(|()| "released (idle, no worker registered): cancelled".to_string())
                .map_err(|e| e.to_string())
        } else {
            ConnectionInfo::read(&self.connection)
                .map_err(|e| e.to_string())
                .and_then(|info| HubClient::connect(ctx, &info).map_err(|e| e.to_string()))
                .and_then(|mut client| client.drain(engines.clone()).map_err(|e| e.to_string()))
                .map(|drained| {
                    format!(
                        "released (idle for {}): drained engine(s) {:?}",
                        humantime::format_duration(state.policy.idle_timeout),
                        drained.acknowledged
                    )
                })
        };
        match outcome {
            Ok(what) => {
                if let Some(a) = state.allocations.iter_mut().find(|a| a.job == job) {
                    a.released = true;
                }
                state.event(Some(job), what);
            }
            Err(e) => state.event(Some(job), format!("release failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AllocPolicy {
        AllocPolicy {
            nodes: 2,
            max_nodes: 4,
            backlog: 1,
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn allocation(job: &str, state: &str) -> Allocation {
        Allocation {
            job: job.into(),
            nodes: 2,
            submitted: SystemTime::UNIX_EPOCH,
            state: state.into(),
            reason: String::new(),
            released: false,
        }
    }

    fn queued(n: u64) -> Observation {
        Observation {
            queued_tasks: n,
            ..Observation::default()
        }
    }

    #[test]
    fn nothing_is_submitted_without_queued_tasks() {
        let now = Instant::now();
        assert!(decide(&policy(), &[], &queued(0), &HashMap::new(), now).is_empty());
        assert_eq!(
            decide(&policy(), &[], &queued(5), &HashMap::new(), now),
            vec![Action::Submit]
        );
    }

    #[test]
    fn the_backlog_and_max_nodes_bound_submissions() {
        let now = Instant::now();
        let pending = [allocation("1", "pending")];
        assert!(decide(&policy(), &pending, &queued(5), &HashMap::new(), now).is_empty());
        let running = [allocation("1", "running"), allocation("2", "running")];
        assert!(
            decide(&policy(), &running, &queued(5), &HashMap::new(), now)
                .iter()
                .all(|a| *a != Action::Submit)
        );
        let finished = [allocation("1", "CANCELLED"), allocation("2", "running")];
        assert!(
            decide(&policy(), &finished, &queued(5), &HashMap::new(), now)
                .contains(&Action::Submit)
        );
    }

    #[test]
    fn idle_allocations_are_released_after_the_timeout_and_busy_ones_kept() {
        let now = Instant::now();
        let running = [allocation("7", "running")];
        let mut idle = HashMap::new();
        idle.insert("7".to_string(), now - Duration::from_secs(30));
        assert!(decide(&policy(), &running, &queued(0), &idle, now).is_empty());
        idle.insert("7".to_string(), now - Duration::from_secs(61));
        assert_eq!(
            decide(&policy(), &running, &queued(0), &idle, now),
            vec![Action::Release("7".into())]
        );
        // With no worker registered, not before the start-up grace either.
        let short = AllocPolicy {
            idle_timeout: Duration::from_secs(5),
            ..policy()
        };
        idle.insert("7".to_string(), now - Duration::from_secs(10));
        assert!(decide(&short, &running, &queued(0), &idle, now).is_empty());
        let mut registered = queued(0);
        registered.workers.insert("7".into(), (true, false));
        assert_eq!(
            decide(&short, &running, &registered, &idle, now),
            vec![Action::Release("7".into())]
        );
        let mut busy = queued(0);
        busy.workers.insert("7".into(), (true, true));
        assert!(decide(&short, &running, &busy, &idle, now).is_empty());
        let mut released = allocation("7", "running");
        released.released = true;
        assert!(decide(&short, &[released], &registered, &idle, now).is_empty());
    }

    #[test]
    fn engines_are_counted_to_the_allocation_their_origin_names() {
        use crate::hub::protocol::{EngineStatus, JobStatus};
        let engine = |id, origin: Option<&str>, running| EngineStatus {
            id,
            host: "n".into(),
            pid: 1,
            slots: 2,
            running,
            completed: 0,
            last_heartbeat: Duration::ZERO,
            origin: origin.map(str::to_string),
            ..EngineStatus::default()
        };
        let job = |pending| JobStatus {
            id: 1,
            submitted: SystemTime::UNIX_EPOCH,
            description: String::new(),
            total: None,
            pending,
            running: 0,
            done: 0,
            failed: 0,
            queued_tasks: Vec::new(),
            request: None,
            waiting_for: None,
            client_attached: Some(true),
        };
        let status = HubStatus {
            engines: vec![
                engine(1, Some("slurm:41/n1"), 0),
                engine(2, Some("slurm:41/n2"), 1),
                engine(3, Some("slurm:42/n1"), 0),
                engine(4, Some("ssh:hosts"), 3),
                engine(5, None, 3),
            ],
            jobs: vec![job(3), job(4)],
            store: String::new(),
        };
        let observed = observe("slurm", &status);
        assert_eq!(observed.queued_tasks, 7);
        assert_eq!(observed.workers.len(), 2);
        assert_eq!(observed.workers["41"], (true, true));
        assert_eq!(observed.workers["42"], (true, false));
    }

    #[test]
    fn the_state_file_sits_beside_the_connection_file() {
        assert_eq!(
            state_path(Path::new("/lab/hub.json")),
            Path::new("/lab/hub.alloc.json")
        );
    }
}
