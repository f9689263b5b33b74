//! A chunk of command tasks: what travels to a worker slot, how the slot
//! runs it, and how its result says whether every command succeeded.
//!
//! Both sides use it: the client front end ([`map`](crate::map)) builds
//! chunks and reads their outcomes; an engine's slots run them. So it lives
//! here, next to [`run`](super::run), rather than in either.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ExecOptions, ExecOutcome};
use crate::message::{
    decode_value, encode_value, ClusterRequest, ClusterResult, MessageError, ResultStatus,
};
use crate::worker::HandlerError;

/// One task as it travels to a worker.
///
/// The input and the command are bytes: on Unix a line of a file, a file
/// name, an argument need not be UTF-8 (a Latin-1 name is not), and the
/// command must get exactly the bytes read. (Encoded, bytes cost what a
/// string did: a length and the bytes.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecTask {
    /// 1-based input number.
    pub seq: u64,
    /// The input line, so a recorded request explains itself.
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// The command to run: the program, then its arguments.
    pub argv: Vec<serde_bytes::ByteBuf>,
    /// Its time limit.
    pub timeout: Option<Duration>,
    /// Where the slot number (`{%}`) goes, as (argument, byte offset) in
    /// increasing order: only the engine knows the slot, so it writes the
    /// number in there. Positions travel beside the command, never as a
    /// marker inside it, so no input or literal text can be taken for one.
    pub slot_at: Vec<(u32, u32)>,
    /// Variables the client carries to the task (`--env`): nothing else of
    /// the client's environment reaches a remote worker.
    pub env: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    /// The directory the task runs in (`--wd`; over a hub, by default the
    /// client's); `None`: the engine's own.
    pub wd: Option<serde_bytes::ByteBuf>,
}

/// Where a task runs, as the engine running it knows it: given to the
/// task as `{%}` and the `ZCLUSTER_*` variables (as HyperQueue's `HQ_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskPlace {
    /// 1-based slot within the engine: the tasks running at one time on
    /// one engine never share it (GNU parallel's job slot).
    pub slot: u32,
    /// The job the task belongs to (0 without a hub's job).
    pub job: u64,
    /// The engine's id at its hub.
    pub engine: u64,
    /// The machine's host name.
    pub host: String,
}

impl TaskPlace {
    /// The variables every task gets: `ZCLUSTER_SEQ`, `ZCLUSTER_SLOT`,
    /// `ZCLUSTER_JOB`, `ZCLUSTER_ENGINE`, `ZCLUSTER_HOST`.
    pub fn env(&self, seq: u64) -> Vec<(OsString, OsString)> {
        [
            ("ZCLUSTER_SEQ", seq.to_string()),
            ("ZCLUSTER_SLOT", self.slot.to_string()),
            ("ZCLUSTER_JOB", self.job.to_string()),
            ("ZCLUSTER_ENGINE", self.engine.to_string()),
            ("ZCLUSTER_HOST", self.host.clone()),
        ]
        .into_iter()
        .map(|(name, value)| (OsString::from(name), OsString::from(value)))
        .collect()
    }
}

/// The command of `task` with its slot number written in where `{%}` was;
/// `None` when a position is not inside the command (a corrupt task).
fn with_slot(task: &ExecTask, slot: u32) -> Option<Vec<Vec<u8>>> {
    let mut argv: Vec<Vec<u8>> = task.argv.iter().map(|arg| arg.to_vec()).collect();
    let digits = slot.to_string();
    // From the last position back, so the earlier offsets stay true.
    for &(arg, offset) in task.slot_at.iter().rev() {
        let arg = argv.get_mut(usize::try_from(arg).ok()?)?;
        let offset = usize::try_from(offset).ok()?;
        if offset > arg.len() {
            return None;
        }
        arg.splice(offset..offset, digits.bytes());
    }
    Some(argv)
}

impl ExecTask {
    /// The input as a person reads it (lossy when it is not UTF-8), and its
    /// exact bytes when they are not UTF-8: a task record's `input` and
    /// `raw_input`.
    pub fn shown_input(&self) -> (String, Option<Vec<u8>>) {
        shown(&self.input)
    }

    /// The command as a person reads it (lossy where not UTF-8).
    pub fn shown_command(&self) -> Vec<String> {
        self.argv
            .iter()
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    }
}

/// Bytes as a person reads them, and the bytes themselves when they are
/// not UTF-8 (so they can be kept exactly).
pub(crate) fn shown(bytes: &[u8]) -> (String, Option<Vec<u8>>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(bytes.to_vec()),
        ),
    }
}

/// Tasks sent together in one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecChunk {
    /// The tasks, run one after another by one worker.
    pub tasks: Vec<ExecTask>,
}

impl ExecChunk {
    /// The chunk inside a recorded request body (a bincode
    /// [`ClusterRequest`], as a hub's store keeps it).
    pub fn from_request_body(body: &[u8]) -> Result<Self, MessageError> {
        ClusterRequest::from_body(body)?.decode()
    }
}

/// How a chunk's commands ended, as an engine needs to know before it sends
/// the chunk's result (read from the outcomes once; see
/// [`settle_chunk_result`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkEnd {
    /// A command was cancelled (killed by its cancel flag, or never started
    /// because of it). An engine that is stopping drops such a result: the
    /// stop cut the task short, and the hub gets it back with the engine's
    /// unregistration, to run it elsewhere.
    pub cancelled: bool,
    /// A command was killed by a signal that stops a whole session
    /// (SIGTERM, SIGINT, SIGHUP): what `scancel`, `systemctl stop` or a
    /// Ctrl-C to the process group send the worker and its tasks at once.
    /// An engine holds such a result back a moment (see `hub::engine`): if
    /// it is told to stop too, the task was not at fault.
    pub stop_signal: bool,
}

