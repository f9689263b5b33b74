//! Workers: pull requests, run a handler, push results, obey commands.
//!
//! A [`Worker`] owns a PULL socket for requests, a PUSH socket for results
//! and, optionally, a SUB socket for commands and a PUSH socket for command
//! replies. It runs a [`Handler`] on each request: a closure over raw
//! payloads, a typed function wrapped with [`typed`], or any type that
//! implements the trait (and may override
//! [`handle_command`](Handler::handle_command)). A handler error or panic
//! becomes a [`ResultStatus::Fail`] result carrying the message; the worker
//! goes on with the next request.
//!
//! ```no_run
//! use zcluster::socket::{FutureSocket, SocketKind};
//! use zcluster::worker::{typed, Worker};
//! let ctx = zmq::Context::new();
//! let mut worker = Worker::builder(
//!     FutureSocket::connect("tcp://head:5555", SocketKind::Pull),
//!     FutureSocket::connect("tcp://head:5556", SocketKind::Push),
//! )
//! .commands(FutureSocket::connect("tcp://head:5557", SocketKind::Sub))
//! .build(&ctx, typed(|x: u64| Ok::<_, String>(x * x)))
//! .unwrap();
//! let exit = worker.run().unwrap();
//! // Drop the worker (and its sockets) before exiting, so its last
//! // acknowledgement is flushed: return the code rather than calling exit().
//! drop(worker);
//! let code = exit.exit_code();
//! ```

use std::any::type_name;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::message::{
    self, ClusterRequest, ClusterResult, Command, CommandReply, Envelope, Header, MessageError,
    MessageKind, Metadata, ResultMetadata, ResultRef, ResultStatus, WorkerInfo,
};
use crate::socket::{init_socket, poll_readable, Readable, SocketError, SocketKind, SocketSource};

/// Exit status of a worker process that was told to restart: `EX_TEMPFAIL`
/// from `sysexits.h`, "try again later", so a supervisor can tell it from a
/// crash (non-zero, other) and a kill (0).
pub const RESTART_EXIT_CODE: i32 = 75;

/// How many command tokens a worker remembers, so a command repeated to
/// reach late subscribers is acted on once.
const REMEMBERED_TOKENS: usize = 64;

/// Errors that end a worker's run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A socket could not be made.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Nothing (no request, no command) arrived within the receive timeout:
    /// an idle timeout.
    #[error("no request arrived within {}", humantime::format_duration(*.waited))]
    Timeout {
        /// How long it waited.
        waited: Duration,
    },
    /// A socket failed while the worker was running.
    #[error("worker cannot {operation}: {source}")]
    Transport {
        /// What was being done.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: MessageError,
    },
}

/// Why a worker's run ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// A kill command: exit cleanly.
    Killed,
    /// A restart command: exit with [`RESTART_EXIT_CODE`].
    Restart,
}

impl WorkerExit {
    /// The process exit status this ending calls for.
    pub fn exit_code(self) -> i32 {
        match self {
            WorkerExit::Killed => 0,
            WorkerExit::Restart => RESTART_EXIT_CODE,
        }
    }
}

/// A handler's failure, sent back as the result's `exception`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(pub String);

impl HandlerError {
    /// A failure with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        HandlerError(message.to_string())
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

/// What a handler wants done with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandAction {
    /// Apply the built-in meaning (kill, restart, ping; others are ignored).
    Default,
    /// Ignore the command.
    Ignore,
    /// End the run this way (after acknowledging the command).
    Exit(WorkerExit),
}

/// Turns requests into results.
pub trait Handler {
    /// Computes the result payload for one request.
    fn handle(&mut self, request: &ClusterRequest) -> Result<Vec<u8>, HandlerError>;

    /// Decides what a command means to this worker. The default applies the
    /// built-in meanings; override it to add application commands
    /// ([`Command::Custom`]) or to veto a kill.
    fn handle_command(&mut self, command: &Command) -> CommandAction {
        let _ = command;
        CommandAction::Default
    }
}

/// Any closure over raw requests is a handler.
impl<F, E> Handler for F
where
    F: FnMut(&ClusterRequest) -> Result<Vec<u8>, E>,
    E: fmt::Display,
{
    fn handle(&mut self, request: &ClusterRequest) -> Result<Vec<u8>, HandlerError> {
        self(request).map_err(HandlerError::new)
    }
}

