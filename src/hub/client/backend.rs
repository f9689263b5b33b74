//! `zcluster map --hub`'s side of the client: a [`Backend`] whose chunks
//! become tasks of one hub job, attached to a recorded job or opened anew.

use std::time::Duration;

use tracing::debug;

use super::{ClientError, HubClient, JobHandle, JobOptions, HUB_PATIENCE};
use crate::hub::protocol::{AttachInfo, HaltAt, JobId, JobKind};
use crate::map::{Backend, ChunkDone, ExecChunk, Halt, HaltOn, MapError, Threshold};
use crate::message::ClusterRequest;
use crate::resources::ResourceRequest;

/// `zcluster map --hub`: chunks become tasks of one hub job.
pub struct HubBackend {
    client: HubClient,
    handle: JobHandle,
    submitted: u64,
    /// Attached to a recorded job: what its inputs may be.
    attached: Option<Attached>,
    /// Whether dropping closes the job: not after inputs that do not match
    /// it, so that attaching again with the right ones can carry it on.
    close_on_drop: bool,
}

/// What a map attached to a recorded job knows of it.
#[derive(Debug, Clone, Copy)]
struct Attached {
    length: AttachLength,
    /// Its task count, if the map that ran it read all its inputs.
    total: Option<u64>,
    /// Whether the hub still runs it (a finished job takes no new tasks).
    live: bool,
}

/// How many inputs `zcluster map --attach` accepts, against the tasks the
/// job recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachLength {
    /// The job's own inputs: an error, naming the counts, when they end
    /// before the job's recorded tasks, or go on past those of a job whose
    /// map had sent everything. (Going on past a job whose map died while
    /// sending is carrying it on.)
    #[default]
    Same,
    /// Any number: fewer print only their results (the job's other tasks
    /// run on, their results kept in the store); more become new tasks of
    /// the job.
    Any,
}

/// The part of a map's `--halt` rule the hub applies by itself: a count
/// (a percentage needs the number of inputs, which only the map knows; the
/// job is still not prefetched, so the map's halt leaves nothing queued at
/// an engine).
pub fn halt_at_hub(halt: Halt, on: HaltOn) -> Option<HaltAt> {
    if halt == Halt::Never {
        return None;
    }
    Some(match on {
        HaltOn::Failures(Threshold::Count(n)) => HaltAt {
            failures: Some(n.max(1)),
            successes: None,
        },
        HaltOn::Successes(Threshold::Count(n)) => HaltAt {
            failures: None,
            successes: Some(n.max(1)),
        },
        HaltOn::Failures(Threshold::Percent(_)) | HaltOn::Successes(Threshold::Percent(_)) => {
            HaltAt::default()
        }
    })
}

impl HubBackend {
    /// Opens a command job on the hub: the hub runs a failed task up to
    /// `retries` more times (elsewhere when it can), with a `halt` rule
    /// prefetches none of its tasks and stops dispatching when it is met, and
    /// with a `cap` runs at most that many of its tasks at once across the
    /// cluster (`map -j N`; `None`: as many as there are free slots).
    pub fn open(
        client: HubClient,
        description: String,
        retries: u32,
        halt: Option<HaltAt>,
        cap: Option<u32>,
    ) -> Result<Self, ClientError> {
        Self::open_with_request(client, description, retries, halt, cap, None)
    }

    /// [`open`](Self::open), each task asking for `request` (cores, GPUs,
    /// memory: it runs only where all of it is free).
    pub fn open_with_request(
        mut client: HubClient,
        description: String,
        retries: u32,
        halt: Option<HaltAt>,
        cap: Option<u32>,
        request: Option<ResourceRequest>,
    ) -> Result<Self, ClientError> {
        let options = JobOptions {
            retries,
            halt,
            cap,
            request,
        };
        let handle = JobHandle::open(&mut client, JobKind::Exec, description, options)?;
        Ok(HubBackend {
            client,
            handle,
            submitted: 0,
            attached: None,
            close_on_drop: true,
        })
    }

    /// Carries on job `job` (`zcluster map --attach`), whose client died or
    /// that finished: given the same inputs, command and chunk size as the
    /// original map, chunks the hub already has are not sent again, finished
    /// ones come from the store, and the rest are sent. `length` says
    /// whether inputs of another length are an error.
    pub fn attach(
        mut client: HubClient,
        job: JobId,
        length: AttachLength,
    ) -> Result<(Self, AttachInfo), ClientError> {
        let (handle, info) = JobHandle::attach(&mut client, job)?;
        Ok((
            HubBackend {
                client,
                handle,
                submitted: 0,
                attached: Some(Attached {
                    length,
                    total: info.total,
                    live: info.live,
                }),
                close_on_drop: true,
            },
            info,
        ))
    }

