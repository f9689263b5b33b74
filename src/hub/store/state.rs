//! Where a task is in its life ([`TaskState`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::TaskId;

/// Where a task is in its life; the hub schedules `Pending` tasks, watches
/// `Running` ones and reports the two completed states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for an engine (new, requeued after its engine died, or resubmitted).
    Pending,
    /// Sent to an engine, no result yet.
    Running,
    /// Completed with a result.
    Ok,
    /// Completed with an error (after the hub's retries, if any).
    Failed,
}

impl TaskState {
    /// Whether the task has completed (`Ok` or `Failed`): completed tasks
    /// keep their first result and are the only ones purges remove.
    pub fn is_completed(self) -> bool {
        matches!(self, TaskState::Ok | TaskState::Failed)
    }

    /// The lowercase name used in status output and stored in the SQLite
    /// `tasks.state` column, so the database reads well in the `sqlite3` shell.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Ok => "ok",
            TaskState::Failed => "failed",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(TaskState::Pending),
            "running" => Some(TaskState::Running),
            "ok" => Some(TaskState::Ok),
            "failed" => Some(TaskState::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(super) fn ignored(event: &str, task: TaskId, state: Option<TaskState>) {
    match state {
        None => tracing::warn!(task, event, "task store: event for an unknown task ignored"),
        Some(state) => tracing::debug!(
            task,
            event,
            %state,
            "task store: event ignored in this task state"
        ),
    }
}
