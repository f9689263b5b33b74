//! The client side of a hub: a connection that makes calls, typed calls
//! (status, results, kill, ...: `client/calls.rs`), a job's tasks and
//! results ([`JobHandle`]), tasks and results several per message
//! (`client/batch.rs`), and the [`map::Backend`](crate::map::Backend)
//! that runs `zcluster map --hub` (`client/backend.rs`).
//!
//! This file (about 900 lines of code) is the connection and the job handle, which
//! share its reconnect and reattach logic and so stay together.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::connection::{ConnectionError, ConnectionInfo};
use super::curve::CurveKeys;
use super::link::HubLink;
use super::protocol::{AttachInfo, ClientCall, HaltAt, JobId, JobKind, Reply, TaskReport};
use crate::auth::{AuthError, Channel, Key};
use crate::ids::IdMap;
use crate::message::{ClusterRequest, ClusterResult, Envelope, Header, MessageError, MessageKind};
use crate::resources::ResourceRequest;
use crate::socket::millis;
use batch::Outgoing;

/// `PREFIX-` and 16 random hex digits: a routing identity no other peer has.
pub(crate) fn random_identity(prefix: &str) -> String {
    format!("{prefix}-{:016x}", crate::auth::random_u64())
}

/// A new connection to the hub's client socket, under a new identity.
fn open_link(
    ctx: &zmq::Context,
    url: &str,
    key: &Key,
    keys: &CurveKeys,
) -> Result<HubLink, ClientError> {
    HubLink::open(
        ctx,
        url,
        key,
        keys,
        Channel::ClientToHub,
        Channel::HubToClient,
        "client",
    )
    .map_err(|source| ClientError::Connect {
        url: url.to_string(),
        source,
    })
}

/// Jobs a client remembers having forgotten (their late results dropped).
const FORGOTTEN_JOBS: usize = 1024;

