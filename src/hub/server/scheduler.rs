//! Where every placement decision is made: which queued task goes to which
//! engine, how many an engine may hold, which straggler gets a second copy.
//! Functions of the [`State`] alone, which they update as if what they
//! return were sent; they send nothing (the hub's loop does, through its
//! outbox, and hands back with [`unsent`] what could not go).
//!
//! The rules, each with its unit test below:
//!
//! - **free slots only**: an engine gets a task while it has a free slot
//!   (dispatch by credit), never one it is leaving or unreachable;
//! - **prefetch by task length**: while a job's backlog is longer than all
//!   the slots, an engine may hold a few tasks per slot, the more the
//!   shorter its tasks (to hide the round trip to the hub), none at the
//!   tail, and none for a job with a halt rule (`--halt`), so that nothing
//!   of it waits at an engine to start after the hub halted it;
//! - **short batches of tiny tasks**: with a short backlog (no prefetch), a
//!   job whose tasks are far shorter than a round trip through the hub
//!   still has them handed out several to a message, as many per slot as
//!   take together no longer than [`SHORT_BATCH_WORK`] (one for tasks of a
//!   round trip or more, for a job's first tasks, none for a job with a
//!   halt rule): a thousand idle one-slot engines get a few batches, not a
//!   thousand messages of one task, and a task waits behind its batch no
//!   longer than it would for a message of its own. Task times are the
//!   engines' measure of the handler (not the time since a task was sent,
//!   which grows with the round trip and the queue at the engine);
//! - **fair turns**: jobs with queued tasks take turns, one batch each;
//! - **retry elsewhere**: a retried task goes to an engine it has not
//!   failed on while there is one;
//! - **nothing behind a suspect**: a task an engine died holding goes in a
//!   message of its own, and its engine takes nothing to queue behind it
//!   while it holds it (were it a poison input, what waited behind it
//!   would die with it again, and an innocent task that did so
//!   `poison_limit` times would be failed as poison);
//! - **a job's cap**: a job opened with a cap (`map -j N` over a hub) has at
//!   most that many tasks running across the cluster;
//! - **straggler copies**: with nothing queued, a task that has run far
//!   longer than its job's median gets a second copy on another engine's
//!   free slot (the first result wins; the hub cancels the loser);
//! - **whole requests**: a task of a job with a resource request
//!   (`--cpus 2 --gpus 1 --mem 4G`) goes only to an engine where all of it
//!   is free, which holds it (cores and devices by index) until that copy
//!   ends; a task without one takes one core. While a job with a request
//!   waits, jobs without one get no prefetch (cores queued on an engine
//!   would be cores its tasks wait for);
//! - **no starvation**: a job with a request whose turns have found nothing
//!   free for [`RESERVE_AFTER`](super::state::RESERVE_AFTER) gets an engine
//!   reserved (one whose offer covers the request, the one with the most
//!   cores free): no other job's task goes there until it has placed one,
//!   so a stream of one-core tasks cannot keep a whole-node task out.
//!
//! The poison limit and a dead engine's tasks going back to the front of
//! their queue are the engine reactions' (`engines.rs`), tested there.
//!
//! One file (about 800 lines of code, its tests in `scheduler/`): the rules
//! above act on each other inside one pass of [`dispatch`] (a job's depth
//! decides an engine's room, which decides the batch, which a suspect or a
//! reservation cuts short), so they are read together, in the order a
//! task meets them.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use tracing::info;

use super::state::{Candidates, Engine, Job, State};
use crate::hub::protocol::{EngineId, JobId, JobKind};
use crate::ids::IdMap;
use crate::resources::ResourceRequest;

/// Most tasks the hub sends an engine in one message...
pub(super) const DISPATCH_BATCH: usize = 32;

/// ...and most bytes of requests in it (a larger one goes alone)...
pub(super) const DISPATCH_BATCH_BYTES: usize = 1 << 20;

/// ...and only for a job whose median task takes less than this.
pub(super) const DISPATCH_BATCH_BELOW: Duration = Duration::from_millis(1);

/// How much work (tasks times the job's median) the hub hands one slot in
/// one message while a job's backlog is short (see [`Job::short_batch`]):
/// about an idle round trip through the hub, so a task sent in a batch
/// waits behind the others no longer than it would for a message of its
/// own.
pub(super) const SHORT_BATCH_WORK: Duration = Duration::from_micros(250);