/// A handler over typed values: decodes the request payload as `In`, calls
/// the function, encodes its `Out`. Made by [`typed`].
pub struct Typed<F, In, Out> {
    function: F,
    types: PhantomData<fn(In) -> Out>,
}

/// Wraps `Fn(In) -> Result<Out, E>` as a [`Handler`], so a worker computes on
/// the caller's own serde types.
pub fn typed<F, In, Out, E>(function: F) -> Typed<F, In, Out>
where
    F: FnMut(In) -> Result<Out, E>,
    In: DeserializeOwned,
    Out: Serialize,
    E: fmt::Display,
{
    Typed {
        function,
        types: PhantomData,
    }
}

impl<F, In, Out, E> Handler for Typed<F, In, Out>
where
    F: FnMut(In) -> Result<Out, E>,
    In: DeserializeOwned,
    Out: Serialize,
    E: fmt::Display,
{
    fn handle(&mut self, request: &ClusterRequest) -> Result<Vec<u8>, HandlerError> {
        let input: In = request.decode().map_err(|e| {
            HandlerError::new(format!(
                "cannot decode the request as {}: {e}",
                type_name::<In>()
            ))
        })?;
        let output = (self.function)(input).map_err(HandlerError::new)?;
        message::encode_value(&output, "result payload").map_err(HandlerError::new)
    }
}

/// Requests handled and time spent, for ping replies and statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Requests handled, failed ones included.
    pub requests_handled: u64,
    /// Total handler time.
    pub busy: Duration,
}

impl WorkerStats {
    /// Mean handler time per request (zero before the first).
    pub fn mean_time(&self) -> Duration {
        match u32::try_from(self.requests_handled) {
            Ok(0) => Duration::ZERO,
            Ok(n) => self.busy / n,
            Err(_) => {
                Duration::from_secs_f64(self.busy.as_secs_f64() / self.requests_handled as f64)
            }
        }
    }
}

/// Sockets and settings for a worker, before it is built.
pub struct WorkerBuilder {
    requests: SocketSource,
    results: SocketSource,
    commands: Option<SocketSource>,
    responses: Option<SocketSource>,
    name: Option<String>,
    receive_timeout: Option<Duration>,
}

impl WorkerBuilder {
    /// Listen for commands on this SUB socket.
    pub fn commands(mut self, commands: impl Into<SocketSource>) -> Self {
        self.commands = Some(commands.into());
        self
    }

    /// Send command replies (acknowledgements, ping answers) on this PUSH
    /// socket.
    pub fn responses(mut self, responses: impl Into<SocketSource>) -> Self {
        self.responses = Some(responses.into());
        self
    }

    /// Name the worker in results and replies (default `worker-PID`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// End `run` with [`WorkerError::Timeout`] when nothing arrives for this
    /// long.
    pub fn receive_timeout(mut self, timeout: Duration) -> Self {
        self.receive_timeout = Some(timeout);
        self
    }

    /// Makes the sockets and the worker.
    pub fn build<H: Handler>(
        self,
        ctx: &zmq::Context,
        handler: H,
    ) -> Result<Worker<H>, WorkerError> {
        let requests = init_socket(ctx, self.requests, SocketKind::Pull, "worker requests")?;
        let results = init_socket(ctx, self.results, SocketKind::Push, "worker results")?;
        let commands = self
            .commands
            .map(|c| init_socket(ctx, c, SocketKind::Sub, "worker commands"))
            .transpose()?;
        let responses = self
            .responses
            .map(|r| init_socket(ctx, r, SocketKind::Push, "worker responses"))
            .transpose()?;
        let pid = std::process::id();
        let info = WorkerInfo {
            host: crate::host_name(),
            pid,
            worker: self.name.unwrap_or_else(|| format!("worker-{pid}")),
            started: SystemTime::now(),
        };
        Ok(Worker {
            requests,
            results,
            commands,
            responses,
            handler,
            info,
            receive_timeout: self.receive_timeout,
            stats: WorkerStats::default(),
            seen_tokens: VecDeque::with_capacity(REMEMBERED_TOKENS),
        })
    }
}