/// How long a call waits for the hub by default.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors talking to a hub.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be made.
    #[error("cannot connect to the hub at {url}: {source}")]
    Connect {
        /// The URL concerned.
        url: String,
        /// The underlying error.
        #[source]
        source: zmq::Error,
    },
    /// The hub did not answer.
    #[error("the hub at {url} did not answer within {}", humantime::format_duration(*.waited))]
    NoAnswer {
        /// The URL concerned.
        url: String,
        /// How long it waited.
        waited: Duration,
    },
    /// Something that speaks ZeroMQ took the connection, or refused its
    /// CURVE keys, and never answered the signed hello: most likely a hub
    /// with other keys.
    #[error("the hub at {url} refused this connection file's keys or did not answer a signed hello within {}: the connection file's key is probably not this hub's (one from before the hub was started with --fresh?), or the hub is stuck", humantime::format_duration(*.waited))]
    NotWelcomed {
        /// The URL concerned.
        url: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The hub answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The call named a job or an engine the hub does not have (`no job 9
    /// in the store`): a mistake in what was asked.
    #[error("{0}")]
    NotFound(String),
    /// The hub answered something that does not fit the call.
    #[error("unexpected answer from the hub: {0}")]
    Unexpected(String),
    /// A task larger than the hub takes: bad input, refused before it is
    /// sent.
    #[error("task {id} is {size} bytes, over the hub's message limit of {limit} bytes (zcluster hub --max-message)")]
    TaskTooLarge {
        /// The task's id.
        id: u64,
        /// Its encoded size.
        size: usize,
        /// The hub's limit.
        limit: usize,
    },
    /// The connection file's key is unusable.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The transport failed.
    #[error("hub connection failed: {0}")]
    Transport(#[from] MessageError),
}

/// A connection to a hub's client socket.
///
/// It says hello before its first message, to learn the hub's epoch, and
/// again when the hub restarts. When its connection closes it opens a new
/// one under a new identity ([`HubLink`]); [`JobHandle`]s notice
/// ([`generation`](Self::generation)) and reattach their jobs, which binds
/// them to the new connection.
pub struct HubClient {
    ctx: zmq::Context,
    key: Key,
    /// The cluster's CURVE keys, for every new connection.
    curve: CurveKeys,
    link: HubLink,
    /// Links opened so far.
    generation: u64,
    /// Largest body the hub takes, once it said.
    limit: Option<usize>,
    url: String,
    next_request: u64,
    timeout: Duration,
    /// Results that arrived while waiting for a reply, or for another job,
    /// or with others in a batch.
    results: VecDeque<Delivered>,
    /// Tasks given and not sent yet (see `client/batch.rs`).
    outgoing: Outgoing,
    /// Jobs this client is done with: their late results are dropped.
    forgotten: HashSet<JobId>,
    /// A refused message was already logged at warn level.
    warned: bool,
}

impl HubClient {
    /// Connects (ZeroMQ connects lazily: the first call finds out whether
    /// the hub is there).
    pub fn connect(ctx: &zmq::Context, connection: &ConnectionInfo) -> Result<Self, ClientError> {
        let url = connection.clients.clone();
        let key = connection.signing_key()?;
        let curve = connection.curve.clone();
        let link = open_link(ctx, &url, &key, &curve)?;
        Ok(HubClient {
            ctx: ctx.clone(),
            key,
            curve,
            link,
            generation: 1,
            limit: None,
            url,
            next_request: 1,
            timeout: DEFAULT_CALL_TIMEOUT,
            results: VecDeque::new(),
            outgoing: Outgoing::default(),
            forgotten: HashSet::new(),
            warned: false,
        })
    }

    /// Counts the connections this client has opened: a job attached on an
    /// older one must attach again to get its results here.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Replaces a closed connection with a new one, under a new identity.
    fn relink(&mut self) -> Result<(), ClientError> {
        info!(hub = %self.url, "the connection to the hub closed; connecting again");
        // Tasks not sent yet would reach the hub from a connection that
        // does not own their job: a job handle sends them again once it
        // has attached on the new one (the hub says it never had them).
        let (_, dropped) = self.outgoing.take();
        if !dropped.is_empty() {
            debug!(
                tasks = dropped.len(),
                "tasks not sent before the connection closed"
            );
        }
        self.link = open_link(&self.ctx, &self.url, &self.key, &self.curve)?;
        if let Some(limit) = self.limit {
            self.link.socket.set_limit(limit);
        }
        self.generation += 1;
        Ok(())
    }

    /// Makes sure the connection is open and the hub's epoch known, saying
    /// hello and waiting up to `timeout` for the answer if needed.
    fn ready(&mut self, timeout: Duration) -> Result<(), ClientError> {
        if self.link.closed() {
            self.relink()?;
        }
        if self.link.socket.epoch().is_some() {
            return Ok(());
        }
        self.link.socket.hello(0)?;
        let deadline = Instant::now() + timeout;
        while self.link.socket.epoch().is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.receive(left)?.is_none() {
                return Err(self.no_answer(timeout));
            }
        }
        Ok(())
    }

    /// Why nothing came within `waited`: a hub that never answered a hello
    /// although its port took the connection has another key, most likely.
    fn no_answer(&mut self, waited: Duration) -> ClientError {
        let url = self.url.clone();
        if self.link.socket.epoch().is_none() && self.link.reached() {
            ClientError::NotWelcomed { url, waited }
        } else {
            ClientError::NoAnswer { url, waited }
        }
    }

    /// Waits this long for each answer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Makes one call and waits for its reply; an error reply is
    /// [`ClientError::Refused`], or [`ClientError::NotFound`] when the call
    /// named a job or engine the hub does not have.
    pub fn call(&mut self, call: &ClientCall) -> Result<Reply, ClientError> {
        self.call_waiting(call, self.timeout)
    }

    /// Like [`call`](Self::call) with its own time limit (kill and ping wait
    /// for engines).
    pub fn call_waiting(
        &mut self,
        call: &ClientCall,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + timeout;
        self.ready(timeout)?;
        let request = self.next_request;
        self.next_request += 1;
        let header = Header {
            kind: MessageKind::Control,
            job: 0,
            id: request,
        };
        // Tasks given before the call reach the hub before it (a close
        // after its tasks).
        self.send_kept_tasks()?;
        self.link.socket.send(&header, call, 0)?;
        let mut sent_to = (self.generation, self.link.socket.epoch());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let envelope = match self.receive(left)? {
                Some(envelope) => envelope,
                None => return Err(self.no_answer(timeout)),
            };
            match envelope.header.kind {
                MessageKind::Welcome => {
                    // Said hello again (the hub restarted, or the connection
                    // was replaced): the call went to a hub start that will
                    // never answer it; send it to this one.
                    let now = (self.generation, self.link.socket.epoch());
                    if now.1.is_some() && now != sent_to {
                        self.link.socket.send(&header, call, 0)?;
                        sent_to = now;
                    }
                }
                MessageKind::Control if envelope.header.id == request => {
                    let reply = envelope.control::<Reply>()?;
                    if let Some(limit) = reply.max_message() {
                        // Tasks over it are refused here, not lost on the way.
                        self.limit = Some(limit);
                        self.link.socket.set_limit(limit);
                    }
                    return match reply {
                        Reply::Error(reason) => Err(ClientError::Refused(reason)),
                        Reply::NotFound(reason) => Err(ClientError::NotFound(reason)),
                        reply => Ok(reply),
                    };
                }
                MessageKind::Result(_) => self.keep(Delivered::alone(envelope)),
                MessageKind::TaskResults => self.keep_batch(&envelope),
                _ => debug!("dropping a stale reply"),
            }
        }
    }

    /// Keeps a result that came while waiting for something else, unless
    /// its job was forgotten.
    fn keep(&mut self, result: Delivered) {
        if !self.forgotten.contains(&result.header.job) {
            self.results.push_back(result);
        }
    }

    /// The next result message for any of this client's jobs, or `None`
    /// after `timeout`.
    pub fn next_result(&mut self, timeout: Duration) -> Result<Option<Delivered>, ClientError> {
        self.next_result_for(None, timeout)
    }

    /// Drops what is kept of job `job`'s results, and any that come later:
    /// for a job this client is done with (finished, or abandoned with
    /// tasks still running).
    pub fn forget(&mut self, job: JobId) {
        self.results.retain(|r| r.header.job != job);
        if self.forgotten.len() >= FORGOTTEN_JOBS {
            // Late results come soon after a job ends; the oldest jobs'
            // have long come (their results would just be kept again).
            if let Some(&oldest) = self.forgotten.iter().min() {
                self.forgotten.remove(&oldest);
            }
        }
        self.forgotten.insert(job);
    }

    /// The next result message of job `job`, or `None` after `timeout`.
    /// Results of this client's other jobs that arrive meanwhile are kept
    /// for them (each job's credit bounds how many; [`forget`](Self::forget)
    /// a job once done with it), not dropped.
    pub fn next_result_of(
        &mut self,
        job: JobId,
        timeout: Duration,
    ) -> Result<Option<Delivered>, ClientError> {
        self.next_result_for(Some(job), timeout)
    }

    /// The next result message of `job`, or of any job for `None`.
    fn next_result_for(
        &mut self,
        job: Option<JobId>,
        timeout: Duration,
    ) -> Result<Option<Delivered>, ClientError> {
        let wanted = |r: &Delivered| job.is_none_or(|job| r.header.job == job);
        if let Some(at) = self.results.iter().position(wanted) {
            return Ok(self.results.remove(at));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive(left)? {
                None => return Ok(None),
                Some(envelope) if matches!(envelope.header.kind, MessageKind::Result(_)) => {
                    let result = Delivered::alone(envelope);
                    if wanted(&result) {
                        return Ok(Some(result));
                    }
                    self.keep(result);
                }
                Some(envelope) if envelope.header.kind == MessageKind::TaskResults => {
                    self.keep_batch(&envelope);
                    if let Some(at) = self.results.iter().position(wanted) {
                        return Ok(self.results.remove(at));
                    }
                }
                Some(_) => debug!("dropping a stale reply"),
            }
        }
    }

    /// The next message from the hub within `timeout`. Looks after the
    /// connection meanwhile: a closed one is replaced (and says hello), and
    /// a message of another hub start means the hub restarted, so it says
    /// hello again. A `Welcome` is returned, so a caller can tell the hub
    /// start changed.
    fn receive(&mut self, timeout: Duration) -> Result<Option<Envelope>, ClientError> {
        let deadline = Instant::now() + timeout;
        // Whatever waits for an answer sends the tasks it kept first.
        if self.link.closed() {
            self.relink()?;
            self.link.socket.hello(0)?;
        }
        self.send_kept_tasks()?;
        loop {
            if self.link.closed() {
                self.relink()?;
                self.link.socket.hello(0)?;
            }
            // Woken at least every LINK_CHECK to look at the connection.
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .link
                .socket
                .socket()
                .poll(zmq::POLLIN, i64::from(millis(left.min(LINK_CHECK))))
            {
                Ok(0) if left <= LINK_CHECK => return Ok(None),
                Ok(0) => continue,
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(ClientError::Transport(e.into())),
            }
            match self.link.socket.recv(zmq::DONTWAIT) {
                Ok(envelope) => return Ok(Some(envelope)),
                Err(e) if e.is_timeout() => continue,
                Err(MessageError::Zmq(e)) => return Err(ClientError::Transport(e.into())),
                Err(MessageError::Auth(AuthError::OtherEpoch { .. })) => {
                    info!(hub = %self.url, "the hub restarted; saying hello again");
                    self.link.socket.hello(0)?;
                }
                Err(MessageError::Auth(AuthError::Superseded)) => {
                    debug!("dropping a welcome a newer hello stands for");
                }
                Err(e) if !self.warned => {
                    self.warned = true;
                    warn!(hub = %self.url, error = %e, "dropping a bad message from the hub (logged once)");
                }
                Err(e) => debug!(error = %e, "dropping a bad message from the hub"),
            }
        }
    }
}

