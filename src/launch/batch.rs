//! The batch system behind one small interface: submit an allocation that
//! runs one `zcluster worker` per node, ask its state, cancel it, and (from
//! inside it) learn when it ends. Slurm ([`super::slurm`]) is the one built;
//! PBS or LSF is one more file implementing [`BatchSystem`].

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// What one allocation asks for, whatever the batch system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationRequest {
    /// Nodes, one worker on each.
    pub nodes: u32,
    /// Walltime.
    pub time: Duration,
    /// Partition (Slurm) or queue, if not the default.
    pub partition: Option<String>,
    /// Account to charge, if not the user's default.
    pub account: Option<String>,
    /// CPUs to ask on each node (the worker's slots); whole nodes if none.
    pub cpus_per_node: Option<u32>,
    /// The job's name, as the batch system lists it.
    pub name: String,
    /// More arguments for the submit command (`sbatch ARGS`), as the user
    /// gave them after `--`.
    pub extra: Vec<String>,
    /// The worker each node runs.
    pub worker: WorkerCommand,
}

/// The worker an allocation runs on each node: this `zcluster` binary (or
/// another path the nodes see) with the hub's connection file, both paths
/// the nodes must reach (a shared file system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The `zcluster` binary on the nodes.
    pub program: PathBuf,
    /// The hub's connection file on the nodes.
    pub connection: PathBuf,
}

/// Where an allocation is in its life, as the batch system says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationState {
    /// Waiting for nodes, and the reason the batch system gives.
    Pending {
        /// Slurm's reason column (`Resources`, `Priority`,
        /// `PartitionNodeLimit`...).
        reason: String,
    },
    /// Its workers run (or are starting).
    Running,
    /// Over: the batch system's final state and reason.
    Finished {
        /// `COMPLETED`, `CANCELLED`, `FAILED`, `TIMEOUT`, `NODE_FAIL`...,
        /// or `GONE` once the batch system forgot the job.
        state: String,
        /// Its reason, if it gave one.
        reason: String,
    },
}

impl AllocationState {
    /// A short name for tables and the store (`pending`, `running`,
    /// `COMPLETED`...).
    pub fn name(&self) -> &str {
        match self {
            AllocationState::Pending { .. } => "pending",
            AllocationState::Running => "running",
            AllocationState::Finished { state, .. } => state,
        }
    }

    /// Whether it is over.
    pub fn is_finished(&self) -> bool {
        matches!(self, AllocationState::Finished { .. })
    }
}

/// Why a batch system command did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The command could not be started (not installed, not on PATH).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The command.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The batch system refused: its own words.
    #[error("{program} refused ({status}): {stderr}")]
    Refused {
        /// The command.
        program: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// It answered something this code cannot read.
    #[error("{program} answered {output:?}, which is not {expected}")]
    BadOutput {
        /// The command.
        program: String,
        /// What it printed.
        output: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// A batch system: the four things zcluster needs of one. Implementations
/// call the system's own commands (`sbatch`, `squeue`, `scancel`), so the
/// user's configuration and credentials apply as when they type them.
pub trait BatchSystem: Send + Sync {
    /// Its name, as in `slurm:JOB` labels (`slurm`).
    fn name(&self) -> &'static str;
    /// The job script [`submit`](Self::submit) would send (`--dry-run`).
    fn script(&self, request: &AllocationRequest) -> String;
    /// Submits an allocation; its job id.
    fn submit(&self, request: &AllocationRequest) -> Result<String, BatchError>;
    /// Where job `job` is in its life.
    fn state(&self, job: &str) -> Result<AllocationState, BatchError>;
    /// Cancels job `job` (its workers get SIGTERM, then SIGKILL).
    fn cancel(&self, job: &str) -> Result<(), BatchError>;
    /// From inside an allocation (a worker it started): when it ends, or
    /// `None` when this process is not in one or it has no time limit.
    fn end_time(&self) -> Result<Option<SystemTime>, BatchError>;
}