/// The deepest prefetch of any job (see [`Job::prefetch_depth`]): engines
/// are ranked by their room at it in [`State::deep`].
pub(super) const DEEPEST_PREFETCH: u32 = 64;

/// Engines [`most_room_deep`] may pass over (they cannot run the job's
/// tasks, or are reserved for another job) before it gives up on its
/// ranking and looks at every engine, as before it: a cluster of engines
/// with different handlers costs a scan, one of alike engines a look at
/// the top.
const DEEP_SKIPS: usize = 32;

/// Finished tasks a job needs before any of its tasks counts as a straggler.
pub(super) const SPECULATE_AFTER: usize = 5;

/// A task counts as a straggler once it has run this many times the job's
/// median task time...
pub(super) const STRAGGLER_FACTOR: u32 = 4;

/// ...and at least this long.
pub(super) const STRAGGLER_FLOOR: Duration = Duration::from_secs(2);

/// Tasks of one job for one engine, to go in one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Assignment {
    /// Where they go.
    pub(super) engine: EngineId,
    /// Their job.
    pub(super) job: JobId,
    /// Their ids, in the order they were queued.
    pub(super) tasks: Vec<u64>,
    /// When each was started before (a second copy: whether it is one).
    pub(super) before: Before,
}

/// What [`unsent`] needs to undo an assignment whose send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Before {
    /// A first (or next) run of queued tasks: their previous start times.
    Queued(Vec<Option<Instant>>),
    /// A straggler's second copy.
    Copy,
}

impl Engine {
    /// Tasks it can take now: its free slots, or, while there is a backlog,
    /// as many again `depth` times over to queue locally (prefetch).
    /// While it holds a suspect (a task an engine died holding), free
    /// slots only: a task queued behind it would die with it again if it
    /// is a poison input.
    pub(super) fn free(&self, depth: u32) -> u32 {
        if self.leaving || self.unreachable {
            0
        } else {
            let depth = if self.suspects.is_empty() { depth } else { 1 };
            // Cores held by index (tasks with a request) are not
            // prefetched into; the rest are, `depth` times over.
            let cores = self
                .slots
                .saturating_sub(self.resources.cpus_taken_by_index());
            let capacity = cores.saturating_mul(depth.max(1));
            capacity.saturating_sub(self.resources.loose())
        }
    }

    /// Whether all of `request` is free here now.
    pub(super) fn fits(&self, request: &ResourceRequest) -> bool {
        !(self.leaving || self.unreachable) && self.resources.fits(request)
    }

    /// Whether a task of `job` may go here: not reserved for another job.
    fn open_to(&self, job: JobId) -> bool {
        self.reserved_for.is_none_or(|j| j == job)
    }
}

impl Job {
    /// Tasks per slot an engine may hold while the job's backlog is long:
    /// the shorter its tasks, the more it takes to hide the round trip
    /// between a result and the next task (a few for tasks of a second,
    /// many for tasks of microseconds, which cost nothing to wait behind).
    /// A job with a halt rule gets none: a task of it waits at the hub, not
    /// in an engine's queue, so none starts once the hub halted it.
    pub(super) fn prefetch_depth(&self) -> u32 {
        if self.halt.is_some() {
            return 1;
        }
        match self.median() {
            // Engines run tasks this short several to a message on one
            // slot, and need a deep queue to keep each slot busy through
            // the round trip to the hub.
            Some(m) if m < Duration::from_micros(100) => DEEPEST_PREFETCH,
            Some(m) if m < Duration::from_millis(1) => 16,
            Some(m) if m < Duration::from_millis(10) => 4,
            _ => 2,
        }
    }

    /// Tasks per slot an engine may be handed at once while the job's
    /// backlog is short (no longer than all the slots, where
    /// [`prefetch_depth`](Self::prefetch_depth) gives none): as many as
    /// take together no longer than [`SHORT_BATCH_WORK`] at its median, at
    /// most [`DISPATCH_BATCH`], so a job of tasks far shorter than a round
    /// trip fills a few engines a batch each rather than sending a thousand
    /// engines one task each, a message apiece; one for tasks of a round
    /// trip or more, for a job with a halt rule, or before any has
    /// finished.
    pub(super) fn short_batch(&self) -> u32 {
        if self.halt.is_some() {
            return 1;
        }
        match self.median() {
            Some(m) => {
                let fit = SHORT_BATCH_WORK.as_nanos() / m.as_nanos().max(1);
                fit.clamp(1, DISPATCH_BATCH as u128) as u32
            }
            None => 1,
        }
    }

