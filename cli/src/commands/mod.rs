//! One module per subcommand.

pub mod alloc;
pub mod completions;
pub mod dashboard;
pub mod device;
pub mod drain;
pub mod events;
pub mod hub;
pub mod job;
pub mod kill;
pub mod launch;
pub mod man;
pub mod map;
pub mod map_inputs;
pub mod ping;
pub mod purge;
pub mod request;
pub mod resubmit;
pub mod results;
pub mod shutdown;
pub mod status;
pub mod watch;
pub mod worker;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};

use std::path::PathBuf;

use clap::Args;
use zcluster::hub::client::{ClientError, HubClient};
use zcluster::hub::connection::{self, ConnectionInfo};
use zcluster::hub::protocol::TaskReport;
use zcluster::socket::{FutureSocket, SocketKind};

/// An error in what the user asked for (exit status 2), as opposed to a
/// failure while doing it (exit status 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Engine ids for a message: `3, 5, 8`.
pub fn id_list(ids: &[u64]) -> String {
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a socket short form given on the command line as a usage error
/// naming the flag.
pub fn socket_arg(flag: &str, spec: &str, kind: SocketKind) -> anyhow::Result<FutureSocket> {
    FutureSocket::parse(spec, kind).map_err(|e| UsageError(format!("{flag}: {e}")).into())
}

/// A command's standard output, through which every command writes what it
/// prints.
///
/// The Rust runtime ignores SIGPIPE, so writing to a pipe whose reader
/// went away (`zcluster status | head -1`) is an `EPIPE` error, and a
/// panic (exit 101) in `println!`. Here every write returns its error, and
/// `EPIPE` comes back marked as [`StdoutClosed`], so `main` ends quietly
/// on that one and on nothing else (a broken pipe elsewhere, to a task,
/// say, stays an error). Restoring SIGPIPE's default instead would kill
/// `zcluster map` without cancelling its running tasks, and a hub or a
/// worker on any stray pipe write.
pub struct Stdout(io::StdoutLock<'static>);

/// A flag set by the first SIGINT or SIGTERM: how a long-running command
/// (hub, worker, launcher, allocator, events) learns to stop cleanly.
pub fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use anyhow::Context as _;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
    Ok(stop)
}

/// Locks standard output for a command's results.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark_closed)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark_closed)
    }
}

/// Standard output written without holding its lock between writes, for a
/// writer that another thread may use too (`zcluster map --results -`,
/// whose log a second Ctrl-C writes out from the signal thread); a closed
/// reader is marked as for [`Stdout`].
pub struct SharedStdout;

impl Write for SharedStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().write(buf).map_err(mark_closed)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush().map_err(mark_closed)
    }
}

/// The reader of standard output has gone: not a failure of the command.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for StdoutClosed {}

fn mark_closed(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        error
    }
}

/// Whether this write error is [`Stdout`] finding its reader gone.
pub fn is_stdout_closed(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<StdoutClosed>())
}

/// Whether a command failed because the hub knows no such job or engine
/// as it was given: a mistake in what was asked (exit status 2, as for
/// `zcluster results 99`), not a failure while doing it.
pub fn asked_for_unknown(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<zcluster::hub::client::ClientError>(),
            Some(zcluster::hub::client::ClientError::NotFound(_))
        )
    })
}

/// Whether a command failed only because its stdout was closed (see
/// [`Stdout`]): `main` then exits quietly with status 0, as ripgrep does.
pub fn stopped_by_closed_stdout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(is_stdout_closed)
    })
}

/// The `--hub FILE` flag every hub client command takes.
#[derive(Args, Clone, Debug)]
pub struct HubArg {
    /// The hub's connection file (default: ~/.zcluster/hub.json).
    #[arg(long, env = "ZCLUSTER_HUB", value_name = "FILE")]
    pub hub: Option<PathBuf>,
}

impl HubArg {
    /// The connection file's path.
    pub fn path(&self) -> PathBuf {
        self.hub.clone().unwrap_or_else(connection::default_path)
    }

    /// Reads the connection file, with a hint when there is none.
    pub fn connection(&self) -> anyhow::Result<ConnectionInfo> {
        let path = self.path();
        ConnectionInfo::read(&path).map_err(|e| {
            let hint = if std::fs::symlink_metadata(&path).is_ok() {
                String::new()
            } else {
                " (start one with `zcluster hub`, or pass --hub FILE or set ZCLUSTER_HUB)"
                    .to_string()
            };
            UsageError(format!("{e}{hint}")).into()
        })
    }

    /// Connects a client to the hub.
    pub fn client(&self, ctx: &zmq::Context) -> anyhow::Result<HubClient> {
        Ok(HubClient::connect(ctx, &self.connection()?)?)
    }
}

/// The recorded tasks of `job`, read page by page (a job of any size comes
/// back in replies of bounded size); an unknown job is a usage error.
pub fn job_reports(
    client: &mut HubClient,
    job: u64,
    status_only: bool,
) -> anyhow::Result<Vec<TaskReport>> {
    client.results(job, status_only).map_err(refusal_is_usage)
}

/// A hub that refuses a query about a job (it has no such job) answers the
/// person's mistake: a usage error, not a failure of the hub.
fn refusal_is_usage(error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Refused(reason) | ClientError::NotFound(reason) => UsageError(reason).into(),
        error => error.into(),
    }
}

