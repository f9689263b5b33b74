//! Tasks to the hub and results from it, several per message.
//!
//! One task and one result per message cost the client and the hub a
//! signature, a check and a message each way per task, which was most of
//! the hub thread's instructions per no-op task. So a [`HubClient`] keeps
//! the tasks it is given ([`Outgoing`]) and sends them as one
//! [`MessageKind::Tasks`] message of [`SubmitItem`]s when it waits for
//! anything (a result, a reply), when a batch is full (by count or bytes),
//! or when the oldest has waited [`SUBMIT_DEADLINE`]; and the hub sends
//! results back several per [`MessageKind::TaskResults`] message, which
//! [`unbatch`] splits into [`Delivered`] results. A client that sends one
//! task and waits for it sends it at once: batching never adds to the idle
//! round trip.
//!
//! [`SubmitItem`]: crate::hub::protocol::SubmitItem

use std::time::{Duration, Instant};

use tracing::warn;

use super::{ClientError, HubClient};
use crate::hub::protocol::{JobId, ResultItem};
use crate::message::{
    decode_value, encode_value, ClusterRequest, ClusterResult, Envelope, Header, MessageError,
    MessageKind,
};

/// Most tasks in one message to the hub.
pub(super) const SUBMIT_BATCH_TASKS: usize = 256;

/// Most request bytes in one message to the hub (a larger task goes
/// alone): enough to amortise a signature over many small tasks, small
/// enough not to be a burst of memory at the hub.
pub(super) const SUBMIT_BATCH_BYTES: usize = 256 << 10;

/// How long a task may wait in the client for others to join it, when the
/// caller sends more without waiting for anything (a caller that waits
/// sends what is kept first).
pub(super) const SUBMIT_DEADLINE: Duration = Duration::from_millis(2);

/// Bytes a task adds to a batch beside its request, at most: its id and
/// the request's length as varints, and the batch's own length.
const SUBMIT_ITEM_OVERHEAD_BYTES: usize = 32;

impl HubClient {
    /// Keeps each result of a batch (see [`keep`](Self::keep)); a batch
    /// that does not decode is dropped as any bad message is.
    pub(super) fn keep_batch(&mut self, envelope: &Envelope) {
        match unbatch(envelope) {
            Ok(results) => {
                for result in results {
                    self.keep(result);
                }
            }
            Err(e) => {
                warn!(hub = %self.url, error = %e, "dropping a bad result batch from the hub")
            }
        }
    }

    /// Sends one task of a job (no reply: results come back on their own).
    /// It may be kept a moment to go with others in one message: it is
    /// sent at the latest when this client next waits for anything (a
    /// result, a reply), so nothing waits on it; see
    /// [`flush`](Self::flush).
    pub fn send_task(&mut self, job: JobId, request: &ClusterRequest) -> Result<(), ClientError> {
        self.ready(self.timeout)?;
        let body = encode_value(request, "request")?;
        let limit = self.link.socket.limit();
        if body.len() > limit {
            return Err(ClientError::TaskTooLarge {
                id: request.id,
                size: body.len(),
                limit,
            });
        }
        if self.outgoing.must_send_first(job, body.len(), limit) {
            self.send_kept_tasks()?;
        }
        self.outgoing.push(job, request.id, body);
        if self.outgoing.due() {
            self.send_kept_tasks()?;
        }
        Ok(())
    }

    /// Sends the tasks kept to go with others, now: for a caller that
    /// sends tasks and then waits on something other than this client.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.send_kept_tasks()
    }

    /// Sends the tasks kept: one as a plain request message, several as
    /// one [`MessageKind::Tasks`] message.
    pub(super) fn send_kept_tasks(&mut self) -> Result<(), ClientError> {
        if self.outgoing.len() == 0 {
            return Ok(());
        }
        let (job, items) = self.outgoing.take();
        let sent = match &items[..] {
            [] => Ok(()),
            [(id, body)] => {
                let header = Header {
                    kind: MessageKind::Request,
                    job,
                    id: *id,
                };
                self.link.socket.send_raw(&header, body, 0)
            }
            [(first, _), ..] => {
                let header = Header {
                    kind: MessageKind::Tasks,
                    job,
                    id: *first,
                };
                // Encoded as `SubmitItem`s are, without copying the requests.
                let batch: Vec<(u64, &serde_bytes::Bytes)> = items
                    .iter()
                    .map(|(id, body)| (*id, serde_bytes::Bytes::new(body)))
                    .collect();
                self.link.socket.send(&header, &batch, 0)
            }
        };
        Ok(sent?)
    }
}