/// Marks a successful chunk result failed when one of its commands failed,
/// with the first failure as its exception (what a hub records and
/// `resubmit` looks for; the outcomes stay in the payload), and says how
/// its commands ended. The outcomes are decoded once.
pub fn settle_chunk_result(result: &mut ClusterResult) -> ChunkEnd {
    let Ok(outcomes) = decode_value::<Vec<(u64, ExecOutcome)>>(&result.payload, "chunk outcomes")
    else {
        return ChunkEnd::default();
    };
    if result.status == ResultStatus::Ok {
        if let Some((seq, outcome)) = outcomes.iter().find(|(_, o)| !o.success()) {
            result.status = ResultStatus::Fail;
            result.exception = Some(format!("input {seq}: {}", outcome.exit));
        }
    }
    ChunkEnd {
        cancelled: outcomes
            .iter()
            .any(|(_, o)| matches!(o.exit, super::ExitKind::Cancelled)),
        stop_signal: outcomes.iter().any(|(_, o)| {
            matches!(o.exit, super::ExitKind::Signaled(s)
                if s == libc::SIGTERM || s == libc::SIGINT || s == libc::SIGHUP)
        }),
    }
}

/// Runs every task of a chunk, one after another: the handler of a worker
/// slot that runs command jobs. `cancel` kills the running task's process
/// group and skips the rest.
pub fn run_chunk(
    cancel: &Arc<AtomicBool>,
    request: &ClusterRequest,
) -> Result<Vec<u8>, HandlerError> {
    run_chunk_at(cancel, request, &TaskPlace::default())
}

/// [`run_chunk`] in a known place: the slot, job, engine and host the
/// tasks get as `{%}` and `ZCLUSTER_*`.
pub fn run_chunk_at(
    cancel: &Arc<AtomicBool>,
    request: &ClusterRequest,
    place: &TaskPlace,
) -> Result<Vec<u8>, HandlerError> {
    let chunk: ExecChunk = request.decode().map_err(HandlerError::new)?;
    let outcomes: Vec<(u64, ExecOutcome)> = chunk
        .tasks
        .iter()
        .map(|task| {
            let mut env = place.env(task.seq);
            env.extend(task.env.iter().map(|(name, value)| {
                (
                    OsStr::from_bytes(name).to_owned(),
                    OsStr::from_bytes(value).to_owned(),
                )
            }));
            let options = ExecOptions {
                timeout: task.timeout,
                cancel: Some(cancel.clone()),
                env,
                cwd: task
                    .wd
                    .as_ref()
                    .map(|dir| PathBuf::from(OsStr::from_bytes(dir))),
                ..ExecOptions::default()
            };
            let Some(argv) = with_slot(task, place.slot) else {
                let reason = "the task's slot positions are not inside its command";
                return (task.seq, super::not_started(reason));
            };
            let argv: Vec<&OsStr> = argv.iter().map(|a| OsStr::from_bytes(a)).collect();
            (task.seq, super::run(&argv, &options))
        })
        .collect();
    encode_value(&outcomes, "chunk outcomes").map_err(HandlerError::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(commands: &[&str]) -> ClusterRequest {
        let tasks = commands
            .iter()
            .zip(1..)
            .map(|(command, seq)| ExecTask {
                seq,
                input: seq.to_string().into_bytes(),
                argv: vec![serde_bytes::ByteBuf::from(command.as_bytes().to_vec())],
                timeout: None,
                slot_at: Vec::new(),
                env: Vec::new(),
                wd: None,
            })
            .collect();
        ClusterRequest::encode(7, &ExecChunk { tasks }).unwrap()
    }

    fn result_of(payload: Vec<u8>) -> ClusterResult {
        let mut result = ClusterResult::failed_here(7, "test".into(), "unused");
        result.status = ResultStatus::Ok;
        result.exception = None;
        result.payload = payload;
        result
    }

    #[test]
    fn a_chunk_runs_each_command_and_fails_at_its_first_failing_input() {
        let request = chunk(&["true", "false", "true"]);
        let payload = run_chunk(&Arc::default(), &request).unwrap();
        let outcomes: Vec<(u64, ExecOutcome)> = decode_value(&payload, "outcomes").unwrap();
        let seqs: Vec<(u64, bool)> = outcomes.iter().map(|(s, o)| (*s, o.success())).collect();
        assert_eq!(seqs, vec![(1, true), (2, false), (3, true)]);
        let mut result = result_of(payload);
        settle_chunk_result(&mut result);
        assert_eq!(result.status, ResultStatus::Fail);
        assert_eq!(
            result.exception.as_deref(),
            Some("input 2: exited with status 1")
        );
    }

    #[test]
    fn a_chunk_whose_commands_all_succeed_stays_ok() {
        let payload = run_chunk(&Arc::default(), &chunk(&["true", "true"])).unwrap();
        let mut result = result_of(payload);
        settle_chunk_result(&mut result);
        assert_eq!(result.status, ResultStatus::Ok);
        assert_eq!(result.exception, None);
    }
}
