//! The sink: collects results from workers.
//!
//! A [`Sink`] owns a PULL socket that every worker's result PUSH connects to
//! (or binds, through a streamer), and optionally a SUB socket on which a
//! [`Command::KillSink`] ends a receive loop early. [`Sink::receive`] is an
//! iterator over results as they arrive; a failed result surfaces as
//! [`SinkError::Worker`], carrying the worker's message and whereabouts.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tracing::warn;

use crate::message::{self, ClusterResult, Command, MessageError, MessageKind, ResultStatus};
use crate::socket::{init_socket, poll_readable, Readable, SocketError, SocketKind, SocketSource};

/// A worker reported a failure for one request (glimpse's `WorkerException`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerException {
    /// The whole failed result: id, message, host, pid, timing.
    pub result: Box<ClusterResult>,
}

impl WorkerException {
    /// The worker's error message.
    pub fn message(&self) -> &str {
        self.result
            .exception
            .as_deref()
            .unwrap_or("unknown failure")
    }
}

impl fmt::Display for WorkerException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.result.metadata;
        write!(
            f,
            "request {} failed on {} (pid {}, {}): {}",
            self.result.id,
            m.host,
            m.pid,
            m.worker,
            self.message()
        )
    }
}

impl std::error::Error for WorkerException {}

