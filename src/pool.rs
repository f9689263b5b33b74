//! Typed map, imap, imap_unordered and map_reduce over a cluster: glimpse's
//! ClusterPool for Rust functions compiled into worker binaries.
//!
//! Workers register named handlers in a [`Registry`]; a client's [`Pool`]
//! names the handler and streams any serde inputs to it, over a lab's hub
//! ([`Pool::connect`]) or a hub and engine inside this process
//! ([`Pool::local`]) — the same code path either way.
//!
//! ```
//! use zcluster::pool::{Pool, Registry};
//!
//! let registry = Registry::new()
//!     .handler("square", |n: u64| Ok::<_, String>(n * n))
//!     .reducer("sum", |a: u64, b: u64| a + b);
//! let mut pool = Pool::local(2, registry)?;
//! let squares: Vec<u64> = pool.map("square", 1..=10u64)?;
//! assert_eq!(squares, [1, 4, 9, 16, 25, 36, 49, 64, 81, 100]);
//! let total: Option<u64> = pool.map_reduce("square", "sum", 1..=10u64)?;
//! assert_eq!(total, Some(385));
//! # Ok::<(), zcluster::pool::PoolError>(())
//! ```
//!
//! Inputs travel in chunks of [`Pool::chunksize`] per request; a handler's
//! error or panic on one input is that input's [`TaskError`] (which input,
//! which host, pid and worker, the message), and the rest of its chunk goes
//! on. `map` stops at the first error; [`Pool::map_all`] collects them.
//! With `map_reduce`, each worker folds its chunk's outputs with the reducer
//! (a combiner) and the partial results are folded by one last task, so a
//! sum over ten million inputs never ships ten million values.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::hub::client::{ClientError, HubClient, JobHandle, JobOptions};
use crate::hub::connection::{ConnectionError, ConnectionInfo};
use crate::hub::embedded::{EmbeddedCluster, EmbeddedError};
use crate::hub::engine::{
    run_engine, EngineError, EngineOptions, EngineStop, HandlerFn, DEFAULT_MISSES, HANDLER_KEY,
};
use crate::hub::protocol::JobKind;
use crate::message::{
    decode_value, encode_value, ClusterRequest, ClusterResult, MessageError, ResultStatus,
};
use crate::resources::{ResourceOffer, ResourceRequest};
use crate::worker::{panic_message, HandlerError, WorkerExit};

/// Request metadata key naming the reducer a map chunk is folded with on
/// the worker (map_reduce's combiner).
pub const REDUCE_KEY: &str = "zcluster.reduce";

/// Default inputs per request.
pub const DEFAULT_CHUNKSIZE: usize = 64;

/// Errors that stop a pool call.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A local cluster could not start.
    #[error(transparent)]
    Start(#[from] EmbeddedError),
    /// The connection file could not be read.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The hub could not be reached, or refused (e.g. an unknown handler).
    #[error(transparent)]
    Hub(#[from] ClientError),
    /// An input or output could not be encoded or decoded.
    #[error("cannot {what}: {source}")]
    Codec {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: MessageError,
    },
    /// A handler failed on an input (with `map`, which stops at the first).
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// A handler's failure on one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The input's position (0-based) in the call's inputs.
    pub index: u64,
    /// The handler's error or panic message.
    pub message: String,
    /// Host of the worker.
    pub host: String,
    /// Process id of the worker.
    pub pid: u32,
    /// The worker's name.
    pub worker: String,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "input {} failed on {} (pid {}, {}): {}",
            self.index, self.host, self.pid, self.worker, self.message
        )
    }
}

impl std::error::Error for TaskError {}

/// What a map handler returns for one chunk: the successful outputs,
/// bincode of `Vec<Out>` (so a reducer can take them without knowing their
/// type), their positions in the chunk, and the failures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ChunkOutput {
    #[serde(with = "serde_bytes")]
    values: Vec<u8>,
    ok: Vec<u32>,
    errors: Vec<(u32, String)>,
}

type ReduceFn = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

type MapFn = Arc<dyn Fn(&[u8]) -> Result<ChunkOutput, String> + Send + Sync>;