    /// How many tasks per slot an engine may hold for this job now, its
    /// backlog `queued` against the cluster's `total_slots`: prefetch while
    /// the backlog is long, a short batch otherwise, one where prefetch is
    /// off (`no_prefetch`: a resource request here or waiting elsewhere).
    fn depth(&self, queued: usize, total_slots: usize, no_prefetch: bool) -> u32 {
        if no_prefetch {
            1
        } else if queued > total_slots {
            self.prefetch_depth()
        } else {
            self.short_batch()
        }
    }

    /// How long a task of this job may run before a second copy is started
    /// on an idle slot: [`STRAGGLER_FACTOR`] times the median of its recent
    /// successful tasks, at least [`STRAGGLER_FLOOR`]; `None` until
    /// [`SPECULATE_AFTER`] tasks have finished.
    pub(super) fn straggler_after(&self) -> Option<Duration> {
        if self.times.len() < SPECULATE_AFTER {
            return None;
        }
        let median = self.median()?;
        Some((median * STRAGGLER_FACTOR).max(STRAGGLER_FLOOR))
    }

    /// More of its tasks it may start now under its cap (unbounded without
    /// one).
    fn room(&self) -> usize {
        self.cap.map_or(usize::MAX, |cap| {
            (cap as usize).saturating_sub(self.running)
        })
    }
}