/// Errors from a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sockets could not be made.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Nothing arrived in time.
    #[error("no result arrived within {}", humantime::format_duration(*.waited))]
    Timeout {
        /// How long it waited.
        waited: Duration,
    },
    /// A worker failed on a request.
    #[error(transparent)]
    Worker(#[from] WorkerException),
    /// A result payload could not be decoded as the requested type.
    #[error("cannot decode the payload of result {id}: {source}")]
    Payload {
        /// The request id.
        id: u64,
        /// The underlying error.
        #[source]
        source: MessageError,
    },
    /// The socket failed.
    #[error("sink cannot receive: {0}")]
    Transport(#[source] MessageError),
}

/// Collects results; see the module docs.
pub struct Sink {
    results: zmq::Socket,
    commands: Option<zmq::Socket>,
    /// The rest of a batch of results already received.
    batched: VecDeque<ClusterResult>,
}

impl Sink {
    /// A sink on a PULL socket (descriptor or existing socket).
    pub fn new(ctx: &zmq::Context, results: impl Into<SocketSource>) -> Result<Self, SinkError> {
        Ok(Sink {
            results: init_socket(ctx, results, SocketKind::Pull, "sink results")?,
            commands: None,
            batched: VecDeque::new(),
        })
    }

    /// Also listens for [`Command::KillSink`] on this SUB socket.
    pub fn commands(
        mut self,
        ctx: &zmq::Context,
        commands: impl Into<SocketSource>,
    ) -> Result<Self, SinkError> {
        self.commands = Some(init_socket(
            ctx,
            commands,
            SocketKind::Sub,
            "sink commands",
        )?);
        Ok(self)
    }

    /// The results socket, e.g. to read the endpoint it bound.
    pub fn socket(&self) -> &zmq::Socket {
        &self.results
    }

    /// Results as they arrive, failures as [`SinkError::Worker`]. Stops after
    /// `num_results` (failures count), on a kill-sink command, or after one
    /// [`SinkError::Timeout`] when nothing arrives for `timeout`.
    pub fn receive(
        &mut self,
        num_results: Option<usize>,
        timeout: Option<Duration>,
    ) -> Receive<'_> {
        Receive {
            sink: self,
            remaining: num_results,
            timeout,
            done: false,
        }
    }

    /// Like [`receive`](Self::receive), with each payload decoded as `T` and
    /// paired with its request id.
    pub fn receive_typed<T: DeserializeOwned>(
        &mut self,
        num_results: Option<usize>,
        timeout: Option<Duration>,
    ) -> impl Iterator<Item = Result<(u64, T), SinkError>> + '_ {
        self.receive(num_results, timeout).map(|result| {
            let result = result?;
            let value = result.decode().map_err(|source| SinkError::Payload {
                id: result.id,
                source,
            })?;
            Ok((result.id, value))
        })
    }

    fn next_result(
        &mut self,
        timeout: Option<Duration>,
    ) -> Option<Result<ClusterResult, SinkError>> {
        if let Some(result) = self.batched.pop_front() {
            return Some(deliver(result));
        }
        // One deadline for the whole wait: commands and bad messages that
        // wake the poll do not restart the clock. It starts at the first
        // wait: under load a result is nearly always queued, and reading
        // the clock for each would cost a tenth of reading the result.
        let mut deadline: Option<Option<Instant>> = None;
        loop {
            if self.commands_pending() && self.kill_received() {
                return None;
            }
            // Read first and poll only when nothing is queued: under load a
            // result is nearly always waiting, and a poll per result costs
            // as much as reading it.
            match message::recv(&self.results, zmq::DONTWAIT) {
                Ok(envelope) if envelope.header.kind == MessageKind::Results => {
                    match envelope.results() {
                        Ok(results) => {
                            self.batched.extend(results);
                            if let Some(result) = self.batched.pop_front() {
                                return Some(deliver(result));
                            }
                        }
                        Err(e) => warn!(error = %e, "dropping a bad result batch"),
                    }
                }
                Ok(envelope) => match envelope.result() {
                    Ok(result) => return Some(deliver(result)),
                    Err(e) => warn!(error = %e, "dropping a bad result"),
                },
                Err(e) if e.is_timeout() => {
                    let deadline =
                        *deadline.get_or_insert_with(|| timeout.map(|t| Instant::now() + t));
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    match poll_readable(&self.results, self.commands.as_ref(), left) {
                        Ok(Readable::Ready(..)) => {}
                        Ok(Readable::Timeout) => {
                            return Some(Err(SinkError::Timeout {
                                waited: timeout.unwrap_or_default(),
                            }))
                        }
                        Err(e) => return Some(Err(SinkError::Transport(e.into()))),
                    }
                }
                Err(MessageError::Zmq(zmq::Error::EINTR)) => {}
                Err(MessageError::Zmq(e)) => return Some(Err(SinkError::Transport(e.into()))),
                Err(e) => warn!(error = %e, "dropping a bad message on the result socket"),
            }
        }
    }

    /// Whether a command may be waiting (a socket that cannot say counts
    /// as yes: reading it tells).
    fn commands_pending(&self) -> bool {
        self.commands.as_ref().is_some_and(|commands| {
            commands
                .get_events()
                .map_or(true, |events| events.contains(zmq::POLLIN))
        })
    }

    /// Reads every pending command; true when one is a kill-sink.
    fn kill_received(&mut self) -> bool {
        let Some(commands) = &self.commands else {
            return false;
        };
        let mut kill = false;
        loop {
            match message::recv(commands, zmq::DONTWAIT) {
                Ok(envelope) => match envelope.command() {
                    Ok(Command::KillSink) => kill = true,
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "dropping a bad command"),
                },
                Err(MessageError::Zmq(_)) => return kill,
                Err(e) => warn!(error = %e, "dropping a bad message on the command socket"),
            }
        }
    }
}

/// A result as the sink hands it out: a failure is an error.
fn deliver(result: ClusterResult) -> Result<ClusterResult, SinkError> {
    if result.status == ResultStatus::Ok {
        Ok(result)
    } else {
        Err(SinkError::Worker(WorkerException {
            result: Box::new(result),
        }))
    }
}

/// Iterator returned by [`Sink::receive`].
pub struct Receive<'a> {
    sink: &'a mut Sink,
    remaining: Option<usize>,
    timeout: Option<Duration>,
    done: bool,
}

impl Iterator for Receive<'_> {
    type Item = Result<ClusterResult, SinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.remaining == Some(0) {
            return None;
        }
        let item = self.sink.next_result(self.timeout);
        match &item {
            None | Some(Err(SinkError::Timeout { .. } | SinkError::Transport(_))) => {
                self.done = true
            }
            Some(_) => {
                if let Some(n) = &mut self.remaining {
                    *n -= 1;
                }
            }
        }
        item
    }
}
