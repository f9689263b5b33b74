//! Where a task is in its life ([`TaskState`]), and the one task state
//! machine both stores follow: [`TaskState::apply`] says which events a
//! state allows and where they lead, [`Progress::apply`] which columns each
//! event sets or clears. The memory store applies them to its maps, the
//! SQLite writer's fold to the rows it holds, and the SQLite store's
//! per-write SQL takes its guards from [`TaskEvent::applies_in`].

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
    /// Every state, for building SQL lists and checks from the rules below.
    pub const ALL: [TaskState; 4] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Ok,
        TaskState::Failed,
    ];

    /// The task state machine: the state `event` leads to from this one, or
    /// [`Refused`] when this state does not allow it. Late or duplicate
    /// engine messages are normal in a cluster, so the stores ignore (and
    /// log) a refused event rather than fail.
    pub fn apply(self, event: TaskEvent) -> Result<TaskState, Refused> {
        let (applies_in, leads_to) = event.rule();
        if applies_in.contains(&self) {
            Ok(leads_to)
        } else {
            Err(Refused { state: self, event })
        }
    }

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

/// Something that happens to a recorded task: what drives
/// [`TaskState::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEvent {
    /// Sent to an engine (again, when its engine is taken to have died).
    Start,
    /// Its engine died before it finished: back to the queue.
    Requeue,
    /// Its result came: [`TaskState::Ok`] or [`TaskState::Failed`]; the
    /// first result wins.
    Finish(TaskState),
    /// A client asked for a completed task to run again.
    Resubmit,
}

impl TaskEvent {
    /// The whole state machine in one table: the states each event applies
    /// in, and the state it leads to.
    fn rule(self) -> (&'static [TaskState], TaskState) {
        use TaskState::{Failed, Ok, Pending, Running};
        match self {
            TaskEvent::Start => (&[Pending, Running], Running),
            TaskEvent::Requeue => (&[Running], Pending),
            TaskEvent::Finish(end) if end.is_completed() => (&[Pending, Running], end),
            // A "finish" as pending or running is no finish at all.
            TaskEvent::Finish(end) => (&[], end),
            TaskEvent::Resubmit => (&[Ok, Failed], Pending),
        }
    }

    /// The states this event applies in: the SQLite store's guards
    /// (`WHERE state IN (...)`) are built from this, so the SQL allows
    /// exactly what [`TaskState::apply`] allows.
    pub fn applies_in(self) -> &'static [TaskState] {
        self.rule().0
    }

    /// The state the event leads to wherever it applies.
    pub fn leads_to(self) -> TaskState {
        self.rule().1
    }

    /// Its name in logs ("start", "requeue", "finish", "resubmit").
    pub fn name(self) -> &'static str {
        match self {
            TaskEvent::Start => "start",
            TaskEvent::Requeue => "requeue",
            TaskEvent::Finish(_) => "finish",
            TaskEvent::Resubmit => "resubmit",
        }
    }
}

/// An event the task's state does not allow (a start or a finish of a
/// completed task, a requeue of one not running, a resubmit of one not
/// completed), so that the store ignores it or, for a resubmit, refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {state} task cannot take a {}", event.name())]
pub struct Refused {
    /// The task's state.
    pub state: TaskState,
    /// The event it does not allow.
    pub event: TaskEvent,
}

/// The columns of a task that its events change, generic over how a store
/// holds them: the memory store keeps ids, times and payloads as they are,
/// the SQLite writer's fold keeps SQL integers and borrows the payloads.
/// [`Progress::apply`] is the one place that says what an event sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Progress<Id, Time, Bytes, Text> {
    pub(super) state: TaskState,
    pub(super) engine: Option<Id>,
    pub(super) started: Option<Time>,
    pub(super) completed: Option<Time>,
    pub(super) result: Option<Bytes>,
    pub(super) error: Option<Text>,
    pub(super) attempts: u32,
}