/// Hands queued tasks to free slots: jobs take turns, each turn's tasks go
/// to the engine with the most room that can run them. The tasks returned
/// are marked started on their engine (attempts counted, slots taken), as
/// if sent; give those whose send failed back with [`unsent`].
pub(super) fn dispatch(state: &mut State, now: Instant) -> Vec<Assignment> {
    let mut plan = Vec::new();
    let total_slots = state.total_slots;
    drop_stale_reservations(state);
    // While a job with a request waits, jobs without one get no prefetch.
    let requests_wait = state.turns.iter().any(|id| {
        state
            .jobs
            .get(id)
            .is_some_and(|j| j.request.is_some() && !j.queue.is_empty() && !j.halted)
    });
    state.open.extend(state.freed.iter().copied());
    rank_freed(state);
    merge_freed(state);
    let mut idle_turns = 0;
    while idle_turns < state.turns.len() {
        let Some(job_id) = state.turns.pop_front() else {
            break;
        };
        let Some(job) = state.jobs.get_mut(&job_id) else {
            continue;
        };
        if job.queue.is_empty() || job.halted {
            continue;
        }
        let Some(&task_id) = job.queue.front() else {
            continue;
        };
        let room = job.room();
        if room == 0 {
            // At its cap: the others go first, and it waits for a task of
            // its own to end.
            state.turns.push_back(job_id);
            idle_turns += 1;
            continue;
        }
        let failed_on = job
            .tasks
            .get(&task_id)
            .map(|t| t.failed_on.as_slice())
            .unwrap_or(&[]);
        // Prefetch only while the job's backlog is longer than all the
        // slots: it hides the round trip between a result and the next
        // task, and at the tail, where a task queued behind a long one
        // would wait while another engine idles, there is none.
        let request = job.request.clone();
        let no_prefetch = request.is_some() || requests_wait;
        // A task an engine died holding (a suspect) goes in a message of
        // its own, and its engine then takes nothing behind it (see
        // `Engine::free`).
        let suspect = job.tasks.get(&task_id).is_some_and(|t| t.lost > 0);
        let depth = job.depth(job.queue.len(), total_slots, no_prefetch);
        // A retry goes to an engine it has not failed on while there
        // is one (busy or not); only when every engine that can run it
        // has failed it may it go back to one.
        let elsewhere = !failed_on.is_empty()
            && state
                .engines
                .values()
                .any(|e| !e.leaving && e.can_run(&job.kind) && !failed_on.contains(&e.id));
        // The engine with the most room (for a request: where all of it
        // is free, the one with the most cores free, from this call's
        // candidates; a retry looks at every engine). Without a request,
        // among the open engines (a free slot); with prefetch and none
        // open, the one ranked with the most room to queue (an engine with
        // a free slot goes first: where engines are alike it has the most
        // room, and an idle slot is the first to fill).
        let open_choice = match &request {
            None if failed_on.is_empty() => most_room_open(
                &mut state.open,
                &state.engines,
                state.most_slots,
                (&job.kind, job_id),
                depth,
            ),
            _ => None,
        };
        let deep_choice = match &request {
            None if depth > 1 && failed_on.is_empty() && open_choice.is_none() => {
                most_room_deep(&mut state.deep, &state.engines, (&job.kind, job_id), depth)
            }
            _ => Deep::NotLooked,
        };
        let engine = match &request {
            None if failed_on.is_empty() && (depth == 1 || open_choice.is_some()) => {
                open_choice.and_then(|id| state.engines.get_mut(&id))
            }
            None if failed_on.is_empty() && !matches!(deep_choice, Deep::GaveUp) => {
                match deep_choice {
                    Deep::Found(id) => state.engines.get_mut(&id),
                    _ => None,
                }
            }
            Some(r) if failed_on.is_empty() => {
                let candidates = state
                    .fitting
                    .entry(job_id)
                    .or_insert_with(|| candidates(state.engines.values(), &job.kind, r));
                let mut chosen = None;
                while let Some(&id) = candidates.queue.front() {
                    match state.engines.get(&id) {
                        Some(e) if e.fits(r) && e.open_to(job_id) => {
                            chosen = Some(id);
                            break;
                        }
                        _ => {
                            candidates.queue.pop_front();
                            candidates.listed.remove(&id);
                        }
                    }
                }
                chosen.and_then(|id| state.engines.get_mut(&id))
            }
            _ => state
                .engines
                .values_mut()
                .filter(|e| {
                    e.can_run(&job.kind)
                        && !(elsewhere && failed_on.contains(&e.id))
                        && e.open_to(job_id)
                        && match &request {
                            None => e.free(depth) > 0,
                            Some(r) => e.fits(r),
                        }
                })
                .max_by_key(|e| match &request {
                    None => e.free(depth),
                    Some(_) => e.resources.free_cpus(),
                }),
        };
        // What the front task is given there.
        let placed = engine.and_then(|engine| match &request {
            None => Some((engine, None)),
            Some(r) => {
                let allocation = engine.resources.allocate(r)?;
                Some((engine, Some(allocation)))
            }
        });
        let Some((engine, mut allocation)) = placed else {
            // Nothing free for this job now; try the others. A retry
            // waiting for another engine lets the tasks behind it go.
            if elsewhere && job.queue.len() > 1 {
                job.queue.rotate_left(1);
            }
            state.turns.push_back(job_id);
            idle_turns += 1;
            // A request that has waited too long gets an engine reserved.
            if let Some(r) = &request {
                let since = *job.blocked_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= state.reserve_after
                    && !state.reservations.contains_key(&job_id)
                {
                    let kind = job.kind.clone();
                    reserve(state, job_id, &kind, r);
                }
            }
            continue;
        };
        idle_turns = 0;
        let reserved_here = request.is_some() && {
            job.blocked_since = None;
            engine.reserved_for == Some(job_id)
        };
        if reserved_here {
            engine.reserved_for = None;
            state.freed.push(engine.id); // open to the others again
        }
        // The front task and, for a job of short tasks, the first-time
        // tasks behind it (a retry waits for its own turn, which looks
        // for an engine it has not failed on), up to DISPATCH_BATCH in
        // one message, so each costs a fraction of a message on this
        // hop and the next. Each one goes only where it could have gone
        // alone (the prefetch depth decided again with the backlog it
        // leaves). Longer tasks go one by one, each to the engine with
        // the most room, which a batch to one engine would not do.
        let most_tasks = if request.is_none()
            && !suspect
            && job.median().is_some_and(|m| m < DISPATCH_BATCH_BELOW)
        {
            DISPATCH_BATCH
        } else {
            1
        }
        .min(room);
        let mut batch = vec![task_id];
        let mut bytes = job.tasks.get(&task_id).map_or(0, |t| t.request.len());
        job.queue.pop_front();
        while batch.len() < most_tasks {
            let depth = job.depth(job.queue.len(), total_slots, no_prefetch);
            if engine.free(depth) as usize <= batch.len() {
                break;
            }
            let Some(next) = job.queue.front().and_then(|id| job.tasks.get(id)) else {
                break;
            };
            bytes += next.request.len();
            if !next.failed_on.is_empty() || bytes > DISPATCH_BATCH_BYTES {
                break;
            }
            if let Some(id) = job.queue.pop_front() {
                batch.push(id);
            }
        }
        if !job.queue.is_empty() {
            state.turns.push_back(job_id);
        }
        let mut before = Vec::with_capacity(batch.len());
        for &id in &batch {
            job.set_engine(id, Some(engine.id));
            let Some(task) = job.tasks.get_mut(&id) else {
                before.push(None);
                continue;
            };
            before.push(task.started.replace(now));
            task.attempts += 1;
            if task.lost > 0 {
                engine.suspects.push((job_id, id));
            }
            engine.hold((job_id, id), allocation.take());
        }
        if let Some(allocation) = allocation {
            engine.resources.release(&allocation); // its task was gone
        }
        if reserved_here {
            state.reservations.remove(&job_id);
        }
        plan.push(Assignment {
            engine: engine.id,
            job: job_id,
            tasks: batch,
            before: Before::Queued(before),
        });
    }
    plan
}

