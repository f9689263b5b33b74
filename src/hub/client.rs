//! The client side of a hub: calls (status, results, kill, ...) and the
//! [`map::Backend`](crate::map::Backend) that runs `zcluster map --hub`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::connection::{ConnectionError, ConnectionInfo};
use super::protocol::{ClientCall, JobId, JobKind, Reply};
use crate::map::{Backend, ChunkDone, ExecChunk, MapError};
use crate::message::{
    self, ClusterRequest, Envelope, Header, MessageError, MessageKind, SignedSocket,
};
use crate::socket::{millis, DEFAULT_LINGER};

/// `PREFIX-` and 16 random hex digits: a routing identity no other peer has.
pub(crate) fn random_identity(prefix: &str) -> String {
    format!("{prefix}-{:016x}", crate::auth::random_u64())
}

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
    /// The hub answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The hub answered something that does not fit the call.
    #[error("unexpected answer from the hub: {0}")]
    Unexpected(String),
    /// The connection file's key is unusable.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The transport failed.
    #[error("hub connection failed: {0}")]
    Transport(#[from] MessageError),
}

/// A connection to a hub's client socket.
pub struct HubClient {
    socket: SignedSocket,
    url: String,
    next_request: u64,
    timeout: Duration,
    /// Results that arrived while waiting for a reply.
    results: VecDeque<Envelope>,
    /// A refused message was already logged at warn level.
    warned: bool,
}

impl HubClient {
    /// Connects (ZeroMQ connects lazily: the first call finds out whether
    /// the hub is there).
    pub fn connect(ctx: &zmq::Context, connection: &ConnectionInfo) -> Result<Self, ClientError> {
        let url = connection.clients.clone();
        let key = connection.signing_key()?;
        let fail = |source| ClientError::Connect {
            url: url.clone(),
            source,
        };
        let socket = ctx.socket(zmq::DEALER).map_err(fail)?;
        // A fixed identity: after a dropped connection the client comes back
        // as the same peer, and the hub (ROUTER_HANDOVER) routes its results
        // to it again.
        socket
            .set_identity(random_identity("client").as_bytes())
            .map_err(fail)?;
        socket.set_linger(millis(DEFAULT_LINGER)).map_err(fail)?;
        socket.set_sndhwm(0).map_err(fail)?;
        socket.set_rcvhwm(0).map_err(fail)?;
        socket
            .set_maxmsgsize(message::MAX_MESSAGE_BYTES as i64)
            .map_err(fail)?;
        socket.connect(&url).map_err(fail)?;
        Ok(HubClient {
            socket: SignedSocket::new(socket, &key),
            url,
            next_request: 1,
            timeout: DEFAULT_CALL_TIMEOUT,
            results: VecDeque::new(),
            warned: false,
        })
    }

    /// Waits this long for each answer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Makes one call and waits for its reply; an error reply is
    /// [`ClientError::Refused`].
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
        let request = self.next_request;
        self.next_request += 1;
        let header = Header {
            kind: MessageKind::Control,
            job: 0,
            id: request,
        };
        self.socket.send(&header, call, 0)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let envelope = match self.receive(left)? {
                Some(envelope) => envelope,
                None => {
                    return Err(ClientError::NoAnswer {
                        url: self.url.clone(),
                        waited: timeout,
                    })
                }
            };
            match envelope.header.kind {
                MessageKind::Control if envelope.header.id == request => {
                    return match envelope.control::<Reply>()? {
                        Reply::Error(reason) => Err(ClientError::Refused(reason)),
                        reply => Ok(reply),
                    };
                }
                MessageKind::Result(_) => self.results.push_back(envelope),
                _ => debug!("dropping a stale reply"),
            }
        }
    }

    /// Sends one task of a job (no reply: results come back on their own).
    pub fn send_task(&mut self, job: JobId, request: &ClusterRequest) -> Result<(), ClientError> {
        let header = Header {
            kind: MessageKind::Request,
            job,
            id: request.id,
        };
        self.socket.send(&header, request, 0)?;
        Ok(())
    }

    /// The next result message for any of this client's jobs, or `None`
    /// after `timeout`.
    pub fn next_result(&mut self, timeout: Duration) -> Result<Option<Envelope>, ClientError> {
        if let Some(envelope) = self.results.pop_front() {
            return Ok(Some(envelope));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive(left)? {
                None => return Ok(None),
                Some(envelope) if matches!(envelope.header.kind, MessageKind::Result(_)) => {
                    return Ok(Some(envelope))
                }
                Some(_) => debug!("dropping a stale reply"),
            }
        }
    }

    fn receive(&mut self, timeout: Duration) -> Result<Option<Envelope>, ClientError> {
        loop {
            match self
                .socket
                .socket()
                .poll(zmq::POLLIN, i64::from(millis(timeout)))
            {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(ClientError::Transport(e.into())),
            }
            match self.socket.recv(zmq::DONTWAIT) {
                Ok(envelope) => return Ok(Some(envelope)),
                Err(e) if e.is_timeout() => continue,
                Err(MessageError::Zmq(e)) => return Err(ClientError::Transport(e.into())),
                Err(e) if !self.warned => {
                    self.warned = true;
                    warn!(hub = %self.url, error = %e, "dropping a bad message from the hub (logged once)");
                }
                Err(e) => debug!(error = %e, "dropping a bad message from the hub"),
            }
        }
    }
}