/// An engine's event with the values it records, in a store's own types:
/// what the memory store applies at once and the SQLite store queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change<Id, Time, Bytes, Text> {
    /// [`TaskEvent::Start`] on an engine, at a time, for the nth attempt.
    Start {
        engine: Id,
        started: Time,
        attempts: u32,
    },
    /// [`TaskEvent::Requeue`].
    Requeue,
    /// [`TaskEvent::Finish`] with its result.
    Finish(Outcome<Id, Time, Bytes, Text>),
}

/// How a task ended, as [`Change::Finish`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Outcome<Id, Time, Bytes, Text> {
    /// [`TaskState::Ok`] or [`TaskState::Failed`].
    pub(super) state: TaskState,
    pub(super) result: Bytes,
    pub(super) error: Option<Text>,
    pub(super) completed: Time,
    pub(super) engine: Id,
    pub(super) attempts: u32,
}

impl<Id, Time, Bytes, Text> Change<Id, Time, Bytes, Text> {
    /// The event, for [`TaskState::apply`].
    pub(super) fn event(&self) -> TaskEvent {
        match self {
            Change::Start { .. } => TaskEvent::Start,
            Change::Requeue => TaskEvent::Requeue,
            Change::Finish(outcome) => TaskEvent::Finish(outcome.state),
        }
    }
}

impl<Id: Copy, Time: Copy> Change<Id, Time, Vec<u8>, String> {
    /// The same change with its payloads borrowed: what the SQLite
    /// writer's fold applies to the rows it holds.
    pub(super) fn borrowed(&self) -> Change<Id, Time, &[u8], &str> {
        match self {
            Change::Start {
                engine,
                started,
                attempts,
            } => Change::Start {
                engine: *engine,
                started: *started,
                attempts: *attempts,
            },
            Change::Requeue => Change::Requeue,
            Change::Finish(outcome) => Change::Finish(Outcome {
                state: outcome.state,
                result: &outcome.result,
                error: outcome.error.as_deref(),
                completed: outcome.completed,
                engine: outcome.engine,
                attempts: outcome.attempts,
            }),
        }
    }
}

impl<Id, Time, Bytes, Text> Progress<Id, Time, Bytes, Text> {
    /// A task as it is recorded: pending, never started.
    pub(super) fn new() -> Self {
        Progress {
            state: TaskState::Pending,
            engine: None,
            started: None,
            completed: None,
            result: None,
            error: None,
            attempts: 0,
        }
    }

    /// Applies `change` if the task's state allows it ([`TaskState::apply`]),
    /// setting or clearing the columns it covers; a refused change leaves
    /// the task as it was.
    pub(super) fn apply(&mut self, change: Change<Id, Time, Bytes, Text>) -> Result<(), Refused> {
        self.state = self.state.apply(change.event())?;
        match change {
            Change::Start {
                engine,
                started,
                attempts,
            } => {
                self.engine = Some(engine);
                self.started = Some(started);
                self.attempts = attempts;
            }
            Change::Requeue => {
                self.engine = None;
                self.started = None;
            }
            Change::Finish(outcome) => {
                self.result = Some(outcome.result);
                self.error = outcome.error;
                self.completed = Some(outcome.completed);
                self.engine = Some(outcome.engine);
                self.attempts = outcome.attempts;
            }
        }
        Ok(())
    }

    /// A client's resubmit ([`TaskEvent::Resubmit`]), if the task's state
    /// allows it: back to pending with all but its attempt count cleared.
    pub(super) fn resubmit(&mut self) -> Result<(), Refused> {
        self.state = self.state.apply(TaskEvent::Resubmit)?;
        self.engine = None;
        self.started = None;
        self.completed = None;
        self.result = None;
        self.error = None;
        Ok(())
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Logs an event that changed nothing: a warning for an unknown task, a
/// debug line for one whose state refused it (normal in a cluster).
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

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
