//! The memory store: plain maps, synchronous, gone when the hub exits.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::{Bound, Range};
use std::sync::Arc;
use std::time::SystemTime;

use super::counts::JobCounts;
use super::state::{ignored, Change, Outcome, Progress};
use super::types::{Selection, TaskRange, FIRST_ID};
use super::{
    CommitLog, EngineCounts, EngineId, Finished, JobId, JobRecord, JobSummary, NewTask, Store,
    StoreError, TaskEvent, TaskFilter, TaskId, TaskRecord, TaskState,
};
use crate::ids::IdMap;

/// A store in plain maps: fast and synchronous, but gone when the hub exits.
/// For tests and for hubs whose history nobody needs.
#[derive(Debug)]
pub struct MemoryStore {
    /// Commits at once: its position stays 0 and it never fails.
    log: Arc<CommitLog>,
    next_engine: u64,
    next_job: u64,
    next_task: u64,
    jobs: BTreeMap<JobId, MemoryJob>,
    tasks: IdMap<TaskId, MemoryTask>,
    /// Each job's tasks by state, moved as they change.
    counts: JobCounts,
}

/// One task: what it was recorded with, and how far it got.
#[derive(Debug)]
struct MemoryTask {
    id: TaskId,
    job: JobId,
    seq: u64,
    request: Vec<u8>,
    submitted: SystemTime,
    progress: Progress<EngineId, SystemTime, Vec<u8>, String>,
}

#[derive(Debug)]
struct MemoryJob {
    record: JobRecord,
    /// (seq, id) of its tasks, for (job, seq) order.
    tasks: BTreeSet<(u64, TaskId)>,
}

/// An event as the memory store records it.
type MemoryChange = Change<EngineId, SystemTime, Vec<u8>, String>;

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// The tasks of `job` in `range`, in (seq, id) order.
    fn job_range(&self, job: JobId, range: &TaskRange, with_payloads: bool) -> Vec<TaskRecord> {
        let Some(job) = self.jobs.get(&job) else {
            return Vec::new();
        };
        let to = (range.to_seq, TaskId::MAX);
        let (from, start) = match range.after_id {
            Some(id) => (Bound::Excluded((range.from_seq, id)), (range.from_seq, id)),
            None => {
                let start = (range.from_seq, TaskId::MIN);
                (Bound::Included(start), start)
            }
        };
        // (A start past the end would make BTreeSet::range panic.)
        if start > to {
            return Vec::new();
        }
        job.tasks
            .range((from, Bound::Included(to)))
            .take(range.limit)
            .filter_map(|(_, id)| self.tasks.get(id))
            .map(|t| view(t, with_payloads))
            .collect()
    }

    /// What [`Store::location`] says, and the [`open`](super::open) spec that selects this store.
    pub const LOCATION: &'static str = ":memory:";

    /// An empty store whose counters start at 1.
    pub fn new() -> Self {
        MemoryStore {
            log: Arc::new(CommitLog::immediate()),
            next_engine: FIRST_ID,
            next_job: FIRST_ID,
            next_task: FIRST_ID,
            jobs: BTreeMap::new(),
            tasks: IdMap::default(),
            counts: JobCounts::default(),
        }
    }

    fn take_ids(counter: &mut u64, n: u64, name: &'static str) -> Result<Range<u64>, StoreError> {
        let start = *counter;
        *counter = start
            .checked_add(n)
            .ok_or(StoreError::IdsExhausted { counter: name })?;
        Ok(start..*counter)
    }

    /// Applies an engine's event to a task, as the state machine allows;
    /// an event it refuses, or one for an unknown task, is only logged.
    fn change(&mut self, task: TaskId, change: MemoryChange) {
        let event = change.event();
        let refused = match self.tasks.get_mut(&task) {
            Some(t) => {
                let from = t.progress.state;
                match t.progress.apply(change) {
                    Ok(()) => {
                        self.counts.moved(t.job, Some(from), Some(t.progress.state));
                        None
                    }
                    Err(refused) => Some(Some(refused.state)),
                }
            }
            None => Some(None),
        };
        if let Some(state) = refused {
            ignored(event.name(), task, state);
        }
    }

    fn sorted_views<'a>(
        &self,
        tasks: impl Iterator<Item = &'a MemoryTask>,
        with_payloads: bool,
    ) -> Vec<TaskRecord> {
        let mut out: Vec<TaskRecord> = tasks.map(|t| view(t, with_payloads)).collect();
        out.sort_by_key(|t| (t.job, t.seq, t.id));
        out
    }
}