mod backend;
mod batch;
mod calls;

pub use backend::{halt_at_hub, AttachLength, HubBackend};
pub use batch::Delivered;
pub use calls::{Killed, Pong, ENGINE_CALL_TIMEOUT};

/// How often a waiting client looks at its connection (closed, it is
/// replaced).
const LINK_CHECK: Duration = Duration::from_millis(100);

/// How long a job's client waits without any result, or without sending
/// anything, before asking the hub whether the job is live and the hub the
/// same (not restarted). The hub counts a client that asked (or sent) within
/// a few of these as attached to its job (`zcluster status`).
const QUIET_BEFORE_CHECK: Duration = Duration::from_secs(1);

/// How long such a check waits for its answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a job's client waits for a hub that does not answer at all (it
/// is being restarted, say) before giving up.
pub const HUB_PATIENCE: Duration = Duration::from_secs(60);

/// Finished tasks fetched per `Results` call.
const FETCH_PAGE: u64 = 64;

/// Task states asked for per status-only `Results` call.
const STATUS_PAGE: usize = 1024;

/// How long a job's client waits with tasks outstanding and no result for
/// any of them before it asks the store whether some finished anyway (their
/// results lost on the way; see [`JobHandle::reconcile`]).
const RECONCILE_AFTER: Duration = Duration::from_secs(10);