/// A worker: see the module docs.
pub struct Worker<H> {
    requests: zmq::Socket,
    results: zmq::Socket,
    commands: Option<zmq::Socket>,
    responses: Option<zmq::Socket>,
    handler: H,
    info: WorkerInfo,
    receive_timeout: Option<Duration>,
    stats: WorkerStats,
    seen_tokens: VecDeque<u64>,
}

impl Worker<()> {
    /// Starts describing a worker that pulls requests from `requests` and
    /// pushes results to `results`.
    pub fn builder(
        requests: impl Into<SocketSource>,
        results: impl Into<SocketSource>,
    ) -> WorkerBuilder {
        WorkerBuilder {
            requests: requests.into(),
            results: results.into(),
            commands: None,
            responses: None,
            name: None,
            receive_timeout: None,
        }
    }
}

impl<H: Handler> Worker<H> {
    /// Who this worker is.
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    /// What this worker has done so far.
    pub fn stats(&self) -> WorkerStats {
        self.stats
    }

    /// Handles requests and commands until a kill or restart command, or a
    /// receive timeout.
    ///
    /// Commands are checked before each request, so a kill takes effect after
    /// the request in hand, however many are queued.
    pub fn run(&mut self) -> Result<WorkerExit, WorkerError> {
        info!(worker = %self.info.worker, pid = self.info.pid, "worker started");
        loop {
            let ready = poll_readable(&self.requests, self.commands.as_ref(), self.receive_timeout)
                .map_err(|e| transport("poll", e.into()))?;
            let Readable::Ready(requests_ready, commands_ready) = ready else {
                return Err(WorkerError::Timeout {
                    waited: self.receive_timeout.unwrap_or_default(),
                });
            };
            if commands_ready {
                if let Some(exit) = self.drain_commands()? {
                    return Ok(exit);
                }
            }
            if requests_ready {
                // Take every request already queued, checking for commands
                // between them, before polling again: one poll per burst.
                loop {
                    match message::recv(&self.requests, zmq::DONTWAIT) {
                        Ok(envelope) => self.handle_request(envelope)?,
                        Err(e) if e.is_timeout() => break,
                        Err(MessageError::Zmq(zmq::Error::EINTR)) => break,
                        Err(MessageError::Zmq(e)) => {
                            return Err(transport("receive a request", e.into()))
                        }
                        Err(e) => warn!(error = %e, "dropping a bad message on the request socket"),
                    }
                    if self.commands_pending()? {
                        if let Some(exit) = self.drain_commands()? {
                            return Ok(exit);
                        }
                    }
                }
            }
        }
    }

    fn handle_request(&mut self, envelope: Envelope) -> Result<(), WorkerError> {
        let job = envelope.header.job;
        if envelope.header.kind == MessageKind::Requests {
            return self.handle_batch(&envelope);
        }
        let request = match envelope.request() {
            Ok(request) => Ok(request),
            Err(e) if envelope.header.kind == MessageKind::Request => {
                // The id is known: answer with a failure rather than leave
                // the sender waiting for a result that will never come.
                warn!(id = envelope.header.id, error = %e, "bad request body");
                Err((envelope.header.id, format!("bad request: {e}")))
            }
            Err(e) => {
                warn!(error = %e, "dropping a message that is not a request");
                return Ok(());
            }
        };
        let result = self.run_one(request);
        self.send_result(job, result)
    }

    /// A batch of requests, answered with one message of results.
    fn handle_batch(&mut self, envelope: &Envelope) -> Result<(), WorkerError> {
        let job = envelope.header.job;
        let requests = match envelope.requests() {
            Ok(requests) => requests,
            Err(e) => {
                // Which ids it held is unknown: nothing can be answered.
                warn!(error = %e, "dropping a bad request batch");
                return Ok(());
            }
        };
        let results: Vec<ClusterResult> = requests
            .into_iter()
            .map(|request| {
                let outcome = self.run_one(Ok(request));
                self.result_of(outcome)
            })
            .collect();
        match message::send_results(&self.results, job, &results, 0) {
            // Too large together: each goes alone, a too large one as its
            // own failure.
            Err(MessageError::TooLarge { .. } | MessageError::Encode { .. }) => {
                for result in results {
                    self.send_owned_result(job, result)?;
                }
                Ok(())
            }
            sent => sent.map_err(|e| transport("send results", e)),
        }
    }