/// A copy of `task`, without payloads unless asked.
fn view(task: &MemoryTask, with_payloads: bool) -> TaskRecord {
    let progress = &task.progress;
    TaskRecord {
        id: task.id,
        job: task.job,
        seq: task.seq,
        request: with_payloads.then(|| task.request.clone()),
        submitted: task.submitted,
        engine: progress.engine,
        started: progress.started,
        completed: progress.completed,
        state: progress.state,
        result: if with_payloads {
            progress.result.clone()
        } else {
            None
        },
        error: progress.error.clone(),
        attempts: progress.attempts,
    }
}

impl Store for MemoryStore {
    fn next_engine_id(&mut self) -> Result<EngineId, StoreError> {
        Ok(Self::take_ids(&mut self.next_engine, 1, "engine")?.start)
    }

    fn next_job_id(&mut self) -> Result<JobId, StoreError> {
        Ok(Self::take_ids(&mut self.next_job, 1, "job")?.start)
    }

    fn next_task_ids(&mut self, n: u64) -> Result<Range<TaskId>, StoreError> {
        Self::take_ids(&mut self.next_task, n, "task")
    }

    fn add_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        if self.jobs.contains_key(&job.id) {
            return Err(StoreError::DuplicateJob(job.id));
        }
        self.jobs.insert(
            job.id,
            MemoryJob {
                record: job.clone(),
                tasks: BTreeSet::new(),
            },
        );
        self.counts.add_job(job);
        Ok(())
    }

    fn set_job_total(&mut self, job: JobId, total: u64) -> Result<(), StoreError> {
        let entry = self.jobs.get_mut(&job).ok_or(StoreError::UnknownJob(job))?;
        entry.record.total = Some(total);
        self.counts.set_total(job, total);
        Ok(())
    }

    fn add_tasks(&mut self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        let mut fresh = HashSet::with_capacity(tasks.len());
        for task in &tasks {
            if !self.jobs.contains_key(&task.job) {
                return Err(StoreError::UnknownJob(task.job));
            }
            if self.tasks.contains_key(&task.id) || !fresh.insert(task.id) {
                return Err(StoreError::DuplicateTask(task.id));
            }
        }
        for task in tasks {
            self.counts.moved(task.job, None, Some(TaskState::Pending));
            if let Some(job) = self.jobs.get_mut(&task.job) {
                job.tasks.insert((task.seq, task.id));
            }
            self.tasks.insert(
                task.id,
                MemoryTask {
                    id: task.id,
                    job: task.job,
                    seq: task.seq,
                    request: task.request,
                    submitted: task.submitted,
                    progress: Progress::new(),
                },
            );
        }
        Ok(())
    }

    fn task_started(
        &mut self,
        task: TaskId,
        engine: EngineId,
        started: SystemTime,
        attempts: u32,
    ) -> Result<(), StoreError> {
        self.change(
            task,
            Change::Start {
                engine,
                started,
                attempts,
            },
        );
        Ok(())
    }

    fn task_requeued(&mut self, task: TaskId) -> Result<(), StoreError> {
        self.change(task, Change::Requeue);
        Ok(())
    }

    fn task_finished(&mut self, task: TaskId, finished: Finished) -> Result<(), StoreError> {
        if !finished.status.is_completed() {
            return Err(StoreError::InvalidFinish {
                task,
                state: finished.status,
            });
        }
        self.change(
            task,
            Change::Finish(Outcome {
                state: finished.status,
                result: finished.result,
                error: finished.error,
                completed: finished.completed,
                engine: finished.engine,
                attempts: finished.attempts,
            }),
        );
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn written(&self) -> u64 {
        0
    }

    fn commits(&self) -> Arc<CommitLog> {
        Arc::clone(&self.log)
    }

    fn job(&mut self, job: JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.jobs.get(&job).map(|j| j.record.clone()))
    }

    fn jobs(&mut self) -> Result<Vec<JobSummary>, StoreError> {
        Ok(self.counts.summaries())
    }

    fn tasks(
        &mut self,
        filter: &TaskFilter,
        with_payloads: bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(match filter.selection() {
            Selection::Range(job, range) => self.job_range(job, &range, with_payloads),
            Selection::Ids(ids) => self.sorted_views(
                ids.iter().filter_map(|id| self.tasks.get(id)),
                with_payloads,
            ),
        })
    }

    fn engine_counts(&mut self) -> Result<Vec<EngineCounts>, StoreError> {
        let mut counts: BTreeMap<EngineId, EngineCounts> = BTreeMap::new();
        for task in self.tasks.values() {
            if let Some(engine) = task.progress.engine {
                let entry = counts.entry(engine).or_insert(EngineCounts {
                    engine,
                    running: 0,
                    completed: 0,
                });
                if task.progress.state == TaskState::Running {
                    entry.running += 1;
                } else if task.progress.state.is_completed() {
                    entry.completed += 1;
                }
            }
        }
        Ok(counts.into_values().collect())
    }

    fn unfinished(&mut self) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self.sorted_views(
            self.tasks
                .values()
                .filter(|t| !t.progress.state.is_completed()),
            true,
        ))
    }

    fn purge_job(&mut self, job: JobId) -> Result<u64, StoreError> {
        let entry = self.jobs.get(&job).ok_or(StoreError::UnknownJob(job))?;
        let pending = entry
            .tasks
            .iter()
            .filter(|(_, id)| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| !t.progress.state.is_completed())
            })
            .count() as u64;
        if pending > 0 {
            return Err(StoreError::PendingTasks { job, pending });
        }
        let removed = self.jobs.remove(&job).map(|j| j.tasks).unwrap_or_default();
        for (_, id) in &removed {
            self.tasks.remove(id);
        }
        self.counts.remove_job(job);
        Ok(removed.len() as u64)
    }

    fn purge_engine(&mut self, engine: EngineId) -> Result<u64, StoreError> {
        let doomed: Vec<(JobId, u64, TaskId, TaskState)> = self
            .tasks
            .values()
            .filter(|t| t.progress.engine == Some(engine) && t.progress.state.is_completed())
            .map(|t| (t.job, t.seq, t.id, t.progress.state))
            .collect();
        for &(job, seq, id, state) in &doomed {
            self.tasks.remove(&id);
            if let Some(entry) = self.jobs.get_mut(&job) {
                entry.tasks.remove(&(seq, id));
            }
            self.counts.moved(job, Some(state), None);
        }
        Ok(doomed.len() as u64)
    }

    fn purge_completed(&mut self) -> Result<u64, StoreError> {
        let before = self.tasks.len();
        let counts = &mut self.counts;
        self.tasks.retain(|_, t| {
            let completed = t.progress.state.is_completed();
            if completed {
                counts.moved(t.job, Some(t.progress.state), None);
            }
            !completed
        });
        let tasks = &self.tasks;
        self.jobs.retain(|&id, job| {
            job.tasks.retain(|(_, id)| tasks.contains_key(id));
            let kept = !job.tasks.is_empty() || job.record.total.is_none();
            if !kept {
                counts.remove_job(id);
            }
            kept
        });
        Ok((before - self.tasks.len()) as u64)
    }

    fn reset_for_resubmit(
        &mut self,
        job: JobId,
        ids: Option<&[TaskId]>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let entry = self.jobs.get(&job).ok_or(StoreError::UnknownJob(job))?;
        let targets: Vec<TaskId> = match ids {
            None => entry
                .tasks
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| {
                    self.tasks
                        .get(id)
                        .is_some_and(|t| t.progress.state == TaskState::Failed)
                })
                .collect(),
            Some(ids) => {
                let mut seen = HashSet::new();
                let mut targets = Vec::new();
                for &task in ids {
                    if !seen.insert(task) {
                        continue;
                    }
                    match self.tasks.get(&task) {
                        Some(t) if t.job == job => {
                            t.progress
                                .state
                                .apply(TaskEvent::Resubmit)
                                .map_err(|refused| StoreError::NotCompleted {
                                    task,
                                    state: refused.state,
                                })?;
                        }
                        _ => return Err(StoreError::UnknownTask { job, task }),
                    }
                    targets.push(task);
                }
                targets
            }
        };
        let mut out = Vec::with_capacity(targets.len());
        for id in targets {
            // Every target was checked above: none refuses.
            if let Some(t) = self.tasks.get_mut(&id) {
                let from = t.progress.state;
                if t.progress.resubmit().is_ok() {
                    self.counts.moved(t.job, Some(from), Some(t.progress.state));
                    out.push(view(t, true));
                }
            }
        }
        out.sort_by_key(|t| (t.seq, t.id));
        Ok(out)
    }

    fn location(&self) -> String {
        Self::LOCATION.to_string()
    }
}
