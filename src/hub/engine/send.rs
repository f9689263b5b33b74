//! What an engine sends the hub: results (alone or batched, never
//! blocking), control messages, and the recent results it sends again after
//! registering anew.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::hub::protocol::{EngineMessage, JobId, ResultItem};
use crate::message::{
    ClusterResult, Header, MessageError, MessageKind, ResultStatus, SignedSocket,
};

/// Results sent lately. Registering anew (the hub restarted, or lost this
/// engine), an engine sends them again: a hub that went away meanwhile
/// never got them and would otherwise run their tasks again. The hub drops
/// any it already had.
#[derive(Default)]
pub(super) struct Recent {
    results: VecDeque<(Instant, JobId, ClusterResult)>,
    bytes: usize,
}

/// Most results, and bytes of payload, kept for sending again.
const RECENT_RESULTS: usize = 4096;
const RECENT_BYTES: usize = 64 << 20;

impl Recent {
    /// Keeps `result` for `window`, forgetting older ones and the oldest
    /// past the bounds.
    pub(super) fn keep(&mut self, job: JobId, result: ClusterResult, window: Duration) {
        self.bytes += result.payload.len();
        self.results.push_back((Instant::now(), job, result));
        while let Some((sent, _, result)) = self.results.front() {
            let over = self.results.len() > RECENT_RESULTS || self.bytes > RECENT_BYTES;
            if !over && sent.elapsed() <= window {
                break;
            }
            self.bytes -= result.payload.len();
            self.results.pop_front();
        }
    }

    /// The tasks (job, id) whose results are kept.
    pub(super) fn tasks(&self) -> impl Iterator<Item = (JobId, u64)> + '_ {
        self.results.iter().map(|(_, job, r)| (*job, r.id))
    }

    /// Sends every kept result again (the engine registered anew).
    pub(super) fn resend(&self, socket: &SignedSocket) {
        for (_, job, result) in &self.results {
            if let Err(e) = result_to_hub(socket, *job, result) {
                debug!(error = %e, "cannot send a result again");
            }
        }
        if !self.results.is_empty() {
            info!(results = self.results.len(), "sent recent results again");
        }
    }
}

/// Sends a result to the hub without ever blocking: a DEALER with no hub
/// connected (it shut down, or went away) would block the engine for good,
/// and a hub that is gone has no use for the result.
pub(super) fn result_to_hub(
    socket: &SignedSocket,
    job: JobId,
    result: &ClusterResult,
) -> Result<(), MessageError> {
    let body = result.to_body()?;
    alone_to_hub(socket, job, result, &body)
}

/// Sends one encoded result by itself: a success as a plain result, a
/// failure as a batch of one, which carries its reason for the hub's record.
/// One larger than the hub takes goes as a failure saying so: sent as it
/// is, ZeroMQ would drop it with the connection, and its task would wait
/// for ever.
fn alone_to_hub(
    socket: &SignedSocket,
    job: JobId,
    result: &ClusterResult,
    body: &[u8],
) -> Result<(), MessageError> {
    let sent = match result.status {
        ResultStatus::Ok => socket.send_raw(&Header::result(job, result), body, zmq::DONTWAIT),
        ResultStatus::Fail => send_result_batch(socket, &[item(job, result, body.to_vec())]),
    };
    match sent {
        Err(MessageError::TooLarge { size, limit, .. }) => {
            warn!(
                job,
                task = result.id,
                size,
                limit,
                "result over the hub's message limit; sent as a failure"
            );
            let failed = result.as_failure(format!(
                "its result of {size} bytes is over the hub's message limit of {limit} bytes (zcluster hub --max-message)"
            ));
            let body = failed.to_body()?;
            send_result_batch(socket, &[item(job, &failed, body)])
        }
        sent => sent,
    }
}

/// What the hub needs to route and record `result` (encoded as `body`),
/// beside the body.
fn item(job: JobId, result: &ClusterResult, body: Vec<u8>) -> ResultItem {
    ResultItem {
        job,
        id: result.id,
        status: result.status,
        error: match result.status {
            ResultStatus::Ok => None,
            ResultStatus::Fail => Some(
                result
                    .exception
                    .clone()
                    .unwrap_or_else(|| "failed (no reason given)".into()),
            ),
        },
        body: serde_bytes::ByteBuf::from(body),
    }
}

/// Most bytes of results sent to the hub in one message: small, so that a
/// batch never nears even a small `--max-message`; a larger result goes
/// alone, as always.
const RESULT_BATCH_BYTES: usize = 64 << 10;

/// Sends results to the hub, several in one [`MessageKind::TaskResults`]
/// message where there are several (up to [`RESULT_BATCH_BYTES`] each), a
/// lone or larger one alone (see [`alone_to_hub`]); each is encoded once,
/// and nothing blocks.
pub(super) fn results_to_hub(socket: &SignedSocket, results: &[(JobId, ClusterResult, bool)]) {
    let mut batch: Vec<ResultItem> = Vec::new();
    let mut bytes = 0;
    // Room for the batch's own framing within the hub's limit.
    let batch_bytes = RESULT_BATCH_BYTES.min(socket.limit() / 2);
    for (job, result, _) in results {
        let body = result.to_body();
        let body = match body {
            Ok(body) if results.len() > 1 && body.len() <= batch_bytes => body,
            // Alone: the only one, or too large to batch.
            Ok(body) => {
                if let Err(e) = alone_to_hub(socket, *job, result, &body) {
                    warn!(error = %e, "cannot send a result to the hub");
                }
                continue;
            }
            Err(e) => {
                warn!(error = %e, "cannot send a result to the hub");
                continue;
            }
        };
        if bytes + body.len() > batch_bytes {
            warn_unsent(socket, &std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += body.len();
        batch.push(item(*job, result, body));
    }
    warn_unsent(socket, &batch);
}

/// Sends a batch, saying so in the log when it cannot.
fn warn_unsent(socket: &SignedSocket, batch: &[ResultItem]) {
    if let Err(e) = send_result_batch(socket, batch) {
        warn!(error = %e, results = batch.len(), "cannot send results to the hub");
    }
}

/// Sends results as one [`MessageKind::TaskResults`] message, without
/// blocking.
fn send_result_batch(socket: &SignedSocket, batch: &[ResultItem]) -> Result<(), MessageError> {
    let Some(first) = batch.first() else {
        return Ok(());
    };
    let header = Header {
        kind: MessageKind::TaskResults,
        job: 0,
        id: first.id,
    };
    socket.send(&header, batch, zmq::DONTWAIT)
}

/// Sends a control message (register, heartbeat, unregister) without
/// blocking; one lost is made good by the next heartbeat or registration.
pub(super) fn send_control(socket: &SignedSocket, message: &EngineMessage) {
    let header = Header {
        kind: MessageKind::Control,
        job: 0,
        id: 0,
    };
    if let Err(e) = socket.send(&header, message, zmq::DONTWAIT) {
        debug!(error = %e, "cannot send to the hub");
    }
}
