//! The ventilator: pushes requests out to workers.
//!
//! A PUSH socket hands each request to the next connected worker in turn.
//! Because ZeroMQ's PUSH round-robins over the peers connected *at that
//! moment*, a ventilator that starts sending before its workers connect gives
//! everything to the first one (the slow-joiner problem). Like glimpse's, this
//! one waits a worker-connect delay (default one second) before its first
//! send; set it to zero when the workers are known to be connected, or put a
//! hub in front that hands out work by credit instead.

use std::thread;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::message::{self, ClusterRequest, MessageError};
use crate::socket::{init_socket, SocketError, SocketKind, SocketSource};

/// How long a ventilator waits for workers before its first send, unless told
/// otherwise (glimpse's default).
pub const DEFAULT_WORKER_CONNECT_DELAY: Duration = Duration::from_secs(1);

/// Errors from a ventilator.
#[derive(Debug, thiserror::Error)]
pub enum VentilatorError {
    /// The socket could not be made.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A request could not be encoded or sent.
    #[error("cannot send request {id}: {source}")]
    Send {
        /// The request id.
        id: u64,
        /// The underlying error.
        #[source]
        source: MessageError,
    },
}

/// Sends requests to workers over PUSH.
pub struct Ventilator {
    socket: zmq::Socket,
    job: u64,
    ready_at: Instant,
    batch: usize,
}

impl Ventilator {
    /// A ventilator on a PUSH socket (descriptor or existing socket).
    pub fn new(
        ctx: &zmq::Context,
        requests: impl Into<SocketSource>,
    ) -> Result<Self, VentilatorError> {
        let socket = init_socket(ctx, requests, SocketKind::Push, "ventilator requests")?;
        Ok(Ventilator {
            socket,
            job: 0,
            ready_at: Instant::now() + DEFAULT_WORKER_CONNECT_DELAY,
            batch: 1,
        })
    }

    /// Waits `delay` after creation before the first send (zero: send at
    /// once).
    pub fn worker_connect_delay(mut self, delay: Duration) -> Self {
        self.ready_at = Instant::now() + delay;
        self
    }

    /// Tags every request with this job number in the message header.
    pub fn job(mut self, job: u64) -> Self {
        self.job = job;
        self
    }

    /// Sends up to `n` requests per message (default 1). Small requests
    /// then cost a fraction of a message each, at the price of coarser load
    /// balancing: a worker takes a whole batch, and answers it with one
    /// message once every request in it is handled.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Sends every request, blocking while workers' queues are full, and
    /// returns how many were sent.
    pub fn send<I>(&mut self, requests: I) -> Result<usize, VentilatorError>
    where
        I: IntoIterator<Item = ClusterRequest>,
    {
        self.wait_for_workers();
        let mut sent = 0;
        if self.batch == 1 {
            for request in requests {
                message::send_request(&self.socket, self.job, &request).map_err(|source| {
                    VentilatorError::Send {
                        id: request.id,
                        source,
                    }
                })?;
                sent += 1;
            }
        } else {
            let mut batch = Vec::with_capacity(self.batch);
            let mut requests = requests.into_iter().peekable();
            while requests.peek().is_some() {
                batch.clear();
                batch.extend(requests.by_ref().take(self.batch));
                sent += self.send_batch_now(&batch)?;
            }
        }
        debug!(sent, "ventilator sent requests");
        Ok(sent)
    }

    /// Sends `requests` as one message ([`MessageKind::Requests`]), whatever
    /// [`batch`](Self::batch) says: for a caller that sizes its own batches.
    /// Returns how many were sent.
    ///
    /// [`MessageKind::Requests`]: crate::message::MessageKind::Requests
    pub fn send_batch(&mut self, requests: &[ClusterRequest]) -> Result<usize, VentilatorError> {
        self.wait_for_workers();
        self.send_batch_now(requests)
    }

    /// Sleeps out what is left of the worker-connect delay.
    fn wait_for_workers(&self) {
        let wait = self.ready_at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            debug!(?wait, "waiting for workers to connect");
            thread::sleep(wait);
        }
    }

    fn send_batch_now(&self, requests: &[ClusterRequest]) -> Result<usize, VentilatorError> {
        message::send_requests(&self.socket, self.job, requests).map_err(|source| {
            VentilatorError::Send {
                id: requests.first().map_or(0, |r| r.id),
                source,
            }
        })?;
        Ok(requests.len())
    }

    /// The underlying socket, e.g. to read the endpoint it bound.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }
}
