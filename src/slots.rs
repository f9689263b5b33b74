//! Worker slots inside this process: toolkit [`Worker`]s on threads, each fed
//! by its own [`Ventilator`] over inproc, all answering one [`Sink`].
//!
//! Giving each slot its own ventilator is deliberate: a single PUSH
//! round-robins over its peers whether they are busy or not, so one long task
//! would hold a queue while other slots sit idle. [`Slots::submit`] sends a
//! request only to a slot that is free (its credit returns with its result),
//! which is what keeps a skewed workload's makespan near the ideal.
//!
//! Short tasks can go to a slot several at a time
//! ([`Slots::submit_batch`]): one message there and one back for the lot,
//! instead of a message and a thread wake-up each way per task. The slot is
//! free again once every result of its batch is back.
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
    /// Requests each slot holds whose results are not back yet.
    held: Vec<usize>,
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
            held: vec![0; count],
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

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.ventilators.len()
    }

    /// Always false: there is at least one slot.
    pub fn is_empty(&self) -> bool {
        self.ventilators.is_empty()
    }

    /// Sends `request` to a free slot and returns its ticket, which comes
    /// back with its result (request ids need not be unique across callers'
    /// jobs; tickets are).
    pub fn submit(&mut self, request: ClusterRequest) -> Result<u64, SlotsError> {
        let tickets = self.submit_batch(vec![request])?;
        Ok(tickets[0])
    }

    /// Sends `requests` (at least one) to one free slot as one message and
    /// returns their tickets, in order. The slot runs them one after
    /// another and answers with one message; it is free again once all of
    /// them are back. Meant for tasks short enough that running them in
    /// turn on one slot costs less than a round trip each.
    pub fn submit_batch(
        &mut self,
        mut requests: Vec<ClusterRequest>,
    ) -> Result<Vec<u64>, SlotsError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let slot = self.idle.pop().ok_or(SlotsError::NoFreeSlot)?;
        let first = self.next_ticket;
        let ids: Vec<u64> = requests
            .iter_mut()
            .enumerate()
            .map(|(n, request)| std::mem::replace(&mut request.id, first + n as u64))
            .collect();
        let sent = if requests.len() == 1 {
            self.ventilators[slot].send(requests)
        } else {
            self.ventilators[slot].send_batch(&requests)
        };
        if let Err(e) = sent {
            self.idle.push(slot);
            return Err(SlotsError::Transport(e.to_string()));
        }
        self.next_ticket += ids.len() as u64;
        self.held[slot] = ids.len();
        let tickets: Vec<u64> = (first..self.next_ticket).collect();
        for (&ticket, id) in tickets.iter().zip(ids) {
            self.running.insert(ticket, (slot, id));
        }
        Ok(tickets)
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
                self.held[slot] -= 1;
                if self.held[slot] == 0 {
                    self.idle.push(slot);
                }
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::message::ResultStatus;
    use crate::worker::typed;

    fn slots(count: usize) -> Slots {
        Slots::start(count, |_| typed(|n: u64| Ok::<_, String>(n * 2))).unwrap()
    }

    /// Every result of `n` submitted requests, keyed by original id.
    fn collect(slots: &mut Slots, n: usize) -> HashMap<u64, (u64, ClusterResult)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = HashMap::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} results",
                got.len()
            );
            if let Some((ticket, result)) = slots.next_result(Duration::from_millis(100)).unwrap() {
                assert!(
                    got.insert(result.id, (ticket, result)).is_none(),
                    "a result twice"
                );
            }
        }
        got
    }

    #[test]
    fn a_batch_takes_one_slot_until_all_its_results_are_back() {
        let mut slots = slots(2);
        assert_eq!((slots.len(), slots.free()), (2, 2));
        let requests: Vec<ClusterRequest> = (100..110u64)
            .map(|n| ClusterRequest::encode(n, &n).unwrap())
            .collect();
        let tickets = slots.submit_batch(requests).unwrap();
        assert_eq!(tickets.len(), 10);
        assert_eq!(slots.free(), 1, "one slot holds the whole batch");
        let single = slots
            .submit(ClusterRequest::encode(7, &7u64).unwrap())
            .unwrap();
        assert_eq!(slots.free(), 0);
        assert!(matches!(
            slots.submit(ClusterRequest::encode(8, &8u64).unwrap()),
            Err(SlotsError::NoFreeSlot)
        ));
        let got = collect(&mut slots, 11);
        assert_eq!(slots.free(), 2, "both slots free once every result is back");
        for (n, ticket) in (100..110u64).zip(&tickets) {
            let (t, result) = &got[&n];
            assert_eq!(t, ticket, "tickets come back in submission order");
            assert_eq!(result.status, ResultStatus::Ok);
            assert_eq!(
                result.decode::<u64>().unwrap(),
                n * 2,
                "original id restored"
            );
        }
        assert_eq!(got[&7].0, single);
        assert!(slots.submit_batch(Vec::new()).unwrap().is_empty());
        assert_eq!(slots.free(), 2, "an empty batch takes no slot");
    }

    #[test]
    fn a_failing_request_fails_alone_inside_a_batch() {
        let mut slots = Slots::start(1, |_| {
            typed(|n: u64| {
                if n == 3 {
                    Err("three".to_string())
                } else {
                    Ok(n)
                }
            })
        })
        .unwrap();
        let requests: Vec<ClusterRequest> = (1..=5u64)
            .map(|n| ClusterRequest::encode(n, &n).unwrap())
            .collect();
        slots.submit_batch(requests).unwrap();
        let got = collect(&mut slots, 5);
        for n in 1..=5u64 {
            let result = &got[&n].1;
            if n == 3 {
                assert_eq!(result.status, ResultStatus::Fail);
                assert_eq!(result.exception.as_deref(), Some("three"));
            } else {
                assert_eq!(result.decode::<u64>().unwrap(), n);
            }
        }
        assert_eq!(slots.free(), 1);
    }
}