/// How long a map waits without any result before checking that the hub is
/// still there.
const QUIET_BEFORE_CHECK: Duration = Duration::from_secs(10);

/// `zcluster map --hub`: chunks become tasks of one hub job.
pub struct HubBackend {
    client: HubClient,
    job: JobId,
    credit: usize,
    submitted: u64,
    last_heard: Instant,
}

impl HubBackend {
    /// Opens a command job on the hub: the hub runs a failed task up to
    /// `retries` more times (elsewhere when it can), and with
    /// `halt_on_failure` stops dispatching at the first final failure.
    pub fn open(
        mut client: HubClient,
        description: String,
        retries: u32,
        halt_on_failure: bool,
    ) -> Result<Self, ClientError> {
        match client.call(&ClientCall::OpenJob {
            kind: JobKind::Exec,
            description,
            retries,
            halt_on_failure,
        })? {
            Reply::JobOpened { job, credit } => Ok(HubBackend {
                client,
                job,
                credit: credit.max(1) as usize,
                submitted: 0,
                last_heard: Instant::now(),
            }),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The job's id in the hub's store.
    pub fn job(&self) -> JobId {
        self.job
    }
}

fn backend_error(e: ClientError) -> MapError {
    MapError::Backend(e.to_string())
}

impl Backend for HubBackend {
    fn slots(&self) -> usize {
        self.credit
    }

    fn submit(&mut self, id: u64, chunk: &ExecChunk) -> Result<(), MapError> {
        let request =
            ClusterRequest::encode(id, chunk).map_err(|e| MapError::Backend(e.to_string()))?;
        self.client
            .send_task(self.job, &request)
            .map_err(backend_error)?;
        self.submitted += 1;
        Ok(())
    }

    fn next_done(&mut self, timeout: Duration) -> Result<Option<ChunkDone>, MapError> {
        let Some(envelope) = self.client.next_result(timeout).map_err(backend_error)? else {
            // Long tasks are quiet; a vanished hub is too. Ask.
            if self.last_heard.elapsed() > QUIET_BEFORE_CHECK {
                self.client
                    .call(&ClientCall::Hello)
                    .map_err(backend_error)?;
                self.last_heard = Instant::now();
            }
            return Ok(None);
        };
        self.last_heard = Instant::now();
        if envelope.header.job != self.job {
            return Ok(None);
        }
        let result = envelope
            .result()
            .map_err(|e| MapError::Backend(e.to_string()))?;
        Ok(Some(ChunkDone::from_result(result)))
    }

    fn withdraw(&mut self) -> Vec<u64> {
        self.cancel_job(false)
    }

    fn cancel(&mut self) -> Vec<u64> {
        self.cancel_job(true)
    }
}

impl HubBackend {
    fn cancel_job(&mut self, kill_running: bool) -> Vec<u64> {
        let call = ClientCall::CancelJob {
            job: self.job,
            kill_running,
        };
        match self.client.call(&call) {
            Ok(Reply::Cancelled(dropped)) => dropped,
            Ok(_) => Vec::new(),
            Err(e) => {
                debug!(error = %e, "cannot cancel the job");
                Vec::new()
            }
        }
    }
}

impl Drop for HubBackend {
    /// Tells the hub every task has been sent, so it can retire the job.
    fn drop(&mut self) {
        let close = ClientCall::CloseJob {
            job: self.job,
            total: self.submitted,
        };
        if let Err(e) = self.client.call(&close) {
            debug!(error = %e, "cannot close the job");
        }
    }
}