    /// Runs the handler on one request (or answers a bad one).
    fn run_one(&mut self, request: Result<ClusterRequest, (u64, String)>) -> Outcome {
        let started = SystemTime::now();
        let clock = Instant::now();
        let (request, outcome) = match request {
            Ok(request) => {
                let outcome = catch_unwind(AssertUnwindSafe(|| self.handler.handle(&request)))
                    .unwrap_or_else(|panic| {
                        Err(HandlerError(format!(
                            "handler panicked: {}",
                            panic_message(&panic)
                        )))
                    });
                (request, outcome)
            }
            Err((id, reason)) => (
                ClusterRequest::new(id, Vec::new()),
                Err(HandlerError(reason)),
            ),
        };
        let elapsed = clock.elapsed();
        self.stats.requests_handled += 1;
        self.stats.busy += elapsed;
        let (status, payload, exception) = match outcome {
            Ok(payload) => (ResultStatus::Ok, payload, None),
            Err(e) => {
                debug!(id = request.id, error = %e, "handler failed");
                (ResultStatus::Fail, Vec::new(), Some(e.0))
            }
        };
        Outcome {
            id: request.id,
            status,
            payload,
            request_metadata: request.metadata,
            started,
            elapsed,
            exception,
        }
    }

    /// The result of `outcome`, signed with this worker's whereabouts.
    fn result_of(&self, outcome: Outcome) -> ClusterResult {
        ClusterResult {
            id: outcome.id,
            status: outcome.status,
            payload: outcome.payload,
            request_metadata: outcome.request_metadata,
            metadata: ResultMetadata {
                host: self.info.host.clone(),
                pid: self.info.pid,
                worker: self.info.worker.clone(),
                started: outcome.started,
                elapsed: outcome.elapsed,
            },
            exception: outcome.exception,
        }
    }

    /// Sends the result of `outcome` with this worker's host and name
    /// borrowed, not copied into a [`ClusterResult`] first.
    fn send_result(&mut self, job: u64, outcome: Outcome) -> Result<(), WorkerError> {
        let view = ResultRef {
            id: outcome.id,
            status: outcome.status,
            payload: &outcome.payload,
            request_metadata: &outcome.request_metadata,
            host: &self.info.host,
            pid: self.info.pid,
            worker: &self.info.worker,
            started: outcome.started,
            elapsed: outcome.elapsed,
            exception: outcome.exception.as_deref(),
        };
        match message::send_result_ref(&self.results, job, view, 0) {
            Err(MessageError::TooLarge { .. } | MessageError::Encode { .. }) => {
                let result = self.result_of(outcome);
                self.send_owned_result(job, result)
            }
            sent => sent.map_err(|e| transport("send a result", e)),
        }
    }

    fn send_owned_result(&mut self, job: u64, result: ClusterResult) -> Result<(), WorkerError> {
        match message::send_result(&self.results, job, &result, 0) {
            // A result that cannot be encoded or is too large is that
            // request's failure, not the end of the worker.
            Err(e @ (MessageError::TooLarge { .. } | MessageError::Encode { .. })) => {
                warn!(id = result.id, error = %e, "result not sendable; sending a failure instead");
                let failed = result.as_failure(format!("the result could not be sent: {e}"));
                message::send_result(&self.results, job, &failed, 0)
                    .map_err(|e| transport("send a result", e))
            }
            sent => sent.map_err(|e| transport("send a result", e)),
        }
    }

    fn commands_pending(&self) -> Result<bool, WorkerError> {
        match &self.commands {
            None => Ok(false),
            Some(commands) => commands
                .get_events()
                .map(|events| events.contains(zmq::POLLIN))
                .map_err(|e| transport("check for commands", e.into())),
        }
    }

    fn drain_commands(&mut self) -> Result<Option<WorkerExit>, WorkerError> {
        loop {
            let Some(commands) = &self.commands else {
                return Ok(None);
            };
            let envelope = match message::recv(commands, zmq::DONTWAIT) {
                Ok(envelope) => envelope,
                Err(e) if e.is_timeout() => return Ok(None),
                Err(MessageError::Zmq(zmq::Error::EINTR)) => return Ok(None),
                Err(MessageError::Zmq(e)) => return Err(transport("receive a command", e.into())),
                Err(e) => {
                    warn!(error = %e, "dropping a bad message on the command socket");
                    continue;
                }
            };
            let token = envelope.header.id;
            let command = match envelope.command() {
                Ok(command) => command,
                Err(e) => {
                    warn!(error = %e, "dropping a bad command");
                    continue;
                }
            };
            if self.seen_tokens.contains(&token) {
                continue;
            }
            if self.seen_tokens.len() == REMEMBERED_TOKENS {
                self.seen_tokens.pop_front();
            }
            self.seen_tokens.push_back(token);
            if let Some(exit) = self.obey(token, &command) {
                return Ok(Some(exit));
            }
        }
    }