/// One job as its client sees it: the tasks sent and not answered, and what
/// it takes to carry on when the hub restarts.
///
/// Results come back at least once; a `JobHandle` hands each task's result
/// out exactly once (by task id). When no result has come for a while it
/// asks the hub about the job; if the hub restarted (another epoch) or no
/// longer runs the job, it reattaches: it sends again the tasks the hub never
/// recorded and fetches from the store the ones that finished meanwhile.
pub struct JobHandle {
    job: JobId,
    epoch: u64,
    credit: usize,
    /// Sent, no result yet: the request, kept to send again should a
    /// restarted hub not have recorded it (`None`: a task the hub had before
    /// this client attached).
    outstanding: IdMap<u64, Option<ClusterRequest>>,
    /// Results fetched from the store, to hand out first.
    ready: VecDeque<ClusterResult>,
    /// Stored reports fetched ahead by [`expect`](Self::expect).
    fetched: BTreeMap<u64, TaskReport>,
    /// Live results of tasks the store held that arrived before their
    /// `expect` (the store said they were running when their page was
    /// fetched): kept for it. At most the job's unfinished tasks.
    early: IdMap<u64, ClusterResult>,
    /// The next id [`expect`](Self::expect) will be called with (they come
    /// in order).
    next_expected: u64,
    /// Tasks the store held when this client attached.
    known: u64,
    last_heard: Instant,
    /// When this client last sent the hub anything about the job: it says
    /// something at least every [`QUIET_BEFORE_CHECK`] while it waits, so
    /// the hub knows it still follows the job.
    last_spoke: Instant,
    silent_since: Option<Instant>,
    /// When a result of an outstanding task last came, or the store was
    /// last asked for the ones that did not (see [`RECONCILE_AFTER`]).
    last_progress: Instant,
    /// The client's connection the job was last attached on: on a newer
    /// one, the hub still sends its results to the old, so it reattaches.
    generation: u64,
}