/// Tasks given to the client and not sent yet: all of one job, in the
/// order given.
#[derive(Default)]
pub(super) struct Outgoing {
    job: JobId,
    items: Vec<(u64, Vec<u8>)>,
    bytes: usize,
    since: Option<Instant>,
}

impl Outgoing {
    /// Whether a task of `job` with a request of `size` bytes must wait
    /// for what is kept to go first: it is of another job, or would take
    /// the batch past its bytes (at most `limit`, the hub's message limit).
    pub(super) fn must_send_first(&self, job: JobId, size: usize, limit: usize) -> bool {
        !self.items.is_empty()
            && (self.job != job
                || self.bytes + size + SUBMIT_ITEM_OVERHEAD_BYTES > SUBMIT_BATCH_BYTES.min(limit))
    }

    /// Keeps a task.
    pub(super) fn push(&mut self, job: JobId, id: u64, request: Vec<u8>) {
        if self.items.is_empty() {
            self.job = job;
            self.since = Some(Instant::now());
        }
        self.bytes += request.len() + SUBMIT_ITEM_OVERHEAD_BYTES;
        self.items.push((id, request));
    }

    /// Whether what is kept should go now: the batch is full, or its
    /// oldest task has waited long enough.
    pub(super) fn due(&self) -> bool {
        self.items.len() >= SUBMIT_BATCH_TASKS
            || self.since.is_some_and(|t| t.elapsed() >= SUBMIT_DEADLINE)
    }

    /// Tasks kept.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// What is kept, to send, and its job; nothing is kept after.
    pub(super) fn take(&mut self) -> (JobId, Vec<(u64, Vec<u8>)>) {
        self.bytes = 0;
        self.since = None;
        (self.job, std::mem::take(&mut self.items))
    }
}

/// One result from the hub, as [`HubClient::next_result`] hands it out: its
/// header (job, task id, status) and its encoded [`ClusterResult`], come
/// alone or in a batch.
///
/// [`HubClient::next_result`]: super::HubClient::next_result
#[derive(Debug)]
pub struct Delivered {
    /// The job, the task's id and the result's status.
    pub header: Header,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// Came alone: the message as received.
    Alone(Envelope),
    /// Came in a batch: its bytes.
    Batched(Vec<u8>),
}

impl Delivered {
    /// A result that came alone.
    pub(super) fn alone(envelope: Envelope) -> Self {
        Delivered {
            header: envelope.header,
            body: Body::Alone(envelope),
        }
    }

    /// The encoded result.
    pub fn body(&self) -> &[u8] {
        match &self.body {
            Body::Alone(envelope) => envelope.body(),
            Body::Batched(bytes) => bytes,
        }
    }

    /// The result, decoded and checked against its header (the same id and
    /// status), as [`Envelope::result`] checks one that came alone.
    pub fn result(&self) -> Result<ClusterResult, MessageError> {
        let bytes = match &self.body {
            Body::Alone(envelope) => return envelope.result(),
            Body::Batched(bytes) => bytes,
        };
        let result = ClusterResult::from_body(bytes)?;
        if result.id != self.header.id {
            return Err(MessageError::IdMismatch {
                header: self.header.id,
                body: result.id,
            });
        }
        if MessageKind::Result(result.status) != self.header.kind {
            return Err(MessageError::Decode {
                part: "result body",
                source: bincode::error::DecodeError::Other("status differs from the header"),
            });
        }
        Ok(result)
    }
}

/// The results of a [`MessageKind::TaskResults`] message from the hub, in
/// the order sent. A body that does not decode is an error as a whole.
pub(super) fn unbatch(envelope: &Envelope) -> Result<Vec<Delivered>, MessageError> {
    let items: Vec<ResultItem> = decode_value(envelope.body(), "result batch")?;
    Ok(items
        .into_iter()
        .map(|item| Delivered {
            header: Header {
                kind: MessageKind::Result(item.status),
                job: item.job,
                id: item.id,
            },
            body: Body::Batched(item.body.into_vec()),
        })
        .collect())
}
