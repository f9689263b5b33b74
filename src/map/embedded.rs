//! The embedded backend: `-j N` worker slots inside this process (see
//! [`Slots`]), nothing to set up. Each request is one [`ExecChunk`]; each
//! worker runs its tasks with [`exec::run`], all sharing one cancel flag that
//! [`Backend::cancel`] sets to kill every running task's process group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, ChunkDone, ExecChunk, MapError};
use crate::exec::{self, ExecOptions, ExecOutcome};
use crate::message::{decode_value, encode_value, ClusterRequest, ResultStatus};
use crate::slots::Slots;
use crate::worker::HandlerError;

/// Workers in this process; see the module docs.
pub struct Embedded {
    slots: Slots,
    cancel: Arc<AtomicBool>,
}

/// Runs every task of a chunk, one after another; the handler of a slot that
/// runs command jobs.
pub fn run_chunk(
    cancel: &Arc<AtomicBool>,
    request: &ClusterRequest,
) -> Result<Vec<u8>, HandlerError> {
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
    /// Starts `jobs` worker slots (at least one).
    pub fn start(jobs: usize) -> Result<Self, MapError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let slots = Slots::start(jobs, |_| {
            let flag = cancel.clone();
            move |request: &ClusterRequest| run_chunk(&flag, request)
        })
        .map_err(|e| MapError::Backend(e.to_string()))?;
        Ok(Embedded { slots, cancel })
    }
}

impl Backend for Embedded {
    fn slots(&self) -> usize {
        self.slots.count()
    }

    fn submit(&mut self, id: u64, chunk: &ExecChunk) -> Result<(), MapError> {
        let request =
            ClusterRequest::encode(id, chunk).map_err(|e| MapError::Backend(e.to_string()))?;
        self.slots
            .submit(request)
            .map_err(|e| MapError::Backend(e.to_string()))?;
        Ok(())
    }

    fn next_done(&mut self, timeout: Duration) -> Result<Option<ChunkDone>, MapError> {
        let Some((_, result)) = self
            .slots
            .next_result(timeout)
            .map_err(|e| MapError::Backend(e.to_string()))?
        else {
            return Ok(None);
        };
        let outcomes = match result.status {
            ResultStatus::Ok => {
                decode_value(&result.payload, "chunk outcomes").map_err(|e| e.to_string())
            }
            ResultStatus::Fail => Err(result.exception.unwrap_or_else(|| "unknown failure".into())),
        };
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
    /// Kills running tasks before the slots close, so closing never waits
    /// for a long task.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}