/// The command chunk a recorded task ran, if it is one.
pub fn chunk_of(
    report: &zcluster::hub::protocol::TaskReport,
) -> Option<zcluster::exec::chunk::ExecChunk> {
    report
        .request
        .as_deref()
        .and_then(|r| zcluster::exec::chunk::ExecChunk::from_request_body(r).ok())
}

/// The inputs each of a job's hub tasks holds, by the numbers a person
/// meets everywhere else: 1 for the first input, as `{#}`, the `seq` of
/// `--json` and `zcluster resubmit --task` have it. The hub numbers its
/// tasks from 0 by chunk (what the map sent it), so this converts at the
/// edge, without asking the hub for outputs when it can.
pub enum InputNumbers {
    /// Task N holds input N + 1 alone (one input per chunk, none skipped).
    OneEach,
    /// The inputs of each task (chunks of several, or inputs skipped).
    Chunks(HashMap<u64, Vec<u64>>),
    /// Not a `zcluster map` job: the tasks' own ids.
    Ids,
}

impl InputNumbers {
    /// Learns the numbering of the tasks `ids` of `job` (all of them when
    /// `whole_job`). One task's request settles the usual case: if the
    /// highest task (chunk k) holds input k + 1 alone, every chunk before
    /// it holds exactly one input too (each holds at least one, in
    /// increasing order), so chunk j holds input j + 1. Otherwise the
    /// requests of `ids` are read (the whole job's a page at a time),
    /// keeping only the numbers.
    pub fn of(
        client: &mut HubClient,
        job: u64,
        ids: &[u64],
        whole_job: bool,
    ) -> anyhow::Result<Self> {
        let Some(&last) = ids.iter().max() else {
            return Ok(InputNumbers::OneEach);
        };
        let found = client.results_of(job, vec![last], false)?;
        let Some(chunk) = found.iter().find_map(chunk_of) else {
            return Ok(InputNumbers::Ids);
        };
        if matches!(chunk.tasks.as_slice(), [only] if only.seq == last + 1) {
            return Ok(InputNumbers::OneEach);
        }
        let mut chunks = HashMap::new();
        let mut keep = |report: TaskReport| {
            if let Some(chunk) = chunk_of(&report) {
                chunks.insert(report.id, chunk.tasks.iter().map(|t| t.seq).collect());
            }
        };
        if whole_job {
            client
                .each_result(job, false, keep)
                .map_err(refusal_is_usage)?;
        } else {
            client
                .results_of(job, ids.to_vec(), false)?
                .into_iter()
                .for_each(&mut keep);
        }
        Ok(InputNumbers::Chunks(chunks))
    }

    /// The inputs of task `id`: `4`, or `5-8` for a chunk, `5,7` for one
    /// with a gap.
    pub fn label(&self, id: u64) -> String {
        match self {
            InputNumbers::OneEach => (id + 1).to_string(),
            InputNumbers::Ids => id.to_string(),
            InputNumbers::Chunks(chunks) => match chunks.get(&id).map(Vec::as_slice) {
                None | Some([]) => "?".to_string(),
                Some([only]) => only.to_string(),
                Some(seqs @ [first, .., last]) if seqs.windows(2).all(|w| w[1] == w[0] + 1) => {
                    format!("{first}-{last}")
                }
                Some(seqs) => seqs
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            },
        }
    }
}

/// A table written through `out` with its columns aligned: rows are written
/// with tabs between cells, and lined up when the writer is flushed (a
/// table is read by a person; `--json` is for programs).
pub fn table<W: Write>(out: W) -> tabwriter::TabWriter<W> {
    tabwriter::TabWriter::new(out).padding(2)
}

/// `1 task`, `2 tasks`: a count as a person writes it.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Whether a job's client still follows it, as the views show it:
/// `attached`, `gone` (silent past the hub's limit: killed, cut off, or
/// detached; `zcluster map --attach` takes the job over), or `-` for a job
/// that no longer runs.
pub fn client_mark(attached: Option<bool>) -> &'static str {
    match attached {
        Some(true) => "attached",
        Some(false) => "gone",
        None => "-",
    }
}

/// A short duration as a person reads it, to two significant figures or
/// so: `2.6 ms`, `350 µs`, `1.2 s`, `3 min 5 s` (humantime's
/// `2ms 562us 608ns` says more than anyone asked).
pub fn short_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 60.0 {
        let whole = d.as_secs();
        return format!("{} min {} s", whole / 60, whole % 60);
    }
    let (value, unit) = if secs >= 1.0 {
        (secs, "s")
    } else if secs >= 1e-3 {
        (secs * 1e3, "ms")
    } else if secs >= 1e-6 {
        (secs * 1e6, "µs")
    } else {
        (secs * 1e9, "ns")
    };
    if value >= 10.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(short_duration(Duration::from_nanos(2_562_608)), "2.6 ms");
        assert_eq!(short_duration(Duration::from_micros(350)), "350 µs");
        assert_eq!(short_duration(Duration::from_millis(1_234)), "1.2 s");
        assert_eq!(short_duration(Duration::from_secs(185)), "3 min 5 s");
        assert_eq!(short_duration(Duration::ZERO), "0.0 ns");
        assert_eq!(plural(1, "task"), "1 task");
        assert_eq!(plural(2, "slot"), "2 slots");
    }

    #[test]
    fn tables_line_up() {
        let mut t = table(Vec::new());
        writeln!(t, "A\tBB").unwrap();
        writeln!(t, "CCCC\tD").unwrap();
        let text = String::from_utf8(t.into_inner().unwrap()).unwrap();
        assert_eq!(text, "A     BB\nCCCC  D\n");
    }
}