/// Named handlers and reducers compiled into a worker binary.
#[derive(Clone, Default)]
pub struct Registry {
    maps: BTreeMap<String, MapFn>,
    reducers: BTreeMap<String, ReduceFn>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `f` under `name`: each input is decoded as `In`, each
    /// output encoded from `Out`; an error or a panic fails that input only.
    pub fn handler<In, Out, E, F>(mut self, name: &str, f: F) -> Self
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        E: fmt::Display + 'static,
        F: Fn(In) -> Result<Out, E> + Send + Sync + 'static,
    {
        let run: MapFn = Arc::new(move |payload: &[u8]| {
            let inputs: Vec<In> = decode_value(payload, "inputs").map_err(|e| e.to_string())?;
            let mut outputs: Vec<Out> = Vec::with_capacity(inputs.len());
            let mut out = ChunkOutput::default();
            for (i, input) in inputs.into_iter().enumerate() {
                let i = i as u32;
                match catch_unwind(AssertUnwindSafe(|| f(input))) {
                    Ok(Ok(output)) => {
                        outputs.push(output);
                        out.ok.push(i);
                    }
                    Ok(Err(e)) => out.errors.push((i, e.to_string())),
                    Err(panic) => out
                        .errors
                        .push((i, format!("handler panicked: {}", panic_message(&panic)))),
                }
            }
            out.values = encode_value(&outputs, "outputs").map_err(|e| e.to_string())?;
            Ok(out)
        });
        self.maps.insert(name.to_string(), run);
        self
    }

    /// Registers an associative `f` under `name` for `map_reduce`.
    pub fn reducer<T, F>(mut self, name: &str, f: F) -> Self
    where
        T: Serialize + DeserializeOwned + 'static,
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        let run: ReduceFn = Arc::new(move |payload: &[u8]| {
            let values: Vec<T> = decode_value(payload, "values").map_err(|e| e.to_string())?;
            let folded: Vec<T> = values.into_iter().reduce(&f).into_iter().collect();
            encode_value(&folded, "reduced").map_err(|e| e.to_string())
        });
        self.reducers.insert(name.to_string(), run);
        self
    }

    /// The handlers as an engine runs them: map handlers (combined with a
    /// reducer when the request names one) and reducers (over a list of
    /// partial results).
    pub fn engine_handlers(&self) -> BTreeMap<String, HandlerFn> {
        let mut handlers: BTreeMap<String, HandlerFn> = BTreeMap::new();
        for (name, map) in &self.maps {
            let map = map.clone();
            let reducers = self.reducers.clone();
            let handler: HandlerFn = Arc::new(move |request: &ClusterRequest| {
                let mut out = map(&request.payload).map_err(HandlerError::new)?;
                if let Some(reducer) = request.metadata.get(REDUCE_KEY) {
                    let reduce = reducers.get(reducer).ok_or_else(|| {
                        HandlerError::new(format!("this engine has no reducer `{reducer}`"))
                    })?;
                    out.values = reduce(&out.values).map_err(HandlerError::new)?;
                }
                encode_value(&out, "chunk output").map_err(HandlerError::new)
            });
            handlers.insert(name.clone(), handler);
        }
        for (name, reduce) in &self.reducers {
            let reduce = reduce.clone();
            let handler: HandlerFn = Arc::new(move |request: &ClusterRequest| {
                let values = reduce(&request.payload).map_err(HandlerError::new)?;
                let out = ChunkOutput {
                    values,
                    ok: Vec::new(),
                    errors: Vec::new(),
                };
                encode_value(&out, "reduced").map_err(HandlerError::new)
            });
            handlers.insert(name.clone(), handler);
        }
        handlers
    }

    /// Serves a hub as an engine with `slots` slots running these handlers
    /// (the body of a worker binary's main), until killed or restarted.
    pub fn serve(&self, connection_file: &Path, slots: usize) -> Result<WorkerExit, PoolError> {
        self.serve_offering(connection_file, ResourceOffer::cpus_only(slots as u32))
    }

    /// [`serve`](Self::serve), offering the hub's scheduler `offer` (its
    /// cores are the slots; GPUs, memory, named resources): a pool's job
    /// with a request (see [`Pool::resources`]) runs here only where all of
    /// it is free.
    pub fn serve_offering(
        &self,
        connection_file: &Path,
        offer: ResourceOffer,
    ) -> Result<WorkerExit, PoolError> {
        let connection = ConnectionInfo::read(connection_file)?;
        let stop = EngineStop::new();
        let options = EngineOptions {
            connection,
            slots: offer.cpus.max(1) as usize,
            misses: DEFAULT_MISSES,
            handlers: self.engine_handlers(),
            origin: None,
            end_at: None,
            resources: Some(offer),
            pin: false,
        };
        match run_engine(&zmq::Context::new(), &options, &stop) {
            Ok(exit) => Ok(exit),
            Err(EngineError::Stopped) => Ok(WorkerExit::Killed),
            Err(e) => Err(PoolError::Hub(ClientError::Refused(e.to_string()))),
        }
    }
}