/// Among the `open` engines (see [`State::open`]), the one with the most
/// room at prefetch `depth` that can run a task of `job` (its kind and
/// id), dropping those found without a free slot; the search ends at an
/// engine with `most_slots` free ([`State::most_slots`]) and nothing
/// queued, as none can have more.
fn most_room_open(
    open: &mut BTreeSet<EngineId>,
    engines: &IdMap<EngineId, Engine>,
    most_slots: u32,
    (kind, job_id): (&JobKind, JobId),
    depth: u32,
) -> Option<EngineId> {
    let mut full = Vec::new();
    let mut best: Option<(u32, EngineId)> = None;
    let most_room = most_slots.saturating_mul(depth.max(1));
    for &id in open.iter() {
        let Some(engine) = engines.get(&id) else {
            full.push(id);
            continue;
        };
        if engine.free(1) == 0 {
            full.push(id);
            continue;
        }
        if !(engine.can_run(kind) && engine.open_to(job_id)) {
            continue;
        }
        let room = engine.free(depth);
        if best.is_none_or(|(most, _)| room > most) {
            best = Some((room, id));
            if room >= most_room {
                break;
            }
        }
    }
    for id in full {
        open.remove(&id);
    }
    best.map(|(_, id)| id)
}

/// What [`most_room_deep`] found for a prefetched task.
enum Deep {
    /// Not asked (no prefetch, or an engine with a free slot was found).
    NotLooked,
    /// The engine with the most room that can take it.
    Found(EngineId),
    /// None has room.
    Full,
    /// Too many engines could not run it to trust the ranking: look at
    /// every engine.
    GaveUp,
}

/// The engine with the most room at prefetch `depth` for a task of `job`
/// (its kind and id), from [`State::deep`]: entries whose room shrank
/// since they were pushed are put right as they come to the top, so the
/// top, once right, has the most room at the deepest prefetch. Where
/// engines have as many slots each, that is the most at any depth; where
/// they differ, a smaller engine may have room at `depth` when the top has
/// none, and waits for the next result (no slot of it idles: an engine
/// with a free slot is found among the open ones first).
fn most_room_deep(
    deep: &mut BinaryHeap<(u32, Reverse<EngineId>)>,
    engines: &IdMap<EngineId, Engine>,
    (kind, job_id): (&JobKind, JobId),
    depth: u32,
) -> Deep {
    let mut skipped = Vec::new();
    let found = loop {
        let Some(&(ranked, Reverse(id))) = deep.peek() else {
            break Deep::Full;
        };
        let Some(engine) = engines.get(&id) else {
            deep.pop();
            continue;
        };
        let room = engine.free(DEEPEST_PREFETCH);
        if room != ranked {
            deep.pop();
            if room > 0 {
                deep.push((room, Reverse(id)));
            }
            continue;
        }
        if engine.free(depth) == 0 {
            break Deep::Full;
        }
        if engine.can_run(kind) && engine.open_to(job_id) {
            break Deep::Found(id);
        }
        if skipped.len() >= DEEP_SKIPS {
            break Deep::GaveUp;
        }
        if let Some(entry) = deep.pop() {
            skipped.push(entry);
        }
    };
    deep.extend(skipped);
    found
}

