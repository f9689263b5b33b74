//! Worker slots inside this process: toolkit [`Worker`]s on threads, each fed
//! by its own [`Ventilator`] over inproc, all answering one [`Sink`].
//!
//! Giving each slot its own ventilator is deliberate: a single PUSH
//! round-robins over its peers whether they are busy or not, so one long task
//! would hold a queue while other slots sit idle. [`Slots::submit`] sends a
//! request only to a slot that is free (its credit returns with its result),
//! which is what keeps a skewed workload's makespan near the ideal.
//!
//! Used by `zcluster map`'s embedded backend and by an engine (a `zcluster
//! worker` process) to run what the hub hands it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::warn;

use crate::commands::{CommandSender, Delivery};
use crate::message::{ClusterRequest, ClusterResult};
use crate::sink::{Sink, SinkError};
use crate::socket::{FutureSocket, SocketKind};
use crate::ventilator::Ventilator;
use crate::worker::{Handler, Worker, WorkerError, WorkerExit};

/// How long closing waits for workers to acknowledge their kill.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Errors from starting or feeding slots.
#[derive(Debug, thiserror::Error)]
pub enum SlotsError {
    /// A socket, thread or worker could not be made.
    #[error("cannot start worker slots: {0}")]
    Start(String),
    /// `submit` with no free slot: the caller's credit accounting is wrong.
    #[error("no free worker slot")]
    NoFreeSlot,
    /// A request could not be sent or a result received.
    #[error("worker slots: {0}")]
    Transport(String),
}

/// A pool of worker threads in this process; see the module docs.
pub struct Slots {
    ventilators: Vec<Ventilator>,
    idle: Vec<usize>,
    /// Ticket of each running request: its slot and its original id.
    running: HashMap<u64, (usize, u64)>,
    next_ticket: u64,
    sink: Sink,
    commands: CommandSender,
    workers: Vec<JoinHandle<Result<WorkerExit, WorkerError>>>,
}

impl Slots {
    /// Starts `count` (at least one) worker threads, slot `i` (from 1)
    /// running `make_handler(i)` and named `slot-i`.
    pub fn start<H, F>(count: usize, mut make_handler: F) -> Result<Self, SlotsError>
    where
        H: Handler + Send + 'static,
        F: FnMut(usize) -> H,
    {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = format!(
            "inproc://zcluster-slots-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let fail = |e: &dyn std::fmt::Display| SlotsError::Start(e.to_string());
        let ctx = zmq::Context::new();
        let count = count.max(1);
        let results = format!("{base}-results");
        let commands_url = format!("{base}-commands");
        let replies_url = format!("{base}-replies");
        let sink = Sink::new(&ctx, FutureSocket::bind(&results, SocketKind::Pull))
            .map_err(|e| fail(&e))?;
        let commands = CommandSender::new(
            &ctx,
            FutureSocket::bind(&commands_url, SocketKind::Pub),
            Some(FutureSocket::bind(&replies_url, SocketKind::Pull).into()),
        )
        .map_err(|e| fail(&e))?;
        let mut ventilators = Vec::with_capacity(count);
        let mut workers = Vec::with_capacity(count);
        for slot in 1..=count {
            let requests = format!("{base}-slot-{slot}");
            ventilators.push(
                Ventilator::new(&ctx, FutureSocket::bind(&requests, SocketKind::Push))
                    .map_err(|e| fail(&e))?
                    .worker_connect_delay(Duration::ZERO),
            );
            let mut worker = Worker::builder(
                FutureSocket::connect(&requests, SocketKind::Pull),
                FutureSocket::connect(&results, SocketKind::Push),
            )
            .commands(FutureSocket::connect(&commands_url, SocketKind::Sub))
            .responses(FutureSocket::connect(&replies_url, SocketKind::Push))
            .name(format!("slot-{slot}"))
            .build(&ctx, make_handler(slot))
            .map_err(|e| fail(&e))?;
            let thread = thread::Builder::new()
                .name(format!("zcluster-slot-{slot}"))
                .spawn(move || worker.run())
                .map_err(|e| fail(&e))?;
            workers.push(thread);
        }
        Ok(Slots {
            ventilators,
            idle: (0..count).rev().collect(),
            running: HashMap::new(),
            next_ticket: 0,
            sink,
            commands,
            workers,
        })
    }

    /// The socket results arrive on, for a caller that polls it together
    /// with its own sockets before calling [`next_result`](Self::next_result).
    pub fn results_socket(&self) -> &zmq::Socket {
        self.sink.socket()
    }

    /// How many slots are free.
    pub fn free(&self) -> usize {
        self.idle.len()
    }

    /// Sends `request` to a free slot and returns its ticket, which comes
    /// back with its result (request ids need not be unique across callers'
    /// jobs; tickets are).
    pub fn submit(&mut self, mut request: ClusterRequest) -> Result<u64, SlotsError> {
        let slot = self.idle.pop().ok_or(SlotsError::NoFreeSlot)?;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let id = std::mem::replace(&mut request.id, ticket);
        if let Err(e) = self.ventilators[slot].send(std::iter::once(request)) {
            self.idle.push(slot);
            return Err(SlotsError::Transport(e.to_string()));
        }
        self.running.insert(ticket, (slot, id));
        Ok(ticket)
    }

    /// The next result (a failed one included) with its ticket and its
    /// original request id, or `None` after `timeout`. Its slot is free again.
    pub fn next_result(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(u64, ClusterResult)>, SlotsError> {
        let result = match self.sink.receive(Some(1), Some(timeout)).next() {
            None | Some(Err(SinkError::Timeout { .. })) => return Ok(None),
            Some(Ok(result)) => result,
            Some(Err(SinkError::Worker(exception))) => *exception.result,
            Some(Err(e)) => return Err(SlotsError::Transport(e.to_string())),
        };
        let mut result = result;
        let ticket = result.id;
        match self.running.remove(&ticket) {
            Some((slot, id)) => {
                self.idle.push(slot);
                result.id = id;
                Ok(Some((ticket, result)))
            }
            // Not one of ours (cannot happen on a private inproc sink).
            None => Ok(None),
        }
    }

    /// Tells every worker to exit after its current request and waits for
    /// them (called on drop).
    fn close(&mut self) {
        let workers = self.workers.len();
        if workers == 0 {
            return;
        }
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

impl Drop for Slots {
    fn drop(&mut self) {
        self.close();
    }
}