/// Inputs handled and time spent by one worker process in the last call
/// (glimpse's cluster_stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Inputs it handled.
    pub count: u64,
    /// Mean handler time per input.
    pub mean_time: Duration,
}

/// A client of a cluster's named handlers; see the module docs.
pub struct Pool {
    client: HubClient,
    chunksize: usize,
    stats: HashMap<(String, u32), (u64, Duration)>,
    /// Kept alive for a local pool; dropped after the client.
    _cluster: Option<EmbeddedCluster>,
    /// What each request of the next calls asks for (see
    /// [`resources`](Self::resources)).
    request: Option<ResourceRequest>,
}

impl Pool {
    /// A pool over a hub and an engine with `slots` slots running
    /// `registry`, all inside this process.
    pub fn local(slots: usize, registry: Registry) -> Result<Self, PoolError> {
        let cluster = EmbeddedCluster::with(slots, ":memory:", registry.engine_handlers())?;
        let client = cluster.client()?;
        Ok(Pool {
            client,
            chunksize: DEFAULT_CHUNKSIZE,
            stats: HashMap::new(),
            _cluster: Some(cluster),
            request: None,
        })
    }

    /// A pool over the hub of this connection file; its engines are worker
    /// binaries serving a [`Registry`].
    pub fn connect(connection_file: &Path) -> Result<Self, PoolError> {
        let connection = ConnectionInfo::read(connection_file)?;
        let client = HubClient::connect(&zmq::Context::new(), &connection)?;
        Ok(Pool {
            client,
            chunksize: DEFAULT_CHUNKSIZE,
            stats: HashMap::new(),
            _cluster: None,
            request: None,
        })
    }