/// Ranks the engines freed since the scheduler last ran in
/// [`State::deep`] by their room now, and rebuilds the ranking from every
/// engine once stale entries outnumber the engines (each result pushes
/// one; only a prefetched task's search takes them off), so it stays
/// within a few entries per engine.
fn rank_freed(state: &mut State) {
    let engines = &state.engines;
    let room = |id: &EngineId| engines.get(id).map_or(0, |e| e.free(DEEPEST_PREFETCH));
    if state.deep.len() + state.freed.len() > 2 * engines.len() + 64 {
        state.deep = engines
            .keys()
            .map(|id| (room(id), Reverse(*id)))
            .filter(|&(r, _)| r > 0)
            .collect();
        return;
    }
    for id in &state.freed {
        let r = room(id);
        if r > 0 {
            state.deep.push((r, Reverse(*id)));
        }
    }
}

/// Starts a second copy of each straggler on an idle slot of another
/// engine, for jobs with nothing queued (so the copy takes no slot a
/// waiting task could use). A straggler has run longer than its job's
/// [`straggler_after`](Job::straggler_after); each task gets at most one
/// copy, the first result wins and the other copy is cancelled. The copies
/// returned are marked running, as if sent.
pub(super) fn speculate(state: &mut State, now: Instant) -> Vec<Assignment> {
    let mut plan = Vec::new();
    if !state.engines.values().any(|e| e.free(1) > 0) {
        return plan;
    }
    let mut stragglers: Vec<(JobId, u64)> = Vec::new();
    for (&job_id, job) in &state.jobs {
        if !job.queue.is_empty() || job.halted {
            continue;
        }
        let Some(limit) = job.straggler_after() else {
            continue;
        };
        for (&task_id, task) in &job.tasks {
            let ran = task
                .started
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
            if task.engine.is_some() && task.spare.is_none() && !task.speculated && ran > limit {
                stragglers.push((job_id, task_id));
            }
        }
    }
    for (job_id, task_id) in stragglers {
        let Some(job) = state.jobs.get_mut(&job_id) else {
            continue;
        };
        let Some(task) = job.tasks.get_mut(&task_id) else {
            continue;
        };
        let running_on = task.engine;
        let failed_on = &task.failed_on;
        let request = job.request.as_deref();
        let Some(engine) = state
            .engines
            .values_mut()
            .filter(|e| {
                e.can_run(&job.kind)
                    && Some(e.id) != running_on
                    && !failed_on.contains(&e.id)
                    && e.open_to(job_id)
                    && match request {
                        None => e.free(1) > 0,
                        Some(r) => e.fits(r),
                    }
            })
            .max_by_key(|e| e.free(1))
        else {
            continue;
        };
        let allocation = match request {
            None => None,
            Some(r) => match engine.resources.allocate(r) {
                Some(a) => Some(a),
                None => continue,
            },
        };
        task.spare = Some((engine.id, now));
        task.speculated = true;
        engine.hold((job_id, task_id), allocation);
        plan.push(Assignment {
            engine: engine.id,
            job: job_id,
            tasks: vec![task_id],
            before: Before::Copy,
        });
    }
    plan
}

/// Undoes an assignment whose send failed: its tasks are as they were, and
/// go back to the front of their queue if `requeue` (else they are the
/// caller's to end); a second copy is simply not started. Give back the
/// failures of one plan last first, so each queue keeps its order.
pub(super) fn unsent(state: &mut State, assignment: &Assignment, requeue: bool) {
    let (job_id, engine_id) = (assignment.job, assignment.engine);
    for &id in &assignment.tasks {
        state.release(engine_id, (job_id, id));
    }
    let Some(job) = state.jobs.get_mut(&job_id) else {
        return;
    };
    match &assignment.before {
        Before::Copy => {
            for id in &assignment.tasks {
                if let Some(task) = job.tasks.get_mut(id) {
                    task.spare = None;
                    task.speculated = false;
                }
            }
        }
        Before::Queued(before) => {
            for (&id, &started) in assignment.tasks.iter().zip(before).rev() {
                job.set_engine(id, None);
                if let Some(task) = job.tasks.get_mut(&id) {
                    task.started = started;
                    task.attempts -= 1;
                    if requeue {
                        job.queue.push_front(id);
                    }
                }
            }
            if requeue {
                state.take_turn(job_id);
            }
        }
    }
}