/// How the hub runs a job's tasks (the defaults: no retries, no halt rule,
/// as many at once as there are free slots, one core each).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobOptions {
    /// Run a failed task up to this many more times, on another engine when
    /// there is one.
    pub retries: u32,
    /// Stop dispatching the job once the rule is met (and never prefetch
    /// its tasks).
    pub halt: Option<HaltAt>,
    /// Most of its tasks running at once across the cluster.
    pub cap: Option<u32>,
    /// What each task needs (cores, GPUs, memory, named resources): it runs
    /// only where all of it is free. `None`: one core.
    pub request: Option<ResourceRequest>,
}

impl JobHandle {
    /// Opens a new job running `kind`, shown as `description`, under the
    /// rules of `options`.
    pub fn open(
        client: &mut HubClient,
        kind: JobKind,
        description: String,
        options: JobOptions,
    ) -> Result<Self, ClientError> {
        let call = ClientCall::OpenJob {
            kind,
            description,
            retries: options.retries,
            halt: options.halt,
            cap: options.cap,
            request: options.request,
        };
        match client.call(&call)? {
            Reply::JobOpened {
                job, credit, epoch, ..
            } => Ok(Self::new(job, epoch, credit, 0, client.generation())),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Takes over a job whose client is gone (or that finished): what the
    /// store holds of it is fetched by [`expect`](Self::expect).
    pub fn attach(client: &mut HubClient, job: JobId) -> Result<(Self, AttachInfo), ClientError> {
        let call = ClientCall::Attach {
            job,
            outstanding: None,
        };
        match client.call(&call)? {
            Reply::Attached(info) => {
                let handle = Self::new(
                    job,
                    info.epoch,
                    info.credit,
                    info.known,
                    client.generation(),
                );
                Ok((handle, info))
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    fn new(job: JobId, epoch: u64, credit: u32, known: u64, generation: u64) -> Self {
        JobHandle {
            job,
            epoch,
            credit: credit.max(1) as usize,
            outstanding: IdMap::default(),
            ready: VecDeque::new(),
            fetched: BTreeMap::new(),
            early: IdMap::default(),
            next_expected: 0,
            known,
            last_heard: Instant::now(),
            last_spoke: Instant::now(),
            silent_since: None,
            last_progress: Instant::now(),
            generation,
        }
    }

    /// The job's id in the hub's store.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// Tasks that may be outstanding at once.
    pub fn credit(&self) -> usize {
        self.credit
    }

    /// Tasks the store held when this client attached (0 for a new job).
    pub fn known(&self) -> u64 {
        self.known
    }

    /// Tasks sent (or expected) and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len() + self.ready.len()
    }

    /// Sends a task.
    pub fn send(
        &mut self,
        client: &mut HubClient,
        request: ClusterRequest,
    ) -> Result<(), ClientError> {
        client.send_task(self.job, &request)?;
        self.last_spoke = Instant::now();
        self.outstanding.insert(request.id, Some(request));
        Ok(())
    }

    /// Takes on a task the store already holds (`id < known()`): its result
    /// is handed out by [`next_result`](Self::next_result), from the store
    /// if it finished. Returns its recorded request body, so the caller can
    /// check it is the task it means.
    pub fn expect(&mut self, client: &mut HubClient, id: u64) -> Result<Vec<u8>, ClientError> {
        self.next_expected = self.next_expected.max(id + 1);
        if !self.fetched.contains_key(&id) {
            let ids: Vec<u64> = (id..self.known.min(id + FETCH_PAGE)).collect();
            let reports = self.fetch(client, ids, false)?;
            self.fetched.extend(reports);
        }
        let Some(report) = self.fetched.remove(&id) else {
            return Err(ClientError::Unexpected(format!(
                "task {id} of job {} is not in the store",
                self.job
            )));
        };
        let request = report.request.clone().unwrap_or_default();
        if let Some(result) = self.early.remove(&id) {
            // Finished after its page was fetched, and already here.
            self.ready.push_back(result);
        } else if report.finished() {
            self.ready.push_back(report.into_result());
        } else {
            self.outstanding.insert(id, None);
        }
        Ok(request)
    }

    /// The next result of this job, each task's once, or `None` after
    /// `timeout`.
    pub fn next_result(
        &mut self,
        client: &mut HubClient,
        timeout: Duration,
    ) -> Result<Option<ClusterResult>, ClientError> {
        if let Some(result) = self.ready.pop_front() {
            return Ok(Some(result));
        }
        let deadline = Instant::now() + timeout;
        let mut waited = false;
        loop {
            if client.generation() != self.generation {
                self.reattach(client)?;
                if let Some(result) = self.ready.pop_front() {
                    return Ok(Some(result));
                }
            }
            // Nothing heard, or nothing said, for a while: ask. Results that
            // stream in after the last task was sent keep the first quiet,
            // so the second is what tells the hub this client still follows
            // the job.
            if self.last_heard.elapsed() > QUIET_BEFORE_CHECK
                || self.last_spoke.elapsed() > QUIET_BEFORE_CHECK
            {
                self.check(client)?;
                if let Some(result) = self.ready.pop_front() {
                    return Ok(Some(result));
                }
            }
            let now = Instant::now();
            if waited && now >= deadline {
                return Ok(None);
            }
            // Waits in slices, so a long timeout does not keep it silent.
            let left = deadline
                .saturating_duration_since(now)
                .min(QUIET_BEFORE_CHECK);
            let Some(envelope) = client.next_result_of(self.job, left)? else {
                waited = true;
                continue;
            };
            let result = envelope.result()?;
            self.last_heard = Instant::now();
            if self.outstanding.remove(&result.id).is_some() {
                self.last_progress = Instant::now();
                return Ok(Some(result));
            }
            if result.id >= self.next_expected && result.id < self.known {
                // A stored task not taken on yet: its `expect` will want it.
                self.early.entry(result.id).or_insert(result);
                continue;
            }
            // A duplicate (a task run again after a restart): the first won.
            debug!(
                job = self.job,
                task = result.id,
                "dropping a duplicate result"
            );
        }
    }

    /// Asks whether the job is live under the same hub start; reattaches if
    /// not. A hub that does not answer is waited for up to [`HUB_PATIENCE`].
    fn check(&mut self, client: &mut HubClient) -> Result<(), ClientError> {
        if client.generation() != self.generation {
            // Not this client's job any more as far as the hub knows: it is
            // bound to the old connection.
            return self.reattach(client);
        }
        let answer = client.call_waiting(&ClientCall::CheckJob { job: self.job }, CHECK_TIMEOUT);
        self.last_heard = Instant::now();
        self.last_spoke = self.last_heard;
        match answer {
            Ok(Reply::JobLive { epoch, yours: true }) if epoch == self.epoch => {
                self.silent_since = None;
                if !self.outstanding.is_empty() && self.last_progress.elapsed() > RECONCILE_AFTER {
                    self.reconcile(client)?;
                }
                Ok(())
            }
            Ok(Reply::JobLive {
                epoch,
                yours: false,
            }) if epoch == self.epoch => Err(ClientError::Refused(format!(
                "job {} was attached by another client",
                self.job
            ))),
            // The hub restarted, or finished the job while this client was
            // away: take it (back) and catch up.
            Ok(_) | Err(ClientError::Refused(_)) => {
                self.silent_since = None;
                self.reattach(client)
            }
            // Not welcomed: it was the hub a moment ago, so it is stuck or
            // restarting, not another key.
            Err(ClientError::NoAnswer { url, .. } | ClientError::NotWelcomed { url, .. }) => {
                let since = *self.silent_since.get_or_insert_with(Instant::now);
                if since.elapsed() > HUB_PATIENCE {
                    return Err(ClientError::NoAnswer {
                        url,
                        waited: since.elapsed(),
                    });
                }
                warn!(hub = %url, "the hub does not answer; waiting for it");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Asks the store which outstanding tasks finished and takes their
    /// results from it: a result the hub could not deliver (this client's
    /// connection was down at that moment, say) is in the store, and without
    /// this the job would wait for it for ever while the hub stays up.
    fn reconcile(&mut self, client: &mut HubClient) -> Result<(), ClientError> {
        self.last_progress = Instant::now();
        let mut ids: Vec<u64> = self.outstanding.keys().copied().collect();
        ids.sort_unstable();
        let mut finished = Vec::new();
        for page in ids.chunks(STATUS_PAGE) {
            let reports = self.fetch(client, page.to_vec(), true)?;
            finished.extend(
                reports
                    .into_iter()
                    .filter(|(_, r)| r.finished())
                    .map(|(id, _)| id),
            );
        }
        let mut recovered = 0;
        for page in finished.chunks(FETCH_PAGE as usize) {
            for (id, report) in self.fetch(client, page.to_vec(), false)? {
                if self.outstanding.remove(&id).is_some() {
                    self.ready.push_back(report.into_result());
                    recovered += 1;
                }
            }
        }
        if recovered > 0 {
            warn!(
                job = self.job,
                recovered, "took from the store results the hub finished but never delivered"
            );
        }
        Ok(())
    }

    fn reattach(&mut self, client: &mut HubClient) -> Result<(), ClientError> {
        let mut ids: Vec<u64> = self.outstanding.keys().copied().collect();
        ids.sort_unstable();
        let call = ClientCall::Attach {
            job: self.job,
            outstanding: Some(ids),
        };
        let info = match client.call(&call)? {
            Reply::Attached(info) => info,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        info!(
            job = self.job,
            resent = info.missing.len(),
            fetched = info.finished.len(),
            "reattached to the job (the hub restarted, or this client connected again)"
        );
        self.epoch = info.epoch;
        self.generation = client.generation();
        for id in &info.missing {
            match self.outstanding.get(id) {
                Some(Some(request)) => client.send_task(self.job, request)?,
                _ => {
                    return Err(ClientError::Unexpected(format!(
                        "the hub lost task {id} of job {}, which this client cannot send again",
                        self.job
                    )))
                }
            }
        }
        for page in info.finished.chunks(FETCH_PAGE as usize) {
            for (id, report) in self.fetch(client, page.to_vec(), false)? {
                if self.outstanding.remove(&id).is_some() {
                    self.ready.push_back(report.into_result());
                }
            }
        }
        Ok(())
    }

    fn fetch(
        &self,
        client: &mut HubClient,
        ids: Vec<u64>,
        status_only: bool,
    ) -> Result<Vec<(u64, TaskReport)>, ClientError> {
        let reports = client.results_of(self.job, ids, status_only)?;
        Ok(reports.into_iter().map(|r| (r.id, r)).collect())
    }

    /// Drops the job's queued tasks (and kills its running ones when asked);
    /// returns the ids dropped before they started.
    pub fn cancel(&mut self, client: &mut HubClient, kill_running: bool) -> Vec<u64> {
        match client.cancel_job(self.job, kill_running) {
            Ok(dropped) => {
                for id in &dropped {
                    self.outstanding.remove(id);
                }
                dropped
            }
            Err(e) => {
                debug!(error = %e, "cannot cancel the job");
                Vec::new()
            }
        }
    }

    /// Tells the hub the job has `total` tasks, so it can retire it. An
    /// error means the hub did not record it (it cannot write its store,
    /// say): the job is not finished in the store, and the caller must say so.
    pub fn close(&mut self, client: &mut HubClient, total: u64) -> Result<(), ClientError> {
        client.call(&self.close_call(total)).map(|_| ())
    }

    /// Like [`close`](Self::close), waiting up to `timeout` for the answer:
    /// for a caller that reports the outcome, and would rather wait out a
    /// busy hub than call a finished job unfinished.
    pub fn close_waiting(
        &mut self,
        client: &mut HubClient,
        total: u64,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        client
            .call_waiting(&self.close_call(total), timeout)
            .map(|_| ())
    }

    fn close_call(&self, total: u64) -> ClientCall {
        ClientCall::CloseJob {
            job: self.job,
            total: total.max(self.known),
        }
    }
}