    /// Sets the inputs per request (default [`DEFAULT_CHUNKSIZE`]); larger
    /// chunks amortise the per-request cost of tiny tasks, smaller ones
    /// balance long tasks better.
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        self.chunksize = chunksize.max(1);
        self
    }

    /// What each request (a chunk of inputs) of the calls from now on asks
    /// for (`None`: one core): it runs only on an engine where all of it is
    /// free, and a request no engine can ever meet fails the call at once.
    pub fn resources(mut self, request: Option<ResourceRequest>) -> Self {
        self.request = request;
        self
    }

    /// [`resources`](Self::resources) between calls.
    pub fn set_resources(&mut self, request: Option<ResourceRequest>) {
        self.request = request;
    }

    /// Per worker process: inputs handled and mean time, over the last call.
    pub fn stats(&self) -> Vec<WorkerStats> {
        let mut stats: Vec<WorkerStats> = self
            .stats
            .iter()
            .map(|((host, pid), (count, busy))| WorkerStats {
                host: host.clone(),
                pid: *pid,
                count: *count,
                mean_time: u32::try_from(*count)
                    .ok()
                    .filter(|n| *n > 0)
                    .map_or(Duration::ZERO, |n| *busy / n),
            })
            .collect();
        stats.sort_by(|a, b| (&a.host, a.pid).cmp(&(&b.host, b.pid)));
        stats
    }

    /// Runs `handler` on every input; outputs in input order. Stops at the
    /// first failed input.
    pub fn map<In, Out>(
        &mut self,
        handler: &str,
        inputs: impl IntoIterator<Item = In>,
    ) -> Result<Vec<Out>, PoolError>
    where
        In: Serialize,
        Out: DeserializeOwned,
    {
        let mut outputs = Vec::new();
        for output in self.imap(handler, inputs)? {
            outputs.push(output??);
        }
        Ok(outputs)
    }

    /// Like [`map`](Self::map), collecting every input's output or error.
    pub fn map_all<In, Out>(
        &mut self,
        handler: &str,
        inputs: impl IntoIterator<Item = In>,
    ) -> Result<Vec<Result<Out, TaskError>>, PoolError>
    where
        In: Serialize,
        Out: DeserializeOwned,
    {
        self.imap(handler, inputs)?.collect()
    }

    /// Outputs lazily, in input order, with bounded memory and bounded work
    /// in flight (the hub's credit, in chunks).
    pub fn imap<'p, In, Out, I>(
        &'p mut self,
        handler: &str,
        inputs: I,
    ) -> Result<Imap<'p, I::IntoIter, Out>, PoolError>
    where
        In: Serialize,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
    {
        let run = Run::open(self, handler, inputs.into_iter(), None)?;
        Ok(Imap {
            run,
            next: 0,
            held: BTreeMap::new(),
            ordered: true,
            out: PhantomData,
        })
    }

    /// Outputs as they finish, each with its input's index.
    pub fn imap_unordered<'p, In, Out, I>(
        &'p mut self,
        handler: &str,
        inputs: I,
    ) -> Result<ImapUnordered<'p, I::IntoIter, Out>, PoolError>
    where
        In: Serialize,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
    {
        let run = Run::open(self, handler, inputs.into_iter(), None)?;
        Ok(ImapUnordered {
            inner: Imap {
                run,
                next: 0,
                held: BTreeMap::new(),
                ordered: false,
                out: PhantomData,
            },
        })
    }

    /// Maps with `handler` and folds the outputs with `reducer`: each worker
    /// folds its own chunk (the combiner), and one last task folds the
    /// partial results, in input order: the reducer need only be
    /// associative. `None` for no inputs. Stops at the first failed input.
    pub fn map_reduce<In, Out>(
        &mut self,
        handler: &str,
        reducer: &str,
        inputs: impl IntoIterator<Item = In>,
    ) -> Result<Option<Out>, PoolError>
    where
        In: Serialize,
        Out: Serialize + DeserializeOwned,
    {
        // By the chunk's first input: the reducer need only be associative,
        // so the partial results are folded in input order.
        let mut partials: BTreeMap<u64, Vec<Out>> = BTreeMap::new();
        let mut run = Run::open(self, handler, inputs.into_iter(), Some(reducer))?;
        while let Some(mut chunk) = run.next_chunk()? {
            if !chunk.errors.is_empty() {
                return Err(chunk.errors.swap_remove(0).into());
            }
            partials.insert(chunk.first, chunk.values_as::<Out>()?);
        }
        drop(run);
        let mut partials: Vec<Out> = partials.into_values().flatten().collect();
        if partials.len() <= 1 {
            return Ok(partials.pop());
        }
        // One last task folds the partials with the same reducer; the stats
        // stay those of the mapped inputs.
        let stats = std::mem::take(&mut self.stats);
        let mut run = Run::open(self, reducer, std::iter::empty::<()>(), None)?;
        let folded = run.single(&partials)?;
        drop(run);
        self.stats = stats;
        Ok(folded.values_as::<Out>()?.pop())
    }
}

/// A chunk's decoded answer.
struct Answer {
    /// Index of the chunk's first input.
    first: u64,
    values: Vec<u8>,
    ok: Vec<u32>,
    errors: Vec<TaskError>,
}

impl Answer {
    fn values_as<Out: DeserializeOwned>(&self) -> Result<Vec<Out>, PoolError> {
        decode_value(&self.values, "outputs").map_err(|source| PoolError::Codec {
            what: "decode outputs",
            source,
        })
    }
}

/// One call's job on the hub: sends chunks within the credit, receives
/// answers.
struct Run<'p, I> {
    pool: &'p mut Pool,
    job: JobHandle,
    handler: String,
    reducer: Option<String>,
    inputs: std::iter::Fuse<I>,
    credit: usize,
    chunks_sent: u64,
    inputs_sent: u64,
    /// Chunks sent and not answered: their first input and length.
    outstanding: HashMap<u64, (u64, u64)>,
    /// For an ordered imap, the first input not yet handed out: no more
    /// than the credit of chunks is sent past it, however many answered
    /// chunks wait behind a slow one.
    floor: Option<u64>,
}