    fn obey(&mut self, token: u64, command: &Command) -> Option<WorkerExit> {
        let action = catch_unwind(AssertUnwindSafe(|| self.handler.handle_command(command)))
            .unwrap_or_else(|panic| {
                warn!(
                    command = %crate::untrusted::escape(command.name().as_bytes()),
                    "command handler panicked: {}",
                    panic_message(&panic)
                );
                CommandAction::Default
            });
        let exit = match action {
            CommandAction::Ignore => return None,
            CommandAction::Exit(exit) => Some(exit),
            CommandAction::Default => match command {
                Command::Kill => Some(WorkerExit::Killed),
                Command::Restart => Some(WorkerExit::Restart),
                Command::Ping => None,
                Command::KillSink => return None,
                // A toolkit worker holds one request at a time: draining is
                // finishing it and leaving.
                Command::Drain => Some(WorkerExit::Killed),
                Command::Custom { name, .. } => {
                    warn!(
                        command = %crate::untrusted::escape(name.as_bytes()),
                        "ignoring an unknown command"
                    );
                    return None;
                }
            },
        };
        info!(
            worker = %self.info.worker,
            command = %crate::untrusted::escape(command.name().as_bytes()),
            "command received"
        );
        self.reply(token, command);
        exit
    }

    fn reply(&self, token: u64, command: &Command) {
        let Some(responses) = &self.responses else {
            return;
        };
        let reply = CommandReply {
            token,
            command: command.name().to_string(),
            worker: self.info.clone(),
            requests_handled: self.stats.requests_handled,
            mean_time: self.stats.mean_time(),
        };
        let header = Header {
            kind: MessageKind::Reply,
            job: 0,
            id: token,
        };
        // Never block a worker on a reply nobody collects.
        if let Err(e) = message::send(responses, &header, &reply, zmq::DONTWAIT) {
            debug!(error = %e, "command reply not sent");
        }
    }
}

/// What handling one request gave, before it is sent as a result.
struct Outcome {
    id: u64,
    status: ResultStatus,
    payload: Vec<u8>,
    request_metadata: Metadata,
    started: SystemTime,
    elapsed: Duration,
    exception: Option<String>,
}

fn transport(operation: &'static str, source: MessageError) -> WorkerError {
    WorkerError::Transport { operation, source }
}

/// The text of a panic payload (`&str` or `String`; anything else is named
/// as such).
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_handler_decodes_and_encodes() {
        let mut handler = typed(|(a, b): (u32, u32)| Ok::<_, String>(a + b));
        let request = ClusterRequest::encode(1, &(2u32, 3u32)).unwrap();
        let out = handler.handle(&request).unwrap();
        assert_eq!(message::decode_value::<u32>(&out, "t").unwrap(), 5);
        let bad = ClusterRequest::new(2, vec![0xff; 3]);
        let err = handler.handle(&bad).unwrap_err();
        assert!(
            err.0.contains("cannot decode the request as (u32, u32)"),
            "{err}"
        );
    }

    #[test]
    fn closure_errors_become_handler_errors() {
        let mut handler = |_: &ClusterRequest| Err::<Vec<u8>, _>("no such file");
        let err = handler.handle(&ClusterRequest::new(1, vec![])).unwrap_err();
        assert_eq!(err.0, "no such file");
    }

    #[test]
    fn mean_time_and_exit_codes() {
        let stats = WorkerStats {
            requests_handled: 4,
            busy: Duration::from_millis(10),
        };
        assert_eq!(stats.mean_time(), Duration::from_micros(2500));
        assert_eq!(WorkerStats::default().mean_time(), Duration::ZERO);
        assert_eq!(WorkerExit::Killed.exit_code(), 0);
        assert_eq!(WorkerExit::Restart.exit_code(), RESTART_EXIT_CODE);
    }
}
