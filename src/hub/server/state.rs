//! The hub's state as plain data: engines, jobs and their tasks, the turns
//! jobs take, the commands waiting for answers, the slot total. No socket
//! and no store in it, so the scheduler (see [`scheduler`](super::scheduler))
//! and its tests work on it alone.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};

use crate::ids::{IdMap, IdSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hub::recent::RecentTimes;

use super::super::protocol::{EngineId, HaltAt, JobId, JobKind};
use super::super::store::TaskId;
use crate::message::CommandReply;
use crate::resources::{Allocation, ResourceOffer, ResourcePool, ResourceRequest};

/// How long a job with a resource request may find nothing free for it
/// before the hub reserves an engine for it (see
/// [`scheduler`](super::scheduler)'s anti-starvation rule).
pub(super) const RESERVE_AFTER: Duration = Duration::from_secs(30);

/// Successful task times a job keeps for its median.
pub(super) const DURATION_SAMPLES: usize = 101;

/// An engine as the hub knows it.
pub(super) struct Engine {
    pub(super) id: EngineId,
    /// Its routing identity on the engines' ROUTER (one per connection).
    pub(super) identity: Vec<u8>,
    pub(super) host: String,
    pub(super) pid: u32,
    pub(super) slots: u32,
    pub(super) handlers: Vec<String>,
    /// Tasks it holds (running, or queued locally), straggler copies too.
    pub(super) running: IdSet<(JobId, u64)>,
    pub(super) completed: u64,
    pub(super) last_seen: Instant,
    /// Acknowledged a kill or restart: no new tasks.
    pub(super) leaving: bool,
    /// A send to it failed (its connection is gone): no new tasks until it
    /// is heard from again, or declared dead by its missed heartbeats.
    pub(super) unreachable: bool,
    /// The name it registered under, one per engine process (its routing
    /// identity changes with each connection).
    pub(super) name: String,
    /// What started it, as it registered (`slurm:JOB/NODE`...).
    pub(super) origin: Option<String>,
    /// Draining (it said so, or acknowledged `zcluster drain`); `leaving`
    /// is set with it, so it gets no new tasks.
    pub(super) draining: bool,
    /// What it declared it offers (`None`: only its slots, as cores).
    pub(super) offer: Option<Arc<ResourceOffer>>,
    /// What of its offer is free now.
    pub(super) resources: ResourcePool,
    /// What each task copy it holds with a request was given.
    pub(super) allocations: IdMap<(JobId, u64), Allocation>,
    /// Reserved for this job (which waited too long for resources): no
    /// other job's task goes here until it has placed one.
    pub(super) reserved_for: Option<JobId>,
    /// Tasks it holds that were held by an engine that died (suspects of
    /// killing it): while it holds one, nothing is queued here behind it
    /// (see [`free`](Self::free)).
    pub(super) suspects: Vec<(JobId, u64)>,
}

impl Engine {
    /// An engine just registered, holding nothing.
    pub(super) fn new(id: EngineId, identity: Vec<u8>, slots: u32, now: Instant) -> Self {
        Engine {
            id,
            identity,
            host: String::new(),
            pid: 0,
            slots,
            handlers: Vec::new(),
            running: IdSet::default(),
            completed: 0,
            last_seen: now,
            leaving: false,
            unreachable: false,
            name: String::new(),
            origin: None,
            draining: false,
            offer: None,
            resources: ResourcePool::new(&ResourceOffer::cpus_only(slots)),
            allocations: IdMap::default(),
            reserved_for: None,
            suspects: Vec::new(),
        }
    }

    /// The engine offering `offer` (its slots are its cores).
    pub(super) fn with_offer(mut self, offer: ResourceOffer) -> Self {
        self.slots = offer.cpus.max(1);
        self.resources = ResourcePool::new(&offer);
        self.offer = Some(Arc::new(offer));
        self
    }

    /// Whether `request` fits its whole offer (all of it free).
    pub(super) fn could_ever_fit(&self, request: &ResourceRequest) -> bool {
        match &self.offer {
            Some(offer) => offer.could_fit(request),
            None => ResourceOffer::cpus_only(self.slots).could_fit(request),
        }
    }

    /// It takes a copy of a task: with `allocation` (what a request was
    /// given) or, without a request, one core not by index.
    pub(super) fn hold(&mut self, key: (JobId, u64), allocation: Option<Allocation>) {
        if !self.running.insert(key) {
            if let Some(a) = allocation {
                self.resources.release(&a); // held already: nothing more taken
            }
            return;
        }
        match allocation {
            Some(a) => {
                self.allocations.insert(key, a);
            }
            None => self.resources.take_loose(),
        }
    }

    /// A copy it held ended (a result, a failed send): what it took is
    /// free again. Whether it held it.
    pub(super) fn release(&mut self, key: (JobId, u64)) -> bool {
        if !self.running.remove(&key) {
            return false;
        }
        if !self.suspects.is_empty() {
            self.suspects.retain(|&k| k != key);
        }
        // (No hashing at all while it holds nothing by request, as for
        // jobs without one.)
        let allocation = if self.allocations.is_empty() {
            None
        } else {
            self.allocations.remove(&key)
        };
        match allocation {
            Some(a) => self.resources.release(&a),
            None => self.resources.release_loose(),
        }
        true
    }

    /// Whether it offers what a job of `kind` needs.
    pub(super) fn can_run(&self, kind: &JobKind) -> bool {
        match kind {
            JobKind::Exec => true,
            JobKind::Handler(name) => self.handlers.iter().any(|h| h == name),
        }
    }
}

/// A task of a job, from its arrival to its result.
pub(super) struct Task {
    pub(super) store_id: TaskId,
    /// The recorded request, sent as it is (shared, so a send or a second
    /// copy costs no copy of it).
    pub(super) request: Arc<[u8]>,
    pub(super) engine: Option<EngineId>,
    pub(super) attempts: u32,
    /// Engines it failed on or took down: a retry prefers another.
    pub(super) failed_on: Vec<EngineId>,
    /// Engines that died while running it.
    pub(super) lost: u32,
    /// When it was last sent to an engine.
    pub(super) started: Option<Instant>,
    /// Where a second copy runs (a straggler, speculatively re-run), and
    /// since when.
    pub(super) spare: Option<(EngineId, Instant)>,
    /// A second copy runs, or won or lost already: no other is started
    /// while the two copies both stand.
    pub(super) speculated: bool,
    /// Not counted against the client's credit: put back by `resubmit`
    /// into a running job, or taken back from the store by a restarted hub
    /// (some of which the client already has results for, and which it
    /// does not count).
    pub(super) uncounted: bool,
}

impl Task {
    /// A task not run yet, or run `attempts` times before.
    pub(super) fn new(store_id: TaskId, request: impl Into<Arc<[u8]>>, attempts: u32) -> Self {
        Task {
            store_id,
            request: request.into(),
            engine: None,
            attempts,
            failed_on: Vec::new(),
            lost: 0,
            started: None,
            spare: None,
            speculated: false,
            uncounted: false,
        }
    }

    /// Engine `engine` lost it (it left, or it `died`): a retry prefers
    /// another, and a death counts. Whether it has now taken down `limit`
    /// engines (a poison input).
    pub(super) fn lost_on(&mut self, engine: EngineId, died: bool, limit: u32) -> bool {
        self.failed_on.push(engine);
        self.lost += u32::from(died);
        died && self.lost >= limit.max(1)
    }

    /// The engine running its second copy.
    pub(super) fn spare_engine(&self) -> Option<EngineId> {
        self.spare.map(|(engine, _)| engine)
    }

    /// One of its two copies is gone (its engine died, or it failed while
    /// the other runs): the copy on `engine` is dropped and the other runs
    /// on alone, as the task's only copy. That one may be copied again if
    /// it straggles in turn: the lost copy settled nothing, and a copy
    /// that hangs must never be left to run alone.
    pub(super) fn drop_copy(&mut self, engine: EngineId) {
        if self.spare_engine() == Some(engine) {
            self.spare = None;
        } else if let (Some(e), Some((spare, since))) = (self.engine, self.spare) {
            if e != engine {
                return;
            }
            self.engine = Some(spare);
            self.started = Some(since);
            self.spare = None;
        } else {
            return;
        }
        self.speculated = false;
    }
}

/// How long a job's client may say nothing about it and still count as
/// attached. A client following its job speaks at least once a second (a
/// `CheckJob` when it has nothing else to send), so this is five of those
/// missed: a client killed, or cut off, shows as gone within it.
pub(super) const CLIENT_SILENT_LIMIT: Duration = Duration::from_secs(5);

/// A job: its client, its queue and the tasks it has outstanding.
pub(super) struct Job {
    /// The routing identity of the client its results go to.
    pub(super) client: Vec<u8>,
    pub(super) kind: JobKind,
    pub(super) description: String,
    /// Tasks waiting for a slot, in the order they go.
    pub(super) queue: VecDeque<u64>,
    pub(super) tasks: IdMap<u64, Task>,
    pub(super) total: Option<u64>,
    pub(super) finished: u64,
    /// Extra attempts for a failed task.
    pub(super) retries: u32,
    /// Its client's `--halt`: no prefetch, and a rule that halts it.
    pub(super) halt: Option<HaltAt>,
    /// Its halt rule was met: dispatch nothing more.
    pub(super) halted: bool,
    /// Tasks that failed for good, and that succeeded (against `halt`).
    pub(super) failed: u64,
    pub(super) succeeded: u64,
    /// Most of its tasks running at once across the cluster (`map -j N`
    /// over a hub); `None`: as many as there are slots.
    pub(super) cap: Option<u32>,
    /// The latest successful task times and their median, for the
    /// prefetch depth and the straggler rule.
    pub(super) times: RecentTimes,
    /// Tasks in `tasks` not counted against the client's credit (see
    /// [`Task::uncounted`]).
    pub(super) uncounted: usize,
    /// Tasks of it on engines now, second copies apart (against `cap`).
    pub(super) running: usize,
    /// What each of its tasks needs (`None`: one core, as before
    /// resources).
    pub(super) request: Option<Arc<ResourceRequest>>,
    /// Since when its turns found nothing free for its request (for the
    /// anti-starvation rule).
    pub(super) blocked_since: Option<Instant>,
    /// When its client last spoke about it (a task, a check or an attach;
    /// a following client checks at least once a second): whether a
    /// client is attached, for `zcluster status`. `None`: not since the
    /// hub started (a job recovered from the store, until a client
    /// attaches).
    pub(super) client_heard: Option<Instant>,
    /// Tasks its client may have outstanding, as the hub told it when the
    /// job opened; `None`: the hub's `credit` (a job recovered from the
    /// store).
    pub(super) credit: Option<u32>,
}

impl Job {
    /// Tasks its client may have outstanding: what the hub told it at
    /// open, or `hub_credit` for a job recovered or revived from the store.
    pub(super) fn credit_or(&self, hub_credit: u32) -> u32 {
        self.credit.unwrap_or(hub_credit)
    }

    /// A job with nothing queued, no retries and no halting.
    pub(super) fn new(client: Vec<u8>, kind: JobKind, description: String) -> Self {
        Job {
            client,
            kind,
            description,
            queue: VecDeque::new(),
            tasks: IdMap::default(),
            total: None,
            finished: 0,
            retries: 0,
            halt: None,
            halted: false,
            failed: 0,
            succeeded: 0,
            cap: None,
            times: RecentTimes::new(DURATION_SAMPLES),
            uncounted: 0,
            running: 0,
            request: None,
            blocked_since: None,
            client_heard: None,
            credit: None,
        }
    }

    /// Notes that `client` spoke about the job, if it is the job's client.
    pub(super) fn heard_from(&mut self, client: &[u8]) {
        if self.client == client {
            self.client_heard = Some(Instant::now());
        }
    }

    /// Whether its client spoke about it within
    /// [`CLIENT_SILENT_LIMIT`]: a client following the job speaks at least
    /// once a second.
    pub(super) fn client_attached(&self) -> bool {
        self.client_heard
            .is_some_and(|heard| heard.elapsed() < CLIENT_SILENT_LIMIT)
    }

    /// Takes a task out of the job.
    pub(super) fn take(&mut self, id: u64) -> Option<Task> {
        let task = self.tasks.remove(&id)?;
        self.uncounted -= usize::from(task.uncounted);
        self.running -= usize::from(task.engine.is_some());
        Some(task)
    }

    /// Puts a task (back) into the job.
    pub(super) fn put(&mut self, id: u64, task: Task) {
        self.uncounted += usize::from(task.uncounted);
        self.running += usize::from(task.engine.is_some());
        if let Some(old) = self.tasks.insert(id, task) {
            self.uncounted -= usize::from(old.uncounted);
            self.running -= usize::from(old.engine.is_some());
        }
    }

    /// Sets where task `id` runs (`None`: nowhere), keeping the count of
    /// its running tasks.
    pub(super) fn set_engine(&mut self, id: u64, engine: Option<EngineId>) {
        if let Some(task) = self.tasks.get_mut(&id) {
            self.running += usize::from(engine.is_some());
            self.running -= usize::from(task.engine.is_some());
            task.engine = engine;
        }
    }

    /// Tasks the client has outstanding, against its credit.
    pub(super) fn client_tasks(&self) -> usize {
        self.tasks.len() - self.uncounted
    }

    /// Records the time a task took to succeed, for the prefetch depth and
    /// the straggler rule.
    pub(super) fn record_duration(&mut self, took: Duration) {
        self.times.record(took);
    }

    /// The median of its recent successful task times.
    pub(super) fn median(&self) -> Option<Duration> {
        self.times.median()
    }
}

/// What a command to the engines is for: it decides the reply.
pub(super) enum CommandPurpose {
    Kill,
    Drain,
    Ping,
    Shutdown,
}

/// A command sent to engines, waiting for their replies.
pub(super) struct PendingCommand {
    pub(super) client: Vec<u8>,
    pub(super) request: u64,
    pub(super) purpose: CommandPurpose,
    pub(super) waiting: IdSet<EngineId>,
    pub(super) replies: Vec<(EngineId, CommandReply)>,
    /// Engines asked that never answered (gone, or too slow).
    pub(super) silent: Vec<EngineId>,
    pub(super) deadline: Instant,
}

/// Everything the hub knows of engines, jobs and commands.
pub(super) struct State {
    pub(super) engines: IdMap<EngineId, Engine>,
    pub(super) by_identity: HashMap<Vec<u8>, EngineId>,
    pub(super) jobs: IdMap<JobId, Job>,
    /// Jobs with queued tasks take turns in this order.
    pub(super) turns: VecDeque<JobId>,
    pub(super) commands: IdMap<u64, PendingCommand>,
    /// Slots of all registered engines.
    pub(super) total_slots: usize,
    pub(super) next_token: u64,
    /// Engines reserved for a job that waited too long (see
    /// [`Engine::reserved_for`]), by job.
    pub(super) reservations: IdMap<JobId, EngineId>,
    /// How long a job with a request waits before it gets a reservation.
    pub(super) reserve_after: Duration,
    /// Engines that may fit a request they did not fit before (something
    /// was released there, they joined, were heard from again, or lost a
    /// reservation) since the scheduler last ran.
    pub(super) freed: Vec<EngineId>,
    /// Per job with a request: the engines it may fit (see
    /// [`Candidates`]), kept between the scheduler's runs.
    pub(super) fitting: IdMap<JobId, Candidates>,
    /// Every engine with a free slot, and maybe some without: a task
    /// without a request looks for its engine here rather than among all
    /// of them, which with a thousand one-slot engines, nearly all busy,
    /// cost a scan of every engine per task. An engine's room only grows
    /// where it is pushed on [`freed`](Self::freed), from which the
    /// scheduler adds it here; the scheduler drops those it finds full.
    pub(super) open: BTreeSet<EngineId>,
    /// The most slots any engine registered with: an open engine with that
    /// many free has the most room there can be, and ends the search.
    pub(super) most_slots: u32,
    /// Engines by their room at the deepest prefetch, the most first, for
    /// a prefetched task when no engine has a free slot (see
    /// [`open`](Self::open)): with a thousand one-slot engines all busy
    /// and a backlog, finding the one with the most room was a scan of
    /// every engine per message sent. Kept lazily: an engine's room only
    /// grows where it is pushed on [`freed`](Self::freed), from which the
    /// scheduler pushes it here again; an entry whose room shrank since is
    /// put right when it comes to the top.
    pub(super) deep: BinaryHeap<(u32, Reverse<EngineId>)>,
}

/// The engines a job's request may fit, the likeliest first: built by a
/// scan of every engine once, then kept up to date from
/// [`State::freed`], so placing a task costs a look at the front one, not
/// a scan. An engine found not to fit is dropped until it is freed again.
#[derive(Default)]
pub(super) struct Candidates {
    pub(super) queue: VecDeque<EngineId>,
    pub(super) listed: IdSet<EngineId>,
}

impl Default for State {
    fn default() -> Self {
        State {
            engines: IdMap::default(),
            by_identity: HashMap::new(),
            jobs: IdMap::default(),
            turns: VecDeque::new(),
            commands: IdMap::default(),
            total_slots: 0,
            next_token: 1,
            reservations: IdMap::default(),
            reserve_after: RESERVE_AFTER,
            freed: Vec::new(),
            fitting: IdMap::default(),
            open: BTreeSet::new(),
            most_slots: 0,
            deep: BinaryHeap::new(),
        }
    }
}

impl State {
    /// Gives `job` a turn for free slots, unless it has one already.
    pub(super) fn take_turn(&mut self, job: JobId) {
        if !self.turns.contains(&job) {
            self.turns.push_back(job);
        }
    }

    /// Adds a registered engine and its slots (one at least).
    pub(super) fn add_engine(&mut self, mut engine: Engine) {
        engine.slots = engine.slots.max(1);
        self.by_identity.insert(engine.identity.clone(), engine.id);
        self.total_slots += engine.slots as usize;
        self.most_slots = self.most_slots.max(engine.slots);
        self.freed.push(engine.id);
        self.engines.insert(engine.id, engine);
    }

    /// Removes an engine and its slots; what it held is the caller's.
    pub(super) fn remove_engine(&mut self, id: EngineId) -> Option<Engine> {
        let engine = self.engines.remove(&id)?;
        if let Some(job) = engine.reserved_for {
            self.reservations.remove(&job);
        }
        self.total_slots = self.total_slots.saturating_sub(engine.slots as usize);
        self.by_identity.remove(&engine.identity);
        Some(engine)
    }

    /// A copy engine `engine` held ended: what it took is free again (see
    /// [`Engine::release`]). Whether it held it.
    pub(super) fn release(&mut self, engine: EngineId, key: (JobId, u64)) -> bool {
        let released = self
            .engines
            .get_mut(&engine)
            .is_some_and(|e| e.release(key));
        if released {
            self.freed.push(engine);
        }
        released
    }

    /// Task `task` of job `job`, if both are live.
    pub(super) fn task(&self, job: JobId, task: u64) -> Option<&Task> {
        self.jobs.get(&job).and_then(|j| j.tasks.get(&task))
    }

    /// Forgets `job` if it is closed and every task of it finished.
    pub(super) fn retire_if_done(&mut self, job_id: JobId) -> bool {
        let done = self.jobs.get(&job_id).is_some_and(|job| {
            job.total.is_some_and(|t| job.finished >= t) && job.tasks.is_empty()
        });
        if done {
            self.jobs.remove(&job_id);
        }
        done
    }
}