impl<'p, I, In> Run<'p, I>
where
    I: Iterator<Item = In>,
    In: Serialize,
{
    fn open(
        pool: &'p mut Pool,
        handler: &str,
        inputs: I,
        reducer: Option<&str>,
    ) -> Result<Self, PoolError> {
        pool.stats.clear();
        let job = JobHandle::open(
            &mut pool.client,
            JobKind::Handler(handler.to_string()),
            format!("{handler} (pool)"),
            JobOptions {
                request: pool.request.clone(),
                ..JobOptions::default()
            },
        )?;
        let credit = job.credit();
        Ok(Run {
            pool,
            job,
            handler: handler.to_string(),
            reducer: reducer.map(str::to_string),
            inputs: inputs.fuse(),
            credit,
            chunks_sent: 0,
            inputs_sent: 0,
            outstanding: HashMap::new(),
            floor: None,
        })
    }

    fn request(&self, id: u64, payload: Vec<u8>) -> ClusterRequest {
        let mut request =
            ClusterRequest::new(id, payload).with_metadata(HANDLER_KEY, self.handler.clone());
        if let Some(reducer) = &self.reducer {
            request = request.with_metadata(crate::pool::REDUCE_KEY, reducer.clone());
        }
        request
    }

    /// Sends chunks while there is credit and input.
    fn fill(&mut self) -> Result<(), PoolError> {
        while self.in_flight() < self.credit {
            let chunk: Vec<In> = self.inputs.by_ref().take(self.pool.chunksize).collect();
            if chunk.is_empty() {
                break;
            }
            let payload = encode_value(&chunk, "inputs").map_err(|source| PoolError::Codec {
                what: "encode inputs",
                source,
            })?;
            let id = self.chunks_sent;
            let request = self.request(id, payload);
            self.job.send(&mut self.pool.client, request)?;
            self.outstanding
                .insert(id, (self.inputs_sent, chunk.len() as u64));
            self.chunks_sent += 1;
            self.inputs_sent += chunk.len() as u64;
        }
        Ok(())
    }

    /// The next answered chunk (any order), or `None` when all are in.
    fn next_chunk(&mut self) -> Result<Option<Answer>, PoolError> {
        self.fill()?;
        loop {
            if self.outstanding.is_empty() {
                return Ok(None);
            }
            let Some(result) = self
                .job
                .next_result(&mut self.pool.client, Duration::from_millis(200))?
            else {
                continue;
            };
            let Some((first, len)) = self.outstanding.remove(&result.id) else {
                continue; // a duplicate after a requeue: the first won
            };
            let answer = self.answer(first, len, result)?;
            self.fill()?;
            return Ok(Some(answer));
        }
    }

    /// Sends one request whose payload is `value` and waits for its answer.
    fn single<T: Serialize>(&mut self, value: &T) -> Result<Answer, PoolError> {
        let payload = encode_value(value, "values").map_err(|source| PoolError::Codec {
            what: "encode values",
            source,
        })?;
        let request = self.request(0, payload);
        self.job.send(&mut self.pool.client, request)?;
        self.outstanding.insert(0, (0, 1));
        self.chunks_sent = 1;
        self.next_chunk()?.ok_or_else(|| {
            PoolError::Hub(ClientError::Unexpected(
                "no answer to the final reduce".into(),
            ))
        })
    }

    /// Chunks sent whose inputs are not all handed out (ordered imap) or
    /// not answered (otherwise).
    fn in_flight(&self) -> usize {
        match self.floor {
            Some(next) => {
                let oldest = next / self.pool.chunksize as u64;
                self.chunks_sent.saturating_sub(oldest) as usize
            }
            None => self.outstanding.len(),
        }
    }

    fn answer(&mut self, first: u64, len: u64, result: ClusterResult) -> Result<Answer, PoolError> {
        let m = &result.metadata;
        let error = |index: u64, message: String| TaskError {
            index,
            message,
            host: m.host.clone(),
            pid: m.pid,
            worker: m.worker.clone(),
        };
        let output: ChunkOutput = match result.status {
            ResultStatus::Ok => {
                decode_value(&result.payload, "chunk output").map_err(|source| {
                    PoolError::Codec {
                        what: "decode a chunk's output",
                        source,
                    }
                })?
            }
            // The whole chunk failed (bad inputs, unknown handler): every
            // input of it fails with that message.
            ResultStatus::Fail => {
                let message = result
                    .exception
                    .clone()
                    .unwrap_or_else(|| "unknown failure".into());
                return Ok(Answer {
                    first,
                    values: encode_value(&Vec::<()>::new(), "none").unwrap_or_default(),
                    ok: Vec::new(),
                    errors: (first..first + len.max(1))
                        .map(|index| error(index, message.clone()))
                        .collect(),
                });
            }
        };
        let handled = (output.ok.len() + output.errors.len()) as u64;
        let entry = self.pool.stats.entry((m.host.clone(), m.pid)).or_default();
        entry.0 += handled.max(1);
        entry.1 += m.elapsed;
        Ok(Answer {
            first,
            errors: output
                .errors
                .into_iter()
                .map(|(i, message)| error(first + u64::from(i), message))
                .collect(),
            values: output.values,
            ok: output.ok,
        })
    }
}

