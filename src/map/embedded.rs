//! The embedded backend: `-j N` workers inside this process, over the
//! toolkit, with nothing to set up.
//!
//! Each worker slot is a toolkit [`Worker`] on its own thread with its own
//! [`Ventilator`] (PUSH, inproc), and all results come back to one [`Sink`].
//! Giving each slot its own ventilator is deliberate: a single PUSH
//! round-robins over its peers whether they are busy or not, so one long task
//! would hold a queue while other slots sit idle. Here the front end sends a
//! chunk only to a slot it knows is free (credit returns with each result),
//! which is what keeps a skewed workload's makespan near the ideal.
//!
//! Kill commands go to the workers over a PUB socket, with confirmation, when
//! the backend is dropped; [`Backend::cancel`] kills running tasks through the
//! shared cancel flag of [`exec::run`](crate::exec::run).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::warn;

use super::{Backend, ChunkDone, ExecChunk, MapError};
use crate::commands::{CommandSender, Delivery};
use crate::exec::{self, ExecOptions, ExecOutcome};
use crate::message::{decode_value, encode_value, ClusterRequest};
use crate::sink::{Sink, SinkError};
use crate::socket::{FutureSocket, SocketKind};
use crate::ventilator::Ventilator;
use crate::worker::{HandlerError, Worker, WorkerError, WorkerExit};

/// How long closing waits for workers to acknowledge their kill.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Workers in this process; see the module docs.
pub struct Embedded {
    ventilators: Vec<Ventilator>,
    idle: Vec<usize>,
    running: HashMap<u64, usize>,
    sink: Sink,
    commands: CommandSender,
    workers: Vec<JoinHandle<Result<WorkerExit, WorkerError>>>,
    cancel: Arc<AtomicBool>,
}

/// Runs every task of a chunk, one after another.
fn run_chunk(cancel: &Arc<AtomicBool>, request: &ClusterRequest) -> Result<Vec<u8>, HandlerError> {
    let chunk: ExecChunk = request.decode().map_err(HandlerError::new)?;
    let outcomes: Vec<(u64, ExecOutcome)> = chunk
        .tasks
        .iter()
        .map(|task| {
            let options = ExecOptions {
                timeout: task.timeout,
                cancel: Some(cancel.clone()),
                ..ExecOptions::default()
            };
            (task.seq, exec::run(&task.argv, &options))
        })
        .collect();
    encode_value(&outcomes, "chunk outcomes").map_err(HandlerError::new)
}

impl Embedded {
    /// Starts `jobs` worker threads (at least one).
    pub fn start(jobs: usize) -> Result<Self, MapError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = format!(
            "inproc://zcluster-map-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ctx = zmq::Context::new();
        let jobs = jobs.max(1);
        let fail =
            |e: &dyn std::fmt::Display| MapError::Backend(format!("cannot start workers: {e}"));
        let results = format!("{base}-results");
        let sink = Sink::new(&ctx, FutureSocket::bind(&results, SocketKind::Pull))
            .map_err(|e| fail(&e))?;
        let commands = CommandSender::new(
            &ctx,
            FutureSocket::bind(format!("{base}-commands"), SocketKind::Pub),
            Some(FutureSocket::bind(format!("{base}-replies"), SocketKind::Pull).into()),
        )
        .map_err(|e| fail(&e))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let mut ventilators = Vec::with_capacity(jobs);
        let mut workers = Vec::with_capacity(jobs);
        for slot in 0..jobs {
            let requests = format!("{base}-slot-{slot}");
            ventilators.push(
                Ventilator::new(&ctx, FutureSocket::bind(&requests, SocketKind::Push))
                    .map_err(|e| fail(&e))?
                    .worker_connect_delay(Duration::ZERO),
            );
            let flag = cancel.clone();
            let mut worker = Worker::builder(
                FutureSocket::connect(&requests, SocketKind::Pull),
                FutureSocket::connect(&results, SocketKind::Push),
            )
            .commands(FutureSocket::connect(
                format!("{base}-commands"),
                SocketKind::Sub,
            ))
            .responses(FutureSocket::connect(
                format!("{base}-replies"),
                SocketKind::Push,
            ))
            .name(format!("slot-{}", slot + 1))
            .build(&ctx, move |request: &ClusterRequest| {
                run_chunk(&flag, request)
            })
            .map_err(|e| fail(&e))?;
            let thread = thread::Builder::new()
                .name(format!("zcluster-slot-{}", slot + 1))
                .spawn(move || worker.run())
                .map_err(|e| fail(&e))?;
            workers.push(thread);
        }
        Ok(Embedded {
            ventilators,
            idle: (0..jobs).rev().collect(),
            running: HashMap::new(),
            sink,
            commands,
            workers,
            cancel,
        })
    }
}

impl Backend for Embedded {
    fn slots(&self) -> usize {
        self.ventilators.len()
    }

    fn submit(&mut self, id: u64, chunk: &ExecChunk) -> Result<(), MapError> {
        let slot = self
            .idle
            .pop()
            .ok_or_else(|| MapError::Backend("no free worker slot".into()))?;
        let request =
            ClusterRequest::encode(id, chunk).map_err(|e| MapError::Backend(e.to_string()))?;
        self.ventilators[slot]
            .send(std::iter::once(request))
            .map_err(|e| MapError::Backend(e.to_string()))?;
        self.running.insert(id, slot);
        Ok(())
    }

    fn next_done(&mut self, timeout: Duration) -> Result<Option<ChunkDone>, MapError> {
        let Some(item) = self.sink.receive(Some(1), Some(timeout)).next() else {
            return Ok(None);
        };
        let (result, outcomes) = match item {
            Ok(result) => {
                let outcomes =
                    decode_value(&result.payload, "chunk outcomes").map_err(|e| e.to_string());
                (result, outcomes)
            }
            Err(SinkError::Worker(exception)) => {
                let reason = exception.message().to_string();
                (*exception.result, Err(reason))
            }
            Err(SinkError::Timeout { .. }) => return Ok(None),
            Err(e) => return Err(MapError::Backend(e.to_string())),
        };
        if let Some(slot) = self.running.remove(&result.id) {
            self.idle.push(slot);
        }
        Ok(Some(ChunkDone {
            id: result.id,
            outcomes,
            host: result.metadata.host,
            pid: result.metadata.pid,
            worker: result.metadata.worker,
        }))
    }

    fn cancel(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

impl Drop for Embedded {
    /// Kills running tasks, tells every worker to exit and waits for them.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        let workers = self.workers.len();
        match self
            .commands
            .send_kill(Delivery::expecting(workers, CLOSE_WAIT))
        {
            Ok(acks) if acks.len() == workers => {
                for worker in self.workers.drain(..) {
                    if let Ok(Err(e)) = worker.join() {
                        warn!(error = %e, "worker ended with an error");
                    }
                }
            }
            Ok(acks) => warn!(
                acked = acks.len(),
                workers, "not every worker acknowledged the kill"
            ),
            Err(e) => warn!(error = %e, "cannot stop the workers"),
        }
    }
}