    /// The job's id in the hub's store.
    pub fn job(&self) -> JobId {
        self.handle.job()
    }

    /// Closes the job once the map is done, and says whether the hub
    /// recorded it: a map whose job the hub could not close (its store
    /// cannot write) has not finished, whatever it printed. A busy hub is
    /// waited for as long as a job waits for its results ([`HUB_PATIENCE`]).
    pub fn finish(&mut self) -> Result<(), ClientError> {
        if !self.close_on_drop {
            return Ok(());
        }
        self.close_on_drop = false;
        self.handle
            .close_waiting(&mut self.client, self.submitted, HUB_PATIENCE)
    }
}

fn backend_error(e: ClientError) -> MapError {
    MapError::Backend(e.to_string())
}

impl Backend for HubBackend {
    fn slots(&self) -> usize {
        self.handle.credit()
    }

    fn submit(&mut self, id: u64, chunk: &ExecChunk) -> Result<(), MapError> {
        self.submitted = self.submitted.max(id + 1);
        if id < self.handle.known() {
            let stored = self
                .handle
                .expect(&mut self.client, id)
                .map_err(backend_error)?;
            return match ExecChunk::from_request_body(&stored) {
                Ok(recorded) if recorded == *chunk => Ok(()),
                _ => {
                    self.close_on_drop = false;
                    Err(MapError::Backend(format!(
                        "input chunk {id} differs from what job {} recorded: attach with the same inputs, command and --chunksize as the original map",
                        self.handle.job()
                    )))
                }
            };
        }
        if let Some(attached) = self.attached {
            let job = self.handle.job();
            let recorded = self.handle.known();
            let refused = if !attached.live {
                Some(MapError::FinishedJobLonger { job, recorded })
            } else {
                match (attached.length, attached.total) {
                    (AttachLength::Same, Some(total)) if id >= total => {
                        Some(MapError::InputsLonger {
                            job,
                            recorded: total,
                        })
                    }
                    _ => None,
                }
            };
            if let Some(error) = refused {
                self.close_on_drop = false;
                return Err(error);
            }
        }
        let request =
            ClusterRequest::encode(id, chunk).map_err(|e| MapError::Backend(e.to_string()))?;
        self.handle
            .send(&mut self.client, request)
            .map_err(backend_error)
    }

    fn next_done(&mut self, timeout: Duration) -> Result<Option<ChunkDone>, MapError> {
        let result = self
            .handle
            .next_result(&mut self.client, timeout)
            .map_err(backend_error)?;
        Ok(result.map(ChunkDone::from_result))
    }

    fn withdraw(&mut self) -> Vec<u64> {
        self.handle.cancel(&mut self.client, false)
    }

    fn cancel(&mut self) -> Vec<u64> {
        self.handle.cancel(&mut self.client, true)
    }

    /// Attached to a recorded job with inputs that must be as long: until
    /// they reach its recorded tasks, they may still end too soon.
    fn awaits_end_of_inputs(&self) -> bool {
        self.attached
            .is_some_and(|a| a.length == AttachLength::Same)
            && self.submitted < self.handle.known()
    }

    fn end_of_inputs(&mut self, chunks: u64) -> Result<(), MapError> {
        let recorded = self.handle.known();
        let same = self
            .attached
            .is_some_and(|a| a.length == AttachLength::Same);
        if same && chunks < recorded {
            self.close_on_drop = false;
            return Err(MapError::InputsShorter {
                job: self.handle.job(),
                recorded,
                given: chunks,
            });
        }
        // Every task is sent: the hub records the job's length now, not
        // only when this map ends, so that should the map die, attaching to
        // the job again knows how long it is (and refuses longer inputs).
        // Dropping closes it again, in case the hub missed this.
        if let Err(e) = self.handle.close(&mut self.client, chunks) {
            debug!(error = %e, "cannot record the job's length yet");
        }
        Ok(())
    }
}

impl Drop for HubBackend {
    /// Tells the hub every task has been sent, so it can retire the job
    /// (unless [`finish`](HubBackend::finish) did, or its inputs did not
    /// match an attached job): a map that stops on an
    /// error has its own error to report, so this one is only logged.
    fn drop(&mut self) {
        if self.close_on_drop {
            if let Err(e) = self.handle.close(&mut self.client, self.submitted) {
                debug!(error = %e, "cannot close the job");
            }
        }
        self.client.forget(self.handle.job());
    }
}