impl<I> Drop for Run<'_, I> {
    /// Closes the job; one dropped with chunks unanswered (an abandoned
    /// imap, a map stopped by an error) is cancelled first, so its queued
    /// chunks do not go on taking the cluster's slots.
    fn drop(&mut self) {
        if !self.outstanding.is_empty() {
            self.job.cancel(&mut self.pool.client, false);
        }
        if let Err(e) = self.job.close(&mut self.pool.client, self.chunks_sent) {
            // Its results came (or the error that ended the call did); the
            // hub could not record the job's end, so it stays unfinished.
            tracing::warn!(job = self.job.job(), error = %e, "cannot close the job");
        }
        self.pool.client.forget(self.job.job());
    }
}

/// One input's outcome with its index, or an error that ends the call.
type Indexed<Out> = Result<(u64, Result<Out, TaskError>), PoolError>;

/// Iterator returned by [`Pool::imap`].
pub struct Imap<'p, I, Out> {
    run: Run<'p, I>,
    next: u64,
    held: BTreeMap<u64, Result<Out, TaskError>>,
    ordered: bool,
    out: PhantomData<fn() -> Out>,
}

impl<I, In, Out> Imap<'_, I, Out>
where
    I: Iterator<Item = In>,
    In: Serialize,
    Out: DeserializeOwned,
{
    /// Decodes one chunk's answer into per-input results, held by index.
    fn take(&mut self, answer: Answer) -> Result<(), PoolError> {
        let values: Vec<Out> = answer.values_as()?;
        for (i, value) in answer.ok.into_iter().zip(values) {
            self.held.insert(answer.first + u64::from(i), Ok(value));
        }
        for error in answer.errors {
            self.held.insert(error.index, Err(error));
        }
        Ok(())
    }

    fn step(&mut self) -> Option<Indexed<Out>> {
        loop {
            let ready = if self.ordered {
                self.held.remove(&self.next).map(|r| (self.next, r))
            } else {
                self.held.pop_first()
            };
            if let Some((index, result)) = ready {
                self.next = index + 1;
                return Some(Ok((index, result)));
            }
            if self.ordered {
                self.run.floor = Some(self.next);
            }
            match self.run.next_chunk() {
                Ok(Some(answer)) => {
                    if let Err(e) = self.take(answer) {
                        return Some(Err(e));
                    }
                }
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl<I, In, Out> Iterator for Imap<'_, I, Out>
where
    I: Iterator<Item = In>,
    In: Serialize,
    Out: DeserializeOwned,
{
    type Item = Result<Result<Out, TaskError>, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().map(|r| r.map(|(_, result)| result))
    }
}

/// Iterator returned by [`Pool::imap_unordered`]: `(index, output)` as they
/// finish.
pub struct ImapUnordered<'p, I, Out> {
    inner: Imap<'p, I, Out>,
}

impl<I, In, Out> Iterator for ImapUnordered<'_, I, Out>
where
    I: Iterator<Item = In>,
    In: Serialize,
    Out: DeserializeOwned,
{
    type Item = Indexed<Out>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.step()
    }
}
