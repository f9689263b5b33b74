//! One module per subcommand.

pub mod device;
pub mod hub;
pub mod kill;
pub mod launch;
pub mod map;
pub mod ping;
pub mod purge;
pub mod resubmit;
pub mod results;
pub mod shutdown;
pub mod status;
pub mod worker;

use std::fmt;
use std::io::{self, Write};

use std::path::PathBuf;

use clap::Args;
use zcluster::hub::client::HubClient;
use zcluster::hub::connection::{self, ConnectionInfo};
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
    client: &mut zcluster::hub::client::HubClient,
    job: u64,
    status_only: bool,
) -> anyhow::Result<Vec<zcluster::hub::protocol::TaskReport>> {
    use zcluster::hub::client::ClientError;
    use zcluster::hub::protocol::{ClientCall, Reply};
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let call = ClientCall::ResultsPage {
            job,
            after,
            status_only,
        };
        match client.call(&call) {
            Ok(Reply::ResultsPage { reports, next }) => {
                all.extend(reports);
                match next {
                    Some(cursor) if Some(cursor) != after => after = Some(cursor),
                    _ => return Ok(all),
                }
            }
            Ok(_) => anyhow::bail!("unexpected answer to a results call"),
            Err(ClientError::Refused(reason)) => return Err(UsageError(reason).into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The command chunk a recorded task ran, if it is one.
pub fn chunk_of(report: &zcluster::hub::protocol::TaskReport) -> Option<zcluster::map::ExecChunk> {
    report
        .request
        .as_deref()
        .and_then(|r| zcluster::map::ExecChunk::from_request_body(r).ok())
}