/// The engines of `engines` that can run a task of `kind` asking for
/// `request` now, the one with the most cores free first.
fn candidates<'a>(
    engines: impl Iterator<Item = &'a Engine>,
    kind: &JobKind,
    request: &ResourceRequest,
) -> Candidates {
    let mut fit: Vec<(u32, EngineId)> = engines
        .filter(|e| e.can_run(kind) && e.fits(request))
        .map(|e| (e.resources.free_cpus(), e.id))
        .collect();
    fit.sort_unstable_by(|a, b| b.cmp(a));
    Candidates {
        listed: fit.iter().map(|&(_, id)| id).collect(),
        queue: fit.into_iter().map(|(_, id)| id).collect(),
    }
}

/// Keeps the jobs' [`Candidates`] up to date: those of jobs with nothing
/// queued are dropped (rebuilt when tasks come), and each engine freed
/// since the last run goes to the front of the lists of the jobs it now
/// fits. Within one run nothing is freed, so an engine that stops fitting
/// is dropped until it is freed again.
fn merge_freed(state: &mut State) {
    let jobs = &state.jobs;
    state.fitting.retain(|id, _| {
        jobs.get(id)
            .is_some_and(|j| j.request.is_some() && !j.queue.is_empty())
    });
    if state.freed.is_empty() {
        return;
    }
    let mut freed = std::mem::take(&mut state.freed);
    if state.fitting.is_empty() {
        freed.clear();
        state.freed = freed; // keep the allocation
        return;
    }
    freed.sort_unstable();
    freed.dedup();
    for (job_id, candidates) in &mut state.fitting {
        let Some(job) = state.jobs.get(job_id) else {
            continue;
        };
        let Some(request) = job.request.as_deref() else {
            continue;
        };
        for id in &freed {
            if candidates.listed.contains(id) {
                continue;
            }
            if let Some(e) = state.engines.get(id) {
                if e.can_run(&job.kind) && e.fits(request) {
                    candidates.queue.push_front(*id);
                    candidates.listed.insert(*id);
                }
            }
        }
    }
    freed.clear();
    state.freed = freed;
}

/// Drops reservations whose job no longer waits (finished, halted, or its
/// queue emptied).
fn drop_stale_reservations(state: &mut State) {
    if state.reservations.is_empty() {
        return;
    }
    let stale: Vec<JobId> = state
        .reservations
        .keys()
        .copied()
        .filter(|j| {
            !state
                .jobs
                .get(j)
                .is_some_and(|job| !job.queue.is_empty() && !job.halted)
        })
        .collect();
    for job in stale {
        if let Some(engine) = state.reservations.remove(&job) {
            if let Some(engine) = state.engines.get_mut(&engine) {
                if engine.reserved_for == Some(job) {
                    engine.reserved_for = None;
                    state.freed.push(engine.id);
                }
            }
        }
    }
}

/// Reserves for `job` the engine that could run `request` (its whole
/// offer covers it) with the most cores free now, among those not
/// reserved already: no other job's task goes there until `job` places
/// one, so what ends there stays free for it.
fn reserve(state: &mut State, job: JobId, kind: &JobKind, request: &ResourceRequest) {
    let chosen = state
        .engines
        .values_mut()
        .filter(|e| {
            !(e.leaving || e.unreachable)
                && e.reserved_for.is_none()
                && e.can_run(kind)
                && e.could_ever_fit(request)
        })
        .max_by_key(|e| e.resources.free_cpus());
    if let Some(engine) = chosen {
        info!(job, engine = engine.id, request = %request.describe(), "reserving an engine for a job that waited too long");
        engine.reserved_for = Some(job);
        state.reservations.insert(job, engine.id);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod resource_tests;
